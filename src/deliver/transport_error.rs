//! The one sentence a failed request becomes (no HTTP answer: refused,
//! timed out, TLS failed, refused by the destination policy), for the logs
//! and the dead letters' `last_error`.
//!
//! The common certificate failures are said in words with the receiver's
//! host and the setting that fixes them, instead of rustls' variant names
//! (`Other(OtherError(CaUsedAsEndEntity))`). It never includes the URL
//! (its path or query may hold a token), only the host. It judges nothing:
//! every transport failure is retried the same way (`policy`).

use std::error::Error as StdError;

use rustls::{AlertDescription, CertificateError};

use crate::destination::DestinationRefused;

/// What the request failed on, for a receiver at `host`; `client_certificate`
/// says whether walhook had one to present.
pub fn describe(error: &reqwest::Error, host: &str, client_certificate: bool) -> String {
    if let Some(refused) = find::<DestinationRefused>(error) {
        return format!("could not connect: {refused}");
    }
    if let Some(tls) = find::<rustls::Error>(error) {
        return describe_tls(tls, host, client_certificate);
    }
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "response broke off"
    } else {
        "request failed"
    };
    // The source chain says why (refused, reset) without the URL's secrets,
    // which reqwest's own Display would include.
    let mut cause = String::new();
    let mut source = StdError::source(error);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}

/// The first error of type `T` in `error`'s source chain. An `io::Error`
/// hides the error it wraps from `source()` (it returns the wrapped
/// error's source), so it is looked into as well: that is where rustls'
/// error travels through tokio-rustls and hyper.
fn find<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current: Option<&'a (dyn StdError + 'static)> = Some(error);
    while let Some(inner) = current {
        if let Some(found) = inner.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(wrapped) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            let wrapped: &(dyn StdError + 'static) = wrapped;
            if let Some(found) = find::<T>(wrapped) {
                return Some(found);
            }
        }
        current = inner.source();
    }
    None
}

const SET_CA_FILE: &str = "set ca_file (for the subscription or under [delivery]) to the PEM file \
                           of the CA that signed it";
const SET_CLIENT_CERT: &str = "set client_cert and client_key (for the subscription or under \
                               [delivery]) to a certificate the receiver trusts and its key";

fn describe_tls(error: &rustls::Error, host: &str, client_certificate: bool) -> String {
    use rustls::Error as Tls;
    let certificate = match error {
        Tls::InvalidCertificate(certificate) => certificate,
        Tls::AlertReceived(alert) => return describe_alert(*alert, host, client_certificate),
        other => return format!("TLS with {host} failed: {other}"),
    };
    match certificate {
        CertificateError::UnknownIssuer => format!(
            "the certificate of {host} is not signed by a CA walhook trusts (unknown issuer); \
             {SET_CA_FILE}"
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
            "the certificate of {host} has expired; the receiver must renew it (or this \
             machine's clock is wrong)"
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
            "the certificate of {host} is not valid yet; check this machine's clock and the \
             certificate's start date"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the certificate of {host} is not issued for the name {host}; use a name the \
                 certificate lists in url, or have the receiver's certificate list {host}"
            )
        }
        CertificateError::Revoked => format!("the certificate of {host} has been revoked"),
        // webpki's own errors travel as `Other`; its type is not ours to
        // name, its variant's name is what tells.
        CertificateError::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            format!(
                "{host} presents a CA certificate as its own (CA used as end entity); the \
                 receiver must serve a server certificate signed by that CA, not the CA itself"
            )
        }
        other => format!("the certificate of {host} is refused ({other:?}); {SET_CA_FILE}"),
    }
}

fn describe_alert(alert: AlertDescription, host: &str, client_certificate: bool) -> String {
    match alert {
        // TLS 1.3 says so; TLS 1.2 servers say handshake_failure or
        // bad_certificate when no certificate came.
        AlertDescription::CertificateRequired => {
            format!("{host} requires a client certificate; {SET_CLIENT_CERT}")
        }
        AlertDescription::BadCertificate
        | AlertDescription::UnknownCA
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::CertificateExpired
        | AlertDescription::CertificateRevoked
        | AlertDescription::HandshakeFailure
            if client_certificate =>
        {
            format!(
                "{host} refused walhook's client certificate ({alert:?}); check that \
                 client_cert is signed by a CA the receiver trusts, is not expired, and that \
                 client_key belongs to it"
            )
        }
        AlertDescription::BadCertificate | AlertDescription::HandshakeFailure => format!(
            "{host} refused the TLS handshake ({alert:?}), probably for want of a client \
             certificate; {SET_CLIENT_CERT}"
        ),
        other => format!("TLS with {host} failed: the receiver sent the alert {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_failures_name_the_host_and_the_fix() {
        let unknown = describe_tls(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "hooks.internal",
            false,
        );
        assert!(unknown.contains("hooks.internal"), "{unknown}");
        assert!(unknown.contains("set ca_file"), "{unknown}");
        let expired = describe_tls(
            &rustls::Error::InvalidCertificate(CertificateError::Expired),
            "h",
            false,
        );
        assert!(expired.contains("expired"), "{expired}");
        let name = describe_tls(
            &rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            "h",
            false,
        );
        assert!(name.contains("not issued for the name h"), "{name}");
        let required = describe_tls(
            &rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            "h",
            false,
        );
        assert!(required.contains("requires a client certificate"), "{required}");
        let refused = describe_tls(
            &rustls::Error::AlertReceived(AlertDescription::UnknownCA),
            "h",
            true,
        );
        assert!(refused.contains("refused walhook's client certificate"), "{refused}");
    }

    #[test]
    fn a_rustls_error_is_found_inside_an_io_error() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let found = find::<rustls::Error>(&io);
        assert!(matches!(
            found,
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ));
    }
}
