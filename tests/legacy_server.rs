//! A minimal MCP server on the legacy HTTP+SSE transport (MCP 2024-11-05) that checks a
//! bearer token on every request: `GET /sse` opens the event stream, whose first event
//! names where to `POST` messages; answers arrive as `message` events. It can name an
//! endpoint on another origin, to show Portcullis never follows one there.
//!
//! Only what an upstream needs to show: `initialize`, `tools/list` and `tools/call` of
//! two tools: `whoami` answers, `vanish` accepts the call and then closes the event
//! stream without answering. server-everything covers the rest of the protocol.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Default)]
pub struct Seen {
    /// Requests that carried the expected token (event streams and posts).
    pub authorized: AtomicUsize,
    /// Requests refused for a missing or wrong token.
    pub rejected: AtomicUsize,
    /// Every request, whatever it carried.
    pub requests: AtomicUsize,
    /// `tools/call` messages received.
    pub calls: AtomicUsize,
}

struct Shared {
    token: String,
    /// `None`: this server's own `/message`; `Some(base)`: `<base>/message` elsewhere.
    endpoint_base: Option<String>,
    sessions: Mutex<HashMap<String, mpsc::UnboundedSender<String>>>,
    seen: Arc<Seen>,
}

pub struct LegacyServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl LegacyServer {
    /// Serves on a free loopback port, demanding `Authorization: Bearer <token>`; with
    /// `endpoint_base`, the `endpoint` event points there instead of at itself.
    pub async fn start(token: &str, endpoint_base: Option<String>) -> LegacyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let shared = Arc::new(Shared {
            token: format!("Bearer {token}"),
            endpoint_base,
            sessions: Mutex::default(),
            seen: seen.clone(),
        });
        let app = axum::Router::new()
            .route("/sse", axum::routing::get(stream))
            .route("/message", axum::routing::post(message))
            .with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LegacyServer { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/sse", self.addr)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for LegacyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    shared.seen.requests.fetch_add(1, Ordering::SeqCst);
    let ok = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == shared.token.as_bytes());
    let counter = if ok {
        &shared.seen.authorized
    } else {
        &shared.seen.rejected
    };
    counter.fetch_add(1, Ordering::SeqCst);
    ok
}

fn event(kind: &str, data: &str) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

async fn stream(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&shared, &headers) {
        return (StatusCode::UNAUTHORIZED, "bad credential").into_response();
    }
    let id = format!("s{}", shared.seen.requests.load(Ordering::SeqCst));
    let (tx, rx) = mpsc::unbounded_channel();
    let base = shared.endpoint_base.clone().unwrap_or_default();
    let _ = tx.send(event("endpoint", &format!("{base}/message?session={id}")));
    shared.sessions.lock().expect("lock").insert(id, tx);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .expect("response")
}

async fn message(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if !authorized(&shared, &headers) {
        return (StatusCode::UNAUTHORIZED, "bad credential").into_response();
    }
    let Some(tx) = q
        .get("session")
        .and_then(|id| shared.sessions.lock().expect("lock").get(id).cloned())
    else {
        return (StatusCode::NOT_FOUND, "no such session").into_response();
    };
    let Ok(msg) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let method = msg["method"].as_str().unwrap_or_default();
    if method == "tools/call" {
        shared.seen.calls.fetch_add(1, Ordering::SeqCst);
        if msg["params"]["name"] == "vanish" {
            // Accepted, and the stream (with its answer) goes away.
            if let Some(id) = q.get("session") {
                shared.sessions.lock().expect("lock").remove(id);
            }
            return (StatusCode::ACCEPTED, "Accepted").into_response();
        }
    }
    if let Some(id) = msg.get("id").cloned() {
        let reply = match method {
            "initialize" => json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": "2024-11-05",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "legacy-test", "version": "1.0.0"},
            }}),
            "tools/list" => json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
                {"name": "whoami", "description": "Says it ran", "inputSchema": {"type": "object"}},
                {"name": "vanish", "description": "Never answers", "inputSchema": {"type": "object"}},
            ]}}),
            "tools/call" => json!({"jsonrpc": "2.0", "id": id, "result": {
                "content": [{"type": "text", "text": "legacy whoami ran"}],
            }}),
            other => json!({"jsonrpc": "2.0", "id": id, "error": {
                "code": -32601, "message": format!("no method {other}"),
            }}),
        };
        let _ = tx.send(event("message", &reply.to_string()));
    }
    (StatusCode::ACCEPTED, "Accepted").into_response()
}
