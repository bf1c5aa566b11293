//! Request-head limits. A request line or header block this large is a mistake or an
//! attack, never an agent's call; refusing it here answers in the host's JSON error shape
//! and keeps oversized heads away from the stages after (identity, the browser defence,
//! header forwarding).
//!
//! The HTTP server underneath has limits of its own, which it answers with a bare status
//! and no body. [`SERVER_MAX_HEADERS`] and [`SERVER_MAX_HEAD_BYTES`] set those well above
//! the limits below, so only requests far beyond them (or a request target over its
//! fixed 65,534 bytes), or that are not HTTP at all, meet the server's bare answer.
//! The connection limits ([`MAX_CONNECTIONS`], [`HEADER_READ_TIMEOUT`]) are applied where
//! connections are accepted ([`crate::app`]).

use axum::extract::Request;
use http::StatusCode;

use crate::error::ApiError;

/// Longest request target (path and query), as nginx's default header buffers allow.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;
/// Largest header block (names and values) in one request.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Open client connections at once. Past this the host stops accepting until one
/// closes, so a flood of idle sockets cannot take every file descriptor the host also
/// needs for upstreams and the vault.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long a client may take to send a request head (and how long a kept-alive HTTP/1
/// connection may sit idle before its next one).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The server's own header count limit, above [`MAX_HEADERS`].
pub const SERVER_MAX_HEADERS: usize = 4 * MAX_HEADERS;
/// The server's own buffer for a request head, above [`MAX_URI_BYTES`] plus
/// [`MAX_HEADER_BYTES`].
pub const SERVER_MAX_HEAD_BYTES: usize = 4 * (MAX_URI_BYTES + MAX_HEADER_BYTES);

/// Refuses a request whose head is over the limits: 414 for the target, 431 for headers.
pub fn check(req: &Request) -> Result<(), ApiError> {
    match over_limit(req) {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

fn over_limit(req: &Request) -> Option<ApiError> {
    let uri = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target is {uri} bytes; the limit is {MAX_URI_BYTES}: send long \
                 parameters in the body"
            ),
        ));
    }
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} header fields; the limit is {MAX_HEADERS}",
                headers.len()
            ),
        ));
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    (bytes > MAX_HEADER_BYTES).then(|| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's headers are {bytes} bytes; the limit is {MAX_HEADER_BYTES}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse as _;

    fn request(uri: &str, headers: &[(&str, String)]) -> Request {
        let mut b = http::Request::builder().uri(uri);
        for (name, value) in headers {
            b = b.header(*name, value);
        }
        b.body(axum::body::Body::empty()).expect("request")
    }

    fn status(req: &Request) -> Option<StatusCode> {
        over_limit(req).map(|e| e.into_response().status())
    }

    #[test]
    fn heads_at_the_limits_pass_and_one_byte_or_field_more_is_refused() {
        let at = format!("/{}", "a".repeat(MAX_URI_BYTES - 1));
        assert_eq!(status(&request(&at, &[])), None);
        let over = format!("{at}b");
        assert_eq!(status(&request(&over, &[])), Some(StatusCode::URI_TOO_LONG));

        let many: Vec<(&str, String)> = (0..=MAX_HEADERS).map(|_| ("x-a", "1".into())).collect();
        assert_eq!(status(&request("/", &many[..MAX_HEADERS])), None);
        assert_eq!(
            status(&request("/", &many)),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );

        let name = "x-big";
        let fits = "v".repeat(MAX_HEADER_BYTES - name.len());
        assert_eq!(status(&request("/", &[(name, fits.clone())])), None);
        assert_eq!(
            status(&request("/", &[(name, format!("{fits}v"))])),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }
}
