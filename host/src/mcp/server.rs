//! The MCP server agents talk to, and its HTTP entry.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult, CompletionInfo,
    ContentBlock, ErrorData, GetPromptRequestParams, GetPromptResponse, Implementation,
    InputResponses, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams,
    ReadResourceResponse, Reference, ResourceContents, ResultType, ServerCapabilities,
    ServerConfig, ServerResult, SubscriptionFilter,
};
use rmcp::service::{
    MaybeSendFuture, NotificationContext, Peer, RequestContext, RoleServer, ServiceError,
    SubscriptionContext, SubscriptionSink,
};
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use tracing::Instrument as _;

use super::rounds::{self, Rounds};
use super::template::{UriTemplate, normalize};
use super::upstream::{Asker, Logs, Reach, Subscriber, Target, Updates, severity};
use super::{Gateway, Kind, Scope, builtin, prefixed, scoped_view, split};

use crate::audit::{Decision, Via};
use crate::config::Config;
use crate::connections::Status;
use crate::credentials::Credential;
use crate::error::ApiError;
use crate::identity::Caller;
use crate::openapi::ErrorBody;
use crate::state::Snapshot;
#[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
use rmcp::model::SetLevelRequestParams;
use rmcp::model::{
    CallToolResult, ClientResult, ElicitRequest, ElicitRequestParams, ElicitationAction,
    ServerRequest,
};
use rmcp::model::{SubscribeRequestParams, UnsubscribeRequestParams};

/// Where the aggregated endpoint is mounted.
pub const ENDPOINT: &str = "/v1/mcp";
/// Longest a notification to one client may take to be queued.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a call waits for the user to finish connecting a per-user connector it needs
/// (the authorization's own state lives 15 minutes).
const CONSENT_WAIT: Duration = Duration::from_secs(10 * 60);
/// Most resources one `subscriptions/listen` request subscribes to.
const MAX_LISTEN_URIS: usize = 256;
/// Largest request body `/v1/mcp` accepts.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The rmcp handler: one per session (or per sessionless request).
#[derive(Clone)]
pub struct Aggregator {
    app: Arc<Gateway>,
}

impl Aggregator {
    pub(super) fn new(app: Arc<Gateway>) -> Self {
        Self { app }
    }
}

/// Who is asking, and on which endpoint, from the HTTP request rmcp hands to the handler.
#[derive(Clone)]
struct Who {
    caller: Arc<Caller>,
    snap: Arc<Snapshot>,
    base_url: String,
    scope: Scope,
    /// The client's session, when the request came in one (only then can the client be
    /// asked things).
    session: Option<Arc<str>>,
    /// The request's trace span (disabled when traces are off): rmcp runs the handlers
    /// on tasks of their own, outside it.
    span: tracing::Span,
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
        scope: parts.extensions.get::<Scope>().cloned().unwrap_or_default(),
        session: session_of(&parts.headers),
        span: parts
            .extensions
            .get::<crate::telemetry::otel::RequestSpan>()
            .map_or_else(tracing::Span::none, |s| s.0.clone()),
    })
}

/// The MCP session a request came in. rmcp serves a 2026-07-28 request statelessly even
/// when it names a session, so such a request has none (and its client cannot be asked
/// anything).
fn session_of(headers: &http::HeaderMap) -> Option<Arc<str>> {
    let version = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok());
    if version.is_some_and(|v| v >= "2026-07-28") {
        return None;
    }
    headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(Arc::from)
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

/// Waits for an upstream request unless the client cancels it first. Dropping the
/// request is what cancels it upstream: rmcp then sends `notifications/cancelled` for it.
async fn unless_cancelled<T>(
    cx: &RequestContext<RoleServer>,
    request: impl std::future::Future<Output = Result<T, ErrorData>>,
) -> Result<T, ErrorData> {
    tokio::select! {
        r = request => r,
        () = cx.ct.cancelled() => Err(ErrorData::internal_error(
            "the request was cancelled by the client",
            None,
        )),
    }
}

impl Aggregator {
    /// The client request an upstream request is made for. Only a client in a session
    /// can be sent a request; [`Aggregator::relay`] lets a 2026-07-28 client be asked
    /// in rounds instead.
    fn asker_of(&self, cx: &RequestContext<RoleServer>, w: &Who) -> Asker {
        let logs = match &w.session {
            Some(session) => self.app.hub.sessions.logs_of(session),
            None => cx
                .meta
                .log_level()
                .map_or(Logs::Off, |l| Logs::AtLeast(severity(l))),
        };
        Asker {
            target: Target {
                peer: cx.peer.clone(),
                progress: cx.meta.get_progress_token(),
                logs,
            },
            request: cx.id.clone(),
            reach: match w.session {
                Some(_) => Reach::Session,
                None => Reach::Nowhere,
            },
            caps: cx.client_capabilities(),
            // The upstream call waits no longer than the egress read timeout anyway.
            patience: Duration::from_secs(w.snap.config.egress.read_timeout_secs),
        }
    }

    /// Makes the upstream request `send` for the client request `cx`, under the
    /// `owner` key (the caller and what it asked for). In a session, and for a
    /// sessionless client before 2026-07-28, that is all. A 2026-07-28 client has no
    /// session to be asked things in, so what the upstream asks comes back to it in an
    /// `InputRequiredResult`, and its retry carrying our `state` and its `responses`
    /// resumes the parked call ([`super::rounds`]). A state that is not ours is an
    /// upstream's own (a 2026-07-28 upstream asking in rounds itself) and is left in
    /// the request for `send` to pass on.
    async fn relay<F, Fut>(
        &self,
        w: &Who,
        cx: &RequestContext<RoleServer>,
        owner: rounds::Owner,
        (state, responses): (Option<String>, Option<InputResponses>),
        send: F,
    ) -> Result<ServerResult, ErrorData>
    where
        F: FnOnce(Asker, Option<String>, Option<InputResponses>) -> Fut,
        Fut: std::future::Future<Output = Result<ServerResult, ErrorData>> + Send + 'static,
    {
        let mut asker = self.asker_of(cx, w);
        let parked = &self.app.hub.rounds;
        if let Some(ours) = state.as_deref().filter(|s| rounds::is_ours(s)) {
            let answers = responses.unwrap_or_default();
            let (target, patience) = (asker.target, asker.patience);
            return parked
                .resume(ours, &owner, answers, target, &cx.ct, patience)
                .await;
        }
        let modern = w.session.is_none()
            && cx
                .protocol_version()
                .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        if !modern {
            return unless_cancelled(cx, send(asker, state, responses)).await;
        }
        let (asking, receiving) = Rounds::asking(asker.target.clone());
        asker.reach = Reach::Rounds(asking);
        let patience = asker.patience;
        let call = send(asker, state, responses);
        parked.start(owner, receiving, call, &cx.ct, patience).await
    }
}

/// Sends `req` on `up`'s session with `op` (one of [`super::upstream::Session`]'s
/// requests), as a relayed answer.
async fn on_session<Q, R, F, Fut>(
    up: &super::Upstream,
    connector: &str,
    req: Q,
    asker: Asker,
    op: F,
) -> Result<ServerResult, ErrorData>
where
    Q: Clone,
    R: Into<ServerResult>,
    F: Fn(Arc<super::upstream::Session>, Q, Asker) -> Fut,
    Fut: std::future::Future<Output = Result<R, ServiceError>>,
{
    on_session_raw(up, req, asker, op)
        .await
        .map_err(|e| upstream_error(connector, e))
}

/// [`on_session`] with the failure as it came, for a caller that looks into it.
async fn on_session_raw<Q, R, F, Fut>(
    up: &super::Upstream,
    req: Q,
    asker: Asker,
    op: F,
) -> anyhow::Result<ServerResult>
where
    Q: Clone,
    R: Into<ServerResult>,
    F: Fn(Arc<super::upstream::Session>, Q, Asker) -> Fut,
    Fut: std::future::Future<Output = Result<R, ServiceError>>,
{
    up.with_session(|s| op(s, req.clone(), asker.clone()))
        .await
        .map(Into::into)
}

/// Whether the upstream refused the request for want of scope (HTTP 403): it did not
/// act on it, so the request may be sent again once the user authorized more.
fn refused_for_scope(e: &anyhow::Error) -> bool {
    use super::transport::UpstreamError;
    use rmcp::transport::streamable_http_client::StreamableHttpError;
    // rmcp's `Client` variant does not name its error as the source: look at both.
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<UpstreamError>(),
            Some(UpstreamError::Rejected(403))
        ) || matches!(
            c.downcast_ref::<StreamableHttpError<UpstreamError>>(),
            Some(StreamableHttpError::Client(UpstreamError::Rejected(403)))
        )
    })
}

/// What the caller asked for, as a parked call's owner: only the same caller asking for
/// the same thing may resume it.
fn owner(w: &Who, method: &str, name: &str) -> rounds::Owner {
    rounds::Owner {
        caller: w.caller.login.clone(),
        item: format!("{method} {name}"),
    }
}

/// An answer of the wrong kind for the request (the upstream's, or a parked call's).
fn unexpected(method: &str) -> ErrorData {
    ErrorData::internal_error(
        format!("the MCP server answered {method} with something else"),
        None,
    )
}

/// A result relayed from an upstream that may speak a revision before 2026-07-28, which
/// has no `resultType`: the absent field means "complete", and clients on 2026-07-28
/// require it. (rmcp takes it off again for clients on older revisions.)
fn complete(result_type: &mut Option<ResultType>) {
    result_type.get_or_insert(ResultType::COMPLETE);
}

/// The resource URIs a result names, as the client reads them back: `<id>-<uri>` on the
/// aggregated endpoint, the upstream's own on `/v1/mcp/<id>`.
struct Uris<'a> {
    connector: &'a str,
    scope: &'a Scope,
}

impl Uris<'_> {
    fn uri(&self, uri: &mut String) {
        if *self.scope == Scope::All {
            *uri = prefixed(self.connector, Kind::Resource, uri);
        }
    }

    fn contents(&self, c: &mut ResourceContents) {
        match c {
            ResourceContents::TextResourceContents { uri, .. }
            | ResourceContents::BlobResourceContents { uri, .. } => self.uri(uri),
            // A kind of contents newer than this gateway: passed on as it is.
            _ => {}
        }
    }

    /// `resource_link` and embedded resources in tool results and prompt messages.
    fn content(&self, c: &mut ContentBlock) {
        match c {
            ContentBlock::ResourceLink(r) => self.uri(&mut r.uri),
            ContentBlock::Resource(e) => self.contents(&mut e.resource),
            // Text, images, audio, and kinds newer than this gateway name no resource.
            _ => {}
        }
    }
}

impl Aggregator {
    /// Registers a client to be told when what `w.caller` sees changes, from now on.
    async fn watch(&self, w: &Who, channel: Channel) {
        let v = scoped_view(&self.app, &w.snap, &w.caller, &w.scope, false).await;
        self.app.hub.sessions.add(Arc::new(ClientSession {
            caller: w.caller.clone(),
            scope: w.scope.clone(),
            channel,
            seen: Mutex::new(Some(Seen::of(&v))),
            session: w.session.clone(),
            logs: Mutex::new(Logs::All),
        }));
    }

    /// `tools/call`: the built-in and plugin tools run here, the rest go to the tool's
    /// upstream; an ungranted tool is refused as if it did not exist.
    /// `decision` says whether a grant allowed the tool (for the audit trail).
    async fn call_tool_inner(
        &self,
        w: &Who,
        mut req: CallToolRequestParams,
        cx: &RequestContext<RoleServer>,
        decision: &mut Decision,
    ) -> Result<CallToolResponse, ErrorData> {
        let asked = req.name.to_string();
        let full = w.scope.inbound(Kind::Tool, &asked);
        let (id, tool) = split(Kind::Tool, &full).ok_or_else(|| not_available("tool", &asked))?;
        let access = w.snap.policy.access(&w.caller);
        let Some(grant) = super::grant(&access, id, Kind::Tool, tool) else {
            tracing::info!(caller = %w.caller.login, tool = %full, "tool call refused: no grant");
            *decision = Decision::Denied;
            return Err(not_available("tool", &asked));
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
        req.name = tool.to_owned().into();
        let mrtr = (req.request_state.take(), req.input_responses.take());
        // The rest runs as the relayed request, so that a 2026-07-28 client can be asked
        // for consent in rounds too.
        let (me, who, connector) = (self.clone(), w.clone(), id.to_owned());
        let unknown = not_available("tool", &asked);
        let headers = cx
            .extensions
            .get::<http::request::Parts>()
            .map(|p| p.headers.clone())
            .unwrap_or_default();
        // Boxed: relaying moves the call's future (held by value) several times, and
        // its state across the upstream exchange is large; boxed, only a pointer moves.
        let send = move |asker: Asker, state, responses| {
            Box::pin(async move {
                let up = match me.upstream_for(&who, &connector).await {
                    Ok(up) => up,
                    // A per-user connector the caller has not connected: connect from here.
                    Err(e) => match who.snap.connectors.get(&connector) {
                        Some(c) if matches!(c.credential, Credential::PerUser(_)) => {
                            if let Some(told) =
                                Box::pin(me.connect_in_call(&who, &headers, c, &asker)).await?
                            {
                                return Ok(ServerResult::CallToolResult(told));
                            }
                            me.upstream_for(&who, &connector).await?
                        }
                        _ => return Err(e),
                    },
                };
                let name = req.name.clone();
                let listed = |l: &super::upstream::Listing| {
                    l.tools.iter().any(|t| t.name == name).then_some(())
                };
                if up.find_listed(listed).await.is_none() {
                    return Err(unknown);
                }
                (req.request_state, req.input_responses) = (state, responses);
                let call = |up: Arc<super::Upstream>, req: CallToolRequestParams, asker: Asker| async move {
                    on_session_raw(&up, req, asker, |s, req, asker| async move {
                        s.call_tool(req, &asker).await
                    })
                    .await
                };
                match call(up, req.clone(), asker.clone()).await {
                    // The upstream refused the call for want of scope (403
                    // insufficient_scope), so it did not run: the caller authorizes again
                    // for the wider scopes, then the call is sent once more.
                    Err(e) if refused_for_scope(&e) && me.must_step_up(&who, &connector) => {
                        let Some(c) = who.snap.connectors.get(&connector) else {
                            return Err(unknown);
                        };
                        if let Some(told) =
                            Box::pin(me.connect_in_call(&who, &headers, c, &asker)).await?
                        {
                            return Ok(ServerResult::CallToolResult(told));
                        }
                        call(me.upstream_for(&who, &connector).await?, req, asker)
                            .await
                            .map_err(|e| upstream_error(&connector, e))
                    }
                    answer => answer.map_err(|e| upstream_error(&connector, e)),
                }
            })
        };
        let resp = self
            .relay(w, cx, owner(w, "tools/call", &full), mrtr, send)
            .await?;
        Ok(match resp {
            ServerResult::CallToolResult(mut r) => {
                complete(&mut r.result_type);
                let uris = Uris {
                    connector: id,
                    scope: &w.scope,
                };
                r.content.iter_mut().for_each(|c| uris.content(c));
                CallToolResponse::Complete(r)
            }
            ServerResult::InputRequiredResult(r) => CallToolResponse::InputRequired(r),
            ServerResult::CreateTaskResult(r) => CallToolResponse::Task(r),
            _ => return Err(unexpected("tools/call")),
        })
    }

    /// Whether the caller must authorize connector `id` again for wider scopes (its
    /// upstream answered `insufficient_scope`).
    fn must_step_up(&self, w: &Who, id: &str) -> bool {
        match w.snap.connectors.get(id).map(|c| &c.credential) {
            Some(Credential::PerUser(pu)) => {
                self.app.connections.needs_step_up(pu, &w.caller.login)
            }
            _ => false,
        }
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

    /// A tool call of per-user connector `c`, which `w.caller` has not connected (or
    /// must authorize again): the authorization starts now (as `POST .../connect` would
    /// start it). A client in a session that takes URL-mode elicitation is asked to open
    /// it, and the call waits until the connection is ready (up to [`CONSENT_WAIT`]),
    /// then goes on: `Ok(None)`. Any other client, one that declines, or a connection
    /// not made in time gets a tool error that says what to do: `Ok(Some(..))`.
    ///
    /// rmcp 3.11 has no `notifications/elicitation/complete`, so the client is not told
    /// when the browser flow finished; the call's answer tells it.
    async fn connect_in_call(
        &self,
        w: &Who,
        headers: &http::HeaderMap,
        c: &Arc<crate::connector::Connector>,
        asker: &Asker,
    ) -> Result<Option<CallToolResult>, ErrorData> {
        let Credential::PerUser(pu) = &c.credential else {
            return Err(not_available("connector", &c.id));
        };
        let id = &c.id;
        let url = crate::admin::begin_connect(&self.app, &w.snap, &w.caller, c, headers)
            .await
            .map_err(|e| {
                ErrorData::invalid_request(
                    format!(
                        "connector \"{id}\" needs your authorization, which could not be started: {}",
                        e.message
                    ),
                    None,
                )
            })?;
        let told = |text: String| Ok(Some(CallToolResult::error(vec![ContentBlock::text(text)])));
        if !asker.can(|c| c.elicitation.as_ref().is_some_and(|e| e.url.is_some())) {
            return told(format!(
                "connector \"{id}\" needs your authorization: open {url} in your browser, allow access, then call the tool again"
            ));
        }
        // Listening before asking: a connection made while the client answers counts.
        let mut made = self.app.connections_made();
        let ask = ElicitRequestParams::UrlElicitationParams {
            meta: None,
            message: format!(
                "\"{id}\" needs your authorization: sign in and allow access, and this call goes on."
            ),
            url: url.to_string(),
            elicitation_id: crate::connections::random_token(),
        };
        // Never cancelled from here: the whole call is, when the client cancels.
        let answer = asker
            .ask(
                ServerRequest::ElicitRequest(ElicitRequest::new(ask)),
                tokio_util::sync::CancellationToken::new(),
            )
            .await;
        match answer {
            Ok(ClientResult::ElicitResult(r)) if r.action == ElicitationAction::Accept => {}
            Ok(_) => {
                return told(format!(
                    "connector \"{id}\" was not connected: you did not open the authorization; to connect later, open {url} or POST /api/connectors/{id}/connect"
                ));
            }
            Err(e) => {
                return told(format!(
                    "connector \"{id}\" needs your authorization (asking your client failed: {}): open {url} in your browser, then call the tool again",
                    e.message
                ));
            }
        }
        let ready = || {
            self.app.connections.status(pu, &w.caller.login) == Status::Ready
                && !self.app.connections.needs_step_up(pu, &w.caller.login)
        };
        let wait = async {
            while !ready() {
                match made.recv().await {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        let waited = tokio::time::timeout(CONSENT_WAIT, wait).await;
        if waited.is_ok() && ready() {
            tracing::info!(caller = %w.caller.login, connector = %id, "connected from inside an MCP call; the call goes on");
            return Ok(None);
        }
        told(format!(
            "connector \"{id}\" is still not connected after {} minutes; finish the authorization at {url}, then call the tool again",
            CONSENT_WAIT.as_secs() / 60
        ))
    }

    /// `prompts/get`: like a tool call, to the prompt's upstream under a `prompts` grant.
    async fn get_prompt_inner(
        &self,
        w: &Who,
        mut req: GetPromptRequestParams,
        cx: &RequestContext<RoleServer>,
        decision: &mut Decision,
    ) -> Result<GetPromptResponse, ErrorData> {
        let asked = req.name.clone();
        let full = w.scope.inbound(Kind::Prompt, &asked);
        let (id, prompt) =
            split(Kind::Prompt, &full).ok_or_else(|| not_available("prompt", &asked))?;
        let access = w.snap.policy.access(&w.caller);
        let Some(grant) = super::grant(&access, id, Kind::Prompt, prompt) else {
            tracing::info!(caller = %w.caller.login, prompt = %full, "prompt refused: no grant");
            *decision = Decision::Denied;
            return Err(not_available("prompt", &asked));
        };
        *decision = Decision::Granted(grant);
        let up = self.upstream_for(w, id).await?;
        let listed =
            |l: &super::upstream::Listing| l.prompts.iter().any(|p| p.name == prompt).then_some(());
        if up.find_listed(listed).await.is_none() {
            return Err(not_available("prompt", &asked));
        }
        req.name = prompt.to_owned();
        let mrtr = (req.request_state.take(), req.input_responses.take());
        let connector = id.to_owned();
        let send = move |asker: Asker, state, responses| async move {
            (req.request_state, req.input_responses) = (state, responses);
            on_session(&up, &connector, req, asker, |s, req, asker| async move {
                s.get_prompt(req, &asker).await
            })
            .await
        };
        let resp = self
            .relay(w, cx, owner(w, "prompts/get", &full), mrtr, send)
            .await?;
        Ok(match resp {
            ServerResult::GetPromptResult(mut r) => {
                complete(&mut r.result_type);
                let uris = Uris {
                    connector: id,
                    scope: &w.scope,
                };
                for m in &mut r.messages {
                    uris.content(&mut m.content);
                }
                GetPromptResponse::Complete(r)
            }
            ServerResult::InputRequiredResult(r) => GetPromptResponse::InputRequired(r),
            _ => return Err(unexpected("prompts/get")),
        })
    }

    /// `completion/complete`, routed by its reference: a prompt (`<id>_<prompt>`, under a
    /// `prompts` grant) or a resource template (`<id>-<uriTemplate>`, under a `templates`
    /// grant). An upstream without completions completes nothing.
    async fn complete_inner(
        &self,
        w: &Who,
        mut req: CompleteRequestParams,
        cx: &RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let access = w.snap.policy.access(&w.caller);
        let (kind, asked) = match &req.r#ref {
            Reference::Prompt(p) => (Kind::Prompt, p.name.clone()),
            Reference::Resource(r) => (Kind::Template, r.uri.clone()),
            _ => {
                return Err(ErrorData::invalid_params(
                    "completion: the reference is neither ref/prompt nor ref/resource",
                    None,
                ));
            }
        };
        let what = match kind {
            Kind::Prompt => "prompt",
            _ => "resource template",
        };
        let full = w.scope.inbound(kind, &asked);
        let (id, name) = split(kind, &full).ok_or_else(|| not_available(what, &asked))?;
        if !super::visible(&access, id, kind, name) {
            return Err(not_available(what, &asked));
        }
        let up = self.upstream_for(w, id).await?;
        // Whether the upstream completes, once what is completed is found listed.
        let completes = |l: &super::upstream::Listing| {
            match kind {
                Kind::Prompt => l.prompts.iter().any(|p| p.name == name),
                _ => l.templates.iter().any(|t| t.uri_template == name),
            }
            .then_some(l.completions)
        };
        let Some(completes) = up.find_listed(completes).await else {
            return Err(not_available(what, &asked));
        };
        if !completes {
            return Ok(CompleteResult::new(CompletionInfo::default()));
        }
        match &mut req.r#ref {
            Reference::Prompt(p) => p.name = name.to_owned(),
            Reference::Resource(r) => r.uri = name.to_owned(),
            _ => {}
        }
        let asker = self.asker_of(cx, w);
        let ask = up.with_session(|s| {
            let req = req.clone();
            let asker = &asker;
            async move { s.complete(req, asker).await }
        });
        let mut r =
            unless_cancelled(cx, async { ask.await.map_err(|e| upstream_error(id, e)) }).await?;
        complete(&mut r.result_type);
        Ok(r)
    }
}

/// Each handler returns its work boxed: rmcp runs every request as a task whose future
/// holds the largest handler future inline, which tokio moves whole into the task. Held
/// inline, ours made that future about 40 KB, copied on every request.
impl rmcp::ServerHandler for Aggregator {
    #[allow(deprecated)] // Logging is deprecated by SEP-2577, still offered before it.
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_resources()
                .enable_resources_list_changed()
                .enable_resources_subscribe()
                .enable_completions()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("portcullis", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Portcullis gateway: on /v1/mcp tools and prompts are named <connector>_<name>, resources <connector>-<uri>; /v1/mcp/<connector> serves one connector with its own names. Call aperture_list_connectors to find the HTTP APIs you can reach through the gateway.",
        )
    }

    fn on_initialized(
        &self,
        cx: NotificationContext<RoleServer>,
    ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let Ok(w) = who(&cx.extensions) else { return };
            self.watch(&w, Channel::Session(cx.peer.clone())).await;
        })
    }

    /// MCP 2026-07-28 has no sessions: a client that wants to hear about changes keeps a
    /// `subscriptions/listen` request open. Every list-changed kind is offered, and
    /// updates of the resources it names. rmcp asks for the filter without the request,
    /// so the URIs are taken as asked here and checked in [`Aggregator::listen`]: one
    /// the caller may not read, or whose upstream offers no subscriptions, is
    /// acknowledged but never updated (the acknowledgement says nothing about a
    /// resource).
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut filter = SubscriptionFilter::builder()
            .tools_list_changed()
            .prompts_list_changed()
            .resources_list_changed()
            .build();
        filter.resource_subscriptions = requested
            .resource_subscriptions
            .as_ref()
            .map(|uris| uris.iter().take(MAX_LISTEN_URIS).cloned().collect());
        Some(filter)
    }

    fn listen(
        &self,
        cx: SubscriptionContext,
    ) -> impl Future<Output = Result<(), ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.request_context().extensions)?;
            let open = Arc::new(AtomicBool::new(true));
            let channel = Channel::Subscription {
                sink: cx.sink().clone(),
                open: open.clone(),
            };
            self.watch(&w, channel).await;
            // Its resource subscriptions, under a name of its own among the subscribers.
            let me: Arc<str> = Arc::from(format!("listen {}", crate::connections::random_token()));
            let to = Updates::Listen {
                sink: cx.sink().clone(),
                open: open.clone(),
            };
            let uris = cx.sink().accepted().resource_subscriptions.clone();
            let mut subscribed = Vec::new();
            for uri in uris.unwrap_or_default() {
                match self.add_subscriber(&w, &uri, me.clone(), to.clone()).await {
                    Ok(sub) => subscribed.push(sub),
                    Err(e) => {
                        tracing::debug!(caller = %w.caller.login, uri = %uri, "not subscribed: {}", e.message);
                    }
                }
            }
            cx.cancelled().await;
            open.store(false, Ordering::Relaxed);
            for (up, uri) in subscribed {
                // Best effort: the upstream may be gone; a stale subscription there only
                // sends updates nobody is given.
                let _ = remove_subscriber(&up, &uri, &me).await;
            }
            tracing::debug!(caller = %w.caller.login, "MCP subscription ended");
            Ok(())
        })
    }

    fn list_tools(
        &self,
        _page: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListToolsResult, ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            let v = scoped_view(&self.app, &w.snap, &w.caller, &w.scope, true).await;
            Ok(ListToolsResult::with_all_items(v.tools))
        })
    }

    fn call_tool(
        &self,
        req: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            let full = w.scope.inbound(Kind::Tool, &req.name).into_owned();
            let mut decision = Decision::Undecided;
            let result = self
                .call_tool_inner(&w, req, &cx, &mut decision)
                .instrument(w.span.clone())
                .await;
            // Counted and audited per configured connector only: a name from the request
            // alone would let any caller mint metric series.
            if let Some((id, tool)) = split(Kind::Tool, &full)
                && (w.snap.connectors.contains_key(id) || id == builtin::APERTURE)
            {
                let outcome = match &result {
                    Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => "tool_error",
                    Ok(_) => "ok",
                    Err(_) => "error",
                };
                self.app.metrics.mcp_call(id, outcome);
                let (grant, audited) = decision.outcome(outcome);
                w.span.in_scope(|| {
                    self.app
                        .audit
                        .call(&w.caller, id, Via::Tool { name: tool }, grant, audited)
                });
            }
            result
        })
    }

    fn list_prompts(
        &self,
        _page: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListPromptsResult, ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            let v = scoped_view(&self.app, &w.snap, &w.caller, &w.scope, true).await;
            Ok(ListPromptsResult::with_all_items(v.prompts))
        })
    }

    fn get_prompt(
        &self,
        req: GetPromptRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<GetPromptResponse, ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            let full = w.scope.inbound(Kind::Prompt, &req.name).into_owned();
            let mut decision = Decision::Undecided;
            let result = self
                .get_prompt_inner(&w, req, &cx, &mut decision)
                .instrument(w.span.clone())
                .await;
            self.audit_read(&w, Kind::Prompt, &full, &decision, result.is_ok());
            result
        })
    }

    fn complete(
        &self,
        req: CompleteRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CompleteResult, ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            self.complete_inner(&w, req, &cx).await
        })
    }

    #[allow(deprecated)] // `resources/subscribe` is for MCP before 2026-07-28, still offered.
    fn subscribe(
        &self,
        req: SubscribeRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<(), ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            let session = session_for_subscribe(&w)?;
            let to = Updates::Session(cx.peer.clone());
            self.add_subscriber(&w, &req.uri, session, to).await?;
            Ok(())
        })
    }

    #[allow(deprecated)] // As `subscribe`.
    fn unsubscribe(
        &self,
        req: UnsubscribeRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<(), ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            let session = session_for_subscribe(&w)?;
            let (up, uri) = self.subscription(&w, &req.uri).await?;
            remove_subscriber(&up, &uri, &session).await
        })
    }

    /// `logging/setLevel`: the level applies to this client session alone (upstream
    /// sessions are shared; the gateway filters what they send).
    #[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
    fn set_level(
        &self,
        req: SetLevelRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<(), ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            let set = w.session.as_deref().is_some_and(|id| {
                self.app.hub.sessions.set_logs(
                    id,
                    &w.caller.login,
                    Logs::AtLeast(severity(req.level)),
                )
            });
            if set {
                Ok(())
            } else {
                Err(ErrorData::invalid_request(
                    "logging/setLevel needs a session; on MCP 2026-07-28 send io.modelcontextprotocol/logLevel in each request's _meta",
                    None,
                ))
            }
        })
    }

    fn list_resources(
        &self,
        _page: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListResourcesResult, ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            let v = scoped_view(&self.app, &w.snap, &w.caller, &w.scope, true).await;
            Ok(ListResourcesResult::with_all_items(v.resources))
        })
    }

    fn list_resource_templates(
        &self,
        _page: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListResourceTemplatesResult, ErrorData>> + MaybeSendFuture + '_
    {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            let v = scoped_view(&self.app, &w.snap, &w.caller, &w.scope, true).await;
            Ok(ListResourceTemplatesResult::with_all_items(v.templates))
        })
    }

    fn read_resource(
        &self,
        req: ReadResourceRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ReadResourceResponse, ErrorData>> + MaybeSendFuture + '_ {
        Box::pin(async move {
            let w = who(&cx.extensions)?;
            let full = w.scope.inbound(Kind::Resource, &req.uri).into_owned();
            let mut decision = Decision::Undecided;
            let result = self
                .read_resource_inner(&w, req, &cx, &mut decision)
                .instrument(w.span.clone())
                .await;
            self.audit_read(&w, Kind::Resource, &full, &decision, result.is_ok());
            result
        })
    }
}

impl Aggregator {
    /// Audits a `prompts/get` or `resources/read` of `full` (the aggregated name), per
    /// configured connector only, as tool calls are. One that failed before its grant
    /// was decided (no upstream, not connected) is an error, not a denial.
    fn audit_read(&self, w: &Who, kind: Kind, full: &str, decision: &Decision, ok: bool) {
        let Some((id, name)) =
            split(kind, full).filter(|(id, _)| w.snap.connectors.contains_key(*id))
        else {
            return;
        };
        let via = match kind {
            Kind::Prompt => Via::Prompt { name },
            _ => Via::Resource { uri: name },
        };
        let (grant, outcome) = decision.outcome(if ok { "ok" } else { "error" });
        w.span
            .in_scope(|| self.app.audit.call(&w.caller, id, via, grant, outcome));
    }

    /// The upstream of resource `asked` (as the client names it), the grant that lets
    /// `w.caller` use it and its URI upstream: what reading, subscribing and
    /// unsubscribing all need. A refusal by policy is noted in `decision`.
    async fn resolve_resource(
        &self,
        w: &Who,
        asked: &str,
        decision: &mut Decision,
    ) -> Result<(Arc<super::Upstream>, crate::policy::GrantRef, String), ErrorData> {
        let full = w.scope.inbound(Kind::Resource, asked);
        let (id, uri) =
            split(Kind::Resource, &full).ok_or_else(|| not_available("resource", asked))?;
        let access = w.snap.policy.access(&w.caller);
        // Like a tool call: no upstream is touched (or named) without a grant on it.
        if !access.any_on(id) {
            tracing::info!(caller = %w.caller.login, resource = %full, "resource refused: no grant");
            *decision = Decision::Denied;
            return Err(not_available("resource", asked));
        }
        let up = self.upstream_for(w, id).await?;
        let found = up
            .find_listed(|l| resource_grant(&access, id, uri, l))
            .await;
        let Some((grant, upstream_uri)) = found else {
            tracing::info!(caller = %w.caller.login, resource = %full, "resource refused");
            *decision = Decision::Denied;
            return Err(not_available("resource", asked));
        };
        Ok((up, grant, upstream_uri))
    }

    /// `resources/read`: `decision` says whether a grant allowed the resource (for the
    /// audit trail).
    async fn read_resource_inner(
        &self,
        w: &Who,
        mut req: ReadResourceRequestParams,
        cx: &RequestContext<RoleServer>,
        decision: &mut Decision,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let (up, grant, upstream_uri) = self.resolve_resource(w, &req.uri, decision).await?;
        let connector_id = up.connector.id.clone();
        let id = connector_id.as_str();
        *decision = Decision::Granted(grant);
        req.uri = upstream_uri;
        let owner = owner(w, "resources/read", &format!("{id} {}", req.uri));
        let mrtr = (req.request_state.take(), req.input_responses.take());
        let connector = id.to_owned();
        let send = move |asker: Asker, state, responses| async move {
            (req.request_state, req.input_responses) = (state, responses);
            on_session(&up, &connector, req, asker, |s, req, asker| async move {
                s.read_resource(req, &asker).await
            })
            .await
        };
        let resp = self.relay(w, cx, owner, mrtr, send).await?;
        Ok(match resp {
            ServerResult::ReadResourceResult(mut r) => {
                complete(&mut r.result_type);
                let uris = Uris {
                    connector: id,
                    scope: &w.scope,
                };
                r.contents.iter_mut().for_each(|c| uris.contents(c));
                ReadResourceResponse::Complete(r)
            }
            ServerResult::InputRequiredResult(r) => ReadResourceResponse::InputRequired(r),
            _ => return Err(unexpected("resources/read")),
        })
    }
}

/// The grant that lets `access` use resource `uri` of connector `id` (upstream naming),
/// and the URI to ask the upstream for. A listed resource needs its own grant; any other
/// URI needs a grant on a template that produces it. Compared after normalizing
/// percent-encoding, so another spelling of a listed resource is that resource.
fn resource_grant(
    access: &crate::policy::Access<'_>,
    id: &str,
    uri: &str,
    listing: &super::upstream::Listing,
) -> Option<(crate::policy::GrantRef, String)> {
    let wanted = normalize(uri);
    if let Some(r) = listing
        .resources
        .iter()
        .find(|r| r.uri == uri || normalize(&r.uri) == wanted)
    {
        return super::grant(access, id, Kind::Resource, &r.uri).map(|g| (g, r.uri.clone()));
    }
    listing.templates.iter().find_map(|t| {
        super::grant(access, id, Kind::Template, &t.uri_template)
            .filter(|_| UriTemplate::parse(&t.uri_template).is_some_and(|tpl| tpl.matches(&wanted)))
            .map(|g| (g, wanted.clone()))
    })
}

impl Aggregator {
    /// The upstream and its URI for a subscription to `asked` (as the client names it),
    /// under the same grants as reading it; and the client's session.
    /// The upstream and its URI for a subscription to `asked`: under the grants a read
    /// needs, and only where the upstream offers subscriptions.
    async fn subscription(
        &self,
        w: &Who,
        asked: &str,
    ) -> Result<(Arc<super::Upstream>, String), ErrorData> {
        let (up, _, upstream_uri) = self
            .resolve_resource(w, asked, &mut Decision::Undecided)
            .await?;
        let id = &up.connector.id;
        if !up.listing().subscribe {
            return Err(ErrorData::invalid_request(
                format!("connector \"{id}\": its MCP server does not offer resource subscriptions"),
                None,
            ));
        }
        Ok((up, upstream_uri))
    }

    /// Subscribes client `session` (reached at `to`) to `asked`; the upstream is asked
    /// when it is the URI's first subscriber.
    async fn add_subscriber(
        &self,
        w: &Who,
        asked: &str,
        session: Arc<str>,
        to: Updates,
    ) -> Result<(Arc<super::Upstream>, String), ErrorData> {
        let (up, uri) = self.subscription(w, asked).await?;
        let sub = Subscriber {
            session,
            to,
            uri: asked.to_owned(),
        };
        // One change of the upstream's subscriptions at a time: a second subscriber
        // waits for the first one's upstream subscribe (and after a failure, asks the
        // upstream itself).
        let _one_at_a_time = up.subscribing.lock().await;
        if up.subscribers.add(&uri, sub.clone()) {
            let id = up.connector.id.clone();
            let asked = up.with_session(|s| {
                let uri = uri.clone();
                async move { s.subscribe(&uri).await }
            });
            if let Err(e) = asked.await {
                up.subscribers.remove(&uri, &sub.session);
                return Err(upstream_error(&id, e));
            }
        }
        // The guard borrows `up`, which is handed back.
        drop(_one_at_a_time);
        Ok((up, uri))
    }
}

/// `resources/subscribe` is for sessions; 2026-07-28 clients name the resources in
/// `subscriptions/listen`.
fn session_for_subscribe(w: &Who) -> Result<Arc<str>, ErrorData> {
    w.session.clone().ok_or_else(|| {
        ErrorData::invalid_request(
            "resources/subscribe needs a session (MCP 2026-07-28 clients name resources in subscriptions/listen)",
            None,
        )
    })
}

/// Takes client `session`'s subscription to upstream `uri` away; the upstream is told
/// when it was the last.
async fn remove_subscriber(
    up: &super::Upstream,
    uri: &str,
    session: &str,
) -> Result<(), ErrorData> {
    let _one_at_a_time = up.subscribing.lock().await;
    if up.subscribers.remove(uri, session) {
        let id = up.connector.id.clone();
        up.with_session(|s| {
            let uri = uri.to_owned();
            async move { s.unsubscribe(&uri).await }
        })
        .await
        .map_err(|e| upstream_error(&id, e))?;
    }
    Ok(())
}

/// A client to tell when its caller's visible catalog changes.
pub struct ClientSession {
    caller: Arc<Caller>,
    /// The endpoint it came through: what it sees is that endpoint's view.
    scope: Scope,
    channel: Channel,
    seen: Mutex<Option<Seen>>,
    /// Its MCP session (none for a 2026-07-28 `subscriptions/listen`).
    session: Option<Arc<str>>,
    /// The log messages it gets: all until it sets a level.
    logs: Mutex<Logs>,
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

/// The lists a client is told about when they change.
#[derive(Debug, Clone, Copy)]
enum List {
    Tools,
    Prompts,
    Resources,
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
    async fn changed(&self, list: List) {
        let send = async {
            match (self, list) {
                (Self::Session(peer), List::Tools) => drop(peer.notify_tool_list_changed().await),
                (Self::Session(peer), List::Prompts) => {
                    drop(peer.notify_prompt_list_changed().await);
                }
                (Self::Session(peer), List::Resources) => {
                    drop(peer.notify_resource_list_changed().await);
                }
                (Self::Subscription { sink, .. }, List::Tools) => {
                    drop(sink.notify_tool_list_changed().await);
                }
                (Self::Subscription { sink, .. }, List::Prompts) => {
                    drop(sink.notify_prompt_list_changed().await);
                }
                (Self::Subscription { sink, .. }, List::Resources) => {
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
    prompts: u64,
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
            prompts: digest(serde_json::to_vec(&v.prompts)),
            resources: digest(serde_json::to_vec(&(&v.resources, &v.templates))),
        }
    }

    /// The lists that differ between `self` and `now`.
    fn changes(self, now: Self) -> impl Iterator<Item = List> {
        [
            (self.tools != now.tools, List::Tools),
            (self.prompts != now.prompts, List::Prompts),
            (self.resources != now.resources, List::Resources),
        ]
        .into_iter()
        .filter_map(|(changed, list)| changed.then_some(list))
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

    /// The log messages session `id` gets.
    fn logs_of(&self, id: &str) -> Logs {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|s| s.session.as_deref() == Some(id))
            .map_or(Logs::All, |s| {
                *s.logs.lock().unwrap_or_else(|p| p.into_inner())
            })
    }

    /// Sets the log messages session `id` of `login` gets; false for no such session.
    fn set_logs(&self, id: &str, login: &str, logs: Logs) -> bool {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = open
            .iter()
            .find(|s| s.session.as_deref() == Some(id) && s.caller.login == login)
        else {
            return false;
        };
        *s.logs.lock().unwrap_or_else(|p| p.into_inner()) = logs;
        true
    }

    fn live(&self) -> Vec<Arc<ClientSession>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|s| !s.channel.is_closed());
        open.clone()
    }
}

/// A log message an upstream sent outside any call (on its session's own stream): from a
/// per-user upstream session it goes to that user's open sessions that see the upstream
/// (a grant on the connector, the connector on their endpoint), as each one's level
/// admits. A shared upstream session carries every caller's calls, and a message on no
/// call's stream could be about any of them: it is not passed on. (Messages about a
/// call go to its client alone: [`super::upstream`].)
#[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
pub async fn deliver_log(app: &Gateway, log: super::UpstreamLog) {
    let Some(user) = &log.user else {
        return;
    };
    let snap = app.snapshot();
    for s in app.hub.sessions.live() {
        let Channel::Session(peer) = &s.channel else {
            continue;
        };
        let serves = match &s.scope {
            Scope::All => true,
            Scope::One(id) => **id == *log.connector,
        };
        let theirs = *user == s.caller.login;
        let admitted = s
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admits(log.params.level);
        if serves && theirs && admitted && snap.policy.access(&s.caller).any_on(&log.connector) {
            let _ = tokio::time::timeout(
                NOTIFY_TIMEOUT,
                peer.notify_logging_message(log.params.clone()),
            )
            .await;
        }
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
                let v = scoped_view(&app, &snap, &s.caller, &s.scope, false).await;
                let now = Seen::of(&v);
                let before = s
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(now);
                let Some(before) = before else { continue };
                for list in before.changes(now) {
                    tracing::debug!(caller = %s.caller.login, ?list, "telling a session a list changed");
                    s.channel.changed(list).await;
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
    /// Who opened each session, and on which endpoint: a session is used by its caller
    /// on its endpoint only.
    owners: Mutex<HashMap<String, (String, Scope)>>,
    /// Sessions stored for other replicas (a shared PostgreSQL vault), else `None`.
    shared: Option<super::sessions::Shared>,
}

impl Entry {
    pub fn new(app: Arc<Gateway>) -> Arc<Self> {
        let manager = Arc::new(LocalSessionManager::default());
        let shared = super::sessions::Shared::new(&app.vault);
        let services = ArcSwap::from_pointee(Self::build(
            &app,
            &manager,
            shared.as_ref(),
            app.snapshot().config.clone(),
        ));
        let entry = Arc::new(Self {
            app,
            manager,
            services,
            owners: Mutex::default(),
            shared,
        });
        if entry.shared.is_some() {
            tokio::spawn(Self::follow_store(Arc::downgrade(&entry)));
        }
        entry
    }

    /// With replicas: closes here a session another replica ended (DELETE), and purges
    /// stored sessions too old to move, every ten minutes.
    async fn follow_store(this: std::sync::Weak<Self>) {
        use crate::vault::{Table, store::Change};
        use tokio::sync::broadcast::error::RecvError;
        let Some(mut changes) = this.upgrade().and_then(|e| e.app.vault.changes()) else {
            return;
        };
        let mut purge = tokio::time::interval(Duration::from_secs(600));
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                _ = purge.tick() => {
                    let Some(entry) = this.upgrade() else { return };
                    let Some(shared) = entry.shared.clone() else { return };
                    // Sessions still open here are re-stamped first: only sessions
                    // nobody kept open for a day are too old to move.
                    for (id, (login, scope)) in entry.known_owners() {
                        if entry.is_live(&id).await {
                            shared.set_owner(&id, &login, &scope).await;
                        }
                    }
                    drop(entry);
                    let _ = tokio::task::spawn_blocking(move || shared.purge()).await;
                    continue;
                }
            };
            let Some(entry) = this.upgrade() else { return };
            let ids = match change {
                Ok(Change::Record {
                    table: Table::McpSessions,
                    key,
                }) if !key.ends_with("\nowner") => vec![key],
                // Changes may have been missed (the database was away, or this replica
                // fell behind): every session open here is checked.
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                    entry.known_owners().into_iter().map(|(id, _)| id).collect()
                }
                Ok(Change::Record { .. }) => continue,
                Err(RecvError::Closed) => return,
            };
            for id in ids {
                entry.close_if_ended(&id).await;
            }
        }
    }

    /// The sessions whose owner this replica knows, with their owners (a copy, so no
    /// lock is held across the awaits that follow).
    fn known_owners(&self) -> Vec<(String, (String, Scope))> {
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, owner)| (id.clone(), owner.clone()))
            .collect()
    }

    /// Closes session `id` here when its record is gone from the shared vault (another
    /// replica ended it). Only a record known to be gone counts, not a failed lookup.
    async fn close_if_ended(&self, id: &str) {
        let Some(shared) = &self.shared else { return };
        if self.is_live(id).await && matches!(shared.owner(id).await, Ok(None)) {
            use rmcp::transport::streamable_http_server::SessionManager as _;
            let _ = self.manager.close_session(&id.into()).await;
            self.owners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            tracing::debug!("closed an MCP session another replica ended");
        }
    }

    fn build(
        app: &Arc<Gateway>,
        manager: &Arc<LocalSessionManager>,
        shared: Option<&super::sessions::Shared>,
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
            move || Ok(Aggregator::new(app.clone()))
        };
        let mut sessionful = settings(true);
        sessionful.session_store = shared.map(|s| {
            Arc::new(s.clone())
                as Arc<dyn rmcp::transport::streamable_http_server::session::SessionStore>
        });
        Services {
            sessionful: StreamableHttpService::new(factory.clone(), manager.clone(), sessionful),
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
        let fresh = Arc::new(Self::build(
            &self.app,
            &self.manager,
            self.shared.as_ref(),
            config,
        ));
        self.services.store(fresh.clone());
        fresh
    }

    fn owner(&self, id: &str) -> Option<(String, Scope)> {
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
pub async fn handle(entry: Arc<Entry>, caller: Arc<Caller>, req: Request) -> Response {
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
    // Outside a session, the commonest request skips rmcp's per-request service when
    // nothing can be sent to its client while it runs (`direct`, which also leaves
    // requests in a session to the transport). Boxed, as rmcp's handling is below:
    // inline, its state would enlarge every request's future.
    let (parts, bytes) = if peek.method.as_deref() == Some("tools/call") {
        match Box::pin(super::direct::call(&entry.app, parts, bytes)).await {
            super::direct::Taken::Answered(resp) => return resp,
            super::direct::Taken::Not(parts, bytes) => (parts, bytes),
        }
    } else {
        (parts, bytes)
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

/// One connector's MCP server alone, for clients configured with one server URL per
/// service: the same server as `/v1/mcp` restricted to connector `id`, with the upstream's
/// own names (no `<id>_` or `<id>-` prefix) and the same grants. An HTTP connector with a
/// provider plugin serves the plugin's tools.
#[utoipa::path(method(post, get, delete), path = "/v1/mcp/{id}", tag = "agents",
    params(("id" = String, Path, description = "A connector ID")),
    request_body(content = Object, description = "A JSON-RPC message (MCP streamable HTTP)"),
    responses(
        (status = 200, description = "A JSON-RPC answer, as JSON or an event stream", body = Object),
        (status = 202, description = "A notification or response accepted"),
        (status = 403, description = "No grant on the connector", body = ErrorBody),
        (status = 404, description = "No such connector, one without an MCP server, or an unknown or ended session", body = ErrorBody),
    ))]
pub async fn handle_one(
    State(entry): State<Arc<Entry>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    mut req: Request,
) -> Response {
    let snap = entry.app.snapshot();
    let Some(c) = snap.connectors.get(&id) else {
        return ApiError::not_found(format!(
            "no connector \"{id}\"; GET /api/connectors lists the connectors you can use"
        ))
        .into_response();
    };
    if c.protocol == crate::config::Protocol::Http && c.provider.is_none() {
        return ApiError::not_found(format!(
            "connector \"{id}\" is an HTTP API without MCP tools; reach it through /v1/connectors/{id}/"
        ))
        .into_response();
    }
    if !snap.policy.access(&caller).any_on(&id) {
        return ApiError::forbidden(format!(
            "access denied: {} has no grant on \"{id}\"; ask an admin for a connectors grant such as \"{id}/**\"",
            caller.login
        ))
        .into_response();
    }
    req.extensions_mut().insert(Scope::One(id.into()));
    handle(entry, caller, req).await
}

/// What the transport answers for a session it does not know, so that a session this
/// replica refuses looks the same as one that never existed.
fn session_not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response()
}

/// Sends `req` to the service that keeps its session: requests in a session and
/// `initialize` to the session-keeping one (recording who opened a new session), the
/// rest to the stateless one.
async fn route(entry: &Entry, caller: &Caller, req: Request, initialize: bool) -> Response {
    let services = entry.services();
    let scope = req.extensions().get::<Scope>().cloned().unwrap_or_default();
    if let Some(id) = session_id(&req) {
        // A session opened on another replica: its owner is stored with it. Only a
        // session whose owner is known here is served, so the check below always runs.
        if entry.owner(&id).is_none()
            && let Some(shared) = &entry.shared
        {
            match shared.owner(&id).await {
                Ok(Some(owner)) => {
                    entry
                        .owners
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), owner);
                }
                Ok(None) if !entry.is_live(&id).await => {
                    return session_not_found();
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot look up an MCP session's owner: the shared vault does not answer");
                    return ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "the gateway's database does not answer, so this MCP session cannot be checked; try again shortly",
                    )
                    .into_response();
                }
            }
        }
        // Another caller's session is not theirs to use, and a session opened on one
        // endpoint names things that endpoint's way: answer as for an unknown one.
        if let Some((login, opened_on)) = entry.owner(&id)
            && (login != caller.login || opened_on != scope)
        {
            tracing::warn!(caller = %caller.login, "refused a request in another caller's or another endpoint's MCP session");
            return session_not_found();
        }
        // The transport "closes" a session it never had and answers 202; a client that
        // ends a session twice, or one that expired, is told it is gone.
        if req.method() == http::Method::DELETE && !entry.is_live(&id).await {
            // Opened on another replica: ended there through the vault's change feed.
            if let Some(shared) = &entry.shared
                && entry.owner(&id).is_some()
            {
                use rmcp::transport::streamable_http_server::session::SessionStore as _;
                return match shared.delete(&id).await {
                    Ok(()) => StatusCode::ACCEPTED.into_response(),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not end a stored MCP session");
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Service Unavailable: the session could not be ended; try again",
                        )
                            .into_response()
                    }
                };
            }
            return session_not_found();
        }
        return serve(&services.sessionful, req).await;
    }
    if req.method() != http::Method::POST {
        return serve(&services.sessionful, req).await;
    }
    if !initialize {
        return serve(&services.stateless, req).await;
    }
    let resp = serve(&services.sessionful, req).await;
    if let Some(id) = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        entry.prune().await;
        if let Some(shared) = &entry.shared {
            shared.set_owner(id, &caller.login, &scope).await;
        }
        entry
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), (caller.login.clone(), scope));
    }
    resp
}

/// rmcp's handling of `req`, boxed where it starts: its future is several KB, and
/// inline it would be copied once more into each future that awaits it ([`route`],
/// [`handle`], the front's box), on every request.
async fn serve<M: rmcp::transport::streamable_http_server::SessionManager>(
    service: &StreamableHttpService<Aggregator, M>,
    req: Request,
) -> Response {
    Box::pin(service.handle(req)).await.map(Body::new)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, F: std::future::Future>(
        _: impl Fn(&'static Aggregator, A, RequestContext<RoleServer>) -> F,
    ) -> usize {
        size_of::<F>()
    }

    /// rmcp spawns a task per request whose future holds the largest handler future
    /// inline, and tokio moves it whole into the task. Unboxed, ours made that about
    /// 40 KB a request (`docs/performance-log.md`, its MCP part).
    #[test]
    fn the_task_rmcp_spawns_per_request_stays_small() {
        use rmcp::ServerHandler as H;
        let handlers = [
            future_size(<Aggregator as H>::call_tool),
            future_size(<Aggregator as H>::get_prompt),
            future_size(<Aggregator as H>::read_resource),
            future_size(<Aggregator as H>::complete),
            future_size(<Aggregator as H>::list_tools),
        ];
        assert!(handlers.iter().all(|&n| n <= 16), "{handlers:?}");
        let per_request = future_size(<Aggregator as rmcp::Service<RoleServer>>::handle_request);
        assert!(per_request <= 8 * 1024, "{per_request} bytes");
    }

    /// The HTTP side of a request: rmcp's handling is boxed where it starts ([`serve`]),
    /// so the futures that await it, the front's boxed one among them, stay small and
    /// are not copied at its size on every request.
    #[test]
    fn the_http_entrys_future_stays_small() {
        fn size<F: std::future::Future>(
            _: impl Fn(&'static Entry, &'static Caller, Request, bool) -> F,
        ) -> usize {
            size_of::<F>()
        }
        // About 0.9 KB in a debug build; 6 KB with rmcp's handling inline.
        let routing = size(route);
        assert!(routing <= 2048, "{routing} bytes");
    }
}
