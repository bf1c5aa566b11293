//! Observability: one structured log line per request and Prometheus metrics.
//!
//! Logs carry the connector, the caller, method, status and latency, and request header
//! *names* only; never values, bodies, query strings or upstream URLs (an API key may
//! travel in a query string).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub connector: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub hook: &'static str,
    pub outcome: &'static str,
}

/// The host's metrics, registered once per process in their own registry (no globals,
/// so several hosts can run in one test process).
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram>,
    pub config_reloads: Family<OutcomeLabels, Counter>,
    pub token_requests: Family<OutcomeLabels, Counter>,
    pub plugin_calls: Family<PluginLabels, Counter>,
    /// Per-user OAuth token endpoint calls, by kind (code, refresh) and outcome.
    pub user_token_requests: Family<UserTokenLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserTokenLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~100 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.5, 16,
    ))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let config_reloads = Family::<OutcomeLabels, Counter>::default();
        let token_requests = Family::<OutcomeLabels, Counter>::default();
        let plugin_calls = Family::<PluginLabels, Counter>::default();
        let user_token_requests = Family::<UserTokenLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests handled, by route, connector and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to response headers, by route",
            duration.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reload attempts, by outcome",
            config_reloads.clone(),
        );
        registry.register(
            "token_requests",
            "Client-credentials token requests, by outcome",
            token_requests.clone(),
        );
        registry.register(
            "plugin_calls",
            "Provider plugin calls, by plugin, hook and outcome (ok, or why it failed)",
            plugin_calls.clone(),
        );
        registry.register(
            "user_token_requests",
            "Per-user OAuth token requests, by kind (code, refresh) and outcome (ok, needs_auth, failed)",
            user_token_requests.clone(),
        );
        Arc::new(Self {
            registry,
            requests,
            duration,
            config_reloads,
            token_requests,
            plugin_calls,
            user_token_requests,
        })
    }

    pub fn observe(&self, route: &'static str, connector: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                connector: connector.to_owned(),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Installs the log subscriber: `RUST_LOG` filters (default `info`), and
/// `PORTCULLIS_LOG_FORMAT=json` switches to one JSON object per line.
/// The log filter when `RUST_LOG` is not set. The MCP library's own lines are off: it
/// logs every stateless request's session at INFO, an upstream's whole instructions,
/// and a dead upstream every few seconds without naming it, while the host logs each
/// upstream failure once, with its connector (`RUST_LOG=info,rmcp=debug` shows them).
pub const DEFAULT_LOG_FILTER: &str = "info,rmcp=off";

pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let json = std::env::var("PORTCULLIS_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colour only for a person at a terminal: a file, a pipe or journald gets plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
