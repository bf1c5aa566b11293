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
const SESSION_SECS: u64 = 2 * 60 * 60;

struct Salesforce;

impl Provider for Salesforce {
    fn defaults() -> Defaults {
        let mut oauth = OauthDefaults::new(
            "https://login.salesforce.com/services/oauth2/authorize",
            "https://login.salesforce.com/services/oauth2/token",
        );
        oauth.revocation_url = Some("https://login.salesforce.com/services/oauth2/revoke".into());
        oauth.scopes = vec!["api".into(), "refresh_token".into()];
        oauth.auth_params = vec![("prompt".into(), "consent".into())];
        oauth.client_auth = ClientAuth::Post;
        let mut grant = TokenGrant::standard("default");
        grant.expires_in = None;
        oauth.grants = vec![grant];
        oauth.refresh = RefreshPolicy {
            rotates_refresh_token: false,
            keeps_refresh_token: true,
        };

        let mut d = Defaults::new("salesforce", "Salesforce", "https://login.salesforce.com");
        d.description =
            "Salesforce REST API: records, SOQL queries and metadata for each user's org.".into();
        d.docs_url = Some(
            "https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/".into(),
        );
        d.oauth = Some(oauth);
        d.inputs = vec![Input {
            name: "api_version".into(),
            description: "REST API version used for paths that do not start with /services/".into(),
            default_value: Some(API_VERSION.into()),
        }];
        d.hooks = vec![
            Hook::ShapeRequest,
            Hook::ReadTokenResponse,
            Hook::ClassifyResponse,
        ];
        // Only errors need a closer look.
        d.classify_statuses = vec![(400, 599)];
        d.classify_body_bytes = 4096;
        d
    }

    /// The org's instance URL (from the latest token response) wins over the configured
    /// base; paths outside `/services/` get the versioned data API prefix.
    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let base = ctx.var("instance_url").unwrap_or(&ctx.base_url);
        let path = if req.path.starts_with("/services/") || req.path == "/services" {
            req.path
        } else {
            let version = ctx.var("api_version").unwrap_or(API_VERSION);
            let version = version.trim_start_matches('v');
            format!("/services/data/v{version}{}", req.path)
        };
        Ok(ShapedRequest::to(portcullis_sdk::join_url(
            base,
            &path,
            req.query.as_deref(),
        )))
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json = portcullis_sdk::token_json(status, body)?;
        let mut variables = Vec::new();
        match json.get("instance_url").and_then(|v| v.as_str()) {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                variables.push((
                    "instance_url".to_owned(),
                    url.trim_end_matches('/').to_owned(),
                ));
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
        }
        if let Some(id) = json.get("id").and_then(|v| v.as_str()) {
            variables.push(("identity_url".to_owned(), id.to_owned()));
        }
        Ok(TokenInfo {
            variables,
            expires_in: Some(SESSION_SECS),
        })
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

portcullis_sdk::export_provider!(Salesforce);
