//! Substituting slice variables into SQL as safely quoted literals.
//!
//! A placeholder `{{ name }}` outside any quotes becomes a full string literal
//! (`'2024-01-01'`); inside a single-quoted string (`'{{ slice }}'`) it becomes the value
//! with its quotes doubled. Either way a key like `o'brien` can neither break nor inject
//! into the SQL. Placeholders in comments are left alone; inside double-quoted
//! identifiers they are refused. This module does no IO.

use crate::error::{Error, Result};

/// The SQL lexer states that matter for quoting.
#[derive(Clone, Copy, PartialEq)]
enum State {
    Code,
    SingleQuoted,
    DoubleQuoted,
    LineComment,
    BlockComment,
}

/// Renders `sql` with `variables`. `origin` names the SQL's file for error messages.
pub fn render(sql: &str, variables: &[(&str, String)], origin: &str) -> Result<String> {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut state = State::Code;
    let mut rest = sql;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("{{") && matches!(state, State::Code | State::SingleQuoted) {
            let line = sql[..sql.len() - rest.len()].matches('\n').count() + 1;
            let at = || format!("{origin}: SQL line {line}");
            let close = rest
                .find("}}")
                .ok_or_else(|| Error::config(at(), "`{{` without a closing `}}`"))?;
            let name = rest[2..close].trim();
            let value = variables
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| {
                    let known: Vec<_> = variables.iter().map(|(n, _)| *n).collect();
                    Error::config(
                        at(),
                        format!(
                            "unknown variable `{name}`; this slice has: {}",
                            known.join(", ")
                        ),
                    )
                })?;
            let escaped = value.replace('\'', "''");
            if state == State::Code {
                out.push('\'');
                out.push_str(&escaped);
                out.push('\'');
            } else {
                out.push_str(&escaped);
            }
            rest = &rest[close + 2..];
            continue;
        }
        if rest.starts_with("{{") && state == State::DoubleQuoted {
            let line = sql[..sql.len() - rest.len()].matches('\n').count() + 1;
            return Err(Error::config(
                format!("{origin}: SQL line {line}"),
                "placeholders cannot stand inside a double-quoted identifier",
            ));
        }
        state = match (state, c) {
            (State::Code, '\'') => State::SingleQuoted,
            (State::Code, '"') => State::DoubleQuoted,
            (State::Code, '-') if rest.starts_with("--") => State::LineComment,
            (State::Code, '/') if rest.starts_with("/*") => {
                out.push_str("/*");
                rest = &rest[2..];
                state = State::BlockComment;
                continue;
            }
            // A doubled quote inside a string is an escaped quote: the string goes on.
            (State::SingleQuoted, '\'') if rest[1..].starts_with('\'') => {
                out.push_str("''");
                rest = &rest[2..];
                continue;
            }
            (State::SingleQuoted, '\'') | (State::DoubleQuoted, '"') => State::Code,
            (State::LineComment, '\n') => State::Code,
            (State::BlockComment, '*') if rest.starts_with("*/") => {
                out.push_str("*/");
                rest = &rest[2..];
                state = State::Code;
                continue;
            }
            (state, _) => state,
        };
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(slice: &str) -> Vec<(&'static str, String)> {
        vec![("slice", slice.to_string()), ("hour", "07".to_string())]
    }

    #[test]
    fn bare_placeholder_becomes_a_quoted_literal() {
        let sql = render(
            "SELECT * FROM t WHERE dt = {{ slice }} AND hr = {{hour}}",
            &vars("2024-01-01"),
            "p",
        )
        .unwrap();
        assert_eq!(sql, "SELECT * FROM t WHERE dt = '2024-01-01' AND hr = '07'");
    }

    #[test]
    fn quoted_placeholder_is_escaped_not_requoted() {
        let sql = render("WHERE k = '{{ slice }}'", &vars("o'brien"), "p").unwrap();
        assert_eq!(sql, "WHERE k = 'o''brien'");
    }

    #[test]
    fn awkward_key_cannot_inject() {
        let hostile = "x' OR '1'='1";
        let sql = render("WHERE k = {{ slice }}", &vars(hostile), "p").unwrap();
        assert_eq!(sql, "WHERE k = 'x'' OR ''1''=''1'");
        let sql = render(
            "WHERE k = 'a{{ slice }}b' -- {{ slice }}\n/* {{ slice }} */",
            &vars(hostile),
            "p",
        )
        .unwrap();
        assert_eq!(
            sql,
            "WHERE k = 'ax'' OR ''1''=''1b' -- {{ slice }}\n/* {{ slice }} */"
        );
    }

    #[test]
    fn escaped_quotes_in_the_template_keep_the_string_open() {
        let sql = render("SELECT 'it''s {{ slice }}', {{ slice }}", &vars("a"), "p").unwrap();
        assert_eq!(sql, "SELECT 'it''s a', 'a'");
    }

    #[test]
    fn unknown_variable_names_the_line_and_what_exists() {
        let error = render("SELECT 1\nWHERE x = {{ day }}", &vars("a"), "q.sql").unwrap_err();
        assert_eq!(
            error.to_string(),
            "q.sql: SQL line 2: unknown variable `day`; this slice has: slice, hour"
        );
    }

    #[test]
    fn placeholder_in_identifier_is_refused() {
        let error = render("SELECT \"{{ slice }}\"", &vars("a"), "p").unwrap_err();
        assert_eq!(
            error.to_string(),
            "p: SQL line 1: placeholders cannot stand inside a double-quoted identifier"
        );
    }
}
