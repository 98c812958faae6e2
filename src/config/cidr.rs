//! `trusted_proxies`: IP networks.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// An IP network such as `10.0.0.0/8` or `::1/128`; a bare address is one host (`/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` is inside the network. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as a dual-stack
    /// socket reports IPv4 peers) counts as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_v4(self.prefix_len);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_v6(self.prefix_len);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask_v4(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn mask_v6(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix_len) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IP address"))?;
        let bits: u8 = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_len {
            None => bits,
            Some(p) => {
                let valid = !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
                match p.parse::<u8>() {
                    Ok(n) if valid && n <= bits => n,
                    _ => return Err(format!("prefix length {p:?} must be 0 to {bits}")),
                }
            }
        };
        // `::ffff:10.0.0.0/104` is written `10.0.0.0/8`, the form peers are compared in.
        let (network, prefix_len) = match address {
            IpAddr::V6(v6) if prefix_len >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix_len - 96),
                None => (address, prefix_len),
            },
            _ => (address, prefix_len),
        };
        let host_bits_set = match network {
            IpAddr::V4(v4) => u32::from(v4) & !mask_v4(prefix_len) != 0,
            IpAddr::V6(v6) => u128::from(v6) & !mask_v6(prefix_len) != 0,
        };
        if host_bits_set {
            // `10.0.0.1/8` is refused rather than read as `10.0.0.0/8`: it is as likely a typo for `/32`, and
            // guessing wrong would trust a whole network.
            return Err(format!(
                "{text:?} has bits set past its prefix length; write the network address, or /{bits} for \
                 one host"
            ));
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

pub(super) fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            entry.parse().map_err(|why| {
                serde::de::Error::custom(format!("trusted_proxies[{i}] {entry:?}: {why}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::refused;

    #[test]
    fn trusted_proxies_are_networks() {
        let c = Config::from_toml(
            "trusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7/32\", \"::1/128\", \"172.16.0.1\", \
             \"fd00::/8\", \"::ffff:100.64.0.0/106\"]",
        )
        .unwrap();
        let trusted = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            c.trusted_proxies.iter().any(|n| n.contains(ip))
        };
        for ip in [
            "10.0.0.1",
            "10.255.255.255",
            "192.168.1.7",
            "::1",
            "172.16.0.1",
            "fd12::1",
            "::ffff:10.1.2.3",
            "100.64.0.1",
        ] {
            assert!(trusted(ip), "{ip}");
        }
        for ip in [
            "11.0.0.1",
            "192.168.1.8",
            "::2",
            "172.16.0.2",
            "fe80::1",
            "::ffff:11.0.0.1",
            "100.128.0.1",
        ] {
            assert!(!trusted(ip), "{ip}");
        }
        assert_eq!(c.trusted_proxies[3].to_string(), "172.16.0.1/32");
        assert_eq!(c.trusted_proxies[5].to_string(), "100.64.0.0/10");
        let everyone: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(everyone.contains("1.2.3.4".parse().unwrap()));
        assert!(!everyone.contains("::1".parse().unwrap()));

        for (entry, why) in [
            ("10.0.0.0/33", "prefix length"),
            ("::/129", "prefix length"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("10.0.0.0/0008", "prefix length"),
            ("10.0.0.1/8", "bits set"),
            ("example.com", "not an IP address"),
            ("10.0.0.0/8/8", "prefix length"),
            ("", "not an IP address"),
            ("10.0.0.0 /8", "not an IP address"),
        ] {
            refused(
                &format!("trusted_proxies = [\"192.168.0.0/16\", {entry:?}]"),
                "trusted_proxies[1]",
                &[why, entry],
            );
        }
    }
}
