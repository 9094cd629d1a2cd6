//! Which ways of proving the password walhook goes along with, on both
//! PostgreSQL connections, with libpq's `require_auth` and
//! `channel_binding` meanings
//! (<https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNECT-REQUIRE-AUTH>).
//!
//! By default walhook sends a password in a form a listener could use — in
//! clear text, or as an MD5 hash it could guess from — only to a server
//! whose certificate it verified (`verify-ca`, `verify-full`, or
//! `sslrootcert` given): a server in between would learn it otherwise
//! (docs/security.md, "The network"). SCRAM and trust are always fine:
//! SCRAM proves the password without revealing it. `require_auth` in the
//! URL replaces that default with the methods it lists.
//!
//! The replication connection ([`crate::source`]) applies [`AuthPolicy`]
//! itself; tokio-postgres, which runs the SQL connection, has no such
//! setting, so [`AuthGuard`] reads the server's side of that connection up
//! to AuthenticationOk and fails the read that carries a request the policy
//! refuses — before tokio-postgres could answer it. This module decides
//! and refuses; it speaks no other part of the protocol.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One way a server may ask the client to prove who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// The password in clear text (pg_hba `password`).
    Password,
    /// An MD5 hash of the password and a salt the server chose.
    Md5,
    /// SCRAM-SHA-256 (with or without channel binding).
    ScramSha256,
    /// No proof asked (pg_hba `trust`).
    None,
}

impl AuthMethod {
    const ALL: [AuthMethod; 4] = [
        AuthMethod::Password,
        AuthMethod::Md5,
        AuthMethod::ScramSha256,
        AuthMethod::None,
    ];

    /// The spelling in `require_auth`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::None => "none",
        }
    }

    fn bit(self) -> u8 {
        match self {
            AuthMethod::Password => 1,
            AuthMethod::Md5 => 2,
            AuthMethod::ScramSha256 => 4,
            AuthMethod::None => 8,
        }
    }

    /// Whether the server learns something a listener could use.
    fn exposes_password(self) -> bool {
        matches!(self, AuthMethod::Password | AuthMethod::Md5)
    }
}

/// A set of [`AuthMethod`]s.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuthMethods(u8);

impl AuthMethods {
    pub const ALL: AuthMethods = AuthMethods(15);
    /// What walhook goes along with when it could not verify the server.
    pub const UNVERIFIED_DEFAULT: AuthMethods = AuthMethods(4 | 8);

    pub fn allows(self, method: AuthMethod) -> bool {
        self.0 & method.bit() != 0
    }

    /// Parses libpq's `require_auth`: a comma-separated list of methods the
    /// server may use (`password,md5,scram-sha-256,none`), or of methods it
    /// may not, each with `!` in front. The two forms do not mix.
    pub fn parse(text: &str) -> Result<AuthMethods, String> {
        let mut listed = 0u8;
        let mut negated = None;
        for entry in text.split(',').map(str::trim) {
            let (negation, name) = match entry.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, entry),
            };
            if *negated.get_or_insert(negation) != negation {
                return Err("either methods to allow or, each with `!`, methods to refuse; not both".into());
            }
            let method = AuthMethod::ALL
                .into_iter()
                .find(|method| method.as_str() == name)
                .ok_or_else(|| format!("`{name}` is not password, md5, scram-sha-256 or none"))?;
            listed |= method.bit();
        }
        let allowed = if negated == Some(true) {
            AuthMethods::ALL.0 & !listed
        } else {
            listed
        };
        if allowed == 0 {
            return Err("it allows no method at all".into());
        }
        Ok(AuthMethods(allowed))
    }
}

impl fmt::Debug for AuthMethods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for AuthMethods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = AuthMethod::ALL
            .into_iter()
            .filter(|method| self.allows(*method))
            .map(AuthMethod::as_str)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// `channel_binding` of the URL: whether SCRAM binds the password proof to
/// the TLS session, so that a server in between cannot relay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    Disable,
    /// When TLS is on and the server offers it (the default).
    Prefer,
    /// Refuse to connect without it.
    Require,
}

impl ChannelBinding {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

/// What a connection goes along with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthPolicy {
    /// `require_auth` of the URL; `None`: the default, by verification.
    pub required: Option<AuthMethods>,
    pub channel_binding: ChannelBinding,
}

/// The server asked for a method the policy refuses; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthRefused(pub String);

impl AuthPolicy {
    /// The methods allowed on a connection whose server was (or was not)
    /// verified by its certificate.
    pub fn allowed(&self, server_verified: bool) -> AuthMethods {
        match self.required {
            Some(required) => required,
            None if server_verified => AuthMethods::ALL,
            None => AuthMethods::UNVERIFIED_DEFAULT,
        }
    }

    /// Whether the server at `addr` may use `method`; the refusal says why
    /// and what to change.
    pub fn check(
        &self,
        method: AuthMethod,
        server_verified: bool,
        addr: &str,
    ) -> Result<(), AuthRefused> {
        if self.allowed(server_verified).allows(method) {
            return Ok(());
        }
        let asked = match method {
            AuthMethod::Password => "for the password in clear text",
            AuthMethod::Md5 => "for an MD5 hash of the password",
            AuthMethod::ScramSha256 => "for SCRAM-SHA-256",
            AuthMethod::None => "for no password at all (trust)",
        };
        Err(AuthRefused(match self.required {
            Some(required) => format!(
                "the server at {addr} asks {asked}, which require_auth={required} in the source \
                 URL does not allow; walhook sent nothing"
            ),
            None if method.exposes_password() => format!(
                "the server at {addr} asks {asked}, and walhook has not verified that it is the \
                 right server (no sslmode=verify-full with sslrootcert), so it sent nothing: a \
                 server in between would learn the password. Verify the server (sslmode=verify-full \
                 and sslrootcert in the source URL), or have pg_hba.conf use scram-sha-256 (set \
                 the role's password again with password_encryption = 'scram-sha-256'), or accept \
                 the risk with require_auth={},scram-sha-256 in the URL (docs/security.md)",
                method.as_str()
            ),
            None => format!("the server at {addr} asks {asked}, which walhook does not allow"),
        }))
    }
}

/// The server's side of a connection, as far as authentication goes.
enum Watch {
    /// Nothing written yet: an SSLRequest first means the answer decides.
    FirstWrite,
    /// An SSLRequest went out: `S` (TLS follows, checked inside it) or `N`.
    SslAnswer,
    /// Reading messages up to AuthenticationOk.
    Messages,
    /// Authentication is over (or happens inside TLS): bytes pass unread.
    Done,
}

/// A stream that holds a server to an [`AuthPolicy`] while tokio-postgres
/// authenticates over it: each authentication request the server sends is
/// checked before tokio-postgres sees it, and a refused one fails the read
/// (an [`io::Error`] carrying [`AuthRefused`]). After AuthenticationOk it
/// only passes bytes on.
pub struct AuthGuard<S> {
    inner: S,
    policy: AuthPolicy,
    /// Whether the stream under it is TLS with a verified certificate.
    server_verified: bool,
    addr: String,
    watch: Watch,
    /// The head of the message being read: type, length, auth code.
    head: [u8; 9],
    head_len: usize,
    /// Bytes of the current message's body still to pass unread.
    skip: usize,
    /// An authentication request has come (AuthenticationOk after none
    /// means the server asked for nothing).
    asked: bool,
}

/// The 8 bytes of an SSLRequest.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

impl<S> AuthGuard<S> {
    /// Guards a plain TCP stream, on which tokio-postgres may first ask for
    /// TLS (then the TLS stream is guarded instead, see [`AuthGuard::tls`]).
    pub fn plain(inner: S, policy: AuthPolicy, addr: String) -> Self {
        Self::new(inner, policy, false, addr, Watch::FirstWrite)
    }

    /// Guards a TLS stream; `server_verified` when its certificate was.
    pub fn tls(inner: S, policy: AuthPolicy, server_verified: bool, addr: String) -> Self {
        Self::new(inner, policy, server_verified, addr, Watch::Messages)
    }

    fn new(inner: S, policy: AuthPolicy, server_verified: bool, addr: String, watch: Watch) -> Self {
        AuthGuard {
            inner,
            policy,
            server_verified,
            addr,
            watch,
            head: [0; 9],
            head_len: 0,
            skip: 0,
            asked: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Follows `bytes` from the server; an error when they carry a request
    /// the policy refuses.
    fn inspect(&mut self, mut bytes: &[u8]) -> Result<(), AuthRefused> {
        while !bytes.is_empty() {
            match self.watch {
                Watch::Done => return Ok(()),
                // A server that speaks first, before any write, is not one
                // this guard understands; tokio-postgres will say so.
                Watch::FirstWrite => self.watch = Watch::Messages,
                Watch::SslAnswer => {
                    self.watch = if bytes[0] == b'S' {
                        Watch::Done
                    } else {
                        Watch::Messages
                    };
                    bytes = &bytes[1..];
                }
                Watch::Messages if self.skip > 0 => {
                    let skipped = self.skip.min(bytes.len());
                    self.skip -= skipped;
                    bytes = &bytes[skipped..];
                }
                Watch::Messages => {
                    let wanted = if self.head_len >= 1 && self.head[0] == b'R' { 9 } else { 5 };
                    let taken = (wanted - self.head_len).min(bytes.len());
                    self.head[self.head_len..self.head_len + taken].copy_from_slice(&bytes[..taken]);
                    self.head_len += taken;
                    bytes = &bytes[taken..];
                    if self.head_len == wanted && (wanted == 9 || self.head[0] != b'R') {
                        self.end_of_head()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A message's head is complete: check it, and skip the rest of it.
    fn end_of_head(&mut self) -> Result<(), AuthRefused> {
        let length = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]);
        let body = (length as usize).saturating_sub(4);
        self.head_len = 0;
        if self.head[0] != b'R' {
            self.skip = body;
            return Ok(());
        }
        self.skip = body.saturating_sub(4);
        let code = i32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]);
        let method = match code {
            0 => {
                let asked = self.asked;
                self.watch = Watch::Done;
                if asked {
                    return Ok(());
                }
                AuthMethod::None
            }
            3 => AuthMethod::Password,
            5 => AuthMethod::Md5,
            10 => AuthMethod::ScramSha256,
            // SASL continuation, and methods tokio-postgres refuses itself.
            _ => return Ok(()),
        };
        self.asked = true;
        let checked = self.policy.check(method, self.server_verified, &self.addr);
        if checked.is_err() {
            self.watch = Watch::Done;
        }
        checked
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if matches!(this.watch, Watch::Done) {
                    return Poll::Ready(Ok(()));
                }
                let fresh = buf.filled()[before..].to_vec();
                match this.inspect(&fresh) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(refused) => {
                        // tokio-postgres never sees the request.
                        buf.set_filled(before);
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, refused)))
                    }
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if matches!(self.watch, Watch::FirstWrite) && !data.is_empty() {
            self.watch = if data.starts_with(&SSL_REQUEST) {
                Watch::SslAnswer
            } else {
                Watch::Messages
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if matches!(self.watch, Watch::FirstWrite) {
            // The first write is looked at whole; vectored writes are only
            // ever used after start-up.
            if let Some(first) = bufs.iter().find(|buf| !buf.is_empty()) {
                let first: &[u8] = first;
                self.watch = if first.starts_with(&SSL_REQUEST) {
                    Watch::SslAnswer
                } else {
                    Watch::Messages
                };
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn policy(required: Option<&str>) -> AuthPolicy {
        AuthPolicy {
            required: required.map(|text| AuthMethods::parse(text).unwrap()),
            channel_binding: ChannelBinding::Prefer,
        }
    }

    #[test]
    fn require_auth_lists_or_negates_methods() {
        assert_eq!(AuthMethods::parse("scram-sha-256").unwrap().to_string(), "scram-sha-256");
        assert_eq!(
            AuthMethods::parse("password, md5").unwrap().to_string(),
            "password,md5"
        );
        assert_eq!(
            AuthMethods::parse("!password,!md5").unwrap(),
            AuthMethods::UNVERIFIED_DEFAULT
        );
        assert!(AuthMethods::parse("md5,!password").is_err());
        assert!(AuthMethods::parse("kerberos").unwrap_err().contains("kerberos"));
        assert!(AuthMethods::parse("!password,!md5,!scram-sha-256,!none").is_err());
    }

    #[test]
    fn passwords_in_usable_form_go_only_to_a_verified_server_by_default() {
        let default = policy(None);
        for method in [AuthMethod::Password, AuthMethod::Md5] {
            assert!(default.check(method, true, "db:5432").is_ok());
            let refused = default.check(method, false, "db:5432").unwrap_err().0;
            assert!(refused.contains("db:5432"), "{refused}");
            assert!(refused.contains("verify-full"), "{refused}");
            assert!(refused.contains(&format!("require_auth={}", method.as_str())), "{refused}");
        }
        for method in [AuthMethod::ScramSha256, AuthMethod::None] {
            assert!(default.check(method, false, "db:5432").is_ok());
        }
        // Given explicitly, the list is the rule whatever was verified.
        let scram_only = policy(Some("scram-sha-256"));
        assert!(scram_only.check(AuthMethod::Password, true, "db").is_err());
        assert!(scram_only.check(AuthMethod::None, true, "db").is_err());
        assert!(policy(Some("md5")).check(AuthMethod::Md5, false, "db").is_ok());
    }

    fn auth_request(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut message = vec![b'R'];
        message.extend_from_slice(&(8 + extra.len() as u32).to_be_bytes());
        message.extend_from_slice(&code.to_be_bytes());
        message.extend_from_slice(extra);
        message
    }

    #[test]
    fn the_guard_follows_messages_split_anywhere() {
        // A notice, then an MD5 request, fed one byte at a time.
        let mut stream = vec![b'N', 0, 0, 0, 6, b'x', 0];
        stream.extend(auth_request(5, &[1, 2, 3, 4]));
        let mut guard = AuthGuard::tls((), policy(None), false, "db".into());
        let mut refused = None;
        for byte in &stream {
            if let Err(error) = guard.inspect(std::slice::from_ref(byte)) {
                refused = Some(error);
                break;
            }
        }
        assert!(refused.is_some_and(|error| error.0.contains("MD5")));

        // SCRAM, then its continuation and AuthenticationOk: all fine, and
        // after that nothing is read.
        let mut guard = AuthGuard::tls((), policy(None), false, "db".into());
        let mut stream = auth_request(10, b"SCRAM-SHA-256\0\0");
        stream.extend(auth_request(11, b"r=abc"));
        stream.extend(auth_request(0, b""));
        stream.extend(auth_request(3, b""));
        assert!(guard.inspect(&stream).is_ok());

        // Trust, where require_auth asks for SCRAM: refused.
        let mut guard = AuthGuard::tls((), policy(Some("scram-sha-256")), true, "db".into());
        assert!(guard.inspect(&auth_request(0, b"")).is_err());
    }

    #[test]
    fn after_an_ssl_request_s_hands_over_to_tls_and_n_keeps_reading() {
        let mut accepted = AuthGuard::plain((), policy(None), "db".into());
        accepted.watch = Watch::SslAnswer;
        let mut bytes = vec![b'S'];
        bytes.extend(auth_request(3, b""));
        assert!(accepted.inspect(&bytes).is_ok(), "TLS bytes are not read");

        let mut refused = AuthGuard::plain((), policy(None), "db".into());
        refused.watch = Watch::SslAnswer;
        bytes[0] = b'N';
        assert!(refused.inspect(&bytes).is_err());
    }
}
