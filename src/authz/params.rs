//! Request parameters of the authorization and token endpoints: `application/x-www-form-
//! urlencoded`, where a parameter sent twice is an error (RFC 6749 §3.1, §3.2) and an empty
//! value is the same as an absent one.

use std::collections::HashMap;

use axum::http::{HeaderMap, header};

use super::error::OAuthError;

/// Why a form body or one of its parameters was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A name or value is not valid UTF-8 once decoded.
    #[error("the parameters are not UTF-8")]
    NotUtf8,
    /// A parameter was sent twice.
    #[error("parameter `{0}` is repeated")]
    Repeated(String),
    /// A required parameter is absent (or empty).
    #[error("parameter `{0}` is missing")]
    Missing(String),
}

impl From<ParamError> for OAuthError {
    fn from(e: ParamError) -> Self {
        Self::InvalidRequest(e.to_string())
    }
}

/// Parameters by name.
#[derive(Debug, Default, Clone)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parse `input`; `Err` names a repeated parameter or one that is not UTF-8
    /// (Appendix B of RFC 6749: values are returned exactly, so none may be mangled).
    pub fn parse(input: &[u8]) -> Result<Self, ParamError> {
        let mut map = HashMap::new();
        let text = std::str::from_utf8(input).map_err(|_| ParamError::NotUtf8)?;
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k)?;
            let v = decode(v)?;
            if v.is_empty() {
                continue;
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(ParamError::Repeated(k));
            }
        }
        Ok(Self(map))
    }

    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A parameter that must be there.
    pub fn require(&self, name: &str) -> Result<&str, ParamError> {
        self.get(name)
            .ok_or_else(|| ParamError::Missing(name.to_string()))
    }
}

/// Decode one form-urlencoded component strictly.
fn decode(component: &str) -> Result<String, ParamError> {
    let plus_as_space = component.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ParamError::NotUtf8)
}

/// Split a space-delimited scope string, refusing duplicates silently (set semantics).
pub fn split_scopes(scope: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

/// Whether the request is a form post.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

/// Parse a form body of an endpoint that authenticates clients.
pub fn form_params(headers: &HeaderMap, body: &[u8]) -> Result<Params, OAuthError> {
    if !is_form(headers) {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded".into(),
        ));
    }
    Ok(Params::parse(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_refused() {
        assert_eq!(
            Params::parse(b"a=1&a=2").unwrap_err(),
            ParamError::Repeated("a".into())
        );
        let p = Params::parse(b"a=1&b=&c=x%20y").unwrap();
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None);
        assert_eq!(p.get("c"), Some("x y"));
        assert!(p.require("z").is_err());
        assert!(Params::parse(b"state=%ff%fe").is_err(), "no lossy decoding");
        assert!(Params::parse(b"a=\xff").is_err());
        assert_eq!(Params::parse(b"a=x+y%2B").unwrap().get("a"), Some("x y+"));
    }

    #[test]
    fn scopes_split_on_spaces() {
        assert_eq!(
            split_scopes(" mcp:read  mcp:write mcp:read"),
            ["mcp:read", "mcp:write"]
        );
    }
}
