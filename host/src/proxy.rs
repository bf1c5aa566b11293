//! `ANY /v1/connectors/<id>/<path>`: the HTTP API connector proxy, a thin front door
//! over [`crate::outbound`].
//!
//! Order of checks, each before any upstream contact: the connector exists (404), the
//! method is allowed (405), the path is clean (400), the caller holds a grant for
//! `<id>/proxy/<path>` (403), the connector speaks HTTP (404). Then the request takes the
//! outbound pipeline with the caller's headers filtered, and the answer streams back,
//! cut at 50 MB.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body::Frame;

use crate::audit::{Decision, Outcome, Via};
use crate::config::Protocol;
use crate::error::{ApiError, Relayed};
use crate::identity::Caller;
use crate::openapi::ErrorBody;
use crate::outbound::path::normalize_path;
use crate::outbound::{Exchange, Payload, Target, UpstreamBody};
use crate::state::{App, Snapshot};

/// Route prefix of the proxy.
pub const PREFIX: &str = "/v1/connectors/";

/// Largest response body relayed; longer ones are cut (status unchanged).
pub const MAX_RESPONSE_BYTES: u64 = 50 * 1024 * 1024;

/// Methods that pass. TRACE (it reflects headers, injected credentials included) and
/// CONNECT (tunnels) never do.
const ALLOWED: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Which connector a response belongs to, for the request log and metrics (its id and
/// its kept series).
#[derive(Debug, Clone)]
pub struct ConnectorTag(pub Arc<crate::connector::Connector>);

/// Whether `path` is the proxy's: `/v1/connectors/<id>`, `/v1/connectors/<id>/` or
/// `/v1/connectors/<id>/<path>` with a non-empty `<id>`. [`crate::front`] sends these
/// here directly, after the identity stage; anything else goes to the router.
pub fn serves(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

/// Calls a connector's HTTP API with its credential injected.
///
/// The path and query go to the connector's `url`; the caller needs a grant on
/// `<id>/proxy/<path>`. The caller's own credentials and hop-by-hop headers are dropped.
#[utoipa::path(method(get, head, post, put, patch, delete, options), path = "/v1/connectors/{id}/{path}", tag = "agents",
    params(("id" = String, Path, description = "Connector ID"),
           ("path" = String, Path, description = "The upstream path, any depth, its slashes written as they are (an encoded `%2F` stays inside one segment); `/v1/connectors/{id}` and `/v1/connectors/{id}/` reach the upstream's base")),
    responses(
        (status = "default", description = "The upstream's answer, relayed (body cut at 50 MB)"),
        (status = 400, description = "A path that is not clean (`..` in any spelling)", body = ErrorBody),
        (status = 404, description = "No such connector, or an MCP connector", body = ErrorBody),
        (status = 401, description = "`unauthenticated` (the caller could not be identified) or `needs_auth` (a per-user connector the caller has not connected, or must connect again)", body = ErrorBody),
        (status = 405, description = "TRACE or CONNECT", body = ErrorBody),
        (status = 502, description = "The upstream could not be reached, refused the credential, or the connector is misconfigured", body = ErrorBody),
        (status = 503, description = "`identity_unavailable`, or `token_refresh_failed` / `provider_unavailable`: try again after `Retry-After`", body = ErrorBody),
        (status = 504, description = "The upstream did not answer in time", body = ErrorBody),
    ))]
pub async fn handle(
    app: Arc<App>,
    snapshot: Arc<Snapshot>,
    caller: Arc<Caller>,
    req: Request,
) -> Response {
    let raw_path = req.uri().path().to_owned();
    let rest = raw_path.strip_prefix(PREFIX).unwrap_or_default();
    let (id, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(connector) = snapshot.connectors.get(id) else {
        return ApiError::not_found(format!(
            "no connector \"{id}\" is configured; check the connector ID in the URL (/v1/connectors/<id>/<path>)"
        ))
        .into_response();
    };
    let method = req.method().clone();
    let mut decision = Decision::Undecided;
    let mut resp = match forward(
        &app,
        &snapshot,
        &caller,
        connector,
        path,
        req,
        &mut decision,
    )
    .await
    {
        Ok(mut upstream) => {
            upstream.extensions_mut().insert(Relayed);
            upstream
        }
        Err(e) => e.into_response(),
    };
    // Requests refused before the grant check (bad method or path) used nothing.
    let outcome = match &decision {
        Decision::Undecided => None,
        Decision::Denied => Some((None, Outcome::Denied)),
        Decision::Granted(g) => Some((Some(g), Outcome::Status(resp.status().as_u16()))),
    };
    if let Some((grant, outcome)) = outcome {
        app.audit.call(
            &caller,
            id,
            Via::Proxy {
                method: method.as_str(),
                path,
            },
            grant,
            outcome,
        );
    }
    resp.extensions_mut()
        .insert(ConnectorTag(connector.clone()));
    resp
}

async fn forward(
    app: &App,
    snapshot: &Snapshot,
    caller: &Caller,
    connector: &crate::connector::Connector,
    path: &str,
    req: Request,
    decision: &mut Decision,
) -> Result<Response, ApiError> {
    let id = connector.id.as_str();
    if !ALLOWED.contains(req.method()) {
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} is not allowed through connectors; use GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS",
                req.method()
            ),
        )
        .into_response();
        resp.headers_mut().insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return Ok(resp);
    }
    let path = normalize_path(path)?;
    let Some(grant) = snapshot
        .policy
        .access(caller)
        .grant_for(id, "proxy", &path.grant)
    else {
        *decision = Decision::Denied;
        return Err(ApiError::forbidden(format!(
            "access denied: {} has no grant for \"{id}/proxy\"; ask an admin for a connectors grant such as \"{id}/proxy\" or \"{id}/**\"",
            caller.login
        )));
    };
    *decision = Decision::Granted(grant);
    if connector.protocol != Protocol::Http {
        return Err(ApiError::not_found(format!(
            "connector \"{id}\" is an MCP connector; reach it through /v1/mcp"
        )));
    }
    let (mut parts, body) = req.into_parts();
    crate::headers::from_caller(&mut parts.headers);
    // A request without a body can be sent again (after a 401, or when the provider
    // says "retry"); the caller's body otherwise streams through as it is, with its
    // Content-Length if it had one. HTTP/2 bodies carry no length header, so the body
    // itself says whether it is empty.
    let bodiless = http_body::Body::is_end_stream(&body);
    let head = parts.method == Method::HEAD;
    let reply = app
        .outbound
        .send(Exchange {
            connector,
            user: Some(&caller.login),
            method: parts.method,
            target: Target::Path {
                path: path.forward,
                query: parts.uri.query().map(str::to_owned),
            },
            headers: parts.headers,
            body: if bodiless {
                Payload::Empty
            } else {
                Payload::Stream(body)
            },
        })
        .await?;
    Ok(relay(id, head, app.egress.read_timeout(), reply.response))
}

/// Builds the response for the caller: body streamed and capped. Redirects are relayed
/// as they are, never followed.
fn relay(id: &str, head: bool, idle: Duration, resp: http::Response<UpstreamBody>) -> Response {
    let (mut parts, body) = resp.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_RESPONSE_BYTES) {
        // The body will be cut, so the length would be a lie.
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let body = if head {
        Body::empty()
    } else {
        Body::new(Capped::new(body, id, idle))
    };
    Response::from_parts(parts, body)
}

/// A response body cut after 50 MB and abandoned after `idle` without data. The cut is
/// silent to the caller (the status was already sent) but logged. Once the limit is
/// reached, one more frame is awaited to tell a body that ended exactly there from one
/// that was cut.
///
/// The idle timer is armed only when the upstream makes the body wait, and re-armed
/// when it makes it wait again after data: most answers arrive whole with their head and
/// never need one, and a timer costs an allocation, a clock read and the runtime's timer
/// wheel on every request.
struct Capped {
    inner: UpstreamBody,
    left: u64,
    connector: String,
    done: bool,
    idle: Duration,
    /// Whether the body is waiting on the upstream: the timer runs only then.
    waiting: bool,
    /// Made when the body first waits, and reset for every later wait, so a slow
    /// stream allocates one.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Capped {
    fn new(inner: UpstreamBody, connector: &str, idle: Duration) -> Self {
        Self {
            inner,
            left: MAX_RESPONSE_BYTES,
            connector: connector.to_owned(),
            done: false,
            idle,
            waiting: false,
            timer: None,
        }
    }

    /// Whether the upstream has now been silent for `idle`, arming the timer if the body
    /// has just started to wait.
    fn silent_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let deadline = tokio::time::Instant::now() + self.idle;
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }

    fn truncated(&mut self) {
        self.done = true;
        tracing::info!(connector = %self.connector, limit_bytes = MAX_RESPONSE_BYTES, "response truncated at the size limit");
    }
}

impl http_body::Body for Capped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                if self.silent_too_long(cx) {
                    self.done = true;
                    tracing::warn!(connector = %self.connector, "upstream went silent mid-response; response abandoned");
                    return Poll::Ready(Some(Err("upstream response timed out".into())));
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => {
                self.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        // Data came: the silence is over; the next wait starts a new one.
        self.waiting = false;
        // Trailers are metadata of the upstream connection: dropped.
        let Ok(mut data) = frame.into_data() else {
            self.done = true;
            return Poll::Ready(None);
        };
        if data.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if self.left == 0 {
            self.truncated();
            return Poll::Ready(None);
        }
        let len = data.len() as u64;
        if len > self.left {
            data.truncate(self.left as usize);
            self.left = 0;
            self.truncated();
        } else {
            self.left -= len;
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut h = self.inner.size_hint();
        if h.lower() > self.left {
            return http_body::SizeHint::with_exact(self.left);
        }
        if h.upper().is_some_and(|u| u > self.left) {
            h.set_upper(self.left);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::serves;

    #[test]
    fn the_proxy_serves_the_three_forms_of_its_route_and_nothing_else() {
        for path in [
            "/v1/connectors/github",
            "/v1/connectors/github/",
            "/v1/connectors/github/repos/a/b",
            "/v1/connectors/github//double",
            "/v1/connectors/git%68ub/x",
        ] {
            assert!(serves(path), "{path}");
        }
        // An empty connector ID, or a path that only starts like the prefix, is the
        // router's (its 404), as it was when the router matched `{id}`.
        for path in [
            "/v1/connectors",
            "/v1/connectors/",
            "/v1/connectors//github",
            "/v1/connectorsx/github",
            "/v1/mcp",
            "/api/connectors/github",
        ] {
            assert!(!serves(path), "{path}");
        }
    }
}
