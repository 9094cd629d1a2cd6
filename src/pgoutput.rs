//! Pure decoder for the pgoutput logical replication protocol, version 1.
//!
//! [`parse`] turns the payload of one XLogData frame into a [`PgOutputMessage`]
//! as laid out in the PostgreSQL documentation, "Logical Replication Message
//! Formats" (<https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>).
//! Tuple values are zero-copy [`Bytes`] slices of the input. Every read is
//! bounds-checked: truncated, malformed or unknown input yields a
//! [`DecodeError`] naming the message and the problem, never a panic.
//!
//! It does not do I/O, keep the relation or type cache, interpret column
//! values, or decode the streaming / two-phase messages of protocol versions
//! 2 and up (their tags are reported as unknown).

use bytes::Bytes;

use crate::lsn::Lsn;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    Begin {
        final_lsn: Lsn,
        /// Microseconds since 2000-01-01 00:00:00 UTC.
        commit_time_micros: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        /// Microseconds since 2000-01-01 00:00:00 UTC.
        commit_time_micros: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(RelationMessage),
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation_id: u32,
        new: TupleData,
    },
    Update {
        relation_id: u32,
        old: Option<OldTuple>,
        new: TupleData,
    },
    Delete {
        relation_id: u32,
        old: OldTuple,
    },
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        relation_ids: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

/// The description of a table that precedes its first change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationMessage {
    pub id: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    /// `d` (default), `n` (nothing), `f` (full) or `i` (index).
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`RelationMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The old row of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns (the rest are null).
    Key(TupleData),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

/// The columns of one row, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData(pub Vec<TupleValue>);

/// One column value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value the change did not touch; its bytes were not sent.
    UnchangedToast,
    /// The type's text output.
    Text(Bytes),
    /// The type's binary send format (only with the `binary` option).
    Binary(Bytes),
}

/// Which message a [`DecodeError`] happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Begin,
    Commit,
    Origin,
    Relation,
    Type,
    Insert,
    Update,
    Delete,
    Truncate,
    Message,
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MessageKind::Begin => "Begin",
            MessageKind::Commit => "Commit",
            MessageKind::Origin => "Origin",
            MessageKind::Relation => "Relation",
            MessageKind::Type => "Type",
            MessageKind::Insert => "Insert",
            MessageKind::Update => "Update",
            MessageKind::Delete => "Delete",
            MessageKind::Truncate => "Truncate",
            MessageKind::Message => "Message",
        })
    }
}

/// Input that is not a valid pgoutput (version 1) message. Never transient:
/// the same bytes fail the same way, so a retry cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag 0x{tag:02x} ({})", char::from(*tag).escape_default())]
    UnknownTag { tag: u8 },
    #[error(
        "pgoutput {message} message truncated: {field} at byte {offset} needs {needed} bytes, {available} left"
    )]
    Truncated {
        message: MessageKind,
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("pgoutput {message} message: {field} at byte {offset} has no terminating NUL")]
    UnterminatedString {
        message: MessageKind,
        field: &'static str,
        offset: usize,
    },
    #[error("pgoutput {message} message: {field} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        message: MessageKind,
        field: &'static str,
        offset: usize,
    },
    #[error("pgoutput {message} message: unknown tuple column kind 0x{kind:02x} at byte {offset}")]
    UnknownTupleKind {
        message: MessageKind,
        kind: u8,
        offset: usize,
    },
    #[error(
        "pgoutput {message} message: expected {expected} at byte {offset}, found 0x{found:02x}"
    )]
    UnexpectedByte {
        message: MessageKind,
        expected: &'static str,
        found: u8,
        offset: usize,
    },
    #[error("pgoutput {message} message: negative length {length} for {field} at byte {offset}")]
    NegativeLength {
        message: MessageKind,
        field: &'static str,
        length: i32,
        offset: usize,
    },
    #[error("pgoutput {message} message: {count} unexpected bytes after its end")]
    TrailingBytes { message: MessageKind, count: usize },
}

impl DecodeError {
    /// Whether trying again could help: never, for a decode error.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// Decodes one pgoutput message (the payload of an XLogData frame).
pub fn parse(data: Bytes) -> Result<PgOutputMessage, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    let message = match tag {
        b'B' => MessageKind::Begin,
        b'C' => MessageKind::Commit,
        b'O' => MessageKind::Origin,
        b'R' => MessageKind::Relation,
        b'Y' => MessageKind::Type,
        b'I' => MessageKind::Insert,
        b'U' => MessageKind::Update,
        b'D' => MessageKind::Delete,
        b'T' => MessageKind::Truncate,
        b'M' => MessageKind::Message,
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    let mut r = Reader {
        data,
        pos: 1,
        message,
    };
    let decoded = match message {
        MessageKind::Begin => PgOutputMessage::Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time_micros: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        MessageKind::Commit => PgOutputMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time_micros: r.i64("commit timestamp")?,
        },
        MessageKind::Origin => PgOutputMessage::Origin {
            commit_lsn: r.lsn("commit LSN")?,
            name: r.string("origin name")?,
        },
        MessageKind::Relation => PgOutputMessage::Relation(relation(&mut r)?),
        MessageKind::Type => PgOutputMessage::Type {
            id: r.u32("type oid")?,
            namespace: r.string("namespace")?,
            name: r.string("type name")?,
        },
        MessageKind::Insert => {
            let relation_id = r.u32("relation oid")?;
            r.expect(b'N', "new tuple marker 'N'")?;
            PgOutputMessage::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        MessageKind::Update => {
            let relation_id = r.u32("relation oid")?;
            let old = match r.peek("tuple marker")? {
                b'K' => {
                    r.pos += 1;
                    Some(OldTuple::Key(r.tuple()?))
                }
                b'O' => {
                    r.pos += 1;
                    Some(OldTuple::Full(r.tuple()?))
                }
                _ => None,
            };
            r.expect(b'N', "new tuple marker 'N'")?;
            PgOutputMessage::Update {
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        MessageKind::Delete => {
            let relation_id = r.u32("relation oid")?;
            let offset = r.pos;
            let old = match r.u8("old tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                found => {
                    return Err(DecodeError::UnexpectedByte {
                        message,
                        expected: "old tuple marker 'K' or 'O'",
                        found,
                        offset,
                    });
                }
            };
            PgOutputMessage::Delete { relation_id, old }
        }
        MessageKind::Truncate => {
            let count = r.u32("relation count")? as usize;
            let options = r.u8("options")?;
            // Check the length before allocating from an untrusted count.
            r.need(count.saturating_mul(4), "relation oids")?;
            let mut relation_ids = Vec::with_capacity(count);
            for _ in 0..count {
                relation_ids.push(r.u32("relation oid")?);
            }
            PgOutputMessage::Truncate {
                options,
                relation_ids,
            }
        }
        MessageKind::Message => {
            let flags = r.u8("flags")?;
            let lsn = r.lsn("LSN")?;
            let prefix = r.string("prefix")?;
            let length = r.length("content length")?;
            PgOutputMessage::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.bytes(length, "content")?,
            }
        }
    };
    let left = r.data.len() - r.pos;
    if left != 0 {
        return Err(DecodeError::TrailingBytes {
            message,
            count: left,
        });
    }
    Ok(decoded)
}

fn relation(r: &mut Reader) -> Result<RelationMessage, DecodeError> {
    let id = r.u32("relation oid")?;
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    let count = usize::from(r.u16("column count")?);
    // Each column takes at least 10 bytes; do not trust the count for the
    // allocation.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        let flags = r.u8("column flags")?;
        columns.push(RelationColumn {
            is_key: flags & 1 == 1,
            name: r.string("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(RelationMessage {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// A cursor over one message with checked reads.
struct Reader {
    data: Bytes,
    pos: usize,
    message: MessageKind,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn need(&self, needed: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.remaining() < needed {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
                offset: self.pos,
                needed,
                available: self.remaining(),
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        self.need(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.data[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    fn peek(&self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.data[self.pos])
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    /// An Int32 length that must not be negative.
    fn length(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let length = self.i32(field)?;
        usize::try_from(length).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            field,
            length,
            offset,
        })
    }

    fn bytes(&mut self, length: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(length, field)?;
        let out = self.data.slice(self.pos..self.pos + length);
        self.pos += length;
        Ok(out)
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let found = self.u8(expected)?;
        if found != byte {
            return Err(DecodeError::UnexpectedByte {
                message: self.message,
                expected,
                found,
                offset,
            });
        }
        Ok(())
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                message: self.message,
                field,
                offset,
            });
        };
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
            field,
            offset,
        })?;
        let text = text.to_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let count = usize::from(self.u16("tuple column count")?);
        // Each column takes at least one byte.
        let mut values = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let offset = self.pos;
            let value = match self.u8("tuple column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let length = self.length("text value length")?;
                    TupleValue::Text(self.bytes(length, "text value")?)
                }
                b'b' => {
                    let length = self.length("binary value length")?;
                    TupleValue::Binary(self.bytes(length, "binary value")?)
                }
                kind => {
                    return Err(DecodeError::UnknownTupleKind {
                        message: self.message,
                        kind,
                        offset,
                    });
                }
            };
            values.push(value);
        }
        Ok(TupleData(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds fixtures in the wire format.
    #[derive(Default)]
    struct Msg(Vec<u8>);

    impl Msg {
        fn new(tag: u8) -> Self {
            Msg(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn str(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        /// A tuple: `None` = null, `Some("\u{0}u")` = unchanged TOAST.
        fn tuple(mut self, values: &[Option<&str>]) -> Self {
            self = self.u16(values.len() as u16);
            for value in values {
                self = match value {
                    None => self.u8(b'n'),
                    Some("\u{0}u") => self.u8(b'u'),
                    Some(text) => self.u8(b't').i32(text.len() as i32).raw(text.as_bytes()),
                };
            }
            self
        }
        fn bytes(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn text(v: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn fixtures() -> Vec<(Bytes, PgOutputMessage)> {
        vec![
            (
                Msg::new(b'B')
                    .u64(0x1_0000_0020)
                    .u64(815_000_000)
                    .u32(7431)
                    .bytes(),
                PgOutputMessage::Begin {
                    final_lsn: Lsn(0x1_0000_0020),
                    commit_time_micros: 815_000_000,
                    xid: 7431,
                },
            ),
            (
                Msg::new(b'C')
                    .u8(0)
                    .u64(0x20)
                    .u64(0x48)
                    .u64(1 << 40)
                    .bytes(),
                PgOutputMessage::Commit {
                    flags: 0,
                    commit_lsn: Lsn(0x20),
                    end_lsn: Lsn(0x48),
                    commit_time_micros: 1 << 40,
                },
            ),
            (
                Msg::new(b'O').u64(0x99).str("node_a").bytes(),
                PgOutputMessage::Origin {
                    commit_lsn: Lsn(0x99),
                    name: "node_a".into(),
                },
            ),
            (
                Msg::new(b'R')
                    .u32(16385)
                    .str("public")
                    .str("orders")
                    .u8(b'd')
                    .u16(2)
                    .u8(1)
                    .str("id")
                    .u32(20)
                    .i32(-1)
                    .u8(0)
                    .str("prix €")
                    .u32(1700)
                    .i32(655366)
                    .bytes(),
                PgOutputMessage::Relation(RelationMessage {
                    id: 16385,
                    namespace: "public".into(),
                    name: "orders".into(),
                    replica_identity: b'd',
                    columns: vec![
                        RelationColumn {
                            is_key: true,
                            name: "id".into(),
                            type_oid: 20,
                            type_modifier: -1,
                        },
                        RelationColumn {
                            is_key: false,
                            name: "prix €".into(),
                            type_oid: 1700,
                            type_modifier: 655366,
                        },
                    ],
                }),
            ),
            (
                Msg::new(b'Y').u32(16400).str("public").str("mood").bytes(),
                PgOutputMessage::Type {
                    id: 16400,
                    namespace: "public".into(),
                    name: "mood".into(),
                },
            ),
            (
                Msg::new(b'I')
                    .u32(16385)
                    .u8(b'N')
                    .tuple(&[Some("42"), None, Some("\u{0}u"), Some("")])
                    .bytes(),
                PgOutputMessage::Insert {
                    relation_id: 16385,
                    new: TupleData(vec![
                        text("42"),
                        TupleValue::Null,
                        TupleValue::UnchangedToast,
                        text(""),
                    ]),
                },
            ),
            (
                Msg::new(b'U')
                    .u32(16385)
                    .u8(b'N')
                    .tuple(&[Some("1")])
                    .bytes(),
                PgOutputMessage::Update {
                    relation_id: 16385,
                    old: None,
                    new: TupleData(vec![text("1")]),
                },
            ),
            (
                Msg::new(b'U')
                    .u32(16385)
                    .u8(b'K')
                    .tuple(&[Some("1"), None])
                    .u8(b'N')
                    .tuple(&[Some("2"), Some("x")])
                    .bytes(),
                PgOutputMessage::Update {
                    relation_id: 16385,
                    old: Some(OldTuple::Key(TupleData(vec![text("1"), TupleValue::Null]))),
                    new: TupleData(vec![text("2"), text("x")]),
                },
            ),
            (
                Msg::new(b'U')
                    .u32(16385)
                    .u8(b'O')
                    .tuple(&[Some("1"), Some("big")])
                    .u8(b'N')
                    .tuple(&[Some("1"), Some("\u{0}u")])
                    .bytes(),
                PgOutputMessage::Update {
                    relation_id: 16385,
                    old: Some(OldTuple::Full(TupleData(vec![text("1"), text("big")]))),
                    new: TupleData(vec![text("1"), TupleValue::UnchangedToast]),
                },
            ),
            (
                Msg::new(b'D').u32(7).u8(b'K').tuple(&[Some("9")]).bytes(),
                PgOutputMessage::Delete {
                    relation_id: 7,
                    old: OldTuple::Key(TupleData(vec![text("9")])),
                },
            ),
            (
                Msg::new(b'D')
                    .u32(7)
                    .u8(b'O')
                    .tuple(&[Some("9"), None])
                    .bytes(),
                PgOutputMessage::Delete {
                    relation_id: 7,
                    old: OldTuple::Full(TupleData(vec![text("9"), TupleValue::Null])),
                },
            ),
            (
                Msg::new(b'T').u32(2).u8(3).u32(16385).u32(16390).bytes(),
                PgOutputMessage::Truncate {
                    options: 3,
                    relation_ids: vec![16385, 16390],
                },
            ),
            (
                Msg::new(b'M')
                    .u8(1)
                    .u64(0x77)
                    .str("app")
                    .i32(3)
                    .raw(b"a\0b")
                    .bytes(),
                PgOutputMessage::Message {
                    transactional: true,
                    lsn: Lsn(0x77),
                    prefix: "app".into(),
                    content: Bytes::from_static(b"a\0b"),
                },
            ),
        ]
    }

    #[test]
    fn decodes_every_message_fixture() {
        for (bytes, expected) in fixtures() {
            assert_eq!(parse(bytes), Ok(expected));
        }
    }

    #[test]
    fn binary_tuple_values_are_slices_of_the_input() {
        let input = Msg::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b'b')
            .i32(4)
            .raw(&[0, 0, 0, 42])
            .bytes();
        let Ok(PgOutputMessage::Insert { new, .. }) = parse(input.clone()) else {
            panic!("not an insert");
        };
        let [TupleValue::Binary(value)] = new.0.as_slice() else {
            panic!("not one binary value: {new:?}");
        };
        assert_eq!(value.as_ref(), &[0, 0, 0, 42]);
        // Zero-copy: the value points into the input buffer.
        let start = input.as_ptr() as usize;
        let at = value.as_ptr() as usize;
        assert!(at > start && at < start + input.len());
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_an_error() {
        for (bytes, _) in fixtures() {
            for len in 0..bytes.len() {
                let result = parse(bytes.slice(..len));
                assert!(
                    result.is_err(),
                    "prefix {len} of {bytes:?} parsed: {result:?}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for (bytes, _) in fixtures() {
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(matches!(
                parse(Bytes::from(longer)),
                Err(DecodeError::TrailingBytes { count: 1, .. })
            ));
        }
    }

    #[test]
    fn unknown_tags_are_errors() {
        assert_eq!(parse(Bytes::new()), Err(DecodeError::Empty));
        // Streaming (S, E, c, A) and two-phase tags belong to later versions.
        for tag in [
            b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'x', 0, 0xff,
        ] {
            assert_eq!(
                parse(Bytes::from(vec![tag, 0, 0, 0, 0])),
                Err(DecodeError::UnknownTag { tag })
            );
        }
    }

    #[test]
    fn malformed_tuples_are_errors() {
        let unknown_kind = Msg::new(b'I').u32(1).u8(b'N').u16(1).u8(b'z').bytes();
        assert!(matches!(
            parse(unknown_kind),
            Err(DecodeError::UnknownTupleKind {
                kind: b'z',
                offset: 8,
                ..
            })
        ));
        let negative = Msg::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .i32(-1)
            .bytes();
        assert!(matches!(
            parse(negative),
            Err(DecodeError::NegativeLength { length: -1, .. })
        ));
        let huge = Msg::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .i32(i32::MAX)
            .bytes();
        assert!(matches!(parse(huge), Err(DecodeError::Truncated { .. })));
        let no_new_marker = Msg::new(b'I').u32(1).u8(b'X').tuple(&[]).bytes();
        assert!(matches!(
            parse(no_new_marker),
            Err(DecodeError::UnexpectedByte { found: b'X', .. })
        ));
        let bad_old_marker = Msg::new(b'D').u32(1).u8(b'N').tuple(&[]).bytes();
        assert!(matches!(
            parse(bad_old_marker),
            Err(DecodeError::UnexpectedByte { found: b'N', .. })
        ));
        // Claims 65535 columns but has none: an error, not a huge allocation.
        let many = Msg::new(b'I').u32(1).u8(b'N').u16(u16::MAX).bytes();
        assert!(matches!(parse(many), Err(DecodeError::Truncated { .. })));
        let many_relations = Msg::new(b'T').u32(u32::MAX).u8(0).bytes();
        assert!(matches!(
            parse(many_relations),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn names_must_be_utf8() {
        let bad = Msg::new(b'Y').u32(1).raw(b"pub\xfflic\0").str("t").bytes();
        assert!(matches!(
            parse(bad),
            Err(DecodeError::InvalidUtf8 {
                message: MessageKind::Type,
                field: "namespace",
                offset: 5
            })
        ));
    }

    #[test]
    fn errors_name_the_message_and_field() {
        let text = parse(Msg::new(b'B').u64(1).bytes())
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            text.contains("Begin") && text.contains("commit timestamp"),
            "{text}"
        );
        assert!(!DecodeError::Empty.is_transient());
    }

    /// The message kind a tag stands for, as the fixtures (one or more of
    /// every kind) show it.
    fn kind_of(tag: u8) -> Option<MessageKind> {
        fixtures()
            .iter()
            .find(|(bytes, _)| bytes.first() == Some(&tag))
            .map(|(_, message)| kind_of_message(message))
    }

    /// The kind of a decoded message.
    fn kind_of_message(message: &PgOutputMessage) -> MessageKind {
        match message {
            PgOutputMessage::Begin { .. } => MessageKind::Begin,
            PgOutputMessage::Commit { .. } => MessageKind::Commit,
            PgOutputMessage::Origin { .. } => MessageKind::Origin,
            PgOutputMessage::Relation(_) => MessageKind::Relation,
            PgOutputMessage::Type { .. } => MessageKind::Type,
            PgOutputMessage::Insert { .. } => MessageKind::Insert,
            PgOutputMessage::Update { .. } => MessageKind::Update,
            PgOutputMessage::Delete { .. } => MessageKind::Delete,
            PgOutputMessage::Truncate { .. } => MessageKind::Truncate,
            PgOutputMessage::Message { .. } => MessageKind::Message,
        }
    }

    /// What must hold of `parse(input)`, whatever the input: a message is
    /// the kind its tag says and takes exactly the whole input (one byte
    /// less fails, one byte more is trailing); an error names the message
    /// its tag says and points inside the input.
    fn assert_consistent(input: &Bytes, result: &Result<PgOutputMessage, DecodeError>) {
        let tag = input.first().copied();
        match result {
            Ok(message) => {
                assert_eq!(
                    Some(kind_of_message(message)),
                    tag.and_then(kind_of),
                    "{input:?}"
                );
                let shorter = parse(input.slice(..input.len() - 1));
                assert!(
                    shorter.is_err(),
                    "{input:?} without its last byte: {shorter:?}"
                );
                let mut longer = input.to_vec();
                longer.push(0);
                assert!(
                    matches!(
                        parse(Bytes::from(longer)),
                        Err(DecodeError::TrailingBytes { count: 1, .. })
                    ),
                    "{input:?} and one more byte"
                );
            }
            Err(DecodeError::Empty) => assert!(input.is_empty()),
            Err(DecodeError::UnknownTag { tag: unknown }) => {
                assert_eq!(Some(*unknown), tag);
                assert_eq!(kind_of(*unknown), None);
            }
            Err(error) => {
                let (message, fits) = match *error {
                    DecodeError::Truncated {
                        message,
                        offset,
                        needed,
                        available,
                        ..
                    } => (
                        message,
                        offset + available == input.len() && needed > available,
                    ),
                    DecodeError::UnterminatedString {
                        message, offset, ..
                    } => (message, offset <= input.len()),
                    DecodeError::InvalidUtf8 {
                        message, offset, ..
                    }
                    | DecodeError::UnknownTupleKind {
                        message, offset, ..
                    }
                    | DecodeError::UnexpectedByte {
                        message, offset, ..
                    }
                    | DecodeError::NegativeLength {
                        message, offset, ..
                    } => (message, offset < input.len()),
                    DecodeError::TrailingBytes { message, count } => {
                        (message, count > 0 && count < input.len())
                    }
                    DecodeError::Empty | DecodeError::UnknownTag { .. } => unreachable!(),
                };
                assert_eq!(
                    Some(message),
                    tag.and_then(kind_of),
                    "{error} for {input:?}"
                );
                assert!(
                    fits,
                    "{error:?} does not fit {} bytes: {input:?}",
                    input.len()
                );
            }
        }
    }

    #[test]
    fn mutated_messages_never_panic_and_decode_or_fail_consistently() {
        // A cheap deterministic fuzz: mutate valid fixtures byte by byte.
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut decoded, mut refused) = (0, 0);
        for (bytes, expected) in fixtures() {
            for _ in 0..2000 {
                let mut mutated = bytes.to_vec();
                let flips = rng.usize(1..4);
                for _ in 0..flips {
                    let i = rng.usize(..mutated.len());
                    mutated[i] = rng.u8(..);
                }
                if rng.bool() {
                    mutated.truncate(rng.usize(..=mutated.len()));
                }
                let input = Bytes::from(mutated);
                let result = parse(input.clone());
                assert_consistent(&input, &result);
                if input == bytes {
                    assert_eq!(result.as_ref(), Ok(&expected), "an unchanged fixture");
                }
                match result {
                    Ok(_) => decoded += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        // Both paths ran: mutations that still decode (a changed value) and
        // ones that cannot.
        assert!(
            decoded > 1000 && refused > 1000,
            "{decoded} decoded, {refused} refused"
        );
    }
}
