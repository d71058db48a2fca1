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
    render_noting(sql, variables, origin, &mut |_| {})
}

/// A placeholder replaced by its value: byte ranges in the written and the rendered SQL.
struct Substitution {
    written: std::ops::Range<usize>,
    rendered: std::ops::Range<usize>,
}

/// Where the character at `line` and `column` (both from 1, columns in characters, as SQL
/// parsers count them) of what `sql` renders to was written in `sql`. Values hold no
/// newline, so lines are kept; a position inside a value is its placeholder's.
pub fn written_place(
    sql: &str,
    variables: &[(&str, String)],
    line: usize,
    column: usize,
) -> Option<(usize, usize)> {
    let mut substitutions = Vec::new();
    let rendered = render_noting(sql, variables, "", &mut |s| substitutions.push(s)).ok()?;
    let at = offset_of(&rendered, line, column)?;
    let mut shift: isize = 0;
    for substitution in &substitutions {
        if at < substitution.rendered.start {
            break;
        }
        if at < substitution.rendered.end {
            return Some(place_of(sql, substitution.written.start));
        }
        shift = substitution.written.end as isize - substitution.rendered.end as isize;
    }
    Some(place_of(sql, at.checked_add_signed(shift)?))
}

/// The byte offset of `line` and `column` (from 1, in characters) in `text`.
fn offset_of(text: &str, line: usize, column: usize) -> Option<usize> {
    let start: usize = text
        .split_inclusive('\n')
        .take(line - 1)
        .map(str::len)
        .sum();
    let line_text = text[start..].split('\n').next()?;
    let within = line_text
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(line_text.len(), |(i, _)| i);
    Some(start + within)
}

/// The line and column (from 1, in characters) of byte `offset` in `text`.
pub(crate) fn place_of(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

fn render_noting(
    sql: &str,
    variables: &[(&str, String)],
    origin: &str,
    note: &mut dyn FnMut(Substitution),
) -> Result<String> {
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
            let (written, rendered) = (sql.len() - rest.len(), out.len());
            if state == State::Code {
                out.push('\'');
                out.push_str(&escaped);
                out.push('\'');
            } else {
                out.push_str(&escaped);
            }
            note(Substitution {
                written: written..written + close + 2,
                rendered: rendered..out.len(),
            });
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
    fn a_place_in_the_rendered_sql_is_found_where_it_was_written() {
        let sql = "SELECT a,\n  b FROM t WHERE dt = {{ slice }} AND x ORDER\nBY 1";
        let variables = vars("2024-01-01");
        let rendered = render(sql, &variables, "p").unwrap();
        let line_two = rendered.lines().nth(1).unwrap();
        // `AND` after the value moves left by the value's length less the placeholder's.
        let and = line_two.find("AND").unwrap() + 1;
        let written_and = sql.lines().nth(1).unwrap().find("AND").unwrap() + 1;
        assert_eq!(
            written_place(sql, &variables, 2, and),
            Some((2, written_and))
        );
        // Inside the value: the placeholder. Before it, and on other lines: unchanged.
        let value = line_two.find("'2024").unwrap() + 3;
        let placeholder = sql.lines().nth(1).unwrap().find("{{").unwrap() + 1;
        assert_eq!(
            written_place(sql, &variables, 2, value),
            Some((2, placeholder))
        );
        assert_eq!(written_place(sql, &variables, 2, 3), Some((2, 3)));
        assert_eq!(written_place(sql, &variables, 3, 1), Some((3, 1)));
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
