//! The replication connection: the walsender end of walhook.
//!
//! [`ReplicationStream::start`] opens a logical replication connection
//! (`replication=database`) with the TLS and authentication the source URL
//! asks for, runs `IDENTIFY_SYSTEM`, and starts pgoutput on a slot and
//! publication. [`ReplicationStream::next`] then yields the raw XLogData
//! frames and keepalives, and [`ReplicationStream::send_status`] reports
//! progress back in standby status updates, which is what moves the slot's
//! `confirmed_flush_lsn` and lets Postgres recycle WAL. Upstream tokio-postgres
//! has no replication mode, so this speaks the protocol itself with
//! postgres-protocol's message codecs.
//!
//! On PostgreSQL 14 and newer it asks pgoutput for logical decoding messages
//! (`messages 'true'`): what `pg_logical_emit_message` writes arrives as
//! pgoutput 'M' messages, markers in the stream that need no table.
//!
//! It does not decode pgoutput (see the decoder), does not decide what LSN is
//! safe to confirm (the checkpoint does), does not send status updates on
//! its own — the caller must answer `reply_requested` keepalives and send one
//! at least every `wal_sender_timeout` (60 s by default), also while it is not
//! reading — and does not reconnect: [`SourceError::is_transient`] and
//! [`SourceError::is_slot_in_use`] tell the caller whether to try again.
//!
//! The walsender formats pgoutput's text values with the replication
//! session's settings, so the session pins them ([`SESSION_OPTIONS`]) to
//! match `to_jsonb` in a UTC session.

mod error;
mod frame;
mod startup;

use std::fmt;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::{ErrorResponseBody, Message, NoticeResponseBody};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::lsn::Lsn;
use crate::pgconn::ConnectParams;

pub use error::SourceError;
pub use frame::ReplicationMessage;

use error::At;
use frame::{Incoming, READ_CHUNK};

/// The session settings of the replication connection (its startup
/// `options`): pgoutput's text values come out as `to_jsonb` prints them in a
/// UTC session.
pub const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres \
     -c extra_float_digits=1 -c bytea_output=hex";

/// What `IDENTIFY_SYSTEM` said about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier.
    pub system_id: u64,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database this connection is on.
    pub dbname: Option<String>,
}

/// An open logical replication connection in COPY BOTH mode.
pub struct ReplicationStream {
    wire: Wire,
    identity: SystemIdentity,
    tls: bool,
    /// The server's major version from its startup report, if it gave one.
    server_major: Option<u32>,
    /// The highest flush position reported; reports never go back.
    sent_flush: Lsn,
}

impl fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("addr", &self.wire.at.addr())
            .field("slot", &self.wire.at.slot())
            .field("tls", &self.tls)
            .field("identity", &self.identity)
            .field("server_major", &self.server_major)
            .field("sent_flush", &self.sent_flush)
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    /// Connects, authenticates, identifies the system and starts pgoutput on
    /// `slot` for `publication` from `start` (`Lsn::ZERO` = from the slot's
    /// confirmed position) with pgoutput `proto_version`, and with
    /// logical decoding messages when the server is PostgreSQL 14 or newer.
    ///
    /// All of it must finish within `params.connect_timeout`. Fails with
    /// [`SourceError::is_slot_in_use`] when another process streams from the
    /// slot and [`SourceError::is_slot_missing`] when it does not exist.
    pub async fn start(
        params: &ConnectParams,
        slot: &str,
        publication: &str,
        start: Lsn,
        proto_version: u32,
    ) -> Result<Self, SourceError> {
        let at = At::new(params.address(), slot.to_owned());
        let opening = startup::open(params, at.clone(), publication, start, proto_version);
        let startup::Opened {
            wire,
            identity,
            tls,
            server_major,
        } = match tokio::time::timeout(params.connect_timeout, opening).await {
            Ok(result) => result?,
            Err(_elapsed) => return Err(at.timeout(params.connect_timeout)),
        };
        tracing::info!(
            addr = %wire.at.addr(),
            slot = %wire.at.slot(),
            %publication,
            %start,
            tls,
            server_major,
            timeline = identity.timeline,
            xlogpos = %identity.xlogpos,
            "replication started"
        );
        Ok(ReplicationStream {
            wire,
            identity,
            tls,
            server_major,
            sent_flush: Lsn::ZERO,
        })
    }

    /// Whether a whole message is already buffered, so that [`Self::next`]
    /// will not wait for the network. The reader hands events to delivery
    /// when this turns false.
    pub fn has_buffered_message(&self) -> bool {
        let buffered = &self.wire.read;
        match buffered.get(1..5) {
            Some(&[a, b, c, d]) => {
                let length = u32::from_be_bytes([a, b, c, d]) as usize;
                buffered.len() > length
            }
            _ => false,
        }
    }

    /// The next XLogData frame or keepalive.
    ///
    /// Cancel-safe: dropping the future (another `select!` branch won) loses
    /// nothing; bytes already read stay buffered for the next call. Notices
    /// are logged and skipped. CopyDone, an ErrorResponse or a closed
    /// connection end the stream with an error.
    pub async fn next(&mut self) -> Result<ReplicationMessage, SourceError> {
        loop {
            match self.wire.read().await? {
                Incoming::Message(Message::CopyData(body)) => {
                    return frame::parse_copy_data(body.into_bytes())
                        .map_err(|error| self.wire.at.frame(error));
                }
                Incoming::Message(Message::NoticeResponse(body)) => self.wire.log_notice(&body),
                Incoming::Message(Message::ParameterStatus(_)) => {}
                Incoming::Message(Message::ErrorResponse(body)) => {
                    return Err(self.wire.server_error(&body));
                }
                // A walsender that shuts down (pg_ctl stop/restart) ends the
                // stream with CommandComplete, without a CopyDone first.
                Incoming::Message(Message::CopyDone | Message::CommandComplete(_)) => {
                    return Err(self.wire.at.copy_done());
                }
                other => {
                    return Err(self
                        .wire
                        .at
                        .protocol(format!("unexpected {} while streaming", describe(&other))));
                }
            }
        }
    }

    /// Sends a standby status update: received up to `written`, durable up to
    /// `flushed` (sent as flush and apply; the slot's `confirmed_flush_lsn`
    /// follows it), the client clock, and whether the server should answer
    /// with a keepalive at once. Flushes the socket.
    ///
    /// The flush position never goes back: a lower `flushed` than already
    /// sent is a caller bug (debug assertion) and is raised to the last one.
    /// If this future is dropped part-way, the unsent rest goes out first on
    /// the next call.
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        reply_requested: bool,
    ) -> Result<(), SourceError> {
        debug_assert!(
            flushed >= self.sent_flush,
            "flush position went back from {} to {flushed}",
            self.sent_flush
        );
        self.sent_flush = self.sent_flush.max(flushed);
        let written = written.max(self.sent_flush);
        let payload = frame::standby_status_update(
            written,
            self.sent_flush,
            crate::pgtime::micros_since_2000(std::time::SystemTime::now()),
            reply_requested,
        );
        self.wire.queue(|buf| {
            frontend::CopyData::new(&payload[..])?.write(buf);
            Ok(())
        })?;
        tracing::trace!(slot = %self.wire.at.slot(), %written, flushed = %self.sent_flush, "standby status sent");
        self.wire.flush().await
    }

    /// Ends the connection politely (Terminate); the slot becomes free for
    /// another consumer at once.
    pub async fn close(mut self) -> Result<(), SourceError> {
        self.wire.queue(|buf| {
            frontend::terminate(buf);
            Ok(())
        })?;
        self.wire.flush().await?;
        let _ = self.wire.io.shutdown().await;
        Ok(())
    }

    /// The cluster's system identifier.
    #[cfg(any(test, feature = "testing"))]
    pub fn system_id(&self) -> u64 {
        self.identity.system_id
    }

    /// The server's timeline when streaming started.
    #[cfg(any(test, feature = "testing"))]
    pub fn timeline(&self) -> u32 {
        self.identity.timeline
    }

    /// The server's WAL flush position when streaming started.
    #[cfg(any(test, feature = "testing"))]
    pub fn xlogpos(&self) -> Lsn {
        self.identity.xlogpos
    }

    /// The database the slot belongs to.
    #[cfg(any(test, feature = "testing"))]
    pub fn dbname(&self) -> Option<&str> {
        self.identity.dbname.as_deref()
    }

    /// `host:port` of the server.
    #[cfg(any(test, feature = "testing"))]
    pub fn server_address(&self) -> &str {
        self.wire.at.addr()
    }

    /// The slot being read.
    #[cfg(any(test, feature = "testing"))]
    pub fn slot(&self) -> &str {
        self.wire.at.slot()
    }

    /// Whether the connection is encrypted.
    #[cfg(any(test, feature = "testing"))]
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The server's major version (`server_version` at startup), or `None`
    /// when it did not report one walhook could read.
    #[cfg(any(test, feature = "testing"))]
    pub fn server_major(&self) -> Option<u32> {
        self.server_major
    }
}

/// A byte stream to the server: TCP or TLS over TCP.
trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// The socket with its read and write buffers. Reading is cancel-safe; the
/// write buffer keeps what a cancelled flush did not send.
struct Wire {
    io: Box<dyn Socket>,
    read: BytesMut,
    write: BytesMut,
    at: At,
}

impl Wire {
    fn new(io: Box<dyn Socket>, at: At) -> Self {
        Wire {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: BytesMut::new(),
            at,
        }
    }

    /// The next whole message. Cancel-safe: only `read_buf` awaits, and it
    /// either adds bytes to the buffer or does nothing.
    async fn read(&mut self) -> Result<Incoming, SourceError> {
        loop {
            if let Some(incoming) =
                frame::split_message(&mut self.read).map_err(|error| self.at.frame(error))?
            {
                return Ok(incoming);
            }
            // read_buf reads nothing into a full buffer, which would look like EOF.
            if self.read.capacity() - self.read.len() < READ_CHUNK {
                self.read.reserve(READ_CHUNK);
            }
            match self.io.read_buf(&mut self.read).await {
                Ok(0) => return Err(self.at.closed()),
                Ok(_) => {}
                // TLS reports a peer that vanished without close_notify this way.
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(self.at.closed());
                }
                Err(error) => return Err(self.at.io(error)),
            }
        }
    }

    /// Appends a frontend message to the write buffer.
    fn queue(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
    ) -> Result<(), SourceError> {
        encode(&mut self.write).map_err(|error| {
            self.at
                .protocol(format!("cannot encode a message: {error}"))
        })
    }

    /// Writes out the write buffer and flushes the socket (and TLS).
    async fn flush(&mut self) -> Result<(), SourceError> {
        while self.write.has_remaining() {
            match self.io.write_buf(&mut self.write).await {
                Ok(0) => return Err(self.at.closed()),
                Ok(_) => {}
                Err(error) => return Err(self.at.io(error)),
            }
        }
        self.io.flush().await.map_err(|error| self.at.io(error))
    }

    fn server_error(&self, body: &ErrorResponseBody) -> SourceError {
        match frame::server_message(body.fields()) {
            Ok(message) => self.at.server(message),
            Err(error) => self.at.frame(error),
        }
    }

    fn log_notice(&self, body: &NoticeResponseBody) {
        if let Ok(notice) = frame::server_message(body.fields()) {
            tracing::info!(
                addr = %self.at.addr(),
                slot = %self.at.slot(),
                severity = %notice.severity,
                code = %notice.code,
                message = %notice.message,
                "postgres notice on the replication connection"
            );
        }
    }
}

/// A message's name for error text (backend messages have no Debug).
fn describe(incoming: &Incoming) -> &'static str {
    let Incoming::Message(message) = incoming else {
        return "CopyBothResponse";
    };
    match message {
        Message::AuthenticationOk
        | Message::AuthenticationCleartextPassword
        | Message::AuthenticationMd5Password(_)
        | Message::AuthenticationSasl(_)
        | Message::AuthenticationSaslContinue(_)
        | Message::AuthenticationSaslFinal(_) => "an authentication message",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "an unexpected message",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn stream_over_duplex() -> (ReplicationStream, DuplexStream) {
        let (client, server) = tokio::io::duplex(1024);
        let stream = ReplicationStream {
            wire: Wire::new(Box::new(client), At::new("db:5432".into(), "s".into())),
            identity: SystemIdentity {
                system_id: 1,
                timeline: 1,
                xlogpos: Lsn(1),
                dbname: Some("db".into()),
            },
            tls: false,
            server_major: Some(18),
            sent_flush: Lsn::ZERO,
        };
        (stream, server)
    }

    fn copy_data(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b'd'];
        out.extend_from_slice(&(payload.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn next_is_cancel_safe_and_ends_with_closed() {
        let (mut stream, mut server) = stream_over_duplex();
        let mut payload = vec![b'w'];
        payload.extend_from_slice(&7u64.to_be_bytes());
        payload.extend_from_slice(&9u64.to_be_bytes());
        payload.extend_from_slice(&11i64.to_be_bytes());
        payload.extend_from_slice(b"pgoutput bytes");
        let frame = copy_data(&payload);

        // Half a frame: next() reads it, then waits; cancel it there.
        server.write_all(&frame[..12]).await.unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(20), stream.next()).await;
        assert!(cancelled.is_err(), "half a frame must not make a message");
        // The rest arrives; nothing read before the cancellation is lost.
        server.write_all(&frame[12..]).await.unwrap();
        let message = stream.next().await.unwrap();
        assert_eq!(
            message,
            ReplicationMessage::XLogData {
                wal_start: Lsn(7),
                wal_end: Lsn(9),
                server_time_micros: 11,
                data: bytes::Bytes::from_static(b"pgoutput bytes"),
            }
        );

        drop(server);
        let error = stream.next().await.unwrap_err();
        assert!(matches!(error, SourceError::Closed { .. }), "{error:?}");
        assert!(error.is_transient());
    }

    #[tokio::test]
    async fn copy_done_and_server_errors_end_the_stream() {
        let (mut stream, mut server) = stream_over_duplex();
        server.write_all(b"c\x00\x00\x00\x04").await.unwrap();
        let error = stream.next().await.unwrap_err();
        assert!(matches!(error, SourceError::CopyDone { .. }), "{error:?}");

        // A walsender shutting down sends CommandComplete alone.
        let (mut stream, mut server) = stream_over_duplex();
        server
            .write_all(b"C\x00\x00\x00\x0bCOPY 0\x00")
            .await
            .unwrap();
        let error = stream.next().await.unwrap_err();
        assert!(matches!(error, SourceError::CopyDone { .. }), "{error:?}");
        assert!(error.is_transient());

        let (mut stream, mut server) = stream_over_duplex();
        // A notice is skipped; the error after it ends the stream.
        let notice = b"SNOTICE\0C00000\0Mhello\0\0";
        let mut bytes = vec![b'N'];
        bytes.extend_from_slice(&(notice.len() as i32 + 4).to_be_bytes());
        bytes.extend_from_slice(notice);
        let error = b"SFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";
        bytes.push(b'E');
        bytes.extend_from_slice(&(error.len() as i32 + 4).to_be_bytes());
        bytes.extend_from_slice(error);
        server.write_all(&bytes).await.unwrap();
        let error = stream.next().await.unwrap_err();
        assert_eq!(error.code(), Some("57P01"));
        assert!(error.is_transient());
        assert!(error.to_string().contains("db:5432"), "{error}");
    }

    #[tokio::test]
    async fn send_status_writes_one_standby_status_update() {
        let (mut stream, mut server) = stream_over_duplex();
        stream
            .send_status(Lsn(0x20), Lsn(0x10), true)
            .await
            .unwrap();
        let mut bytes = [0u8; 1 + 4 + 34];
        server.read_exact(&mut bytes).await.unwrap();
        assert_eq!(bytes[0], b'd');
        assert_eq!(&bytes[1..5], &38i32.to_be_bytes());
        assert_eq!(bytes[5], b'r');
        assert_eq!(&bytes[6..14], &0x20u64.to_be_bytes(), "write");
        assert_eq!(&bytes[14..22], &0x10u64.to_be_bytes(), "flush");
        assert_eq!(&bytes[22..30], &0x10u64.to_be_bytes(), "apply");
        assert_eq!(bytes[38], 1, "reply requested");
    }
}
