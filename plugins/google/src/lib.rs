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

impl Provider for Google {
    fn defaults() -> Defaults {
        let mut oauth = OauthDefaults::new(
            "https://accounts.google.com/o/oauth2/v2/auth",
            "https://oauth2.googleapis.com/token",
        );
        oauth.revocation_url = Some("https://oauth2.googleapis.com/revoke".into());
        oauth.scopes = vec![
            "openid".into(),
            "email".into(),
            "https://www.googleapis.com/auth/gmail.readonly".into(),
            "https://www.googleapis.com/auth/drive.readonly".into(),
            "https://www.googleapis.com/auth/calendar.readonly".into(),
        ];
        oauth.auth_params = vec![
            ("access_type".into(), "offline".into()),
            ("prompt".into(), "consent".into()),
        ];
        oauth.client_auth = ClientAuth::Post;
        oauth.grants = vec![TokenGrant::standard("default")];
        oauth.refresh = RefreshPolicy {
            rotates_refresh_token: false,
            keeps_refresh_token: true,
        };

        let mut d = Defaults::new("google", "Google Workspace", DEFAULT_BASE);
        d.description =
            "Gmail, Drive, Calendar, Sheets, Docs and People APIs through one Google connection."
                .into();
        d.docs_url =
            Some("https://developers.google.com/identity/protocols/oauth2/web-server".into());
        d.oauth = Some(oauth);
        d.hooks = vec![Hook::ShapeRequest, Hook::ClassifyResponse];
        // Only errors need a closer look.
        d.classify_statuses = vec![(400, 599)];
        d.classify_body_bytes = 8 * 1024;
        d
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let trimmed = req.path.trim_start_matches('/');
        let (first, rest) = match trimmed.split_once('/') {
            Some((f, r)) => (f, r),
            None => (trimmed, ""),
        };
        let custom_base = ctx.base_url.trim_end_matches('/') != DEFAULT_BASE;
        let (host, path) = match APIS.iter().find(|(name, _, _)| *name == first) {
            Some((_, host, keep)) => {
                let path = if *keep {
                    req.path.clone()
                } else {
                    format!("/{rest}")
                };
                (
                    if custom_base {
                        ctx.base_url.as_str()
                    } else {
                        *host
                    },
                    path,
                )
            }
            None => (ctx.base_url.as_str(), req.path.clone()),
        };
        Ok(ShapedRequest::to(portcullis_sdk::join_url(
            host,
            &path,
            req.query.as_deref(),
        )))
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
                return Classification::RateLimited(portcullis_sdk::retry_after_secs(headers));
            }
        }
        portcullis_sdk::classify_by_status(status, headers)
    }
}

portcullis_sdk::export_provider!(Google);
