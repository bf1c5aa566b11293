//! The MCP server agents talk to, and its HTTP entry.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorData, Implementation,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ResourceContents, ServerCapabilities,
    ServerConfig, SubscriptionFilter,
};
use rmcp::service::{
    NotificationContext, Peer, RequestContext, RoleServer, ServiceError, SubscriptionContext,
    SubscriptionSink,
};
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;

use super::template::{UriTemplate, normalize};
use super::{Gateway, Kind, builtin, prefixed, split, view};
use crate::audit::{Decision, Via};
use crate::config::Config;
use crate::credentials::Credential;
use crate::identity::Caller;
use crate::openapi::ErrorBody;
use crate::state::Snapshot;

/// Where the aggregated endpoint is mounted.
pub const ENDPOINT: &str = "/v1/mcp";
/// Longest a notification to one client may take to be queued.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request body `/v1/mcp` accepts.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The rmcp handler: one per session (or per sessionless request).
#[derive(Clone)]
pub struct Aggregator {
    app: Arc<Gateway>,
}

/// Who is asking, from the HTTP request rmcp hands to the handler.
struct Who {
    caller: Arc<Caller>,
    snap: Arc<Snapshot>,
    base_url: String,
}

fn who(ext: &rmcp::model::Extensions) -> Result<Who, ErrorData> {
    let parts = ext
        .get::<http::request::Parts>()
        .ok_or_else(|| ErrorData::internal_error("the request lost its HTTP context", None))?;
    let caller = parts
        .extensions
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| ErrorData::invalid_request("the caller is not identified", None))?;
    let snap = parts
        .extensions
        .get::<Arc<Snapshot>>()
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("no config snapshot for the request", None))?;
    let base_url = match &snap.config.public_url {
        Some(u) => u.as_str().trim_end_matches('/').to_owned(),
        None => {
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    Ok(Who {
        caller,
        snap,
        base_url,
    })
}

fn not_available(kind: &str, name: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!(
            "{kind} \"{name}\" is not available to you: it does not exist, its server is unreachable, or you have no grant for it; list them again, or ask an admin for a connectors grant"
        ),
        None,
    )
}

fn upstream_error(connector: &str, e: anyhow::Error) -> ErrorData {
    match e.downcast::<ServiceError>() {
        // The upstream's own JSON-RPC error passes through as it is.
        Ok(ServiceError::McpError(e)) => e,
        Ok(e) => ErrorData::internal_error(
            format!("connector \"{connector}\": the MCP server call failed: {e}"),
            None,
        ),
        Err(e) => ErrorData::internal_error(format!("connector \"{connector}\": {e:#}"), None),
    }
}

impl Aggregator {
    /// Registers a client to be told when what `w.caller` sees changes, from now on.
    async fn watch(&self, w: &Who, channel: Channel) {
        let v = view(&self.app, &w.snap, &w.caller, false).await;
        self.app.hub.sessions.add(Arc::new(ClientSession {
            caller: w.caller.clone(),
            channel,
            seen: Mutex::new(Some(Seen::of(&v))),
        }));
    }

    /// `tools/call`: the built-in and plugin tools run here, the rest go to the tool's
    /// upstream; an ungranted tool is refused as if it did not exist.
    /// `decision` says whether a grant allowed the tool (for the audit trail).
    async fn call_tool_inner(
        &self,
        mut req: CallToolRequestParams,
        cx: &RequestContext<RoleServer>,
        decision: &mut Decision,
    ) -> Result<CallToolResponse, ErrorData> {
        let w = who(&cx.extensions)?;
        let full = req.name.to_string();
        let (id, tool) = split(Kind::Tool, &full).ok_or_else(|| not_available("tool", &full))?;
        let access = w.snap.policy.access(&w.caller);
        let Some(grant) = super::grant(&access, id, Kind::Tool, tool) else {
            tracing::info!(caller = %w.caller.login, tool = %full, "tool call refused: no grant");
            *decision = Decision::Denied;
            return Err(not_available("tool", &full));
        };
        *decision = Decision::Granted(grant);
        if let Some(r) = builtin::call(
            &self.app,
            &w.snap,
            &w.caller,
            &w.base_url,
            id,
            tool,
            req.arguments.as_ref(),
        )
        .await
        {
            return Ok(CallToolResponse::Complete(r));
        }
        let up = self.upstream_for(&w, id).await?;
        if !up.listing().tools.iter().any(|t| t.name == tool) {
            return Err(not_available("tool", &full));
        }
        req.name = tool.to_owned().into();
        up.with_session(|s| {
            let req = req.clone();
            async move { s.call_tool(req).await }
        })
        .await
        .map_err(|e| upstream_error(id, e))
    }

    /// The upstream for a call, or why there is none.
    async fn upstream_for(&self, w: &Who, id: &str) -> Result<Arc<super::Upstream>, ErrorData> {
        let c = w
            .snap
            .connectors
            .get(id)
            .filter(|c| c.protocol == crate::config::Protocol::Mcp)
            .ok_or_else(|| not_available("connector", id))?;
        match self.app.hub.upstream(&self.app, c, &w.caller, true).await {
            Some(up) => Ok(up),
            None if matches!(c.credential, Credential::PerUser(_)) => {
                Err(ErrorData::invalid_request(
                    format!(
                        "connector \"{id}\" needs your authorization first: POST /api/connectors/{id}/connect and open the auth_url it returns in your browser"
                    ),
                    None,
                ))
            }
            None => Err(not_available("connector", id)),
        }
    }
}

impl rmcp::ServerHandler for Aggregator {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_resources_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("portcullis", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Portcullis gateway: tools are named <connector>_<tool>, resources <connector>-<uri>. Call aperture_list_connectors to find the HTTP APIs you can reach through the gateway.",
        )
    }

    async fn on_initialized(&self, cx: NotificationContext<RoleServer>) {
        let Ok(w) = who(&cx.extensions) else { return };
        self.watch(&w, Channel::Session(cx.peer.clone())).await;
    }

    /// MCP 2026-07-28 has no sessions: a client that wants to hear about changes keeps a
    /// `subscriptions/listen` request open. Both list-changed kinds are offered.
    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(
            SubscriptionFilter::builder()
                .tools_list_changed()
                .resources_list_changed()
                .build(),
        )
    }

    async fn listen(&self, cx: SubscriptionContext) -> Result<(), ErrorData> {
        let w = who(&cx.request_context().extensions)?;
        let open = Arc::new(AtomicBool::new(true));
        let channel = Channel::Subscription {
            sink: cx.sink().clone(),
            open: open.clone(),
        };
        self.watch(&w, channel).await;
        cx.cancelled().await;
        open.store(false, Ordering::Relaxed);
        tracing::debug!(caller = %w.caller.login, "MCP subscription ended");
        Ok(())
    }

    async fn list_tools(
        &self,
        _page: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let w = who(&cx.extensions)?;
        let v = view(&self.app, &w.snap, &w.caller, true).await;
        Ok(ListToolsResult::with_all_items(v.tools))
    }

    async fn call_tool(
        &self,
        req: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let full = req.name.to_string();
        let mut decision = Decision::Undecided;
        let result = self.call_tool_inner(req, &cx, &mut decision).await;
        // Counted and audited per configured connector only: a name from the request
        // alone would let any caller mint metric series.
        if let (Ok(w), Some((id, tool))) = (who(&cx.extensions), split(Kind::Tool, &full))
            && (w.snap.connectors.contains_key(id) || id == builtin::APERTURE)
        {
            let outcome = match &result {
                Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => "tool_error",
                Ok(_) => "ok",
                Err(_) => "error",
            };
            self.app.metrics.mcp_call(id, outcome);
            let (grant, audited) = decision.outcome(outcome);
            self.app
                .audit
                .call(&w.caller, id, Via::Tool { name: tool }, grant, audited);
        }
        result
    }

    async fn list_resources(
        &self,
        _page: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let w = who(&cx.extensions)?;
        let v = view(&self.app, &w.snap, &w.caller, true).await;
        Ok(ListResourcesResult::with_all_items(v.resources))
    }

    async fn list_resource_templates(
        &self,
        _page: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let w = who(&cx.extensions)?;
        let v = view(&self.app, &w.snap, &w.caller, true).await;
        Ok(ListResourceTemplatesResult::with_all_items(v.templates))
    }

    async fn read_resource(
        &self,
        req: ReadResourceRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let full = req.uri.clone();
        let mut decision = Decision::Undecided;
        let result = self.read_resource_inner(req, &cx, &mut decision).await;
        // Audited per configured connector only, as tool calls are. A read that failed
        // before its grant was decided (no upstream, not connected) is an error, not a
        // denial.
        if let (Ok(w), Some((id, uri))) = (who(&cx.extensions), split(Kind::Resource, &full))
            && w.snap.connectors.contains_key(id)
        {
            let (grant, outcome) = decision.outcome(if result.is_ok() { "ok" } else { "error" });
            self.app
                .audit
                .call(&w.caller, id, Via::Resource { uri }, grant, outcome);
        }
        result
    }
}

impl Aggregator {
    /// `resources/read`: `decision` says whether a grant allowed the resource (for the
    /// audit trail).
    async fn read_resource_inner(
        &self,
        mut req: ReadResourceRequestParams,
        cx: &RequestContext<RoleServer>,
        decision: &mut Decision,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let w = who(&cx.extensions)?;
        let full = req.uri.clone();
        let (id, uri) =
            split(Kind::Resource, &full).ok_or_else(|| not_available("resource", &full))?;
        let access = w.snap.policy.access(&w.caller);
        // Like a tool call: no upstream is touched (or named) without a grant on it.
        if !access.any_on(id) {
            tracing::info!(caller = %w.caller.login, resource = %full, "resource read refused: no grant");
            *decision = Decision::Denied;
            return Err(not_available("resource", &full));
        }
        let up = self.upstream_for(&w, id).await?;
        let listing = up.listing();
        // A listed resource needs its own grant; any other URI needs a grant on a
        // template that produces it. Compared after normalizing percent-encoding, so
        // another spelling of a listed resource is that resource.
        let wanted = normalize(uri);
        let allowed = if let Some(r) = listing
            .resources
            .iter()
            .find(|r| r.uri == uri || normalize(&r.uri) == wanted)
        {
            super::grant(&access, id, Kind::Resource, &r.uri).map(|g| (g, r.uri.clone()))
        } else {
            listing.templates.iter().find_map(|t| {
                super::grant(&access, id, Kind::Template, &t.uri_template)
                    .filter(|_| {
                        UriTemplate::parse(&t.uri_template).is_some_and(|tpl| tpl.matches(&wanted))
                    })
                    .map(|g| (g, wanted.clone()))
            })
        };
        let Some((grant, upstream_uri)) = allowed else {
            tracing::info!(caller = %w.caller.login, resource = %full, "resource read refused");
            *decision = Decision::Denied;
            return Err(not_available("resource", &full));
        };
        *decision = Decision::Granted(grant);
        req.uri = upstream_uri;
        let resp = up
            .with_session(|s| {
                let req = req.clone();
                async move { s.read_resource(req).await }
            })
            .await
            .map_err(|e| upstream_error(id, e))?;
        Ok(match resp {
            ReadResourceResponse::Complete(mut r) => {
                for c in &mut r.contents {
                    if let ResourceContents::TextResourceContents { uri, .. }
                    | ResourceContents::BlobResourceContents { uri, .. } = c
                    {
                        *uri = prefixed(id, Kind::Resource, uri);
                    }
                }
                ReadResourceResponse::Complete(r)
            }
            other => other,
        })
    }
}

/// A client to tell when its caller's visible catalog changes.
pub struct ClientSession {
    caller: Arc<Caller>,
    channel: Channel,
    seen: Mutex<Option<Seen>>,
}

/// Where a client hears about changes.
enum Channel {
    /// A session (MCP before 2026-07-28): its standalone event stream.
    Session(Peer<RoleServer>),
    /// An open `subscriptions/listen` request (MCP 2026-07-28), until it ends.
    Subscription {
        sink: SubscriptionSink,
        open: Arc<AtomicBool>,
    },
}

impl Channel {
    fn is_closed(&self) -> bool {
        match self {
            Self::Session(peer) => peer.is_transport_closed(),
            Self::Subscription { open, .. } => !open.load(Ordering::Relaxed),
        }
    }

    // A failed send means the client went away meanwhile; it is pruned on the next pass.
    // A client that does not read its stream may hold a send up: it gets
    // `NOTIFY_TIMEOUT`, not the other clients' notifications.
    async fn tools_changed(&self) {
        let send = async {
            match self {
                Self::Session(peer) => drop(peer.notify_tool_list_changed().await),
                Self::Subscription { sink, .. } => drop(sink.notify_tool_list_changed().await),
            }
        };
        let _ = tokio::time::timeout(NOTIFY_TIMEOUT, send).await;
    }

    async fn resources_changed(&self) {
        let send = async {
            match self {
                Self::Session(peer) => drop(peer.notify_resource_list_changed().await),
                Self::Subscription { sink, .. } => {
                    drop(sink.notify_resource_list_changed().await);
                }
            }
        };
        let _ = tokio::time::timeout(NOTIFY_TIMEOUT, send).await;
    }
}

/// Digests of what a session last saw.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen {
    tools: u64,
    resources: u64,
}

impl Seen {
    fn of(v: &super::View) -> Self {
        let digest = |x: serde_json::Result<Vec<u8>>| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            x.unwrap_or_default().hash(&mut h);
            h.finish()
        };
        Self {
            tools: digest(serde_json::to_vec(&v.tools)),
            resources: digest(serde_json::to_vec(&(&v.resources, &v.templates))),
        }
    }
}

#[derive(Default)]
pub struct Sessions {
    open: Mutex<Vec<Arc<ClientSession>>>,
}

impl Sessions {
    fn add(&self, s: Arc<ClientSession>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|s| !s.channel.is_closed());
        open.push(s);
    }

    fn live(&self) -> Vec<Arc<ClientSession>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|s| !s.channel.is_closed());
        open.clone()
    }
}

/// Tells open sessions when what their caller sees changed.
pub fn spawn_notifier(app: &Arc<Gateway>) {
    let weak = Arc::downgrade(app);
    let changed = app.hub.changed.clone();
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            // Let a burst of changes (a reload touching many connectors) settle.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Some(app) = weak.upgrade() else { return };
            let snap = app.snapshot();
            for s in app.hub.sessions.live() {
                let now = Seen::of(&view(&app, &snap, &s.caller, false).await);
                let before = s
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(now);
                let Some(before) = before else { continue };
                if before.tools != now.tools {
                    tracing::debug!(caller = %s.caller.login, "telling a session its tools changed");
                    s.channel.tools_changed().await;
                }
                if before.resources != now.resources {
                    s.channel.resources_changed().await;
                }
            }
        }
    });
}

type Sessionful = StreamableHttpService<Aggregator, LocalSessionManager>;
type Stateless = StreamableHttpService<Aggregator, NeverSessionManager>;

/// The two rmcp services for one config snapshot.
struct Services {
    /// The config these were built for.
    config: Arc<Config>,
    sessionful: Sessionful,
    stateless: Stateless,
}

/// `/v1/mcp`: requests in a session (and `initialize`) go to the session-keeping service;
/// a sessionless request such as a bare `tools/list` from curl is served statelessly.
/// A session belongs to the caller who opened it.
pub struct Entry {
    app: Arc<Gateway>,
    manager: Arc<LocalSessionManager>,
    services: ArcSwap<Services>,
    owners: Mutex<HashMap<String, String>>,
}

impl Entry {
    pub fn new(app: Arc<Gateway>) -> Arc<Self> {
        let manager = Arc::new(LocalSessionManager::default());
        let services =
            ArcSwap::from_pointee(Self::build(&app, &manager, app.snapshot().config.clone()));
        Arc::new(Self {
            app,
            manager,
            services,
            owners: Mutex::default(),
        })
    }

    fn build(
        app: &Arc<Gateway>,
        manager: &Arc<LocalSessionManager>,
        config: Arc<Config>,
    ) -> Services {
        // The Host check is the browser defence's, for every route ([`crate::browser`]).
        let settings = |legacy: bool| {
            StreamableHttpServerConfig::default()
                .with_legacy_session_mode(legacy)
                .with_json_response(!legacy)
                .with_max_request_body_bytes(MAX_REQUEST_BYTES)
                .disable_allowed_hosts()
        };
        let factory = {
            let app = app.clone();
            move || Ok(Aggregator { app: app.clone() })
        };
        Services {
            sessionful: StreamableHttpService::new(
                factory.clone(),
                manager.clone(),
                settings(true),
            ),
            stateless: StreamableHttpService::new(
                factory,
                Arc::new(NeverSessionManager::default()),
                settings(false),
            ),
            config,
        }
    }

    /// The services for the current config, rebuilt once per reload (sessions live in
    /// the shared manager and survive).
    fn services(&self) -> Arc<Services> {
        let config = self.app.snapshot().config.clone();
        let cur = self.services.load_full();
        if Arc::ptr_eq(&cur.config, &config) {
            return cur;
        }
        let fresh = Arc::new(Self::build(&self.app, &self.manager, config));
        self.services.store(fresh.clone());
        fresh
    }

    fn owner(&self, id: &str) -> Option<String> {
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Whether the session manager still holds session `id`.
    async fn is_live(&self, id: &str) -> bool {
        self.manager.sessions.read().await.contains_key(id)
    }

    /// Forgets owners of sessions the manager no longer has.
    async fn prune(&self) {
        let live: std::collections::HashSet<String> = self
            .manager
            .sessions
            .read()
            .await
            .keys()
            .map(|k| k.to_string())
            .collect();
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| live.contains(k));
    }
}

fn session_id(req: &Request) -> Option<String> {
    req.headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One MCP server (streamable HTTP) aggregating every MCP connector the caller may use.
///
/// Tools are `<id>_<tool>`, resources `<id>-<uri>`; the caller's grants filter every list
/// and call. POST carries JSON-RPC; GET opens a session's event stream; DELETE ends a
/// session.
#[utoipa::path(method(post, get, delete), path = "/v1/mcp", tag = "agents",
    request_body(content = Object, description = "A JSON-RPC message (MCP streamable HTTP)"),
    responses(
        (status = 200, description = "A JSON-RPC answer, as JSON or an event stream", body = Object),
        (status = 202, description = "A notification or response accepted"),
        (status = 404, description = "An unknown or ended session", body = ErrorBody),
    ))]
pub async fn handle(
    State(entry): State<Arc<Entry>>,
    Extension(caller): Extension<Arc<Caller>>,
    req: Request,
) -> Response {
    if req.method() != http::Method::POST {
        // GET (the stream) and DELETE (the end of a session) carry no request id: their
        // refusals keep the host's error shape ([`crate::error::json_errors`]).
        return route(&entry, &caller, req, false).await;
    }
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large: MCP requests are limited to 4 MiB",
            )
                .into_response();
        }
    };
    /// The two fields the gateway routes on; the rest is skipped unread (no tree of the
    /// whole message is built: the transport parses it once more anyway).
    #[derive(Default, serde::Deserialize)]
    struct Peek {
        method: Option<String>,
        id: Option<serde_json::Value>,
    }
    let peek = match serde_json::from_slice::<Peek>(&bytes) {
        Ok(p) => p,
        // JSON that does not parse is JSON-RPC's parse error (id null), not a media
        // type problem; a body of another type is left to the transport's 415.
        Err(e)
            if (e.is_syntax() || e.is_eof())
                && super::transport::is_type(&parts.headers, "application/json") =>
        {
            return parse_error(&e);
        }
        // JSON of another shape (a batch, say), or another type: the transport answers.
        Err(_) => Peek::default(),
    };
    let initialize = peek.method.as_deref() == Some("initialize");
    let id = peek.id.filter(|id| id.is_string() || id.is_number());
    let req = Request::from_parts(parts, Body::from(bytes));
    let resp = route(&entry, &caller, req, initialize).await;
    match id {
        Some(id) if crate::error::is_plain_rejection(&resp) => jsonrpc_error(id, resp).await,
        _ => resp,
    }
}

/// Sends `req` to the service that keeps its session: requests in a session and
/// `initialize` to the session-keeping one (recording who opened a new session), the
/// rest to the stateless one.
async fn route(entry: &Entry, caller: &Caller, req: Request, initialize: bool) -> Response {
    let services = entry.services();
    if let Some(id) = session_id(&req) {
        // Another caller's session is not theirs to use: answer as for an unknown one.
        if entry.owner(&id).is_some_and(|o| o != caller.login) {
            tracing::warn!(caller = %caller.login, "refused a request in another caller's MCP session");
            return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
        }
        // The transport "closes" a session it never had and answers 202; a client that
        // ends a session twice, or one that expired, is told it is gone.
        if req.method() == http::Method::DELETE && !entry.is_live(&id).await {
            return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
        }
        return services.sessionful.handle(req).await.map(Body::new);
    }
    if req.method() != http::Method::POST {
        return services.sessionful.handle(req).await.map(Body::new);
    }
    if !initialize {
        return services.stateless.handle(req).await.map(Body::new);
    }
    let resp = services.sessionful.handle(req).await;
    if let Some(id) = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        entry.prune().await;
        entry
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), caller.login.clone());
    }
    resp.map(Body::new)
}

/// JSON-RPC's answer to a body that is not JSON.
fn parse_error(e: &serde_json::Error) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": rmcp::model::ErrorCode::PARSE_ERROR.0,
            "message": format!("the request body is not JSON ({e}): send one JSON-RPC message"),
            "data": {"code": "bad_request"},
        },
    });
    let mut resp = (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    resp.extensions_mut()
        .insert(crate::error::ErrorCode("bad_request"));
    resp
}

/// The transport's refusal of a request whose id is known (wrong media type, unknown
/// session), as a JSON-RPC error for that id, so the client can match
/// it to its call. The HTTP status stays; `error.data.code` is the host's error code.
async fn jsonrpc_error(id: serde_json::Value, resp: Response) -> Response {
    let status = resp.status();
    let (mut parts, body) = resp.into_parts();
    let said = crate::error::said(body).await;
    let (code, message) =
        crate::error::describe(status, &parts.headers, said, &http::Method::POST, ENDPOINT);
    let rpc_code = match status {
        // As the official SDKs answer an unknown session.
        StatusCode::NOT_FOUND => -32001,
        s if s.is_server_error() => rmcp::model::ErrorCode::INTERNAL_ERROR.0,
        _ => rmcp::model::ErrorCode::INVALID_REQUEST.0,
    };
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": rpc_code, "message": message, "data": {"code": code}},
    });
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let mut resp = Response::from_parts(parts, Body::from(body.to_string()));
    resp.extensions_mut().insert(crate::error::ErrorCode(code));
    resp
}
