//! URL helpers: joining a base and a path, and percent-encoding a query value or path
//! segment.

/// `base` + `path` (+ `?query`), with exactly one `/` at the join. The path and query
/// are kept as they are (already encoded, as the agent wrote them).
///
/// ```
/// # use portcullis_sdk::join_url;
/// assert_eq!(join_url("https://api.example/", "/v1/x", Some("a=1")), "https://api.example/v1/x?a=1");
/// assert_eq!(join_url("https://api.example", "v1", None), "https://api.example/v1");
/// ```
pub fn join_url(base: &str, path: &str, query: Option<&str>) -> String {
    let mut url = String::with_capacity(base.len() + path.len() + 2);
    url.push_str(base.trim_end_matches('/'));
    if !path.starts_with('/') {
        url.push('/');
    }
    url.push_str(path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Percent-encodes `value` for a query value or a path segment: everything but the
/// RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) becomes `%XX` (UTF-8 bytes).
///
/// ```
/// # use portcullis_sdk::percent_encode;
/// assert_eq!(percent_encode("C0123 456/é"), "C0123%20456%2F%C3%A9");
/// ```
pub fn percent_encode(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// Appends `name=value` (both encoded) to a query string.
pub(crate) fn push_query_pair(query: &mut Option<String>, name: &str, value: &str) {
    let q = query.get_or_insert_with(String::new);
    if !q.is_empty() {
        q.push('&');
    }
    q.push_str(&percent_encode(name));
    q.push('=');
    q.push_str(&percent_encode(value));
}
