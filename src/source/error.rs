//! What can go wrong on the replication connection, and whether retrying
//! helps.
//!
//! Every variant names the server (`host:port`) and the slot, and its message
//! says what to do. [`SourceError::is_transient`] separates what a reconnect
//! with backoff can get past (network trouble, a server restarting, a slot
//! held by another consumer) from what needs a person (credentials, a missing
//! slot, TLS trust, a protocol violation). It does not decide how long to wait.

use std::sync::Arc;
use std::time::Duration;

use crate::pgconn::{
    TlsSetupError, io_error_is_tls, io_error_is_transient, sqlstate_advice, sqlstate_is_transient,
};

use super::frame::FrameError;

/// The replication connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "cannot connect to PostgreSQL at {addr} (slot \"{slot}\"): {source}; check that the \
         server is running and accepts TCP connections on that address", addr = peer.addr, slot = peer.slot)]
    Connect {
        peer: Arc<Peer>,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "timed out after {}s starting replication from PostgreSQL at {addr} (slot \"{slot}\"); \
         check that the server is running and reachable, or raise connect_timeout in the \
         source URL", after.as_secs_f32(), addr = peer.addr, slot = peer.slot)]
    Timeout { peer: Arc<Peer>, after: Duration },
    #[error("cannot set up TLS for PostgreSQL at {addr} (slot \"{slot}\"): {source}", addr = peer.addr, slot = peer.slot)]
    TlsSetup {
        peer: Arc<Peer>,
        #[source]
        source: TlsSetupError,
    },
    #[error(
        "PostgreSQL at {addr} does not accept TLS, but the source URL asks for sslmode={sslmode}; \
         enable ssl on the server or lower sslmode (slot \"{slot}\")", addr = peer.addr, slot = peer.slot)]
    TlsRefused {
        peer: Arc<Peer>,
        sslmode: &'static str,
    },
    #[error(
        "TLS handshake with PostgreSQL at {addr} failed (slot \"{slot}\"): {source}; check \
         sslmode and sslrootcert in the source URL against the server's certificate", addr = peer.addr, slot = peer.slot)]
    Tls {
        peer: Arc<Peer>,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot authenticate to PostgreSQL at {addr} as user \"{user}\" (slot \"{slot}\"): {reason}", addr = peer.addr, slot = peer.slot)]
    Auth {
        peer: Arc<Peer>,
        user: String,
        reason: String,
    },
    /// The server answered with an ErrorResponse.
    #[error(
        "PostgreSQL at {addr} (slot \"{slot}\") reported {code}: {message}{}{}{}",
        detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default(),
        hint.as_ref().map(|h| format!(" hint: {h}")).unwrap_or_default(),
        sqlstate_advice(code), addr = peer.addr, slot = peer.slot)]
    Server {
        peer: Arc<Peer>,
        /// SQLSTATE, e.g. `55006` when another process holds the slot.
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error(
        "PostgreSQL at {addr} sent something walhook does not understand (slot \"{slot}\"): \
         {what}; this is a bug or not a PostgreSQL server", addr = peer.addr, slot = peer.slot)]
    Protocol { peer: Arc<Peer>, what: String },
    #[error("bad replication message from PostgreSQL at {addr} (slot \"{slot}\"): {source}", addr = peer.addr, slot = peer.slot)]
    Frame {
        peer: Arc<Peer>,
        #[source]
        source: FrameError,
    },
    #[error(
        "the replication connection to PostgreSQL at {addr} (slot \"{slot}\") failed: {source}; walhook reconnects", addr = peer.addr, slot = peer.slot)]
    Io {
        peer: Arc<Peer>,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "PostgreSQL at {addr} ended the replication stream for slot \"{slot}\" (it may be \
         shutting down); walhook reconnects", addr = peer.addr, slot = peer.slot)]
    CopyDone { peer: Arc<Peer> },
    #[error(
        "PostgreSQL at {addr} closed the replication connection (slot \"{slot}\"); walhook reconnects", addr = peer.addr, slot = peer.slot)]
    Closed { peer: Arc<Peer> },
}

impl SourceError {
    /// True when reconnecting later may succeed: network failures, timeouts,
    /// the server restarting or out of connections, the slot held by another
    /// process, the stream closed. False for credentials, a missing slot or
    /// database, TLS trust, and protocol violations.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { source, .. } | SourceError::Io { source, .. } => {
                io_error_is_transient(source)
            }
            SourceError::Tls { source, .. } => {
                !io_error_is_tls(source) && io_error_is_transient(source)
            }
            SourceError::Server { code, .. } => sqlstate_is_transient(code),
            SourceError::Timeout { .. }
            | SourceError::CopyDone { .. }
            | SourceError::Closed { .. } => true,
            SourceError::TlsSetup { .. }
            | SourceError::TlsRefused { .. }
            | SourceError::Auth { .. }
            | SourceError::Protocol { .. }
            | SourceError::Frame { .. } => false,
        }
    }

    /// SQLSTATE 55006: another process (a walhook that is running) reads the
    /// slot. A standby waits and tries again.
    pub fn is_slot_in_use(&self) -> bool {
        self.code() == Some("55006")
    }

    /// SQLSTATE 42704 from START_REPLICATION: the slot does not exist.
    pub fn is_slot_missing(&self) -> bool {
        self.code() == Some("42704")
    }

    /// The SQLSTATE when the server sent an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            SourceError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl SourceError {
    /// The endpoint and slot the error is about.
    pub fn peer(&self) -> &Peer {
        match self {
            SourceError::Connect { peer, .. }
            | SourceError::Timeout { peer, .. }
            | SourceError::TlsSetup { peer, .. }
            | SourceError::TlsRefused { peer, .. }
            | SourceError::Tls { peer, .. }
            | SourceError::Auth { peer, .. }
            | SourceError::Server { peer, .. }
            | SourceError::Protocol { peer, .. }
            | SourceError::Frame { peer, .. }
            | SourceError::Io { peer, .. }
            | SourceError::CopyDone { peer }
            | SourceError::Closed { peer } => peer,
        }
    }
}

/// Which server and slot an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `host:port`.
    pub addr: String,
    /// The replication slot.
    pub slot: String,
}

/// Builds errors about one peer; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct At(pub Arc<Peer>);

impl At {
    pub fn new(addr: String, slot: String) -> Self {
        At(Arc::new(Peer { addr, slot }))
    }

    pub fn addr(&self) -> &str {
        &self.0.addr
    }

    pub fn slot(&self) -> &str {
        &self.0.slot
    }

    fn peer(&self) -> Arc<Peer> {
        self.0.clone()
    }

    pub fn connect(&self, source: std::io::Error) -> SourceError {
        SourceError::Connect {
            peer: self.peer(),
            source,
        }
    }

    pub fn timeout(&self, after: Duration) -> SourceError {
        SourceError::Timeout {
            peer: self.peer(),
            after,
        }
    }

    pub fn io(&self, source: std::io::Error) -> SourceError {
        SourceError::Io {
            peer: self.peer(),
            source,
        }
    }

    pub fn tls(&self, source: std::io::Error) -> SourceError {
        SourceError::Tls {
            peer: self.peer(),
            source,
        }
    }

    pub fn tls_setup(&self, source: TlsSetupError) -> SourceError {
        SourceError::TlsSetup {
            peer: self.peer(),
            source,
        }
    }

    pub fn tls_refused(&self, sslmode: &'static str) -> SourceError {
        SourceError::TlsRefused {
            peer: self.peer(),
            sslmode,
        }
    }

    pub fn auth(&self, user: &str, reason: impl Into<String>) -> SourceError {
        SourceError::Auth {
            peer: self.peer(),
            user: user.to_owned(),
            reason: reason.into(),
        }
    }

    pub fn protocol(&self, what: impl Into<String>) -> SourceError {
        SourceError::Protocol {
            peer: self.peer(),
            what: what.into(),
        }
    }

    pub fn frame(&self, source: FrameError) -> SourceError {
        SourceError::Frame {
            peer: self.peer(),
            source,
        }
    }

    pub fn copy_done(&self) -> SourceError {
        SourceError::CopyDone { peer: self.peer() }
    }

    pub fn closed(&self) -> SourceError {
        SourceError::Closed { peer: self.peer() }
    }

    pub fn server(&self, message: super::frame::ServerMessage) -> SourceError {
        SourceError::Server {
            peer: self.peer(),
            code: message.code,
            message: message.message,
            detail: message.detail,
            hint: message.hint,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::source::frame::ServerMessage;

    fn peer() -> At {
        At::new("db:5432".into(), "walhook".into())
    }

    fn server(code: &str) -> SourceError {
        peer().server(ServerMessage {
            severity: "ERROR".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        })
    }

    #[test]
    fn slot_errors_are_recognised_and_classified() {
        let in_use = server("55006");
        assert!(in_use.is_slot_in_use() && !in_use.is_slot_missing());
        assert!(in_use.is_transient(), "a standby waits for the slot");
        let missing = server("42704");
        assert!(missing.is_slot_missing() && !missing.is_slot_in_use());
        assert!(!missing.is_transient());
        let text = missing.to_string();
        assert!(
            text.contains("db:5432") && text.contains("\"walhook\""),
            "{text}"
        );
        assert!(text.contains("walhook setup"), "{text}");
        assert!(!server("28P01").is_transient());
        assert!(server("57P03").is_transient());
    }

    #[test]
    fn connection_trouble_is_transient_and_misconfiguration_is_not() {
        let refused = peer().connect(std::io::ErrorKind::ConnectionRefused.into());
        assert!(refused.is_transient());
        assert!(refused.to_string().contains("db:5432"));
        assert!(peer().closed().is_transient());
        assert!(!peer().auth("u", "no password").is_transient());
        assert!(!peer().protocol("odd").is_transient());
        let bad_cert = peer().tls(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert!(!bad_cert.is_transient());
    }
}
