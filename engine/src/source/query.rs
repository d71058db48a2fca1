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
