//! Browser defence. Identity comes from the network address, so a browser on a tailnet
//! device carries its user's identity, and grants, to any page it opens. Every request
//! passes here before identity, and the rules below are the whole defence:
//!
//! - **Host**: a request must name one of the host's own names (`localhost`,
//!   `public_url`'s host, `http.allowed_hosts`) or an IP address, such as the listen
//!   address. A web page on `rebind.attacker.example` whose name was pointed at this
//!   host (DNS rebinding) is refused; an IP literal cannot be rebound, so it passes.
//! - **Cross-site requests**: a browser marks its requests to secure origins (https,
//!   loopback) with `Sec-Fetch-Site` (Fetch Metadata), most with `Origin`, and many with
//!   `Referer`. A request from another site is refused unless its origin is one of
//!   `http.cors_origins`, except a top-level navigation (`GET`, `Sec-Fetch-Mode:
//!   navigate`, `Sec-Fetch-Dest: document`) to the OAuth callback, which is how a
//!   provider sends the browser back, or to the dashboard's page, which holds no data.
//!   Over plain HTTP to a tailnet address a simple GET
//!   (an image, a link) may carry none of these: serve browsers over https.
//! - **Preflights** (`OPTIONS` with `Access-Control-Request-Method`) are answered here,
//!   never forwarded: allowed for `http.cors_origins`, refused otherwise. Upstream CORS
//!   headers are never relayed ([`crate::headers::from_upstream`]).
//!
//! Agents and command-line clients send no `Origin` and no `Sec-Fetch-*`, so only the
//! Host rule applies to them.

use std::collections::HashSet;
use std::net::IpAddr;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::config::Config;
use crate::error::ApiError;

/// How long a browser may cache an allowed preflight.
const PREFLIGHT_MAX_AGE_SECS: u32 = 600;

/// The rules for one config.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Host names (lower case, no port) and `host:port` pairs that are ours; `None`: the
    /// check is off (`http.allowed_hosts: []`).
    hosts: Option<HashSet<String>>,
    /// Origins (`scheme://host[:port]`) allowed to call from a browser.
    cors_origins: HashSet<String>,
}

impl Rules {
    pub fn new(config: &Config) -> Self {
        let hosts = match config.http.allowed_hosts.as_ref() {
            Some(list) if list.is_empty() => None,
            configured => {
                let mut hosts: HashSet<String> = ["localhost"].map(str::to_owned).into();
                if let Some(h) = config.public_url.as_ref().and_then(|u| u.host_str()) {
                    hosts.insert(h.to_ascii_lowercase());
                }
                for h in configured.into_iter().flatten() {
                    hosts.insert(h.to_ascii_lowercase());
                }
                Some(hosts)
            }
        };
        Self {
            hosts,
            cors_origins: config
                .http
                .cors_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Is `authority` (a `Host` value) one of ours?
    fn host_allowed(&self, authority: &str) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        // Userinfo is no part of a Host, and a bracketed address must end the name:
        // anything malformed (`127.0.0.1:80@evil.example`, `[::1]evil.example`) is refused
        // rather than read generously.
        let bracket_ends_name = authority.strip_prefix('[').is_none_or(|rest| {
            rest.split_once(']').is_some_and(|(_, after)| {
                after.is_empty()
                    || after
                        .strip_prefix(':')
                        .is_some_and(|p| p.parse::<u16>().is_ok())
            })
        });
        if authority.contains('@')
            || !bracket_ends_name
            || authority.parse::<http::uri::Authority>().is_err()
        {
            return false;
        }
        let authority = authority.to_ascii_lowercase();
        let name = host_name(&authority);
        name.parse::<IpAddr>().is_ok()
            || name.ends_with(".localhost")
            || hosts.contains(name)
            || hosts.contains(&authority)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.cors_origins
            .contains(&origin.trim_end_matches('/').to_ascii_lowercase())
    }
}

/// `host` of `host[:port]`, `[v6]:port` or `v6`, without brackets.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        // Several colons and no brackets: a bare IPv6 address.
        Some((h, _)) if !h.contains(':') => h,
        Some(_) => authority,
        None => authority,
    }
}

/// What a request from a browser is, by its Fetch Metadata and `Origin`.
enum Source<'a> {
    /// No browser markers, or the same origin, or typed into the address bar.
    Ours,
    /// Another site (its `Origin`, if it sent one).
    Other(Option<&'a str>),
}

fn source<'a>(headers: &'a HeaderMap, own: Option<&str>) -> Source<'a> {
    // A marker that is present but not text is a browser's (or a forger's), never an
    // agent's: it counts as another site's, not as absent.
    let text = |name| headers.get(name).map(|v: &HeaderValue| v.to_str().ok());
    let origin = text(header::ORIGIN.as_str());
    let site = text("sec-fetch-site").map(|s| s.map(str::to_ascii_lowercase));
    match site {
        Some(Some(s)) if s == "same-origin" || s == "none" => return Source::Ours,
        Some(_) => return Source::Other(origin.flatten()),
        None => {}
    }
    // No Fetch Metadata: an older browser, or any browser on a plain-HTTP address that
    // is not loopback (they send it to secure origins only). Judge by `Origin`, then by
    // `Referer`, against the host the request names.
    match origin {
        Some(Some(o)) if own.is_some_and(|h| same_origin(o, h)) => return Source::Ours,
        Some(o) => return Source::Other(o),
        None => {}
    }
    match text(header::REFERER.as_str()) {
        None => Source::Ours,
        Some(Some(r)) if own.is_some_and(|h| same_origin(referer_origin(r), h)) => Source::Ours,
        Some(r) => Source::Other(r.map(referer_origin)),
    }
}

/// `scheme://authority` of a `Referer` URL.
fn referer_origin(referer: &str) -> &str {
    let start = referer.find("://").map_or(0, |i| i + 3);
    let end = referer[start..]
        .find(['/', '?', '#'])
        .map_or(referer.len(), |i| start + i);
    &referer[..end]
}

/// Does origin `o` (`scheme://authority`) name `authority`?
fn same_origin(o: &str, authority: &str) -> bool {
    o.split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/').eq_ignore_ascii_case(authority))
}

/// The request's `Host` (or, over HTTP/2, its `:authority`).
fn authority(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Paths another site may send the browser to, as a top-level navigation: the OAuth
/// callback (how a provider sends the browser back) and the dashboard's page, which
/// holds no data (a link to it from a chat or a wiki must open it).
fn navigation_target(path: &str) -> bool {
    (path.starts_with("/aperture/auth/") && path.ends_with("/callback"))
        || matches!(path, "/" | "/ui" | crate::ui::ROOT)
}

/// What the defence decided about a request.
#[must_use]
pub enum Verdict {
    /// It goes on to identity (on the routes that need a caller) and its handler, past
    /// the router or through it ([`crate::front`]); its response gets `Cors`.
    Pass(Cors),
    /// It is answered here: a refusal, or a preflight's answer.
    Answer(Response),
}

/// The origin to allow on a response, when the request came from an allowed
/// cross-origin page.
#[derive(Debug, Default)]
#[must_use = "the response needs the allowed origin's CORS headers"]
pub struct Cors(Option<String>);

impl Cors {
    /// Marks `resp` readable by the allowed origin the request came from, if any.
    pub fn stamp(self, resp: &mut Response) {
        if let Some(origin) = self.0
            && let Ok(v) = HeaderValue::from_str(&origin)
        {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// Applies `rules` (the config in force) to `req`, before identity.
pub fn check(rules: &Rules, req: &Request) -> Verdict {
    // Probes come from outside the tailnet, by IP or a load balancer's name, and learn
    // nothing: readiness is answered whatever the Host.
    if req.uri().path() == "/healthz" {
        return Verdict::Pass(Cors(None));
    }
    let host = authority(req);
    if !host.is_some_and(|h| rules.host_allowed(h)) {
        return Verdict::Answer(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            format!(
                "this host does not answer to the name {:?}: use its own address, or add the name to http.allowed_hosts (or set public_url)",
                host.unwrap_or("")
            ),
        )
        .into_response());
    }
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let allowed_origin = match source(req.headers(), host) {
        Source::Ours => None,
        Source::Other(Some(o)) if rules.origin_allowed(o) => Some(o.to_owned()),
        Source::Other(_)
            if req.method() == Method::GET
                && navigation_target(req.uri().path())
                && req
                    .headers()
                    .get("sec-fetch-mode")
                    .is_none_or(|m| m.as_bytes().eq_ignore_ascii_case(b"navigate"))
                // Top-level only: a frame is a navigation too, inside someone's page.
                // (Without Fetch Metadata, over plain HTTP, the callback's own state
                // check is what stands against a forged return.)
                && req
                    .headers()
                    .get("sec-fetch-dest")
                    .is_none_or(|d| d.as_bytes().eq_ignore_ascii_case(b"document")) =>
        {
            None
        }
        Source::Other(o) => {
            return Verdict::Answer(ApiError::forbidden(format!(
                "a cross-site browser request ({}) is refused: a web page may not use your tailnet identity; call from an agent or the command line, or add the page's origin to http.cors_origins",
                o.unwrap_or("origin not sent")
            ))
            .into_response());
        }
    };
    if preflight {
        return Verdict::Answer(match allowed_origin {
            Some(origin) => preflight_answer(&origin, req.headers()),
            None => ApiError::forbidden(
                "preflight refused: no cross-origin calls are allowed from this origin (http.cors_origins)",
            )
            .into_response(),
        });
    }
    Verdict::Pass(Cors(allowed_origin))
}

fn preflight_answer(origin: &str, headers: &HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
    );
    // Whatever the page asks for, except the headers that carry identity or
    // credentials: those are never a web page's to set, even from an allowed origin.
    let allowed: Vec<&str> = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|n| {
            let n = n.to_ascii_lowercase();
            !n.is_empty()
                && !n.starts_with("tailscale-")
                && !matches!(
                    n.as_str(),
                    "authorization" | "proxy-authorization" | "cookie"
                )
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&allowed.join(", "))
        && !allowed.is_empty()
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE_SECS),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(hosts: Option<Vec<&str>>, origins: &[&str]) -> Rules {
        let mut config = crate::config::load_permissive("{}").0.expect("config");
        config.http.allowed_hosts = hosts.map(|h| h.into_iter().map(str::to_owned).collect());
        config.http.cors_origins = origins.iter().map(|s| (*s).to_owned()).collect();
        config.public_url = url::Url::parse("https://ai.example.ts.net").ok();
        Rules::new(&config)
    }

    #[test]
    fn own_names_and_ip_literals_pass_other_names_do_not() {
        let r = rules(Some(vec!["gw.internal", "proxy.example:8443"]), &[]);
        for ok in [
            "localhost",
            "localhost:8080",
            "app.localhost:1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "100.64.1.2",
            "AI.example.ts.net",
            "ai.example.ts.net:443",
            "gw.internal:80",
            "proxy.example:8443",
        ] {
            assert!(r.host_allowed(ok), "{ok}");
        }
        for bad in [
            "rebind.attacker.example",
            "rebind.attacker.example:8080",
            "localhost.attacker.example",
            "proxy.example:9000",
            "",
            "127.0.0.1:80@evil.example",
            "[::1]evil.example",
            "user@localhost",
        ] {
            assert!(!r.host_allowed(bad), "{bad}");
        }
        assert!(rules(Some(vec![]), &[]).host_allowed("anything.example"));
    }

    #[test]
    fn browsers_are_told_apart_by_fetch_metadata_then_origin() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let own = Some("localhost:8080");
        assert!(matches!(source(&h(&[]), own), Source::Ours));
        assert!(matches!(
            source(&h(&[("sec-fetch-site", "same-origin")]), own),
            Source::Ours
        ));
        assert!(matches!(
            source(&h(&[("sec-fetch-site", "none")]), own),
            Source::Ours
        ));
        for marks in [
            &[("sec-fetch-site", "cross-site")][..],
            &[("sec-fetch-site", "same-site")][..],
            &[("origin", "http://evil.example")][..],
            &[("origin", "null")][..],
            &[("origin", "http://localhost:9999")][..],
            // No Fetch Metadata, no Origin (plain HTTP, an image or a link): the Referer.
            &[("referer", "http://evil.example/page?x=1")][..],
            &[("referer", "http://localhost:8080.evil.example/")][..],
        ] {
            assert!(
                matches!(source(&h(marks), own), Source::Other(_)),
                "{marks:?}"
            );
        }
        assert!(matches!(
            source(&h(&[("origin", "http://localhost:8080")]), own),
            Source::Ours
        ));
        assert!(matches!(
            source(&h(&[("referer", "http://localhost:8080/ui/?tab=1")]), own),
            Source::Ours
        ));
        // A marker that is there but not text counts as another site's.
        for name in ["sec-fetch-site", "origin", "referer"] {
            let mut m = HeaderMap::new();
            m.insert(
                name,
                HeaderValue::from_bytes(b"cross-site\xff").expect("opaque value"),
            );
            assert!(matches!(source(&m, own), Source::Other(_)), "{name}");
        }
        let r = rules(None, &["https://tools.example.com/"]);
        assert!(r.origin_allowed("https://TOOLS.example.com"));
        assert!(!r.origin_allowed("https://tools.example.com.evil"));
    }

    #[test]
    fn only_the_callback_and_the_dashboard_page_take_navigations_from_elsewhere() {
        for ok in ["/aperture/auth/github/callback", "/", "/ui", "/ui/"] {
            assert!(navigation_target(ok), "{ok}");
        }
        for no in [
            "/ui/app.js",
            "/ui/index.html",
            "/api/connectors",
            "/api/connectors/github/connect",
            "/aperture/auth/github",
            "/v1/mcp",
        ] {
            assert!(!navigation_target(no), "{no}");
        }
    }

    #[test]
    fn a_preflight_never_allows_identity_or_credential_headers() {
        let mut asked = HeaderMap::new();
        asked.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static(
                "content-type, Tailscale-User-Login, authorization, x-request-id, Cookie",
            ),
        );
        let resp = preflight_answer("https://tools.example.com", &asked);
        let allowed = resp.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .expect("text");
        assert_eq!(allowed, "content-type, x-request-id");
    }
}
