//! The webhook payload (docs/payload.md) and its stable id.
//!
//! A [`Change`] is one decoded row change with every column already rendered
//! as JSON text (see `decode`); [`write_payload`] lays one subscription's
//! view of it out as the payload bytes, copying those rendered values without
//! re-parsing them. The id is a hash of (subscription, commit LSN, ordinal of
//! the change within its transaction), so a replay after a crash carries the
//! same id as the first delivery.
//!
//! It does not decide which subscriptions get a change (`rules`) or send
//! anything (`deliver`).

use std::ops::Range;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::lsn::Lsn;
use crate::value::compare;
use crate::value::escape::{hex_pair, write_str};

/// The kinds of change: what a subscription asks for (`events`), what a
/// publication publishes, and a payload's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A row a backfill read from the table (docs/backfills.md): never
    /// published nor asked for in `events`; a backfill sends it.
    #[serde(skip)]
    Read,
}

impl EventKind {
    /// Every kind, in the order PostgreSQL lists publication operations.
    pub const ALL: [EventKind; 4] = [
        EventKind::Insert,
        EventKind::Update,
        EventKind::Delete,
        EventKind::Truncate,
    ];

    /// The operation's name in a publication's `publish` option.
    pub fn sql_operation(self) -> &'static str {
        match self {
            EventKind::Insert => "insert",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
            EventKind::Truncate => "truncate",
            EventKind::Read => "read",
        }
    }

    /// The payload's `type` value.
    pub fn payload_type(self) -> &'static str {
        match self {
            EventKind::Insert => "INSERT",
            EventKind::Update => "UPDATE",
            EventKind::Delete => "DELETE",
            EventKind::Truncate => "TRUNCATE",
            EventKind::Read => "READ",
        }
    }
}

/// A table as the latest Relation message described it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub relation_id: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    /// Indexes into `columns` of the primary key (or replica identity index)
    /// columns, which decide the ordering lane; empty when the table has none.
    pub key_columns: Vec<usize>,
    /// `REPLICA IDENTITY FULL`: old rows arrive whole.
    pub identity_full: bool,
    /// `schema` and `name` as JSON strings, escaped once per Relation
    /// message instead of once per payload.
    json_schema: Box<[u8]>,
    json_name: Box<[u8]>,
}

impl TableInfo {
    pub fn new(
        relation_id: u32,
        schema: String,
        name: String,
        columns: Vec<ColumnInfo>,
        key_columns: Vec<usize>,
        identity_full: bool,
    ) -> TableInfo {
        TableInfo {
            relation_id,
            json_schema: json_string(&schema),
            json_name: json_string(&name),
            schema,
            name,
            columns,
            key_columns,
            identity_full,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (sent in a key-only old row).
    pub in_identity: bool,
    /// Its type, or a type its rendering needs, is not in the catalog (it
    /// was dropped before walhook read the change): values go out as text.
    pub type_unknown: bool,
    /// `name` as a JSON string: a payload names each column it sends.
    json_name: Box<[u8]>,
}

impl ColumnInfo {
    pub fn new(name: String, type_oid: u32, in_identity: bool) -> ColumnInfo {
        ColumnInfo {
            json_name: json_string(&name),
            name,
            type_oid,
            in_identity,
            type_unknown: false,
        }
    }
}

fn json_string(text: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(text.len() + 2);
    write_str(&mut out, text);
    out.into_boxed_slice()
}

/// The transaction a change belongs to.
#[derive(Debug, Clone)]
pub struct TransactionInfo {
    pub xid: u32,
    /// The commit record's LSN (pgoutput Begin's final LSN).
    pub commit_lsn: Lsn,
    /// RFC 3339, UTC, microseconds, `Z`.
    pub commit_time: String,
    /// The same, as microseconds since 2000-01-01 UTC.
    pub commit_time_micros: i64,
    /// Set for the rows of a backfill chunk: the backfill's id (the
    /// "transaction" is the chunk, `commit_lsn` its high watermark's LSN).
    pub backfill: Option<i64>,
}

/// One cell of a decoded row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// Postgres did not send this column (a key-only old row).
    Absent,
    /// An unchanged TOAST value whose contents were not sent.
    UnchangedToast,
    /// The JSON text of the value (`null` included) in the row's buffer.
    /// Offsets are `usize`: a row's JSON may pass 4 GiB (five 1 GB values,
    /// or one whose escaping multiplies it), where `u32` offsets wrapped
    /// and cut other columns' text.
    Json(Range<usize>),
}

/// A row whose values are rendered as JSON text, one [`Cell`] per column of
/// the table, in table order.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub json: Vec<u8>,
    pub cells: Vec<Cell>,
}

impl Row {
    /// The JSON text of column `index`, when it was sent.
    pub fn value(&self, index: usize) -> Option<&[u8]> {
        match self.cells.get(index)? {
            Cell::Json(range) => self.json.get(range.clone()),
            Cell::Absent | Cell::UnchangedToast => None,
        }
    }

    /// Appends a rendered value produced by `render` as the next cell.
    pub fn push_value(&mut self, render: impl FnOnce(&mut Vec<u8>)) {
        let start = self.json.len();
        render(&mut self.json);
        self.cells.push(Cell::Json(start..self.json.len()));
    }
}

/// One decoded row change (or one table of a TRUNCATE).
#[derive(Debug, Clone)]
pub struct Change {
    pub table: Arc<TableInfo>,
    pub kind: EventKind,
    pub new: Option<Row>,
    pub old: Option<Row>,
    /// The change's own WAL position.
    pub lsn: Lsn,
    /// Its position within the transaction, from 0; makes ids distinct when
    /// several changes share a WAL record.
    pub ordinal: u32,
    pub transaction: Arc<TransactionInfo>,
}

impl Change {
    /// Whether the old row holds every column (REPLICA IDENTITY FULL).
    fn old_is_full(&self) -> bool {
        self.old
            .as_ref()
            .is_some_and(|old| old.cells.iter().all(|cell| *cell != Cell::Absent))
    }

    /// Columns an UPDATE changed, by index, when the old row is whole.
    pub fn changed_columns(&self) -> Option<Vec<usize>> {
        if self.kind != EventKind::Update || !self.old_is_full() {
            return None;
        }
        let (new, old) = (self.new.as_ref()?, self.old.as_ref()?);
        Some(
            (0..self.table.columns.len())
                .filter(|&index| compare::is_distinct(new.value(index), old.value(index)))
                .collect(),
        )
    }

    /// A hash of the row's key, so changes to one key share a lane.
    pub fn ordering_key(&self) -> u64 {
        let row = match self.kind {
            EventKind::Delete => self.old.as_ref(),
            _ => self.new.as_ref(),
        };
        key_hash(&self.table, row)
    }

    /// For an update that changed the row's key: the hash of the old key, so
    /// delivery can let the old key's earlier changes go first.
    pub fn previous_ordering_key(&self) -> Option<u64> {
        if self.kind != EventKind::Update {
            return None;
        }
        let (new, old) = (self.new.as_ref()?, self.old.as_ref()?);
        let key_changed = self
            .table
            .key_columns
            .iter()
            .any(|&index| old.value(index).is_some() && old.value(index) != new.value(index));
        key_changed.then(|| key_hash(&self.table, Some(old)))
    }
}

fn key_hash(table: &TableInfo, row: Option<&Row>) -> u64 {
    // FNV-1a: lanes need spread, not resistance to crafted keys (a crafted
    // key can at worst share a lane; delivery mixes the hash again for its
    // map of keys in flight), and SipHash showed in profiles.
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    };
    feed(&table.relation_id.to_le_bytes());
    if let Some(row) = row {
        for &index in &table.key_columns {
            match row.value(index) {
                // The length keeps ("ab","c") apart from ("a","bc").
                Some(value) => {
                    feed(&(value.len() as u32).to_le_bytes());
                    feed(value);
                }
                None => feed(&[0xff]),
            }
        }
    }
    hash
}

/// An event's id: `wh_` and 32 lowercase hex digits. Kept inline, not on the
/// heap: every event carries one from the reader to a lane.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId([u8; EVENT_ID_LEN]);

const EVENT_ID_LEN: usize = 35;

impl EventId {
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// An id as `as_str` wrote it (`wh_` and 32 lowercase hex digits).
    pub fn parse(text: &str) -> Option<EventId> {
        let bytes: [u8; EVENT_ID_LEN] = text.as_bytes().try_into().ok()?;
        (bytes.starts_with(b"wh_")
            && bytes[3..]
                .iter()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(EventId(bytes))
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload id of a change for a subscription.
pub fn event_id(subscription: &str, commit_lsn: Lsn, ordinal: u32) -> EventId {
    let mut hasher = Sha256::new();
    hasher.update(subscription.as_bytes());
    hasher.update([0]);
    hasher.update(commit_lsn.0.to_be_bytes());
    hasher.update(ordinal.to_be_bytes());
    id_from_digest(&hasher.finalize())
}

/// Appends an LSN in PostgreSQL's `X/Y` form (uppercase hex, no padding).
fn push_lsn(out: &mut Vec<u8>, lsn: Lsn) {
    push_hex_u32(out, (lsn.0 >> 32) as u32);
    out.push(b'/');
    push_hex_u32(out, lsn.0 as u32);
}

fn push_hex_u32(out: &mut Vec<u8>, value: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let digits = (32 - value.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(DIGITS[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

/// Which columns a subscription sends: all, or a projection (by index).
#[derive(Debug, Clone, Copy)]
pub enum Projection<'a> {
    All,
    Only(&'a [bool]),
}

impl Projection<'_> {
    fn keeps(&self, index: usize) -> bool {
        match self {
            Projection::All => true,
            Projection::Only(mask) => mask.get(index).copied().unwrap_or(false),
        }
    }
}

/// Writes the payload of `change` for `subscription` into `out` and returns
/// its id.
pub fn write_payload(
    out: &mut Vec<u8>,
    change: &Change,
    subscription: &str,
    projection: Projection<'_>,
) -> EventId {
    let id = event_id(subscription, change.transaction.commit_lsn, change.ordinal);
    write_payload_with_id(out, change, subscription, projection, id);
    id
}

/// The id of a backfilled row for a subscription: the same for the same
/// row (table and key) in the same backfill, whenever it is read, so that a
/// chunk read again after a restart repeats ids rather than inventing them.
pub fn backfill_event_id(
    subscription: &str,
    backfill: i64,
    table: &TableInfo,
    row: &Row,
) -> EventId {
    let mut hasher = Sha256::new();
    hasher.update(b"backfill\0");
    hasher.update(subscription.as_bytes());
    hasher.update([0]);
    hasher.update(backfill.to_be_bytes());
    hasher.update(table.relation_id.to_be_bytes());
    for &index in &table.key_columns {
        let value = row.value(index).unwrap_or_default();
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value);
    }
    id_from_digest(&hasher.finalize())
}

/// `wh_` and the first 16 bytes of a SHA-256 digest in hex: the shape of
/// every event id.
fn id_from_digest(digest: &[u8]) -> EventId {
    let mut id = [0u8; EVENT_ID_LEN];
    id[..3].copy_from_slice(b"wh_");
    for (pair, &byte) in id[3..].chunks_exact_mut(2).zip(digest.iter().take(16)) {
        pair.copy_from_slice(&hex_pair(byte));
    }
    EventId(id)
}

/// Writes the payload of `change` for `subscription`, with the id given.
pub fn write_payload_with_id(
    out: &mut Vec<u8>,
    change: &Change,
    subscription: &str,
    projection: Projection<'_>,
    id: EventId,
) {
    write_body(out, change, subscription, projection, id, false);
}

/// The id of a test event (`walhook send-test`): fresh for each `nonce`,
/// in the shape of every id, and never a change's or a backfilled row's id
/// (those hash other inputs, under other prefixes).
pub fn test_event_id(subscription: &str, nonce: u128) -> EventId {
    let mut hasher = Sha256::new();
    hasher.update(b"send-test\0");
    hasher.update(subscription.as_bytes());
    hasher.update([0]);
    hasher.update(nonce.to_be_bytes());
    id_from_digest(&hasher.finalize())
}

/// Writes the payload of a test event (`walhook send-test`): a real
/// event's body, with `"test": true` last in `source` (docs/payload.md).
pub fn write_test_payload(
    out: &mut Vec<u8>,
    change: &Change,
    subscription: &str,
    projection: Projection<'_>,
    id: EventId,
) {
    write_body(out, change, subscription, projection, id, true);
}

fn write_body(
    out: &mut Vec<u8>,
    change: &Change,
    subscription: &str,
    projection: Projection<'_>,
    id: EventId,
    test: bool,
) {
    let table = &change.table;
    out.extend_from_slice(b"{\"id\":\"");
    // Hex digits need no escaping.
    out.extend_from_slice(id.as_str().as_bytes());
    out.push(b'"');
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(change.kind.payload_type().as_bytes());
    out.extend_from_slice(b"\",\"schema\":");
    out.extend_from_slice(&table.json_schema);
    out.extend_from_slice(b",\"table\":");
    out.extend_from_slice(&table.json_name);
    out.extend_from_slice(b",\"record\":");
    write_row(out, table, change.new.as_ref(), projection);
    out.extend_from_slice(b",\"old_record\":");
    write_row(out, table, change.old.as_ref(), projection);
    out.extend_from_slice(b",\"changed_columns\":");
    match change.changed_columns() {
        Some(changed) => write_names(
            out,
            table,
            changed.into_iter().filter(|&index| projection.keeps(index)),
        ),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(new) = &change.new {
        let mut toasted = new
            .cells
            .iter()
            .enumerate()
            .filter(|(index, cell)| **cell == Cell::UnchangedToast && projection.keeps(*index))
            .map(|(index, _)| index)
            .peekable();
        if toasted.peek().is_some() {
            out.extend_from_slice(b",\"unchanged_toast\":");
            write_names(out, table, toasted);
        }
    }
    out.extend_from_slice(b",\"subscription\":");
    write_str(out, subscription);
    let transaction = &change.transaction;
    // Written by hand: `write!` costs more than the rest of the payload.
    out.extend_from_slice(b",\"source\":{\"lsn\":\"");
    push_lsn(out, change.lsn);
    out.extend_from_slice(b"\",\"commit_lsn\":\"");
    push_lsn(out, transaction.commit_lsn);
    out.extend_from_slice(b"\",\"xid\":");
    out.extend_from_slice(itoa::Buffer::new().format(transaction.xid).as_bytes());
    out.extend_from_slice(b",\"commit_time\":\"");
    out.extend_from_slice(transaction.commit_time.as_bytes());
    out.push(b'"');
    if let Some(backfill) = transaction.backfill {
        out.extend_from_slice(b",\"backfill\":");
        out.extend_from_slice(itoa::Buffer::new().format(backfill).as_bytes());
    }
    if test {
        out.extend_from_slice(b",\"test\":true");
    }
    out.extend_from_slice(b"}}");
}

fn write_row(out: &mut Vec<u8>, table: &TableInfo, row: Option<&Row>, projection: Projection<'_>) {
    let Some(row) = row else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    let mut first = true;
    for (index, column) in table.columns.iter().enumerate() {
        let Some(value) = row.value(index) else {
            continue;
        };
        if !projection.keeps(index) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&column.json_name);
        out.push(b':');
        out.extend_from_slice(value);
    }
    out.push(b'}');
}

fn write_names(out: &mut Vec<u8>, table: &TableInfo, indexes: impl Iterator<Item = usize>) {
    out.push(b'[');
    for (position, index) in indexes.enumerate() {
        if position > 0 {
            out.push(b',');
        }
        if let Some(column) = table.columns.get(index) {
            out.extend_from_slice(&column.json_name);
        }
    }
    out.push(b']');
}

/// Tables, rows and changes for unit tests, built one way everywhere.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::sync::Arc;

    use super::{Cell, Change, ColumnInfo, EventKind, Row, TableInfo, TransactionInfo};
    use crate::lsn::Lsn;

    /// `public.<name>` with `columns` (name, type oid), relation oid 16384;
    /// the first column is the key. REPLICA IDENTITY FULL when
    /// `identity_full`.
    pub fn table(name: &str, columns: &[(&str, u32)], identity_full: bool) -> Arc<TableInfo> {
        Arc::new(TableInfo::new(
            16384,
            "public".into(),
            name.into(),
            columns
                .iter()
                .enumerate()
                .map(|(index, &(name, type_oid))| {
                    ColumnInfo::new(name.into(), type_oid, index == 0)
                })
                .collect(),
            vec![0],
            identity_full,
        ))
    }

    /// A row from JSON cells in column order: `None` is an unchanged TOAST
    /// value, `Some("-")` a column that was not sent.
    pub fn row(cells: &[Option<&str>]) -> Row {
        let mut row = Row::default();
        for cell in cells {
            match cell {
                Some("-") => row.cells.push(Cell::Absent),
                Some(json) => row.push_value(|out| out.extend_from_slice(json.as_bytes())),
                None => row.cells.push(Cell::UnchangedToast),
            }
        }
        row
    }

    /// A change of `table` at 0/1A2B3C8, the fourth (ordinal 3) of
    /// transaction 7431, committed at 0/1A2B400 at the epoch of 2000.
    pub fn change(
        table: Arc<TableInfo>,
        kind: EventKind,
        new: Option<Row>,
        old: Option<Row>,
    ) -> Change {
        Change {
            table,
            kind,
            new,
            old,
            lsn: Lsn(0x1A2B3C8),
            ordinal: 3,
            transaction: Arc::new(TransactionInfo {
                xid: 7431,
                commit_lsn: Lsn(0x1A2B400),
                commit_time: crate::pgtime::format_rfc3339(0),
                commit_time_micros: 0,
                backfill: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::row;
    use super::*;

    fn table() -> Arc<TableInfo> {
        fixtures::table("orders", &[("id", 25), ("status", 25), ("note", 25)], true)
    }

    fn change(kind: EventKind, new: Option<Row>, old: Option<Row>) -> Change {
        fixtures::change(table(), kind, new, old)
    }

    fn payload(change: &Change, projection: Projection<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        write_payload(&mut out, change, "paid-orders", projection);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn update_with_full_old_row_lists_changed_columns() {
        let change = change(
            EventKind::Update,
            Some(row(&[Some("42"), Some("\"paid\""), Some("null")])),
            Some(row(&[Some("42"), Some("\"pending\""), Some("null")])),
        );
        let body = payload(&change, Projection::All);
        assert_eq!(body["type"], "UPDATE");
        assert_eq!(body["schema"], "public");
        assert_eq!(body["table"], "orders");
        assert_eq!(body["record"]["status"], "paid");
        assert_eq!(body["old_record"]["status"], "pending");
        assert_eq!(body["changed_columns"], serde_json::json!(["status"]));
        assert_eq!(body["subscription"], "paid-orders");
        assert_eq!(body["source"]["lsn"], "0/1A2B3C8");
        assert_eq!(body["source"]["commit_lsn"], "0/1A2B400");
        assert_eq!(body["source"]["xid"], 7431);
        assert_eq!(body["source"]["commit_time"], "2000-01-01T00:00:00.000000Z");
        assert!(body.get("unchanged_toast").is_none());
    }

    #[test]
    fn unchanged_toast_is_listed_never_invented() {
        let change = change(
            EventKind::Update,
            Some(row(&[Some("1"), Some("\"x\""), None])),
            None,
        );
        let body = payload(&change, Projection::All);
        assert!(body["record"].get("note").is_none());
        assert_eq!(body["unchanged_toast"], serde_json::json!(["note"]));
        assert_eq!(body["old_record"], serde_json::Value::Null);
        assert_eq!(body["changed_columns"], serde_json::Value::Null);
    }

    #[test]
    fn projection_applies_everywhere() {
        let change = change(
            EventKind::Update,
            Some(row(&[Some("1"), Some("\"b\""), Some("\"n2\"")])),
            Some(row(&[Some("1"), Some("\"a\""), Some("\"n1\"")])),
        );
        let mask = [true, false, true];
        let body = payload(&change, Projection::Only(&mask));
        assert_eq!(body["record"], serde_json::json!({"id": 1, "note": "n2"}));
        assert_eq!(
            body["old_record"],
            serde_json::json!({"id": 1, "note": "n1"})
        );
        assert_eq!(body["changed_columns"], serde_json::json!(["note"]));
    }

    #[test]
    fn names_that_need_escaping_are_escaped_once_and_right() {
        // Quoted identifiers may hold quotes, backslashes and newlines.
        let table = Arc::new(TableInfo::new(
            1,
            "sch\"ema".into(),
            "ta\\ble".into(),
            ["i\"d", "no\nte"]
                .into_iter()
                .map(|name| ColumnInfo::new(name.into(), 25, name == "i\"d"))
                .collect(),
            vec![0],
            true,
        ));
        let mut change = change(
            EventKind::Update,
            Some(row(&[Some("1"), Some("\"b\"")])),
            Some(row(&[Some("1"), Some("\"a\"")])),
        );
        change.table = table;
        let body = payload(&change, Projection::All);
        assert_eq!(body["schema"], "sch\"ema");
        assert_eq!(body["table"], "ta\\ble");
        assert_eq!(
            body["record"],
            serde_json::json!({"i\"d": 1, "no\nte": "b"})
        );
        assert_eq!(body["changed_columns"], serde_json::json!(["no\nte"]));
    }
    #[test]
    fn numbers_keep_their_digits() {
        let change = change(
            EventKind::Insert,
            Some(row(&[Some("12.50"), Some("\"a\""), Some("null")])),
            None,
        );
        let mut out = Vec::new();
        write_payload(&mut out, &change, "s", Projection::All);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"record\":{\"id\":12.50,"), "{text}");
    }

    #[test]
    fn changed_columns_compare_numbers_by_value() {
        let change = change(
            EventKind::Update,
            Some(row(&[Some("1.00"), Some("\"a\""), Some("-0")])),
            Some(row(&[Some("1.0"), Some("\"b\""), Some("0")])),
        );
        assert_eq!(change.changed_columns(), Some(vec![1]));
    }

    #[test]
    fn lsns_print_like_postgres() {
        for value in [0u64, 0x1A2B3C8, 0x1_0000_0000, 0xFFFF_FFFF_FFFF_FFFF, 0x10] {
            let mut out = Vec::new();
            push_lsn(&mut out, Lsn(value));
            assert_eq!(String::from_utf8(out).unwrap(), Lsn(value).to_string());
        }
    }

    #[test]
    fn a_test_payload_is_a_payload_marked_test() {
        let change = change(
            EventKind::Insert,
            Some(row(&[Some("1"), Some("\"a\""), Some("null")])),
            None,
        );
        let id = test_event_id("s", 7);
        let mut out = Vec::new();
        write_test_payload(&mut out, &change, "s", Projection::All, id);
        let body: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["source"]["test"], true);
        assert_eq!(
            body["record"],
            serde_json::json!({"id": 1, "status": "a", "note": null})
        );
        let mut real = Vec::new();
        write_payload_with_id(&mut real, &change, "s", Projection::All, id);
        let real: serde_json::Value = serde_json::from_slice(&real).unwrap();
        assert!(real["source"].get("test").is_none());
        // Fresh per nonce, well-formed, and not the change's own id.
        assert_ne!(id, test_event_id("s", 8));
        assert_eq!(EventId::parse(id.as_str()), Some(id));
        assert_ne!(id, event_id("s", Lsn(0), 0));
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = event_id("s", Lsn(100), 0);
        assert_eq!(a, event_id("s", Lsn(100), 0));
        assert_ne!(a, event_id("s", Lsn(100), 1));
        assert_ne!(a, event_id("t", Lsn(100), 0));
        assert_ne!(a, event_id("s", Lsn(101), 0));
        // Pinned: receivers deduplicate on ids across walhook versions.
        assert_eq!(a.as_str(), "wh_7227b3668f6e85bb1180822836c806c0");
    }
}
