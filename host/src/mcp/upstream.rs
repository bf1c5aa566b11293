//! Upstream MCP sessions: rmcp's client over [`UpstreamHttp`]. Streamable HTTP first;
//! a server that refuses it with a 4xx gets [`LegacySse`], the HTTP+SSE transport of
//! MCP 2024-11-05.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rmcp::ServiceExt as _;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CancelledNotificationParam,
    ClientCapabilities, ClientConfig, ClientRequest, ClientResult, CompleteRequest,
    CompleteRequestParams, CompleteResult, ElicitRequest, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationCapability, ErrorData, FormElicitationCapability,
    GetExtensions as _, GetPromptRequest, GetPromptRequestParams, GetPromptResponse,
    Implementation, InputRequest, ProgressNotificationParam, ProgressToken, Prompt,
    ReadResourceRequest, ReadResourceRequestParams, ReadResourceResponse, RequestId, Resource,
    ResourceTemplate, ServerRequest, ServerResult, Tool, UrlElicitationCapability,
};
// Sampling, roots and logging are deprecated by SEP-2577 (MCP 2026-07-28) but still in
// use by servers on earlier versions, which the gateway relays.
#[allow(deprecated)]
use rmcp::model::{
    CreateMessageRequest, CreateMessageRequestParams, CreateMessageResult, ListRootsRequest,
    ListRootsResult, LoggingLevel, LoggingMessageNotificationParam,
};
use rmcp::model::{
    ResourceUpdatedNotificationParam, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::{
    InboundStreamOrigin, NotificationContext, OriginatingRequestId, Peer, PeerRequestOptions,
    RequestContext, RoleClient, RoleServer, RunningService, ServiceError,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

use super::legacy::LegacySse;
use super::transport::{
    InitAnswer, MAX_MESSAGE_BYTES, UpstreamError, UpstreamHttp, other_transport,
};

/// Receives the upstream's notifications for one session.
#[derive(Clone)]
#[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
pub struct Listener {
    /// Called when the upstream says its tools, prompts, resources or templates changed.
    pub on_change: Arc<dyn Fn() + Send + Sync>,
    /// The session's requests in flight for clients.
    calls: Arc<Calls>,
    /// The clients subscribed to the upstream's resources.
    subscribers: Arc<Subscribers>,
    /// Where log messages about no call go (see [`Listener::on_logging_message`]).
    on_log: Arc<dyn Fn(LoggingMessageNotificationParam) + Send + Sync>,
    /// Whether the session is one user's (per-user OAuth) rather than shared.
    one_user: bool,
}

impl Listener {
    #[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
    pub fn new(
        on_change: Arc<dyn Fn() + Send + Sync>,
        subscribers: Arc<Subscribers>,
        on_log: Arc<dyn Fn(LoggingMessageNotificationParam) + Send + Sync>,
        one_user: bool,
        unrelayed: Arc<Unrelayed>,
    ) -> Self {
        Self {
            on_change,
            calls: Arc::new(Calls {
                unrelayed,
                ..Calls::default()
            }),
            subscribers,
            on_log,
            one_user,
        }
    }
}

/// One client's subscription to an upstream resource.
#[derive(Clone)]
pub struct Subscriber {
    /// The client's session, or its `subscriptions/listen` request: one subscription per
    /// client and URI, however often it subscribes.
    pub session: Arc<str>,
    pub to: Updates,
    /// The URI as that client named it (with the connector prefix on `/v1/mcp`).
    pub uri: String,
}

/// Where a subscriber hears of updates.
#[derive(Clone)]
pub enum Updates {
    /// A session's own event stream (`resources/subscribe`, before 2026-07-28).
    Session(Peer<RoleServer>),
    /// An open `subscriptions/listen` request (2026-07-28), while `open`.
    Listen {
        sink: rmcp::service::SubscriptionSink,
        open: Arc<std::sync::atomic::AtomicBool>,
    },
}

impl Updates {
    fn is_closed(&self) -> bool {
        match self {
            Self::Session(peer) => peer.is_transport_closed(),
            Self::Listen { open, .. } => !open.load(Ordering::Relaxed),
        }
    }

    async fn updated(&self, uri: String) {
        let send = async {
            match self {
                Self::Session(peer) => {
                    let note = ResourceUpdatedNotificationParam::new(uri);
                    drop(peer.notify_resource_updated(note).await);
                }
                Self::Listen { sink, .. } => drop(sink.notify_resource_updated(uri).await),
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), send).await;
    }
}

/// The clients subscribed to one upstream's resources, by the upstream's URI. It
/// outlives upstream sessions: a new session subscribes to every URI again.
#[derive(Default)]
pub struct Subscribers(Mutex<HashMap<String, Vec<Subscriber>>>);

impl Subscribers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Subscriber>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `sub` to `upstream_uri`'s subscribers; true when it is the first (the
    /// upstream is to be asked).
    pub fn add(&self, upstream_uri: &str, sub: Subscriber) -> bool {
        let mut all = self.lock();
        let subs = all.entry(upstream_uri.to_owned()).or_default();
        subs.retain(|s| s.session != sub.session && !s.to.is_closed());
        subs.push(sub);
        subs.len() == 1
    }

    /// Removes `session`'s subscription; true when none is left (the upstream is to be
    /// told).
    pub fn remove(&self, upstream_uri: &str, session: &str) -> bool {
        let mut all = self.lock();
        let Some(subs) = all.get_mut(upstream_uri) else {
            return false;
        };
        subs.retain(|s| &*s.session != session && !s.to.is_closed());
        let none = subs.is_empty();
        if none {
            all.remove(upstream_uri);
        }
        none
    }

    /// Forgets the subscriptions of client sessions that ended.
    fn prune(all: &mut HashMap<String, Vec<Subscriber>>) {
        all.retain(|_, subs| {
            subs.retain(|s| !s.to.is_closed());
            !subs.is_empty()
        });
    }

    /// The upstream URIs a live client session is subscribed to.
    pub fn uris(&self) -> Vec<String> {
        let mut all = self.lock();
        Self::prune(&mut all);
        all.keys().cloned().collect()
    }

    /// Tells each subscriber of `params.uri` that it changed, by the URI it subscribed
    /// with.
    async fn updated(&self, params: ResourceUpdatedNotificationParam) {
        let subs = {
            let mut all = self.lock();
            Self::prune(&mut all);
            all.get(&params.uri).cloned().unwrap_or_default()
        };
        for sub in subs {
            sub.to.updated(sub.uri).await;
        }
    }
}

/// The client request an upstream request is made for: where its progress, and the
/// upstream's requests made while it runs, go.
#[derive(Clone)]
pub struct Asker {
    /// Where the call's progress and log messages go.
    pub target: Target,
    /// The client's JSON-RPC id for its request: the gateway's requests to the client
    /// go out on that request's event stream.
    pub request: RequestId,
    /// How the client can be asked something.
    pub reach: Reach,
    /// What the client declared it can answer (at `initialize`, or in the request's
    /// `_meta` on 2026-07-28).
    pub caps: Option<ClientCapabilities>,
    /// How long the client may take to answer (the upstream waits no longer).
    pub patience: std::time::Duration,
}

/// The client end of a call: its request's event stream, and what it asked to hear.
#[derive(Clone)]
pub struct Target {
    pub peer: Peer<RoleServer>,
    /// The client's `progressToken`, when it asked for progress.
    pub progress: Option<ProgressToken>,
    /// Which of the upstream's log messages about this call the client gets.
    pub logs: Logs,
}

/// How the upstream's requests reach the client of a call.
#[derive(Clone)]
pub enum Reach {
    /// In a session: sent to the client on the call's event stream.
    Session,
    /// A 2026-07-28 request: returned to the client in an `InputRequiredResult`, the
    /// call parked until it answers ([`super::rounds`]).
    Rounds(super::rounds::Asking),
    /// Not at all: a sessionless request on a revision before 2026-07-28 has nowhere to
    /// send the answer.
    Nowhere,
}

/// Which log messages (`notifications/message`) a client session gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// None: a 2026-07-28 request that did not opt in.
    Off,
    /// Every one the upstream sends: a session that set no level (the server decides).
    All,
    /// Those at this level or above (`logging/setLevel`, or a 2026-07-28 request's
    /// `io.modelcontextprotocol/logLevel`), by [`severity`].
    AtLeast(u8),
}

impl Logs {
    #[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
    pub fn admits(self, level: LoggingLevel) -> bool {
        match self {
            Self::Off => false,
            Self::All => true,
            Self::AtLeast(min) => severity(level) >= min,
        }
    }
}

/// A log level's rank, debug lowest (RFC 5424 order, as MCP defines it).
#[allow(deprecated)]
pub fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

impl Asker {
    /// Whether the client can answer a request it declared `declared` for.
    pub(super) fn can(&self, declared: impl Fn(&ClientCapabilities) -> bool) -> bool {
        !matches!(self.reach, Reach::Nowhere) && self.caps.as_ref().is_some_and(declared)
    }

    /// Where the call's progress and log messages go now: in rounds, the latest
    /// round's request.
    fn target(&self) -> Target {
        match &self.reach {
            Reach::Rounds(asking) => asking.target(),
            _ => self.target.clone(),
        }
    }

    /// Passes the upstream's request on to the client and returns the client's answer.
    /// It ends when the client answers, when the upstream cancels its request
    /// (`cancelled`), or after [`Asker::patience`].
    pub(super) async fn ask(
        &self,
        request: ServerRequest,
        cancelled: tokio_util::sync::CancellationToken,
    ) -> Result<ClientResult, ErrorData> {
        match &self.reach {
            Reach::Session => self.ask_in_session(request, cancelled).await,
            Reach::Rounds(asking) => self.ask_in_rounds(asking, request, cancelled).await,
            Reach::Nowhere => Err(ErrorData::internal_error(
                "the client cannot be asked anything",
                None,
            )),
        }
    }

    /// Sends the request on the event stream of the client request that caused it. The
    /// send runs in a task of its own: inside rmcp's handler the request would be
    /// marked as coming from the upstream's request (rmcp's task-local), not the
    /// client's. The client is told when the upstream cancels or time runs out.
    async fn ask_in_session(
        &self,
        mut request: ServerRequest,
        cancelled: tokio_util::sync::CancellationToken,
    ) -> Result<ClientResult, ErrorData> {
        request
            .extensions_mut()
            .insert(OriginatingRequestId(self.request.clone()));
        let peer = self.target.peer.clone();
        let patience = self.patience;
        let asked = tokio::spawn(async move {
            let handle = peer
                .send_request_with_option(request, PeerRequestOptions::no_options())
                .await
                .map_err(|e| client_error(&e))?;
            let id = handle.id.clone();
            let why = tokio::select! {
                answer = handle.await_response() => return answer.map_err(|e| client_error(&e)),
                () = cancelled.cancelled() => "the MCP server cancelled its request",
                () = tokio::time::sleep(patience) => "the client did not answer in time",
            };
            let note = CancelledNotificationParam::new(Some(id), Some(why.into()));
            let told = peer.notify_cancelled(note);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), told).await;
            Err(ErrorData::internal_error(why, None))
        });
        asked.await.unwrap_or_else(|e| {
            Err(ErrorData::internal_error(
                format!("asking the client failed: {e}"),
                None,
            ))
        })
    }

    /// Hands the request to the client's current round as an input request and waits
    /// for the answer the client sends with its next round.
    #[allow(deprecated)] // Sampling and roots are deprecated by SEP-2577, not yet gone.
    async fn ask_in_rounds(
        &self,
        asking: &super::rounds::Asking,
        request: ServerRequest,
        cancelled: tokio_util::sync::CancellationToken,
    ) -> Result<ClientResult, ErrorData> {
        let input = match request {
            ServerRequest::ElicitRequest(r) => InputRequest::Elicitation(r),
            ServerRequest::CreateMessageRequest(r) => InputRequest::CreateMessage(r),
            ServerRequest::ListRootsRequest(r) => InputRequest::ListRoots(r),
            _ => {
                return Err(ErrorData::internal_error(
                    "only elicitation, sampling and roots can be asked in rounds",
                    None,
                ));
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        asking
            .ask(super::rounds::Question {
                request: input.clone(),
                answer: tx,
            })
            .await?;
        let answer = tokio::select! {
            a = rx => a.map_err(|_| ErrorData::internal_error(
                "the client did not answer the request", None))?,
            () = cancelled.cancelled() => {
                return Err(ErrorData::internal_error("the MCP server cancelled its request", None));
            }
            () = tokio::time::sleep(self.patience) => {
                return Err(ErrorData::internal_error("the client did not answer in time", None));
            }
        };
        let wrong = |e: serde_json::Error| {
            ErrorData::internal_error(format!("the client's answer is not valid: {e}"), None)
        };
        Ok(match input {
            InputRequest::Elicitation(_) => {
                ClientResult::ElicitResult(serde_json::from_value(answer).map_err(wrong)?)
            }
            InputRequest::CreateMessage(_) => ClientResult::CreateMessageResult(Box::new(
                serde_json::from_value(answer).map_err(wrong)?,
            )),
            InputRequest::ListRoots(_) => {
                ClientResult::ListRootsResult(serde_json::from_value(answer).map_err(wrong)?)
            }
            _ => {
                return Err(ErrorData::internal_error(
                    "an input request of a kind this gateway does not know",
                    None,
                ));
            }
        })
    }
}

/// A client's failure to answer, as the upstream is told it.
fn client_error(e: &ServiceError) -> ErrorData {
    match e {
        ServiceError::McpError(e) => e.clone(),
        other => ErrorData::internal_error(
            format!("the client of the call did not answer: {other}"),
            None,
        ),
    }
}

/// The requests one upstream session has in flight for clients: by rmcp's request id,
/// so a request the upstream makes on a call's event stream reaches that call's client;
/// and by rmcp's progress token (rmcp gives every request one of its own, unique in the
/// session), so progress reaches the client under the token it chose. Clients choose
/// tokens and ids freely and one shared upstream session carries many clients' calls,
/// so nothing of the client's is what the upstream sees.
///
/// rmcp numbers a request as it sends it, so the upstream can ask about a call, report
/// its progress or log about it before the call is registered here; a lookup that
/// misses while requests are being sent waits for their registration ([`Calls::find`]).
#[derive(Default)]
struct Calls {
    inner: Mutex<CallsInner>,
    /// Woken whenever a request being sent is registered, or failed to send.
    registered: tokio::sync::Notify,
    /// Log messages about calls read from the upstream and not yet passed on.
    unrelayed: Arc<Unrelayed>,
}

/// Log messages an upstream sent on a call's event stream that have not been passed on
/// (or dropped) yet, per call. rmcp hands each notification to a task of its own and a
/// call's answer straight to the waiting request, so a log sent just before the answer
/// could otherwise reach the client after it. The transport counts each log as it reads
/// it, in stream order ([`super::transport::mark_logs`]), so when the answer arrives
/// every log sent before it is counted; the call waits for its count to reach zero
/// before answering its client. Only messages rmcp hands to the listener are counted,
/// and the listener takes each off once it has passed it on or dropped it, so a count
/// made after its call ended (a log behind the answer) does not outlive the message.
#[derive(Default)]
pub struct Unrelayed {
    counts: Mutex<HashMap<RequestId, usize>>,
    relayed: tokio::sync::Notify,
}

/// How long an answered call waits for its log messages to be passed on. Relaying one is
/// a channel send; this bounds a client too slow to take it (the relay itself gives up
/// after two seconds), which then gets the answer first.
const RELAY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Unrelayed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A log message about `call` was read from the upstream.
    pub(super) fn read(&self, call: &RequestId) {
        *self.lock().entry(call.clone()).or_default() += 1;
    }

    /// A log message about `call` was passed on, or dropped.
    fn done(&self, call: &RequestId) {
        {
            let mut counts = self.lock();
            if let Some(n) = counts.get_mut(call) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(call);
                }
            }
        }
        self.relayed.notify_waiters();
    }

    /// Waits (at most [`RELAY_WAIT`]) until every log message read about `call` was
    /// passed on, then forgets the call.
    async fn drain(&self, call: &RequestId) {
        let deadline = tokio::time::Instant::now() + RELAY_WAIT;
        loop {
            // Listening before looking, so a relay in between is not missed.
            let relayed = self.relayed.notified();
            tokio::pin!(relayed);
            relayed.as_mut().enable();
            if !self.lock().contains_key(call) {
                return;
            }
            if tokio::time::timeout_at(deadline, relayed).await.is_err() {
                self.forget(call);
                return;
            }
        }
    }

    fn forget(&self, call: &RequestId) {
        self.lock().remove(call);
    }

    #[cfg(test)]
    pub(super) fn count(&self, call: &RequestId) -> usize {
        self.lock().get(call).copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct CallsInner {
    by_id: HashMap<RequestId, Asker>,
    by_progress: HashMap<ProgressToken, RequestId>,
    /// Requests handed to rmcp and not yet registered.
    sending: usize,
}

/// How long a lookup waits for requests being sent to be registered. Registration
/// follows rmcp's hand-off at once; this only bounds a stalled sender.
const REGISTRATION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A request on its way to rmcp: counted in [`CallsInner::sending`] until dropped,
/// after its registration (or its failure to send).
struct Sending<'a>(&'a Calls);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        {
            let mut calls = self.0.lock();
            calls.sending = calls.sending.saturating_sub(1);
        }
        self.0.registered.notify_waiters();
    }
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, CallsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a request as being sent; register it before dropping the guard.
    fn sending(&self) -> Sending<'_> {
        self.lock().sending += 1;
        Sending(self)
    }

    /// What `find` finds, looking again each time a request being sent is registered
    /// (for at most [`REGISTRATION_WAIT`]); `None` once nothing is being sent.
    async fn find<T>(&self, find: impl Fn(&CallsInner) -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + REGISTRATION_WAIT;
        loop {
            // Listening before looking, so a registration in between is not missed.
            let registered = self.registered.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            {
                let calls = self.lock();
                if let Some(found) = find(&calls) {
                    return Some(found);
                }
                if calls.sending == 0 {
                    return None;
                }
            }
            if tokio::time::timeout_at(deadline, registered).await.is_err() {
                return None;
            }
        }
    }

    /// The client whose call the upstream's request `cx` came with: the one whose
    /// upstream request's event stream carried it. On a per-user session (`one_user`),
    /// with `caused_by_a_call` (elicitation and sampling, which a server makes while a
    /// call waits for them), a request on the session's own stream (the Python SDK's
    /// `session.create_message` without `related_request_id`) or over the legacy
    /// HTTP+SSE transport (one stream for everything) is the only call's when the
    /// session has exactly one in flight, as rmcp's own in-flight check reasons. On a
    /// shared session that call may be another caller's (the one it was about may have
    /// just ended), so such a request is nobody's; so are roots, which are the
    /// session's, not a call's.
    async fn asker_of(
        &self,
        cx: &RequestContext<RoleClient>,
        caused_by_a_call: bool,
        one_user: bool,
    ) -> Option<Asker> {
        match cx.extensions.get::<InboundStreamOrigin>() {
            Some(InboundStreamOrigin::OutboundRequest(id)) => {
                self.find(|calls| calls.by_id.get(id).cloned()).await
            }
            _ if one_user && caused_by_a_call => {
                self.find(|calls| match calls.by_id.len() {
                    1 => calls.by_id.values().next().cloned(),
                    _ => None,
                })
                .await
            }
            _ => None,
        }
    }

    /// Passes an upstream progress notification to the client whose call it is about.
    /// A token of no running request (a late notification, or one the upstream made
    /// up) is dropped.
    async fn progress(&self, mut params: ProgressNotificationParam) {
        let target = self
            .find(|calls| {
                calls
                    .by_progress
                    .get(&params.progress_token)
                    .and_then(|id| calls.by_id.get(id))
                    .map(|a| a.target())
            })
            .await
            .and_then(|t| Some((t.peer, t.progress?)));
        let Some((peer, token)) = target else {
            tracing::debug!("dropped a progress notification for no call in progress");
            return;
        };
        params.progress_token = token;
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            peer.notify_progress(params),
        )
        .await;
    }
}

/// How often a request with progress yields after its answer, so progress
/// notifications that came before the answer reach the client before it.
const PROGRESS_CATCH_UP_YIELDS: usize = 4;

/// What an upstream's elicitation gets when no client can answer it.
fn declined() -> ElicitResult {
    ElicitResult::new(ElicitationAction::Decline)
}

/// An upstream request in flight. Dropped before its answer (the client cancelled, or
/// went away), it tells the upstream with `notifications/cancelled`; either way it
/// leaves [`Calls`].
struct InFlight {
    peer: Peer<RoleClient>,
    calls: Arc<Calls>,
    id: RequestId,
    progress: ProgressToken,
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut calls = self.calls.lock();
            calls.by_id.remove(&self.id);
            calls.by_progress.remove(&self.progress);
        }
        self.calls.unrelayed.forget(&self.id);
        if self.answered {
            return;
        }
        let peer = self.peer.clone();
        let id = self.id.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let cancelled = CancelledNotificationParam::new(
                    Some(id),
                    Some("cancelled by the client".into()),
                );
                let _ = peer.notify_cancelled(cancelled).await;
            });
        }
    }
}

impl rmcp::ClientHandler for Listener {
    /// Declares every client capability, so upstreams offer what they offer only to
    /// clients that can elicit, sample or list roots; the requests are passed to the
    /// client whose call caused them, and answered as a client without the capability
    /// would when it did not declare it.
    #[allow(deprecated)] // Roots and sampling are deprecated by SEP-2577, not yet gone.
    fn get_info(&self) -> ClientConfig {
        let capabilities = ClientCapabilities::builder()
            .enable_roots()
            .enable_sampling()
            .enable_elicitation_with(
                ElicitationCapability::new()
                    .with_form(FormElicitationCapability::new())
                    .with_url(UrlElicitationCapability::new()),
            )
            .build();
        ClientConfig::new(
            capabilities,
            Implementation::new("portcullis", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        (self.on_change)();
    }

    async fn on_resource_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        (self.on_change)();
    }

    async fn on_prompt_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        (self.on_change)();
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        self.calls.progress(params).await;
    }

    /// A log message marked with the call whose event stream carried it
    /// ([`super::transport::mark_logs`]) goes to that call's client, as its level
    /// allows, and to nobody once the call has ended; one with no call (the session's
    /// own stream) goes to `on_log`.
    #[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
    async fn on_logging_message(
        &self,
        mut params: LoggingMessageNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        let (call, logger) = super::transport::unmark_log(params.logger.take());
        params.logger = logger;
        let Some(call) = call else {
            (self.on_log)(params);
            return;
        };
        let target = self
            .calls
            .find(|calls| calls.by_id.get(&call).map(Asker::target))
            .await;
        if let Some(t) = target.filter(|t| t.logs.admits(params.level)) {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                t.peer.notify_logging_message(params),
            )
            .await;
        }
        self.calls.unrelayed.done(&call);
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        self.subscribers.updated(params).await;
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        cx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let url = matches!(params, ElicitRequestParams::UrlElicitationParams { .. });
        let asker = self.calls.asker_of(&cx, true, self.one_user).await;
        let asker = asker.filter(|a| {
            a.can(|c| {
                c.elicitation.as_ref().is_some_and(|e| match url {
                    true => e.url.is_some(),
                    // An empty `elicitation: {}` is form mode (before modes existed).
                    false => e.form.is_some() || e.url.is_none(),
                })
            })
        });
        let Some(asker) = asker else {
            return Ok(declined());
        };
        match asker
            .ask(
                ServerRequest::ElicitRequest(ElicitRequest::new(params)),
                cx.ct,
            )
            .await?
        {
            ClientResult::ElicitResult(r) => Ok(r),
            _ => Err(ErrorData::internal_error(
                "the client answered an elicitation with something else",
                None,
            )),
        }
    }

    #[allow(deprecated)] // Sampling is deprecated by SEP-2577, not yet gone.
    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        cx: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let asker = self
            .calls
            .asker_of(&cx, true, self.one_user)
            .await
            .filter(|a| a.can(|c| c.sampling.is_some()));
        let Some(asker) = asker else {
            return Err(ErrorData::invalid_request(
                "sampling is not available: the request came with no call, or the client that made the call does not support sampling",
                None,
            ));
        };
        match asker
            .ask(
                ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params)),
                cx.ct,
            )
            .await?
        {
            ClientResult::CreateMessageResult(r) => Ok(*r),
            _ => Err(ErrorData::internal_error(
                "the client answered a sampling request with something else",
                None,
            )),
        }
    }

    #[allow(deprecated)] // Roots are deprecated by SEP-2577, not yet gone.
    async fn list_roots(
        &self,
        cx: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        let asker = self
            .calls
            .asker_of(&cx, false, self.one_user)
            .await
            .filter(|a| a.can(|c| c.roots.is_some()));
        // No call, or a client without roots: a client with no roots to offer.
        let Some(asker) = asker else {
            return Ok(ListRootsResult::default());
        };
        match asker
            .ask(
                ServerRequest::ListRootsRequest(ListRootsRequest::default()),
                cx.ct,
            )
            .await?
        {
            ClientResult::ListRootsResult(r) => Ok(r),
            _ => Err(ErrorData::internal_error(
                "the client answered a roots request with something else",
                None,
            )),
        }
    }
}

/// How a session reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Streamable HTTP (MCP 2025-03-26 and later): the one tried first.
    Streamable,
    /// HTTP+SSE (MCP 2024-11-05): for servers that refuse a streamable `initialize`.
    LegacySse,
}

/// One live upstream MCP session.
pub struct Session {
    service: RunningService<RoleClient, Listener>,
    flavor: Flavor,
    /// The server named no session at `initialize` (streamable HTTP only), so it cannot
    /// tell this session from another of ours (`super::per_thread`).
    stateless: bool,
}

/// A connector's catalog as its upstream lists it (names not yet prefixed).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Listing {
    pub tools: Vec<Tool>,
    pub prompts: Vec<Prompt>,
    pub resources: Vec<Resource>,
    pub templates: Vec<ResourceTemplate>,
    /// Whether the upstream answers `completion/complete`.
    pub completions: bool,
    /// Whether the upstream takes `resources/subscribe`.
    pub subscribe: bool,
}

impl Session {
    /// Opens a session (the `initialize` handshake), first over `preferred` (the flavour
    /// that worked last time, else streamable HTTP). A server that answers it with a
    /// 4xx other than an authorization failure is tried once with the other flavour,
    /// as the MCP specification's backwards-compatibility section describes.
    pub async fn open(
        http: UpstreamHttp,
        url: &url::Url,
        listener: Listener,
        preferred: Flavor,
    ) -> anyhow::Result<Self> {
        let (first, wrong_flavor) = Self::open_as(preferred, &http, url, listener.clone()).await;
        let Err(e) = first else { return first };
        let Some(status) = wrong_flavor else {
            return Err(e);
        };
        let other = match preferred {
            Flavor::Streamable => Flavor::LegacySse,
            Flavor::LegacySse => Flavor::Streamable,
        };
        tracing::info!(
            connector = %http.connector.id,
            "MCP server answered HTTP {status} to {preferred:?}; trying {other:?}"
        );
        Self::open_as(other, &http, url, listener)
            .await
            .0
            .map_err(|second| anyhow::anyhow!("{preferred:?}: {e:#}; {other:?}: {second:#}"))
    }

    /// Opens another session with a server whose shared session named none
    /// (`super::per_thread`): streamable HTTP only, and refused (the session closed again)
    /// if the server names one this time.
    pub async fn open_stateless(
        http: UpstreamHttp,
        url: &url::Url,
        listener: Listener,
    ) -> anyhow::Result<Self> {
        let open = async {
            Self::open_as(Flavor::Streamable, &http, url, listener)
                .await
                .0
        };
        let s = super::within_open_timeout(open).await?;
        if !s.stateless {
            s.close().await;
            anyhow::bail!("the MCP server named a session this time");
        }
        Ok(s)
    }

    /// One attempt; on failure, also the status that says the server may speak the
    /// other flavour.
    async fn open_as(
        flavor: Flavor,
        http: &UpstreamHttp,
        url: &url::Url,
        listener: Listener,
    ) -> (anyhow::Result<Self>, Option<u16>) {
        let init =
            |e: rmcp::service::ClientInitializeError| anyhow::anyhow!("{}", describe_init(&e));
        match flavor {
            Flavor::Streamable => {
                let answer = Arc::new(InitAnswer::default());
                let mut probe = http.clone();
                probe.init = Some(answer.clone());
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .max_sse_event_size(MAX_MESSAGE_BYTES);
                let transport = StreamableHttpClientTransport::with_client(probe, config);
                match listener.serve(transport).await {
                    Ok(service) => {
                        let stateless = answer.named_no_session.load(Ordering::Relaxed);
                        (
                            Ok(Self {
                                service,
                                flavor,
                                stateless,
                            }),
                            None,
                        )
                    }
                    Err(e) => {
                        let status = answer.refused.load(Ordering::Relaxed);
                        (Err(init(e)), (status != 0).then_some(status))
                    }
                }
            }
            Flavor::LegacySse => {
                let transport = match LegacySse::connect(http.clone(), url).await {
                    Ok(t) => t,
                    Err(UpstreamError::Status(s)) if other_transport(s) => {
                        return (Err(UpstreamError::Status(s).into()), Some(s));
                    }
                    Err(e) => return (Err(e.into()), None),
                };
                match listener.serve(transport).await {
                    Ok(service) => (
                        Ok(Self {
                            service,
                            flavor,
                            stateless: false,
                        }),
                        None,
                    ),
                    Err(e) => (Err(init(e)), None),
                }
            }
        }
    }

    /// The flavour this session speaks.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Whether the server named no session at `initialize`, so it cannot tell this
    /// session from another of ours.
    pub fn stateless(&self) -> bool {
        self.stateless
    }

    /// Lists everything the upstream offers, following cursors. An upstream without
    /// resources or prompts (it did not announce the capability, or answers "method not
    /// found") simply has none.
    pub async fn list(&self) -> Result<Listing, ServiceError> {
        let caps = self
            .service
            .peer_info()
            .map(|i| i.capabilities.clone())
            .unwrap_or_default();
        let tools = if caps.tools.is_some() {
            self.service.list_all_tools().await?
        } else {
            Vec::new()
        };
        let (resources, templates) = if caps.resources.is_some() {
            (
                optional(self.service.list_all_resources().await)?,
                optional(self.service.list_all_resource_templates().await)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let prompts = if caps.prompts.is_some() {
            optional(self.service.list_all_prompts().await)?
        } else {
            Vec::new()
        };
        Ok(Listing {
            tools,
            prompts,
            resources,
            templates,
            completions: caps.completions.is_some(),
            subscribe: caps
                .resources
                .as_ref()
                .is_some_and(|r| r.subscribe == Some(true)),
        })
    }

    /// Sends one request for `asker` and waits for its answer (see [`InFlight`]).
    async fn request(
        &self,
        request: ClientRequest,
        asker: &Asker,
    ) -> Result<ServerResult, ServiceError> {
        let calls = self.service.service().calls.clone();
        let sending = calls.sending();
        let handle = self
            .service
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await?;
        {
            let mut c = calls.lock();
            c.by_id.insert(handle.id.clone(), asker.clone());
            c.by_progress
                .insert(handle.progress_token.clone(), handle.id.clone());
        }
        drop(sending);
        let mut in_flight = InFlight {
            peer: self.service.peer().clone(),
            calls,
            id: handle.id.clone(),
            progress: handle.progress_token.clone(),
            answered: false,
        };
        let answer = handle.await_response().await;
        in_flight.answered = true;
        // Log messages the upstream sent before its answer reach the client first.
        in_flight.calls.unrelayed.drain(&in_flight.id).await;
        if asker.target.progress.is_some() {
            // rmcp hands each notification to a task of its own and the answer straight
            // to the waiting request, so the upstream's last progress notifications,
            // sent before its answer, may not have been passed on yet. Their tasks exist
            // by now: letting them run first keeps the order the upstream sent (best
            // effort: progress is not counted as log messages are).
            for _ in 0..PROGRESS_CATCH_UP_YIELDS {
                tokio::task::yield_now().await;
            }
        }
        answer
    }

    pub async fn call_tool(
        &self,
        params: CallToolRequestParams,
        asker: &Asker,
    ) -> Result<CallToolResponse, ServiceError> {
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        match self.request(request, asker).await? {
            ServerResult::CallToolResult(r) => Ok(CallToolResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(CallToolResponse::InputRequired(r)),
            ServerResult::CreateTaskResult(r) => Ok(CallToolResponse::Task(r)),
            _ => Err(ServiceError::UnexpectedResponse),
        }
    }

    pub async fn read_resource(
        &self,
        params: ReadResourceRequestParams,
        asker: &Asker,
    ) -> Result<ReadResourceResponse, ServiceError> {
        let request = ClientRequest::ReadResourceRequest(ReadResourceRequest::new(params));
        match self.request(request, asker).await? {
            ServerResult::ReadResourceResult(r) => Ok(ReadResourceResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(ReadResourceResponse::InputRequired(r)),
            _ => Err(ServiceError::UnexpectedResponse),
        }
    }

    pub async fn get_prompt(
        &self,
        params: GetPromptRequestParams,
        asker: &Asker,
    ) -> Result<GetPromptResponse, ServiceError> {
        let request = ClientRequest::GetPromptRequest(GetPromptRequest::new(params));
        match self.request(request, asker).await? {
            ServerResult::GetPromptResult(r) => Ok(GetPromptResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(GetPromptResponse::InputRequired(r)),
            _ => Err(ServiceError::UnexpectedResponse),
        }
    }

    /// `resources/subscribe` (before MCP 2026-07-28; rmcp marks it deprecated for that).
    #[allow(deprecated)]
    pub async fn subscribe(&self, uri: &str) -> Result<(), ServiceError> {
        self.service
            .subscribe(SubscribeRequestParams::new(uri.to_owned()))
            .await
    }

    #[allow(deprecated)]
    pub async fn unsubscribe(&self, uri: &str) -> Result<(), ServiceError> {
        self.service
            .unsubscribe(UnsubscribeRequestParams::new(uri.to_owned()))
            .await
    }

    pub async fn complete(
        &self,
        params: CompleteRequestParams,
        asker: &Asker,
    ) -> Result<CompleteResult, ServiceError> {
        let request = ClientRequest::CompleteRequest(CompleteRequest::new(params));
        match self.request(request, asker).await? {
            ServerResult::CompleteResult(r) => Ok(r),
            _ => Err(ServiceError::UnexpectedResponse),
        }
    }

    /// Whether the session's connection is gone (the next call needs a new session).
    pub fn is_closed(&self) -> bool {
        self.service.is_transport_closed()
    }

    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

impl super::per_thread::Closable for Session {
    fn is_closed(&self) -> bool {
        Session::is_closed(self)
    }

    fn close(self) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(Session::close(self))
    }
}

fn optional<T>(r: Result<Vec<T>, ServiceError>) -> Result<Vec<T>, ServiceError> {
    match r {
        Err(ServiceError::McpError(e)) if e.code == rmcp::model::ErrorCode::METHOD_NOT_FOUND => {
            Ok(Vec::new())
        }
        other => other,
    }
}

/// Whether a failed request may be sent again on a new session: the connection broke
/// rather than the upstream answering. Over HTTP+SSE the server acknowledges a message
/// before it answers on the event stream, so a stream that closes while a request waits
/// may have lost the answer to a call that ran: only a failed send is repeated there.
pub fn worth_retrying(e: &ServiceError, flavor: Flavor) -> bool {
    match e {
        ServiceError::TransportSend(_) => true,
        ServiceError::TransportClosed => flavor == Flavor::Streamable,
        _ => false,
    }
}

fn describe_init(e: &rmcp::service::ClientInitializeError) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answered_call_waits_for_its_counted_log_messages_and_no_longer() {
        let unrelayed = Arc::new(Unrelayed::default());
        let (quiet, chatty, lost) = (
            RequestId::Number(1),
            RequestId::Number(2),
            RequestId::Number(3),
        );
        // Nothing counted: no wait.
        unrelayed.drain(&quiet).await;
        // Two logs read; passed on later by other tasks, as rmcp's handler tasks do.
        unrelayed.read(&chatty);
        unrelayed.read(&chatty);
        let relayed = Arc::new(Mutex::new(0));
        let relay = {
            let (unrelayed, relayed, chatty) = (unrelayed.clone(), relayed.clone(), chatty.clone());
            tokio::spawn(async move {
                for _ in 0..2 {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    *relayed.lock().expect("lock") += 1;
                    unrelayed.done(&chatty);
                }
            })
        };
        unrelayed.drain(&chatty).await;
        assert_eq!(
            *relayed.lock().expect("lock"),
            2,
            "drained before both were relayed"
        );
        assert_eq!(unrelayed.count(&chatty), 0);
        relay.await.expect("relay task");
        // A counted log nobody passes on (rmcp refused it) holds the answer only for
        // RELAY_WAIT, and the call is forgotten.
        unrelayed.read(&lost);
        unrelayed.drain(&lost).await;
        assert_eq!(unrelayed.count(&lost), 0);
        // A late `done` for a forgotten call changes nothing.
        unrelayed.done(&lost);
        assert_eq!(unrelayed.count(&lost), 0);
    }
}
