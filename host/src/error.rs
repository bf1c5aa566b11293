//! The errors the host returns over HTTP: a status and a stable JSON body,
//! `{"error": {"code": "...", "message": "..."}}`, whose message says what went wrong and
//! what to do. Codes are part of the API; messages may improve.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header, when trying again later will help.
    pub retry_after: Option<u64>,
    /// More fields of the error object (`diagnostics`, `hash`): what a program needs to
    /// act on the error.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            details: serde_json::Map::new(),
        }
    }

    /// Adds a field to the error object.
    pub fn with(mut self, key: &str, value: impl serde::Serialize) -> Self {
        self.details.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = self.details;
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        let body = serde_json::json!({ "error": error });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}

/// Marks a response as an error the host produced (for logs and metrics).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Marks a response whose status and body are an upstream's, relayed as they came.
#[derive(Debug, Clone, Copy)]
pub struct Relayed;

/// Longest body of a framework rejection read to word its JSON error.
const MAX_REJECTION_BYTES: usize = 4096;

/// Every error the host answers has the JSON shape, including the ones its framework
/// and the MCP transport produce in plain text (a malformed path, a method a route does
/// not take, an MCP request without the media types it needs): those are rewritten
/// here, keeping their status and headers. Upstream answers ([`Relayed`]) and the HTML
/// pages of the OAuth callback pass untouched.
///
/// `method` and `path` are the request's, for the message.
pub async fn json_errors(resp: Response, method: &http::Method, path: &str) -> Response {
    if !is_plain_rejection(&resp) {
        return resp;
    }
    let status = resp.status();
    let (mut parts, body) = resp.into_parts();
    let said = said(body).await;
    let (code, message) = describe(status, &parts.headers, said, method, path);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.remove(http::header::CONTENT_TYPE);
    let mut fixed = ApiError::new(status, code, message).into_response();
    // Every value of each header kept (`Allow`, `Vary` and `WWW-Authenticate` may repeat).
    for name in parts.headers.keys() {
        fixed.headers_mut().remove(name);
    }
    for (name, value) in &parts.headers {
        fixed.headers_mut().append(name.clone(), value.clone());
    }
    fixed
}

/// Is `resp` an error in a shape of the framework's or the MCP transport's own (plain
/// text or empty), rather than the host's, an upstream's relayed answer or an HTML page?
pub(crate) fn is_plain_rejection(resp: &Response) -> bool {
    let status = resp.status();
    let ours = resp.extensions().get::<ErrorCode>().is_some();
    let relayed = resp.extensions().get::<Relayed>().is_some();
    let typed = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/html"));
    (status.is_client_error() || status.is_server_error()) && !ours && !relayed && !typed
}

/// The text of a framework or transport rejection's body.
pub(crate) async fn said(body: axum::body::Body) -> String {
    axum::body::to_bytes(body, MAX_REJECTION_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default()
}

/// An `Allow` value as a reader says it: `GET,HEAD` → `GET or HEAD`, `GET,POST,PUT` →
/// `GET, POST or PUT`.
fn in_words(allow: &str) -> String {
    let methods: Vec<&str> = allow
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    match methods.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => methods.join(""),
    }
}

/// The code and message for a plain-text rejection with `status`, whose body `said`.
pub(crate) fn describe(
    status: StatusCode,
    headers: &http::HeaderMap,
    said: String,
    method: &http::Method,
    path: &str,
) -> (&'static str, String) {
    match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = headers
                .get(http::header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .map(|a| format!("; it takes {}", in_words(a)))
                .unwrap_or_default();
            (
                "method_not_allowed",
                format!("{method} is not allowed on {path}{allow}"),
            )
        }
        StatusCode::NOT_FOUND => (
            "not_found",
            or(said, format!("nothing is served at {path}")),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            or(said, "the request body is too large".into()),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            or(
                said,
                "the request body's Content-Type is not one this route takes".into(),
            ),
        ),
        StatusCode::NOT_ACCEPTABLE => (
            "not_acceptable",
            or(
                said,
                "the Accept header names no type this route answers with".into(),
            ),
        ),
        s if s.is_server_error() => (
            "internal",
            or(said, "the host failed to answer; see its log".into()),
        ),
        _ => ("bad_request", or(said, "the request is malformed".into())),
    }
}

fn or(said: String, fallback: String) -> String {
    if said.is_empty() { fallback } else { said }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_not_allowed_names_what_the_route_takes_in_words() {
        let said = |allow: Option<&str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(a) = allow {
                headers.insert(
                    http::header::ALLOW,
                    http::HeaderValue::from_str(a).expect("header value"),
                );
            }
            describe(
                StatusCode::METHOD_NOT_ALLOWED,
                &headers,
                String::new(),
                &http::Method::DELETE,
                "/api/whoami",
            )
        };
        let (code, message) = said(Some("GET,HEAD"));
        assert_eq!(code, "method_not_allowed");
        assert_eq!(
            message,
            "DELETE is not allowed on /api/whoami; it takes GET or HEAD"
        );
        assert!(said(Some("POST")).1.ends_with("; it takes POST"));
        assert!(
            said(Some("GET, POST,PUT"))
                .1
                .ends_with("; it takes GET, POST or PUT")
        );
        assert_eq!(said(None).1, "DELETE is not allowed on /api/whoami");
        // A malformed list still reads sensibly.
        assert!(said(Some(",GET,,")).1.ends_with("; it takes GET"));
    }
}
