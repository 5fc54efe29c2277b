//! Prometheus metrics (OpenMetrics text) for operators: traffic per backend, proxy latency,
//! token validations by outcome, issuance by grant, replays, registrations, upstream
//! errors. Labels are fixed vocabularies (backend names, outcomes, grant types, status
//! codes): no label can carry a token or anything a client chose.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    backend: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabel {
    grant: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~13 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// All the gateway's metrics, in their own registry (no global recorder: tests run many
/// gateways in one process).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    proxy_latency: Family<BackendLabel, Histogram, fn() -> Histogram>,
    validations: Family<OutcomeLabel, Counter>,
    validation_seconds: Histogram,
    issued: Family<GrantLabel, Counter>,
    replays: Family<OutcomeLabel, Counter>,
    registrations: Counter,
    upstream_errors: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mcp_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let proxy_latency =
            Family::<BackendLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let validations = Family::<OutcomeLabel, Counter>::default();
        let validation_seconds = Histogram::new(exponential_buckets(0.000_001, 2.0, 20));
        let issued = Family::<GrantLabel, Counter>::default();
        let replays = Family::<OutcomeLabel, Counter>::default();
        let registrations = Counter::default();
        let upstream_errors = Counter::default();
        registry.register(
            "proxy_requests",
            "Requests through the public proxy, by backend and status",
            requests.clone(),
        );
        registry.register(
            "proxy_latency_seconds",
            "Time to the backend's response head, by backend",
            proxy_latency.clone(),
        );
        registry.register(
            "token_validations",
            "Bearer token checks on the MCP endpoint, by outcome",
            validations.clone(),
        );
        registry.register(
            "token_validation_seconds",
            "Time to validate a bearer token",
            validation_seconds.clone(),
        );
        registry.register(
            "tokens_issued",
            "Access tokens issued, by grant type",
            issued.clone(),
        );
        registry.register(
            "replays_detected",
            "Reused codes and refresh tokens (their grants are revoked)",
            replays.clone(),
        );
        registry.register(
            "client_registrations",
            "Clients registered dynamically",
            registrations.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream MCP server unreachable or timed out",
            upstream_errors.clone(),
        );
        Self {
            registry,
            requests,
            proxy_latency,
            validations,
            validation_seconds,
            issued,
            replays,
            registrations,
            upstream_errors,
        }
    }

    /// A proxied request finished its response head.
    pub fn proxied(&self, backend: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { backend, status })
            .inc();
        self.proxy_latency
            .get_or_create(&BackendLabel { backend })
            .observe(seconds);
    }

    /// A bearer token was checked; `outcome` is `ok` or the refusal's kind.
    pub fn validated(&self, outcome: &'static str, seconds: f64) {
        self.validations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.validation_seconds.observe(seconds);
    }

    /// A request was refused for lack of scope.
    pub fn insufficient_scope(&self) {
        self.validations
            .get_or_create(&OutcomeLabel {
                outcome: "insufficient_scope",
            })
            .inc();
    }

    /// An access token was issued.
    pub fn issued(&self, grant: &'static str) {
        self.issued.get_or_create(&GrantLabel { grant }).inc();
    }

    /// A code (`code`) or refresh token (`refresh_token`) was replayed.
    pub fn replay(&self, what: &'static str) {
        self.replays
            .get_or_create(&OutcomeLabel { outcome: what })
            .inc();
    }

    /// A client registered.
    pub fn registered(&self) {
        self.registrations.inc();
    }

    /// The upstream failed.
    pub fn upstream_error(&self) {
        self.upstream_errors.inc();
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_fixed_labels() {
        let m = Metrics::new();
        m.proxied("mcp", 200, 0.001);
        m.validated("expired", 0.00001);
        m.issued("authorization_code");
        m.replay("refresh_token");
        let text = m.render();
        assert!(
            text.contains("mcp_gateway_proxy_requests_total{backend=\"mcp\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("mcp_gateway_token_validations_total{outcome=\"expired\"} 1"));
        assert!(text.contains("mcp_gateway_tokens_issued_total{grant=\"authorization_code\"} 1"));
        assert!(text.contains("mcp_gateway_replays_detected_total{outcome=\"refresh_token\"} 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
