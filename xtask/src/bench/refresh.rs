//! `cargo xtask bench refresh`: refresh storms. Many concurrent requests for one user's
//! per-user OAuth token arrive at the moment it is due, and the host must make exactly
//! one token request for all of them (single-flight per connection and user, with a
//! re-read of the tokens once the lock is held), with no request failing and no
//! rotated refresh token lost.
//!
//! Two storms, each repeated `--rounds` times on one connection:
//!
//! - **at expiry**: the token endpoint issues short-lived tokens; the storm is sent at
//!   the instant the host considers the token due (a fifth of its life, at most 60 s,
//!   before `expires_in` runs out), racing the host's background refresher;
//! - **upstream says expired**: the token is long-lived, but the upstream starts
//!   refusing it (401 `invalid_token`) just before the storm, so every request comes
//!   back refused and asks for a refresh.
//!
//! The token endpoint and the upstream run in this process on loopback. The token
//! endpoint answers after `--token-delay-ms` (a real one takes tens of milliseconds,
//! which is what lets requests pile up behind a refresh), rotates the refresh token on
//! every refresh and accepts only the latest one, so a lost rotation shows up as a
//! refused refresh. Everything is counted where it happens: token requests by grant at
//! the token endpoint, refusals at the upstream, answers at the load generator.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use serde_json::json;

use super::host::{prepare_portcullis, spawn_portcullis, with_log_tail};
use super::load::{self, LoadSpec, Phase, Stats, Target};
use super::{MachineInfo, ServerThread};

const CONNECTOR: &str = "storm";
const CLIENT_ID: &str = "storm-client";
const CLIENT_SECRET: &str = "storm-client-secret-0123456789";
/// Lifetime of the tokens the "at expiry" storms race: due 4 s after issue.
const SHORT_LIFETIME_S: u64 = 5;
/// Lifetime of the tokens the "upstream says expired" storms use: never due here.
const LONG_LIFETIME_S: u64 = 3600;
/// Upper bound for one storm, from the first request to the last answer.
const STORM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long before a storm its connections are opened (all of them are open and idle
/// when the first request goes out).
const CONNECT_LEAD: Duration = Duration::from_secs(3);

/// Options for `cargo xtask bench refresh`.
#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Do not run `cargo build --release -p portcullis` first.
    #[arg(long)]
    no_build: bool,
    /// Concurrent requests in each storm, one connection each.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=4000))]
    requests: u64,
    /// Storms of each kind.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    rounds: u64,
    /// How long the token endpoint takes to answer, in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=5000))]
    token_delay_ms: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not update docs/benchmarks.md.
    #[arg(long)]
    no_docs: bool,
}

/// Which storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    AtExpiry,
    UpstreamSaysExpired,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::AtExpiry => "at expiry",
            Kind::UpstreamSaysExpired => "upstream says expired",
        }
    }
}

/// One storm's outcome.
#[derive(Debug, serde::Serialize)]
struct Storm {
    kind: Kind,
    round: u64,
    /// Refresh-token grants the token endpoint answered during the storm.
    token_requests: u64,
    /// Refreshes it refused because the refresh token was not the latest (a lost
    /// rotation).
    stale_refreshes: u64,
    /// Requests the upstream refused for an expired token during the storm.
    upstream_refusals: u64,
    /// Distinct access tokens the upstream accepted during the storm.
    tokens_accepted: usize,
    stats: Stats,
}

/// The token endpoint: counts grants, rotates refresh tokens, issues tokens whose
/// lifetime the benchmark sets per phase.
pub(super) struct TokenEndpoint {
    delay: Duration,
    pub(super) lifetime_s: AtomicU64,
    codes: AtomicU64,
    pub(super) refreshes: AtomicU64,
    pub(super) stale: AtomicU64,
    next: AtomicU64,
    /// The refresh token that is valid now, and when the last access token was issued.
    current: Mutex<(String, Instant)>,
}

impl TokenEndpoint {
    pub(super) fn new(delay: Duration) -> Self {
        Self {
            delay,
            lifetime_s: AtomicU64::new(LONG_LIFETIME_S),
            codes: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            next: AtomicU64::new(1),
            current: Mutex::new((String::new(), Instant::now())),
        }
    }

    fn issued_at(&self) -> Instant {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

/// `POST /token` (form body, client secret in the body or as Basic auth; not checked:
/// only the host calls it).
pub(super) async fn token(State(ep): State<Arc<TokenEndpoint>>, body: Bytes) -> Response {
    tokio::time::sleep(ep.delay).await;
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let refused = |error: &str| {
        (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error}))).into_response()
    };
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            ep.codes.fetch_add(1, Ordering::SeqCst);
        }
        Some("refresh_token") => {
            let current = ep
                .current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone();
            if form.get("refresh_token") != Some(&current) {
                ep.stale.fetch_add(1, Ordering::SeqCst);
                return refused("invalid_grant");
            }
            ep.refreshes.fetch_add(1, Ordering::SeqCst);
        }
        _ => return refused("unsupported_grant_type"),
    }
    let n = ep.next.fetch_add(1, Ordering::SeqCst);
    let refresh = format!("storm-refresh-{n}");
    *ep.current.lock().unwrap_or_else(|p| p.into_inner()) = (refresh.clone(), Instant::now());
    axum::Json(json!({
        "access_token": format!("storm-access-{n}"),
        "token_type": "Bearer",
        "expires_in": ep.lifetime_s.load(Ordering::SeqCst),
        "refresh_token": refresh,
        "scope": "read",
    }))
    .into_response()
}

/// The upstream: 200 for a token it has not been told is expired, 401 `invalid_token`
/// for one it has.
#[derive(Default)]
pub(super) struct ApiUpstream {
    /// Access tokens accepted since the last [`ApiUpstream::expire_accepted`].
    accepted: Mutex<HashSet<String>>,
    /// Access tokens accepted since the last [`ApiUpstream::take_storm`].
    storm: Mutex<HashSet<String>>,
    expired: Mutex<HashSet<String>>,
    refusals: AtomicU64,
}

impl ApiUpstream {
    /// Every token accepted so far is refused from now on.
    fn expire_accepted(&self) {
        let seen = std::mem::take(&mut *self.accepted.lock().unwrap_or_else(|p| p.into_inner()));
        self.expired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(seen);
    }

    /// The tokens accepted since the last call.
    fn take_storm(&self) -> HashSet<String> {
        std::mem::take(&mut *self.storm.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

pub(super) async fn upstream(State(up): State<Arc<ApiUpstream>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let expired = up
        .expired
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&token);
    if token.is_empty() || expired {
        up.refusals.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                r#"Bearer error="invalid_token", error_description="the access token expired""#,
            )],
            "expired",
        )
            .into_response();
    }
    up.storm
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token.clone());
    up.accepted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token);
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"items":[]}"#,
    )
        .into_response()
}

pub(super) fn serve(name: &str, router: Router) -> Result<ServerThread> {
    ServerThread::start(name, 1, move |listener, shutdown| async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = shutdown.await;
            })
            .await;
    })
}

pub fn run(root: &Path, args: RefreshArgs) -> Result<()> {
    let bin = prepare_portcullis(root, args.no_build).map_err(anyhow::Error::msg)?;
    let busy = super::busy_before();
    let endpoint = Arc::new(TokenEndpoint::new(Duration::from_millis(
        args.token_delay_ms,
    )));
    let up = Arc::new(ApiUpstream::default());
    let as_server = serve(
        "storm-token-endpoint",
        Router::new()
            .route("/token", axum::routing::post(token))
            .with_state(endpoint.clone()),
    )?;
    let up_server = serve(
        "storm-upstream",
        Router::new().fallback(upstream).with_state(up.clone()),
    )?;
    let dir = tempfile::tempdir().context("temp dir")?;
    let config = host_config(as_server.addr, up_server.addr);
    let (mut guard, addr) = spawn_portcullis(&bin, dir.path(), &config, None, &[])?;
    let log = dir.path().join("stderr.log");
    let storms = (|| {
        connect(addr, CONNECTOR).context("connecting the storm user")?;
        // Long-lived tokens first: the connect issued one, which the upstream sees here
        // so that it can refuse it later.
        let (status, _) = load::probe(addr, &storm_path()).context("a first request")?;
        if status != StatusCode::OK {
            bail!("the first request answered {status}");
        }
        let mut storms = Vec::new();
        for round in 1..=args.rounds {
            super::check_interrupted()?;
            up.expire_accepted();
            let s = storm(
                &args,
                addr,
                &endpoint,
                &up,
                Kind::UpstreamSaysExpired,
                round,
                Instant::now() + CONNECT_LEAD,
            )?;
            report(&s);
            storms.push(s);
        }
        // Short-lived tokens from the next refresh on; one request makes it.
        endpoint
            .lifetime_s
            .store(SHORT_LIFETIME_S, Ordering::SeqCst);
        up.expire_accepted();
        let (status, _) =
            load::probe(addr, &storm_path()).context("switching to short-lived tokens")?;
        if status != StatusCode::OK {
            bail!("the request that refreshes to a short-lived token answered {status}");
        }
        for round in 1..=args.rounds {
            super::check_interrupted()?;
            let lifetime = Duration::from_secs(SHORT_LIFETIME_S);
            // The host counts from when the answer reached it, a moment after this.
            let due = endpoint.issued_at() + lifetime - lifetime / 5 + Duration::from_millis(2);
            let s = storm(&args, addr, &endpoint, &up, Kind::AtExpiry, round, due)?;
            report(&s);
            storms.push(s);
        }
        if let Some(status) = guard.exited() {
            bail!("portcullis exited during the benchmark ({status})");
        }
        Ok(storms)
    })()
    .map_err(|e| with_log_tail(e, &log));
    guard.stop();
    let storms = storms?;
    let codes = endpoint.codes.load(Ordering::SeqCst);
    let md = markdown(&args, &storms, codes, busy);
    println!("{md}");
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&json!({
            "settings": {"requests": args.requests, "rounds": args.rounds, "token_delay_ms": args.token_delay_ms},
            "authorization_code_grants": codes,
            "storms": storms,
        }))?;
        std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    let bad: Vec<String> = storms
        .iter()
        .filter(|s| !passed(s, args.requests))
        .map(|s| format!("{} round {}", s.kind.label(), s.round))
        .collect();
    if !bad.is_empty() {
        bail!(
            "storms without exactly one token request, or with failed requests: {}",
            bad.join(", ")
        );
    }
    super::update_docs(root, "refresh", &md, args.no_docs)
}

fn storm_path() -> String {
    format!("/v1/connectors/{CONNECTOR}/items")
}

/// A per-user OAuth connector to `upstream` whose tokens come from `token_endpoint`.
pub(super) fn per_user_connector(
    token_endpoint: SocketAddr,
    upstream: SocketAddr,
) -> serde_json::Value {
    json!({
        "protocol": "http",
        "url": format!("http://{upstream}"),
        "auth": {
            "type": "oauth2_authorization_code",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "authorization_url": format!("http://{token_endpoint}/authorize"),
            "token_url": format!("http://{token_endpoint}/token"),
            "scopes": ["read"],
        },
    })
}

fn host_config(token_endpoint: SocketAddr, upstream: SocketAddr) -> serde_json::Value {
    json!({
        "identity": {"mode": "loopback"},
        "egress": {"allow_loopback": true},
        "connectors": {"servers": {CONNECTOR: per_user_connector(token_endpoint, upstream)}},
        "grants": [{
            "src": ["(loopback)"],
            "app": {"tailscale.com/cap/aperture": [{"role": "admin"}, {"connectors": [format!("{CONNECTOR}/**")]}]},
        }],
    })
}

/// Connects the `(loopback)` user: starts the authorization as the dashboard does and
/// comes back to the callback with a code, as the user's browser would after consent.
pub(super) fn connect(addr: SocketAddr, connector: &str) -> Result<()> {
    let start = Target::post(
        "connect",
        addr,
        format!("/api/connectors/{connector}/connect"),
        Bytes::new(),
        Vec::new(),
        Bytes::from_static(b"auth_url"),
    );
    let (status, body) = load::probe_target(&start)?;
    if status != StatusCode::OK {
        bail!(
            "POST /api/connectors/{connector}/connect answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let answer: serde_json::Value = serde_json::from_slice(&body).context("connect answer")?;
    let auth_url = url::Url::parse(answer["auth_url"].as_str().unwrap_or_default())
        .context("the connect answer's auth_url")?;
    let param = |name: &str| {
        auth_url
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .with_context(|| format!("auth_url has no {name}"))
    };
    let callback = url::Url::parse(&param("redirect_uri")?).context("redirect_uri")?;
    let mut back = url::Url::parse("http://x/").context("url")?;
    back.set_path(callback.path());
    back.query_pairs_mut()
        .append_pair("code", "storm-code")
        .append_pair("state", &param("state")?);
    let path = format!("{}?{}", back.path(), back.query().unwrap_or_default());
    let (status, body) = load::probe(addr, &path)?;
    if status != StatusCode::OK {
        bail!(
            "the callback answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// `args.requests` concurrent requests, each on a connection of its own opened
/// beforehand, sent at `at`.
fn storm(
    args: &RefreshArgs,
    addr: SocketAddr,
    endpoint: &TokenEndpoint,
    up: &ApiUpstream,
    kind: Kind,
    round: u64,
    at: Instant,
) -> Result<Storm> {
    let n = usize::try_from(args.requests).unwrap_or(1);
    // Open the connections shortly before the storm (the host closes idle ones).
    if let Some(wait) = at.checked_duration_since(Instant::now() + CONNECT_LEAD) {
        std::thread::sleep(wait);
    }
    let refreshes = endpoint.refreshes.load(Ordering::SeqCst);
    let stale = endpoint.stale.load(Ordering::SeqCst);
    let refusals = up.refusals.load(Ordering::SeqCst);
    up.take_storm();
    let spec = LoadSpec {
        warmup: Phase {
            concurrency: n,
            max_requests: 0,
            max_duration: Duration::ZERO,
        },
        measure: Phase {
            concurrency: n,
            max_requests: args.requests,
            max_duration: STORM_TIMEOUT,
        },
        client_threads: 1,
        start_at: Some(at),
    };
    let stats = load::run(&Target::get("storm", addr, storm_path()), &spec)?;
    Ok(Storm {
        kind,
        round,
        token_requests: endpoint.refreshes.load(Ordering::SeqCst) - refreshes,
        stale_refreshes: endpoint.stale.load(Ordering::SeqCst) - stale,
        upstream_refusals: up.refusals.load(Ordering::SeqCst) - refusals,
        tokens_accepted: up.take_storm().len(),
        stats,
    })
}

fn passed(s: &Storm, requests: u64) -> bool {
    s.token_requests == 1
        && s.stale_refreshes == 0
        && s.stats.ok == requests
        && s.stats.bad_status == 0
        && s.stats.errors == 0
}

fn report(s: &Storm) {
    eprintln!(
        "bench: {} round {}: {} token request(s), {} ok, {} failed, p50 {:.1} ms, max {:.1} ms",
        s.kind.label(),
        s.round,
        s.token_requests,
        s.stats.ok,
        s.stats.bad_status + s.stats.errors,
        s.stats.p50_us / 1000.0,
        s.stats.max_us / 1000.0,
    );
}

fn markdown(args: &RefreshArgs, storms: &[Storm], codes: u64, busy: Option<f64>) -> String {
    let machine = MachineInfo::detect();
    let mut md = String::new();
    let _ = writeln!(md, "### Refresh storms (`cargo xtask bench refresh`)\n");
    md.push_str(&machine.header(&super::utc_now_string(), busy));
    let _ = writeln!(
        md,
        "- Storm: {} concurrent `GET /v1/connectors/{CONNECTOR}/items` from one user, one \
         connection each (opened beforehand), through a per-user OAuth connector \
         (`oauth2_authorization_code`), release build. The token endpoint and the upstream \
         run in the benchmark process; the token endpoint answers after {} ms, rotates the \
         refresh token on every refresh and refuses any but the latest.",
        args.requests, args.token_delay_ms
    );
    let _ = writeln!(
        md,
        "- *At expiry*: tokens live {SHORT_LIFETIME_S} s and the storm is sent the instant \
         the host considers them due (a fifth of their life early), racing its background \
         refresher. *Upstream says expired*: tokens live {LONG_LIFETIME_S} s, but just \
         before the storm the upstream starts answering 401 `invalid_token` to the current \
         one: each request that reaches it with that token is refused and asks for a \
         refresh (the *upstream 401s* column). *Access tokens seen*: distinct tokens the \
         upstream accepted during the storm (2 when the storm straddles the refresh: the \
         old token, still valid, then the new one; 1 when every request waited for it).\n"
    );
    let _ = writeln!(
        md,
        "| Storm | round | requests | answered 200 | failed | token requests | lost rotations | upstream 401s | access tokens seen | p50 ms | p99 ms | max ms |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for s in storms {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            s.kind.label(),
            s.round,
            args.requests,
            s.stats.ok,
            s.stats.bad_status + s.stats.errors,
            s.token_requests,
            s.stale_refreshes,
            s.upstream_refusals,
            s.tokens_accepted,
            s.stats.p50_us / 1000.0,
            s.stats.p99_us / 1000.0,
            s.stats.max_us / 1000.0,
        );
    }
    let all = storms.iter().all(|s| passed(s, args.requests));
    let _ = writeln!(
        md,
        "\n- {}: every storm {} exactly one token request, and every request answered 200. \
         Authorization-code grants over the run: {codes} (the one connect).",
        if all { "Aim met" } else { "**Aim missed**" },
        if all { "made" } else { "should have made" },
    );
    md
}
