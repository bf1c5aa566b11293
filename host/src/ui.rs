//! The dashboard at `/ui/`: a static page, script and style sheet compiled into the
//! binary, so a fresh machine serves it with no build step and no second server.
//!
//! The dashboard has no endpoints of its own: every action is a call to the admin API
//! that anyone could script, made by the page from the same origin. So the assets hold
//! no data and need no identity; the browser defence ([`crate::browser`]) still
//! applies, and lets a top-level navigation to the page itself through from anywhere
//! (a link in a chat), because the page alone reveals nothing.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles from this
//! origin only, no inline code, no framing), so an upstream name or description the
//! page shows can never run as code, and no other site can frame it to trick a click.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::openapi::ErrorBody;

/// Where the dashboard lives.
pub const ROOT: &str = "/ui/";

/// The page's policy: nothing but this origin's own script, style and API; no framing;
/// and no HTML sink may take a string (Trusted Types with no policy), so even a future
/// mistake that passes upstream text to `innerHTML` throws instead of running it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../ui/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../ui/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../ui/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../ui/icon.svg"),
    },
];

/// `GET /ui/`: the page.
#[utoipa::path(get, path = "/ui/", tag = "dashboard",
    responses((status = 200, description = "The dashboard page", content_type = "text/html")))]
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /ui/<asset>`.
#[utoipa::path(get, path = "/ui/{asset}", tag = "dashboard",
    params(("asset" = String, Path, description = "`app.js`, `style.css` or `icon.svg`")),
    responses((status = 200, description = "A dashboard asset"), (status = 304, description = "Not modified (`If-None-Match`)"), (status = 404, description = "No such asset", body = ErrorBody)))]
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

/// `GET /` and `GET /ui`: to the page.
#[utoipa::path(get, path = "/ui", tag = "dashboard",
    responses((status = 303, description = "To `/ui/` (`/` redirects there too)")))]
pub async fn to_root() -> Redirect {
    Redirect::to(ROOT)
}

/// Each asset's ETag: the binary is the version, so a browser keeps its copy until it
/// changes. Computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            format!(
                "\"{}\"",
                hex::encode(&Sha256::digest(a.body.as_bytes())[..12])
            )
        })
        .collect()
});

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::not_found(format!("the dashboard has no file \"{name}\"; open {ROOT}"))
            .into_response();
    };
    let (a, etag) = (&ASSETS[i], &ETAGS[i]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            )],
            a.body,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // A site that opened the page (a link, through the navigation exception) keeps no
    // handle on its window.
    h.insert(
        http::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        let page = ASSETS[0].body;
        for a in &ASSETS[1..] {
            assert!(page.contains(a.name), "index.html does not use {}", a.name);
        }
        // No inline script or style: the CSP would block it.
        assert!(!page.contains("<script>"), "inline script in index.html");
        assert!(!page.contains("style=\""), "inline style in index.html");
        assert!(!page.contains("<style"), "inline style in index.html");
    }

    #[tokio::test]
    async fn assets_carry_the_policy_and_unknown_ones_are_json_404s() {
        let resp = serve("app.js", &HeaderMap::new());
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(resp.headers()[header::X_FRAME_OPTIONS], "DENY");
        let etag = resp.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("app.js", &again).status(), 304);
        let missing = serve("../Cargo.toml", &HeaderMap::new());
        assert_eq!(missing.status(), 404);
        assert_eq!(missing.headers()[header::CONTENT_TYPE], "application/json");
    }
}
