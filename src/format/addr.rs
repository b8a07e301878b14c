//! The address rules every format shares: an endpoint must be an IP and a port that an
//! EndpointSlice can hold, never a name a dialer might resolve.

use crate::format::SkipReason;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Parses `ipv4:port` or `[ipv6]:port` strictly: the projection needs an IP it can put in an
/// EndpointSlice, not something a dialer might resolve.
pub fn parse_addr(addr: &str) -> Result<SocketAddr, SkipReason> {
    if addr.is_empty() {
        return Err(SkipReason::MissingAddr);
    }
    let (ip, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(SkipReason::InvalidAddr)?;
        let ip: Ipv6Addr = host.parse().map_err(|_| SkipReason::InvalidAddr)?;
        let port = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => return Err(SkipReason::MissingPort),
            None => return Err(SkipReason::InvalidAddr),
        };
        (IpAddr::V6(ip), port)
    } else {
        match addr.rsplit_once(':') {
            // Only an IP or a name lacks just the port; anything else is plain garbage.
            None => {
                return Err(match parse_host(addr) {
                    Ok(_) | Err(SkipReason::Hostname) => SkipReason::MissingPort,
                    Err(other) => other,
                });
            }
            // An unbracketed IPv6 address: whether it ends in a port is ambiguous.
            Some((host, _)) if host.contains(':') => {
                return Err(if addr.parse::<Ipv6Addr>().is_ok() {
                    SkipReason::MissingPort
                } else {
                    SkipReason::InvalidAddr
                });
            }
            Some((host, port)) => (parse_host(host)?, port),
        }
    };
    let port = parse_port(port)?;
    if !usable_in_endpoint_slice(ip.to_canonical()) {
        return Err(SkipReason::UnusableIp);
    }
    Ok(SocketAddr::new(ip, port))
}

/// An unbracketed host: an IPv4 address, or a DNS name (reported, not resolved).
fn parse_host(host: &str) -> Result<IpAddr, SkipReason> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(IpAddr::V4(ip));
    }
    let name_chars = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if name_chars && host.bytes().any(|b| b.is_ascii_alphabetic()) {
        Err(SkipReason::Hostname)
    } else {
        Err(SkipReason::InvalidAddr)
    }
}

fn parse_port(port: &str) -> Result<u16, SkipReason> {
    if port.is_empty() {
        return Err(SkipReason::MissingPort);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SkipReason::InvalidPort);
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(SkipReason::InvalidPort),
        Ok(port) => Ok(port),
    }
}

/// Mirrors the apiserver's ValidateEndpointIP, which refuses these ranges in EndpointSlices.
fn usable_in_endpoint_slice(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_link_local()
                || (a == 224 && b == 0 && c == 0))
        }
        IpAddr::V6(ip) => {
            let [a, b, ..] = ip.octets();
            let link_local_unicast = a == 0xfe && b & 0xc0 == 0x80;
            let link_local_multicast = a == 0xff && b & 0x0f == 0x02;
            !(ip.is_unspecified() || ip.is_loopback() || link_local_unicast || link_local_multicast)
        }
    }
}
