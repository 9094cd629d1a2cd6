//! The `walhook` schema: the SQL files under `sql/` that create it, run
//! idempotently by `setup` (and printed for an administrator to run with
//! psql), and whether it is there.

/// The SQL files of `sql/`, in the order they run.
pub const SQL_FILES: &[(&str, &str)] = &[(
    "sql/001_walhook_schema.sql",
    include_str!("../../sql/001_walhook_schema.sql"),
)];

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
