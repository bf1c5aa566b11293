//! A stand-in for tailscaled's LocalAPI: `GET /localapi/v0/whois?addr=<ip:port>` over a
//! Unix socket, answering with the JSON shape of tailscale's `apitype.WhoIsResponse`,
//! 404 `no match for IP:port` for unknown peers, and 403 for a wrong Host header, as
//! tailscaled does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

#[derive(Default)]
struct Peers {
    by_ip: HashMap<String, Value>,
    lookups: usize,
}

/// The running stand-in. Peers are keyed by IP (the port varies per connection).
pub struct Whois {
    pub socket: PathBuf,
    peers: Arc<Mutex<Peers>>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Whois {
    pub async fn start() -> Whois {
        let dir = tempfile::tempdir().expect("tmp");
        let socket = dir.path().join("tailscaled.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind unix socket");
        let peers = Arc::new(Mutex::new(Peers::default()));
        let app = axum::Router::new()
            .route("/localapi/v0/whois", get(whois))
            .with_state(peers.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Whois {
            socket,
            peers,
            _dir: dir,
            task,
        }
    }

    /// Answers for `ip` with a user node.
    pub fn user(&self, ip: &str, login: &str, groups: &[&str], caps: Value) {
        self.set(
            ip,
            json!({
                "Node": {"ID": 1001, "StableID": format!("n{}", ip.replace('.', "")), "Name": "laptop.example.ts.net.",
                         "User": 2002, "Addresses": [format!("{ip}/32")], "Online": true, "CapMap": {}},
                "UserProfile": {"ID": 2002, "LoginName": login, "DisplayName": login, "ProfilePicURL": "", "Groups": groups},
                "CapMap": caps,
            }),
        );
    }

    /// Answers for `ip` with a tagged node (as tailscaled does: login "tagged-devices").
    pub fn tagged(&self, ip: &str, tags: &[&str]) {
        self.set(
            ip,
            json!({
                "Node": {"ID": 1003, "StableID": "nTAGGED", "Name": "ci.example.ts.net.", "Tags": tags, "CapMap": {}},
                "UserProfile": {"ID": 1, "LoginName": "tagged-devices", "DisplayName": "Tagged Devices"},
                "CapMap": {},
            }),
        );
    }

    pub fn set(&self, ip: &str, answer: Value) {
        self.peers
            .lock()
            .expect("lock")
            .by_ip
            .insert(ip.to_owned(), answer);
    }

    pub fn lookups(&self) -> usize {
        self.peers.lock().expect("lock").lookups
    }
}

impl Drop for Whois {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn whois(
    State(peers): State<Arc<Mutex<Peers>>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // tailscaled refuses LocalAPI requests for any other Host, or with Origin/Referer.
    let host_ok =
        headers.get("host").and_then(|h| h.to_str().ok()) == Some("local-tailscaled.sock");
    if !host_ok || headers.contains_key("origin") || headers.contains_key("referer") {
        return (StatusCode::FORBIDDEN, "invalid localapi request\n").into_response();
    }
    let Some(addr) = q.get("addr") else {
        return (StatusCode::BAD_REQUEST, "missing 'addr' parameter\n").into_response();
    };
    let Ok(sa) = addr.parse::<std::net::SocketAddr>() else {
        return (StatusCode::BAD_REQUEST, "invalid 'addr' parameter\n").into_response();
    };
    let mut p = peers.lock().expect("lock");
    p.lookups += 1;
    match p.by_ip.get(&sa.ip().to_string()) {
        Some(answer) => axum::Json(answer.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no match for IP:port\n").into_response(),
    }
}
