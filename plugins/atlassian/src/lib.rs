//! Atlassian Cloud (Jira and Confluence), OAuth 2.0 (3LO).
//!
//! Facts (sources in `shared/research/providers.md` §2.2):
//! - OAuth at `auth.atlassian.com/{authorize,oauth/token}` with `audience=api.atlassian.com`
//!   and `prompt=consent`; `offline_access` is what yields a refresh token.
//! - Refresh tokens rotate, always: each refresh returns a new one and invalidates the
//!   old (90 days idle, 365 days absolute). No public per-token revocation endpoint.
//! - API calls go to `https://api.atlassian.com/ex/{jira|confluence}/{cloudId}/...`. The
//!   cloud id comes from `GET /oauth/token/accessible-resources`, which lists every site
//!   the token can see — possibly several, with different scopes. Never silently take
//!   the first: with several sites and no `site` chosen, discovery asks for a choice.
//! - Agents write product-relative paths: `/jira/rest/api/3/myself`,
//!   `/confluence/wiki/rest/api/space`; the plugin inserts `ex/<product>/<cloudId>`.

use portcullis_sdk::prelude::*;
use serde_json::Value;

struct Atlassian;

const STEP_RESOURCES: &str = "accessible-resources";

#[portcullis_sdk::provider]
impl Provider for Atlassian {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://auth.atlassian.com/authorize",
            "https://auth.atlassian.com/oauth/token",
        )
        .scopes([
            "offline_access",
            "read:jira-work",
            "write:jira-work",
            "read:jira-user",
            "read:confluence-content.all",
        ])
        .auth_param("audience", "api.atlassian.com")
        .auth_param("prompt", "consent")
        .client_auth(ClientAuth::Post)
        .grant(TokenGrant::standard("default"))
        .rotates_refresh_token();
        Defaults::new("https://api.atlassian.com")
            .docs_url("https://developer.atlassian.com/cloud/jira/platform/oauth-2-3lo-apps/")
            .mcp_url("https://mcp.atlassian.com/v1/mcp")
            .oauth(oauth)
            .input(Input::new(
                "site",
                "Which Atlassian site to use when the account sees several: its subdomain (acme for acme.atlassian.net) or its name",
            ))
            // Only errors need a closer look.
            .classify_statuses([400..=599])
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let path = req.path.as_str();
        let product_path = ["jira", "confluence"].iter().find_map(|p| {
            let rest = path.strip_prefix('/')?.strip_prefix(p)?;
            (rest.is_empty() || rest.starts_with('/')).then_some((*p, rest))
        });
        let shaped_path = match product_path {
            Some((product, rest)) => {
                let cloud = ctx.var("cloud_id").filter(|c| !c.is_empty()).ok_or_else(|| {
                    PluginError::InvalidInput(
                        "no Atlassian site is selected yet (cloud_id unknown); the host runs discovery first".into(),
                    )
                })?;
                format!("/ex/{product}/{cloud}{rest}")
            }
            // Already absolute within api.atlassian.com (`/ex/...`, `/oauth/...`, `/me`).
            None => req.path.clone(),
        };
        Ok(ShapedRequest::join(
            &ctx.base_url,
            &shaped_path,
            req.query.as_deref(),
        ))
    }

    /// `shape_request` as routes once the site is known: each product below its cloud id,
    /// the rest to the connector's URL. Before discovery there are none, so the paths
    /// `shape_request` refuses stay its to refuse.
    fn request_routes(ctx: &Context) -> Vec<Route> {
        let Some(cloud) = ctx.var("cloud_id").filter(|c| !c.is_empty()) else {
            return Vec::new();
        };
        let base = ctx.base_url.trim_end_matches('/');
        let mut routes: Vec<Route> = ["jira", "confluence"]
            .iter()
            .map(|p| Route::new(&format!("/{p}"), &format!("{base}/ex/{p}/{cloud}")))
            .collect();
        routes.push(Route::new("", base));
        routes
    }

    fn discover(ctx: &Context, state: &str, last: Option<Response>) -> Discovery {
        let Some(resp) = last else {
            let url = join_url(&ctx.base_url, "/oauth/token/accessible-resources", None);
            return Discovery::Next((Request::get(url), STEP_RESOURCES.into()));
        };
        if state != STEP_RESOURCES {
            return Discovery::Fail(format!("unexpected discovery state \"{state}\""));
        }
        match resp.status {
            200 => {}
            401 | 403 => {
                return Discovery::Fail(format!(
                    "accessible-resources answered HTTP {}: the token was rejected; reconnect",
                    resp.status
                ));
            }
            other => return Discovery::Fail(format!("accessible-resources answered HTTP {other}")),
        }
        let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&resp.body) else {
            return Discovery::Fail("accessible-resources did not return a list of sites".into());
        };
        let sites: Vec<Site> = items.iter().filter_map(Site::from_json).collect();
        if sites.is_empty() {
            return Discovery::Fail(
                "the token can see no Atlassian site: check the app's scopes and that the user picked a site at consent".into(),
            );
        }
        let chosen: Vec<&Site> = match ctx.var("site").map(str::trim).filter(|s| !s.is_empty()) {
            Some(hint) => {
                let exact: Vec<&Site> = sites
                    .iter()
                    .filter(|s| s.subdomain().eq_ignore_ascii_case(hint) || s.id == hint)
                    .collect();
                if exact.is_empty() {
                    let hint_lc = hint.to_lowercase();
                    sites
                        .iter()
                        .filter(|s| s.name.to_lowercase().contains(&hint_lc))
                        .collect()
                } else {
                    exact
                }
            }
            None => sites.iter().collect(),
        };
        match chosen.as_slice() {
            [site] => {
                portcullis_sdk::info!("using Atlassian site {} ({})", site.name, site.url);
                Discovery::Done(site.variables())
            }
            [] => Discovery::Fail(format!(
                "no Atlassian site matches site \"{}\"; the token sees: {}",
                ctx.var("site").unwrap_or_default(),
                sites
                    .iter()
                    .map(|s| s.subdomain())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            several => Discovery::Choose(Selection {
                variable: "site".into(),
                options: several
                    .iter()
                    .map(|s| Choice {
                        value: s.subdomain().to_owned(),
                        label: format!("{} ({})", s.name, s.url),
                    })
                    .collect(),
            }),
        }
    }

    /// Atlassian's errors say nothing the status does not: 401 re-auth, 429 rate
    /// limited (with `Retry-After`), 502–504 retry.
    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        _body: &[u8],
    ) -> Classification {
        portcullis_sdk::classify_by_status(status, headers)
    }
}

struct Site {
    id: String,
    name: String,
    url: String,
    /// The products the token's scopes reach there: `jira,confluence`.
    products: String,
}

impl Site {
    fn from_json(v: &Value) -> Option<Self> {
        let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default();
        let scopes: Vec<&str> = v
            .get("scopes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let products: Vec<&str> = ["jira", "confluence"]
            .into_iter()
            .filter(|p| scopes.iter().any(|s| s.contains(p)))
            .collect();
        Some(Self {
            id: v.get("id")?.as_str()?.to_owned(),
            name: text("name").to_owned(),
            url: text("url").trim_end_matches('/').to_owned(),
            products: products.join(","),
        })
    }

    /// `acme` for `https://acme.atlassian.net`.
    fn subdomain(&self) -> &str {
        let host = self.url.split("://").nth(1).unwrap_or(&self.url);
        host.split('.').next().unwrap_or(host)
    }

    fn variables(&self) -> Vec<Variable> {
        vec![
            ("cloud_id".into(), self.id.clone()),
            ("site_url".into(), self.url.clone()),
            ("site_name".into(), self.name.clone()),
            ("products".into(), self.products.clone()),
        ]
    }
}
