//! Sessionless `tools/call`, answered without starting an rmcp service for it.
//!
//! rmcp's transport serves a sessionless request by starting a service for that one
//! request: a peer with its own channel, a task running the service loop over a one-shot
//! transport, a task for the handler, and the answer handed back through the transport.
//! For the request agents send most, a `tools/call` outside a session with nothing in
//! its `_meta`, none of that carries anything: the client cannot be sent anything while
//! it runs (no progress token, no log level, no session to be asked in, a revision
//! before 2026-07-28, which answers in rounds), so its answer is one JSON body. Such a
//! request is decoded here and handed to the same handler through rmcp's own dispatch
//! ([`rmcp::Service::handle_request`] on the [`Aggregator`]), so the grant, the call,
//! the audit record and the metric are those of every other call; the answer is written
//! as rmcp's transport writes it (200, `application/json`, the JSON-RPC response or
//! error).
//!
//! Whatever else comes in goes to rmcp's transport unchanged, with the bytes as they
//! came ([`Taken::Not`]): [`eligible`] takes only requests on which each of the
//! transport's checks passes by construction (a `Host` it can parse, both media types
//! accepted, a JSON body, no standard `Mcp-*` headers to check against the body, a
//! protocol version it knows and that neither negotiates per request nor requires those
//! headers), and a body that does not decode as one `tools/call` request with an empty
//! `_meta` is the transport's to answer too. Grants, identity and the browser defence
//! are not here: they run in front of both paths and in the handler.
//!
//! What it saves, in alternating runs of `cargo xtask bench mcp` (docs/performance-log.md,
//! 2026-12-06 night): about a sixth of the gateway's CPU a call at concurrency 32 (11 of
//! 72 µs), 30 µs of CPU and about 35 µs of the added p50 at concurrency 1.
//!
//! A client that disconnects cancels the call as on rmcp's path: there the transport
//! cancels the handler when the HTTP request's future is dropped; here the handler is
//! that future, and dropping its upstream request sends the upstream
//! `notifications/cancelled`.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use rmcp::model::{
    ClientJsonRpcMessage, ClientRequest, ErrorData, GetExtensions as _, GetMeta as _,
    ProtocolVersion, ServerJsonRpcMessage,
};
use rmcp::service::{Peer, RequestContext, RoleServer};

use super::Gateway;
use super::server::Aggregator;

/// What became of a request offered to [`call`].
pub(super) enum Taken {
    /// Answered here.
    Answered(Response),
    /// Not one this path takes: the request, untouched, for rmcp's transport.
    Not(Parts, Bytes),
}

/// Answers `parts` and `body` (a POST to an MCP endpoint without a session, whose
/// `method` is `tools/call`) when it is one [`eligible`] request that decodes as a
/// `tools/call` with an empty `_meta`; else gives it back.
pub(super) async fn call(app: &Arc<Gateway>, parts: Parts, body: Bytes) -> Taken {
    if !eligible(&parts.headers) {
        return Taken::Not(parts, body);
    }
    let request = match serde_json::from_slice::<ClientJsonRpcMessage>(&body) {
        Ok(ClientJsonRpcMessage::Request(r))
            if matches!(r.request, ClientRequest::CallToolRequest(_))
                && r.request.get_meta().is_empty() =>
        {
            r
        }
        _ => return Taken::Not(parts, body),
    };
    let (id, mut request) = (request.id, request.request);
    // The handler finds the HTTP request (the caller, the snapshot, the endpoint's
    // scope) in the context's extensions, where rmcp's transport puts it.
    request.extensions_mut().insert(parts);
    let mut cx = RequestContext::new(id.clone(), nobody());
    cx.extensions = std::mem::take(request.extensions_mut());
    let handler = Aggregator::new(app.clone());
    let message = match rmcp::Service::handle_request(&handler, request, cx).await {
        Ok(result) => ServerJsonRpcMessage::response(result, id),
        Err(error) => ServerJsonRpcMessage::error(error, Some(id)),
    };
    Taken::Answered(json(&message))
}

/// Whether every check rmcp's transport makes of a sessionless request's headers passes
/// for this one without looking at more: its `Host` is a well-formed authority (the
/// transport parses it even with no list of hosts to match; which hosts are allowed is
/// the browser defence's to decide, in front), it accepts both JSON and an event stream
/// (listed plainly: a weight or a quoted parameter is left to the transport's parser),
/// sends JSON, carries no standard `Mcp-*` header (`Mcp-Method`, `Mcp-Name`,
/// `Mcp-Param-*`, checked against the body from 2026-07-28) nor a session, and names no
/// protocol version, or one the transport knows from before 2026-07-28 (an unknown one
/// is refused there; 2026-07-28 negotiates per request).
pub(super) fn eligible(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_none_or(|h| http::uri::Authority::try_from(h).is_err()) {
        return false;
    }
    let (mut json, mut sse) = (false, false);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        if value.contains([';', '"']) {
            return false;
        }
        for essence in value.split(',').map(str::trim) {
            json |= essence.eq_ignore_ascii_case("application/json");
            sse |= essence.eq_ignore_ascii_case("text/event-stream");
        }
    }
    if !(json && sse && super::transport::is_type(headers, "application/json")) {
        return false;
    }
    let mut version = None;
    for name in headers.keys() {
        if name.as_str() == "mcp-protocol-version" {
            version = headers.get(name);
        } else if name.as_str().starts_with("mcp-") {
            return false;
        }
    }
    version.is_none_or(known_before_rounds)
}

/// Whether `version` is a revision rmcp knows, older than 2026-07-28.
fn known_before_rounds(version: &HeaderValue) -> bool {
    let Ok(version) = version.to_str() else {
        return false;
    };
    version < ProtocolVersion::V_2026_07_28.as_str()
        && ProtocolVersion::KNOWN_VERSIONS
            .iter()
            .any(|known| known.as_str() == version)
}

/// A peer that reaches no client, for the handler's context. A request served here can
/// be sent nothing, and the handler sends nothing to it; should that change, sending
/// fails at once: the peer's service loop has ended (its transport is an empty stream),
/// so its channel is closed.
fn nobody() -> Peer<RoleServer> {
    static NOBODY: OnceLock<Peer<RoleServer>> = OnceLock::new();
    NOBODY
        .get_or_init(|| {
            let transport = (
                futures_util::sink::drain::<ServerJsonRpcMessage>(),
                futures_util::stream::empty::<ClientJsonRpcMessage>(),
            );
            rmcp::service::serve_directly(Nobody, transport, None)
                .peer()
                .clone()
        })
        .clone()
}

/// The service behind [`nobody`]: it never receives a request.
struct Nobody;

impl rmcp::ServerHandler for Nobody {}

/// The answer as rmcp's transport writes a JSON one.
fn json(message: &ServerJsonRpcMessage) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Err(e) => {
            tracing::error!(error = %e, "could not encode an MCP answer");
            let error = ErrorData::internal_error("the gateway could not encode the answer", None);
            let body = serde_json::json!({"jsonrpc": "2.0", "id": null, "error": error});
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        h
    }

    const PLAIN: &[(&str, &str)] = &[
        ("host", "127.0.0.1:8443"),
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
    ];

    #[test]
    fn a_plain_sessionless_request_is_taken() {
        assert!(eligible(&headers(PLAIN)));
        let mut h = headers(PLAIN);
        h.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("2025-11-25"),
        );
        assert!(eligible(&h));
        // The media types in two headers, in other cases, a charset on the body's type.
        assert!(eligible(&headers(&[
            ("host", "portcullis.example.ts.net"),
            ("accept", "Text/Event-Stream"),
            ("accept", "APPLICATION/JSON"),
            ("content-type", "application/json; charset=utf-8"),
        ])));
    }

    #[test]
    fn what_the_transport_checks_or_refuses_is_left_to_it() {
        let without = |name: &str| {
            let mut h = headers(PLAIN);
            h.remove(name);
            h
        };
        // It answers 406 and 415.
        assert!(!eligible(&without("accept")));
        assert!(!eligible(&without("content-type")));
        let with = |name: &'static str, value: &'static str| {
            let mut h = headers(PLAIN);
            h.insert(name, HeaderValue::from_static(value));
            h
        };
        assert!(!eligible(&with("accept", "application/json")));
        assert!(!eligible(&with("content-type", "text/plain")));
        // Weights and parameters are its parser's to read (a zero weight refuses).
        assert!(!eligible(&with(
            "accept",
            "application/json, text/event-stream;q=0"
        )));
        // A Host it cannot parse is its 400 (over HTTP/2 it reads `:authority` instead).
        assert!(!eligible(&without("host")));
        assert!(!eligible(&with("host", "bad host")));
        // Standard headers are checked against the body; sessions are routed there.
        assert!(!eligible(&with("mcp-method", "tools/call")));
        assert!(!eligible(&with("mcp-name", "bench_ping")));
        assert!(!eligible(&with("mcp-param-x", "1")));
        assert!(!eligible(&with("mcp-session-id", "abc")));
        // An unknown version is refused there; 2026-07-28 negotiates per request.
        assert!(!eligible(&with("mcp-protocol-version", "1999-01-01")));
        assert!(!eligible(&with("mcp-protocol-version", "2026-07-28")));
        assert!(!eligible(&with("mcp-protocol-version", "2099-01-01")));
    }
}
