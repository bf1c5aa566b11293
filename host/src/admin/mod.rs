//! The caller-facing connector API and the OAuth callback pages:
//!
//! - `GET /api/connectors`: every connector with the caller's status on it
//!   (`No access`, `Needs auth`, `Ready`, `Misconfigured`);
//! - `POST /api/connectors/<id>/connect`: starts a per-user authorization and returns
//!   `{"auth_url": ...}`;
//! - `DELETE /api/connectors/<id>/connection`: deletes (and revokes) the caller's tokens;
//! - `GET /api/connectors/<id>/capabilities`: the tools, resources and templates the
//!   caller may use of the connector;
//! - `GET /aperture/auth/<id>/callback`: completes an authorization in the browser and
//!   answers with a page that says what happened and what to do.
//!
//! Every route sits behind the identity layer: a connection always belongs to the
//! identified caller, and nobody can act on another user's.
//!
//! # Layout
//!
//! - this file: the caller-facing routes above, `whoami`, `registry`, `metrics`, `healthz`;
//! - [`config`]: the config admin API (`/api/config`, `/api/config/connectors`);
//! - [`secrets`]: the write-only secrets API (`/api/secrets`).
//!
//! Writes and the config itself need role `admin` ([`require_admin`]).

pub mod config;
pub mod secrets;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::json;

use crate::connections::{CallbackQuery, PENDING_TTL, PerUser, Status};
use crate::connector::Connector;
use crate::error::ApiError;
use crate::identity::Caller;
use crate::openapi::ErrorBody;
use crate::outbound::connection_error as conn_error;
use crate::proxy::ConnectorTag;
use crate::state::{App, Snapshot};

/// Where a connector's OAuth callback lives, under the host's URL.
pub fn callback_path(id: &str) -> String {
    format!("/aperture/auth/{id}/callback")
}

/// The config and secrets APIs are for admins only.
pub fn require_admin(snapshot: &Snapshot, caller: &Caller) -> Result<(), ApiError> {
    if snapshot.policy.access(caller).is_admin() {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{} is not an admin; the config and secrets APIs need a grant with {{\"role\": \"admin\"}}",
        caller.login
    )))
}

/// The URL browsers reach this host at: `public_url` from the config, else the
/// request's `Host` over plain HTTP (the tailnet already encrypts).
pub(crate) fn host_url(snapshot: &Snapshot, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(u) = &snapshot.config.public_url {
        return Ok(u.as_str().trim_end_matches('/').to_owned());
    }
    Ok(format!("http://{}", request_host(headers)?))
}

fn request_host(headers: &HeaderMap) -> Result<http::uri::Authority, ApiError> {
    headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "the request has no usable Host header to build the OAuth redirect URI from; send one, or set public_url in the config",
            )
        })
}

/// The redirect URI for a connect. A dynamically registered client gets whatever
/// redirect URI Portcullis registers, so for DCR the `Host` header alone is not
/// trusted (a forged one would send another user's code elsewhere): it must be
/// `public_url` or the address the host is bound to. Providers with a hand-registered
/// client check the redirect URI themselves.
fn redirect_uri(
    app: &App,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    pu: &PerUser,
    id: &str,
) -> Result<String, ApiError> {
    if pu.is_dcr() && snapshot.config.public_url.is_none() {
        let host = request_host(headers)?;
        let bound = app.bound.get().map(ToString::to_string);
        if bound.as_deref() != Some(host.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "public_url_required",
                format!(
                    "connector \"{id}\" registers its OAuth client dynamically, so its callback URL must be fixed: an admin must set public_url in the config (this request came for host \"{host}\")"
                ),
            ));
        }
    }
    Ok(format!(
        "{}{}",
        host_url(snapshot, headers)?,
        callback_path(id)
    ))
}

/// `GET /api/connectors`: the caller's view, with status.
#[utoipa::path(get, path = "/api/connectors", tag = "connectors",
    responses((status = 200, description = "`{\"connectors\": [...]}`: each connector the caller has a grant on, with its status for them (`ready`, `needs_auth`, `misconfigured`, `no_access`), health and checks", body = Object)))]
pub async fn list(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let access = snapshot.policy.access(&caller);
    let base = host_url(&snapshot, &headers).ok();
    let mut ids: Vec<&String> = snapshot.connectors.keys().collect();
    ids.sort();
    let list: Vec<serde_json::Value> = ids
        .into_iter()
        .filter_map(|id| snapshot.connectors.get(id))
        .map(|c| {
            let pu = c.per_user();
            let status = if !access.any_on(&c.id) {
                Status::NoAccess
            } else if let Some(pu) = pu {
                app.connections.status(pu, &caller.login)
            } else {
                Status::Ready
            };
            let conf = snapshot.config.connectors.get(&c.id);
            let mut v = json!({
                "id": c.id,
                "description": c.description,
                "protocol": c.protocol,
                "provider": conf.map(|k| k.provider.as_str()).unwrap_or("Custom"),
                "auth_type": conf.map(|k| k.auth.type_name()).unwrap_or("none"),
                "per_user": pu.is_some(),
                "status": status,
                "health": health(&app, c, &caller),
            });
            if pu.is_some() {
                if let Some(b) = &base {
                    v["redirect_uri"] = json!(format!("{b}{}", callback_path(&c.id)));
                }
                v["connect"] = json!(format!("/api/connectors/{}/connect", c.id));
            }
            // The upstream asked for wider scopes (403 insufficient_scope): connecting
            // again asks for them.
            if let Some(scopes) = pu.and_then(|pu| app.connections.wanted_scopes(pu, &caller.login))
            {
                v["step_up"] = json!({"scopes": scopes});
            }
            v
        })
        .collect();
    Json(json!({ "connectors": list }))
}

/// What the host last saw of a connector's upstream, as this caller uses it: each check
/// with its result, and `state` (`ok`, `failing`, or `unknown` before any check ran).
fn health(app: &App, c: &Connector, caller: &Caller) -> serde_json::Value {
    use crate::health::Check;
    let user = c.per_user().map(|_| caller.login.as_str());
    let mut checks = serde_json::Map::new();
    if let Some(p) = &c.provider {
        let loaded = app.plugins.get(p).is_some();
        checks.insert(
            "provider".into(),
            if loaded {
                json!({"ok": true})
            } else {
                json!({"ok": false, "error": format!("provider \"{p}\" is not loaded; GET /api/registry says why")})
            },
        );
    }
    if c.protocol == crate::config::Protocol::Mcp && c.url.is_none() {
        checks.insert(
            "mcp".into(),
            json!({"ok": false, "error": "the connector has no url"}),
        );
    } else if let Some(probe) = app.health.get(&c.id, user, Check::McpCatalog) {
        checks.insert("mcp".into(), json!(probe));
    }
    if let Some(probe) = app.health.get(&c.id, user, Check::Discovery) {
        checks.insert("discovery".into(), json!(probe));
    }
    let state = if checks.values().any(|v| v["ok"] == false) {
        "failing"
    } else if checks.is_empty() {
        "unknown"
    } else {
        "ok"
    };
    json!({"state": state, "checks": checks})
}

/// `GET /api/connectors/<id>/capabilities`: what the caller may use of the connector,
/// for the dashboard's capability list. The tools, resources and resource templates of
/// an MCP connector (fetched now for a per-user connection not yet used) or of an HTTP
/// connector's provider plugin, named as agents call them through `/v1/mcp`. An empty
/// list for a connector whose upstream answers nothing says more than a status does:
/// the upstream works, or it does not.
#[utoipa::path(get, path = "/api/connectors/{id}/capabilities", tag = "connectors",
    params(("id" = String, Path, description = "Connector ID")),
    responses(
        (status = 200, description = "`tools`, `prompts`, `resources` and `templates` the caller may use, named as through `/v1/mcp`; the caller's `status`; `endpoint`, and `mcp_endpoint` (`/v1/mcp/<id>`, or null when the connector has no MCP server)", body = Object),
        (status = 404, description = "No such connector, or none the caller has a grant on", body = ErrorBody),
    ))]
pub async fn capabilities(
    State(gw): State<Arc<crate::mcp::Gateway>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let c = find(&snapshot, &id)?;
        if !snapshot.policy.access(&caller).any_on(&c.id) {
            return Err(no_grant(&caller, &c.id));
        }
        let status = match c.per_user() {
            Some(pu) => gw.connections.status(pu, &caller.login),
            None => Status::Ready,
        };
        // Boxed: the upstream session's futures are deep, and this one nests them once more.
        let view = Box::pin(crate::mcp::connector_view(&gw, &snapshot, &caller, c, true)).await;
        let tools: Vec<_> = view
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "title": t.title, "description": t.description}))
            .collect();
        let resources: Vec<_> = view
            .resources
            .iter()
            .map(|r| json!({"uri": r.uri, "name": r.name, "description": r.description}))
            .collect();
        let prompts: Vec<_> = view
            .prompts
            .iter()
            .map(|p| json!({"name": p.name, "title": p.title, "description": p.description}))
            .collect();
        let templates: Vec<_> = view
            .templates
            .iter()
            .map(|t| json!({"uri_template": t.uri_template, "name": t.name, "description": t.description}))
            .collect();
        let endpoint = match c.protocol {
            crate::config::Protocol::Mcp => crate::mcp::ENDPOINT.to_owned(),
            crate::config::Protocol::Http => format!("/v1/connectors/{}/", c.id),
        };
        // `/v1/mcp/<id>` serves an MCP connector, or an HTTP one's plugin tools.
        let alone = (c.protocol == crate::config::Protocol::Mcp || !tools.is_empty())
            .then(|| format!("{}/{}", crate::mcp::ENDPOINT, c.id));
        Ok(Json(json!({
            "id": c.id,
            "protocol": c.protocol,
            "status": status,
            "endpoint": endpoint,
            "mcp_endpoint": alone,
            "tools": tools,
            "prompts": prompts,
            "resources": resources,
            "templates": templates,
        })))
    }
    .await;
    tagged(&snapshot, &id, result)
}

fn no_grant(caller: &Caller, id: &str) -> ApiError {
    ApiError::forbidden(format!(
        "access denied: {} has no grant on \"{id}\"; ask an admin for a connectors grant such as \"{id}/**\"",
        caller.login
    ))
}

fn find<'a>(snapshot: &'a Snapshot, id: &str) -> Result<&'a Arc<Connector>, ApiError> {
    snapshot.connectors.get(id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no connector \"{id}\" is configured; GET /api/connectors lists the connectors"
        ))
    })
}

fn must_be_per_user(c: &Connector) -> Result<&Arc<PerUser>, ApiError> {
    c.per_user().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_per_user",
            format!(
                "connector \"{}\" uses a credential shared by every user; there is nothing to connect or disconnect",
                c.id
            ),
        )
    })
}

/// Starts `caller`'s authorization of per-user connector `c` and returns the provider's
/// authorize URL to open in their browser. Used by `POST .../connect` and by an MCP
/// call of a connector the caller has not connected ([`crate::mcp`]).
pub(crate) async fn begin_connect(
    app: &App,
    snapshot: &Snapshot,
    caller: &Caller,
    c: &Connector,
    headers: &HeaderMap,
) -> Result<url::Url, ApiError> {
    if !snapshot.policy.access(caller).any_on(&c.id) {
        return Err(no_grant(caller, &c.id));
    }
    let pu = must_be_per_user(c)?;
    // One authorization serves every connector sharing the connection, so it asks for
    // all their scopes.
    let mut scopes: Vec<String> = Vec::new();
    for other in snapshot.connectors.values().filter_map(|o| o.per_user()) {
        if other.connection == pu.connection {
            for s in &other.scopes {
                if !scopes.contains(s) {
                    scopes.push(s.clone());
                }
            }
        }
    }
    // Keep the connector's own order first.
    scopes.sort_by_key(|s| pu.scopes.iter().position(|p| p == s).unwrap_or(usize::MAX));
    let redirect = redirect_uri(app, snapshot, headers, pu, &c.id)?;
    app.connections
        .connect(pu, &scopes, &caller.login, &redirect)
        .await
        .map_err(|e| conn_error(&e))
}

/// `POST /api/connectors/<id>/connect` → `{"auth_url": ...}`.
#[utoipa::path(post, path = "/api/connectors/{id}/connect", tag = "connectors",
    params(("id" = String, Path, description = "A per-user OAuth connector's ID")),
    responses(
        (status = 200, description = "`{\"auth_url\": ..., \"expires_in\": 600}`: open `auth_url` in the caller's browser", body = Object),
        (status = 400, description = "The connector does not use per-user OAuth", body = ErrorBody),
        (status = 404, description = "No such connector", body = ErrorBody),
        (status = 502, description = "The provider's authorization server could not be used (discovery or registration failed)", body = ErrorBody),
    ))]
pub async fn connect(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let c = find(&snapshot, &id)?;
        let url = begin_connect(&app, &snapshot, &caller, c, &headers).await?;
        Ok(Json(json!({
            "auth_url": url.as_str(),
            "expires_in": PENDING_TTL.as_secs(),
        })))
    }
    .await;
    tagged(&snapshot, &id, result)
}

/// `DELETE /api/connectors/<id>/connection`: the caller's own tokens only.
#[utoipa::path(delete, path = "/api/connectors/{id}/connection", tag = "connectors",
    params(("id" = String, Path, description = "A per-user OAuth connector's ID")),
    responses(
        (status = 200, description = "`{\"disconnected\": bool, \"status\": ...}`: the caller's tokens removed (and revoked where the provider allows)", body = Object),
        (status = 404, description = "No such connector", body = ErrorBody),
    ))]
pub async fn disconnect(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let c = find(&snapshot, &id)?;
        let pu = must_be_per_user(c)?;
        // Ending the connection also ends the caller's MCP sessions on it (the hub
        // follows `Connections::changes`).
        let had = app.connections.disconnect(pu, &caller.login).await;
        if had {
            app.audit.connection(&caller, &c.id, "disconnected");
        }
        Ok(Json(json!({
            "disconnected": had,
            "status": if snapshot.policy.access(&caller).any_on(&c.id) {
                Status::NeedsAuth
            } else {
                Status::NoAccess
            },
        })))
    }
    .await;
    tagged(&snapshot, &id, result)
}

/// Tags the response with the connector for logs and metrics, if it is a configured one
/// (an ID from the URL alone would let anyone mint metric series).
fn tagged(
    snapshot: &Snapshot,
    id: &str,
    result: Result<Json<serde_json::Value>, ApiError>,
) -> Response {
    let mut resp = result.map_or_else(IntoResponse::into_response, IntoResponse::into_response);
    if let Some(c) = snapshot.connectors.get(id) {
        resp.extensions_mut().insert(ConnectorTag(c.clone()));
    }
    resp
}

/// `GET /aperture/auth/<id>/callback`: the browser comes back from the provider.
#[utoipa::path(get, path = "/aperture/auth/{id}/callback", tag = "connectors",
    params(("id" = String, Path, description = "Connector ID"),
           ("code" = Option<String>, Query, description = "Authorization code"),
           ("state" = Option<String>, Query, description = "The state the connect step issued"),
           ("error" = Option<String>, Query, description = "The provider's refusal")),
    responses(
        (status = 200, description = "An HTML page: connected", content_type = "text/html"),
        (status = 400, description = "An HTML page: the authorization failed, and why", content_type = "text/html"),
    ))]
pub async fn callback(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let lookup = |cid: &str| {
        snapshot
            .connectors
            .get(cid)
            .and_then(|c| c.per_user().cloned())
    };
    let result = app
        .connections
        .callback(&id, &caller.login, &q, lookup)
        .await;
    let connected = result.is_ok();
    let mut resp = match result {
        Ok(Status::Misconfigured) => page(
            StatusCode::OK,
            "Connected, without offline access",
            &format!(
                "{id} is connected for {}, but the provider gave no refresh token, so the connection ends when the access token expires. Ask your admin to enable offline access for the connector (scopes or auth_params), then choose Reconnect.",
                caller.login
            ),
        ),
        Ok(_) => page(
            StatusCode::OK,
            "Connected",
            &format!(
                "{id} is connected for {}. You can close this tab; your agents can use the connector now.",
                caller.login
            ),
        ),
        Err(e) => page(e.status(), "Connection failed", &e.to_string()),
    };
    // The caller's MCP tools of this connector (and of the others on the connection)
    // load now, and open MCP sessions are told.
    if connected {
        app.audit.connection(&caller, &id, "connected");
        app.connected(caller.clone(), &id);
    }
    if let Some(c) = snapshot.connectors.get(&id) {
        resp.extensions_mut().insert(ConnectorTag(c.clone()));
    }
    resp
}

/// A small self-contained page; `message` is escaped.
fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · Portcullis</title>\
         <style>body{{font:16px system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem}}</style></head>\
         <body><h1>{t}</h1><p>{m}</p><p><a href=\"/ui/#/connectors\">Back to your connectors</a></p></body></html>",
        t = html_escape::encode_text(title),
        m = html_escape::encode_text(message),
    );
    (
        status,
        [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-store"),
            (http::header::REFERRER_POLICY, "no-referrer"),
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /aperture/auth/<id>/client.json`: the client ID metadata document of a
/// discovered (`oauth2_dcr`) connector, which Portcullis uses as its `client_id` at
/// authorization servers that take them (the MCP authorization specification's
/// preferred registration). Served with no identity: the authorization server fetches
/// it from outside the tailnet, and it holds nothing secret. Only under an https
/// `public_url`, the document's own URL.
#[utoipa::path(get, path = "/aperture/auth/{id}/client.json", tag = "connectors",
    params(("id" = String, Path, description = "A discovered (`oauth2_dcr`) connector's ID")),
    responses(
        (status = 200, description = "The client metadata document (`client_id`, `redirect_uris`, ...)", body = Object),
        (status = 404, description = "No such discovered connector, or no https `public_url`", body = ErrorBody),
    ))]
pub async fn client_metadata(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let snapshot = app.snapshot();
    let document = snapshot
        .connectors
        .get(&id)
        .and_then(|c| c.per_user())
        .filter(|pu| pu.is_dcr())
        .zip(snapshot.config.public_url.as_ref())
        .and_then(|(_, base)| {
            let redirect = format!(
                "{}{}",
                base.as_str().trim_end_matches('/'),
                callback_path(&id)
            );
            let url = crate::connections::own_metadata_document(&redirect)?;
            Some(json!({
                "client_id": url.as_str(),
                "client_name": "Portcullis",
                "client_uri": base.as_str(),
                "redirect_uris": [redirect],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            }))
        });
    match document {
        Some(d) => Json(d).into_response(),
        None => crate::error::ApiError::not_found(format!(
            "no client metadata document for \"{id}\": it is published for oauth2_dcr connectors when public_url is an https URL"
        ))
        .into_response(),
    }
}

/// `GET /healthz`: readiness, with no identity (probes come from outside the tailnet).
/// 503 while the host cannot serve (tailscaled unreachable in `tailscale` mode), so a
/// load balancer or orchestrator sends no traffic that would only get 503s.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "`{\"status\": \"ok\"}`: serving", body = Object),
        (status = 503, description = "`{\"status\": \"not_ready\", \"error\": ...}`: the identity source (`identity_unavailable`) or the shared PostgreSQL store (`store_unavailable`) cannot be reached", body = Object),
    ))]
pub async fn healthz(State(app): State<Arc<App>>) -> Response {
    let not_ready = |code: &str, message: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "error": {"code": code, "message": message},
            })),
        )
            .into_response()
    };
    if let Some(why) = app.not_ready() {
        return not_ready("identity_unavailable", why);
    }
    // A shared store (PostgreSQL) that does not answer: new connections, refreshes and
    // secret changes fail closed, so a load balancer should send requests elsewhere.
    // Probes are unauthenticated, so the answer names no database (user, host, name):
    // the reason goes to the log, once per outage.
    static STORE_DOWN: AtomicBool = AtomicBool::new(false);
    let vault = app.vault.clone();
    let failed = match tokio::task::spawn_blocking(move || vault.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(format!("the store check failed: {e}")),
    };
    match failed {
        None => {
            if STORE_DOWN.swap(false, Ordering::Relaxed) {
                tracing::info!("the store answers again; ready");
            }
            Json(json!({"status": "ok"})).into_response()
        }
        Some(why) => {
            if !STORE_DOWN.swap(true, Ordering::Relaxed) {
                tracing::error!("not ready: {why}");
            }
            not_ready(
                "store_unavailable",
                "the shared store (the database) does not answer: tokens and secrets cannot be stored or refreshed until it does; the host's log says why".to_owned(),
            )
        }
    }
}

/// `GET /metrics`: Prometheus metrics, for `admin` or `read_metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition (needs role `admin` or `read_metrics`)", content_type = "application/openmetrics-text", body = String),
    ))]
pub async fn metrics(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Response {
    if !snapshot.policy.access(&caller).may_read_metrics() {
        return ApiError::forbidden(format!(
            "{} may not read metrics; grant role \"admin\" or {{\"read_metrics\": true}}",
            caller.login
        ))
        .into_response();
    }
    // Upstream health as last seen, read now rather than pushed by every check.
    for id in snapshot.connectors.keys() {
        if let Some(p) = app.health.get(id, None, crate::health::Check::McpCatalog) {
            app.metrics.upstream_up(id, p.ok);
        }
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// Who the host thinks the caller is, and their role: the first thing to check when a
/// grant does not seem to work.
#[utoipa::path(get, path = "/api/whoami", tag = "connectors",
    responses((status = 200, description = "`login`, `kind` (`user`, `tagged`, `loopback`), `node`, `tags`, `groups` and `role`", body = Object)))]
pub async fn whoami(
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Json<serde_json::Value> {
    let access = snapshot.policy.access(&caller);
    Json(serde_json::json!({
        "login": caller.login,
        "kind": format!("{:?}", caller.kind).to_lowercase(),
        "node": caller.node,
        "tags": caller.tags,
        "groups": caller.groups,
        "role": access.role(),
    }))
}

/// The provider registry for the picker: every loaded provider with its defaults, and
/// every entry that failed to load with the reason. Defaults hold no secrets, so any
/// identified caller may read them.
#[utoipa::path(get, path = "/api/registry", tag = "connectors",
    responses((status = 200, description = "`providers` (each with its defaults and picker entry) and `broken` (entries that failed to load, with why)", body = Object)))]
pub async fn registry(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(crate::plugins::registry_json(&app.plugins))
}

/// The config's JSON Schema ([`crate::config::schema`]), for editors and config tools.
#[utoipa::path(get, path = "/api/schema/config.json", tag = "config",
    responses((status = 200, description = "The config's JSON Schema (draft 2020-12)", content_type = "application/schema+json", body = Object)))]
pub async fn config_schema() -> Response {
    static SCHEMA: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| crate::config::schema::config_schema().to_string());
    (
        [(http::header::CONTENT_TYPE, "application/schema+json")],
        SCHEMA.as_str(),
    )
        .into_response()
}

/// Everything else.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("nothing is served at {}", req.uri().path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_escape_what_they_show() {
        let resp = page(StatusCode::BAD_REQUEST, "Oops", "<script>alert(1)</script>");
        assert_eq!(resp.status(), 400);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("&lt;script&gt;"), "{text}");
        assert!(!text.contains("<script>"), "{text}");
    }
}
