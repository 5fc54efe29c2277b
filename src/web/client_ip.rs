//! Where a request came from.
//!
//! The answer starts from the TCP peer. A loopback peer is the gateway's own proxy, which
//! appends the address it saw to `X-Forwarded-For`: the last entry is believed. Then, while
//! the address in hand is one of the operator's [`TrustedProxies`] (a load balancer in front
//! of the gateway) and there is an entry further left, the walk steps left. The client is the
//! first address, from the right, that is not a trusted proxy. An entry that does not parse
//! stops the walk at the last good address, so garbage is never believed, and neither is
//! anything a client wrote to the left of the first untrusted hop. A peer that is neither
//! loopback nor trusted is the answer itself: its `X-Forwarded-For` is ignored.
//!
//! With no trusted proxies (the default) that is the loopback rule alone.
//!
//! `Forwarded` (RFC 7239) is not read: the gateway's own proxy writes `X-Forwarded-For`,
//! and load balancers that write `Forwarded` also write `X-Forwarded-For`.
//!
//! [`resolve`] computes the address once per request and leaves it in the request as a
//! [`ClientIp`] extension; the [`ClientIp`] extractor reads it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// A `trusted_proxies` entry that is neither an address nor a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither an IP address nor a network (CIDR) such as 10.0.0.0/8 or fd00::/8")]
pub struct NotAnAddress(pub String);

/// The proxies whose `X-Forwarded-For` entries are believed: networks (`10.0.0.0/8`,
/// `fd00::/8`) and single addresses, IPv4 and IPv6. Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parse the configured entries; the error names the first bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, NotAnAddress> {
        entries
            .iter()
            .map(|e| {
                let e = e.as_ref().trim();
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| NotAnAddress(e.to_string()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of them. An IPv4-mapped IPv6 address matches as its IPv4 self.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// One `X-Forwarded-For` entry: an address, or an address and port as some load balancers
/// write it (`192.0.2.1:5000`, `[2001:db8::1]:5000`). Anything else is `None`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
}

/// The `X-Forwarded-For` entries, left to right, across every header line (a line that is
/// not text is one entry that does not parse).
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| match v.to_str() {
            Ok(v) => v.split(',').map(parse_entry).collect(),
            Err(_) => vec![None],
        })
        .collect()
}

/// The address a request came from (see the module docs for whom `X-Forwarded-For` is
/// believed).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.ip();
    if !peer.is_loopback() && !trusted.contains(peer) {
        return peer;
    }
    let mut hops = forwarded_for(headers).into_iter().rev();
    let mut current = peer;
    if peer.is_loopback() {
        // Our own proxy: its entry is the address it saw.
        match hops.next().flatten() {
            Some(ip) => current = ip,
            None => return peer,
        }
    }
    while trusted.contains(current) {
        match hops.next().flatten() {
            Some(ip) => current = ip,
            None => break,
        }
    }
    current
}

/// The client's address, computed once per request by [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Middleware: put the request's [`ClientIp`] in its extensions, by [`client_ip`] with
/// these trusted proxies. A request without a known peer gets none.
pub async fn resolve(
    State(trusted): State<Arc<TrustedProxies>>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        let ip = client_ip(peer, req.headers(), &trusted);
        req.extensions_mut().insert(ClientIp(ip));
    }
    next.run(req).await
}

impl ClientIp {
    /// The address of the request: what [`resolve`] left, or, on a router without it, the
    /// peer by the loopback rule alone; `None` when the peer is unknown.
    pub fn of(parts: &Parts) -> Option<IpAddr> {
        if let Some(ClientIp(ip)) = parts.extensions.get::<ClientIp>() {
            return Some(*ip);
        }
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| client_ip(*peer, &parts.headers, &TrustedProxies::default()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Self::of(parts).map(Self).ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "the connection's peer address is unknown",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(entries).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(ip(s), 5000)
    }

    const LOCAL: &str = "127.0.0.1";

    #[test]
    fn forwarded_for_is_believed_from_loopback_only_by_default() {
        let none = TrustedProxies::default();
        let h = xff("203.0.113.9, 198.51.100.7");
        assert_eq!(client_ip(peer(LOCAL), &h, &none), ip("198.51.100.7"));
        assert_eq!(client_ip(peer("192.0.2.1"), &h, &none), ip("192.0.2.1"));
        assert_eq!(client_ip(peer(LOCAL), &HeaderMap::new(), &none), ip(LOCAL));
        assert_eq!(client_ip(peer(LOCAL), &xff("junk"), &none), ip(LOCAL));
        assert_eq!(client_ip(peer("::1"), &h, &none), ip("198.51.100.7"));
    }

    #[test]
    fn a_chain_through_trusted_proxies_names_the_client() {
        let lb = trusted(&["10.0.0.0/8"]);
        // client -> load balancer 10.0.0.5 -> our proxy (loopback)
        let h = xff("203.0.113.7, 10.0.0.5");
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("203.0.113.7"));
        // client -> CDN 192.168.1.10 -> load balancer 10.0.0.5 -> our proxy
        let two = trusted(&["10.0.0.0/8", "192.168.1.10"]);
        let h = xff("203.0.113.7, 192.168.1.10, 10.0.0.5");
        assert_eq!(client_ip(peer(LOCAL), &h, &two), ip("203.0.113.7"));
        assert_eq!(
            client_ip(peer(LOCAL), &h, &lb),
            ip("192.168.1.10"),
            "an untrusted CDN is the client"
        );
        // A trusted peer reaching a listener directly.
        let h = xff("203.0.113.7");
        assert_eq!(client_ip(peer("10.1.2.3"), &h, &lb), ip("203.0.113.7"));
        // Only trusted proxies all the way: the left-most is the best there is.
        let h = xff("10.0.0.9, 10.0.0.5");
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("10.0.0.9"));
        // A trusted load balancer that sent no header.
        assert_eq!(
            client_ip(peer("10.1.2.3"), &HeaderMap::new(), &lb),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn a_spoofed_entry_is_never_reached() {
        let lb = trusted(&["10.0.0.0/8"]);
        // The client wrote "1.2.3.4"; the load balancer appended the address it saw.
        let h = xff("1.2.3.4, 203.0.113.7, 10.0.0.5");
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("203.0.113.7"));
        // Without the load balancer, straight to our proxy: the proxy's entry wins.
        let h = xff("1.2.3.4, 203.0.113.7");
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("203.0.113.7"));
        // Claiming to be a trusted proxy does not help from outside.
        let h = xff("1.2.3.4, 10.0.0.5, 203.0.113.7");
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("203.0.113.7"));
        // Entries split over several header lines are one list.
        let mut h = xff("1.2.3.4");
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.5"));
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("203.0.113.7"));
    }

    #[test]
    fn an_untrusted_hop_stops_the_walk() {
        let lb = trusted(&["10.0.0.0/8"]);
        let h = xff("203.0.113.7, 198.51.100.1, 10.0.0.5");
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("198.51.100.1"));
        // A peer neither loopback nor trusted: its header is ignored.
        let h = xff("203.0.113.7, 10.0.0.5");
        assert_eq!(client_ip(peer("192.0.2.1"), &h, &lb), ip("192.0.2.1"));
    }

    #[test]
    fn ipv6_proxies_and_clients() {
        let lb = trusted(&["fd00::/8", "::1/128"]);
        let h = xff("2001:db8::7, fd00::5");
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("2001:db8::7"));
        assert_eq!(
            client_ip(peer("fd12::1"), &xff("2001:db8::7"), &lb),
            ip("2001:db8::7")
        );
        // Our proxy on ::1 appended ::1 (a local load balancer): trusted, step on.
        let h = xff("2001:db8::7, ::1");
        assert_eq!(client_ip(peer("::1"), &h, &lb), ip("2001:db8::7"));
        // Mixed families, ports and an IPv4-mapped trusted proxy.
        let v4 = trusted(&["10.0.0.0/8"]);
        let h = xff("[2001:db8::7]:4711, ::ffff:10.0.0.5");
        assert_eq!(client_ip(peer(LOCAL), &h, &v4), ip("2001:db8::7"));
        let h = xff("203.0.113.7:4711, 10.0.0.5:80");
        assert_eq!(client_ip(peer(LOCAL), &h, &v4), ip("203.0.113.7"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_address() {
        let lb = trusted(&["10.0.0.0/8"]);
        let h = xff("203.0.113.7, unknown, 10.0.0.5");
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("10.0.0.5"));
        let h = xff("203.0.113.7, , 10.0.0.5");
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("10.0.0.5"));
        // Our own proxy's entry is garbage: the peer.
        let h = xff("203.0.113.7, not-an-ip");
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip(LOCAL));
        // A header line that is not text.
        let mut h = xff("203.0.113.7");
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.5"));
        assert_eq!(client_ip(peer(LOCAL), &h, &lb), ip("10.0.0.5"));
    }

    #[test]
    fn entries_parse_as_networks_or_addresses() {
        let t = trusted(&["10.0.0.0/8", "192.168.1.10", "::1/128", " fd00::/8 "]);
        assert!(t.contains(ip("10.200.0.1")));
        assert!(t.contains(ip("192.168.1.10")));
        assert!(!t.contains(ip("192.168.1.11")));
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("fd00::9")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(TrustedProxies::default().is_empty());
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0.0/8/8", "*"] {
            let err = TrustedProxies::parse(&[bad]).unwrap_err();
            assert_eq!(err, NotAnAddress(bad.to_string()));
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
