//! A scripted upstream standing in for a provider's API: each path answers with recorded
//! responses (the last one repeats), and every request is kept for assertions.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::Value;

/// One recorded response.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Canned {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A request the fixture received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HashMap<String, String>,
    pub body: String,
}

#[derive(Default)]
struct Script {
    routes: HashMap<String, VecDeque<Canned>>,
    seen: Vec<Seen>,
}

pub struct Fixture {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Fixture {
    pub async fn start() -> Fixture {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script = Arc::new(Mutex::new(Script::default()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(script.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fixture { addr, script, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `path` answers with `responses` in turn; the last one repeats.
    pub fn on(&self, path: &str, responses: Vec<Canned>) {
        let mut s = self.script.lock().expect("script");
        s.routes.insert(path.to_owned(), responses.into());
    }

    /// `path` always answers `status` with this JSON.
    pub fn json(&self, path: &str, status: u16, body: Value) {
        self.on(path, vec![Canned::json(status, body)]);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.script.lock().expect("script").seen.clone()
    }

    /// Requests received for `path`.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(script): State<Arc<Mutex<Script>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let canned = {
        let mut s = script.lock().expect("script");
        s.seen.push(Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        });
        match s.routes.get_mut(&path) {
            Some(q) if q.len() > 1 => q.pop_front(),
            Some(q) => q.front().cloned(),
            None => None,
        }
    };
    let canned = canned.unwrap_or_else(|| {
        Canned::json(
            404,
            serde_json::json!({"fixture": "no recorded response", "path": path}),
        )
    });
    let mut resp = Response::builder().status(canned.status);
    for (k, v) in &canned.headers {
        resp = resp.header(k, v);
    }
    resp.body(Body::from(canned.body)).expect("response")
}
