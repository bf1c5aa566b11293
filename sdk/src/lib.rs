//! Write a Portcullis provider plugin.
//!
//! A provider plugin tells Portcullis everything provider-specific: its defaults (URLs,
//! scopes, `auth_params`, PKCE policy, where the tokens sit in a token response) and how
//! to shape traffic (API versions, per-API hosts, cloud ids, error envelopes). It is a
//! WASI component built for `wasm32-wasip2` and runs sandboxed: no network, files,
//! environment or secrets. Hooks receive data and return data or request descriptions;
//! the host does all I/O and adds credentials itself.
//!
//! ```ignore
//! use portcullis_sdk::prelude::*;
//!
//! struct Acme;
//!
//! impl Provider for Acme {
//!     fn defaults() -> Defaults {
//!         Defaults::new("acme", "Acme", "https://api.acme.example")
//!     }
//! }
//!
//! portcullis_sdk::export_provider!(Acme);
//! ```
//!
//! # Layout
//!
//! - [`Provider`]: the trait; every hook but [`Provider::defaults`] has a default that
//!   does what the host would do without a plugin.
//! - [`export_provider!`]: exports a `Provider` as the component's `plugin` interface.
//! - [`types`]: the WIT types (`Defaults`, `Context`, `ShapedRequest`, ...) with
//!   constructors and helpers.
//! - [`log`]: `info!`, `warn!`, ... into the host's log, tagged with the plugin id.
//! - `testing` (feature `harness`, native only): run the built component through the
//!   real host runtime against recorded fixtures.
//!
//! The WIT world is `portcullis:provider@0.1.0`; see `wit/provider.wit`.

// Lets the generated bindings name this crate by the path plugin crates use.
extern crate self as portcullis_sdk;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "provider",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "portcullis_sdk::bindings",
        runtime_path: "portcullis_sdk::__rt",
        bitflags_path: "portcullis_sdk::__bitflags",
    });
}

#[doc(hidden)]
pub use bitflags as __bitflags;
#[doc(hidden)]
pub use wit_bindgen::rt as __rt;

pub mod log;
pub mod types;

#[cfg(all(feature = "harness", not(target_arch = "wasm32")))]
pub use portcullis::plugins::harness as testing;

pub use types::*;

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::Provider;
    pub use crate::types::*;
}

/// The WIT version this SDK builds against.
pub const WIT_VERSION: &str = "0.1.0";

/// A provider. Implement [`Provider::defaults`] and the hooks your provider needs, list
/// those hooks in [`Defaults::hooks`], and export the type with [`export_provider!`].
///
/// The defaults below are what the host does without a plugin, so a hook you do not
/// override behaves exactly like a connector with no provider.
pub trait Provider {
    /// What the picker shows and pre-fills. Called once at load.
    fn defaults() -> Defaults;

    /// Shapes one proxied request: the default sends it to `base-url` + path + query.
    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        Ok(ShapedRequest::to(join_url(
            &ctx.base_url,
            &req.path,
            req.query.as_deref(),
        )))
    }

    /// Reads the non-token parts of a token response (tokens are redacted).
    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        types::standard_token_response(status, body)
    }

    /// Post-connect discovery. The default discovers nothing.
    fn discover(_ctx: &Context, _state: &str, _last: Option<Response>) -> Discovery {
        Discovery::Done(Vec::new())
    }

    /// What a response means; the default goes by status and `Retry-After`.
    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        _body: &[u8],
    ) -> Classification {
        types::classify_by_status(status, headers)
    }

    /// Tools offered on top of the HTTP API.
    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        Vec::new()
    }

    /// Turns a tool call into an API request.
    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        _arguments: &str,
    ) -> Result<ToolRequest, PluginError> {
        Err(PluginError::InvalidInput(format!(
            "unknown tool \"{name}\""
        )))
    }
}

/// Exports a [`Provider`] as this component's `portcullis:provider/plugin` interface.
#[macro_export]
macro_rules! export_provider {
    ($provider:ty) => {
        #[doc(hidden)]
        pub struct __PortcullisPlugin;

        impl $crate::bindings::exports::portcullis::provider::plugin::Guest for __PortcullisPlugin {
            fn defaults() -> $crate::Defaults {
                <$provider as $crate::Provider>::defaults()
            }
            fn shape_request(
                ctx: $crate::Context,
                req: $crate::OutgoingRequest,
            ) -> ::core::result::Result<$crate::ShapedRequest, $crate::PluginError> {
                <$provider as $crate::Provider>::shape_request(&ctx, req)
            }
            fn read_token_response(
                ctx: $crate::Context,
                status: u16,
                body: ::std::string::String,
            ) -> ::core::result::Result<$crate::TokenInfo, $crate::TokenError> {
                <$provider as $crate::Provider>::read_token_response(&ctx, status, &body)
            }
            fn discover(
                ctx: $crate::Context,
                state: ::std::string::String,
                last: ::core::option::Option<$crate::Response>,
            ) -> $crate::Discovery {
                <$provider as $crate::Provider>::discover(&ctx, &state, last)
            }
            fn classify_response(
                ctx: $crate::Context,
                status: u16,
                headers: ::std::vec::Vec<$crate::Header>,
                body: ::std::vec::Vec<u8>,
            ) -> $crate::Classification {
                <$provider as $crate::Provider>::classify_response(&ctx, status, &headers, &body)
            }
            fn list_tools(ctx: $crate::Context) -> ::std::vec::Vec<$crate::Tool> {
                <$provider as $crate::Provider>::list_tools(&ctx)
            }
            fn build_tool_call(
                ctx: $crate::Context,
                name: ::std::string::String,
                arguments: ::std::string::String,
            ) -> ::core::result::Result<$crate::ToolRequest, $crate::PluginError> {
                <$provider as $crate::Provider>::build_tool_call(&ctx, &name, &arguments)
            }
        }

        $crate::bindings::__export_world!(__PortcullisPlugin with_types_in $crate::bindings);
    };
}

/// `base` + `path` (+ `?query`), with exactly one `/` at the join.
pub fn join_url(base: &str, path: &str, query: Option<&str>) -> String {
    let mut url = String::with_capacity(base.len() + path.len() + 2);
    url.push_str(base.trim_end_matches('/'));
    if !path.starts_with('/') {
        url.push('/');
    }
    url.push_str(path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(q);
    }
    url
}
