//! The HTTP under upstream MCP sessions: rmcp's client over the outbound pipeline.
//!
//! rmcp's streamable-HTTP client is generic over [`StreamableHttpClient`];
//! [`UpstreamHttp`] implements it by sending every message through
//! [`crate::outbound::Outbound`], so upstream MCP traffic gets the same credential
//! handling (shared or the user's own, 401 → new credential → sent once more: every MCP
//! message is replayable, since a 401 means the upstream did not act on it), header
//! policy, egress checks, redirect refusal and timeouts as the HTTP proxy. rmcp's
//! `auth_header` is never used. The legacy HTTP+SSE transport (`legacy`) uses the same
//! client.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt as _;
use rmcp::model::{
    ClientJsonRpcMessage, ClientRequest, RequestId, ServerJsonRpcMessage, ServerNotification,
};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, SseError, StreamableHttpClient, StreamableHttpError,
    StreamableHttpPostResponse,
};
use sse_stream::{Sse, SseStream};

use super::upstream::Unrelayed;
use crate::connector::Connector;
use crate::outbound::{self, Exchange, Outbound, Payload, Target, UpstreamBody};

/// Largest upstream JSON body or SSE event accepted (a tool result, a catalog page).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest error body read to find a JSON-RPC error in it.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why an upstream MCP request failed before rmcp could make sense of the answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Outbound(#[from] outbound::Error),
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

/// rmcp's HTTP client, sending through the outbound pipeline for one connector and, on a
/// per-user connector, one user.
#[derive(Clone)]
pub struct UpstreamHttp {
    outbound: Arc<Outbound>,
    pub(super) connector: Arc<Connector>,
    /// The user whose token a per-user connector's messages carry.
    user: Option<Arc<str>>,
    /// Where a session being opened notes what the server answered its `initialize`.
    pub(super) init: Option<Arc<InitAnswer>>,
    /// Where a session counts the log messages it reads about calls (see
    /// [`super::upstream::Unrelayed`]).
    pub(super) unrelayed: Option<Arc<Unrelayed>>,
}

/// What a streamable-HTTP server answered a session's `initialize`, noted while the
/// session opens.
#[derive(Default)]
pub(super) struct InitAnswer {
    /// The status of a 4xx answer other than an authorization failure, which marks a
    /// server without streamable HTTP (the specification's cue to try the legacy
    /// HTTP+SSE transport); 0 for none.
    pub refused: AtomicU16,
    /// A successful answer named no session (no `Mcp-Session-Id`): the server cannot
    /// tell one session of ours from another. False until such an answer is seen.
    pub named_no_session: AtomicBool,
}

type Upstream<E> = Result<E, StreamableHttpError<UpstreamError>>;

impl UpstreamHttp {
    pub fn new(outbound: Arc<Outbound>, connector: Arc<Connector>, user: Option<Arc<str>>) -> Self {
        Self {
            outbound,
            connector,
            user,
            init: None,
            unrelayed: None,
        }
    }

    /// The longest wait for an upstream answer.
    pub fn read_timeout(&self) -> std::time::Duration {
        self.outbound.egress().read_timeout()
    }

    /// Sends one message through the pipeline.
    pub(super) async fn send(
        &self,
        method: Method,
        url: &url::Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        let reply = self
            .outbound
            .send(Exchange {
                connector: &self.connector,
                user: self.user.as_deref(),
                method,
                target: Target::Url(url.clone()),
                headers,
                body: if body.is_empty() {
                    Payload::Empty
                } else {
                    Payload::Bytes(body)
                },
            })
            .await?;
        Ok(reply.response)
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
        if crate::headers::reserved_for_mcp(&name) {
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
pub(super) fn other_transport(status: u16) -> bool {
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
fn status_error(resp: &http::Response<UpstreamBody>) -> StreamableHttpError<UpstreamError> {
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
pub(super) async fn read_limited(body: UpstreamBody, limit: usize) -> Result<Bytes, UpstreamError> {
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
pub(super) fn sse(
    body: UpstreamBody,
) -> futures_util::stream::BoxStream<'static, Result<Sse, SseError>> {
    let bytes = http_body_util::BodyStream::new(body)
        .try_filter_map(|frame| std::future::ready(Ok(frame.into_data().ok())));
    SseStream::from_bytes_stream(EventLimit::new(bytes)).boxed()
}

/// How the gateway notes which of its requests a log message came with (the request
/// whose event stream carried it). rmcp marks requests from the server with their
/// stream, not notifications, and keeps no `_meta` of a log message, so the note rides
/// in the message's `logger`: this character and [`log_nonce`], then `{"call": <id or
/// null>, "logger": <the upstream's logger or null>}`. The nonce is random per process
/// and never leaves it ([`unmark_log`] takes the note off before the message goes on),
/// so an upstream cannot forge a note, whatever it writes or however it spells the
/// message (an escaped method name, a JSON body instead of an event stream): a
/// message without the nonce came with no call.
const LOG_MARK: char = '\u{1}';

/// This process's secret part of a log note (see [`LOG_MARK`]).
fn log_nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(crate::connections::random_token)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LogNote {
    call: Option<RequestId>,
    logger: Option<String>,
}

/// Marks every log message on an event stream with the call whose stream it is (`None`:
/// the session's own stream), and counts it in `unrelayed` for that call. Other events
/// pass untouched; an event that is not JSON is left for rmcp to refuse.
///
/// Only what rmcp will hand to the listener's `on_logging_message` is marked and
/// counted (a message event that parses as a log notification), so every count is
/// taken off again when the listener passes the message on or drops it — also one
/// read after its call ended.
pub(super) fn mark_logs(
    events: futures_util::stream::BoxStream<'static, Result<Sse, SseError>>,
    call: Option<RequestId>,
    unrelayed: Option<Arc<Unrelayed>>,
) -> futures_util::stream::BoxStream<'static, Result<Sse, SseError>> {
    events
        .map_ok(move |mut event| {
            // rmcp reads only unnamed and `message` events as JSON-RPC.
            let message_event = matches!(event.event.as_deref(), None | Some("" | "message"));
            if message_event
                && let Some(data) = event.data.as_mut()
                && data.contains("notifications/message")
                && let Some(marked) = mark_log(data, call.as_ref())
            {
                *data = marked;
                if let (Some(call), Some(unrelayed)) = (&call, &unrelayed) {
                    unrelayed.read(call);
                }
            }
            event
        })
        .boxed()
}

/// `data` with its log message's `logger` holding the note; `None` when rmcp would not
/// take it as a log message (not a notification, another method, params it refuses).
#[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
fn mark_log(data: &str, call: Option<&RequestId>) -> Option<String> {
    let mut message: ServerJsonRpcMessage = serde_json::from_str(data).ok()?;
    let ServerJsonRpcMessage::Notification(notification) = &mut message else {
        return None;
    };
    let ServerNotification::LoggingMessageNotification(log) = &mut notification.notification else {
        return None;
    };
    let note = LogNote {
        call: call.cloned(),
        logger: log.params.logger.take(),
    };
    let note = serde_json::to_string(&note).ok()?;
    log.params.logger = Some(format!("{LOG_MARK}{}{note}", log_nonce()));
    serde_json::to_string(&message).ok()
}

/// The call a log message came with, and its `logger` as the upstream sent it. A
/// message without the note (not from [`mark_logs`]) came with no call.
pub(super) fn unmark_log(logger: Option<String>) -> (Option<RequestId>, Option<String>) {
    let note = logger
        .as_deref()
        .and_then(|l| l.strip_prefix(LOG_MARK))
        .and_then(|l| l.strip_prefix(log_nonce()))
        .and_then(|json| serde_json::from_str::<LogNote>(json).ok());
    match note {
        Some(note) => (note.call, note.logger),
        None => (None, logger),
    }
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

impl StreamableHttpClient for UpstreamHttp {
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
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        let session = session_header(resp.headers());
        if let Some(init) = &self.init
            && is_initialize(&message)
        {
            if other_transport(status.as_u16()) {
                init.refused.store(status.as_u16(), Ordering::Relaxed);
            }
            init.named_no_session
                .store(status.is_success() && session.is_none(), Ordering::Relaxed);
        }
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
            // rmcp skips what comes before the answer on an initialize's stream: its
            // log messages are no call's and counted for none.
            let call = match &message {
                ClientJsonRpcMessage::Request(r) if !is_initialize(&message) => Some(r.id.clone()),
                _ => None,
            };
            return Ok(StreamableHttpPostResponse::Sse(
                mark_logs(sse(resp.into_body()), call, self.unrelayed.clone()),
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
        Ok(mark_logs(sse(resp.into_body()), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_messages_are_marked_with_their_call_and_an_upstreams_own_mark_is_removed() {
        let call = RequestId::Number(7);
        let logger = |data: &str| -> Option<String> {
            let v: serde_json::Value = serde_json::from_str(data).expect("json");
            v["params"]["logger"].as_str().map(str::to_owned)
        };
        let log = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x","logger":"db"}}"#;
        let marked = mark_log(log, Some(&call)).expect("marked");
        assert_eq!(
            unmark_log(logger(&marked)),
            (Some(call.clone()), Some("db".to_owned()))
        );
        let bare = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#;
        let marked = mark_log(bare, Some(&call)).expect("marked");
        assert_eq!(unmark_log(logger(&marked)), (Some(call.clone()), None));
        // An upstream writing the note itself on its session's own stream claims nothing.
        let spoof = mark_log(bare, Some(&RequestId::Number(3))).expect("a forged note");
        let cleared = mark_log(&spoof, None).expect("marked again");
        let (claimed, _) = unmark_log(logger(&cleared));
        assert_eq!(claimed, None);
        // A message no mark_logs saw is nobody's call, even one that copies the format
        // (an upstream cannot know the nonce: mark_logs missed an escaped method name,
        // or the message came as a JSON body).
        assert_eq!(
            unmark_log(Some("plain".to_owned())),
            (None, Some("plain".to_owned()))
        );
        let forged = format!("{LOG_MARK}{{\"call\":7,\"logger\":null}}");
        assert_eq!(unmark_log(Some(forged.clone())), (None, Some(forged)));
        // A logger that is not a string is left alone (rmcp refuses the message).
        let odd = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x","logger":5}}"#;
        assert_eq!(mark_log(odd, Some(&call)), None);
        // Anything else passes untouched, whatever its shape.
        for other in [
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/message","params":[1,2]}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/message"}"#,
            r#"notifications/message but not JSON"#,
        ] {
            assert_eq!(mark_log(other, Some(&call)), None, "{other}");
        }
    }

    #[tokio::test]
    async fn a_calls_log_messages_are_counted_in_stream_order_and_others_are_not() {
        let unrelayed = Arc::new(Unrelayed::default());
        let call = RequestId::Number(9);
        let event = |data: &str| Ok(Sse::default().data(data.to_owned()));
        let events = futures_util::stream::iter(vec![
            event(r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"a"}}"#),
            event(r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"loud","data":"refused by rmcp"}}"#),
            event(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#),
            // Neither a named event nor another JSON-RPC version reaches the listener.
            Ok(Sse::default().event("endpoint").data(
                r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"c"}}"#.to_owned(),
            )),
            event(r#"{"jsonrpc":"1.0","method":"notifications/message","params":{"level":"info","data":"d"}}"#),
            event(r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"debug","data":"b"}}"#),
            event(r#"{"jsonrpc":"2.0","id":9,"result":{}}"#),
        ])
        .boxed();
        let mut marked = mark_logs(events, Some(call.clone()), Some(unrelayed.clone()));
        let mut seen = Vec::new();
        while let Some(e) = marked.next().await {
            seen.push(unrelayed.count(&call));
            assert!(e.is_ok());
        }
        // Counted as each is read: by the answer (last), both valid logs are counted.
        assert_eq!(seen, [1, 1, 1, 1, 1, 2, 2]);
        // The session's own stream counts nothing.
        let own = futures_util::stream::iter(vec![event(
            r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"a"}}"#,
        )])
        .boxed();
        let other = Arc::new(Unrelayed::default());
        let n = mark_logs(own, None, Some(other.clone())).count().await;
        assert_eq!((n, other.count(&call)), (1, 0));
    }

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
