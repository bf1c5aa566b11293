//! Opt-in OpenTelemetry traces over OTLP/HTTP, configured the standard way: set
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) to turn them
//! on; `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `http/json`),
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and
//! `OTEL_BSP_*` work as everywhere else; `OTEL_SDK_DISABLED=true` turns them off.
//!
//! Each request the host serves is a server span (continuing the caller's W3C
//! `traceparent` when it sent one), and each request the outbound pipeline sends
//! upstream is a client span whose context travels upstream in `traceparent`, so a
//! trace spans agent, gateway and upstream. Spans carry the route, connector, method,
//! status and upstream host: never a query string, header value or body.
//!
//! The exporter sends with its own hyper client on its own small runtime, not through
//! the egress client: the collector is the operator's, named by the environment, and
//! must be reachable on loopback or a private address where connectors may not go.
//! Without an endpoint nothing here runs and no span is created.

use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpError};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The tracer provider when traces are on (flushed at shutdown).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Largest collector answer read.
const MAX_ANSWER: usize = 1 << 20;

/// Longest an export may take (connecting included): a collector that hangs must not
/// stall the exporter, whose later batches would otherwise be dropped.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Are traces on? Checked before any span is made, so they cost nothing when off.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Whether the environment asks for traces.
fn requested() -> bool {
    let set = |v: &str| std::env::var(v).is_ok_and(|s| !s.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Builds the tracer when the environment asks for traces: `Ok(None)` when it does not.
pub fn tracer() -> anyhow::Result<Option<opentelemetry_sdk::trace::Tracer>> {
    if !requested() {
        return Ok(None);
    }
    use opentelemetry_otlp::WithHttpConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Collector::new()?)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot set up the OTLP trace exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("portcullis");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("portcullis");
    let _ = PROVIDER.set(provider);
    Ok(Some(tracer))
}

/// Sends what is still buffered (at shutdown). Blocks up to a few seconds.
pub fn flush() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.force_flush()
    {
        tracing::warn!("could not send the last traces to the collector: {e}");
    }
}

/// A request's server span, kept in its extensions for the work the MCP library runs on
/// tasks of its own (outside the span), so that work can enter it again.
#[derive(Clone)]
pub struct RequestSpan(pub tracing::Span);

/// The id of the trace the current span belongs to, so that an audit record names the
/// trace of the request it records. `None` when traces are off or no span is current.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let id = cx.span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

/// The server span of one request, continuing the caller's trace when its
/// `traceparent` is valid. `None` when traces are off.
pub fn server_span(
    method: &http::Method,
    route: &str,
    path: &str,
    headers: &http::HeaderMap,
) -> Option<tracing::Span> {
    if !enabled() {
        return None;
    }
    // Named by route, not path: one name per kind of request, not per URL.
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.route = tracing::field::Empty,
        portcullis.connector = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
    Some(span)
}

/// Records the answer on a server span.
pub fn finish_server_span(span: &tracing::Span, route: &str, connector: &str, status: u16) {
    span.record("http.route", route);
    if !connector.is_empty() {
        span.record("portcullis.connector", connector);
    }
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The client span of one upstream request, its context written into `headers` as
/// `traceparent` (replacing any the caller sent). `None` when traces are off.
pub fn client_span(
    connector: &str,
    method: &http::Method,
    host: &str,
    headers: &mut http::HeaderMap,
) -> Option<tracing::Span> {
    if !enabled() {
        return None;
    }
    let span = tracing::info_span!(
        "upstream",
        otel.name = %format!("{method} {connector}"),
        otel.kind = "client",
        portcullis.connector = %connector,
        http.request.method = %method,
        server.address = %host,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
    Some(span)
}

/// Records the upstream's answer (or its absence) on a client span.
pub fn finish_client_span(span: &tracing::Span, status: Option<u16>) {
    match status {
        Some(s) => {
            span.record("http.response.status_code", i64::from(s));
            if s >= 500 {
                span.record("otel.status_code", "ERROR");
            }
        }
        None => {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The exporter's HTTP client: hyper on a one-thread runtime of its own, since the
/// SDK's batch processor exports from its own thread, outside any runtime.
#[derive(Debug)]
struct Collector {
    runtime: tokio::runtime::Runtime,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Collector {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(EXPORT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| anyhow::anyhow!("cannot set up TLS for the OTLP collector: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self { runtime, client })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Collector {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        self.runtime
            .spawn(async move {
                let exchange = async move {
                    let resp = client.request(request).await?;
                    let (parts, body) = resp.into_parts();
                    let body = Limited::new(body, MAX_ANSWER)
                        .collect()
                        .await
                        .map_err(|e| -> HttpError { e })?
                        .to_bytes();
                    Ok::<_, HttpError>(http::Response::from_parts(parts, body))
                };
                tokio::time::timeout(EXPORT_TIMEOUT, exchange)
                    .await
                    .map_err(|_| -> HttpError {
                        "the OTLP collector did not answer in time".into()
                    })?
            })
            .await?
    }
}
