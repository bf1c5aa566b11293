//! `ANY /v1/connectors/<id>/<path>`: the HTTP API connector proxy.
//!
//! Order of checks, each before any upstream contact: the connector exists (404), the
//! method is allowed (405), the path is clean (400), the caller holds a grant for
//! `<id>/proxy/<path>` (403). Then the caller's credentials and identity headers are
//! stripped, the connector's credential is added, and bodies stream both ways; the
//! response is cut at 50 MB.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body::Frame;

use std::collections::HashMap;
use std::time::Instant;

use crate::app::{App, Connector, Snapshot};
use crate::config::Protocol;
use crate::connections::ConnError;
use crate::credentials::{Credential, CredentialError};
use crate::egress::{EgressError, InBody};
use crate::error::ApiError;
use crate::identity::Caller;
use crate::plugins::{CallError, DiscoveryOutcome, Plugin, types, wit_method};
use types::Hook;

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

/// Which connector a response belongs to, for the request log and metrics.
#[derive(Debug, Clone)]
pub struct ConnectorTag(pub String);

pub async fn handle(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    req: Request,
) -> Response {
    let (id, result) = proxy(&app, &snapshot, &caller, req).await;
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    if let Some(id) = id {
        resp.extensions_mut().insert(ConnectorTag(id));
    }
    resp
}

async fn proxy(
    app: &App,
    snapshot: &Snapshot,
    caller: &Caller,
    req: Request,
) -> (Option<String>, Result<Response, ApiError>) {
    let raw_path = req.uri().path().to_owned();
    let rest = raw_path.strip_prefix(PREFIX).unwrap_or_default();
    let (id, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(connector) = snapshot.connectors.get(id).cloned() else {
        return (
            None,
            Err(ApiError::not_found(format!(
                "no connector \"{id}\" is configured; check the connector ID in the URL (/v1/connectors/<id>/<path>)"
            ))),
        );
    };
    let tag = Some(connector.id.clone());
    (
        tag,
        forward(
            app,
            Some(&snapshot.policy.access(caller)),
            caller,
            &connector,
            path,
            req,
        )
        .await,
    )
}

/// Sends `req` to the connector. `access` is checked for a proxy grant; `None` means
/// the caller was authorized for this request otherwise (a plugin tool's grant).
async fn forward(
    app: &App,
    access: Option<&crate::policy::Access<'_>>,
    caller: &Caller,
    connector: &Connector,
    path: &str,
    req: Request,
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
    if access.is_some_and(|a| !a.allows(id, "proxy", &path.grant)) {
        return Err(ApiError::forbidden(format!(
            "access denied: {} has no grant for \"{id}/proxy\"; ask an admin for a connectors grant such as \"{id}/proxy\" or \"{id}/**\"",
            caller.login
        )));
    }
    if connector.protocol != Protocol::Http {
        return Err(ApiError::not_found(format!(
            "connector \"{id}\" is an MCP connector; reach it through /v1/mcp"
        )));
    }
    let plugin = match &connector.provider {
        Some(p) => Some(app.plugins.get(p).ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                format!(
                    "connector \"{id}\" uses provider \"{p}\", which is not loaded from the registry; GET /api/registry lists what loaded and why entries failed"
                ),
            )
        })?),
        None => None,
    };
    let base = match (&connector.url, &plugin) {
        (Some(u), _) => u.clone(),
        (None, Some(p)) => url::Url::parse(&p.defaults.api_url)
            .map_err(|e| ApiError::bad_gateway("connector_misconfigured", e.to_string()))?,
        (None, None) => {
            return Err(ApiError::bad_gateway(
                "connector_misconfigured",
                format!(
                    "connector \"{id}\" has no url; an admin must set connectors.servers.{id}.url"
                ),
            ));
        }
    };

    let (parts, body) = req.into_parts();
    let mut headers = request_headers(&parts.headers);
    let query = parts.uri.query();
    let ctx = match &plugin {
        Some(p) if p.has(Hook::ShapeRequest) || p.has(Hook::ClassifyResponse) => {
            Some(connection_context(app, connector, caller, p, &base).await?)
        }
        _ => None,
    };
    let mut grant = None;
    let mut url = match (&plugin, &ctx) {
        (Some(p), Some(ctx)) if p.has(Hook::ShapeRequest) => {
            let req = types::OutgoingRequest {
                method: wit_method(&parts.method).unwrap_or(types::Method::Get),
                path: format!("/{}", path.forward),
                query: query.map(str::to_owned),
                headers: wit_headers(&headers),
            };
            let shaped = app
                .plugins
                .shape_checked(
                    p,
                    ctx.clone(),
                    req,
                    &base,
                    connector.credential.header_name(),
                )
                .await
                .map_err(|e| plugin_error(id, &e))?;
            shaped.apply_headers(&mut headers);
            grant = shaped.grant;
            shaped.url
        }
        _ => join(&base, &path.forward, query),
    };

    add_credential(
        app,
        connector,
        caller,
        grant.as_deref(),
        &mut headers,
        &mut url,
    )
    .await?;
    let mut sent_auth = headers.get(http::header::AUTHORIZATION).cloned();
    // A bodiless GET or HEAD can be sent again if the provider says "retry", or with a
    // refreshed per-user token after a 401.
    let resendable = matches!(parts.method, Method::GET | Method::HEAD)
        && parts.headers.get(http::header::CONTENT_LENGTH).is_none()
        && parts.headers.get(http::header::TRANSFER_ENCODING).is_none();
    let classifying = plugin
        .as_ref()
        .is_some_and(|p| p.has(Hook::ClassifyResponse));
    let per_user = match &connector.credential {
        Credential::PerUser(pu) => Some(pu),
        _ => None,
    };
    let mut retry_headers =
        (resendable && (classifying || per_user.is_some())).then(|| headers.clone());

    // The caller's body streams through as it is: with its Content-Length if it had one,
    // and not at all for a GET without one.
    let mut resp = app
        .egress
        .send(parts.method.clone(), &url, headers, body)
        .await
        .map_err(|e| egress_error(id, &e))?;

    if resp.status() == StatusCode::UNAUTHORIZED {
        connector.credential.rejected(sent_auth.as_ref());
        app.discoveries.forget(id);
        if let (Some(pu), Some(sent)) = (per_user, &sent_auth) {
            app.connections.rejected(pu, &caller.login, sent).await;
            // Refresh now and send once more, when the request can be repeated.
            if let Some(h) = retry_headers.as_mut() {
                let header = app
                    .connections
                    .authorize(pu, &caller.login, grant.as_deref())
                    .await
                    .map_err(|e| conn_error(&e))?;
                if Some(&header) != sent_auth.as_ref() {
                    h.insert(http::header::AUTHORIZATION, header.clone());
                    sent_auth = Some(header);
                    tracing::info!(connector = id, "retrying once with the refreshed token");
                    resp = app
                        .egress
                        .send(parts.method.clone(), &url, h.clone(), Body::empty())
                        .await
                        .map_err(|e| egress_error(id, &e))?;
                }
            }
        }
    }
    let classifier = match (&plugin, ctx) {
        (Some(p), Some(ctx)) if p.classifies(resp.status().as_u16()) => Some((p, ctx)),
        _ => None,
    };
    let Some((plugin, ctx)) = classifier else {
        let mut out = relay(
            id,
            parts.method == Method::HEAD,
            app.egress.read_timeout(),
            resp,
            Bytes::new(),
        );
        connector.credential.scrub_response(id, out.headers_mut());
        return Ok(out);
    };

    let idle = app.egress.read_timeout();
    let mut retried = false;
    loop {
        let limit = plugin.defaults.classify_body_bytes as usize;
        let wanted = plugin.classifies(resp.status().as_u16());
        let (parts_up, body_up) = resp.into_parts();
        let (prefix, rest) = if wanted && limit > 0 && parts.method != Method::HEAD {
            read_prefix(body_up, limit, idle).await
        } else {
            (Bytes::new(), Some(body_up))
        };
        let class = if wanted {
            app.plugins
                .classify_response(
                    plugin,
                    ctx.clone(),
                    parts_up.status.as_u16(),
                    wit_headers(&parts_up.headers),
                    prefix[..prefix.len().min(limit)].to_vec(),
                )
                .await
                .unwrap_or(types::Classification::Ok)
        } else {
            types::Classification::Ok
        };
        if let (types::Classification::Retry(delay), Some(h), false) =
            (&class, &retry_headers, retried)
        {
            retried = true;
            let wait = Duration::from_millis(u64::from(delay.unwrap_or(250)).min(2_000));
            tracing::info!(
                connector = id,
                wait_ms = wait.as_millis() as u64,
                "provider asked for a retry; retrying once"
            );
            tokio::time::sleep(wait).await;
            resp = app
                .egress
                .send(parts.method.clone(), &url, h.clone(), Body::empty())
                .await
                .map_err(|e| egress_error(id, &e))?;
            continue;
        }
        let upstream = http::Response::from_parts(parts_up, ());
        let mut out = match rest {
            Some(body) => relay(
                id,
                parts.method == Method::HEAD,
                idle,
                upstream.map(|()| body),
                prefix,
            ),
            None => relay_bytes(upstream, prefix),
        };
        if let types::Classification::Reauth(_) = &class {
            connector.credential.rejected(sent_auth.as_ref());
            if let (Some(pu), Some(sent)) = (per_user, &sent_auth) {
                app.connections.rejected(pu, &caller.login, sent).await;
            }
            app.discoveries.forget(id);
        }
        mark(id, &class, out.headers_mut());
        connector.credential.scrub_response(id, out.headers_mut());
        return Ok(out);
    }
}

/// Runs a request a plugin tool built (`build-tool-call`) through the proxy path with
/// the caller's credential. The caller's tool grant was checked by the MCP layer.
pub async fn tool_request(
    app: &App,
    caller: &Caller,
    connector: &Connector,
    tr: types::ToolRequest,
) -> Result<Response, ApiError> {
    let method = match tr.method {
        types::Method::Get => Method::GET,
        types::Method::Head => Method::HEAD,
        types::Method::Post => Method::POST,
        types::Method::Put => Method::PUT,
        types::Method::Patch => Method::PATCH,
        types::Method::Delete => Method::DELETE,
        types::Method::Options => Method::OPTIONS,
    };
    let path = tr.path.trim_start_matches('/');
    let mut uri = format!("{PREFIX}{}/{path}", connector.id);
    if let Some(q) = tr.query.as_deref().filter(|q| !q.is_empty()) {
        uri.push('?');
        uri.push_str(q);
    }
    let mut req = Request::new(tr.body.map(Body::from).unwrap_or_else(Body::empty));
    *req.method_mut() = method;
    *req.uri_mut() = uri.parse().map_err(|_| {
        ApiError::bad_gateway(
            "plugin_error",
            format!(
                "connector \"{}\": the plugin built an unusable tool request path",
                connector.id
            ),
        )
    })?;
    for (name, value) in tr.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            req.headers_mut().append(n, v);
        }
    }
    forward(app, None, caller, connector, path, req).await
}

/// The plugin context without discovery: input defaults, `provider_vars`, and the
/// caller's token variables for a per-user connector. Enough to list a plugin's tools.
pub fn plugin_context(
    app: &App,
    connector: &Connector,
    user: Option<&str>,
    plugin: &Plugin,
) -> Option<types::Context> {
    let base = match &connector.url {
        Some(u) => u.to_string(),
        None => url::Url::parse(&plugin.defaults.api_url).ok()?.to_string(),
    };
    let mut variables: Vec<(String, String)> = plugin
        .defaults
        .inputs
        .iter()
        .filter(|i| !connector.provider_vars.iter().any(|(k, _)| *k == i.name))
        .filter_map(|i| Some((i.name.clone(), i.default_value.clone()?)))
        .collect();
    variables.extend(connector.provider_vars.iter().cloned());
    if let (Credential::PerUser(pu), Some(user)) = (&connector.credential, user) {
        variables.extend(app.connections.variables(pu, user));
    }
    Some(types::Context {
        connector: connector.id.clone(),
        base_url: base,
        variables,
    })
}

/// The connection's variables for the plugin: input defaults, then the connector's
/// `provider_vars`, then what discovery found (run once and cached).
pub async fn connection_context(
    app: &App,
    connector: &Connector,
    caller: &Caller,
    plugin: &Arc<Plugin>,
    base: &url::Url,
) -> Result<types::Context, ApiError> {
    let id = connector.id.as_str();
    // A per-user connection's variables come from that user's token responses.
    let user =
        matches!(connector.credential, Credential::PerUser(_)).then_some(caller.login.as_str());
    let mut ctx = plugin_context(app, connector, user, plugin).ok_or_else(|| {
        ApiError::bad_gateway(
            "connector_misconfigured",
            format!("connector \"{id}\" has no usable url"),
        )
    })?;
    ctx.base_url = base.to_string();
    if !plugin.has(Hook::Discover) {
        return Ok(ctx);
    }
    let key = format!("{id}\n{}\n{:?}\n{user:?}", ctx.base_url, ctx.variables);
    let outcome = app
        .discoveries
        .get_or_run(key, || discover(app, connector, caller, plugin, base, &ctx))
        .await?;
    match outcome {
        DiscoveryOutcome::Done(vars) => {
            ctx.variables.extend(vars);
            Ok(ctx)
        }
        DiscoveryOutcome::Choose(sel) => {
            let options: Vec<String> = sel
                .options
                .iter()
                .map(|o| format!("\"{}\" ({})", o.value, o.label))
                .collect();
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "provider_choice_required",
                format!(
                    "connector \"{id}\" can reach several {} accounts; an admin must choose one by setting connectors.servers.{id}.provider_vars.{} to one of: {}",
                    plugin.defaults.display_name,
                    sel.variable,
                    options.join(", ")
                ),
            ))
        }
        DiscoveryOutcome::Failed(why) => Err(ApiError::bad_gateway(
            "discovery_failed",
            format!(
                "connector \"{id}\": {} discovery failed: {why}",
                plugin.defaults.display_name
            ),
        )),
    }
}

/// Runs the plugin's discovery with the connector's credential on each request.
async fn discover(
    app: &App,
    connector: &Connector,
    caller: &Caller,
    plugin: &Arc<Plugin>,
    base: &url::Url,
    ctx: &types::Context,
) -> Result<DiscoveryOutcome, ApiError> {
    let id = connector.id.as_str();
    let idle = app.egress.read_timeout();
    app.plugins
        .run_discovery(
            plugin,
            base,
            ctx,
            connector.credential.header_name(),
            |req| async move {
                let mut headers = req.headers;
                let mut url = req.url;
                add_credential(
                    app,
                    connector,
                    caller,
                    req.grant.as_deref(),
                    &mut headers,
                    &mut url,
                )
                .await
                .map_err(|e| e.message)?;
                let body = req.body.map_or_else(Body::empty, Body::from);
                let resp = app
                    .egress
                    .send(req.method, &url, headers, body)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let headers = wit_headers(&response_headers(resp.headers()));
                let (body, rest) = read_prefix(resp.into_body(), DISCOVERY_BODY_BYTES, idle).await;
                if rest.is_some() {
                    return Err(format!(
                        "the response is larger than {DISCOVERY_BODY_BYTES} bytes"
                    ));
                }
                Ok(types::Response {
                    status,
                    headers,
                    body: body.to_vec(),
                })
            },
        )
        .await
        .map_err(|e| plugin_error(id, &e))
}

/// Largest discovery response handed to a plugin.
const DISCOVERY_BODY_BYTES: usize = 1 << 20;

/// Reads up to `limit` bytes of a body. Returns them and, if the body did not end
/// within them, the rest (to be relayed after the prefix).
async fn read_prefix(mut body: InBody, limit: usize, idle: Duration) -> (Bytes, Option<InBody>) {
    use http_body_util::BodyExt as _;
    let mut buf = bytes::BytesMut::new();
    while buf.len() <= limit {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(_))) | Err(_) => return (buf.freeze(), Some(body)),
            Ok(None) => return (buf.freeze(), None),
        }
    }
    (buf.freeze(), Some(body))
}

/// Marks a classified response for the agent: `Portcullis-Upstream-Class`, a
/// `Retry-After` when the provider gave a delay the upstream did not send as a header,
/// and the provider's error text for failures hidden in a success status.
fn mark(id: &str, class: &types::Classification, headers: &mut HeaderMap) {
    let (name, detail) = match class {
        types::Classification::Ok => return,
        types::Classification::Retry(_) => ("retry", None),
        types::Classification::RateLimited(secs) => {
            if let Some(s) = secs
                && !headers.contains_key(http::header::RETRY_AFTER)
            {
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from(*s));
            }
            ("rate-limited", None)
        }
        types::Classification::Reauth(why) => ("reauth", Some(why)),
        types::Classification::Failed(why) => ("failed", Some(why)),
    };
    headers.insert(UPSTREAM_CLASS, HeaderValue::from_static(name));
    if let Some(why) = detail {
        let clean: String = why
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(200)
            .collect();
        if let Ok(v) = HeaderValue::try_from(clean) {
            headers.insert(UPSTREAM_ERROR, v);
        }
        tracing::info!(connector = id, class = name, "upstream reported: {why}");
    }
}

/// Response header naming the plugin's classification (absent when `ok`).
pub const UPSTREAM_CLASS: HeaderName = HeaderName::from_static("portcullis-upstream-class");
/// Response header with the provider's error text for `failed` and `reauth`.
pub const UPSTREAM_ERROR: HeaderName = HeaderName::from_static("portcullis-upstream-error");

fn wit_headers(headers: &HeaderMap) -> Vec<types::Header> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn plugin_error(id: &str, e: &CallError) -> ApiError {
    match e {
        CallError::Refused { .. } => ApiError::bad_request(format!("connector \"{id}\": {e}")),
        CallError::Busy { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin_busy",
            format!("connector \"{id}\": {e}"),
        ),
        _ => ApiError::bad_gateway(
            "plugin_failed",
            format!("connector \"{id}\": {e}; the request was not sent"),
        ),
    }
}

/// Discovery results per connector (and base URL and variables, so a config change
/// starts afresh), computed once at a time. Failures and pending choices are kept
/// briefly so a retrying agent does not hammer the provider.
#[derive(Default)]
pub struct Discoveries {
    entries: std::sync::Mutex<HashMap<String, Arc<DiscoverySlot>>>,
}

/// One connector's discovery: locked while it runs, so concurrent requests wait for it.
type DiscoverySlot = tokio::sync::Mutex<Option<(Instant, DiscoveryOutcome)>>;

/// How long a failed or undecided discovery is remembered.
const DISCOVERY_RETRY_AFTER: Duration = Duration::from_secs(30);

impl Discoveries {
    async fn get_or_run<F, Fut>(&self, key: String, run: F) -> Result<DiscoveryOutcome, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<DiscoveryOutcome, ApiError>>,
    {
        let slot = {
            let mut map = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(key).or_default().clone()
        };
        let mut entry = slot.lock().await;
        if let Some((at, outcome)) = entry.as_ref() {
            let fresh = matches!(outcome, DiscoveryOutcome::Done(_))
                || at.elapsed() < DISCOVERY_RETRY_AFTER;
            if fresh {
                return Ok(outcome.clone());
            }
        }
        let outcome = run().await?;
        *entry = Some((Instant::now(), outcome.clone()));
        Ok(outcome)
    }

    /// Forgets a connector's results (its credential was rejected).
    pub fn forget(&self, connector: &str) {
        let prefix = format!("{connector}\n");
        let mut map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|k, _| !k.starts_with(&prefix));
    }

    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// Builds the response for the caller: hop-by-hop and `Set-Cookie` headers removed, body
/// streamed and capped. Redirects are relayed as they are, never followed.
fn relay(
    id: &str,
    head: bool,
    idle: Duration,
    resp: http::Response<InBody>,
    prefix: Bytes,
) -> Response {
    let (parts, body) = resp.into_parts();
    let mut headers = response_headers(&parts.headers);
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_RESPONSE_BYTES) {
        // The body will be cut, so the length would be a lie.
        headers.remove(http::header::CONTENT_LENGTH);
    }
    let body = if head {
        Body::empty()
    } else {
        Body::new(Capped::new(body, id, idle, prefix))
    };
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    out
}

/// Like [`relay`] for a response whose whole body was already read.
fn relay_bytes(resp: http::Response<()>, body: Bytes) -> Response {
    let (parts, ()) = resp.into_parts();
    let mut headers = response_headers(&parts.headers);
    headers.remove(http::header::CONTENT_LENGTH);
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    out
}

/// A request path, cleaned: what is forwarded, and what grants are checked against.
#[derive(Debug, PartialEq, Eq)]
pub struct CleanPath {
    /// Forwarded to the upstream: empty segments collapsed, the caller's trailing slash
    /// kept (APIs may distinguish it), percent-encoding untouched (`%2F` inside a
    /// segment stays encoded, as some APIs need).
    pub forward: String,
    /// Checked against `<id>/proxy/<path>` grants: every segment percent-decoded and
    /// split again at any `/` or `\` that decoding produced, no trailing slash. A
    /// segment that the upstream might read as two can therefore never slip past a
    /// one-segment (`*`) grant.
    pub grant: String,
}

/// Cleans the path after `/v1/connectors/<id>/`. Refused (400): `.` or `..` segments,
/// raw or percent-encoded (up to three times), also with `;params` (`..;`, as servlet
/// containers read it) or hidden behind an encoded separator; raw backslashes (URL
/// parsers turn them into `/`); NUL.
pub fn normalize_path(path: &str) -> Result<CleanPath, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(format!(
            "the request path is not allowed ({why}); send a plain path below the connector's base URL"
        ))
    };
    if path.contains('\\') {
        return Err(bad("backslash"));
    }
    let trailing = path.ends_with('/');
    let mut forward = Vec::new();
    let mut grant: Vec<String> = Vec::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let mut decoded = seg.to_owned();
        for _ in 0..3 {
            let next = percent_encoding::percent_decode_str(&decoded)
                .decode_utf8_lossy()
                .into_owned();
            if next == decoded {
                break;
            }
            decoded = next;
        }
        if decoded.contains('\0') {
            return Err(bad("NUL byte"));
        }
        for part in decoded.split(['/', '\\']) {
            let bare = part.split(';').next().unwrap_or_default();
            if bare == "." || bare == ".." {
                return Err(bad("path traversal"));
            }
            if !part.is_empty() {
                grant.push(part.to_owned());
            }
        }
        forward.push(seg);
    }
    let mut forward = forward.join("/");
    if trailing && !forward.is_empty() {
        forward.push('/');
    }
    Ok(CleanPath {
        forward,
        grant: grant.join("/"),
    })
}

/// `base` + `/` + `path` (+ `?query`), with exactly one slash at the join.
fn join(base: &url::Url, path: &str, query: Option<&str>) -> url::Url {
    let mut url = base.clone();
    let joined = format!("{}/{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url.set_query(query);
    url
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), removed in both directions.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect()
}

/// The caller's headers minus credentials, identity and forwarding headers, and the
/// hop-by-hop set. `Host` is dropped too: the client sets the upstream's.
pub fn request_headers(incoming: &HeaderMap) -> HeaderMap {
    let named = connection_named(incoming);
    let mut out = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        let n = name.as_str();
        let strip = HOP_BY_HOP.contains(&n)
            || named.contains(name)
            || matches!(
                n,
                "authorization" | "cookie" | "host" | "forwarded" | "expect"
            )
            || n.starts_with("proxy-")
            || n.starts_with("tailscale-")
            || n.starts_with("x-forwarded-");
        if !strip {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The upstream's headers minus `Set-Cookie` and the hop-by-hop set.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let named = connection_named(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        let n = name.as_str();
        if !(HOP_BY_HOP.contains(&n) || named.contains(name) || n == "set-cookie") {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn egress_error(id: &str, e: &EgressError) -> ApiError {
    match e {
        EgressError::Refused { .. } => ApiError::bad_gateway(
            "egress_refused",
            format!(
                "connector \"{id}\": {e}. Upstreams on loopback, link-local and metadata addresses are blocked; \
                 point the connector at a routable address"
            ),
        ),
        EgressError::Connect(_) => ApiError::bad_gateway(
            "upstream_unreachable",
            format!(
                "connector \"{id}\": {e}; check the connector's url and that the upstream is running"
            ),
        ),
        EgressError::Timeout(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("connector \"{id}\": {e}; the upstream did not answer in time"),
        ),
        EgressError::Other { .. } => {
            ApiError::bad_gateway("upstream_error", format!("connector \"{id}\": {e}"))
        }
    }
}

fn credential_error(e: &CredentialError) -> ApiError {
    match e {
        CredentialError::Token { .. } => {
            ApiError::bad_gateway("credential_unavailable", e.to_string())
        }
        CredentialError::Internal(_) => {
            ApiError::bad_gateway("credential_unavailable", e.to_string())
        }
    }
}

/// Adds the connector's credential to an outgoing request: the shared one, or the
/// calling user's own token (never anyone else's) for per-user OAuth.
async fn add_credential(
    app: &App,
    connector: &Connector,
    caller: &Caller,
    grant: Option<&str>,
    headers: &mut HeaderMap,
    url: &mut url::Url,
) -> Result<(), ApiError> {
    match &connector.credential {
        Credential::PerUser(pu) => {
            let header = app
                .connections
                .authorize(pu, &caller.login, grant)
                .await
                .map_err(|e| conn_error(&e))?;
            headers.insert(http::header::AUTHORIZATION, header);
            Ok(())
        }
        c => c
            .apply(&connector.id, &app.egress, headers, url)
            .await
            .map_err(|e| credential_error(&e)),
    }
}

/// The HTTP error for a per-user credential that cannot be used.
pub fn conn_error(e: &ConnError) -> ApiError {
    let (status, code) = match e {
        ConnError::NeedsAuth { .. }
        | ConnError::Misconfigured { .. }
        | ConnError::NoSuchGrant { .. } => (StatusCode::UNAUTHORIZED, "needs_auth"),
        ConnError::RefreshFailed { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "token_refresh_failed")
        }
        ConnError::ProviderUnavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable")
        }
        ConnError::Setup { .. } => (StatusCode::BAD_GATEWAY, "connector_misconfigured"),
        ConnError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let err = ApiError::new(status, code, e.to_string());
    match e {
        ConnError::RefreshFailed { retry_secs, .. } => err.retry_after(*retry_secs),
        _ => err,
    }
}

/// A response body cut after 50 MB and abandoned after `idle` without data. The cut is
/// silent to the caller (the status was already sent) but logged. Once the limit is
/// reached, one more frame is awaited to tell a body that ended exactly there from one
/// that was cut.
struct Capped {
    inner: InBody,
    /// Bytes already read from `inner` (to classify the response), sent first.
    prefix: Option<Bytes>,
    left: u64,
    connector: String,
    done: bool,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Capped {
    fn new(inner: InBody, connector: &str, idle: Duration, prefix: Bytes) -> Self {
        Self {
            inner,
            prefix: (!prefix.is_empty()).then_some(prefix),
            left: MAX_RESPONSE_BYTES,
            connector: connector.to_owned(),
            done: false,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
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
        let frame = if let Some(prefix) = self.prefix.take() {
            Frame::data(prefix)
        } else {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => {
                    if self.timer.as_mut().poll(cx).is_ready() {
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
            }
        };
        let deadline = tokio::time::Instant::now() + self.idle;
        self.timer.as_mut().reset(deadline);
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
        self.done || (self.prefix.is_none() && self.inner.is_end_stream())
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
    use super::*;

    fn clean(p: &str) -> (String, String) {
        let c = normalize_path(p).expect("clean");
        (c.forward, c.grant)
    }

    fn both(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn paths_normalise() {
        assert_eq!(clean("user"), both("user", "user"));
        assert_eq!(clean("repos//a///b"), both("repos/a/b", "repos/a/b"));
        assert_eq!(clean("repos/a/"), both("repos/a/", "repos/a"));
        assert_eq!(clean(""), both("", ""));
        assert_eq!(clean("/"), both("", ""));
        assert_eq!(clean("a/..b/c..;x"), both("a/..b/c..;x", "a/..b/c..;x"));
        // Encoded separators are forwarded as sent but checked as the segments they could be.
        assert_eq!(
            clean("projects/group%2Fproj"),
            both("projects/group%2Fproj", "projects/group/proj")
        );
        assert_eq!(clean("a%5Cb"), both("a%5Cb", "a/b"));
        assert_eq!(clean("q/caf%C3%A9"), both("q/caf%C3%A9", "q/café"));
    }

    #[test]
    fn traversal_is_refused_in_every_spelling() {
        for p in [
            "..",
            "a/../b",
            "a/./b",
            "%2e%2e/x",
            "%2E%2e",
            "%252e%252e/x",
            "a%2F..%2Fb",
            "a%5C..%5Cb",
            "..%5Cx",
            "a%00b",
            "public/..;/admin",
            "..;jsessionid=1/x",
            "%2e%2e%3b/x",
            "x\\y",
            "x\\..\\y",
        ] {
            assert!(normalize_path(p).is_err(), "{p} should be refused");
        }
    }

    #[test]
    fn join_keeps_one_slash_and_the_query() {
        let b = url::Url::parse("https://api.example.com/v1/").expect("url");
        assert_eq!(
            join(&b, "pulls", Some("state=open&per_page=5")).as_str(),
            "https://api.example.com/v1/pulls?state=open&per_page=5"
        );
        let b = url::Url::parse("https://api.example.com").expect("url");
        assert_eq!(
            join(&b, "user", None).as_str(),
            "https://api.example.com/user"
        );
        assert_eq!(join(&b, "", None).as_str(), "https://api.example.com/");
    }

    #[test]
    fn request_header_stripping() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer caller"),
            ("cookie", "a=b"),
            ("proxy-authorization", "x"),
            ("tailscale-user-login", "x"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("host", "portcullis"),
            ("accept", "application/json"),
            ("x-request-id", "abc"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let out = request_headers(&h);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["accept", "x-request-id"]);
    }

    #[test]
    fn response_header_stripping() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("set-cookie", "s=1"),
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("location", "https://x"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let out = response_headers(&h);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["content-type", "location"]);
    }
}
