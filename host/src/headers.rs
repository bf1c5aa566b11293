//! The one header policy: what the host removes from a caller's request before it goes
//! upstream, what it removes from an upstream's answer before the caller sees it, and
//! which headers a provider plugin may never set.
//!
//! Every outbound path (the HTTP proxy, MCP upstream sessions, plugin tools, discovery)
//! and every plugin hook's output is filtered here and nowhere else, so the lists below
//! are the whole rule.

use http::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not the message,
/// so they are removed in both directions.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A caller's headers that never reach an upstream: its own credentials (the connector's
/// are added later), its identity on the tailnet, forwarding claims, and what the client
/// sets for the upstream itself.
fn caller_only(name: &str) -> bool {
    matches!(
        name,
        "authorization" | "cookie" | "host" | "forwarded" | "expect"
    ) || name.starts_with("proxy-")
        || name.starts_with("tailscale-")
        || name.starts_with("x-forwarded-")
}

/// Headers a plugin may never set: credentials and framing belong to the host.
fn host_only(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
        || matches!(
            name,
            "authorization" | "cookie" | "host" | "content-length" | "set-cookie"
        )
        || name.starts_with("proxy-")
        || name.starts_with("tailscale-")
}

/// The headers a `Connection` header names: hop-by-hop for this message only.
fn connection_named(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
}

/// Removes the hop-by-hop set, what `Connection` names, and what `also` says, in place:
/// most messages lose nothing, and then nothing is copied. What stays may change order;
/// the order of fields with different names carries no meaning (RFC 9110 §5.3), and
/// several fields of one name keep theirs. Linear in the headers and the names
/// `Connection` lists: each listed name is looked up once, not compared with every
/// header (a sender chooses how many it lists).
fn strip(headers: &mut HeaderMap, also: impl Fn(&str) -> bool) {
    // Kept on the stack for the few a message usually loses (a caller's `Host`).
    let mut doomed: SmallVec<[HeaderName; 4]> = connection_named(headers)
        .filter(|name| headers.contains_key(name))
        .collect();
    doomed.extend(
        headers
            .keys()
            .filter(|name| HOP_BY_HOP.contains(&name.as_str()) || also(name.as_str()))
            .cloned(),
    );
    // Each with all its fields; a name listed twice is gone the second time.
    for name in doomed {
        headers.remove(name);
    }
}

/// A caller's headers as they may go upstream: without credentials, identity and
/// forwarding headers, `Host`, `Expect` and the hop-by-hop set.
pub fn from_caller(headers: &mut HeaderMap) {
    strip(headers, caller_only)
}

/// An upstream's headers as the caller may see them. The host is one origin for many
/// upstreams, and its admin API is on that origin too, so nothing an upstream answers
/// may act on the origin as a whole:
///
/// - no `Set-Cookie`, and none of the headers that change how a browser treats the
///   whole origin (`Strict-Transport-Security`, `Clear-Site-Data`,
///   `Service-Worker-Allowed`, `Alt-Svc`, `Refresh`, the upstream's own
///   `Content-Security-Policy`);
/// - no CORS headers (an upstream's `Access-Control-Allow-Origin: *` would let any web
///   page read answers made with the browser user's identity; [`crate::browser`] decides
///   CORS);
/// - every answer sandboxed (`Content-Security-Policy: sandbox`, `nosniff`): HTML or SVG
///   an upstream serves, opened from a link in a tailnet user's browser, renders without
///   scripts and without the origin, so it cannot call the admin API as that user;
/// - no hop-by-hop headers.
pub fn from_upstream(headers: &mut HeaderMap) {
    strip(headers, |n| {
        n.starts_with("access-control-")
            || matches!(
                n,
                "set-cookie"
                    | "timing-allow-origin"
                    | "strict-transport-security"
                    | "clear-site-data"
                    | "service-worker-allowed"
                    | "alt-svc"
                    | "refresh"
                    | "content-security-policy"
                    | "content-security-policy-report-only"
                    | "x-content-type-options"
            )
    });
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// Why a plugin may not set `name`, or `None` if it may. `credential` is the header the
/// connector's own credential uses (an API key header, say), which is the host's too.
pub fn refused_from_plugin(name: &HeaderName, credential: Option<&HeaderName>) -> Option<String> {
    (host_only(name.as_str()) || credential == Some(name)).then(|| {
        format!(
            "it set the credential or framing header \"{name}\"; credentials are added by the host"
        )
    })
}

/// Why a provider's static credential may not go in header `name` (`auth-extras`), or
/// `None` if it may: not in a framing, hop-by-hop, cookie, proxy or tailnet-identity
/// header, and not in `Authorization` this way (that one takes a scheme).
pub fn refused_as_credential(name: &HeaderName) -> Option<String> {
    host_only(name.as_str()).then(|| {
        format!(
            "\"{name}\" cannot carry a credential (a framing, cookie or host header); for Authorization declare the scheme instead"
        )
    })
}

/// Headers the host sets on an upstream MCP request itself, which nothing handed to the
/// MCP client (rmcp's custom headers) may replace.
pub fn reserved_for_mcp(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "accept" | "mcp-session-id" | "last-event-id" | "authorization"
    )
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    /// Sorted: what stays may change order.
    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn caller_headers_lose_credentials_identity_and_hop_by_hop() {
        let h = map(&[
            ("authorization", "Bearer caller"),
            ("cookie", "a=b"),
            ("proxy-authorization", "x"),
            ("tailscale-user-login", "x"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("host", "portcullis"),
            ("accept", "application/json"),
            ("x-request-id", "abc"),
        ]);
        let mut h = h;
        from_caller(&mut h);
        assert_eq!(names(&h), vec!["accept", "x-request-id"]);
    }

    #[test]
    fn upstream_headers_lose_cookies_and_hop_by_hop() {
        let h = map(&[
            ("set-cookie", "s=1"),
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("location", "https://x"),
            ("content-security-policy", "script-src *"),
            ("service-worker-allowed", "/"),
            ("strict-transport-security", "max-age=31536000"),
            ("clear-site-data", "\"*\""),
            ("access-control-allow-origin", "*"),
        ]);
        let mut out = h;
        from_upstream(&mut out);
        assert_eq!(
            names(&out),
            vec![
                "content-security-policy",
                "content-type",
                "location",
                "x-content-type-options"
            ]
        );
        assert_eq!(out["content-security-policy"], "sandbox");
        assert_eq!(out["x-content-type-options"], "nosniff");
    }

    /// Every field of a removed name goes; several fields of a kept name stay, in order.
    #[test]
    fn repeated_fields_go_together_or_stay_in_order() {
        let mut h = map(&[
            ("link", "<a>; rel=next"),
            ("set-cookie", "a=1"),
            // Listed twice, and a name the message does not carry.
            ("connection", "x-hop, X-Hop, not-sent"),
            ("x-hop", "1"),
            ("link", "<b>; rel=prev"),
            ("set-cookie", "b=2"),
            ("x-hop", "2"),
            ("link", "<c>; rel=last"),
        ]);
        from_upstream(&mut h);
        assert!(!h.contains_key("set-cookie") && !h.contains_key("x-hop"));
        let links: Vec<_> = h.get_all("link").iter().collect();
        assert_eq!(links, ["<a>; rel=next", "<b>; rel=prev", "<c>; rel=last"]);
    }

    #[test]
    fn plugins_may_not_set_credentials_or_framing() {
        let key = HeaderName::from_static("x-api-key");
        for n in [
            "authorization",
            "proxy-authorization",
            "cookie",
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "tailscale-user-login",
        ] {
            let name = HeaderName::from_static(n);
            assert!(refused_from_plugin(&name, None).is_some(), "{n}");
        }
        assert!(refused_from_plugin(&key, Some(&key)).is_some());
        assert!(refused_from_plugin(&key, None).is_none());
        assert!(refused_from_plugin(&HeaderName::from_static("x-api-version"), None).is_none());
    }
}
