//! Checks the rules against the database before the slot is touched: every
//! table a rule names exists, every projected column exists in it, and every
//! filter parses, names only columns the tables have, compares values of one
//! kind, and reads old values only where the table's replica identity sends
//! them.
//!
//! A `schema.*` entry is checked against every table the schema has now. A
//! partition selected together with its root is refused (its changes arrive
//! as the root's). [`refuse_unloggable`] refuses rules whose publication
//! would make PostgreSQL refuse the application's updates and deletes.
//!
//! Each problem names the subscription, its key in the file (with the column
//! in the filter for filter problems), the table or column, and the fix.
//! Filters are parsed before the catalog is read, so a syntax error is
//! reported whatever the database holds. It does not create anything or look
//! at the slot.

use std::collections::HashMap;

use crate::catalog::{CatalogError, JsonKind, TypeRegistry};
use crate::config::{SubscriptionConfig, TableName, TableSelector};
use crate::event::EventKind;
use crate::filter::{ColumnUse, Filter, Location, Side, ValueClass, pointer};
use crate::store::publication;
use crate::tables::{self, Resolution};

/// A rule does not fit the database.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error(
        "subscription {subscription:?}: table {table} does not exist (or this role cannot see it); \
         fix `tables` or create the table. If it was renamed or moved while walhook ran, walhook \
         went on delivering it under its new name: put that name in `tables` (`walhook check` \
         lists the tables the publication sends that no rule selects)"
    )]
    UnknownTable { subscription: String, table: String },
    #[error(
        "subscription {subscription:?}: schema {schema:?} does not exist (or this role cannot see \
         it); fix `tables` or create the schema"
    )]
    UnknownSchema {
        subscription: String,
        schema: String,
    },
    #[error(
        "subscription {subscription:?}: table {partition} is a partition of {root}, which the rules \
         also select; walhook publishes partitions through their root, so changes of {partition} \
         arrive as changes of {root} and this rule would receive none of them. Select {root} \
         instead (a filter on the partition key narrows it)"
    )]
    PartitionOfSelectedRoot {
        subscription: String,
        partition: String,
        root: String,
    },
    #[error(
        "the rules ask for updates or deletes, but {tables} cannot log them (no primary key, no \
         replica identity index, not REPLICA IDENTITY FULL): while the publication publishes \
         {operations}, PostgreSQL would refuse the application's own {operations} on them. walhook \
         publishes nothing until this is fixed: {fixes} (or add a primary key; for a table that \
         only ever gets inserts, FULL costs nothing), or leave update and delete out of the \
         `events` of every subscription"
    )]
    NoReplicaIdentity {
        operations: String,
        tables: String,
        fixes: String,
    },
    #[error(
        "subscription {subscription:?}: `{key}` names column {column:?} of table {table}, a \
         generated column, which PostgreSQL before 18 never publishes: walhook would never see \
         its value. Use the columns it is computed from, or upgrade to PostgreSQL 18"
    )]
    GeneratedColumn {
        subscription: String,
        key: &'static str,
        table: String,
        column: String,
    },
    #[error(
        "subscription {subscription:?}: column {column:?} is not in table {table} (it has: {known}); fix `columns`"
    )]
    UnknownColumn {
        subscription: String,
        table: String,
        column: String,
        known: String,
    },
    /// A filter does not parse or does not fit its tables.
    #[error(transparent)]
    Filter(Box<FilterError>),
    #[error("cannot read the catalog to check the rules: {0}")]
    Catalog(#[from] tokio_postgres::Error),
}

/// A problem with one subscription's filter, located in the filter text.
#[derive(Debug, thiserror::Error)]
#[error("subscription {subscription:?}: key `{key}` {problem}{pointer}")]
pub struct FilterError {
    pub subscription: String,
    /// `subscriptions[i].filter`.
    pub key: String,
    pub problem: FilterProblem,
    /// The filter line with a caret under the problem.
    pointer: String,
}

/// What is wrong with a filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterProblem {
    #[error(
        "at {location}: column {column:?} is not in table {table} (it has: {known}); fix the filter"
    )]
    UnknownColumn {
        location: Location,
        table: String,
        column: String,
        known: String,
    },
    #[error("at {location}: in table {table}, {message}")]
    Type {
        location: Location,
        table: String,
        message: String,
    },
    #[error(
        "at {location}: the filter reads {reads} for {event}s of table {table}, but its replica \
         identity ({identity}) does not send {what}; fix: ALTER TABLE {fix_table} REPLICA IDENTITY FULL \
         (or remove {event} from `events`)"
    )]
    OldValuesUnavailable {
        location: Location,
        reads: String,
        event: &'static str,
        table: String,
        identity: &'static str,
        what: &'static str,
        fix_table: String,
    },
}

impl FilterError {
    fn rule_error(
        index: usize,
        subscription: &SubscriptionConfig,
        text: &str,
        position: usize,
        problem: FilterProblem,
    ) -> RuleError {
        RuleError::Filter(Box::new(FilterError {
            subscription: subscription.name.clone(),
            key: filter_key(index),
            problem,
            pointer: pointer(text, position),
        }))
    }
}

impl From<CatalogError> for RuleError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::Query { source, .. } => RuleError::Catalog(source),
        }
    }
}

/// What the catalog says about one table.
struct TableFacts {
    columns: Vec<ColumnFacts>,
    /// `pg_class.relreplident`: d(efault), n(othing), f(ull), i(ndex).
    identity: u8,
    /// The columns an old row carries when the identity is not FULL.
    identity_columns: Vec<String>,
}

struct ColumnFacts {
    name: String,
    type_oid: u32,
    /// `format_type`, for messages.
    type_name: String,
    /// A generated column (`attgenerated` set).
    generated: bool,
}

/// Checks every subscription against the catalog; returns the tables the
/// rules select, as they are now.
pub async fn check(
    client: &tokio_postgres::Client,
    subscriptions: &[SubscriptionConfig],
) -> Result<Resolution, RuleError> {
    check_indexed(client, subscriptions.iter().enumerate().collect()).await
}

/// [`check`] for one subscription, `index` being its position in the file
/// (messages name the key `subscriptions[index].filter`).
pub async fn check_subscription(
    client: &tokio_postgres::Client,
    index: usize,
    subscription: &SubscriptionConfig,
) -> Result<Resolution, RuleError> {
    check_indexed(client, vec![(index, subscription)]).await
}

async fn check_indexed(
    client: &tokio_postgres::Client,
    subscriptions: Vec<(usize, &SubscriptionConfig)>,
) -> Result<Resolution, RuleError> {
    let selectors: Vec<TableSelector> = subscriptions
        .iter()
        .flat_map(|(_, subscription)| subscription.table_selectors())
        .collect();
    let resolution = tables::resolve(client, &selectors).await?;
    // Before PostgreSQL 18, pgoutput never sends generated columns.
    let generated_published = crate::store::server_version(client)
        .await
        .map_err(|error| RuleError::Catalog(error.source))?
        >= publication::GENERATED_COLUMNS_SINCE;
    let mut facts_by_table: HashMap<TableName, TableFacts> = HashMap::new();
    let mut types = TypeRegistry::new();
    for &(index, subscription) in &subscriptions {
        let filter = &subscription.filter;
        let own = subscription.table_selectors();
        for selector in &own {
            match selector {
                TableSelector::Table(table) if resolution.missing_tables.contains(table) => {
                    return Err(RuleError::UnknownTable {
                        subscription: subscription.name.clone(),
                        table: table.to_string(),
                    });
                }
                TableSelector::Schema(schema) if resolution.missing_schemas.contains(schema) => {
                    return Err(RuleError::UnknownSchema {
                        subscription: subscription.name.clone(),
                        schema: schema.clone(),
                    });
                }
                _ => {}
            }
        }
        for selected in resolution.selected_by(&own) {
            let table = &selected.name;
            if let Some(root) = selected
                .partition_ancestors
                .iter()
                .find(|ancestor| resolution.tables.contains_key(*ancestor))
            {
                return Err(RuleError::PartitionOfSelectedRoot {
                    subscription: subscription.name.clone(),
                    partition: table.to_string(),
                    root: root.to_string(),
                });
            }
            if !facts_by_table.contains_key(table) {
                let facts =
                    table_facts(client, table)
                        .await?
                        .ok_or_else(|| RuleError::UnknownTable {
                            subscription: subscription.name.clone(),
                            table: table.to_string(),
                        })?;
                let oids: Vec<u32> = facts.columns.iter().map(|column| column.type_oid).collect();
                types.ensure(client, &oids).await?;
                facts_by_table.insert(table.clone(), facts);
            }
            let Some(facts) = facts_by_table.get(table) else {
                continue;
            };
            for column in subscription.columns.iter().flatten() {
                let Some(known) = facts.columns.iter().find(|known| known.name == *column) else {
                    return Err(RuleError::UnknownColumn {
                        subscription: subscription.name.clone(),
                        table: table.to_string(),
                        column: column.clone(),
                        known: known_columns(facts),
                    });
                };
                if known.generated && !generated_published {
                    return Err(RuleError::GeneratedColumn {
                        subscription: subscription.name.clone(),
                        key: "columns",
                        table: table.to_string(),
                        column: column.clone(),
                    });
                }
            }
            if let Some(filter) = filter {
                if !generated_published
                    && let Some((column, _)) = filter.columns().iter().find(|(column, _)| {
                        facts
                            .columns
                            .iter()
                            .any(|known| known.generated && known.name == column.name)
                    })
                {
                    return Err(RuleError::GeneratedColumn {
                        subscription: subscription.name.clone(),
                        key: "filter",
                        table: table.to_string(),
                        column: column.name.clone(),
                    });
                }
                check_filter(index, subscription, filter, table, facts, &types)?;
            }
        }
    }
    Ok(resolution)
}

/// Refuses rules whose publication would publish updates or deletes for a
/// table that cannot log them: PostgreSQL would then refuse the
/// application's own `UPDATE` and `DELETE` on it. The publication's
/// operations are shared by all its tables, so an insert-only rule's table
/// counts too when another rule asks for updates.
pub fn refuse_unloggable(resolution: &Resolution, publish: &[EventKind]) -> Result<(), RuleError> {
    let operations: Vec<&str> = [(EventKind::Update, "UPDATE"), (EventKind::Delete, "DELETE")]
        .iter()
        .filter(|(kind, _)| publish.contains(kind))
        .map(|(_, name)| *name)
        .collect();
    if operations.is_empty() {
        return Ok(());
    }
    let tables = resolution.without_identity();
    if tables.is_empty() {
        return Ok(());
    }
    Err(RuleError::NoReplicaIdentity {
        operations: operations.join(" and "),
        tables: tables
            .iter()
            .map(TableName::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        fixes: tables
            .iter()
            .map(|table| {
                format!(
                    "ALTER TABLE {} REPLICA IDENTITY FULL;",
                    sql_table_name(table)
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
    })
}

fn filter_key(index: usize) -> String {
    format!("subscriptions[{index}].filter")
}

fn known_columns(facts: &TableFacts) -> String {
    facts
        .columns
        .iter()
        .map(|column| column.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn value_class(kind: &JsonKind) -> ValueClass {
    match kind {
        JsonKind::Number => ValueClass::Number,
        JsonKind::Bool => ValueClass::Bool,
        JsonKind::Date | JsonKind::Timestamp | JsonKind::TimestampTz | JsonKind::Text => {
            ValueClass::Text
        }
        JsonKind::Json
        | JsonKind::Jsonb
        | JsonKind::Array { .. }
        | JsonKind::Composite { .. }
        | JsonKind::Hstore => ValueClass::Json,
    }
}

fn check_filter(
    index: usize,
    subscription: &SubscriptionConfig,
    filter: &Filter,
    table: &TableName,
    facts: &TableFacts,
    types: &TypeRegistry,
) -> Result<(), RuleError> {
    let text = filter.source();
    let columns = filter.columns();
    for (column, _) in &columns {
        if !facts.columns.iter().any(|known| known.name == column.name) {
            return Err(FilterError::rule_error(
                index,
                subscription,
                text,
                column.position,
                FilterProblem::UnknownColumn {
                    location: Location::of(column.position, text),
                    table: table.to_string(),
                    column: column.name.clone(),
                    known: known_columns(facts),
                },
            ));
        }
    }
    let column_type = |name: &str| {
        let column = facts.columns.iter().find(|column| column.name == name)?;
        Some((
            value_class(types.kind(column.type_oid)),
            column.type_name.clone(),
        ))
    };
    filter.check_types(&column_type).map_err(|error| {
        let problem = FilterProblem::Type {
            location: Location::of(error.position, text),
            table: table.to_string(),
            message: error.message,
        };
        FilterError::rule_error(index, subscription, text, error.position, problem)
    })?;

    if facts.identity == b'f' {
        return Ok(());
    }
    let identity = match facts.identity {
        b'd' => "DEFAULT",
        b'i' => "USING INDEX",
        b'n' => "NOTHING",
        _ => "not FULL",
    };
    let unavailable = |column: &crate::filter::ColumnRef,
                       reads: String,
                       event: &'static str,
                       what: &'static str| {
        let problem = FilterProblem::OldValuesUnavailable {
            location: Location::of(column.position, text),
            reads,
            event,
            table: table.to_string(),
            identity,
            what,
            fix_table: sql_table_name(table),
        };
        FilterError::rule_error(index, subscription, text, column.position, problem)
    };
    // Updates send an old row only when the key changes (and then only the
    // key) unless the identity is FULL.
    if subscription.events.contains(&EventKind::Update) {
        for (column, usage) in &columns {
            match (usage, column.side) {
                (ColumnUse::Changed, _) => {
                    return Err(unavailable(
                        column,
                        format!("changed({})", column.name),
                        "update",
                        "old values",
                    ));
                }
                (ColumnUse::Value, Side::Old) => {
                    return Err(unavailable(
                        column,
                        column.to_string(),
                        "update",
                        "old values",
                    ));
                }
                _ => {}
            }
        }
    }
    // Deletes send the identity columns of the old row.
    if subscription.events.contains(&EventKind::Delete) {
        for (column, usage) in &columns {
            let reads_old =
                *usage == ColumnUse::Value && matches!(column.side, Side::Old | Side::Bare);
            if reads_old && !facts.identity_columns.contains(&column.name) {
                return Err(unavailable(
                    column,
                    column.to_string(),
                    "delete",
                    "that column of a deleted row",
                ));
            }
        }
    }
    Ok(())
}

/// `schema.table`, each part quoted only when SQL needs it.
fn sql_table_name(table: &TableName) -> String {
    let part = |name: &str| {
        let plain = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
        if plain {
            name.to_owned()
        } else {
            crate::config::quote_identifier(name)
        }
    };
    format!("{}.{}", part(&table.schema), part(&table.name))
}

async fn table_facts(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<Option<TableFacts>, tokio_postgres::Error> {
    let exists = client
        .query_opt(
            "SELECT c.oid, c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await?;
    let Some(row) = exists else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let identity = row.get::<_, i8>(1) as u8;
    let columns = client
        .query(
            "SELECT attname::text, atttypid, format_type(atttypid, atttypmod), attgenerated <> '' \
             FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|row| ColumnFacts {
            name: row.get(0),
            type_oid: row.get(1),
            type_name: row.get(2),
            generated: row.get(3),
        })
        .collect();
    // DEFAULT: the primary key; USING INDEX: that index; NOTHING: none.
    let index_condition = match identity {
        b'd' => Some("i.indisprimary"),
        b'i' => Some("i.indisreplident"),
        _ => None,
    };
    let identity_columns = match index_condition {
        None => Vec::new(),
        Some(condition) => client
            .query(
                &format!(
                    "SELECT a.attname::text FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = $1 AND {condition}"
                ),
                &[&oid],
            )
            .await?
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect(),
    };
    Ok(Some(TableFacts {
        columns,
        identity,
        identity_columns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_only_when_needed() {
        let name = |schema: &str, table: &str| TableName {
            schema: schema.into(),
            name: table.into(),
        };
        assert_eq!(sql_table_name(&name("public", "orders")), "public.orders");
        assert_eq!(
            sql_table_name(&name("Shop", "order items")),
            "\"Shop\".\"order items\""
        );
    }
}
