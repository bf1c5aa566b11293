//! The way in: every request takes the host's front stages in one service, in this
//! order, before any route sees it.
//!
//! 1. The request log line and metrics, written when the answer is ready ([`Front::call`]).
//! 2. Head limits ([`crate::limits`]).
//! 3. The browser defence ([`crate::browser`]), under the config in force, which the
//!    request then keeps to the end: handlers read the same [`Snapshot`].
//! 4. The router. Its routes for agents and operators start with [`identify`]: no caller,
//!    no service. Only readiness, the OAuth client metadata and the dashboard's static
//!    pages are public. The two hot paths, the proxy's routes and `/v1/mcp`, skip the
//!    router: the same identity stage is called here, then their handler.
//!    (`/v1/mcp/<id>` and every other route stay on the router.)
//! 5. On the way out, a plain-text rejection of the framework or the MCP transport
//!    becomes the host's JSON error ([`crate::error::json_errors`]), an allowed
//!    cross-origin page gets its CORS headers, and an answer to HEAD loses its body.
//!
//! Each rule lives in its own module; this one only puts them in order. It is one
//! hand-written service rather than a stack of middleware layers because each layer
//! costs a boxed future and a cloned service stack per request, several percent of the
//! proxy's CPU (`docs/performance-log.md`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_service::Service as _;

use crate::browser::Verdict;
use crate::error::{ApiError, ErrorCode};
use crate::identity::{Caller, IdentityError};
use crate::proxy::ConnectorTag;
use crate::state::{App, Snapshot};
use crate::telemetry::Route;

/// The host's HTTP surface: the front stages around the router.
#[derive(Clone)]
pub struct Front {
    app: Arc<App>,
    router: Router,
    /// `/v1/mcp`, served past the router as the proxy is.
    mcp: Arc<crate::mcp::Entry>,
}

/// The hot paths of agents' calls, which skip the router ([`Front::pass`]): the
/// proxy's routes and `/v1/mcp`.
enum Hot {
    Proxy,
    Mcp,
}

impl Hot {
    fn of(path: &str) -> Option<Self> {
        if crate::proxy::serves(path) {
            Some(Self::Proxy)
        } else if path == crate::mcp::ENDPOINT {
            Some(Self::Mcp)
        } else {
            None
        }
    }
}

impl Front {
    pub fn new(app: Arc<App>, router: Router, mcp: Arc<crate::mcp::Entry>) -> Self {
        Self { app, router, mcp }
    }

    /// Answers one request from `peer`: every stage in order, then its log line and
    /// metrics.
    pub async fn call(mut self, mut req: Request, peer: SocketAddr) -> Response {
        let started = Instant::now();
        let method = req.method().clone();
        // The request's target (its bytes shared, not copied), for the log line and a
        // rejection's message once the router has taken the request.
        let uri = req.uri().clone();
        let path = uri.path();
        let route = route_of(path);
        let route_name = route.as_str();
        // Only built when the request log is on: this runs on every request.
        let header_names = tracing::enabled!(tracing::Level::INFO).then(|| {
            req.headers()
                .keys()
                .map(http::HeaderName::as_str)
                .collect::<Vec<_>>()
                .join(",")
        });
        // The path without its query (which may carry an API key), cut to keep lines short.
        let logged_path = &path[..path.char_indices().nth(200).map_or(path.len(), |(i, _)| i)];
        let span =
            crate::telemetry::otel::server_span(&method, route_name, logged_path, req.headers());
        let resp = match &span {
            Some(span) => {
                use tracing::Instrument as _;
                req.extensions_mut()
                    .insert(crate::telemetry::otel::RequestSpan(span.clone()));
                self.pass(req, peer, &method, path)
                    .instrument(span.clone())
                    .await
            }
            None => self.pass(req, peer, &method, path).await,
        };
        let resp = if method == http::Method::HEAD {
            without_body(resp)
        } else {
            resp
        };
        let elapsed = started.elapsed();
        let status = resp.status().as_u16();
        let ext = resp.extensions();
        let tag = ext.get::<ConnectorTag>();
        let connector = tag.map_or("", |t| t.0.id.as_str());
        let caller = ext.get::<CallerTag>().map_or("", |t| t.0.login.as_str());
        let error = ext.get::<ErrorCode>().map_or("", |e| e.0);
        let upstream_us = ext
            .get::<crate::telemetry::UpstreamTime>()
            .map(|t| t.0.as_micros() as u64);
        if let Some(span) = &span {
            crate::telemetry::otel::finish_server_span(span, route_name, connector, status);
        }
        let meters = tag.map(|t| (connector, &t.0.meters));
        self.app.metrics.observe(route, meters, status, elapsed);
        if route != Route::Healthz {
            tracing::info!(
                route = route_name,
                path = logged_path,
                connector,
                caller,
                method = %method,
                status,
                latency_us = elapsed.as_micros() as u64,
                upstream_us,
                error,
                headers = header_names.as_deref().unwrap_or_default(),
                "request"
            );
        }
        resp
    }

    /// Identity and the handler of a [`Hot`] call, behind a pointer as the router has
    /// them: inlined into every connection future the server instantiates (HTTP/1,
    /// HTTP/2), the MCP transport's code made the stripped binary about 7 MiB larger.
    fn hot(
        &self,
        hot: Hot,
        snapshot: Arc<Snapshot>,
        peer: SocketAddr,
        mut req: Request,
    ) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        let snap = snapshot.clone();
        match hot {
            Hot::Proxy => {
                let app = self.app.clone();
                Box::pin(async move {
                    identified(&snapshot, peer, req, async move |caller, req| {
                        crate::proxy::handle(app, snap, caller, req).await
                    })
                    .await
                })
            }
            Hot::Mcp => {
                let mcp = self.mcp.clone();
                req.extensions_mut().insert(snap);
                Box::pin(async move {
                    identified(&snapshot, peer, req, async move |caller, mut req| {
                        req.extensions_mut().insert(caller.clone());
                        crate::mcp::handle(mcp, caller, req).await
                    })
                    .await
                })
            }
        }
    }

    /// Stages 2 to 5.
    async fn pass(
        &mut self,
        mut req: Request,
        peer: SocketAddr,
        method: &http::Method,
        path: &str,
    ) -> Response {
        if let Err(refusal) = crate::limits::check(&req) {
            return refusal.into_response();
        }
        let snapshot = self.app.snapshot();
        let cors = match crate::browser::check(&snapshot.browser, &req) {
            Verdict::Pass(cors) => cors,
            Verdict::Answer(answer) => return answer,
        };
        // The hot paths go straight to their handler: the router and its identity layer
        // would add route matching, extractors, a cloned service stack and several boxed
        // futures a request, for the same two stages called here (one boxed future). They
        // are handed the peer; the router's routes read it from the request, which costs
        // an allocation or two a request, so only they get it there.
        let resp = match Hot::of(path) {
            Some(hot) => self.hot(hot, snapshot, peer, req).await,
            None => {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(snapshot);
                match self.router.call(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
        };
        let mut resp = crate::error::json_errors(resp, method, path).await;
        cors.stamp(&mut resp);
        resp
    }
}

/// An answer to HEAD as the stages wrote it, less its body. Axum's routes leave a HEAD
/// body out, but the stages after them (a rejection rewritten as a JSON error) and before
/// them (limits, the browser defence) write one. HTTP/1.1 would drop it; HTTP/2 would
/// send it as data, which clients take as a broken stream. `Content-Length` still says
/// what a GET would get.
fn without_body(resp: Response) -> Response {
    use http_body::Body as _;
    let (mut parts, body) = resp.into_parts();
    if let Some(n) = body.size_hint().exact()
        && n > 0
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    Response::from_parts(parts, axum::body::Body::empty())
}

/// Serves `front` to one connection from `peer`.
pub fn for_connection(
    front: Front,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let front = front.clone();
        async move { Ok(front.call(req.map(axum::body::Body::new), peer).await) }
    })
}

/// The caller, for the request log's login (shared, not copied: this is on every
/// identified request).
#[derive(Clone, Debug)]
struct CallerTag(Arc<Caller>);

/// Identity before anything else on the routes that need a caller: the middleware of
/// the router's identified routes. The snapshot is the one the request took at the door.
pub async fn identify(
    Extension(snapshot): Extension<Arc<Snapshot>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    identified(&snapshot, peer, req, async |caller, mut req| {
        req.extensions_mut().insert(caller);
        next.run(req).await
    })
    .await
}

/// The identity stage, for the router's identified routes and the [`Hot`] paths alike: `then`
/// answers for the caller `peer` is identified as, under `snapshot`; a caller that
/// cannot be identified is refused here.
async fn identified(
    snapshot: &Snapshot,
    peer: SocketAddr,
    req: Request,
    then: impl AsyncFnOnce(Arc<Caller>, Request) -> Response,
) -> Response {
    match snapshot.identity.identify(peer, req.headers()).await {
        Ok(caller) => {
            let tag = CallerTag(caller.clone());
            let mut resp = then(caller, req).await;
            resp.extensions_mut().insert(tag);
            resp
        }
        Err(IdentityError::Unknown(msg)) => {
            ApiError::unauthenticated(format!("cannot identify the caller: {msg}")).into_response()
        }
        Err(IdentityError::Unavailable(msg)) => ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "identity_unavailable",
            msg,
        )
        .into_response(),
    }
}

/// The route family of `path`, for metrics and the log.
fn route_of(path: &str) -> Route {
    if path.starts_with(crate::proxy::PREFIX) || path.starts_with("/v1/connectors") {
        Route::Proxy
    } else if path == crate::mcp::ENDPOINT
        || path
            .strip_prefix(crate::mcp::ENDPOINT)
            .is_some_and(|rest| rest.starts_with('/'))
    {
        Route::Mcp
    } else if path == "/healthz" {
        Route::Healthz
    } else if path == "/metrics" {
        Route::Metrics
    } else if path.starts_with("/api/") {
        Route::Api
    } else if path.starts_with("/aperture/auth/") {
        Route::Callback
    } else if path == "/" || path == "/ui" || path.starts_with(crate::ui::ROOT) {
        Route::Ui
    } else {
        Route::Other
    }
}
