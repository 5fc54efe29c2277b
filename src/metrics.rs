//! Prometheus metrics (OpenMetrics text) for operators: traffic per backend, proxy latency,
//! token validations by outcome, issuance by grant, replays, registrations, upstream
//! errors, key and introspection cache lookups, live clients and grants, authorization
//! requests arriving over the pending cap. Labels are fixed vocabularies (backend names,
//! outcomes, grant types, status codes, cache names): no label can carry a token or
//! anything a client chose.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    backend: &'static str,
    route: &'static str,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    outcome: &'static str,
}

/// Hit and miss counters of one cache, handed to the cache itself so the hot path counts
/// without a lookup. The default counts into counters no registry shows (tests, benches).
#[derive(Clone, Debug, Default)]
pub struct CacheCounters {
    hits: Counter,
    misses: Counter,
}

impl CacheCounters {
    /// The cache answered.
    pub fn hit(&self) {
        self.hits.inc();
    }

    /// The cache could not answer (the source was asked, or would have been).
    pub fn miss(&self) {
        self.misses.inc();
    }

    /// Hits and misses so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }
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
    cache_lookups: Family<CacheLabels, Counter>,
    live_clients: Gauge,
    live_grants: Gauge,
    over_pending_limit: Counter,
    resident_bytes: Gauge,
    open_fds: Gauge,
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
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
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        let live_clients = Gauge::default();
        let live_grants = Gauge::default();
        let over_pending_limit = Counter::default();
        registry.register(
            "build",
            "The running build: its version and git revision",
            prometheus_client::metrics::info::Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", env!("MCP_GATEWAY_GIT_REVISION")),
            ]),
        );
        let resident_bytes = Gauge::default();
        let open_fds = Gauge::default();
        let cpu_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the gateway process (as of the last scrape)",
            resident_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors of the gateway process (as of the last scrape)",
            open_fds.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time of the gateway process (as of the last scrape)",
            cpu_seconds.clone(),
        );
        // Every counter of a fixed vocabulary is there from the start, at 0, so a rate()
        // over the first increment is right and a dashboard has no gaps.
        for grant in ["authorization_code", "refresh_token", "client_credentials"] {
            let _ = issued.get_or_create(&GrantLabel { grant });
        }
        for outcome in ["code", "refresh_token"] {
            let _ = replays.get_or_create(&OutcomeLabel { outcome });
        }
        let _ = validations.get_or_create(&OutcomeLabel { outcome: "ok" });
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
        registry.register(
            "cache_lookups",
            "Lookups in the signing-key (jwks) and introspection caches, by outcome",
            cache_lookups.clone(),
        );
        registry.register(
            "live_clients",
            "Clients registered or pinned in the config (as of the last scrape)",
            live_clients.clone(),
        );
        registry.register(
            "live_grants",
            "Grants neither revoked nor expired (as of the last scrape)",
            live_grants.clone(),
        );
        registry.register(
            "authorizations_over_pending_limit",
            "Authorization requests that arrived over a pending cap (each evicted the oldest waiting one)",
            over_pending_limit.clone(),
        );
        Self {
            resident_bytes,
            open_fds,
            cpu_seconds,
            cache_lookups,
            live_clients,
            live_grants,
            over_pending_limit,
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
    pub fn proxied(&self, backend: &'static str, route: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                backend,
                route,
                status,
            })
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

    /// The counters a cache named `cache` (`jwks`, `introspection`) counts into.
    pub fn cache_counters(&self, cache: &'static str) -> CacheCounters {
        let counter = |outcome| {
            self.cache_lookups
                .get_or_create(&CacheLabels { cache, outcome })
                .clone()
        };
        CacheCounters {
            hits: counter("hit"),
            misses: counter("miss"),
        }
    }

    /// Set the live clients and grants gauges.
    pub fn set_live(&self, clients: usize, grants: usize) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.live_clients.set(gauge(clients));
        self.live_grants.set(gauge(grants));
    }

    /// An authorization request arrived over a pending cap; the oldest waiting one gave way.
    pub fn over_pending_limit(&self) {
        self.over_pending_limit.inc();
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        self.observe_process();
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Metrics {
    /// Read the process's resident memory, open descriptors and CPU time (Linux `/proc`;
    /// elsewhere they stay 0).
    fn observe_process(&self) {
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
            && let Some(pages) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<i64>().ok())
        {
            // The kernel reports pages; 4 KiB on every platform the gateway ships for.
            self.resident_bytes.set(pages.saturating_mul(4096));
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest)
        {
            // Fields 14 and 15 (utime, stime), in clock ticks of 1/100 s (USER_HZ).
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            self.cpu_seconds.set((ticks(11) + ticks(12)) / 100.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_fixed_labels() {
        let m = Metrics::new();
        m.proxied("mcp", "mcp", 200, 0.001);
        m.validated("expired", 0.00001);
        m.issued("authorization_code");
        m.replay("refresh_token");
        let text = m.render();
        assert!(
            text.contains(
                "mcp_gateway_proxy_requests_total{backend=\"mcp\",route=\"mcp\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("mcp_gateway_token_validations_total{outcome=\"expired\"} 1"));
        assert!(text.contains("mcp_gateway_tokens_issued_total{grant=\"authorization_code\"} 1"));
        assert!(text.contains("mcp_gateway_replays_detected_total{outcome=\"refresh_token\"} 1"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn cache_counters_and_gauges_render() {
        let m = Metrics::new();
        let jwks = m.cache_counters("jwks");
        jwks.hit();
        jwks.hit();
        jwks.miss();
        m.cache_counters("introspection").miss();
        m.set_live(3, 2);
        m.over_pending_limit();
        let text = m.render();
        for line in [
            "mcp_gateway_cache_lookups_total{cache=\"jwks\",outcome=\"hit\"} 2",
            "mcp_gateway_cache_lookups_total{cache=\"jwks\",outcome=\"miss\"} 1",
            "mcp_gateway_cache_lookups_total{cache=\"introspection\",outcome=\"miss\"} 1",
            "mcp_gateway_live_clients 3",
            "mcp_gateway_live_grants 2",
            "mcp_gateway_authorizations_over_pending_limit_total 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert_eq!(jwks.counts(), (2, 1));
        assert!(text.contains("mcp_gateway_build_info{version=\""), "{text}");
        assert!(text.contains("mcp_gateway_tokens_issued_total{grant=\"client_credentials\"} 0"));
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("mcp_gateway_process_resident_memory_bytes "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(rss > 1_000_000, "{text}");
        assert!(!text.contains("mcp_gateway_process_open_fds 0\n"), "{text}");
        m.set_live(0, 0);
        assert!(m.render().contains("mcp_gateway_live_grants 0"));
    }
}
