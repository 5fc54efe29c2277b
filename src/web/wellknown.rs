//! Where an authorization server's metadata is published: the well-known URLs to try for an
//! issuer, in the order the MCP authorization specification gives. Both the
//! client ([`crate::client::discovery`]) and the external-issuer token source
//! ([`crate::tokens::sources`]) look an issuer up this way.

use url::Url;

use super::routes::{AS_METADATA, OIDC_METADATA};

/// The authorization server metadata URLs for `issuer`, in order. With a path: RFC 8414
/// §3.1 path insertion, OIDC Discovery path insertion, OIDC Discovery path appending;
/// without one: RFC 8414, then OIDC Discovery. A trailing slash on the path is ignored.
pub fn as_metadata_urls(issuer: &Url) -> Vec<Url> {
    let origin = issuer.origin().ascii_serialization();
    let path = issuer.path().trim_end_matches('/');
    let candidates = if path.is_empty() {
        vec![
            format!("{origin}{AS_METADATA}"),
            format!("{origin}{OIDC_METADATA}"),
        ]
    } else {
        vec![
            format!("{origin}{AS_METADATA}{path}"),
            format!("{origin}{OIDC_METADATA}{path}"),
            format!("{origin}{path}{OIDC_METADATA}"),
        ]
    };
    candidates
        .iter()
        .filter_map(|c| Url::parse(c).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_in_order() {
        let urls = |issuer: &str| -> Vec<String> {
            as_metadata_urls(&Url::parse(issuer).unwrap())
                .iter()
                .map(Url::to_string)
                .collect()
        };
        assert_eq!(
            urls("https://a/tenant1"),
            [
                "https://a/.well-known/oauth-authorization-server/tenant1",
                "https://a/.well-known/openid-configuration/tenant1",
                "https://a/tenant1/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            urls("https://a/"),
            [
                "https://a/.well-known/oauth-authorization-server",
                "https://a/.well-known/openid-configuration"
            ]
        );
    }
}
