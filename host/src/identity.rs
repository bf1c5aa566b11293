//! Who is calling: every request gets a [`Caller`] or is rejected before any other work.
//!
//! Three sources, chosen by `identity.mode`:
//! - `tailscale`: ask tailscaled's LocalAPI `whois` about the peer's `ip:port` over its
//!   Unix socket. Unknown non-loopback peers are refused (401); an unreachable LocalAPI
//!   fails closed (503), never open.
//! - `serve-headers`: behind `tailscale serve`, which strips client-sent identity headers
//!   and sets its own; trusted only from a loopback peer (the serve proxy).
//! - `loopback`: local development; loopback peers are `(loopback)`, nobody else gets in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use serde::Deserialize;

use crate::config::{APERTURE_CAP, IdentityConfig, IdentityMode};

/// The identity loopback callers get when nothing else is known about them.
pub const LOOPBACK: &str = "(loopback)";

use crate::policy::Capabilities;
pub use crate::policy::{Caller, CallerKind};

impl Caller {
    pub fn loopback() -> Self {
        Self {
            login: LOOPBACK.into(),
            kind: CallerKind::Loopback,
            node: None,
            tags: Vec::new(),
            groups: Vec::new(),
            caps: Capabilities::default(),
        }
    }
}

/// Why no identity could be established.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    /// The peer is not someone we can identify: 401.
    #[error("{0}")]
    Unknown(String),
    /// The identity source is down or refused us: 503, fail closed.
    #[error("{0}")]
    Unavailable(String),
}

/// Resolves callers for one config snapshot; caches whois answers briefly per peer.
pub struct Identifier {
    mode: IdentityMode,
    /// The `(loopback)` caller, built once: loopback mode answers it on every request.
    loopback: Arc<Caller>,
    socket: PathBuf,
    ttl: Duration,
    cache: Mutex<HashMap<SocketAddr, (Instant, Arc<Caller>)>>,
}

/// Bound on cached peers; past it, expired entries are swept (and if all are fresh, the
/// cache is cleared rather than grown).
const CACHE_MAX: usize = 4096;

impl Identifier {
    pub fn new(cfg: &IdentityConfig) -> Self {
        Self {
            mode: cfg.mode,
            loopback: Arc::new(Caller::loopback()),
            socket: cfg.socket.clone(),
            ttl: Duration::from_secs(cfg.cache_ttl_secs),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> IdentityMode {
        self.mode
    }

    pub async fn identify(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Arc<Caller>, IdentityError> {
        match self.mode {
            IdentityMode::Loopback => {
                if is_loopback(peer.ip()) {
                    Ok(self.loopback.clone())
                } else {
                    Err(IdentityError::Unknown(format!(
                        "identity mode \"loopback\" accepts only local callers; {} is not one",
                        peer.ip()
                    )))
                }
            }
            IdentityMode::ServeHeaders => from_serve_headers(peer, headers).map(Arc::new),
            IdentityMode::Tailscale => {
                if let Some(hit) = self.cached(peer) {
                    return Ok(hit);
                }
                let caller = Arc::new(self.whois(peer).await?);
                // Loopback peers are never cached: local processes and connections that
                // tailscaled forwards share 127.0.0.1, and a reused port must not inherit
                // someone else's identity.
                if !is_loopback(peer.ip()) {
                    self.remember(peer, caller.clone());
                }
                Ok(caller)
            }
        }
    }

    fn cached(&self, peer: SocketAddr) -> Option<Arc<Caller>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(&peer)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, c)| c.clone())
    }

    fn remember(&self, peer: SocketAddr, caller: Arc<Caller>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(peer, (Instant::now(), caller));
    }

    async fn whois(&self, peer: SocketAddr) -> Result<Caller, IdentityError> {
        match whois(&self.socket, peer).await? {
            Some(answer) => caller_from_whois(answer),
            // tailscaled does not know this peer. Local processes are (loopback); anyone
            // else is off the tailnet and gets nothing.
            None if is_loopback(peer.ip()) => Ok(Caller::loopback()),
            None => Err(IdentityError::Unknown(format!(
                "{} is not a known tailnet peer; connect over the tailnet",
                peer.ip()
            ))),
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The subset of tailscale's `apitype.WhoIsResponse` Portcullis reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct WhoIs {
    #[serde(default)]
    node: Option<WhoIsNode>,
    #[serde(default)]
    user_profile: Option<WhoIsUser>,
    #[serde(default)]
    cap_map: Option<HashMap<String, Vec<serde_json::Value>>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WhoIsNode {
    #[serde(default, rename = "StableID")]
    stable_id: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WhoIsUser {
    #[serde(default)]
    login_name: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
}

/// A tagged node is identified by its tags, sorted and comma-joined (`tag:api,tag:prod`);
/// a user node by its login; a node with neither is refused.
pub(crate) fn caller_from_whois(w: WhoIs) -> Result<Caller, IdentityError> {
    let mut tags = w
        .node
        .as_ref()
        .and_then(|n| n.tags.clone())
        .unwrap_or_default();
    tags.sort();
    tags.dedup();
    let node = w.node.as_ref().and_then(|n| n.stable_id.clone());
    let caps = Capabilities::compile(
        w.cap_map
            .and_then(|mut m| m.remove(APERTURE_CAP))
            .unwrap_or_default(),
    );
    let groups = w
        .user_profile
        .as_ref()
        .and_then(|u| u.groups.clone())
        .unwrap_or_default();
    let (login, kind) = if !tags.is_empty() {
        (tags.join(","), CallerKind::Tagged)
    } else {
        match w
            .user_profile
            .and_then(|u| u.login_name)
            .filter(|l| !l.is_empty() && l != "tagged-devices")
        {
            Some(login) => (login, CallerKind::User),
            None => {
                return Err(IdentityError::Unknown(
                    "this tailnet node has neither a user nor tags, so it cannot be identified"
                        .into(),
                ));
            }
        }
    };
    Ok(Caller {
        login,
        kind,
        node,
        tags,
        groups,
        caps,
    })
}

/// The most a whois answer may be; real ones are a few kilobytes.
const WHOIS_MAX_BYTES: usize = 1 << 20;
const WHOIS_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /localapi/v0/whois?addr=<ip:port>` over the LocalAPI socket. `Ok(None)` is 404.
async fn whois(socket: &std::path::Path, peer: SocketAddr) -> Result<Option<WhoIs>, IdentityError> {
    let unavailable = |what: String| {
        IdentityError::Unavailable(format!(
            "cannot ask tailscaled who is calling ({what}); check that tailscaled is running and \
             identity.socket ({}) is right",
            socket.display()
        ))
    };
    let addr: String = percent_encoding::utf8_percent_encode(
        &peer.to_string(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    let (status, body) = localapi_get(socket, &format!("/localapi/v0/whois?addr={addr}"))
        .await
        .map_err(unavailable)?;
    match status {
        http::StatusCode::OK => serde_json::from_slice::<WhoIs>(&body)
            .map(Some)
            .map_err(|e| unavailable(format!("unreadable whois answer: {e}"))),
        http::StatusCode::NOT_FOUND => Ok(None),
        other => Err(unavailable(format!(
            "whois answered {other}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        ))),
    }
}

/// Whether tailscaled's LocalAPI answers at `socket` at all (any HTTP answer to a whois
/// of an address no peer has): readiness, and the start-up check of `tailscale` mode.
pub async fn tailscaled_reachable(socket: &std::path::Path) -> Result<(), String> {
    localapi_get(socket, "/localapi/v0/whois?addr=127.0.0.1%3A1")
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "tailscaled's LocalAPI at {} cannot be reached ({e})",
                socket.display()
            )
        })
}

/// One LocalAPI `GET` over the Unix socket, with [`WHOIS_TIMEOUT`]: the status and body,
/// or why there was no answer.
async fn localapi_get(
    socket: &std::path::Path,
    path: &str,
) -> Result<(http::StatusCode, bytes::Bytes), String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let fut = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(path)
            .header(http::header::HOST, "local-tailscaled.sock")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), WHOIS_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(WHOIS_TIMEOUT, fut)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Headers `tailscale serve` sets (after deleting any the client sent).
const SERVE_LOGIN: &str = "tailscale-user-login";
const SERVE_CAPS: &str = "tailscale-app-capabilities";

fn from_serve_headers(peer: SocketAddr, headers: &HeaderMap) -> Result<Caller, IdentityError> {
    if !is_loopback(peer.ip()) {
        return Err(IdentityError::Unknown(format!(
            "identity mode \"serve-headers\" trusts identity headers only from tailscale serve on \
             loopback; {} connected directly",
            peer.ip()
        )));
    }
    let login = headers
        .get(SERVE_LOGIN)
        .and_then(|v| v.to_str().ok())
        .map(decode_rfc2047)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            IdentityError::Unknown(
                "no Tailscale-User-Login header: the request did not come through tailscale serve, or \
                 came from a tagged node (serve sends no identity for those)"
                    .into(),
            )
        })?;
    let caps = Capabilities::compile(
        headers
            .get(SERVE_CAPS)
            .and_then(|v| v.to_str().ok())
            .map(decode_rfc2047)
            .and_then(|s| serde_json::from_str::<HashMap<String, Vec<serde_json::Value>>>(&s).ok())
            .and_then(|mut m| m.remove(APERTURE_CAP))
            .unwrap_or_default(),
    );
    Ok(Caller {
        login,
        kind: CallerKind::User,
        node: None,
        tags: Vec::new(),
        groups: Vec::new(),
        caps,
    })
}

/// Decodes an RFC 2047 Q-encoded word (`=?utf-8?q?...?=`), as tailscale serve sends
/// non-ASCII values; anything else is returned as is.
fn decode_rfc2047(s: &str) -> String {
    let Some(inner) = s.strip_prefix("=?").and_then(|r| r.strip_suffix("?=")) else {
        return s.to_owned();
    };
    let mut parts = inner.splitn(3, '?');
    let (Some(charset), Some(enc), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
        return s.to_owned();
    };
    if !charset.eq_ignore_ascii_case("utf-8") || !enc.eq_ignore_ascii_case("q") {
        return s.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'=', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'_', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whois_json(v: serde_json::Value) -> WhoIs {
        serde_json::from_value(v).expect("whois shape")
    }

    #[test]
    fn user_node_is_its_login_with_groups_and_caps() {
        let c = caller_from_whois(whois_json(serde_json::json!({
            "Node": {"ID": 1, "StableID": "nABC", "Name": "laptop.ts.net."},
            "UserProfile": {"ID": 2, "LoginName": "alice@example.com", "Groups": ["group:ai"]},
            "CapMap": {"tailscale.com/cap/aperture": [{"connectors": ["github/**"]}], "other/cap": [{}]}
        })))
        .expect("identified");
        assert_eq!(c.login, "alice@example.com");
        assert_eq!(c.kind, CallerKind::User);
        assert_eq!(c.node.as_deref(), Some("nABC"));
        assert_eq!(c.groups, vec!["group:ai"]);
        assert_eq!(c.caps.len(), 1);
    }

    #[test]
    fn tagged_node_is_its_sorted_tags() {
        let c = caller_from_whois(whois_json(serde_json::json!({
            "Node": {"StableID": "n1", "Tags": ["tag:prod", "tag:api"]},
            "UserProfile": {"LoginName": "tagged-devices"}
        })))
        .expect("identified");
        assert_eq!(c.login, "tag:api,tag:prod");
        assert_eq!(c.kind, CallerKind::Tagged);
    }

    #[test]
    fn node_with_neither_user_nor_tags_is_refused() {
        for v in [
            serde_json::json!({"Node": {"StableID": "n1"}, "UserProfile": {"LoginName": ""}}),
            serde_json::json!({"Node": {"StableID": "n1"}, "UserProfile": {"LoginName": "tagged-devices"}}),
            serde_json::json!({"Node": {"StableID": "n1"}}),
        ] {
            assert!(matches!(
                caller_from_whois(whois_json(v)),
                Err(IdentityError::Unknown(_))
            ));
        }
    }

    #[tokio::test]
    async fn loopback_mode_admits_only_loopback() {
        let id = Identifier::new(&IdentityConfig {
            mode: IdentityMode::Loopback,
            ..Default::default()
        });
        let h = HeaderMap::new();
        for ok in ["127.0.0.1:5", "[::1]:5", "[::ffff:127.0.0.1]:5"] {
            assert_eq!(
                id.identify(ok.parse().expect("addr"), &h)
                    .await
                    .expect("ok")
                    .login,
                LOOPBACK
            );
        }
        for bad in ["100.64.0.1:5", "10.0.0.1:5", "[fd7a::1]:5"] {
            assert!(matches!(
                id.identify(bad.parse().expect("addr"), &h).await,
                Err(IdentityError::Unknown(_))
            ));
        }
    }

    #[tokio::test]
    async fn serve_headers_trusted_only_from_loopback() {
        let id = Identifier::new(&IdentityConfig {
            mode: IdentityMode::ServeHeaders,
            ..Default::default()
        });
        let mut h = HeaderMap::new();
        h.insert(
            SERVE_LOGIN,
            "=?utf-8?q?j=C3=BCrgen@example.com?=".parse().expect("hv"),
        );
        h.insert(
            SERVE_CAPS,
            r#"{"tailscale.com/cap/aperture":[{"role":"user"}]}"#
                .parse()
                .expect("hv"),
        );
        let c = id
            .identify("127.0.0.1:9".parse().expect("addr"), &h)
            .await
            .expect("identified");
        assert_eq!(c.login, "jürgen@example.com");
        assert_eq!(c.caps.len(), 1);
        assert!(
            id.identify("100.64.1.1:9".parse().expect("addr"), &h)
                .await
                .is_err()
        );
        assert!(
            id.identify("127.0.0.1:9".parse().expect("addr"), &HeaderMap::new())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn tailscale_mode_fails_closed_without_the_socket() {
        let dir = tempfile::tempdir().expect("tmp");
        let id = Identifier::new(&IdentityConfig {
            mode: IdentityMode::Tailscale,
            socket: dir.path().join("absent.sock"),
            cache_ttl_secs: 10,
        });
        for peer in ["127.0.0.1:1", "100.64.0.1:1"] {
            let err = id
                .identify(peer.parse().expect("addr"), &HeaderMap::new())
                .await;
            assert!(
                matches!(err, Err(IdentityError::Unavailable(_))),
                "{peer}: {err:?}"
            );
        }
    }

    #[test]
    fn rfc2047_decoding() {
        assert_eq!(decode_rfc2047("plain@example.com"), "plain@example.com");
        assert_eq!(decode_rfc2047("=?utf-8?q?A_B=3D?="), "A B=");
        assert_eq!(decode_rfc2047("=?utf-8?q?bad=Z?="), "bad=Z");
    }
}
