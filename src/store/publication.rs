//! The publication walhook streams: what the rules need it to hold, what it
//! holds now, and the statements that close the gap.
//!
//! The rules need every table they name one by one (`FOR TABLE`), every
//! schema they select whole (`FOR TABLES IN SCHEMA`, PostgreSQL 15 and newer,
//! so that tables created later are published from their first row), the
//! operations some subscription asks for, and changes of partitions
//! published under their root's name (`publish_via_partition_root`: without
//! it a partitioned table's changes arrive under the leaf partitions' names
//! and match no rule). On PostgreSQL 18 and newer, stored generated columns
//! are published too (`publish_generated_columns`), so payloads hold them as
//! `to_jsonb` does; older servers never send them.
//!
//! It reads the catalog and builds SQL text; `setup` runs the statements,
//! `check` reports the differences, the catalog watch reads what is
//! published. It does not decide which tables the rules select (`tables`).

use crate::config::{TableName, quote_identifier};
use crate::event::EventKind;
use crate::tables::Resolution;

/// The first server version with `FOR TABLES IN SCHEMA`.
pub const SCHEMA_PUBLICATIONS_SINCE: i32 = 150_000;
/// The first server version that publishes generated columns.
pub const GENERATED_COLUMNS_SINCE: i32 = 180_000;

/// What a publication holds, as the catalog says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationState {
    /// `FOR ALL TABLES`.
    pub all_tables: bool,
    pub via_root: bool,
    /// Stored generated columns are published (PostgreSQL 18+).
    pub generated_columns: bool,
    pub operations: Vec<EventKind>,
    /// Tables added one by one, sorted.
    pub tables: Vec<TableName>,
    /// Schemas added whole, sorted.
    pub schemas: Vec<String>,
}

/// What the rules need a publication to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedPublication {
    /// Tables named one by one, minus those of a wanted schema; sorted.
    pub tables: Vec<TableName>,
    pub schemas: Vec<String>,
    pub operations: Vec<EventKind>,
    /// Whether to publish generated columns (the server can).
    pub generated_columns: bool,
    /// The server's `server_version_num`.
    pub server_version: i32,
    /// A selected table is partitioned: partitions must be published
    /// through their root.
    pub partitioned: bool,
    /// A selected table has stored generated columns.
    pub has_generated: bool,
}

impl WantedPublication {
    pub fn new(
        tables: &[TableName],
        schemas: &[String],
        events: &[EventKind],
        server_version: i32,
    ) -> WantedPublication {
        let mut schemas = schemas.to_vec();
        schemas.sort();
        schemas.dedup();
        let mut tables: Vec<TableName> = tables
            .iter()
            .filter(|table| !schemas.contains(&table.schema))
            .cloned()
            .collect();
        tables.sort();
        tables.dedup();
        let mut operations: Vec<EventKind> = EventKind::ALL
            .into_iter()
            .filter(|kind| events.contains(kind))
            .collect();
        if operations.is_empty() {
            operations.push(EventKind::Insert);
        }
        WantedPublication {
            tables,
            schemas,
            operations,
            generated_columns: server_version >= GENERATED_COLUMNS_SINCE,
            server_version,
            partitioned: false,
            has_generated: false,
        }
    }

    /// What the selected tables themselves need of an existing publication
    /// (a publication walhook creates gets every option anyway).
    pub fn for_tables(mut self, resolution: &Resolution) -> WantedPublication {
        self.partitioned = resolution.has_partitioned();
        self.has_generated = resolution.has_generated_columns();
        self
    }

    /// The `publish` option's value, e.g. `insert, update`.
    pub fn publish_option(&self) -> String {
        operations_text(&self.operations)
    }

    /// The `WITH (...)` options.
    fn options(&self) -> String {
        let mut options = format!(
            "publish = '{}', publish_via_partition_root = true",
            self.publish_option()
        );
        if self.generated_columns {
            options.push_str(", publish_generated_columns = stored");
        }
        options
    }

    /// The object list after `FOR` / `SET`: `TABLES IN SCHEMA a, TABLE b.c`.
    fn objects(&self) -> String {
        let mut parts = Vec::new();
        if !self.schemas.is_empty() {
            let schemas: Vec<String> = self.schemas.iter().map(|s| quote_identifier(s)).collect();
            parts.push(format!("TABLES IN SCHEMA {}", schemas.join(", ")));
        }
        if !self.tables.is_empty() {
            let tables: Vec<String> = self.tables.iter().map(TableName::quoted).collect();
            parts.push(format!("TABLE {}", tables.join(", ")));
        }
        parts.join(", ")
    }

    /// `CREATE PUBLICATION` for exactly what is wanted.
    pub fn create_statement(&self, publication: &str) -> String {
        format!(
            "CREATE PUBLICATION {} FOR {} WITH ({})",
            quote_identifier(publication),
            self.objects(),
            self.options()
        )
    }

    /// The statements that turn `current` into what is wanted; empty when it
    /// already is. Of an existing publication's options, only those the
    /// selected tables need are changed (another reader of the publication
    /// may rely on the rest).
    pub fn alterations(&self, publication: &str, current: &PublicationState) -> Vec<String> {
        let name = quote_identifier(publication);
        let mut statements = Vec::new();
        let mut options = Vec::new();
        if current.operations != self.operations {
            options.push(format!("publish = '{}'", self.publish_option()));
        }
        if self.partitioned && !current.via_root {
            options.push("publish_via_partition_root = true".to_owned());
        }
        if self.generated_columns && self.has_generated && !current.generated_columns {
            options.push("publish_generated_columns = stored".to_owned());
        }
        if !options.is_empty() {
            statements.push(format!(
                "ALTER PUBLICATION {name} SET ({})",
                options.join(", ")
            ));
        }
        if !current.all_tables && (current.tables != self.tables || current.schemas != self.schemas)
        {
            statements.push(format!("ALTER PUBLICATION {name} SET {}", self.objects()));
        }
        statements
    }

    /// Whether `current` already delivers every change the rules need, so
    /// that a role that may not alter it can use it as it is. Partitioned
    /// tables need `publish_via_partition_root`.
    pub fn is_covered_by(&self, current: &PublicationState) -> bool {
        let tables = current.all_tables
            || self.tables.iter().all(|table| {
                current.tables.contains(table) || current.schemas.contains(&table.schema)
            });
        let schemas = current.all_tables
            || self
                .schemas
                .iter()
                .all(|schema| current.schemas.contains(schema));
        let operations = self
            .operations
            .iter()
            .all(|kind| current.operations.contains(kind));
        tables && schemas && operations && (current.via_root || !self.partitioned)
    }
}

/// `insert, update, …` in PostgreSQL's order.
pub fn operations_text(operations: &[EventKind]) -> String {
    EventKind::ALL
        .into_iter()
        .filter(|kind| operations.contains(kind))
        .map(EventKind::sql_operation)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads what `publication` holds; `None` when it does not exist.
pub async fn read(
    client: &tokio_postgres::Client,
    publication: &str,
    server_version: i32,
) -> Result<Option<PublicationState>, tokio_postgres::Error> {
    // pubgencols exists from PostgreSQL 18 (a char, 's' for stored; a
    // boolean in some betas): read through to_jsonb so the query works on
    // every version.
    let Some(row) = client
        .query_opt(
            "SELECT p.oid, p.puballtables, p.pubviaroot, p.pubinsert, p.pubupdate, p.pubdelete, \
                    p.pubtruncate, coalesce(to_jsonb(p) ->> 'pubgencols', 'n') IN ('s', 'true') \
             FROM pg_catalog.pg_publication p WHERE p.pubname = $1",
            &[&publication],
        )
        .await?
    else {
        return Ok(None);
    };
    let oid: u32 = row.try_get(0)?;
    let operations = [
        (EventKind::Insert, 3),
        (EventKind::Update, 4),
        (EventKind::Delete, 5),
        (EventKind::Truncate, 6),
    ]
    .into_iter()
    .filter_map(|(kind, column)| match row.try_get::<_, bool>(column) {
        Ok(true) => Some(Ok(kind)),
        Ok(false) => None,
        Err(error) => Some(Err(error)),
    })
    .collect::<Result<Vec<_>, _>>()?;
    let tables = sorted_table_names(
        client,
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_publication_rel r \
         JOIN pg_catalog.pg_class c ON c.oid = r.prrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE r.prpubid = $1",
        &oid,
    )
    .await?;
    let mut schemas: Vec<String> = if server_version >= SCHEMA_PUBLICATIONS_SINCE {
        client
            .query(
                "SELECT n.nspname::text FROM pg_catalog.pg_publication_namespace p \
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pnnspid WHERE p.pnpubid = $1",
                &[&oid],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    schemas.sort();
    Ok(Some(PublicationState {
        all_tables: row.try_get(1)?,
        via_root: row.try_get(2)?,
        generated_columns: row.try_get(7)?,
        operations,
        tables,
        schemas,
    }))
}

/// The tables whose changes `publication` sends, under the names they
/// arrive with (the root of a partition tree when it publishes via the
/// root, each leaf otherwise), sorted.
pub async fn published_tables(
    client: &tokio_postgres::Client,
    publication: &str,
) -> Result<Vec<TableName>, tokio_postgres::Error> {
    sorted_table_names(
        client,
        "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables \
         WHERE pubname = $1",
        &publication,
    )
    .await
}

/// The (schema, name) rows of `query` with one parameter, as sorted names.
async fn sorted_table_names(
    client: &tokio_postgres::Client,
    query: &str,
    parameter: &(dyn tokio_postgres::types::ToSql + Sync),
) -> Result<Vec<TableName>, tokio_postgres::Error> {
    let mut tables = client
        .query(query, &[parameter])
        .await?
        .iter()
        .map(|row| {
            Ok(TableName {
                schema: row.try_get(0)?,
                name: row.try_get(1)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    tables.sort();
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(schema: &str, name: &str) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    fn state(tables: Vec<TableName>, schemas: Vec<&str>, via_root: bool) -> PublicationState {
        PublicationState {
            all_tables: false,
            via_root,
            generated_columns: false,
            operations: vec![EventKind::Insert, EventKind::Update],
            tables,
            schemas: schemas.into_iter().map(String::from).collect(),
        }
    }

    #[test]
    fn schemas_and_tables_in_one_statement_without_tables_a_schema_covers() {
        let wanted = WantedPublication::new(
            &[table("public", "orders"), table("shop", "items")],
            &["public".to_owned()],
            &[EventKind::Update, EventKind::Insert],
            150_000,
        );
        assert_eq!(wanted.tables, vec![table("shop", "items")]);
        assert_eq!(
            wanted.create_statement("walhook"),
            "CREATE PUBLICATION \"walhook\" FOR TABLES IN SCHEMA \"public\", \
             TABLE \"shop\".\"items\" WITH (publish = 'insert, update', \
             publish_via_partition_root = true)"
        );
        let on_18 = WantedPublication::new(&[table("a", "b")], &[], &[], 180_000);
        assert_eq!(
            on_18.create_statement("p"),
            "CREATE PUBLICATION \"p\" FOR TABLE \"a\".\"b\" WITH (publish = 'insert', \
             publish_via_partition_root = true, publish_generated_columns = stored)"
        );
    }

    #[test]
    fn alterations_set_the_root_option_and_the_objects_only_when_they_differ() {
        let wanted = WantedPublication::new(
            &[table("public", "pt")],
            &[],
            &[EventKind::Insert, EventKind::Update],
            150_000,
        );
        let same = state(vec![table("public", "pt")], vec![], true);
        assert!(wanted.alterations("p", &same).is_empty());
        let leaves = state(vec![table("public", "pt")], vec![], false);
        assert!(
            wanted.alterations("p", &leaves).is_empty(),
            "no partitioned table: the option is left as it is"
        );
        assert!(wanted.is_covered_by(&leaves));
        let mut wanted = wanted;
        wanted.partitioned = true;
        assert_eq!(
            wanted.alterations("p", &leaves),
            vec!["ALTER PUBLICATION \"p\" SET (publish_via_partition_root = true)"]
        );
        assert!(!wanted.is_covered_by(&leaves));
        let other = state(vec![table("public", "x")], vec!["shop"], true);
        assert_eq!(
            wanted.alterations("p", &other),
            vec!["ALTER PUBLICATION \"p\" SET TABLE \"public\".\"pt\""]
        );
        assert!(!wanted.is_covered_by(&other));
        let wider = state(vec![], vec!["public"], true);
        assert!(wanted.is_covered_by(&wider));
    }
}
