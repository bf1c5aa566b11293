//! URL helpers: joining a base and a path, percent-encoding a query value or path
//! segment, and decoding a query part as a form decodes it.

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

/// Decodes one part of a query (a parameter's name or value) as an HTML form decodes it
/// and as the host reads a query: `%XX` escapes become bytes, `+` a space, a `%` without
/// two hex digits stays as it is, and bytes that are not UTF-8 become U+FFFD. Compare a
/// parameter's name by this when the host must agree with you on which parameter it is
/// (a route's `query_param` replaces the agent's parameters whose name decodes to its
/// own).
///
/// ```
/// # use portcullis_sdk::form_decode;
/// assert_eq!(form_decode("k%65y"), "key");
/// assert_eq!(form_decode("a+b%2Bc%"), "a b+c%");
/// ```
pub fn form_decode(part: &str) -> String {
    let b = part.as_bytes();
    let hex = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::form_decode;

    /// As `url::form_urlencoded` (the host's reading of a query) decodes a part.
    #[test]
    fn a_query_part_decodes_as_a_form_decodes_it() {
        for (part, decoded) in [
            ("key", "key"),
            ("k%65y", "key"),
            ("%6B%65%79", "key"),
            ("ke+y", "ke y"),
            ("key%20", "key "),
            ("%", "%"),
            ("%2", "%2"),
            ("%zz", "%zz"),
            ("a%2Bb", "a+b"),
            ("%C3%A9", "é"),
            ("%FF", "\u{FFFD}"),
        ] {
            assert_eq!(form_decode(part), decoded, "{part}");
        }
    }
}
