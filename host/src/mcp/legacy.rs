//! The legacy HTTP+SSE transport (MCP 2024-11-05), for upstreams that predate
//! streamable HTTP.
//!
//! The client holds one `GET` open as an event stream; the server's first event,
//! `endpoint`, names the URL to `POST` messages to, and every answer arrives on the
//! stream as a `message` event. rmcp ships no client for it, so this is an rmcp
//! [`Transport`] over the same [`UpstreamHttp`] as streamable HTTP: the same egress
//! checks, the connector's credential on every request, and a fresh token on a 401.
//!
//! The endpoint must have the stream's origin: a server cannot send our credential to
//! another host by naming it there.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::RoleClient;
use rmcp::transport::Transport;
use rmcp::transport::streamable_http_client::SseError;
use sse_stream::Sse;
use tokio_util::sync::CancellationToken;

use super::transport::{UpstreamError, UpstreamHttp, is_type, read_limited, sse};

/// Largest acknowledgement body read (to explain a refused message).
const MAX_ACK_BODY: usize = 4 * 1024;
/// Longest wait for the acknowledgement's body once its headers came.
const ACK_BODY_WAIT: Duration = Duration::from_secs(5);

/// An open HTTP+SSE session with one upstream.
pub struct LegacySse {
    http: UpstreamHttp,
    /// Where messages are posted (the `endpoint` event, resolved against the stream URL).
    endpoint: url::Url,
    events: BoxStream<'static, Result<Sse, SseError>>,
    /// Cancelled when the server forgot the session (a post answered 404): the stream
    /// then ends, so the session reads as closed and the next use opens a new one.
    gone: CancellationToken,
}

impl LegacySse {
    /// Opens the event stream at `url` and waits for the `endpoint` event (the caller
    /// bounds the wait: [`super::OPEN_TIMEOUT`]).
    pub async fn connect(http: UpstreamHttp, url: &url::Url) -> Result<Self, UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let resp = http.send(Method::GET, url, headers, Bytes::new()).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(UpstreamError::Rejected(status.as_u16()));
        }
        if !status.is_success() {
            return Err(UpstreamError::Status(status.as_u16()));
        }
        if !is_type(resp.headers(), "text/event-stream") {
            return Err(UpstreamError::Legacy(
                "the server answered the event-stream request with something other than text/event-stream".into(),
            ));
        }
        // One stream for everything: no log message on it is marked as a call's.
        let mut events = super::transport::mark_logs(sse(resp.into_body()), None, None);
        let mut endpoint = None;
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| UpstreamError::Body(e.to_string()))?;
            if ev.event.as_deref() == Some("endpoint") {
                endpoint = Some(ev.data.unwrap_or_default());
                break;
            }
        }
        let endpoint = endpoint.ok_or_else(|| {
            UpstreamError::Legacy(
                "the event stream ended before the server named its message endpoint".into(),
            )
        })?;
        let endpoint = message_endpoint(url, endpoint.trim())?;
        Ok(Self {
            http,
            endpoint,
            events,
            gone: CancellationToken::new(),
        })
    }
}

/// Resolves the `endpoint` event's URI against the stream URL, refusing another origin.
fn message_endpoint(stream: &url::Url, endpoint: &str) -> Result<url::Url, UpstreamError> {
    if endpoint.is_empty() {
        return Err(UpstreamError::Legacy(
            "the server's `endpoint` event is empty; it names no URL to post messages to".into(),
        ));
    }
    let resolved = stream.join(endpoint).map_err(|e| {
        UpstreamError::Legacy(format!("the server's message endpoint is not a URL: {e}"))
    })?;
    if resolved.origin() != stream.origin() {
        return Err(UpstreamError::Legacy(format!(
            "the server named a message endpoint on another origin ({}); the connector's credential is only sent to {}",
            resolved.origin().ascii_serialization(),
            stream.origin().ascii_serialization()
        )));
    }
    Ok(resolved)
}

impl Transport<RoleClient> for LegacySse {
    type Error = UpstreamError;

    fn name() -> std::borrow::Cow<'static, str> {
        "legacy HTTP+SSE".into()
    }

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let http = self.http.clone();
        let endpoint = self.endpoint.clone();
        let gone = self.gone.clone();
        async move {
            let body = Bytes::from(
                serde_json::to_vec(&item).map_err(|e| UpstreamError::Body(e.to_string()))?,
            );
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let resp = http.send(Method::POST, &endpoint, headers, body).await?;
            let status = resp.status();
            // The answer travels on the event stream; the body is only an acknowledgement,
            // read (briefly) so the connection can serve the next message.
            let ack =
                tokio::time::timeout(ACK_BODY_WAIT, read_limited(resp.into_body(), MAX_ACK_BODY))
                    .await;
            if status.is_success() {
                return Ok(());
            }
            if status == StatusCode::NOT_FOUND {
                gone.cancel();
                return Err(UpstreamError::Legacy(
                    "the server no longer knows this session (HTTP 404)".into(),
                ));
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(UpstreamError::Rejected(status.as_u16()));
            }
            let detail = ack
                .ok()
                .and_then(Result::ok)
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .chars()
                        .take(200)
                        .collect::<String>()
                })
                .unwrap_or_default();
            Err(UpstreamError::Legacy(format!(
                "the server refused a message with HTTP {status}: {detail}"
            )))
        }
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        loop {
            let ev = tokio::select! {
                ev = self.events.next() => ev?,
                () = self.gone.cancelled() => return None,
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::info!(connector = %self.http.connector.id, "legacy SSE stream broke: {e}");
                    return None;
                }
            };
            // Events without a type are messages; a repeated `endpoint` changes nothing.
            if ev.event.as_deref().is_some_and(|e| e != "message") {
                continue;
            }
            let Some(data) = ev.data else { continue };
            match serde_json::from_str(&data) {
                Ok(msg) => return Some(msg),
                Err(e) => tracing::warn!(
                    connector = %self.http.connector.id,
                    "legacy SSE server sent a message that is not JSON-RPC ({e}); ignored"
                ),
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // Dropping the stream closes the connection, which ends the session server-side.
        self.events = futures_util::stream::empty().boxed();
        self.gone.cancel();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).expect("url")
    }

    #[test]
    fn endpoints_resolve_against_the_stream_and_stay_on_its_origin() {
        let stream = url("https://mcp.example.com/v1/sse");
        assert_eq!(
            message_endpoint(&stream, "/message?sessionId=abc")
                .expect("relative")
                .as_str(),
            "https://mcp.example.com/message?sessionId=abc"
        );
        assert_eq!(
            message_endpoint(&stream, "messages?s=1")
                .expect("path-relative")
                .as_str(),
            "https://mcp.example.com/v1/messages?s=1"
        );
        assert!(message_endpoint(&stream, "https://mcp.example.com/m").is_ok());
        let err = message_endpoint(&stream, "").expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");
        for other in [
            "https://evil.example.net/m",
            "http://mcp.example.com/m",
            "https://mcp.example.com:8443/m",
            "//evil.example.net/m",
        ] {
            let err = message_endpoint(&stream, other).expect_err(other);
            assert!(err.to_string().contains("another origin"), "{err}");
        }
    }
}
