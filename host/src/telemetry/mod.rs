//! Observability: one structured log line per request, Prometheus metrics, and opt-in
//! OpenTelemetry traces ([`otel`]).
//!
//! Logs carry the connector, the caller, method, status and latency, and request header
//! *names* only; never values, bodies, query strings or upstream URLs (an API key may
//! travel in a query string).

pub mod lines;
pub mod otel;
pub mod records;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How long the upstream took to answer (to its response headers), carried on the
/// relayed response to the request log line.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamTime(pub Duration);

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorLabels {
    pub connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorOutcomeLabels {
    pub connector: String,
    pub outcome: &'static str,
}

/// An upstream answer's outcome label, by [`ConnectorMeters::upstream`]'s index.
const UPSTREAM_OUTCOMES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];

/// What a request was for, as the request log and metrics name it. `Other` stays last
/// ([`Route::COUNT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Proxy,
    Mcp,
    Api,
    Healthz,
    Metrics,
    Callback,
    Ui,
    Other,
}

impl Route {
    const COUNT: usize = Self::Other as usize + 1;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Mcp => "mcp",
            Self::Api => "api",
            Self::Healthz => "healthz",
            Self::Metrics => "metrics",
            Self::Callback => "callback",
            Self::Ui => "ui",
            Self::Other => "other",
        }
    }
}

/// Most `(route, status)` request series a connector keeps ([`ConnectorMeters`]); any
/// further one is looked up by its labels on each request.
const MAX_KEPT_STATUSES: usize = 32;

/// One connector's series, each found in its family the first time it is used and then
/// kept: finding a series by its labels copies the connector's id and hashes it, on
/// every request the connector serves. A connector belongs to one host's snapshot, so
/// these are that host's series; a new snapshot's connector finds the same series again.
#[derive(Debug, Default)]
pub struct ConnectorMeters {
    /// `upstream_requests`, by outcome ([`UPSTREAM_OUTCOMES`]).
    upstream: [OnceLock<Counter>; 5],
    /// `upstream_duration_seconds`.
    upstream_duration: OnceLock<Histogram>,
    /// `requests`, by route and status: the few a connector's answers have.
    requests: Mutex<Vec<(Route, u16, Counter)>>,
}

impl ConnectorMeters {
    /// Counts a request in the `requests` series of `(route, status)`: kept, or found by
    /// `find` (and kept while fewer than [`MAX_KEPT_STATUSES`] are).
    fn count_request(&self, route: Route, status: u16, find: impl FnOnce() -> Counter) {
        let mut kept = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match kept.iter().find(|(r, s, _)| *r == route && *s == status) {
            Some((_, _, series)) => {
                series.inc();
            }
            None => {
                let series = find();
                series.inc();
                if kept.len() < MAX_KEPT_STATUSES {
                    kept.push((route, status, series));
                }
            }
        }
    }
}

/// The host's metrics, registered once per process in their own registry (no globals,
/// so several hosts can run in one test process).
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram>,
    /// `duration`'s series by route, kept once found (every request has one).
    route_duration: [OnceLock<Histogram>; Route::COUNT],
    pub config_reloads: Family<OutcomeLabels, Counter>,
    pub token_requests: Family<OutcomeLabels, Counter>,
    pub plugin_calls: Family<PluginLabels, Counter>,
    /// Per-user OAuth token endpoint calls, by kind (code, refresh) and outcome.
    pub user_token_requests: Family<UserTokenLabels, Counter>,
    /// Every request the outbound pipeline sends upstream, by connector and outcome.
    pub upstream_requests: Family<ConnectorOutcomeLabels, Counter>,
    pub upstream_duration: Family<ConnectorLabels, Histogram>,
    /// MCP tool calls through `/v1/mcp`, by connector and outcome.
    pub mcp_calls: Family<ConnectorOutcomeLabels, Counter>,
    /// 1 while a shared upstream's last check succeeded, 0 while it fails.
    pub upstream_up: Family<ConnectorLabels, Gauge>,
    /// Time inside provider plugins, by plugin and hook.
    pub plugin_duration: Family<PluginHookLabels, Histogram>,
    /// Audit records lost because the audit log's disk did not keep up.
    pub audit_dropped: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginHookLabels {
    pub plugin: String,
    pub hook: &'static str,
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
        let upstream_requests = Family::<ConnectorOutcomeLabels, Counter>::default();
        let upstream_duration = Family::<ConnectorLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let mcp_calls = Family::<ConnectorOutcomeLabels, Counter>::default();
        let upstream_up = Family::<ConnectorLabels, Gauge>::default();
        let plugin_duration = Family::<PluginHookLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let audit_dropped = Counter::default();
        registry.register(
            "plugin_duration_seconds",
            "Time spent inside provider plugins (instantiation and the call), by plugin and hook",
            plugin_duration.clone(),
        );
        registry.register(
            "audit_records_dropped",
            "Audit records dropped because the audit log's disk did not keep up",
            audit_dropped.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests sent upstream, by connector and outcome (2xx, 3xx, 4xx, 5xx, or error when no answer came)",
            upstream_requests.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response headers, by connector",
            upstream_duration.clone(),
        );
        registry.register(
            "mcp_calls",
            "MCP tool calls through /v1/mcp, by connector and outcome (ok, tool_error, error)",
            mcp_calls.clone(),
        );
        registry.register(
            "upstream_up",
            "Whether a connector's shared upstream answered its last check (1) or failed it (0)",
            upstream_up.clone(),
        );
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
            route_duration: Default::default(),
            config_reloads,
            token_requests,
            plugin_calls,
            user_token_requests,
            upstream_requests,
            upstream_duration,
            mcp_calls,
            upstream_up,
            plugin_duration,
            audit_dropped,
        })
    }

    /// One request sent upstream by `connector`: its answer's status class, or `error`
    /// without one. `meters` are the connector's own ([`ConnectorMeters`]).
    pub fn observe_upstream(
        &self,
        meters: &ConnectorMeters,
        connector: &str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        let outcome = match status {
            Some(200..=299) => 0,
            Some(300..=399) => 1,
            Some(400..=499) => 2,
            Some(_) => 3,
            None => 4,
        };
        meters.upstream[outcome]
            .get_or_init(|| {
                self.upstream_requests
                    .get_or_create(&ConnectorOutcomeLabels {
                        connector: connector.to_owned(),
                        outcome: UPSTREAM_OUTCOMES[outcome],
                    })
                    .clone()
            })
            .inc();
        meters
            .upstream_duration
            .get_or_init(|| {
                self.upstream_duration
                    .get_or_create(&ConnectorLabels {
                        connector: connector.to_owned(),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn mcp_call(&self, connector: &str, outcome: &'static str) {
        self.mcp_calls
            .get_or_create(&ConnectorOutcomeLabels {
                connector: connector.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn upstream_up(&self, connector: &str, up: bool) {
        self.upstream_up
            .get_or_create(&ConnectorLabels {
                connector: connector.to_owned(),
            })
            .set(i64::from(up));
    }

    /// One request answered on `route`, for `connector` (its id and series) when it used
    /// one.
    pub fn observe(
        &self,
        route: Route,
        connector: Option<(&str, &ConnectorMeters)>,
        status: u16,
        elapsed: Duration,
    ) {
        let count = || {
            self.requests
                .get_or_create(&RequestLabels {
                    route: route.as_str(),
                    connector: connector.map_or("", |(id, _)| id).to_owned(),
                    status,
                })
                .clone()
        };
        match connector {
            Some((_, meters)) => meters.count_request(route, status, count),
            None => {
                count().inc();
            }
        }
        let find = || {
            self.duration
                .get_or_create(&RouteLabels {
                    route: route.as_str(),
                })
                .clone()
        };
        // In bounds for every route: the array has `Route::COUNT` entries.
        self.route_duration[route as usize]
            .get_or_init(find)
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

/// The log's writer, for [`flush_log`] and [`log_audit`], and how its lines look.
static LOG: std::sync::OnceLock<(lines::Lines, records::Style)> = std::sync::OnceLock::new();

/// Logs an audit record (JSON from [`records::Record`]) as an INFO line `audit {...}`,
/// queued straight to the log's writer: the general formatter would re-escape it
/// character by character, on every proxied request. Before [`init_logging`] (tests
/// that use the library alone), through `tracing` like any line.
pub fn log_audit(record: &str) {
    match LOG.get() {
        Some((log, style)) => {
            let _ = log.send(style.line(std::time::SystemTime::now(), "audit", record));
        }
        None => tracing::info!(target: "audit", "audit {record}"),
    }
}

/// Waits (at most `within`) until every log line so far is on stderr: before the
/// process prints its last words or exits.
pub fn flush_log(within: Duration) {
    if let Some((log, _)) = LOG.get() {
        log.flush(within);
    }
}

/// The log's formatter, writing to `writer` in `style`.
fn log_format<S, W>(
    writer: W,
    style: records::Style,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(style.ansi)
        // The audit trail's lines say what they are; others need no module path.
        .with_target(false);
    if style.json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    }
}

/// Also starts the OTLP trace exporter when the environment asks for it ([`otel`]).
pub fn init_logging() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // The audit trail (when it goes to the log) and the trace spans are not diagnostics:
    // no `RUST_LOG` turns them off.
    let traces = otel::tracer()?;
    let mut kept = vec!["audit=info"];
    if traces.is_some() {
        kept.push("portcullis::telemetry::otel=info");
    }
    for directive in kept {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let json = std::env::var("PORTCULLIS_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colour only for a person at a terminal: a file, a pipe or journald gets plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // Each line is formatted by the thread that logs it and written by the log's own
    // thread, so a request never waits on a write to stderr (or on the pipe behind it).
    let output = lines::Lines::spawn("log-writer", std::io::stderr(), |_| {})
        .context("cannot start the log writer")?;
    let _ = LOG.set((output.clone(), records::Style { json, ansi }));
    let fmt = log_format(lines::LogOutput(output), records::Style { json, ansi });
    // Only the host's own spans are exported, whatever `RUST_LOG` turns on.
    let traces = traces.map(|tracer| {
        // Spans say what happened, not where in the code or on which thread.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            // Spans only: log lines (which may name users) are not span events.
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target().starts_with("portcullis")
            }))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(traces)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-request series count by their labels, from any thread, and two hosts in one
    /// process keep their counts apart.
    #[test]
    fn per_request_series_count_into_their_own_host() {
        let ms = Duration::from_millis(1);
        let a = Metrics::new();
        let b = Metrics::new();
        let (api, other) = (ConnectorMeters::default(), ConnectorMeters::default());
        a.observe(Route::Proxy, Some(("api", &api)), 200, ms);
        b.observe(Route::Proxy, Some(("api", &other)), 200, ms);
        a.observe(Route::Proxy, Some(("api", &api)), 200, ms);
        a.observe(Route::Proxy, Some(("api", &api)), 404, ms);
        a.observe(Route::Mcp, Some(("api", &api)), 200, ms);
        a.observe(Route::Healthz, None, 200, ms);
        a.observe_upstream(&api, "api", Some(200), ms);
        b.observe_upstream(&other, "other", Some(503), ms);
        a.observe_upstream(&api, "api", Some(204), ms);
        a.observe_upstream(&api, "api", None, ms);
        // A new snapshot's connector counts into the same series.
        a.observe_upstream(&ConnectorMeters::default(), "api", Some(201), ms);
        a.observe(
            Route::Proxy,
            Some(("api", &ConnectorMeters::default())),
            200,
            ms,
        );
        std::thread::scope(|s| {
            s.spawn(|| a.observe(Route::Proxy, Some(("api", &api)), 200, ms));
        });
        let (a, b) = (a.render(), b.render());
        for line in [
            // Kept by one connector's meters, found again by a new snapshot's, and
            // counted from another thread.
            r#"portcullis_requests_total{route="proxy",connector="api",status="200"} 4"#,
            r#"portcullis_requests_total{route="proxy",connector="api",status="404"} 1"#,
            r#"portcullis_requests_total{route="mcp",connector="api",status="200"} 1"#,
            r#"portcullis_requests_total{route="healthz",connector="",status="200"} 1"#,
            r#"portcullis_request_duration_seconds_count{route="proxy"} 5"#,
            r#"portcullis_request_duration_seconds_count{route="healthz"} 1"#,
            r#"portcullis_upstream_requests_total{connector="api",outcome="2xx"} 3"#,
            r#"portcullis_upstream_requests_total{connector="api",outcome="error"} 1"#,
            r#"portcullis_upstream_duration_seconds_count{connector="api"} 4"#,
        ] {
            assert!(a.contains(line), "{line} in\n{a}");
        }
        assert!(!a.contains(r#"connector="other""#), "{a}");
        for line in [
            r#"portcullis_requests_total{route="proxy",connector="api",status="200"} 1"#,
            r#"portcullis_upstream_requests_total{connector="other",outcome="5xx"} 1"#,
        ] {
            assert!(b.contains(line), "{line} in\n{b}");
        }
        assert!(!b.contains(r#"outcome="2xx""#), "{b}");
    }

    /// A connector whose answers have more statuses than it keeps series for still
    /// counts every one, into its own series.
    #[test]
    fn statuses_past_the_kept_ones_count_too() {
        let metrics = Metrics::new();
        let meters = ConnectorMeters::default();
        let statuses = 200..200 + 2 * MAX_KEPT_STATUSES as u16;
        for _ in 0..3 {
            for status in statuses.clone() {
                metrics.observe(Route::Proxy, Some(("api", &meters)), status, Duration::ZERO);
            }
        }
        let text = metrics.render();
        for status in statuses {
            let line = format!(
                r#"portcullis_requests_total{{route="proxy",connector="api",status="{status}"}} 3"#
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert_eq!(
            meters.requests.lock().expect("not poisoned").len(),
            MAX_KEPT_STATUSES
        );
    }
}
