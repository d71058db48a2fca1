//! The one way SQL is planned: a single read-only query, nothing else.

use datafusion::execution::context::SQLOptions;
use datafusion::execution::SessionState;
use datafusion::prelude::DataFrame;

use crate::error::{Error, Result, ResultExt};

/// Plans `sql` as exactly one read-only query: `SELECT`, `WITH ... SELECT` or `VALUES`.
///
/// DataFusion's `sql` executes whatever it is given: `COPY ... TO` and `INSERT INTO` a
/// listing table write files, `CREATE EXTERNAL TABLE` reads any path, DDL changes the
/// session. Anything but a query is refused before it is planned, naming `location`
/// (the file, or the option, the SQL came from); planning then disallows DDL, DML and
/// statements as well, in case a query ever smuggles one in. The frame plans and runs
/// in `state`.
pub async fn read_only_query(
    state: SessionState,
    sql: &str,
    location: impl Fn() -> String,
) -> Result<DataFrame> {
    use datafusion::sql::parser::{DFParser, Statement};
    use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
    let mut statements = DFParser::parse_sql(sql).context(&location)?;
    let allowed = "a single read-only query (SELECT, WITH ... SELECT or VALUES)";
    match statements.len() {
        1 => {}
        0 => {
            return Err(Error::config(
                location(),
                format!("holds no SQL; it must be {allowed}"),
            ))
        }
        n => {
            return Err(Error::config(
                location(),
                format!("holds {n} SQL statements; it must be {allowed}"),
            ))
        }
    }
    if !matches!(&statements[0], Statement::Statement(s) if matches!(**s, SqlStatement::Query(_))) {
        let text = statements[0].to_string();
        let kind: String = text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        return Err(Error::config(
            location(),
            format!("`{kind} ...` is not allowed: the SQL must be {allowed}, which cannot write or read outside the declared sources"),
        ));
    }
    let statement = statements.pop_front().expect("exactly one statement");
    let plan = state
        .statement_to_plan(statement)
        .await
        .context(&location)?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .context(&location)?;
    Ok(DataFrame::new(state, plan))
}

/// What a DataFusion error says of a SQL text, for people, and where in the text (line
/// and column, from 1) when it knows: from the planner's diagnostic, or the position the
/// parser puts at the end of its message.
pub(crate) fn described(
    error: &datafusion::error::DataFusionError,
) -> (String, Option<(usize, usize)>) {
    use datafusion::error::DataFusionError as E;
    use datafusion::sql::sqlparser::parser::ParserError;
    let root = error.find_root();
    let message = match root {
        E::SQL(parser, _) => match parser.as_ref() {
            ParserError::TokenizerError(m) | ParserError::ParserError(m) => {
                format!("syntax error: {m}")
            }
            ParserError::RecursionLimitExceeded => parser.to_string(),
        },
        other => other.message().trim_end_matches('.').to_string(),
    };
    // sqlparser ends its messages with ` at Line: 3, Column: 14`.
    let (message, told) = match message.rsplit_once(" at Line: ") {
        Some((what, place)) => {
            let place = place.split_once(", Column: ").and_then(|(line, column)| {
                Some((line.trim().parse().ok()?, column.trim().parse().ok()?))
            });
            (what.to_string(), place)
        }
        None => (message, None),
    };
    let spanned = (error.diagnostic())
        .and_then(|diagnostic| diagnostic.span)
        .map(|span| span.start)
        .filter(|at| at.line > 0)
        .map(|at| (at.line as usize, at.column as usize));
    (message, spanned.or(told))
}
