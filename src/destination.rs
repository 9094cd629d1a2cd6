//! Which addresses walhook may send webhooks to: the `delivery.deny_private`
//! policy and its `delivery.allow` exceptions (docs/security.md,
//! "Destinations").
//!
//! Pure: it classifies addresses, parses the allow list and words the
//! refusal; it resolves nothing and connects nowhere. The delivery client
//! applies it to the addresses a host name resolves to, at connect time
//! (`deliver::resolve`), and to literal-IP URLs (`deliver::http`); `walhook
//! check` applies it to the addresses it resolves. Host names are not
//! accepted in the allow list: what a name resolves to is exactly what the
//! policy does not trust.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Deserializer};

/// An IP network written as `10.1.0.0/16`, or one address (`192.168.1.7`,
/// `::1`), which is the network of just that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    network: IpAddr,
    prefix: u8,
}

impl AddressRange {
    /// Parses an address or a CIDR network; the error says what is wrong
    /// and what is accepted.
    pub fn parse(text: &str) -> Result<AddressRange, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!(
                "{text:?} is not an IP address or network such as 10.1.0.0/16, 192.168.1.7 or \
                 fd00::/8 (host names are not accepted: list the addresses they resolve to)"
            )
        })?;
        let max = max_prefix(network);
        let prefix = match prefix {
            None => max,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= max => prefix,
                _ => {
                    return Err(format!(
                        "{text:?} has a prefix length that is not a number from 0 to {max}"
                    ));
                }
            },
        };
        let range = AddressRange { network, prefix };
        let masked = range.masked();
        if masked != network {
            // Most likely a typo for the network, or an address meant alone.
            return Err(format!(
                "{text:?} has bits set past its /{prefix} prefix; write the network \
                 {masked}/{prefix}, or the address alone"
            ));
        }
        Ok(range)
    }

    /// Whether `address` is in the range. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`) is the IPv4 address it maps.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }

    /// The network address: the written one with the bits past the prefix
    /// cleared.
    fn masked(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(network) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(network) & mask))
            }
            IpAddr::V6(network) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(network) & mask))
            }
        }
    }
}

fn max_prefix(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for AddressRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        AddressRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why an address counts as private (or otherwise not a public
/// destination), or `None` for a public one. IPv4 addresses written in IPv6
/// (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, 6to4 `2002:…`, NAT64
/// `64:ff9b::/96`) are judged by the IPv4 address they carry, so the
/// policy cannot be walked around by spelling.
pub fn private_kind(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => private_v6(v6),
    }
}

fn private_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = address.octets();
    Some(match (a, b) {
        _ if address.is_loopback() => "loopback",
        _ if address.is_broadcast() => "broadcast",
        (0, _) => "this-network (0.0.0.0/8)",
        (10, _) | (172, 16..=31) | (192, 168) => "private (RFC 1918)",
        (100, 64..=127) => "shared address space (100.64.0.0/10, carrier-grade NAT)",
        // Where clouds serve instance metadata and credentials.
        (169, 254) => "link-local (169.254.0.0/16, cloud metadata)",
        (224..=239, _) => "multicast",
        (240..=255, _) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn private_v6(address: Ipv6Addr) -> Option<&'static str> {
    if address.is_loopback() {
        return Some("loopback");
    }
    if address.is_unspecified() {
        return Some("unspecified");
    }
    let segments = address.segments();
    let embedded = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    let carried = match segments {
        // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible
        // (::a.b.c.d) forms.
        [0, 0, 0, 0, 0, 0xffff, high, low] | [0, 0, 0, 0, 0, 0, high, low] => {
            Some(embedded(high, low))
        }
        // NAT64, the well-known prefix: the gateway connects to the IPv4
        // address in the last 32 bits.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => Some(embedded(high, low)),
        // 6to4: the relay's IPv4 address follows 2002::/16.
        [0x2002, high, low, ..] => Some(embedded(high, low)),
        _ => None,
    };
    if let Some(v4) = carried {
        return private_v4(v4);
    }
    Some(match segments[0] {
        // NAT64 for local use (RFC 8215): translated to whatever the
        // operator's network has.
        0x64 if segments[1] == 0xff9b && segments[2] == 1 => "local-use NAT64 (64:ff9b:1::/48)",
        first if first & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        first if first & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        // Deprecated site-local, still routed inside some networks.
        first if first & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        first if first & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

/// `delivery.deny_private` and `delivery.allow`, as the delivery client
/// and `walhook check` apply them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    pub deny_private: bool,
    pub allow: Vec<AddressRange>,
}

impl DestinationPolicy {
    /// Whether the policy can refuse anything (deny_private is on).
    pub fn is_active(&self) -> bool {
        self.deny_private
    }

    /// Why walhook must not connect to `address`, or `None` when it may.
    pub fn refuses(&self, address: IpAddr) -> Option<&'static str> {
        if !self.deny_private || self.allow.iter().any(|range| range.contains(address)) {
            return None;
        }
        private_kind(address)
    }

    /// The refusal for `host` when every one of `addresses` is refused (and
    /// there is at least one); `None` when some address may be used.
    pub fn refuse_all(&self, host: &str, addresses: &[IpAddr]) -> Option<DestinationRefused> {
        if addresses.is_empty() || addresses.iter().any(|ip| self.refuses(*ip).is_none()) {
            return None;
        }
        Some(DestinationRefused {
            host: host.to_owned(),
            addresses: addresses.to_vec(),
            kind: addresses.first().and_then(|ip| self.refuses(*ip)),
        })
    }
}

/// A destination the policy refuses: the host, what it resolved to, and
/// what to do. Its text goes into logs and dead letters' `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DestinationRefused {
    host: String,
    addresses: Vec<IpAddr>,
    /// The first address's kind, when all share it worth naming.
    kind: Option<&'static str>,
}

impl fmt::Display for DestinationRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let literal = self.host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
        let list = self
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if literal {
            write!(f, "{} is a private address", self.host)?;
            if let Some(kind) = self.kind {
                write!(f, " ({kind})")?;
            }
        } else {
            write!(
                f,
                "{} resolves only to private addresses ({list})",
                self.host
            )?;
        }
        f.write_str(
            "; delivery.deny_private is on — add the address to delivery.allow \
             or turn deny_private off",
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_classified() {
        for private in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.7",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "64:ff9b:1::a00:1",
        ] {
            assert!(private_kind(ip(private)).is_some(), "{private} is private");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "2001:db8::1",
            "fbff::1",
        ] {
            assert_eq!(private_kind(ip(public)), None, "{public} is public");
        }
    }

    #[test]
    fn ipv4_spelled_as_ipv6_is_judged_by_its_ipv4_address() {
        // Mapped, compatible, NAT64 and 6to4 forms of private addresses.
        for private in [
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
            "2002:7f00:1::",
        ] {
            assert!(private_kind(ip(private)).is_some(), "{private} is private");
        }
        assert_eq!(
            private_kind(ip("::ffff:127.0.0.1")),
            private_kind(ip("127.0.0.1"))
        );
        for public in ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:0808:0808::1"] {
            assert_eq!(private_kind(ip(public)), None, "{public} is public");
        }
    }

    #[test]
    fn the_allow_list_parses_addresses_and_networks() {
        let range = AddressRange::parse("10.1.0.0/16").unwrap();
        assert!(range.contains(ip("10.1.255.7")));
        assert!(!range.contains(ip("10.2.0.1")));
        assert!(range.contains(ip("::ffff:10.1.0.9")), "mapped form");
        assert_eq!(range.to_string(), "10.1.0.0/16");

        let single = AddressRange::parse(" 192.168.1.7 ").unwrap();
        assert_eq!(single.to_string(), "192.168.1.7/32");
        assert!(single.contains(ip("192.168.1.7")));
        assert!(!single.contains(ip("192.168.1.8")));

        let v6 = AddressRange::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(AddressRange::parse("::1").unwrap().contains(ip("::1")));
        assert!(AddressRange::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(AddressRange::parse("::/0").unwrap().contains(ip("::1")));
    }

    #[test]
    fn a_bad_allow_entry_says_what_is_accepted() {
        let name = AddressRange::parse("receiver.internal").unwrap_err();
        assert!(name.contains("host names are not accepted"), "{name}");
        let prefix = AddressRange::parse("10.0.0.0/33").unwrap_err();
        assert!(prefix.contains("0 to 32"), "{prefix}");
        assert!(AddressRange::parse("::/129").is_err());
        assert!(AddressRange::parse("10.0.0.0/x").is_err());
        assert!(AddressRange::parse("").is_err());
        let host_bits = AddressRange::parse("10.1.2.3/16").unwrap_err();
        assert!(host_bits.contains("10.1.0.0/16"), "{host_bits}");
    }

    #[test]
    fn the_policy_refuses_private_addresses_unless_allowed() {
        let off = DestinationPolicy::default();
        assert_eq!(off.refuses(ip("127.0.0.1")), None);

        let on = DestinationPolicy {
            deny_private: true,
            allow: vec![AddressRange::parse("127.0.0.1/32").unwrap()],
        };
        assert_eq!(on.refuses(ip("127.0.0.1")), None, "allowed");
        assert_eq!(on.refuses(ip("::ffff:127.0.0.1")), None, "allowed, mapped");
        assert_eq!(on.refuses(ip("127.0.0.2")), Some("loopback"));
        assert_eq!(on.refuses(ip("8.8.8.8")), None);

        let strict = DestinationPolicy {
            deny_private: true,
            allow: Vec::new(),
        };
        // One usable address is enough; the policy drops the others.
        assert_eq!(
            strict.refuse_all("mixed", &[ip("10.0.0.1"), ip("8.8.8.8")]),
            None
        );
        let refused = strict
            .refuse_all("localhost", &[ip("127.0.0.1"), ip("::1")])
            .unwrap()
            .to_string();
        assert_eq!(
            refused,
            "localhost resolves only to private addresses (127.0.0.1, ::1); \
             delivery.deny_private is on — add the address to delivery.allow or turn \
             deny_private off"
        );
        let literal = strict
            .refuse_all("127.0.0.1", &[ip("127.0.0.1")])
            .unwrap()
            .to_string();
        assert!(
            literal.starts_with("127.0.0.1 is a private address (loopback);"),
            "{literal}"
        );
    }
}
