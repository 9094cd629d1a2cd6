//! Opening a replication connection: TCP, the TLS negotiation `sslmode`
//! asks for, the startup message with `replication=database`, password
//! authentication (cleartext, MD5, SCRAM-SHA-256 with channel binding over
//! TLS) as the URL's `require_auth` and `channel_binding` allow
//! ([`crate::pgconn::AuthPolicy`]), `IDENTIFY_SYSTEM` and
//! `START_REPLICATION ... LOGICAL`, up to the server's CopyBothResponse
//! (<https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>,
//! <https://www.postgresql.org/docs/current/protocol-replication.html>).
//!
//! pgoutput's options depend on the server's major version, which the server
//! reports at startup (`ParameterStatus server_version`): an option an older
//! server does not know makes it refuse `START_REPLICATION`.
//!
//! It does not stream: once the server is in COPY BOTH mode the connection is
//! handed to [`super::ReplicationStream`]. It does not do GSSAPI, SSPI or
//! client certificates, and does not bound its own time (the caller applies
//! `connect_timeout`).

use std::sync::Arc;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::lsn::Lsn;
use crate::pgconn::{
    AuthMethod, AuthRefused, ChannelBinding as BindingMode, ConnectParams, end_point_hash,
    server_name, tls_client_config,
};

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
    let (socket, session) = connect(params, &at).await?;
    let tls = session.is_some();
    let mut wire = Wire::new(socket, at);
    authenticate(&mut wire, params, session.as_ref()).await?;
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

/// What authentication needs to know of a TLS session.
struct TlsSession {
    /// The `tls-server-end-point` channel binding data, when the server's
    /// certificate has it.
    end_point: Option<Vec<u8>>,
}

/// TCP, then TLS as `sslmode` asks (SSLRequest, exactly one byte of answer).
async fn connect(
    params: &ConnectParams,
    peer: &At,
) -> Result<(Box<dyn Socket>, Option<TlsSession>), SourceError> {
    let tls = tls_client_config(params).map_err(|error| peer.tls_setup(error))?;
    let mut tcp = TcpStream::connect((params.host.as_str(), params.port))
        .await
        .map_err(|error| peer.connect(error))?;
    // Status updates are small and must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok((Box::new(tcp), None));
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
            let session = TlsSession {
                end_point: end_point_hash(stream.get_ref().1),
            };
            Ok((Box::new(stream), Some(session)))
        }
        b'N' if params.sslmode.requires_tls() => Err(peer.tls_refused(params.sslmode.as_str())),
        b'N' => Ok((Box::new(tcp), None)),
        other => Err(peer.protocol(format!(
            "answered the SSL request with byte {other:#04x} instead of S or N"
        ))),
    }
}

/// The startup message and the password exchange, as far as the URL's
/// authentication policy allows: a refused request gets no answer.
async fn authenticate(
    wire: &mut Wire,
    params: &ConnectParams,
    tls: Option<&TlsSession>,
) -> Result<(), SourceError> {
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
    let policy = params.auth_policy();
    let verified = tls.is_some() && params.verifies_server();
    let addr = wire.at.addr().to_owned();
    let refused = |refusal: AuthRefused| peer.auth(&params.user, refusal.0);
    // Only SCRAM can bind to the TLS session; everything else is refused
    // when the URL requires binding.
    let unbound = |what: &str| {
        peer.auth(
            &params.user,
            format!(
                "channel_binding=require in the source URL, but the server at {addr} {what}; \
                 walhook sent nothing"
            ),
        )
    };
    let require_binding = policy.channel_binding == BindingMode::Require;
    let mut asked = false;
    loop {
        let message = wire.read().await?;
        if matches!(
            message,
            Incoming::Message(
                Message::AuthenticationCleartextPassword
                    | Message::AuthenticationMd5Password(_)
                    | Message::AuthenticationSasl(_)
            )
        ) {
            asked = true;
        }
        match message {
            Incoming::Message(Message::AuthenticationOk) => {
                if !asked {
                    policy
                        .check(AuthMethod::None, verified, &addr)
                        .map_err(refused)?;
                    if require_binding {
                        return Err(unbound("asked for no password"));
                    }
                }
                return Ok(());
            }
            Incoming::Message(Message::AuthenticationCleartextPassword) => {
                policy
                    .check(AuthMethod::Password, verified, &addr)
                    .map_err(refused)?;
                if require_binding {
                    return Err(unbound("asks for the password in clear text"));
                }
                let password = password()?.to_owned();
                wire.queue(|buf| frontend::password_message(password.as_bytes(), buf))?;
                wire.flush().await?;
            }
            Incoming::Message(Message::AuthenticationMd5Password(body)) => {
                policy
                    .check(AuthMethod::Md5, verified, &addr)
                    .map_err(refused)?;
                if require_binding {
                    return Err(unbound("asks for an MD5 hash of the password"));
                }
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
                policy
                    .check(AuthMethod::ScramSha256, verified, &addr)
                    .map_err(refused)?;
                let end_point = tls
                    .and_then(|session| session.end_point.clone())
                    .filter(|_| policy.channel_binding != BindingMode::Disable);
                let plus_offered = offered.iter().any(|mechanism| mechanism == SCRAM_SHA_256_PLUS);
                let (mechanism, binding) = match end_point {
                    Some(hash) if plus_offered => {
                        (SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(hash))
                    }
                    _ if require_binding => {
                        return Err(unbound(if tls.is_none() {
                            "is reached without TLS, so there is no session to bind to"
                        } else {
                            "does not offer SCRAM-SHA-256-PLUS for this TLS session"
                        }));
                    }
                    // We could bind but the server did not offer to: say so,
                    // so a server in between that removed the offer is caught.
                    Some(_) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
                    None => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                };
                let password = password()?.to_owned();
                scram(wire, &params.user, &password, mechanism, binding).await?;
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

/// SCRAM-SHA-256 (RFC 5802, RFC 7677), bound to the TLS session when
/// `mechanism` is SCRAM-SHA-256-PLUS (RFC 5929 `tls-server-end-point`).
async fn scram(
    wire: &mut Wire,
    user: &str,
    password: &str,
    mechanism: &str,
    binding: ChannelBinding,
) -> Result<(), SourceError> {
    let mut scram = ScramSha256::new(password.as_bytes(), binding);
    wire.queue(|buf| frontend::sasl_initial_response(mechanism, scram.message(), buf))?;
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
