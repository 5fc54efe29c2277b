//! The HTML kit: the page templates (compiled once), the headers every page carries, and
//! [`PageError`], an error page that renders itself.

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, context};

/// Every page template, compiled on first use.
static TEMPLATES: LazyLock<Result<Environment<'static>, minijinja::Error>> = LazyLock::new(compile);

fn compile() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.add_template("consent.html", include_str!("templates/consent.html"))?;
    env.add_template("error.html", include_str!("templates/error.html"))?;
    env.add_template("login.html", include_str!("templates/login.html"))?;
    env.add_template("consents.html", include_str!("templates/consents.html"))?;
    env.add_template("admin.html", include_str!("templates/admin.html"))?;
    env.add_template(
        "admin_confirm.html",
        include_str!("templates/admin_confirm.html"),
    )?;
    Ok(env)
}

/// Compile the templates now, so a broken one stops the start instead of a page.
pub fn check() -> Result<(), minijinja::Error> {
    templates().map(|_| ())
}

fn templates() -> Result<&'static Environment<'static>, minijinja::Error> {
    TEMPLATES.as_ref().map_err(|e| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("the page templates do not compile: {e}"),
        )
    })
}

/// Render the template `name` with `ctx` (values are HTML-escaped).
pub fn render(name: &str, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
    let env = templates()?;
    env.get_template(name)?.render(ctx)
}

/// Headers for our HTML pages: never cached, never framed (clickjacking), no referrer.
pub fn page_headers() -> [(header::HeaderName, HeaderValue); 4] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ),
        (
            header::REFERRER_POLICY,
            // Same-origin only: a form post keeps its Origin, the client gets no referrer.
            HeaderValue::from_static("same-origin"),
        ),
    ]
}

/// An error shown to a person in a browser: a status, an OAuth-style error code and a
/// sentence, rendered with the request id so the operator can find it in the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short code (`access_denied`, `invalid_request`, ...).
    pub error: &'static str,
    /// What went wrong, for a person.
    pub description: Cow<'static, str>,
}

impl PageError {
    /// An error page.
    pub fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }

    /// The page for a storage failure: not the user's fault, try again.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "try again shortly",
        )
    }

    /// The refusal of a form post that did not come from our own pages.
    pub fn cross_site() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "cross-site form submission refused",
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let request_id = super::request_id::current_request_id();
        let (error, description) = (self.error, self.description.as_ref());
        let html = render("error.html", context! { error, description, request_id })
            .unwrap_or_else(|_| format!("{error}: {description}"));
        (self.status, page_headers(), Html(html)).into_response()
    }
}

/// The refusal for a form post that did not come from our own pages (see
/// [`super::origin::same_origin_post`]), if it did not.
pub fn cross_site_refusal(public_origin: &str, headers: &HeaderMap) -> Option<Response> {
    (!super::origin::same_origin_post(public_origin, headers))
        .then(|| PageError::cross_site().into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compile_and_escape() {
        check().unwrap();
        let html = render(
            "consent.html",
            context! { client_name => "<script>", scopes => Vec::<String>::new() },
        )
        .unwrap();
        assert!(html.contains("&lt;script&gt;"), "names are escaped");
    }

    #[tokio::test]
    async fn an_error_page_names_the_request() {
        let res = super::super::request_id::with_request_id(Some("rid-4".into()), async {
            PageError::new(StatusCode::BAD_REQUEST, "invalid_request", "no <b>").into_response()
        })
        .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()[header::X_FRAME_OPTIONS], "DENY");
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("rid-4") && body.contains("no &lt;b&gt;"));
    }
}
