//! Acme: a provider plugin for Portcullis. Replace the facts below with your provider's,
//! each from its published documentation.

use portcullis_sdk::prelude::*;

struct Acme;

impl Provider for Acme {
    fn defaults() -> Defaults {
        let mut oauth = OauthDefaults::new(
            "https://auth.acme.example/oauth/authorize",
            "https://auth.acme.example/oauth/token",
        );
        oauth.scopes = vec!["read".into(), "offline_access".into()];
        oauth.grants = vec![TokenGrant::standard("default")];

        let mut d = Defaults::new("acme", "Acme", "https://api.acme.example");
        d.description = "Acme's REST API.".into();
        d.oauth = Some(oauth);
        d.hooks = vec![Hook::ShapeRequest];
        d
    }

    /// Acme versions its API in the path: agents write `/widgets`, Acme wants `/v2/widgets`.
    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let path = format!("/v2{}", req.path);
        let mut shaped = ShapedRequest::to(portcullis_sdk::join_url(
            &ctx.base_url,
            &path,
            req.query.as_deref(),
        ));
        shaped
            .set_headers
            .push(("accept".into(), "application/json".into()));
        Ok(shaped)
    }
}

portcullis_sdk::export_provider!(Acme);
