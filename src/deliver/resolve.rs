//! The delivery client's resolver when `delivery.deny_private` is on: it
//! resolves a receiver's host name and hands the HTTP client only the
//! addresses the [`DestinationPolicy`] permits, or fails the connection with
//! the policy's reason when none is left.
//!
//! Checking here, on the addresses the connection is about to use, rather
//! than once at start-up, is what makes the policy hold when a name's
//! addresses change (DNS rebinding): every new connection resolves and is
//! checked again. It does not see literal-IP URLs (the HTTP client does not
//! resolve them; `http::Endpoint` checks those) nor where a proxy sends a
//! request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::destination::DestinationPolicy;

/// Resolves with the system resolver (as reqwest's default does) and drops
/// the addresses the policy refuses.
#[derive(Debug)]
pub struct PolicyResolver {
    policy: Arc<DestinationPolicy>,
}

impl PolicyResolver {
    pub fn new(policy: DestinationPolicy) -> PolicyResolver {
        PolicyResolver {
            policy: Arc::new(policy),
        }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the client puts the URL's port in.
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .collect();
            let addresses: Vec<IpAddr> = resolved.iter().map(SocketAddr::ip).collect();
            if let Some(refused) = policy.refuse_all(&host, &addresses) {
                return Err(refused.into());
            }
            let permitted: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| {
                    let refused = policy.refuses(address.ip());
                    if let Some(kind) = refused {
                        tracing::debug!(%host, address = %address.ip(), kind, "address skipped: delivery.deny_private");
                    }
                    refused.is_none()
                })
                .collect();
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}
