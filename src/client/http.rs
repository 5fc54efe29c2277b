//! HTTP for the client: one `reqwest` client that never follows redirects by itself, and a
//! `--verbose` trace of every exchange on stderr with secrets redacted (the `Authorization`
//! header, token and code fields in bodies, `code=` in URLs).

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use super::ClientError;

/// Fields whose values are secrets, wherever they appear: JSON bodies, form bodies, query
/// strings. Only string values are redacted, so a JSON-RPC error `code` (a number) stays.
const SECRET_FIELDS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "code",
    "code_verifier",
    "client_secret",
    "client_assertion",
    "assertion",
    "registration_access_token",
    "subject_token",
    "password",
    // RFC 7009 revocation and RFC 7662 introspection send the token as `token`.
    "token",
];

/// Headers whose values are secrets.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

const REDACTED: &str = "[redacted]";

/// A request body.
pub enum Body {
    Empty,
    Json(Value),
    Form(Vec<(String, String)>),
}

/// A response read to the end.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The client's HTTP: no automatic redirects (the authorization redirect is followed by hand,
/// so the trace shows every hop and the code never goes anywhere but our listener).
pub struct Http {
    client: reqwest::Client,
    verbose: bool,
}

impl Http {
    pub fn new(verbose: bool) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!(
                "mcp-oauth-gateway-client/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| ClientError::network("building the HTTP client", e))?;
        Ok(Self { client, verbose })
    }

    /// Send a request; the response comes back with its body unread (for SSE streams).
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.client.request(method.clone(), url.clone());
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let body_text = match &body {
            Body::Empty => None,
            Body::Json(v) => Some(redact_json_text(v)),
            Body::Form(pairs) => Some(redact_form(pairs)),
        };
        req = match body {
            Body::Empty => req,
            Body::Json(v) => req.json(&v),
            Body::Form(pairs) => req.form(&pairs),
        };
        let req = req
            .build()
            .map_err(|e| ClientError::network("building a request", e))?;
        if self.verbose {
            let mut out = format!("> {method} {}\n", redact_url(url.as_str()));
            push_headers(&mut out, "> ", req.headers());
            if let Some(text) = body_text {
                out.push_str(&format!("> {text}\n"));
            }
            eprint!("{out}");
        }
        let what = format!("{method} {}", strip_query(url));
        let res = self
            .client
            .execute(req)
            .await
            .map_err(|e| ClientError::network(&what, e))?;
        if self.verbose {
            let mut out = format!("< {}\n", res.status());
            push_headers(&mut out, "< ", res.headers());
            eprint!("{out}");
        }
        Ok(res)
    }

    /// Send a request and read the whole response.
    pub async fn fetch(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<Reply, ClientError> {
        let res = self.send(method, url, headers, body).await?;
        let status = res.status();
        let headers = res.headers().clone();
        let body = res
            .bytes()
            .await
            .map_err(|e| ClientError::network(&format!("reading {}", strip_query(url)), e))?;
        self.trace_body(&headers, &body);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// GET a JSON document (metadata).
    pub async fn get_json(&self, url: &Url) -> Result<Reply, ClientError> {
        self.fetch(
            Method::GET,
            url,
            &[(ACCEPT.as_str(), "application/json".into())],
            Body::Empty,
        )
        .await
    }

    /// Trace a response body (or a chunk of a stream) when verbose.
    pub fn trace_body(&self, headers: &HeaderMap, body: &[u8]) {
        if self.verbose && !body.is_empty() {
            let ct = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            eprintln!("< {}", redact_body(ct, body));
        }
    }

    /// Trace a line of the client's own (not an HTTP exchange) when verbose.
    pub fn trace(&self, line: &str) {
        if self.verbose {
            eprintln!("* {line}");
        }
    }
}

fn push_headers(out: &mut String, prefix: &str, headers: &HeaderMap) {
    for (name, value) in headers {
        out.push_str(&format!(
            "{prefix}{name}: {}\n",
            redact_header(name.as_str(), value)
        ));
    }
}

/// A header value fit for the trace.
pub fn redact_header(name: &str, value: &HeaderValue) -> String {
    let text = value.to_str().unwrap_or("<binary>");
    let lower = name.to_ascii_lowercase();
    if SECRET_HEADERS.contains(&lower.as_str()) {
        // Keep the scheme ("Bearer", "Basic"): it says what was sent without saying the secret.
        return match text.split_once(' ') {
            Some((scheme, _)) if lower.ends_with("authorization") => format!("{scheme} {REDACTED}"),
            _ => REDACTED.to_string(),
        };
    }
    if lower == "location" || lower == "content-location" {
        return redact_url(text);
    }
    text.to_string()
}

/// A URL with the values of secret query parameters replaced.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return url.to_string();
    };
    if parsed.query().is_none() {
        return url.to_string();
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if SECRET_FIELDS.contains(&k.as_ref()) {
                REDACTED.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.to_string()
}

/// A URL without its query, for error messages.
pub fn strip_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn redact_form(pairs: &[(String, String)]) -> String {
    let shown: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| {
            let v = if SECRET_FIELDS.contains(&k.as_str()) {
                REDACTED
            } else {
                v.as_str()
            };
            (k.as_str(), v)
        })
        .collect();
    serde_urlencoded::to_string(shown).unwrap_or_default()
}

fn redact_json_text(v: &Value) -> String {
    let mut v = v.clone();
    redact_json(&mut v);
    v.to_string()
}

/// Replace secret string fields anywhere in a JSON value.
pub fn redact_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if SECRET_FIELDS.contains(&k.as_str()) && val.is_string() {
                    *val = Value::String(REDACTED.into());
                } else {
                    redact_json(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

/// A body fit for the trace: JSON and forms with secret fields redacted, SSE `data:` lines
/// redacted as JSON, anything else as text.
pub fn redact_body(content_type: &str, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(mut v) = serde_json::from_slice::<Value>(body) {
        redact_json(&mut v);
        return v.to_string();
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&text).unwrap_or_default();
        return redact_form(&pairs);
    }
    if content_type.starts_with("text/event-stream") {
        return text
            .lines()
            .map(|line| match line.strip_prefix("data:") {
                Some(data) => match serde_json::from_str::<Value>(data.trim()) {
                    Ok(mut v) => {
                        redact_json(&mut v);
                        format!("data: {v}")
                    }
                    Err(_) => line.to_string(),
                },
                None => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n< ");
    }
    text.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_lose_codes_but_keep_state() {
        let u = redact_url("http://127.0.0.1:5/callback?code=SECRETCODE&state=abc&iss=x");
        assert!(!u.contains("SECRETCODE"), "{u}");
        assert!(u.contains("state=abc"), "{u}");
    }

    #[test]
    fn json_secrets_are_redacted_numbers_kept() {
        let mut v = json!({"access_token": "AT", "refresh_token": "RT",
            "nested": [{"client_secret": "CS"}], "error": {"code": -32600}});
        redact_json(&mut v);
        let s = v.to_string();
        for secret in ["\"AT\"", "\"RT\"", "\"CS\""] {
            assert!(!s.contains(secret), "{s}");
        }
        assert!(s.contains("-32600"), "{s}");
    }

    #[test]
    fn form_and_headers_are_redacted() {
        let form = redact_form(&[
            ("grant_type".into(), "authorization_code".into()),
            ("code".into(), "THECODE".into()),
            ("code_verifier".into(), "THEVERIFIER".into()),
        ]);
        assert!(
            !form.contains("THECODE") && !form.contains("THEVERIFIER"),
            "{form}"
        );
        assert!(form.contains("grant_type=authorization_code"));
        let h = redact_header("Authorization", &HeaderValue::from_static("Bearer abc.def"));
        assert_eq!(h, "Bearer [redacted]");
        let loc = redact_header(
            "location",
            &HeaderValue::from_static("http://127.0.0.1/cb?code=XYZ&state=s"),
        );
        assert!(!loc.contains("XYZ"), "{loc}");
    }

    #[test]
    fn sse_data_lines_are_redacted() {
        let body = b"event: message\ndata: {\"access_token\":\"AT\"}\n\n";
        let s = redact_body("text/event-stream", body);
        assert!(!s.contains("\"AT\""), "{s}");
    }
}
