//! All SQL about walhook's own state in the database it reads: the
//! `walhook` schema (created from `sql/`), its dead letters, backlogs, pause
//! flags and record of slots, the replication slot itself, and the publication. One home for
//! these statements so that what walhook keeps, and where, reads in one
//! place; the modules that decide what to do with them (`setup`, `app`,
//! `deliver`, `commands`) call in here.
//!
//! It does not look at the user's tables (`tables`, `rules::catalog_check`)
//! and holds no policy: a caller decides what a missing slot means.

pub mod backfills;
pub mod backlog;
pub mod dead_letters;
pub mod publication;
pub mod schema;
pub mod slots;
pub mod subscription_state;

/// A statement walhook ran failed: which one, and the server's error.
#[derive(Debug, thiserror::Error)]
#[error("`{statement}` failed: {source}")]
pub struct StatementError {
    pub statement: &'static str,
    #[source]
    pub source: tokio_postgres::Error,
}

/// Tags a query's error with its statement.
pub(crate) fn failed(
    statement: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> StatementError {
    move |source| StatementError { statement, source }
}

/// `server_version_num` as a number (e.g. 150004).
pub async fn server_version(client: &tokio_postgres::Client) -> Result<i32, StatementError> {
    const QUERY: &str = "SELECT current_setting('server_version_num')::int";
    client
        .query_one(QUERY, &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed(QUERY))
}
