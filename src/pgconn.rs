//! How walhook reaches PostgreSQL: the source URL, TLS, and the ordinary SQL
//! connection.
//!
//! [`ConnectParams::from_url`] parses the `postgres://` URL of `[source] url`
//! itself, because tokio-postgres' own parser rejects `sslmode=verify-ca`,
//! `verify-full` and `sslrootcert`. The parsed parameters feed both
//! connections: [`connect_sql`] (catalog look-ups, setup, dead letters) and the
//! replication connection in [`crate::source`], which share one rustls
//! configuration built by [`tls_client_config`] so that `sslmode` means the
//! same on both, as in libpq
//! (<https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-SSLMODE-STATEMENTS>).
//!
//! It does not retry: a caller that wants to reconnect asks
//! [`PgConnError::is_transient`]. It does not read `PGPASSWORD`, `.pgpass`,
//! `~/.postgresql/root.crt` or client certificates, and connects over TCP only
//! (no Unix sockets, one host per URL). The password never appears in `Debug`,
//! [`ConnectParams::redacted`] or an error message.

mod auth;
mod tls;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::SourceConfig;

pub use auth::{AuthGuard, AuthMethod, AuthMethods, AuthPolicy, AuthRefused, ChannelBinding};
pub(crate) use tls::{end_point_hash, server_name};
pub use tls::{TlsSetupError, tls_client_config};

/// `sslmode` of the source URL, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain otherwise (the default).
    Prefer,
    /// TLS or nothing; the certificate is checked only when `sslrootcert` is
    /// given (then as with `verify-ca`).
    Require,
    /// TLS with the certificate chain verified against `sslrootcert` (or the
    /// system roots); the host name is not checked.
    VerifyCa,
    /// TLS with the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    /// The spelling used in URLs and by libpq.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// True when a server that refuses TLS must be refused in turn.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where and how to connect, parsed from a `postgres://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Never printed: not by `Debug`, not by [`ConnectParams::redacted`].
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    /// Bounds the whole connection set-up (TCP, TLS, authentication), as
    /// libpq's `connect_timeout`.
    pub connect_timeout: Duration,
    /// `require_auth`: the methods the server may use; `None` for the
    /// default (see [`AuthPolicy::allowed`]).
    pub require_auth: Option<AuthMethods>,
    pub channel_binding: ChannelBinding,
}

/// The defaults a URL can override.
pub const DEFAULT_PORT: u16 = 5432;
pub const DEFAULT_APPLICATION_NAME: &str = "walhook";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const URL_KEYS: &str =
    "sslmode, sslrootcert, require_auth, channel_binding, application_name, connect_timeout";

/// The source URL could not be understood. Never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectParamsError {
    #[error(
        "the PostgreSQL URL is not a valid URL ({reason}); write it as \
         postgres://user:password@host:5432/dbname?sslmode=prefer"
    )]
    NotAUrl { reason: String },
    #[error(
        "the PostgreSQL URL starts with `{scheme}:`; it must start with postgres:// or postgresql://"
    )]
    Scheme { scheme: String },
    #[error(
        "the {part} in the PostgreSQL URL is not valid percent-encoded UTF-8; encode special characters as %XX"
    )]
    Encoding { part: &'static str },
    #[error(
        "the user or password in the PostgreSQL URL holds `/`, `?` or `#`; percent-encode \
         them (%2F, %3F, %23; `@` as %40)"
    )]
    UnencodedCredentials,
    #[error("unknown parameter `{key}` in the PostgreSQL URL; walhook understands {URL_KEYS}")]
    UnknownKey { key: String },
    #[error("`{key}={value}` in the PostgreSQL URL is not valid; use {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: &'static str,
    },
}

impl ConnectParams {
    /// The parameters of `[source]`: its URL, with `source.connect_timeout`
    /// unless the URL sets `connect_timeout` itself.
    pub fn from_source(source: &SourceConfig) -> Result<ConnectParams, ConnectParamsError> {
        let url = source.url.expose();
        let mut params = ConnectParams::from_url(url)?;
        if !url.contains("connect_timeout=") {
            params.connect_timeout = source.connect_timeout;
        }
        Ok(params)
    }

    /// Parses `postgres://[user[:password]@][host][:port][/dbname][?key=value&...]`.
    ///
    /// User, password, host, database and query values are percent-decoded.
    /// Defaults: host `localhost`, port 5432, user `$USER` (else `postgres`),
    /// database = user, `sslmode=prefer`, `connect_timeout=5` (seconds),
    /// `application_name=walhook`. Query keys other than
    /// `sslmode`, `sslrootcert`, `application_name` and `connect_timeout` are
    /// an error naming the key.
    pub fn from_url(text: &str) -> Result<ConnectParams, ConnectParamsError> {
        // A `/`, `?` or `#` in the password would split the URL there and
        // put the password's tail into a later error message.
        if let Some((_, rest)) = text.trim().split_once("://") {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, after) = rest.split_at(end);
            if !authority.contains('@') && after.contains('@') {
                return Err(ConnectParamsError::UnencodedCredentials);
            }
        }
        let url = url::Url::parse(text.trim()).map_err(|error| ConnectParamsError::NotAUrl {
            reason: error.to_string(),
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConnectParamsError::Scheme {
                scheme: url.scheme().to_owned(),
            });
        }
        let host = match url.host_str() {
            None | Some("") => "localhost".to_owned(),
            Some(host) => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                percent_decode(host, "host")?
            }
        };
        let user = match url.username() {
            "" => std::env::var("USER")
                .ok()
                .filter(|user| !user.is_empty())
                .unwrap_or_else(|| "postgres".to_owned()),
            user => percent_decode(user, "user name")?,
        };
        let password = url
            .password()
            .map(|password| percent_decode(password, "password"))
            .transpose()?;
        let dbname = match url.path().trim_start_matches('/') {
            "" => user.clone(),
            dbname => percent_decode(dbname, "database name")?,
        };
        let mut params = ConnectParams {
            host,
            port: url.port().unwrap_or(DEFAULT_PORT),
            user,
            password,
            dbname,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            application_name: DEFAULT_APPLICATION_NAME.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            require_auth: None,
            channel_binding: ChannelBinding::Prefer,
        };
        for pair in url
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key, "query")?;
            let value = percent_decode(value, "query")?;
            let bad = |expected| ConnectParamsError::BadValue {
                key: key.clone(),
                value: value.clone(),
                expected,
            };
            match key.as_str() {
                "sslmode" => {
                    params.sslmode = match value.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        _ => return Err(bad("disable, prefer, require, verify-ca or verify-full")),
                    }
                }
                "sslrootcert" if value.is_empty() => {
                    return Err(bad(
                        "the path of a PEM file of CA certificates, or `system`",
                    ));
                }
                "sslrootcert" => params.sslrootcert = Some(PathBuf::from(value)),
                "require_auth" => {
                    params.require_auth = Some(AuthMethods::parse(&value).map_err(|_| {
                        bad("a comma-separated list of password, md5, scram-sha-256 and none \
                             (or of methods to refuse, each as !method)")
                    })?);
                }
                "channel_binding" => {
                    params.channel_binding = match value.as_str() {
                        "disable" => ChannelBinding::Disable,
                        "prefer" => ChannelBinding::Prefer,
                        "require" => ChannelBinding::Require,
                        _ => return Err(bad("disable, prefer or require")),
                    }
                }
                "application_name" => params.application_name = value,
                "connect_timeout" => {
                    let seconds: u64 = value
                        .parse()
                        .ok()
                        .filter(|seconds| *seconds > 0)
                        .ok_or_else(|| bad("a whole number of seconds greater than 0"))?;
                    params.connect_timeout = Duration::from_secs(seconds);
                }
                _ => return Err(ConnectParamsError::UnknownKey { key }),
            }
        }
        Ok(params)
    }

    /// What both connections go along with when the server asks for a
    /// password (docs/security.md, "The network").
    pub fn auth_policy(&self) -> AuthPolicy {
        AuthPolicy {
            required: self.require_auth,
            channel_binding: self.channel_binding,
        }
    }

    /// Whether a TLS connection made with these parameters checks the
    /// server's certificate chain (`verify-ca`, `verify-full`, or
    /// `sslrootcert` given), so that a server in between is refused.
    pub fn verifies_server(&self) -> bool {
        matches!(self.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
            || (self.sslmode != SslMode::Disable && self.sslrootcert.is_some())
    }

    /// `host:port`, with brackets around an IPv6 address, for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL without the password, for logs and error messages.
    pub fn redacted(&self) -> String {
        let mut text = format!(
            "postgres://{}@{}/{}?sslmode={}",
            percent_encode(&self.user),
            self.address(),
            percent_encode(&self.dbname),
            self.sslmode
        );
        if let Some(path) = &self.sslrootcert {
            text.push_str("&sslrootcert=");
            text.push_str(&percent_encode(&path.display().to_string()));
        }
        if self.application_name != DEFAULT_APPLICATION_NAME {
            text.push_str("&application_name=");
            text.push_str(&percent_encode(&self.application_name));
        }
        if self.connect_timeout != DEFAULT_CONNECT_TIMEOUT {
            text.push_str(&format!(
                "&connect_timeout={}",
                self.connect_timeout.as_secs()
            ));
        }
        if let Some(methods) = self.require_auth {
            text.push_str(&format!("&require_auth={methods}"));
        }
        if self.channel_binding != ChannelBinding::Prefer {
            text.push_str("&channel_binding=");
            text.push_str(self.channel_binding.as_str());
        }
        text
    }
}

impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field(
                "password",
                &self.password.as_ref().map(|_| format_args!("<redacted>")),
            )
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("require_auth", &self.require_auth)
            .field("channel_binding", &self.channel_binding)
            .finish()
    }
}

fn percent_decode(text: &str, part: &'static str) -> Result<String, ConnectParamsError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or(ConnectParamsError::Encoding { part })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnectParamsError::Encoding { part })
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// True when `error`, or an I/O error it carries, is a rustls error: a
/// certificate or handshake problem that retrying will not fix.
pub(crate) fn io_error_is_tls(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Whether an I/O failure is the kind a later attempt can get past.
pub(crate) fn io_error_is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    if io_error_is_tls(error) {
        return false;
    }
    matches!(
        error.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | BrokenPipe
            | TimedOut
            | UnexpectedEof
            | Interrupted
            | WouldBlock
            | AddrNotAvailable
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    ) || error.raw_os_error().is_some() && !matches!(error.kind(), PermissionDenied | InvalidInput)
}

/// Whether a server error (by SQLSTATE) can go away by itself: connection
/// exceptions, insufficient resources (too many connections), shutdown or
/// start-up in progress, an object in use (a replication slot another
/// process holds), serialisation failures.
pub(crate) fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "55006" | "40001" | "40P01"
        )
}

/// What to do about a server error, by SQLSTATE; empty when there is nothing
/// specific to say.
pub(crate) fn sqlstate_advice(code: &str) -> &'static str {
    match code {
        "28P01" => "; check the user name and password in the source URL",
        "28000" => {
            "; check the user name in the source URL and that pg_hba.conf lets it connect \
             from this host (for the replication connection: a `host replication` or \
             `host all` line covering the database)"
        }
        "3D000" => "; create the database or fix its name in the source URL",
        "42501" => {
            "; the role needs more privileges: `ALTER ROLE <user> REPLICATION` for the \
             replication connection, or the grants named in the message"
        }
        "53300" => {
            "; the server has no free connection slots; raise max_connections or max_wal_senders, or wait"
        }
        "57P03" => "; the server is starting up or shutting down; walhook retries",
        "55006" => "; another consumer is reading this replication slot; walhook waits and retries",
        "42704" => "; create it with `walhook setup` (or pg_create_logical_replication_slot)",
        _ => "",
    }
}

// ---------------------------------------------------------------------------
// The SQL connection

/// The ordinary SQL connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PgConnError {
    #[error("cannot set up TLS for PostgreSQL at {addr}: {source}")]
    Tls {
        addr: String,
        #[source]
        source: TlsSetupError,
    },
    #[error(
        "timed out after {}s connecting to PostgreSQL at {addr}; check that the server is \
         running and reachable from here, or raise connect_timeout in the source URL",
        after.as_secs_f32()
    )]
    Timeout { addr: String, after: Duration },
    #[error(
        "cannot reach PostgreSQL at {addr}: {source}; check that the server is running and \
         accepts TCP connections on that address"
    )]
    Unreachable {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refused to authenticate to PostgreSQL: {0}")]
    AuthRefused(AuthRefused),
    #[error(
        "cannot connect to PostgreSQL at {addr} as user \"{user}\" to database \"{dbname}\": \
         {source}{}",
        pg_error_advice(source)
    )]
    Connect {
        addr: String,
        user: String,
        dbname: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl PgConnError {
    /// True when a later attempt may succeed (refused, reset, timed out, the
    /// server starting or out of connections); false for authentication
    /// failures, a missing database, TLS and configuration problems.
    pub fn is_transient(&self) -> bool {
        match self {
            PgConnError::Tls { .. } | PgConnError::AuthRefused(_) => false,
            PgConnError::Timeout { .. } => true,
            PgConnError::Unreachable { source, .. } => io_error_is_transient(source),
            PgConnError::Connect { source, .. } => pg_error_is_transient(source),
        }
    }

    /// The SQLSTATE the server answered with, if it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgConnError::Connect { source, .. } => source.code().map(|code| code.code()),
            _ => None,
        }
    }
}

/// Classifies a tokio-postgres error as [`PgConnError::is_transient`] does;
/// other modules use it for errors on an open connection.
pub fn pg_error_is_transient(error: &tokio_postgres::Error) -> bool {
    if let Some(code) = error.code() {
        return sqlstate_is_transient(code.code());
    }
    if error.is_closed() {
        return true;
    }
    let mut cause = std::error::Error::source(error);
    while let Some(current) = cause {
        if current.is::<rustls::Error>() {
            return false;
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return io_error_is_transient(io);
        }
        cause = current.source();
    }
    false
}

fn pg_error_advice(error: &tokio_postgres::Error) -> &'static str {
    if let Some(code) = error.code() {
        return sqlstate_advice(code.code());
    }
    let mut cause = std::error::Error::source(error);
    while let Some(current) = cause {
        if current.is::<rustls::Error>() {
            return "; check sslmode and sslrootcert in the source URL against the server's certificate";
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if io_error_is_tls(io) {
                return "; check sslmode and sslrootcert in the source URL against the server's certificate";
            }
            return "; check that the server is running and accepts TCP connections on that address";
        }
        if current.to_string().contains("does not support TLS") {
            return "; enable ssl on the server or use sslmode=prefer or disable";
        }
        cause = current.source();
    }
    ""
}

/// Opens an ordinary SQL connection (not a replication one) with TLS per
/// `params.sslmode`, within `params.connect_timeout`.
///
/// The connection's I/O runs in a spawned task that ends when the returned
/// client is dropped; an I/O error there is logged and surfaces to the client
/// as a closed connection.
pub async fn connect_sql(params: &ConnectParams) -> Result<tokio_postgres::Client, PgConnError> {
    let addr = params.address();
    let tls = tls_client_config(params).map_err(|source| PgConnError::Tls {
        addr: addr.clone(),
        source,
    })?;
    let mut config = tokio_postgres::Config::new();
    config
        .user(&params.user)
        .dbname(&params.dbname)
        .application_name(&params.application_name)
        .ssl_mode(match params.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            // The TLS connector does the verification verify-* asks for.
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        })
        .channel_binding(match params.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        });
    if let Some(password) = &params.password {
        config.password(password);
    }
    let policy = params.auth_policy();
    // The TCP connection is made here, not by tokio-postgres, so that the
    // server's side of it passes through the policy's guard.
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((params.host.as_str(), params.port))
            .await
            .map_err(|source| PgConnError::Unreachable {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream = AuthGuard::plain(tcp, policy, addr.clone());
        let refused = |source: tokio_postgres::Error| match auth_refusal(&source) {
            Some(refused) => PgConnError::AuthRefused(refused),
            None => PgConnError::Connect {
                addr: addr.clone(),
                user: params.user.clone(),
                dbname: params.dbname.clone(),
                source,
            },
        };
        match tls {
            None => {
                let (client, connection) = config
                    .connect_raw(stream, tokio_postgres::NoTls)
                    .await
                    .map_err(refused)?;
                spawn_connection(addr.clone(), connection);
                Ok(client)
            }
            Some(tls) => {
                let name = server_name(&params.host).map_err(|source| PgConnError::Tls {
                    addr: addr.clone(),
                    source,
                })?;
                let tls = GuardedTls {
                    connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)),
                    name,
                    policy,
                    server_verified: params.verifies_server(),
                    addr: addr.clone(),
                };
                let (client, connection) =
                    config.connect_raw(stream, tls).await.map_err(refused)?;
                spawn_connection(addr.clone(), connection);
                Ok(client)
            }
        }
    };
    match tokio::time::timeout(params.connect_timeout, connect).await {
        Err(_elapsed) => Err(PgConnError::Timeout {
            addr,
            after: params.connect_timeout,
        }),
        Ok(result) => result,
    }
}

/// The policy's refusal inside a tokio-postgres error, if that is what
/// ended the connection.
fn auth_refusal(error: &tokio_postgres::Error) -> Option<AuthRefused> {
    let mut cause = std::error::Error::source(error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<AuthRefused>() {
            return Some(refused.clone());
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(refused) = io.get_ref().and_then(|inner| inner.downcast_ref::<AuthRefused>())
        {
            return Some(refused.clone());
        }
        cause = current.source();
    }
    None
}

/// The SQL connection's TLS: rustls with the shared configuration, the
/// stream inside it guarded by the authentication policy.
struct GuardedTls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    policy: AuthPolicy,
    server_verified: bool,
    addr: String,
}

/// A TLS stream to PostgreSQL, with what SCRAM channel binding needs.
pub struct TlsSession<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsConnect<S> for GuardedTls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = AuthGuard<TlsSession<S>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Stream, std::io::Error>> + Send>,
    >;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let session = self.connector.connect(self.name, stream).await?;
            Ok(AuthGuard::tls(
                TlsSession(session),
                self.policy,
                self.server_verified,
                self.addr,
            ))
        })
    }
}

impl<S> tokio_postgres::tls::TlsStream for AuthGuard<TlsSession<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match tls::end_point_hash(self.get_ref().0.get_ref().1) {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead
    for TlsSession<S>
{
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for TlsSession<S>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn spawn_connection<F>(addr: String, connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%addr, %error, "postgres sql connection ended with an error");
        } else {
            tracing::debug!(%addr, "postgres sql connection closed");
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(url: &str) -> ConnectParams {
        ConnectParams::from_url(url).unwrap_or_else(|error| panic!("{url}: {error}"))
    }

    #[test]
    fn a_password_that_splits_the_url_is_refused_without_echoing_it() {
        for url in [
            "postgres://walhook:5432?sslmode=SECRETTAIL@localhost/db",
            "postgres://walhook:5432?SECRETTAIL@localhost/db",
            "postgres://walhook:5432/SECRETTAIL@localhost/db",
            "postgres://walhook:se#SECRETTAIL@localhost/db",
        ] {
            let error = ConnectParams::from_url(url).unwrap_err().to_string();
            assert!(!error.contains("SECRET"), "{url}: {error}");
            assert!(error.contains("percent-encode"), "{url}: {error}");
        }
        // Encoded, the same password works.
        let params = parse("postgres://walhook:5432%3FSECRETTAIL@localhost/db");
        assert_eq!(params.password.as_deref(), Some("5432?SECRETTAIL"));
    }

    #[test]
    fn defaults_fill_what_the_url_leaves_out() {
        let params = parse("postgres://alice@db.example.com");
        assert_eq!(params.host, "db.example.com");
        assert_eq!(params.port, 5432);
        assert_eq!(params.user, "alice");
        assert_eq!(params.password, None);
        assert_eq!(params.dbname, "alice", "database defaults to the user");
        assert_eq!(params.sslmode, SslMode::Prefer);
        assert_eq!(params.sslrootcert, None);
        assert_eq!(params.application_name, "walhook");
        assert_eq!(params.connect_timeout, Duration::from_secs(5));

        let bare = parse("postgresql://");
        assert_eq!(bare.host, "localhost");
        let expected_user = std::env::var("USER")
            .ok()
            .filter(|user| !user.is_empty())
            .unwrap_or_else(|| "postgres".to_owned());
        assert_eq!(bare.user, expected_user);
        assert_eq!(bare.dbname, expected_user);
    }

    #[test]
    fn reads_every_part_and_key() {
        let params = parse(
            "postgres://walhook:pw@10.0.0.5:6543/app?sslmode=verify-full\
             &sslrootcert=/etc/ca.pem&application_name=hooks&connect_timeout=12",
        );
        assert_eq!(params.host, "10.0.0.5");
        assert_eq!(params.port, 6543);
        assert_eq!(params.user, "walhook");
        assert_eq!(params.password.as_deref(), Some("pw"));
        assert_eq!(params.dbname, "app");
        assert_eq!(params.sslmode, SslMode::VerifyFull);
        assert_eq!(params.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(params.application_name, "hooks");
        assert_eq!(params.connect_timeout, Duration::from_secs(12));
    }

    #[test]
    fn percent_decodes_user_password_database_and_values() {
        let params =
            parse("postgres://us%40er:p%40ss%3Aw%2Fo%20rd%25@h/my%20db?application_name=a%26b+c");
        assert_eq!(params.user, "us@er");
        assert_eq!(params.password.as_deref(), Some("p@ss:w/o rd%"));
        assert_eq!(params.dbname, "my db");
        assert_eq!(
            params.application_name, "a&b+c",
            "+ is not a space in a postgres URL"
        );
        let err = ConnectParams::from_url("postgres://u:%ZZ@h/db").unwrap_err();
        assert_eq!(err, ConnectParamsError::Encoding { part: "password" });
    }

    #[test]
    fn ipv6_hosts_lose_their_brackets_and_regain_them_in_messages() {
        let params = parse("postgres://u@[::1]:5433/db");
        assert_eq!(params.host, "::1");
        assert_eq!(params.address(), "[::1]:5433");
    }

    #[test]
    fn every_sslmode_parses_and_others_are_refused() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let params = parse(&format!("postgres://u@h/db?sslmode={text}"));
            assert_eq!(params.sslmode, mode);
            assert_eq!(mode.as_str(), text);
        }
        let err = ConnectParams::from_url("postgres://u@h/db?sslmode=allow").unwrap_err();
        assert!(
            matches!(&err, ConnectParamsError::BadValue { key, value, .. } if key == "sslmode" && value == "allow"),
            "{err:?}"
        );
        assert!(err.to_string().contains("verify-full"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_that_name_them() {
        let err =
            ConnectParams::from_url("postgres://u@h/db?sslmode=require&target_session_attrs=any")
                .unwrap_err();
        assert_eq!(
            err,
            ConnectParamsError::UnknownKey {
                key: "target_session_attrs".into()
            }
        );
        assert!(err.to_string().contains("`target_session_attrs`"), "{err}");
        for bad in [
            "connect_timeout=0",
            "connect_timeout=soon",
            "connect_timeout=-1",
            "sslrootcert=",
        ] {
            assert!(
                ConnectParams::from_url(&format!("postgres://u@h/db?{bad}")).is_err(),
                "{bad} should be refused"
            );
        }
        assert!(matches!(
            ConnectParams::from_url("mysql://u@h/db"),
            Err(ConnectParamsError::Scheme { .. })
        ));
        assert!(matches!(
            ConnectParams::from_url("not a url"),
            Err(ConnectParamsError::NotAUrl { .. })
        ));
        assert!(ConnectParams::from_url("postgres://u@h:99999/db").is_err());
    }

    #[test]
    fn the_password_never_prints() {
        let params = parse("postgres://alice:s3cr%21t@h:5432/db?sslmode=require&connect_timeout=9");
        let debug = format!("{params:?}");
        assert!(!debug.contains("s3cr"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let redacted = params.redacted();
        assert!(!redacted.contains("s3cr"), "{redacted}");
        assert_eq!(
            redacted,
            "postgres://alice@h:5432/db?sslmode=require&connect_timeout=9"
        );
        // What redacted() prints parses back to the same thing, less the password.
        let again = parse(&redacted);
        assert_eq!(
            again,
            ConnectParams {
                password: None,
                ..params
            }
        );
        let err = ConnectParams::from_url("postgres://alice:s3cret@h/db?bogus=1").unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn sqlstates_are_classified() {
        for code in ["08006", "53300", "57P01", "57P03", "55006"] {
            assert!(sqlstate_is_transient(code), "{code}");
        }
        for code in ["28P01", "28000", "3D000", "42704", "42501", "22023"] {
            assert!(!sqlstate_is_transient(code), "{code}");
        }
    }

    #[test]
    fn io_errors_are_classified() {
        use std::io::{Error, ErrorKind};
        assert!(io_error_is_transient(&Error::from(
            ErrorKind::ConnectionRefused
        )));
        assert!(io_error_is_transient(&Error::from(
            ErrorKind::ConnectionReset
        )));
        assert!(io_error_is_transient(&Error::from(
            ErrorKind::UnexpectedEof
        )));
        let tls = Error::new(
            ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(!io_error_is_transient(&tls));
    }
}
