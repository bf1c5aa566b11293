//! Browser defence. Identity comes from the network address, so a browser on a tailnet
//! device carries its user's identity, and grants, to any page it opens. Every request
//! passes here before identity, and the rules below are the whole defence:
//!
//! - **Host**: a request must name one of the host's own names (`localhost`,
//!   `public_url`'s host, `http.allowed_hosts`) or an IP address, such as the listen
//!   address. A web page on `rebind.attacker.example` whose name was pointed at this
//!   host (DNS rebinding) is refused; an IP literal cannot be rebound, so it passes.
//! - **Cross-site requests**: a browser marks every request with `Sec-Fetch-Site`
//!   (Fetch Metadata) and most with `Origin`. A request from another site is refused
//!   unless its origin is one of `http.cors_origins`, except a top-level navigation
//!   (`GET`, `Sec-Fetch-Mode: navigate`) to the OAuth callback, which is how a provider
//!   sends the browser back.
//! - **Preflights** (`OPTIONS` with `Access-Control-Request-Method`) are answered here,
//!   never forwarded: allowed for `http.cors_origins`, refused otherwise. Upstream CORS
//!   headers are never relayed ([`crate::headers::from_upstream`]).
//!
//! Agents and command-line clients send no `Origin` and no `Sec-Fetch-*`, so only the
//! Host rule applies to them.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::config::Config;
use crate::error::ApiError;
use crate::state::App;

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
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    match site.as_deref() {
        Some("same-origin" | "none") => return Source::Ours,
        Some(_) => return Source::Other(origin),
        None => {}
    }
    // Older browsers: judge by `Origin` against the host the request names.
    match origin {
        None => Source::Ours,
        Some(o) if own.is_some_and(|h| same_origin(o, h)) => Source::Ours,
        Some(o) => Source::Other(Some(o)),
    }
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

/// Paths a provider sends the browser back to, as a top-level navigation.
fn navigation_target(path: &str) -> bool {
    path.starts_with("/aperture/auth/") && path.ends_with("/callback")
}

/// The middleware: applies [`Rules`] of the config in force.
pub async fn defend(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    // Probes come from outside the tailnet, by IP or a load balancer's name, and learn
    // nothing: readiness is answered whatever the Host.
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let snapshot = app.snapshot();
    let rules = &snapshot.browser;
    let host = authority(&req);
    if !host.is_some_and(|h| rules.host_allowed(h)) {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            format!(
                "this host does not answer to the name {:?}: use its own address, or add the name to http.allowed_hosts (or set public_url)",
                host.unwrap_or("")
            ),
        )
        .into_response();
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
                    .is_some_and(|m| m.as_bytes().eq_ignore_ascii_case(b"navigate")) =>
        {
            None
        }
        Source::Other(o) => {
            return ApiError::forbidden(format!(
                "a cross-site browser request ({}) is refused: a web page may not use your tailnet identity; call from an agent or the command line, or add the page's origin to http.cors_origins",
                o.unwrap_or("origin not sent")
            ))
            .into_response();
        }
    };
    if preflight {
        return match allowed_origin {
            Some(origin) => preflight_answer(&origin, req.headers()),
            None => ApiError::forbidden(
                "preflight refused: no cross-origin calls are allowed from this origin (http.cors_origins)",
            )
            .into_response(),
        };
    }
    let mut resp = next.run(req).await;
    if let Some(origin) = allowed_origin
        && let Ok(v) = HeaderValue::from_str(&origin)
    {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
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
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
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
        let r = rules(None, &["https://tools.example.com/"]);
        assert!(r.origin_allowed("https://TOOLS.example.com"));
        assert!(!r.origin_allowed("https://tools.example.com.evil"));
    }
}
