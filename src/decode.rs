//! Decoding: pgoutput messages → [`Change`]s whose columns are already
//! rendered as faithful JSON.
//!
//! The decoder keeps the relation cache (replaced whole on every Relation
//! message, so schema changes take effect at once), the type registry, and
//! the transaction being read (its xid, commit LSN and time, and the ordinal
//! of each change within it). Unchanged TOAST values are filled from a full
//! old row when there is one and otherwise left marked, never invented.
//!
//! It does not choose subscriptions or track delivery.

use std::sync::Arc;

use crate::catalog::{CatalogError, TypeRegistry};
use crate::event::EventKind;
use crate::event::{Cell, Change, ColumnInfo, Row, TableInfo, TransactionInfo};
use crate::lsn::Lsn;
use crate::oid::OidMap;
use crate::pgoutput::{OldTuple, RelationMessage, TupleData, TupleValue};

/// A change that cannot be decoded into an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeFailure {
    #[error("a change refers to relation {0}, which no Relation message described")]
    UnknownRelation(u32),
    #[error("a change arrived outside a transaction")]
    OutsideTransaction,
    #[error("reading the catalog for table {table}: {source}")]
    Catalog {
        table: String,
        #[source]
        source: CatalogFailure,
    },
}

/// Why a catalog read failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogFailure {
    #[error(transparent)]
    Types(#[from] CatalogError),
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

impl DecodeFailure {
    /// A lost catalog connection can be retried after reconnecting.
    pub fn is_transient(&self) -> bool {
        matches!(self, DecodeFailure::Catalog { .. })
    }
}

/// The decoder's state across messages.
pub struct Decoder {
    tables: OidMap<Arc<TableInfo>>,
    types: TypeRegistry,
    transaction: Option<Arc<TransactionInfo>>,
    next_ordinal: u32,
    /// Columns of the last decoded change whose value went out as text
    /// instead of as `to_jsonb` renders it, by index (repeats allowed).
    text_fallbacks: Vec<usize>,
}

impl Decoder {
    /// A decoder that starts from what `types` knows (kept across
    /// reconnections, so a type dropped meanwhile is still known).
    pub fn new(types: TypeRegistry) -> Decoder {
        Decoder {
            tables: OidMap::default(),
            types,
            transaction: None,
            next_ordinal: 0,
            text_fallbacks: Vec::new(),
        }
    }

    /// Hands back the type registry, for the next connection's decoder.
    pub fn take_types(&mut self) -> TypeRegistry {
        std::mem::take(&mut self.types)
    }

    /// Loads the types of every column of `relations` now, before their
    /// changes arrive: a type dropped soon after a change that used it
    /// (before walhook reads the change) is then still rendered faithfully.
    pub async fn preload(
        &mut self,
        catalog: &tokio_postgres::Client,
        relations: &[u32],
    ) -> Result<(), DecodeFailure> {
        if relations.is_empty() {
            return Ok(());
        }
        let failure = |source: CatalogFailure| DecodeFailure::Catalog {
            table: format!("{} rule tables", relations.len()),
            source,
        };
        let rows = catalog
            .query(
                "SELECT DISTINCT atttypid FROM pg_catalog.pg_attribute \
                 WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped",
                &[&relations],
            )
            .await
            .map_err(|error| failure(error.into()))?;
        let oids = rows
            .iter()
            .map(|row| row.try_get::<_, u32>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| failure(error.into()))?;
        self.types
            .ensure(catalog, &oids)
            .await
            .map_err(|error| failure(error.into()))
    }

    /// The columns (by index) of the change just decoded whose values went
    /// out as text; empty almost always.
    pub fn text_fallbacks(&self) -> &[usize] {
        &self.text_fallbacks
    }

    /// A transaction begins.
    pub fn begin(&mut self, xid: u32, commit_lsn: Lsn, commit_time_micros: i64) {
        self.transaction = Some(Arc::new(TransactionInfo {
            xid,
            commit_lsn,
            commit_time: crate::pgtime::format_rfc3339(commit_time_micros),
            commit_time_micros,
            backfill: None,
        }));
        self.next_ordinal = 0;
    }

    /// The transaction ends.
    pub fn commit(&mut self) {
        self.transaction = None;
    }

    /// A type changed (pgoutput Type message): forget what we knew.
    pub fn type_changed(&mut self, oid: u32) {
        self.types.invalidate(oid);
    }

    /// A table's (new) shape: loads its column types and key from the catalog
    /// and replaces the cache entry.
    pub async fn relation(
        &mut self,
        message: RelationMessage,
        catalog: &tokio_postgres::Client,
    ) -> Result<Arc<TableInfo>, DecodeFailure> {
        let table_name = format!("{}.{}", message.namespace, message.name);
        let failure = |source: CatalogFailure| DecodeFailure::Catalog {
            table: table_name.clone(),
            source,
        };
        let oids: Vec<u32> = message
            .columns
            .iter()
            .map(|column| column.type_oid)
            .collect();
        self.types
            .ensure(catalog, &oids)
            .await
            .map_err(|error| failure(error.into()))?;
        let primary_key = primary_key_columns(catalog, message.id)
            .await
            .map_err(|error| failure(error.into()))?;
        let columns: Vec<ColumnInfo> = message
            .columns
            .into_iter()
            .map(|column| {
                let mut info = ColumnInfo::new(column.name, column.type_oid, column.is_key);
                let unknown = self.types.unknown(&[column.type_oid]);
                if !unknown.is_empty() {
                    tracing::warn!(
                        table = %table_name,
                        column = %info.name,
                        type_oids = ?unknown,
                        "the column's type is not in the catalog (dropped before walhook read the \
                         change?); its values go out as their text, not as to_jsonb renders them"
                    );
                    info.type_unknown = true;
                }
                info
            })
            .collect();
        let identity_full = message.replica_identity == b'f';
        let mut key_columns: Vec<usize> = columns
            .iter()
            .enumerate()
            .filter(|(_, column)| primary_key.contains(&column.name))
            .map(|(index, _)| index)
            .collect();
        if key_columns.is_empty() && !identity_full {
            // No primary key: the replica identity index is the key.
            key_columns = columns
                .iter()
                .enumerate()
                .filter(|(_, column)| column.in_identity)
                .map(|(index, _)| index)
                .collect();
        }
        let table = Arc::new(TableInfo::new(
            message.id,
            message.namespace,
            message.name,
            columns,
            key_columns,
            identity_full,
        ));
        self.tables.insert(table.relation_id, Arc::clone(&table));
        Ok(table)
    }

    /// Decodes an insert, update or delete.
    pub fn change(
        &mut self,
        kind: EventKind,
        relation_id: u32,
        new: Option<&TupleData>,
        old: Option<&OldTuple>,
        lsn: Lsn,
    ) -> Result<Change, DecodeFailure> {
        let table = self
            .tables
            .get(&relation_id)
            .cloned()
            .ok_or(DecodeFailure::UnknownRelation(relation_id))?;
        let transaction = self
            .transaction
            .clone()
            .ok_or(DecodeFailure::OutsideTransaction)?;
        self.text_fallbacks.clear();
        let old = old.map(|old| match old {
            OldTuple::Key(tuple) => self.render(&table, tuple, true),
            OldTuple::Full(tuple) => self.render(&table, tuple, false),
        });
        let mut new = new.map(|tuple| self.render(&table, tuple, false));
        if let (Some(new), Some(old)) = (&mut new, &old) {
            fill_unchanged_toast(new, old);
        }
        let ordinal = self.next_ordinal;
        self.next_ordinal = self.next_ordinal.wrapping_add(1);
        Ok(Change {
            table,
            kind,
            new,
            old,
            lsn,
            ordinal,
            transaction,
        })
    }

    /// Renders the rows of a backfill chunk (each column's text output, in
    /// `table`'s column order) as the stream's rows are rendered, loading
    /// their types first.
    pub async fn backfill_rows(
        &mut self,
        catalog: &tokio_postgres::Client,
        table: &TableInfo,
        rows: &[Vec<Option<String>>],
    ) -> Result<Vec<Row>, DecodeFailure> {
        let oids: Vec<u32> = table.columns.iter().map(|column| column.type_oid).collect();
        self.types
            .ensure(catalog, &oids)
            .await
            .map_err(|error| DecodeFailure::Catalog {
                table: format!("{}.{}", table.schema, table.name),
                source: CatalogFailure::Types(error),
            })?;
        let rendered = rows
            .iter()
            .map(|row| {
                let tuple = TupleData(
                    row.iter()
                        .map(|value| match value {
                            Some(text) => TupleValue::Text(bytes::Bytes::copy_from_slice(
                                text.as_bytes(),
                            )),
                            None => TupleValue::Null,
                        })
                        .collect(),
                );
                self.render(table, &tuple, false)
            })
            .collect();
        self.text_fallbacks.clear();
        Ok(rendered)
    }

    /// One TRUNCATE event per table.
    pub fn truncate(&mut self, relation_id: u32, lsn: Lsn) -> Result<Change, DecodeFailure> {
        self.change(EventKind::Truncate, relation_id, None, None, lsn)
    }

    fn render(&mut self, table: &TableInfo, tuple: &TupleData, key_only: bool) -> Row {
        // Text values render to about their own length plus quotes; sizing
        // once avoids regrowing the buffer column by column.
        let text_bytes: usize = tuple
            .0
            .iter()
            .map(|value| match value {
                TupleValue::Text(text) => text.len() + 8,
                TupleValue::Binary(bytes) => bytes.len() * 2 + 8,
                TupleValue::Null | TupleValue::UnchangedToast => 4,
            })
            .sum();
        let mut row = Row {
            json: Vec::with_capacity(text_bytes + text_bytes / 8),
            cells: Vec::with_capacity(table.columns.len()),
        };
        for (index, column) in table.columns.iter().enumerate() {
            match tuple.0.get(index) {
                None => row.cells.push(Cell::Absent),
                // A key-only old row sends the other columns as nulls that
                // are not values: leave them out.
                Some(TupleValue::Null) if key_only && !column.in_identity => {
                    row.cells.push(Cell::Absent)
                }
                Some(TupleValue::Null) => row.push_value(|out| out.extend_from_slice(b"null")),
                Some(TupleValue::UnchangedToast) => row.cells.push(Cell::UnchangedToast),
                Some(TupleValue::Text(text)) => {
                    let mut faithful = true;
                    row.push_value(|out| {
                        faithful = crate::value::write_json(out, column.type_oid, text, &self.types)
                    });
                    if !faithful || column.type_unknown {
                        self.text_fallbacks.push(index);
                    }
                }
                Some(TupleValue::Binary(bytes)) => row.push_value(|out| {
                    // walhook asks for text; binary is kept as hex like bytea.
                    let mut hex = String::with_capacity(bytes.len() * 2 + 2);
                    hex.push_str("\\x");
                    crate::value::escape::push_hex(&mut hex, bytes);
                    crate::value::escape::write_str(out, &hex);
                }),
            }
        }
        row
    }
}

/// Copies values the new row marks as unchanged TOAST from the old row, when
/// the old row has them (REPLICA IDENTITY FULL logs them de-toasted).
fn fill_unchanged_toast(new: &mut Row, old: &Row) {
    for index in 0..new.cells.len() {
        if new.cells[index] != Cell::UnchangedToast {
            continue;
        }
        if let Some(value) = old.value(index) {
            let start = new.json.len();
            new.json.extend_from_slice(value);
            new.cells[index] = Cell::Json(start..new.json.len());
        }
    }
}

/// The names of a table's primary key columns.
async fn primary_key_columns(
    catalog: &tokio_postgres::Client,
    relation_id: u32,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = catalog
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::oid AND i.indisprimary",
            &[&relation_id],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_toast_is_filled_only_from_a_sent_old_value() {
        let mut new = Row::default();
        new.push_value(|out| out.extend_from_slice(b"1"));
        new.cells.push(Cell::UnchangedToast);
        new.cells.push(Cell::UnchangedToast);
        let mut old = Row::default();
        old.push_value(|out| out.extend_from_slice(b"1"));
        old.push_value(|out| out.extend_from_slice(b"\"big\""));
        old.cells.push(Cell::Absent);
        fill_unchanged_toast(&mut new, &old);
        assert_eq!(new.value(1), Some(&b"\"big\""[..]));
        assert_eq!(new.cells[2], Cell::UnchangedToast);
    }
}
