//! The component boundary, used by the code `#[portcullis_sdk::provider]` writes: the
//! SDK's types become the WIT's (JSON text, milliseconds and seconds), and
//! `defaults()` gets the manifest's identity and the derived hook list.
//!
//! The attribute adds `const FROM_PROVIDER_ATTRIBUTE: Derived = ...;` to the impl and
//! expands to
//!
//! ```ignore
//! const _: () = {
//!     const _: &str = include_str!("/path/to/crate/plugin.toml"); // rebuild on change
//!     type Export = ::portcullis_sdk::export::Export<YourType>;
//!     ::portcullis_sdk::bindings::__export_world!(Export with_types_in ::portcullis_sdk::bindings);
//! };
//! ```

use std::marker::PhantomData;
use std::time::Duration;

use crate::Provider;
use crate::bindings::exports::portcullis::provider::plugin::Guest;
use crate::bindings::exports::portcullis::provider::{
    auth_extras, catalog, classify_markers, oauth_extras, routes, routes_v2, tool_results,
};
use crate::types::{
    Args, Classification, Context, Defaults, Discovery, Header, Hook, OutgoingRequest, PluginError,
    Response, ShapedRequest, TokenError, TokenInfo, Tool, ToolRequest, wit,
};

/// What `#[portcullis_sdk::provider]` derives: the identity in `plugin.toml` and the
/// hooks the impl defines.
#[derive(Debug)]
pub struct Derived {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub hooks: &'static [Hook],
}

/// `P::defaults()` with the manifest's identity and the derived hooks.
fn defaults<P: Provider>() -> wit::ProviderDefaults {
    let who = &P::FROM_PROVIDER_ATTRIBUTE;
    let Defaults {
        api_url,
        docs_url,
        mcp_url,
        oauth,
        inputs,
        classify_body_bytes,
        classify_statuses,
        oauth_requests: _,
        entries: _,
        refresh_url: _,
        static_credential: _,
        url_inputs: _,
        ok_markers: _,
    } = P::defaults();
    wit::ProviderDefaults {
        id: who.id.to_owned(),
        display_name: who.name.to_owned(),
        description: who.description.to_owned(),
        docs_url,
        api_url,
        mcp_url,
        oauth,
        inputs,
        hooks: who.hooks.to_vec(),
        classify_body_bytes,
        classify_statuses: classify_statuses
            .into_iter()
            .map(|r| (*r.start(), *r.end()))
            .collect(),
    }
}

fn token_info(info: TokenInfo) -> wit::TokenInfo {
    wit::TokenInfo {
        variables: info.variables,
        expires_in: info.expires_in.map(|d| d.as_secs()),
    }
}

fn classification(class: Classification) -> wit::Classification {
    match class {
        Classification::Ok => wit::Classification::Ok,
        Classification::Retry(after) => wit::Classification::Retry(after.map(millis)),
        Classification::RateLimited(after) => {
            wit::Classification::RateLimited(after.map(seconds_up))
        }
        Classification::Reauth(why) => wit::Classification::Reauth(why),
        Classification::Failed(why) => wit::Classification::Failed(why),
    }
}

fn tools(tools: Vec<Tool>) -> Vec<wit::Tool> {
    tools
        .into_iter()
        .map(|t| wit::Tool {
            name: t.name,
            description: t.description,
            input_schema: t.input_schema.to_string(),
            read_only: t.read_only,
        })
        .collect()
}

/// Milliseconds, saturating.
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Whole seconds, rounded up (retrying early only earns another refusal), saturating.
fn seconds_up(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Exports provider `P` as the component's `portcullis:provider/plugin` interface and
/// the interfaces added since (`oauth-extras`, `catalog`, `auth-extras`, `tool-results`):
/// `#[portcullis_sdk::provider]` hands this type to the bindings' export macro.
pub struct Export<P>(PhantomData<P>);

impl<P: Provider> catalog::Guest for Export<P> {
    fn entries() -> Vec<catalog::Entry> {
        P::defaults().entries
    }
}

impl<P: Provider> oauth_extras::Guest for Export<P> {
    fn options() -> oauth_extras::OauthOptions {
        let requests = P::defaults().oauth_requests;
        oauth_extras::OauthOptions {
            token_body: if requests.json {
                oauth_extras::TokenBody::Json
            } else {
                oauth_extras::TokenBody::Form
            },
            token_headers: requests.headers,
        }
    }
}

impl<P: Provider> auth_extras::Guest for Export<P> {
    fn options() -> auth_extras::AuthOptions {
        let d = P::defaults();
        auth_extras::AuthOptions {
            refresh_url: d.refresh_url,
            static_credential: d.static_credential,
            url_inputs: d.url_inputs,
        }
    }
}

impl<P: Provider> classify_markers::Guest for Export<P> {
    fn ok_markers() -> Vec<classify_markers::OkMarker> {
        P::defaults().ok_markers
    }
}

impl<P: Provider> tool_results::Guest for Export<P> {
    fn shaped() -> Vec<String> {
        P::SHAPED_TOOL_RESULTS
            .iter()
            .map(|name| (*name).to_owned())
            .collect()
    }

    fn shape_result(
        ctx: Context,
        name: String,
        status: u16,
        body: Vec<u8>,
    ) -> Result<String, PluginError> {
        P::shape_tool_result(&ctx, &name, status, &body)
    }
}

impl<P: Provider> routes::Guest for Export<P> {
    fn request_routes(ctx: Context) -> Vec<routes::Route> {
        routes_v1(P::request_routes(&ctx))
    }
}

impl<P: Provider> routes_v2::Guest for Export<P> {
    fn request_routes(ctx: Context) -> Vec<routes_v2::Route> {
        P::request_routes(&ctx)
    }
}

/// The routes for a host before 0.1.4, or none when one needs what only `routes-v2` says.
/// None rather than those that fit: a shorter prefix would then cover the paths of a
/// longer one left out, and shape them differently from `shape_request`.
fn routes_v1(routes: Vec<crate::Route>) -> Vec<routes::Route> {
    if !routes.iter().all(crate::Route::fits_v1) {
        return Vec::new();
    }
    routes
        .into_iter()
        .map(|r| routes::Route {
            prefix: r.prefix,
            target: r.target,
            default_headers: r
                .default_headers
                .into_iter()
                .map(|d| (d.name, d.value))
                .collect(),
        })
        .collect()
}

impl<P: Provider> Guest for Export<P> {
    fn defaults() -> wit::ProviderDefaults {
        defaults::<P>()
    }

    fn shape_request(ctx: Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        P::shape_request(&ctx, req)
    }

    fn read_token_response(
        ctx: Context,
        status: u16,
        body: String,
    ) -> Result<wit::TokenInfo, TokenError> {
        P::read_token_response(&ctx, status, &body).map(token_info)
    }

    fn discover(ctx: Context, state: String, last: Option<Response>) -> Discovery {
        P::discover(&ctx, &state, last)
    }

    fn classify_response(
        ctx: Context,
        status: u16,
        headers: Vec<Header>,
        body: Vec<u8>,
    ) -> wit::Classification {
        classification(P::classify_response(&ctx, status, &headers, &body))
    }

    fn list_tools(ctx: Context) -> Vec<wit::Tool> {
        tools(P::list_tools(&ctx))
    }

    fn build_tool_call(
        ctx: Context,
        name: String,
        arguments: String,
    ) -> Result<ToolRequest, PluginError> {
        P::build_tool_call(&ctx, &name, &Args::parse(&arguments)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_to_the_wire_units() {
        let secs = |secs: f64| Some(Duration::from_secs_f64(secs));
        assert!(matches!(
            classification(Classification::Retry(secs(1.5))),
            wit::Classification::Retry(Some(1500))
        ));
        assert!(matches!(
            classification(Classification::RateLimited(secs(1.5))),
            wit::Classification::RateLimited(Some(2))
        ));
        assert!(matches!(
            classification(Classification::RateLimited(secs(30.0))),
            wit::Classification::RateLimited(Some(30))
        ));
        assert!(matches!(
            classification(Classification::Retry(Some(Duration::MAX))),
            wit::Classification::Retry(Some(u32::MAX))
        ));
        let info = token_info(TokenInfo::default().expires_in(Duration::from_secs(7200)));
        assert_eq!(info.expires_in, Some(7200));
    }

    /// A host before 0.1.4 gets the routes only when 0.1.3 can say all of them.
    #[test]
    fn routes_reach_an_older_host_only_when_all_of_them_fit_its_interface() {
        let plain = || {
            vec![
                crate::Route::new("", "https://api.example").default_header("X-Version", "1"),
                crate::Route::new("/files", "https://files.example"),
            ]
        };
        let v1 = routes_v1(plain());
        assert_eq!(v1.len(), 2);
        assert_eq!(v1[0].default_headers, [("x-version".into(), "1".into())]);
        for wider in [
            crate::Route::new("/a", "https://a.example").query_param("key", "k"),
            crate::Route::new("/a", "https://a.example").grant_header("x-t", &[("u", Some("u"))]),
            crate::Route::new("/a", "https://a.example").default_header_unless(
                "accept",
                "x",
                &["*/*"],
            ),
        ] {
            let mut routes = plain();
            routes.push(wider.clone());
            assert!(routes_v1(routes).is_empty(), "{wider:?}");
        }
        let slack = crate::Route::new("", "https://slack.com/api")
            .grant_header("X-Slack-Token", &[("bot", None), ("user", Some("user"))]);
        let grant = slack.grant_header.expect("grant header");
        assert_eq!(grant.name, "x-slack-token");
        assert_eq!(grant.values[1], ("user".into(), Some("user".into())));
    }
}
