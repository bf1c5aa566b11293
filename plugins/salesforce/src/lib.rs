//! Salesforce.
//!
//! Facts (sources in `shared/research/providers.md` §2.1):
//! - OAuth at `login.salesforce.com/services/oauth2/{authorize,token,revoke}`; the
//!   `refresh_token` scope (a synonym of `offline_access`) is what yields a refresh token.
//! - The token response has **no `expires_in`**; it carries `instance_url` (the org's
//!   API host) and `id` (the identity URL). `instance_url` also comes back on refresh and
//!   can change, so it is re-read every time (n8n-io/n8n#34916 is the bug when it is not).
//! - Refresh-token rotation is opt-in per connected app; without it a refresh response
//!   has no refresh token and the old one stays valid.
//! - API paths are `/services/data/vNN.N/...`: the plugin owns the version, so agents
//!   write `/sobjects/Account/001...` or `/query?q=...`.
//! - Errors are a JSON list of `{"errorCode", "message"}`: `INVALID_SESSION_ID` (401)
//!   means re-auth, `REQUEST_LIMIT_EXCEEDED` (403) is the daily API limit.

use portcullis_sdk::prelude::*;

/// Default REST API version; override per connector with `provider_vars.api_version`.
const API_VERSION: &str = "63.0";

/// Salesforce sessions last two hours unless the org admin changes it; the token
/// response does not say. An earlier expiry shows up as a 401, which refreshes.
const SESSION: Duration = Duration::from_secs(2 * 60 * 60);

struct Salesforce;

#[portcullis_sdk::provider]
impl Provider for Salesforce {
    fn defaults() -> Defaults {
        let login = "https://login.salesforce.com";
        let oauth = OauthDefaults::new(
            &format!("{login}/services/oauth2/authorize"),
            &format!("{login}/services/oauth2/token"),
        )
        .revocation_url(&format!("{login}/services/oauth2/revoke"))
        .scopes(["api", "refresh_token"])
        .auth_param("prompt", "consent")
        .client_auth(ClientAuth::Post)
        .grant(TokenGrant::standard("default").without_expires_in())
        .keeps_refresh_token();
        Defaults::new(login)
            .docs_url("https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/")
            .oauth(oauth)
            .input(
                Input::new(
                    "api_version",
                    "REST API version used for paths that do not start with /services/",
                )
                .default_value(API_VERSION),
            )
            // Only errors need a closer look.
            .classify_statuses([400..=599])
            .classify_body_bytes(4096)
    }

    /// The org's instance URL (from the latest token response) wins over the configured
    /// base; paths outside `/services/` get the versioned data API prefix.
    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let base = ctx.var("instance_url").unwrap_or(&ctx.base_url);
        let path = if req.path.starts_with("/services/") || req.path == "/services" {
            req.path
        } else {
            format!("{}{}", data_path(ctx), req.path)
        };
        Ok(ShapedRequest::join(base, &path, req.query.as_deref()))
    }

    /// `shape_request` as routes: `/services` as it is, every other path below the
    /// versioned data path.
    fn request_routes(ctx: &Context) -> Vec<Route> {
        let base = ctx
            .var("instance_url")
            .unwrap_or(&ctx.base_url)
            .trim_end_matches('/');
        vec![
            Route::new("/services", &format!("{base}/services")),
            Route::new("", &format!("{base}{}", data_path(ctx))),
        ]
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json = portcullis_sdk::token_json(status, body)?;
        let info = match json.get("instance_url").and_then(|v| v.as_str()) {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                TokenInfo::default().var("instance_url", url.trim_end_matches('/'))
            }
            Some(other) => {
                return Err(TokenError::Provider(format!(
                    "the token response's instance_url \"{other}\" is not a URL"
                )));
            }
            None => {
                return Err(TokenError::Provider(
                    "the token response has no instance_url; Salesforce always sends one, so this is not a Salesforce token endpoint".into(),
                ));
            }
        };
        let info = match json.get("id").and_then(|v| v.as_str()) {
            Some(id) => info.var("identity_url", id),
            None => info,
        };
        Ok(info.expires_in(SESSION))
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        let code = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get(0)?.get("errorCode")?.as_str().map(str::to_owned));
        match (status, code.as_deref()) {
            (_, Some("INVALID_SESSION_ID")) => Classification::Reauth(
                "Salesforce: INVALID_SESSION_ID (session expired or revoked)".into(),
            ),
            (_, Some("REQUEST_LIMIT_EXCEEDED")) => Classification::RateLimited(None),
            (503, _) => Classification::Retry(None),
            _ => portcullis_sdk::classify_by_status(status, headers),
        }
    }
}

/// The versioned data API prefix: `/services/data/v63.0`, or the connector's
/// `api_version`.
fn data_path(ctx: &Context) -> String {
    let version = ctx.var("api_version").unwrap_or(API_VERSION);
    let version = version.trim_start_matches('v').trim_end_matches('/');
    format!("/services/data/v{version}")
}
