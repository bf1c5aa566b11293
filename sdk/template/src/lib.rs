//! A provider plugin for Portcullis. Replace the facts below with your provider's, each
//! from its published documentation. The plugin's id, name and description are in
//! `plugin.toml` and nowhere else; the hooks the host calls are the methods below.

use portcullis_sdk::prelude::*;

struct Plugin;

#[portcullis_sdk::provider]
impl Provider for Plugin {
    fn defaults() -> Defaults {
        Defaults::new("https://api.acme.example").oauth(
            OauthDefaults::new(
                "https://auth.acme.example/oauth/authorize",
                "https://auth.acme.example/oauth/token",
            )
            .scopes(["read", "offline_access"])
            .grant(TokenGrant::standard("default")),
        )
    }

    /// Acme versions its API in the path: agents write `/widgets`, Acme wants `/v2/widgets`.
    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let path = format!("/v2{}", req.path);
        let shaped = ShapedRequest::join(&ctx.base_url, &path, req.query.as_deref());
        Ok(shaped.header("accept", "application/json"))
    }
}
