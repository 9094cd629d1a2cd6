//! Framing of the replication connection, with no I/O.
//!
//! Splits whole backend messages off the read buffer (or says that more bytes
//! are needed, leaving the buffer as it was), decodes the CopyData payloads of
//! the streaming replication sub-protocol — XLogData `w` and primary
//! keepalive `k` — and encodes the standby status update `r`
//! (<https://www.postgresql.org/docs/current/protocol-replication.html>).
//! XLogData payloads stay slices of the bytes read, never copies.
//!
//! It does not look inside the XLogData payload (that is pgoutput's
//! business), does not read or write the socket, and never panics on any
//! input: malformed bytes become a [`FrameError`].

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::backend;

use crate::lsn::Lsn;

/// The largest backend message accepted. PostgreSQL never sends one above
/// its 1 GiB allocation limit; a length beyond that means the stream is out of
/// step or the peer is not PostgreSQL.
pub(crate) const MAX_FRAME_LEN: usize = (1 << 30) + 1024;

/// The read buffer grows by at least this much before each read.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// One message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// A chunk of decoded WAL: here, one pgoutput message.
    XLogData {
        /// Where the WAL record this came from starts (0 for messages such as
        /// Relation that belong to no record; take progress from Commit).
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock, microseconds since 2000-01-01 UTC.
        server_time_micros: i64,
        /// The pgoutput message, a slice of the bytes read (no copy).
        data: Bytes,
    },
    /// The server is alive; `reply_requested` asks for a status update now
    /// (or the walsender closes the connection after `wal_sender_timeout`).
    Keepalive {
        wal_end: Lsn,
        server_time_micros: i64,
        reply_requested: bool,
    },
}

/// Bytes that are not a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a message of type {tag:?} claims {len} bytes, more than the {MAX_FRAME_LEN} allowed")]
    TooLong { tag: char, len: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("a replication {what} message is {len} bytes long, too short")]
    Truncated { what: &'static str, len: usize },
    #[error("unknown replication message type {0:?} inside CopyData")]
    UnknownCopyData(char),
}

/// A whole backend message taken off the buffer.
pub(crate) enum Incoming {
    /// `W`: the server entered COPY BOTH mode (START_REPLICATION accepted).
    /// postgres-protocol does not parse this one.
    CopyBothResponse,
    Message(backend::Message),
}

/// Takes one whole message off the front of `buf`, or returns `None` (with
/// `buf` unchanged, and room reserved for the rest) when it holds only part of
/// one.
pub(crate) fn split_message(buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
    let header = match backend::Header::parse(buf) {
        Ok(Some(header)) => header,
        Ok(None) => return Ok(None),
        Err(error) => return Err(FrameError::Malformed(error.to_string())),
    };
    // Header::parse has refused lengths below 4, so this is not negative.
    let len = usize::try_from(header.len()).unwrap_or(usize::MAX);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong {
            tag: char::from(header.tag()),
            len,
        });
    }
    let total = len + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if header.tag() == b'W' {
        buf.advance(total);
        return Ok(Some(Incoming::CopyBothResponse));
    }
    match backend::Message::parse(buf) {
        Ok(Some(message)) => Ok(Some(Incoming::Message(message))),
        Ok(None) => Err(FrameError::Malformed(
            "a whole message did not parse".to_owned(),
        )),
        Err(error) => Err(FrameError::Malformed(error.to_string())),
    }
}

/// Decodes the payload of a CopyData message from the walsender.
pub(crate) fn parse_copy_data(payload: Bytes) -> Result<ReplicationMessage, FrameError> {
    let Some(&kind) = payload.first() else {
        return Err(FrameError::Truncated {
            what: "CopyData",
            len: 0,
        });
    };
    match kind {
        b'w' => {
            const HEADER: usize = 1 + 8 + 8 + 8;
            if payload.len() < HEADER {
                return Err(FrameError::Truncated {
                    what: "XLogData",
                    len: payload.len(),
                });
            }
            let mut fields = &payload[1..HEADER];
            let wal_start = Lsn(fields.get_u64());
            let wal_end = Lsn(fields.get_u64());
            let server_time_micros = fields.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time_micros,
                data: payload.slice(HEADER..),
            })
        }
        b'k' => {
            const LEN: usize = 1 + 8 + 8 + 1;
            if payload.len() < LEN {
                return Err(FrameError::Truncated {
                    what: "keepalive",
                    len: payload.len(),
                });
            }
            let mut fields = &payload[1..LEN];
            Ok(ReplicationMessage::Keepalive {
                wal_end: Lsn(fields.get_u64()),
                server_time_micros: fields.get_i64(),
                reply_requested: fields.get_u8() != 0,
            })
        }
        other => Err(FrameError::UnknownCopyData(char::from(other))),
    }
}

/// The payload of a standby status update: `written` as the write position,
/// `flushed` as both flush and apply (the slot's confirmed_flush_lsn follows
/// flush), the client clock, and whether the server should answer at once.
pub(crate) fn standby_status_update(
    written: Lsn,
    flushed: Lsn,
    client_time_micros: i64,
    reply_requested: bool,
) -> [u8; 34] {
    let mut out = [0u8; 34];
    out[0] = b'r';
    out[1..9].copy_from_slice(&written.0.to_be_bytes());
    out[9..17].copy_from_slice(&flushed.0.to_be_bytes());
    out[17..25].copy_from_slice(&flushed.0.to_be_bytes());
    out[25..33].copy_from_slice(&client_time_micros.to_be_bytes());
    out[33] = u8::from(reply_requested);
    out
}

/// The fields of an ErrorResponse or NoticeResponse that walhook reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServerMessage {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub(crate) fn server_message(
    mut fields: backend::ErrorFields<'_>,
) -> Result<ServerMessage, FrameError> {
    use fallible_iterator::FallibleIterator;
    let mut out = ServerMessage::default();
    loop {
        match fields.next() {
            Ok(Some(field)) => {
                let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
                match field.type_() {
                    // V is the untranslated severity; prefer it over S.
                    b'V' => out.severity = value,
                    b'S' if out.severity.is_empty() => out.severity = value,
                    b'C' => out.code = value,
                    b'M' => out.message = value,
                    b'D' => out.detail = Some(value),
                    b'H' => out.hint = Some(value),
                    _ => {}
                }
            }
            Ok(None) => return Ok(out),
            Err(error) => return Err(FrameError::Malformed(error.to_string())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn xlogdata(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut body = vec![b'w'];
        body.extend_from_slice(&start.to_be_bytes());
        body.extend_from_slice(&end.to_be_bytes());
        body.extend_from_slice(&time.to_be_bytes());
        body.extend_from_slice(data);
        frame(b'd', &body)
    }

    fn next_copy_data(buf: &mut BytesMut) -> Result<Option<ReplicationMessage>, FrameError> {
        match split_message(buf)? {
            None => Ok(None),
            Some(Incoming::Message(backend::Message::CopyData(body))) => {
                parse_copy_data(body.into_bytes()).map(Some)
            }
            Some(_) => panic!("not a CopyData"),
        }
    }

    #[test]
    fn xlogdata_parses_and_its_data_is_a_slice_of_the_buffer() {
        let mut buf = BytesMut::from(&xlogdata(0x1_0000_0010, 0x1_0000_0020, 42, b"B\x00\x01")[..]);
        let base = buf.as_ptr() as usize;
        let message = next_copy_data(&mut buf).unwrap().unwrap();
        let ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            server_time_micros,
            data,
        } = message
        else {
            panic!("not XLogData: {message:?}");
        };
        assert_eq!(wal_start, Lsn(0x1_0000_0010));
        assert_eq!(wal_end, Lsn(0x1_0000_0020));
        assert_eq!(server_time_micros, 42);
        assert_eq!(&data[..], b"B\x00\x01");
        // 5 header bytes + 25 XLogData header bytes into the original allocation.
        assert_eq!(data.as_ptr() as usize, base + 30, "data must not be copied");
        assert!(buf.is_empty());
    }

    #[test]
    fn keepalive_parses() {
        let mut body = vec![b'k'];
        body.extend_from_slice(&0x16B3748u64.to_be_bytes());
        body.extend_from_slice(&(-5i64).to_be_bytes());
        body.push(1);
        let mut buf = BytesMut::from(&frame(b'd', &body)[..]);
        assert_eq!(
            next_copy_data(&mut buf).unwrap(),
            Some(ReplicationMessage::Keepalive {
                wal_end: Lsn(0x16B3748),
                server_time_micros: -5,
                reply_requested: true
            })
        );
    }

    #[test]
    fn a_truncated_frame_waits_for_more_bytes_then_parses() {
        let whole = xlogdata(1, 2, 3, b"payload");
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert_eq!(
                next_copy_data(&mut buf).unwrap(),
                None,
                "after {i} of {} bytes",
                whole.len()
            );
            assert_eq!(buf.len(), i, "an incomplete frame must stay in the buffer");
            buf.put_u8(*byte);
        }
        assert!(matches!(
            next_copy_data(&mut buf).unwrap(),
            Some(ReplicationMessage::XLogData { .. })
        ));
    }

    #[test]
    fn two_frames_in_one_read_come_out_one_by_one() {
        let mut bytes = xlogdata(1, 2, 3, b"first");
        bytes.extend(xlogdata(4, 5, 6, b"second"));
        bytes.extend(&xlogdata(7, 8, 9, b"third")[..10]);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut seen = Vec::new();
        while let Some(ReplicationMessage::XLogData { data, .. }) =
            next_copy_data(&mut buf).unwrap()
        {
            seen.push(data);
        }
        assert_eq!(seen, [&b"first"[..], &b"second"[..]]);
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn garbage_lengths_are_errors() {
        // Longer than any message PostgreSQL sends.
        let mut buf = BytesMut::from(&b"d\x7f\xff\xff\xffw"[..]);
        assert!(matches!(
            split_message(&mut buf),
            Err(FrameError::TooLong { tag: 'd', .. })
        ));
        // Negative, and shorter than the length field itself.
        for bytes in [&b"d\xff\xff\xff\xf0"[..], &b"d\x00\x00\x00\x02"[..]] {
            let mut buf = BytesMut::from(bytes);
            assert!(matches!(
                split_message(&mut buf),
                Err(FrameError::Malformed(_))
            ));
        }
    }

    #[test]
    fn short_or_unknown_copy_data_is_an_error() {
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"w\x00\x00")),
            Err(FrameError::Truncated {
                what: "XLogData",
                len: 3
            })
        ));
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"k\x00")),
            Err(FrameError::Truncated {
                what: "keepalive",
                ..
            })
        ));
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"z")),
            Err(FrameError::UnknownCopyData('z'))
        );
        assert!(parse_copy_data(Bytes::new()).is_err());
    }

    #[test]
    fn copy_both_response_is_recognised() {
        let mut buf = BytesMut::from(&frame(b'W', b"\x00\x00\x00")[..]);
        buf.extend_from_slice(&xlogdata(1, 2, 3, b"x"));
        assert!(matches!(
            split_message(&mut buf),
            Ok(Some(Incoming::CopyBothResponse))
        ));
        assert!(matches!(
            next_copy_data(&mut buf),
            Ok(Some(ReplicationMessage::XLogData { .. }))
        ));
    }

    #[test]
    fn error_response_fields_are_read() {
        let body =
            b"SERROR\0VERROR\0C55006\0Mreplication slot \"s\" is active for PID 7\0Hwait\0\0";
        let mut buf = BytesMut::from(&frame(b'E', body)[..]);
        let Ok(Some(Incoming::Message(backend::Message::ErrorResponse(error)))) =
            split_message(&mut buf)
        else {
            panic!("not an ErrorResponse");
        };
        let fields = server_message(error.fields()).unwrap();
        assert_eq!(fields.code, "55006");
        assert_eq!(fields.severity, "ERROR");
        assert_eq!(fields.message, "replication slot \"s\" is active for PID 7");
        assert_eq!(fields.detail, None);
        assert_eq!(fields.hint.as_deref(), Some("wait"));
    }

    #[test]
    fn standby_status_update_layout() {
        let bytes = standby_status_update(Lsn(0x0102), Lsn(0x0101), 0x0A0B, true);
        assert_eq!(bytes[0], b'r');
        assert_eq!(&bytes[1..9], &0x0102u64.to_be_bytes());
        assert_eq!(&bytes[9..17], &0x0101u64.to_be_bytes());
        assert_eq!(&bytes[17..25], &0x0101u64.to_be_bytes());
        assert_eq!(&bytes[25..33], &0x0A0Bi64.to_be_bytes());
        assert_eq!(bytes[33], 1);
        assert_eq!(standby_status_update(Lsn(1), Lsn(1), 0, false)[33], 0);
    }
}
