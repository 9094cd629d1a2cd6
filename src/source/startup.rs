//! Opening a replication connection: TCP, the TLS negotiation `sslmode`
//! asks for, the startup message with `replication=database`, password
//! authentication (cleartext, MD5, SCRAM-SHA-256), `IDENTIFY_SYSTEM` and
//! `START_REPLICATION ... LOGICAL`, up to the server's CopyBothResponse
//! (<https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>,
//! <https://www.postgresql.org/docs/current/protocol-replication.html>).
//!
//! pgoutput's options depend on the server's major version, which the server
//! reports at startup (`ParameterStatus server_version`): an option an older
//! server does not know makes it refuse `START_REPLICATION`.
//!
//! It does not stream: once the server is in COPY BOTH mode the connection is
//! handed to [`super::ReplicationStream`]. It does not do GSSAPI, SSPI,
//! client certificates or SCRAM channel binding, and does not bound its own
//! time (the caller applies `connect_timeout`).

use std::sync::Arc;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::lsn::Lsn;
use crate::pgconn::{ConnectParams, server_name, tls_client_config};

use super::error::{At, SourceError};
use super::frame::Incoming;
use super::{SESSION_OPTIONS, Socket, SystemIdentity, Wire, describe};

/// The first major version whose pgoutput knows the `messages` option
/// (logical decoding messages from `pg_logical_emit_message`, type 'M').
const MESSAGES_SINCE_MAJOR: u32 = 14;

/// A replication connection in COPY BOTH mode and what the server said on
/// the way there.
pub(super) struct Opened {
    pub(super) wire: Wire,
    pub(super) identity: SystemIdentity,
    pub(super) tls: bool,
    /// The server's major version, when it reported one it could parse.
    pub(super) server_major: Option<u32>,
}

/// Everything up to and including the CopyBothResponse.
pub(super) async fn open(
    params: &ConnectParams,
    at: At,
    publication: &str,
    start: Lsn,
    proto_version: u32,
) -> Result<Opened, SourceError> {
    let (socket, tls) = connect(params, &at).await?;
    let mut wire = Wire::new(socket, at);
    authenticate(&mut wire, params).await?;
    let server_major = wait_until_ready(&mut wire).await?;
    let identity = identify_system(&mut wire).await?;
    // A server that did not say which version it is (a proxy in between may
    // not pass it on) gets only the options every version knows.
    let messages = server_major.is_some_and(|major| major >= MESSAGES_SINCE_MAJOR);
    let command =
        start_replication_command(wire.at.slot(), publication, start, proto_version, messages);
    tracing::debug!(addr = %wire.at.addr(), ?server_major, %command, "starting replication");
    wire.queue(|buf| frontend::query(&command, buf))?;
    wire.flush().await?;
    loop {
        match wire.read().await? {
            Incoming::CopyBothResponse => {
                return Ok(Opened {
                    wire,
                    identity,
                    tls,
                    server_major,
                });
            }
            Incoming::Message(Message::ErrorResponse(body)) => return Err(wire.server_error(&body)),
            Incoming::Message(Message::NoticeResponse(body)) => wire.log_notice(&body),
            Incoming::Message(Message::ParameterStatus(_)) => {}
            other => {
                return Err(wire.at.protocol(format!(
                    "expected CopyBothResponse after START_REPLICATION, got {}",
                    describe(&other)
                )));
            }
        }
    }
}

/// TCP, then TLS as `sslmode` asks (SSLRequest, exactly one byte of answer).
async fn connect(
    params: &ConnectParams,
    peer: &At,
) -> Result<(Box<dyn Socket>, bool), SourceError> {
    let tls = tls_client_config(params).map_err(|error| peer.tls_setup(error))?;
    let mut tcp = TcpStream::connect((params.host.as_str(), params.port))
        .await
        .map_err(|error| peer.connect(error))?;
    // Status updates are small and must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok((Box::new(tcp), false));
    };
    let name = server_name(&params.host).map_err(|error| peer.tls_setup(error))?;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request)
        .await
        .map_err(|error| peer.connect(error))?;
    // Exactly one byte: anything after it must come through TLS (CVE-2021-23222).
    let answer = tcp.read_u8().await.map_err(|error| peer.connect(error))?;
    match answer {
        b'S' => {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|error| peer.tls(error))?;
            Ok((Box::new(stream), true))
        }
        b'N' if params.sslmode.requires_tls() => Err(peer.tls_refused(params.sslmode.as_str())),
        b'N' => Ok((Box::new(tcp), false)),
        other => Err(peer.protocol(format!(
            "answered the SSL request with byte {other:#04x} instead of S or N"
        ))),
    }
}

async fn authenticate(wire: &mut Wire, params: &ConnectParams) -> Result<(), SourceError> {
    let startup = [
        ("user", params.user.as_str()),
        ("database", params.dbname.as_str()),
        ("replication", "database"),
        ("application_name", params.application_name.as_str()),
        ("client_encoding", "UTF8"),
        ("options", SESSION_OPTIONS),
    ];
    wire.queue(|buf| frontend::startup_message(startup, buf))?;
    wire.flush().await?;
    let peer = wire.at.clone();
    let password = || {
        params.password.as_deref().ok_or_else(|| {
            peer.auth(
                &params.user,
                "the server asks for a password and the source URL has none; \
                 give it as postgres://user:PASSWORD@host/dbname",
            )
        })
    };
    loop {
        match wire.read().await? {
            Incoming::Message(Message::AuthenticationOk) => return Ok(()),
            Incoming::Message(Message::AuthenticationCleartextPassword) => {
                let password = password()?.to_owned();
                wire.queue(|buf| frontend::password_message(password.as_bytes(), buf))?;
                wire.flush().await?;
            }
            Incoming::Message(Message::AuthenticationMd5Password(body)) => {
                let hash = md5_hash(params.user.as_bytes(), password()?.as_bytes(), body.salt());
                wire.queue(|buf| frontend::password_message(hash.as_bytes(), buf))?;
                wire.flush().await?;
            }
            Incoming::Message(Message::AuthenticationSasl(body)) => {
                let mut offered = Vec::new();
                let mut mechanisms = body.mechanisms();
                while let Some(mechanism) = mechanisms
                    .next()
                    .map_err(|error| wire.at.protocol(error.to_string()))?
                {
                    offered.push(mechanism.to_owned());
                }
                if !offered.iter().any(|mechanism| mechanism == SCRAM_SHA_256) {
                    return Err(wire.at.auth(
                        &params.user,
                        format!(
                            "the server offers SASL mechanisms {offered:?}; walhook speaks {SCRAM_SHA_256}"
                        ),
                    ));
                }
                let password = password()?.to_owned();
                scram(wire, &params.user, &password).await?;
            }
            Incoming::Message(Message::ErrorResponse(body)) => return Err(wire.server_error(&body)),
            Incoming::Message(Message::NoticeResponse(body)) => wire.log_notice(&body),
            Incoming::Message(
                Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGssContinue(_),
            ) => {
                return Err(wire.at.auth(
                    &params.user,
                    "pg_hba.conf asks for an authentication method walhook does not speak \
                     (it speaks trust, password, md5 and scram-sha-256)",
                ));
            }
            other => {
                return Err(wire.at.protocol(format!(
                    "expected an authentication request, got {}",
                    describe(&other)
                )));
            }
        }
    }
}

/// SCRAM-SHA-256 without channel binding (RFC 5802, RFC 7677).
async fn scram(wire: &mut Wire, user: &str, password: &str) -> Result<(), SourceError> {
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    wire.queue(|buf| frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), buf))?;
    wire.flush().await?;
    match wire.read().await? {
        Incoming::Message(Message::AuthenticationSaslContinue(body)) => {
            scram.update(body.data()).map_err(|error| {
                wire.at.auth(
                    user,
                    format!("the server's SCRAM challenge is not valid: {error}"),
                )
            })?;
        }
        Incoming::Message(Message::ErrorResponse(body)) => return Err(wire.server_error(&body)),
        other => {
            return Err(wire.at.protocol(format!(
                "expected a SCRAM challenge, got {}",
                describe(&other)
            )));
        }
    }
    wire.queue(|buf| frontend::sasl_response(scram.message(), buf))?;
    wire.flush().await?;
    match wire.read().await? {
        Incoming::Message(Message::AuthenticationSaslFinal(body)) => {
            scram.finish(body.data()).map_err(|error| {
                wire.at.auth(
                    user,
                    format!("the server did not prove it knows the password ({error}); is this the right server?"),
                )
            })
        }
        Incoming::Message(Message::ErrorResponse(body)) => Err(wire.server_error(&body)),
        other => Err(wire.at.protocol(format!(
            "expected the SCRAM outcome, got {}",
            describe(&other)
        ))),
    }
}

/// After AuthenticationOk: parameter statuses and the backend key, until
/// ReadyForQuery. Returns the major version from `server_version`.
async fn wait_until_ready(wire: &mut Wire) -> Result<Option<u32>, SourceError> {
    let mut server_major = None;
    loop {
        match wire.read().await? {
            Incoming::Message(Message::ReadyForQuery(_)) => return Ok(server_major),
            Incoming::Message(Message::ParameterStatus(body)) => {
                if body.name().is_ok_and(|name| name == "server_version") {
                    server_major = body.value().ok().and_then(parse_server_major);
                }
            }
            Incoming::Message(Message::BackendKeyData(_)) => {}
            Incoming::Message(Message::NoticeResponse(body)) => wire.log_notice(&body),
            Incoming::Message(Message::ErrorResponse(body)) => return Err(wire.server_error(&body)),
            other => {
                return Err(wire
                    .at
                    .protocol(format!("expected ReadyForQuery, got {}", describe(&other))));
            }
        }
    }
}

/// `IDENTIFY_SYSTEM`: one row of systemid, timeline, xlogpos, dbname.
async fn identify_system(wire: &mut Wire) -> Result<SystemIdentity, SourceError> {
    wire.queue(|buf| frontend::query("IDENTIFY_SYSTEM", buf))?;
    wire.flush().await?;
    let mut row: Option<Vec<Option<String>>> = None;
    loop {
        match wire.read().await? {
            Incoming::Message(Message::RowDescription(_) | Message::CommandComplete(_)) => {}
            Incoming::Message(Message::DataRow(body)) => {
                let buffer = body.buffer();
                let values = body
                    .ranges()
                    .map(|range| {
                        Ok(range.and_then(|range| {
                            buffer
                                .get(range)
                                .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                        }))
                    })
                    .collect::<Vec<_>>()
                    .map_err(|error| wire.at.protocol(format!("IDENTIFY_SYSTEM row: {error}")))?;
                row = Some(values);
            }
            Incoming::Message(Message::ReadyForQuery(_)) => break,
            Incoming::Message(Message::NoticeResponse(body)) => wire.log_notice(&body),
            Incoming::Message(Message::ErrorResponse(body)) => return Err(wire.server_error(&body)),
            other => {
                return Err(wire.at.protocol(format!(
                    "unexpected {} in the answer to IDENTIFY_SYSTEM",
                    describe(&other)
                )));
            }
        }
    }
    let bad = |what: &str| wire.at.protocol(format!("IDENTIFY_SYSTEM returned {what}"));
    let row = row.ok_or_else(|| bad("no row"))?;
    let field = |index: usize| row.get(index).cloned().flatten();
    let system_id = field(0)
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| bad("no valid systemid"))?;
    let timeline = field(1)
        .and_then(|text| text.parse::<u32>().ok())
        .ok_or_else(|| bad("no valid timeline"))?;
    let xlogpos = field(2)
        .and_then(|text| text.parse::<Lsn>().ok())
        .ok_or_else(|| bad("no valid xlogpos"))?;
    Ok(SystemIdentity {
        system_id,
        timeline,
        xlogpos,
        dbname: field(3),
    })
}

/// The major version in a `server_version` report: "15.14 (Debian
/// 15.14-0+deb12u1)" is 15, "18beta1" is 18, "9.6.24" is 9 (no pgoutput).
fn parse_server_major(server_version: &str) -> Option<u32> {
    let digits = server_version
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?;
    digits.parse().ok()
}

/// `START_REPLICATION SLOT "slot" LOGICAL X/Y (proto_version 'n',
/// publication_names '"publication"'[, messages 'true'])`, with the slot
/// quoted as an identifier and the publication quoted as an identifier inside
/// a string literal, as the walsender's grammar and pgoutput's option parser
/// read them. `messages` asks for logical decoding messages, which only
/// PostgreSQL 14 and newer know.
pub(super) fn start_replication_command(
    slot: &str,
    publication: &str,
    start: Lsn,
    proto_version: u32,
    messages: bool,
) -> String {
    let messages = if messages { ", messages 'true'" } else { "" };
    format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '{proto_version}', publication_names {}{messages})",
        quote_identifier(slot),
        quote_literal(&quote_identifier(publication)),
    )
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn start_replication_quotes_slot_and_publication() {
        assert_eq!(
            start_replication_command("walhook", "walhook", Lsn(0x1_0000_00A0), 1, false),
            "START_REPLICATION SLOT \"walhook\" LOGICAL 1/A0 \
             (proto_version '1', publication_names '\"walhook\"')"
        );
        assert_eq!(
            start_replication_command("s\"x", "it's \"p\"", Lsn::ZERO, 3, false),
            "START_REPLICATION SLOT \"s\"\"x\" LOGICAL 0/0 \
             (proto_version '3', publication_names '\"it''s \"\"p\"\"\"')"
        );
    }

    #[test]
    fn messages_are_asked_for_only_when_wanted() {
        assert_eq!(
            start_replication_command("walhook", "walhook", Lsn::ZERO, 1, true),
            "START_REPLICATION SLOT \"walhook\" LOGICAL 0/0 \
             (proto_version '1', publication_names '\"walhook\"', messages 'true')"
        );
    }

    #[test]
    fn server_major_from_server_version() {
        assert_eq!(
            parse_server_major("15.14 (Debian 15.14-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_server_major("18.4"), Some(18));
        assert_eq!(parse_server_major("18beta1"), Some(18));
        assert_eq!(parse_server_major("17devel"), Some(17));
        assert_eq!(parse_server_major("9.6.24"), Some(9));
        assert_eq!(parse_server_major(""), None);
        assert_eq!(parse_server_major("unknown"), None);
    }
}
