//! The path of a request below a connector: what is forwarded, and what grants are
//! checked against. The HTTP proxy and plugin tool calls both clean their paths here.

use std::borrow::Cow;

use crate::error::ApiError;

/// A request path, cleaned: what is forwarded, and what grants are checked against.
#[derive(Debug, PartialEq, Eq)]
pub struct CleanPath {
    /// Forwarded to the upstream: empty segments collapsed, the caller's trailing slash
    /// kept (APIs may distinguish it), percent-encoding untouched (`%2F` inside a
    /// segment stays encoded, as some APIs need).
    pub forward: String,
    /// Checked against `<id>/proxy/<path>` grants: every segment percent-decoded and
    /// split again at any `/` or `\` that decoding produced, no trailing slash. A
    /// segment that the upstream might read as two can therefore never slip past a
    /// one-segment (`*`) grant.
    pub grant: String,
}

/// Cleans the path after `/v1/connectors/<id>/`. Refused (400): `.` or `..` segments,
/// raw or percent-encoded (up to three times), also with `;params` (`..;`, as servlet
/// containers read it) or hidden behind an encoded separator; raw backslashes (URL
/// parsers turn them into `/`); NUL.
pub fn normalize_path(path: &str) -> Result<CleanPath, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(format!(
            "the request path is not allowed ({why}); send a plain path below the connector's base URL"
        ))
    };
    if path.contains('\\') {
        return Err(bad("backslash"));
    }
    let trailing = path.ends_with('/');
    // Both are built in place: a path is cleaned on every proxied request, and most
    // segments hold nothing to decode, so they are borrowed rather than copied.
    let mut forward = String::with_capacity(path.len() + 1);
    let mut grant = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let mut decoded = Cow::Borrowed(seg);
        for _ in 0..3 {
            // Borrowed back when no `%XX` was decoded: the segment is fully decoded.
            let Cow::Owned(next) =
                percent_encoding::percent_decode_str(&decoded).decode_utf8_lossy()
            else {
                break;
            };
            decoded = Cow::Owned(next);
        }
        if decoded.contains('\0') {
            return Err(bad("NUL byte"));
        }
        for part in decoded.split(['/', '\\']) {
            let bare = part.split(';').next().unwrap_or_default();
            if bare == "." || bare == ".." {
                return Err(bad("path traversal"));
            }
            if !part.is_empty() {
                if !grant.is_empty() {
                    grant.push('/');
                }
                grant.push_str(part);
            }
        }
        if !forward.is_empty() {
            forward.push('/');
        }
        forward.push_str(seg);
    }
    if trailing && !forward.is_empty() {
        forward.push('/');
    }
    Ok(CleanPath { forward, grant })
}

/// `base` + `/` + `path` (+ `?query`), with exactly one slash at the join.
/// The base's own query, if it has one, is replaced.
pub fn join(base: &url::Url, path: &str, query: Option<&str>) -> url::Url {
    let mut url = base.clone();
    let base_path = base.path().trim_end_matches('/');
    let mut joined = String::with_capacity(base_path.len() + 1 + path.len());
    joined.push_str(base_path);
    joined.push('/');
    joined.push_str(path);
    url.set_path(&joined);
    url.set_query(query);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(p: &str) -> (String, String) {
        let c = normalize_path(p).expect("clean");
        (c.forward, c.grant)
    }

    fn both(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn paths_normalise() {
        assert_eq!(clean("user"), both("user", "user"));
        assert_eq!(clean("repos//a///b"), both("repos/a/b", "repos/a/b"));
        assert_eq!(clean("repos/a/"), both("repos/a/", "repos/a"));
        assert_eq!(clean(""), both("", ""));
        assert_eq!(clean("/"), both("", ""));
        assert_eq!(clean("a/..b/c..;x"), both("a/..b/c..;x", "a/..b/c..;x"));
        // Encoded separators are forwarded as sent but checked as the segments they could be.
        assert_eq!(
            clean("projects/group%2Fproj"),
            both("projects/group%2Fproj", "projects/group/proj")
        );
        assert_eq!(clean("a%5Cb"), both("a%5Cb", "a/b"));
        assert_eq!(clean("q/caf%C3%A9"), both("q/caf%C3%A9", "q/café"));
    }

    #[test]
    fn traversal_is_refused_in_every_spelling() {
        for p in [
            "..",
            "a/../b",
            "a/./b",
            "%2e%2e/x",
            "%2E%2e",
            "%252e%252e/x",
            "a%2F..%2Fb",
            "a%5C..%5Cb",
            "..%5Cx",
            "a%00b",
            "public/..;/admin",
            "..;jsessionid=1/x",
            "%2e%2e%3b/x",
            "x\\y",
            "x\\..\\y",
        ] {
            assert!(normalize_path(p).is_err(), "{p} should be refused");
        }
    }

    #[test]
    fn join_keeps_one_slash_and_the_query() {
        let b = url::Url::parse("https://api.example.com/v1/").expect("url");
        assert_eq!(
            join(&b, "pulls", Some("state=open&per_page=5")).as_str(),
            "https://api.example.com/v1/pulls?state=open&per_page=5"
        );
        let b = url::Url::parse("https://api.example.com").expect("url");
        assert_eq!(
            join(&b, "user", None).as_str(),
            "https://api.example.com/user"
        );
        assert_eq!(join(&b, "", None).as_str(), "https://api.example.com/");
        // A query in the base URL is replaced by the request's, or dropped without one.
        let b = url::Url::parse("https://api.example.com/v2?key=base").expect("url");
        assert_eq!(
            join(&b, "items", Some("page=2")).as_str(),
            "https://api.example.com/v2/items?page=2"
        );
        assert_eq!(
            join(&b, "items", None).as_str(),
            "https://api.example.com/v2/items"
        );
    }
}
