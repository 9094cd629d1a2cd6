//! The tables the rules select, as the catalog has them now.
//!
//! [`resolve`] turns the `tables` entries of the rules (single tables and
//! whole schemas, `schema.*`) into the tables that exist: each one's relation
//! oid (walhook routes a table by its oid as well as its name, so a rename
//! while it runs loses nothing), the partitioned tables above it, and which
//! of its leaves cannot log updates and deletes. That last
//! fact matters beyond walhook: PostgreSQL refuses the *application's*
//! `UPDATE` and `DELETE` on a table without a replica identity (no primary
//! key, no identity index, not FULL) as soon as a publication publishes
//! those operations for it — and for a partitioned table it is each leaf
//! partition's identity that counts, not the root's.
//!
//! It reads only; it creates and alters nothing (`setup` does) and does not
//! check columns or filters (`rules::catalog_check` does).

use std::collections::BTreeMap;

use crate::config::{TableName, TableSelector};

/// One selected table that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogTable {
    pub oid: u32,
    pub name: TableName,
    /// A partitioned table (its rows live in its partitions).
    pub partitioned: bool,
    /// It has stored generated columns.
    pub generated_columns: bool,
    /// When it is a partition: the tables above it, nearest first.
    pub partition_ancestors: Vec<TableName>,
    /// It, or (for a partitioned table) each of its leaf partitions, when it
    /// has no replica identity able to log an update or a delete.
    pub without_identity: Vec<TableName>,
}

/// What the selectors name in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Every selected table that exists, by name.
    pub tables: BTreeMap<TableName, CatalogTable>,
    /// Tables named one by one that do not exist (or this role cannot see).
    pub missing_tables: Vec<TableName>,
    /// Schemas named whole that do not exist.
    pub missing_schemas: Vec<String>,
}

impl Resolution {
    /// The selected tables that `selectors` pick, in name order.
    pub fn selected_by<'a>(
        &'a self,
        selectors: &'a [TableSelector],
    ) -> impl Iterator<Item = &'a CatalogTable> + 'a {
        self.tables.values().filter(move |table| {
            selectors
                .iter()
                .any(|selector| selector.selects(&table.name.schema, &table.name.name))
        })
    }

    /// Whether a selected table is partitioned.
    pub fn has_partitioned(&self) -> bool {
        self.tables.values().any(|table| table.partitioned)
    }

    /// Whether a selected table has stored generated columns.
    pub fn has_generated_columns(&self) -> bool {
        self.tables.values().any(|table| table.generated_columns)
    }

    /// Every table some selected table's publication would hold that cannot
    /// log updates and deletes, deduplicated.
    pub fn without_identity(&self) -> Vec<TableName> {
        let mut tables: Vec<TableName> = self
            .tables
            .values()
            .flat_map(|table| table.without_identity.iter().cloned())
            .collect();
        tables.sort();
        tables.dedup();
        tables
    }
}

/// The named tables, and the tables of each schema a `schema.*` entry
/// selects: its ordinary and partitioned tables but not partitions, which
/// PostgreSQL publishes through their root. `weak` lists the leaves whose
/// replica identity cannot log an update or a delete: DEFAULT without a
/// primary key, USING INDEX without that index, or NOTHING. A plain table
/// is its own leaf (`pg_partition_tree` lists nothing for it).
const RESOLVE_QUERY: &str = "\
SELECT c.oid, n.nspname::text, c.relname::text,
       coalesce(up.schemas, '{}'), coalesce(up.names, '{}'),
       coalesce(weak.schemas, '{}'), coalesce(weak.names, '{}'), c.relkind = 'p',
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute g WHERE g.attrelid = c.oid
                  AND g.attgenerated = 's' AND NOT g.attisdropped)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN LATERAL (
       SELECT array_agg(an.nspname::text ORDER BY a.depth) AS schemas,
              array_agg(ac.relname::text ORDER BY a.depth) AS names
         FROM pg_catalog.pg_partition_ancestors(c.oid) WITH ORDINALITY AS a(relid, depth)
         JOIN pg_catalog.pg_class ac ON ac.oid = a.relid
         JOIN pg_catalog.pg_namespace an ON an.oid = ac.relnamespace
        WHERE c.relispartition AND a.relid <> c.oid
       ) up ON true
  LEFT JOIN LATERAL (
       SELECT array_agg(ln.nspname::text ORDER BY ln.nspname, lc.relname) AS schemas,
              array_agg(lc.relname::text ORDER BY ln.nspname, lc.relname) AS names
         FROM (SELECT t.relid FROM pg_catalog.pg_partition_tree(c.oid) t WHERE t.isleaf
               UNION SELECT c.oid WHERE c.relkind = 'r') leaf
         JOIN pg_catalog.pg_class lc ON lc.oid = leaf.relid
         JOIN pg_catalog.pg_namespace ln ON ln.oid = lc.relnamespace
        WHERE NOT (lc.relreplident = 'f'
           OR (lc.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                  WHERE i.indrelid = lc.oid AND i.indisprimary AND i.indisvalid))
           OR (lc.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                  WHERE i.indrelid = lc.oid AND i.indisreplident AND i.indisvalid)))
       ) weak ON true
 WHERE c.relkind IN ('r', 'p')
   AND ((n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
        OR (n.nspname = ANY($3::text[]) AND NOT c.relispartition))";

/// Looks up every table `selectors` name.
pub async fn resolve(
    client: &tokio_postgres::Client,
    selectors: &[TableSelector],
) -> Result<Resolution, tokio_postgres::Error> {
    let mut schemas: Vec<String> = Vec::new();
    let mut named: Vec<&TableName> = Vec::new();
    for selector in selectors {
        match selector {
            TableSelector::Table(table) => named.push(table),
            TableSelector::Schema(schema) => schemas.push(schema.clone()),
        }
    }
    schemas.sort();
    schemas.dedup();
    let named_schemas: Vec<&str> = named.iter().map(|table| table.schema.as_str()).collect();
    let named_tables: Vec<&str> = named.iter().map(|table| table.name.as_str()).collect();
    let rows = client
        .query(RESOLVE_QUERY, &[&named_schemas, &named_tables, &schemas])
        .await?;
    let mut resolution = Resolution::default();
    for row in rows {
        let name = TableName {
            schema: row.try_get(1)?,
            name: row.try_get(2)?,
        };
        let ancestor_schemas: Vec<String> = row.try_get(3)?;
        let ancestor_names: Vec<String> = row.try_get(4)?;
        let leaf_schemas: Vec<String> = row.try_get(5)?;
        let leaf_names: Vec<String> = row.try_get(6)?;
        let table = CatalogTable {
            oid: row.try_get(0)?,
            name: name.clone(),
            partitioned: row.try_get(7)?,
            generated_columns: row.try_get(8)?,
            partition_ancestors: ancestor_schemas
                .into_iter()
                .zip(ancestor_names)
                .map(|(schema, name)| TableName { schema, name })
                .collect(),
            without_identity: leaf_schemas
                .into_iter()
                .zip(leaf_names)
                .map(|(schema, name)| TableName { schema, name })
                .collect(),
        };
        resolution.tables.insert(name, table);
    }
    for table in named {
        if !resolution.tables.contains_key(table) && !resolution.missing_tables.contains(table) {
            resolution.missing_tables.push(table.clone());
        }
    }
    if !schemas.is_empty() {
        let existing: Vec<String> = client
            .query(
                "SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname = ANY($1::text[])",
                &[&schemas],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        resolution.missing_schemas = schemas
            .into_iter()
            .filter(|schema| !existing.contains(schema))
            .collect();
    }
    Ok(resolution)
}
