//! Google APIs (Gmail, Drive, Calendar, Sheets, Docs, People) with one OAuth connection.
//!
//! Facts (sources in `shared/research/providers.md` §2.4):
//! - OAuth at `accounts.google.com/o/oauth2/v2/auth` and `oauth2.googleapis.com/token`;
//!   `access_type=offline` and `prompt=consent` are what make Google return a refresh
//!   token (a returning user otherwise gets none).
//! - A refresh response has **no new refresh token**: the old one stays valid and must
//!   be kept. Revocation: `POST oauth2.googleapis.com/revoke?token=...`.
//! - One authorization serves many APIs, each on its own host. Agents write
//!   `/<api>/...` and the plugin sends it to that API's host:
//!   `/gmail/v1/users/me/messages` → `gmail.googleapis.com/gmail/v1/...`,
//!   `/sheets/v4/spreadsheets/ID` → `sheets.googleapis.com/v4/spreadsheets/ID`, and so
//!   on. A connector whose `url` is not Google's default keeps every request on that
//!   URL (the operator's choice wins), with the same path rules.
//! - Rate limits also come as 403 with reason `rateLimitExceeded` /
//!   `userRateLimitExceeded` in the error body.
//! - Users meet Gmail, Drive, Calendar and Sheets as products of their own: each is a
//!   picker entry (`google/gmail`, ...) with its API host and read-only scope; connectors
//!   made from them with one OAuth client share one connection per user.

use portcullis_sdk::prelude::*;
use serde_json::Value;

const DEFAULT_BASE: &str = "https://www.googleapis.com";

/// `/<segment>/...` → host, and whether the segment stays in the path.
const APIS: &[(&str, &str, bool)] = &[
    ("gmail", "https://gmail.googleapis.com", true),
    ("drive", "https://www.googleapis.com", true),
    ("calendar", "https://www.googleapis.com", true),
    ("oauth2", "https://www.googleapis.com", true),
    ("sheets", "https://sheets.googleapis.com", false),
    ("docs", "https://docs.googleapis.com", false),
    ("people", "https://people.googleapis.com", false),
    ("tasks", "https://tasks.googleapis.com", false),
];

struct Google;

#[portcullis_sdk::provider]
impl Provider for Google {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://accounts.google.com/o/oauth2/v2/auth",
            "https://oauth2.googleapis.com/token",
        )
        .revocation_url("https://oauth2.googleapis.com/revoke")
        .scopes([
            "openid",
            "email",
            "https://www.googleapis.com/auth/gmail.readonly",
            "https://www.googleapis.com/auth/drive.readonly",
            "https://www.googleapis.com/auth/calendar.readonly",
        ])
        .auth_param("access_type", "offline")
        .auth_param("prompt", "consent")
        .client_auth(ClientAuth::Post)
        .grant(TokenGrant::standard("default"))
        .keeps_refresh_token();
        let scope = |s: &str| format!("https://www.googleapis.com/auth/{s}");
        Defaults::new(DEFAULT_BASE)
            .docs_url("https://developers.google.com/identity/protocols/oauth2/web-server")
            .oauth(oauth)
            // The products users pick on their own; their connectors share this
            // provider's connection when they use the same OAuth client.
            .entry(
                Entry::new(
                    "gmail",
                    "Gmail",
                    "Read the user's mail: messages, threads and labels (/gmail/v1/users/me/...).",
                    "https://gmail.googleapis.com",
                )
                .scopes([scope("gmail.readonly")]),
            )
            .entry(
                Entry::new(
                    "drive",
                    "Google Drive",
                    "Find and read the user's files (/drive/v3/files).",
                    DEFAULT_BASE,
                )
                .scopes([scope("drive.readonly")]),
            )
            .entry(
                Entry::new(
                    "calendar",
                    "Google Calendar",
                    "Read the user's calendars and events (/calendar/v3/...).",
                    DEFAULT_BASE,
                )
                .scopes([scope("calendar.readonly")]),
            )
            .entry(
                Entry::new(
                    "sheets",
                    "Google Sheets",
                    "Read the user's spreadsheets (/v4/spreadsheets/{id}).",
                    "https://sheets.googleapis.com",
                )
                .scopes([scope("spreadsheets.readonly")]),
            )
            // Only errors need a closer look.
            .classify_statuses([400..=599])
            .classify_body_bytes(8 * 1024)
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let trimmed = req.path.trim_start_matches('/');
        let (first, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        // A connector pointed elsewhere keeps every request on its URL.
        let custom_base = ctx.base_url.trim_end_matches('/') != DEFAULT_BASE;
        let (host, path) = match APIS.iter().find(|(name, _, _)| *name == first) {
            Some((_, host, keep)) => (
                if custom_base {
                    ctx.base_url.as_str()
                } else {
                    host
                },
                if *keep {
                    req.path.clone()
                } else {
                    format!("/{rest}")
                },
            ),
            None => (ctx.base_url.as_str(), req.path.clone()),
        };
        Ok(ShapedRequest::join(host, &path, req.query.as_deref()))
    }

    /// `shape_request` as routes: each API's first segment, and the rest to the
    /// connector's URL. The host collapses empty segments before shaping, so a request's
    /// first segment is what both see. An API whose segment is taken off sends its bare
    /// path (`/sheets`) to `<host>/`, where a route sends it to `<host>`: the same URL
    /// only when the host has no path, so a connector URL with a path is shaped by calls.
    fn request_routes(ctx: &Context) -> Vec<Route> {
        let base = ctx.base_url.trim_end_matches('/');
        let custom_base = base != DEFAULT_BASE;
        if base
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'))
        {
            return Vec::new();
        }
        let mut routes: Vec<Route> = APIS
            .iter()
            .map(|(name, host, keep)| {
                let host = if custom_base { base } else { host };
                let target = if *keep {
                    format!("{host}/{name}")
                } else {
                    (*host).to_owned()
                };
                Route::new(&format!("/{name}"), &target)
            })
            .collect();
        routes.push(Route::new("", base));
        routes
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        if status == 403 || status == 429 {
            let json = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
            let reasons: Vec<&str> = json
                .pointer("/error/errors")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|e| e.get("reason")?.as_str()).collect())
                .unwrap_or_default();
            let message = json
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let limited = status == 429
                || reasons.iter().any(|r| {
                    matches!(
                        *r,
                        "rateLimitExceeded" | "userRateLimitExceeded" | "quotaExceeded"
                    )
                })
                || message.contains("Rate Limit Exceeded")
                || message.contains("rate limit exceeded");
            if limited {
                return Classification::RateLimited(portcullis_sdk::retry_after(headers));
            }
        }
        portcullis_sdk::classify_by_status(status, headers)
    }
}
