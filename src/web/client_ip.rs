//! Where a request came from. The gateway's own proxy on loopback appends the client's
//! address to `X-Forwarded-For`, so its last entry is trusted from a loopback peer only;
//! from anyone else the peer address is the answer.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// The address a request came from (see the module docs for whom `X-Forwarded-For` is
/// believed).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if peer.ip().is_loopback()
        && let Some(last) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return last;
    }
    peer.ip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn forwarded_for_is_believed_from_loopback_only() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.7"),
        );
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert_eq!(client_ip(local, &h).to_string(), "198.51.100.7");
        assert_eq!(client_ip(remote, &h).to_string(), "192.0.2.1");
        assert_eq!(client_ip(local, &HeaderMap::new()).to_string(), "127.0.0.1");
    }
}
