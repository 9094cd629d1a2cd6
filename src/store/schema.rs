//! The `walhook` schema: the SQL files under `sql/` that create it, run
//! idempotently by `setup` (and printed for an administrator to run with
//! psql), and whether it is there.

use super::{StatementError, failed};

/// The SQL files of `sql/`, in the order they run.
pub const SQL_FILES: &[(&str, &str)] = &[(
    "sql/001_walhook_schema.sql",
    include_str!("../../sql/001_walhook_schema.sql"),
)];

/// `sql/002_least_privilege_role.sql`: run by an administrator with psql
/// (`walhook sql --least-privilege`), never by walhook.
pub const LEAST_PRIVILEGE_SQL: &str = include_str!("../../sql/002_least_privilege_role.sql");

/// Whether the schema's tables exist (an administrator may have run the
/// files for a role that may not).
pub async fn installed(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT to_regclass('walhook.dead_letters') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|row| row.try_get::<_, bool>(0))
        .unwrap_or(false)
}

/// Runs every file of `sql/`; a file the role may not run is skipped when
/// the schema is there already. The error names the file.
pub async fn install(
    client: &tokio_postgres::Client,
) -> Result<(), (&'static str, tokio_postgres::Error)> {
    // The files are idempotent: their NOTICEs (`… already exists,
    // skipping`) say so on every start and are not worth a log line.
    let _ = client
        .batch_execute("SET client_min_messages = warning")
        .await;
    let outcome = run_files(client).await;
    let _ = client.batch_execute("RESET client_min_messages").await;
    outcome
}

async fn run_files(
    client: &tokio_postgres::Client,
) -> Result<(), (&'static str, tokio_postgres::Error)> {
    for (name, sql) in SQL_FILES {
        if let Err(error) = client.batch_execute(sql).await {
            // A least-privilege role cannot run the DDL, but an administrator
            // may already have run these files with psql.
            let denied = error
                .as_db_error()
                .is_some_and(|db| db.code().code() == "42501");
            if denied && installed(client).await {
                tracing::debug!(file = name, "walhook schema present; skipping its DDL");
                continue;
            }
            return Err((name, error));
        }
    }
    Ok(())
}

/// Whether `walhook.<table>` has the `mac` column that holds row seals (a
/// schema made before seals lacks it until `walhook setup` runs as its
/// owner). False when the table is missing.
pub async fn has_seal_column(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<bool, StatementError> {
    has_column(client, table, "mac").await
}

/// Whether `walhook.<table>` has `column`: a column added to an existing
/// schema (`ADD COLUMN IF NOT EXISTS` in sql/001) is there only once
/// `walhook setup` has run as the schema's owner, which a least-privilege
/// role cannot do, so code that uses one asks first. False when the table
/// is missing.
pub async fn has_column(
    client: &tokio_postgres::Client,
    table: &str,
    column: &str,
) -> Result<bool, StatementError> {
    const QUERY: &str = "SELECT EXISTS (SELECT FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'walhook' AND c.relname = $1 AND a.attname = $2 \
           AND NOT a.attisdropped)";
    client
        .query_one(QUERY, &[&table, &column])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed(QUERY))
}
