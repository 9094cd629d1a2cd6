//! Checks the rules against the database before the slot is touched: every
//! table a rule names exists, and every projected column exists in it.
//!
//! Each problem names the subscription, the table or column, and the fix.

use std::collections::HashMap;

use crate::config::{SubscriptionConfig, TableName};

/// A rule does not fit the database.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error(
        "subscription {subscription:?}: table {table} does not exist (or this role cannot see it); \
         fix `tables` or create the table"
    )]
    UnknownTable { subscription: String, table: String },
    #[error(
        "subscription {subscription:?}: column {column:?} is not in table {table} (it has: {known}); fix `columns`"
    )]
    UnknownColumn {
        subscription: String,
        table: String,
        column: String,
        known: String,
    },
    #[error("cannot read the catalog to check the rules: {0}")]
    Catalog(#[from] tokio_postgres::Error),
}

/// The columns of every table the rules name, as the catalog has them.
pub async fn check(
    client: &tokio_postgres::Client,
    subscriptions: &[SubscriptionConfig],
) -> Result<HashMap<TableName, Vec<String>>, RuleError> {
    let mut tables: HashMap<TableName, Vec<String>> = HashMap::new();
    for subscription in subscriptions {
        for table in subscription.table_names() {
            if !tables.contains_key(&table) {
                let columns = table_columns(client, &table).await?.ok_or_else(|| {
                    RuleError::UnknownTable {
                        subscription: subscription.name.clone(),
                        table: table.to_string(),
                    }
                })?;
                tables.insert(table.clone(), columns);
            }
            let known = &tables[&table];
            for column in subscription.columns.iter().flatten() {
                if !known.contains(column) {
                    return Err(RuleError::UnknownColumn {
                        subscription: subscription.name.clone(),
                        table: table.to_string(),
                        column: column.clone(),
                        known: known.join(", "),
                    });
                }
            }
        }
    }
    Ok(tables)
}

async fn table_columns(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<Option<Vec<String>>, tokio_postgres::Error> {
    let exists = client
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await?;
    let Some(row) = exists else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let columns = client
        .query(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    Ok(Some(columns))
}
