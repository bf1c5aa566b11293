//! Upstream MCP sessions: rmcp's client over our egress client.
//!
//! rmcp's streamable-HTTP client is generic over [`StreamableHttpClient`]; [`EgressHttp`]
//! implements it on [`Egress`], so upstream MCP traffic gets the same resolver checks, TLS,
//! redirect refusal and timeouts as the HTTP proxy. It adds the connector's credential to
//! every request itself (rmcp's `auth_header` is never used): a client-credentials token
//! or a user's OAuth token is read fresh each time, and an upstream 401 invalidates or
//! refreshes it and the message is sent once more.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt as _;
use rmcp::ServiceExt as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig,
    ClientJsonRpcMessage, ClientRequest, Implementation, ReadResourceRequestParams,
    ReadResourceResponse, Resource, ResourceTemplate, ServerJsonRpcMessage, Tool,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, SseError, StreamableHttpClient, StreamableHttpClientTransportConfig,
    StreamableHttpError, StreamableHttpPostResponse,
};
use sse_stream::{Sse, SseStream};

use crate::connections::{ConnError, Connections, PerUser};
use crate::credentials::{Credential, CredentialError};
use crate::egress::{Egress, EgressError, InBody};

use super::legacy::LegacySse;

/// Largest upstream JSON body or SSE event accepted (a tool result, a catalog page).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest error body read to find a JSON-RPC error in it.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why an upstream MCP request failed before rmcp could make sense of the answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Connection(#[from] ConnError),
    #[error("the upstream rejected the connector's credential (HTTP {0})")]
    Rejected(u16),
    #[error("reading the upstream response failed: {0}")]
    Body(String),
    #[error("the MCP server URL is not usable: {0}")]
    Url(String),
    #[error("the MCP server answered HTTP {0}")]
    Status(u16),
    #[error("legacy HTTP+SSE transport: {0}")]
    Legacy(String),
}

/// How a request to the upstream is authorized.
#[derive(Clone)]
pub enum Auth {
    /// The connector's shared credential (none, bearer, API key, basic, client credentials).
    Shared(Credential),
    /// One user's OAuth connection.
    User {
        connections: Arc<Connections>,
        per_user: Arc<PerUser>,
        login: Arc<str>,
    },
}

/// rmcp's HTTP client, implemented on the egress client with the connector's credential.
#[derive(Clone)]
pub struct EgressHttp {
    egress: Egress,
    pub(super) connector: Arc<str>,
    auth: Auth,
    /// Set while a session is being opened: the status of a 4xx answer to `initialize`
    /// other than an authorization failure, which marks a server without streamable
    /// HTTP (the specification's cue to try the legacy HTTP+SSE transport).
    init_refused: Option<Arc<AtomicU16>>,
}

type Upstream<E> = Result<E, StreamableHttpError<UpstreamError>>;

impl EgressHttp {
    /// The longest wait for an upstream answer.
    pub fn read_timeout(&self) -> std::time::Duration {
        self.egress.read_timeout()
    }

    pub fn new(egress: Egress, connector: Arc<str>, auth: Auth) -> Self {
        Self {
            egress,
            connector,
            auth,
            init_refused: None,
        }
    }

    /// Sends one request with the credential; on a 401 the credential is invalidated (or
    /// the user's token refreshed) and the request sent once more. Every MCP message is
    /// ours to repeat: a 401 means the upstream did not act on it.
    pub(super) async fn send(
        &self,
        method: Method,
        url: &url::Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<http::Response<InBody>, UpstreamError> {
        let mut retried = false;
        loop {
            let mut h = headers.clone();
            let mut u = url.clone();
            let sent = self.authorize(&mut h, &mut u).await?;
            let resp = self
                .egress
                .send(method.clone(), &u, h, axum::body::Body::from(body.clone()))
                .await?;
            if resp.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(resp);
            }
            retried = true;
            match &self.auth {
                Auth::Shared(c) => {
                    c.rejected(sent.as_ref());
                    if !matches!(c, Credential::ClientCredentials(_)) {
                        return Ok(resp);
                    }
                }
                Auth::User {
                    connections,
                    per_user,
                    login,
                } => match &sent {
                    Some(sent) => connections.rejected(per_user, login, sent).await,
                    None => return Ok(resp),
                },
            }
            tracing::info!(connector = %self.connector, "upstream MCP server answered 401; retrying once with a new token");
        }
    }

    async fn authorize(
        &self,
        headers: &mut HeaderMap,
        url: &mut url::Url,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        match &self.auth {
            Auth::Shared(c) => {
                c.apply(&self.connector, &self.egress, headers, url).await?;
            }
            Auth::User {
                connections,
                per_user,
                login,
            } => {
                let v = connections.authorize(per_user, login, None).await?;
                headers.insert(header::AUTHORIZATION, v);
            }
        }
        Ok(headers.get(header::AUTHORIZATION).cloned())
    }
}

fn base_headers(
    accept: &'static str,
    session_id: Option<&str>,
    custom: HashMap<HeaderName, HeaderValue>,
) -> Upstream<HeaderMap> {
    let mut h = HeaderMap::new();
    for (name, value) in custom {
        // rmcp adds MCP-Protocol-Version here; nothing may replace what we set below.
        if matches!(
            name.as_str(),
            "accept" | "mcp-session-id" | "last-event-id" | "authorization"
        ) {
            return Err(StreamableHttpError::ReservedHeaderConflict(
                name.to_string(),
            ));
        }
        h.insert(name, value);
    }
    h.insert(header::ACCEPT, HeaderValue::from_static(accept));
    if let Some(id) = session_id {
        let v = HeaderValue::from_str(id).map_err(|_| {
            StreamableHttpError::UnexpectedServerResponse("unusable session id".into())
        })?;
        h.insert("mcp-session-id", v);
    }
    Ok(h)
}

fn parse(uri: &str) -> Upstream<url::Url> {
    url::Url::parse(uri).map_err(|e| StreamableHttpError::Client(UpstreamError::Url(e.to_string())))
}

/// Whether a status answering a session's opening request says the server may speak
/// the other transport: a 4xx that is not about authorization or rate.
fn other_transport(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403 | 407 | 429)
}

fn is_initialize(message: &ClientJsonRpcMessage) -> bool {
    matches!(message, ClientJsonRpcMessage::Request(r) if matches!(r.request, ClientRequest::InitializeRequest(_)))
}

fn session_header(h: &HeaderMap) -> Option<String> {
    h.get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub(super) fn is_type(h: &HeaderMap, mime: &str) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case(mime))
        })
}

fn unexpected_type(h: &HeaderMap) -> StreamableHttpError<UpstreamError> {
    StreamableHttpError::UnexpectedContentType(
        h.get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    )
}

/// The status as an rmcp error, for answers that are neither a message nor a stream.
fn status_error(resp: &http::Response<InBody>) -> StreamableHttpError<UpstreamError> {
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        if let Some(challenge) = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .filter(|_| status == StatusCode::UNAUTHORIZED)
        {
            return StreamableHttpError::AuthRequired(AuthRequiredError::new(challenge.to_owned()));
        }
        return StreamableHttpError::Client(UpstreamError::Rejected(status.as_u16()));
    }
    StreamableHttpError::UnexpectedServerResponse(format!("HTTP {status}").into())
}

/// Reads a whole body, refusing more than `limit` bytes.
pub(super) async fn read_limited(body: InBody, limit: usize) -> Result<Bytes, UpstreamError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(UpstreamError::Body(format!(
            "the upstream answer is larger than {} MiB",
            limit / (1024 * 1024)
        ))),
        Err(e) => Err(UpstreamError::Body(e.to_string())),
    }
}

/// The body as a stream of bytes, failing once an SSE event grows past
/// [`MAX_MESSAGE_BYTES`] (a server that never ends an event must not fill memory).
pub(super) fn sse(body: InBody) -> futures_util::stream::BoxStream<'static, Result<Sse, SseError>> {
    let bytes = http_body_util::BodyStream::new(body)
        .try_filter_map(|frame| std::future::ready(Ok(frame.into_data().ok())));
    SseStream::from_bytes_stream(EventLimit::new(bytes)).boxed()
}

/// Counts bytes since the last blank line (the end of an SSE event). Lines end with
/// CRLF, LF or a lone CR, as the SSE format allows.
struct EventLimit<S> {
    inner: S,
    since_boundary: usize,
    /// The previous byte ended a line.
    newline: bool,
    /// The previous byte was a CR (a following LF belongs to the same line ending).
    cr: bool,
}

impl<S> EventLimit<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            since_boundary: 0,
            newline: false,
            cr: false,
        }
    }

    fn tally(&mut self, chunk: &[u8]) -> Result<(), std::io::Error> {
        for &b in chunk {
            let line_end = match b {
                b'\n' if self.cr => {
                    self.cr = false;
                    continue;
                }
                b'\n' => true,
                b'\r' => {
                    self.cr = true;
                    true
                }
                _ => {
                    self.cr = false;
                    false
                }
            };
            if !line_end {
                self.newline = false;
                self.since_boundary += 1;
            } else if self.newline {
                self.since_boundary = 0;
            } else {
                self.newline = true;
            }
        }
        if self.since_boundary > MAX_MESSAGE_BYTES {
            return Err(std::io::Error::other(
                "an upstream SSE event is larger than 16 MiB",
            ));
        }
        Ok(())
    }
}

impl<S, E> Stream for EventLimit<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => match self.as_mut().get_mut().tally(&chunk) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                Err(e) => Poll::Ready(Some(Err(e))),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl StreamableHttpClient for EgressHttp {
    type Error = UpstreamError;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Upstream<StreamableHttpPostResponse> {
        let mut headers = base_headers(
            "application/json, text/event-stream",
            session_id.as_deref(),
            custom_headers,
        )?;
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let body = Bytes::from(serde_json::to_vec(&message)?);
        let resp = self
            .send(Method::POST, &parse(&uri)?, headers, body)
            .await
            .map_err(StreamableHttpError::Client)?;
        let status = resp.status();
        if let Some(refused) = &self.init_refused
            && other_transport(status.as_u16())
            && is_initialize(&message)
        {
            refused.store(status.as_u16(), Ordering::Relaxed);
        }
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        let session = session_header(resp.headers());
        let json = is_type(resp.headers(), "application/json");
        if !status.is_success() {
            if json && !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                let body = read_limited(resp.into_body(), MAX_ERROR_BODY)
                    .await
                    .map_err(StreamableHttpError::Client)?;
                if let Ok(msg @ ServerJsonRpcMessage::Error(_)) = serde_json::from_slice(&body) {
                    return Ok(StreamableHttpPostResponse::Json(msg, session));
                }
                return Err(StreamableHttpError::UnexpectedServerResponse(
                    format!("HTTP {status}").into(),
                ));
            }
            return Err(status_error(&resp));
        }
        if is_type(resp.headers(), "text/event-stream") {
            return Ok(StreamableHttpPostResponse::Sse(
                sse(resp.into_body()),
                session,
            ));
        }
        let expects_reply = matches!(message, ClientJsonRpcMessage::Request(_));
        if !json {
            if !expects_reply {
                return Ok(StreamableHttpPostResponse::Accepted);
            }
            return Err(unexpected_type(resp.headers()));
        }
        let body = read_limited(resp.into_body(), MAX_MESSAGE_BYTES)
            .await
            .map_err(StreamableHttpError::Client)?;
        match serde_json::from_slice(&body) {
            Ok(msg) => Ok(StreamableHttpPostResponse::Json(msg, session)),
            Err(_) if !expects_reply => Ok(StreamableHttpPostResponse::Accepted),
            Err(e) => Err(StreamableHttpError::Deserialize(e)),
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Upstream<()> {
        let headers = base_headers("application/json", Some(&session_id), custom_headers)?;
        let resp = self
            .send(Method::DELETE, &parse(&uri)?, headers, Bytes::new())
            .await
            .map_err(StreamableHttpError::Client)?;
        if resp.status().is_success() || resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            return Ok(());
        }
        Err(status_error(&resp))
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Upstream<futures_util::stream::BoxStream<'static, Result<Sse, SseError>>> {
        let mut headers = base_headers("text/event-stream", session_id.as_deref(), custom_headers)?;
        if let Some(id) = last_event_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
            headers.insert("last-event-id", id);
        }
        let resp = self
            .send(Method::GET, &parse(&uri)?, headers, Bytes::new())
            .await
            .map_err(StreamableHttpError::Client)?;
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        if !resp.status().is_success() {
            return Err(status_error(&resp));
        }
        if !is_type(resp.headers(), "text/event-stream") {
            return Err(unexpected_type(resp.headers()));
        }
        Ok(sse(resp.into_body()))
    }
}

/// Receives the upstream's notifications for one session.
#[derive(Clone)]
pub struct Listener {
    /// Called when the upstream says its tools, resources or templates changed.
    pub on_change: Arc<dyn Fn() + Send + Sync>,
}

impl rmcp::ClientHandler for Listener {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("portcullis", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        (self.on_change)();
    }

    async fn on_resource_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        (self.on_change)();
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
}

/// A connector's catalog as its upstream lists it (names not yet prefixed).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Listing {
    pub tools: Vec<Tool>,
    pub resources: Vec<Resource>,
    pub templates: Vec<ResourceTemplate>,
}

impl Session {
    /// Opens a session (the `initialize` handshake), first over `preferred` (the flavour
    /// that worked last time, else streamable HTTP). A server that answers it with a
    /// 4xx other than an authorization failure is tried once with the other flavour,
    /// as the MCP specification's backwards-compatibility section describes.
    pub async fn open(
        http: EgressHttp,
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
            connector = %http.connector,
            "MCP server answered HTTP {status} to {preferred:?}; trying {other:?}"
        );
        Self::open_as(other, &http, url, listener)
            .await
            .0
            .map_err(|second| anyhow::anyhow!("{preferred:?}: {e:#}; {other:?}: {second:#}"))
    }

    /// One attempt; on failure, also the status that says the server may speak the
    /// other flavour.
    async fn open_as(
        flavor: Flavor,
        http: &EgressHttp,
        url: &url::Url,
        listener: Listener,
    ) -> (anyhow::Result<Self>, Option<u16>) {
        let init =
            |e: rmcp::service::ClientInitializeError| anyhow::anyhow!("{}", describe_init(&e));
        match flavor {
            Flavor::Streamable => {
                let refused = Arc::new(AtomicU16::new(0));
                let mut probe = http.clone();
                probe.init_refused = Some(refused.clone());
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .max_sse_event_size(MAX_MESSAGE_BYTES);
                let transport = StreamableHttpClientTransport::with_client(probe, config);
                match listener.serve(transport).await {
                    Ok(service) => (Ok(Self { service, flavor }), None),
                    Err(e) => {
                        let status = refused.load(Ordering::Relaxed);
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
                    Ok(service) => (Ok(Self { service, flavor }), None),
                    Err(e) => (Err(init(e)), None),
                }
            }
        }
    }

    /// The flavour this session speaks.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Lists everything the upstream offers, following cursors. An upstream without
    /// resources (it did not announce the capability, or answers "method not found")
    /// simply has none.
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
        Ok(Listing {
            tools,
            resources,
            templates,
        })
    }

    pub async fn call_tool(
        &self,
        params: CallToolRequestParams,
    ) -> Result<CallToolResponse, ServiceError> {
        self.service.call_tool_once(params).await
    }

    pub async fn read_resource(
        &self,
        params: ReadResourceRequestParams,
    ) -> Result<ReadResourceResponse, ServiceError> {
        self.service.read_resource_once(params).await
    }

    /// Whether the session's connection is gone (the next call needs a new session).
    pub fn is_closed(&self) -> bool {
        self.service.is_transport_closed()
    }

    pub async fn close(self) {
        let _ = self.service.cancel().await;
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

    fn limit() -> EventLimit<futures_util::stream::Empty<Result<Bytes, std::io::Error>>> {
        EventLimit::new(futures_util::stream::empty())
    }

    #[test]
    fn events_end_at_a_blank_line_whatever_the_line_endings() {
        for sep in ["\n", "\r\n", "\r"] {
            let mut l = limit();
            let event = format!("data: {}{sep}{sep}", "x".repeat(1000));
            for _ in 0..(MAX_MESSAGE_BYTES / 1000 + 10) {
                l.tally(event.as_bytes())
                    .expect("many small events never add up");
            }
            assert!(l.since_boundary < 1010, "{sep:?}: {}", l.since_boundary);
        }
    }

    #[test]
    fn one_event_past_the_limit_fails() {
        let mut l = limit();
        let line = format!("data: {}\r\n", "x".repeat(1024 * 1024));
        let mut failed = false;
        for _ in 0..17 {
            failed |= l.tally(line.as_bytes()).is_err();
        }
        assert!(
            failed,
            "17 MiB of lines without a blank one is one oversized event"
        );
        // A CRLF pair is one line ending, not a blank line.
        let mut l = limit();
        l.tally(b"data: a\r\n").expect("small");
        assert!(l.newline && l.since_boundary > 0);
    }
}
