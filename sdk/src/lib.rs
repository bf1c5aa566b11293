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
//! #[portcullis_sdk::provider]
//! impl Provider for Acme {
//!     fn defaults() -> Defaults {
//!         Defaults::new("https://api.acme.example")
//!     }
//!
//!     fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
//!         let path = format!("/v2{}", req.path);
//!         Ok(ShapedRequest::join(&ctx.base_url, &path, req.query.as_deref()))
//!     }
//! }
//! ```
//!
//! # Layout
//!
//! - [`Provider`]: the trait; every hook but [`Provider::defaults`] has a default that
//!   does what the host would do without a plugin.
//! - [`provider`]: the attribute that exports a `Provider`. A hook is active because
//!   the impl defines it: the attribute derives the hook list the host reads, and takes
//!   the plugin's id, name and description from the crate's `plugin.toml`.
//! - [`types`]: what hooks take and return, with builders: [`Defaults`], [`Tool`] and
//!   [`Args`] (JSON as `serde_json::Value`), [`Classification`] and [`TokenInfo`]
//!   (times as [`std::time::Duration`]), headers through [`WithHeaders`].
//! - [`url`]: [`join_url`], [`percent_encode`] and [`form_decode`].
//! - [`log`]: `info!`, `warn!`, ... into the host's log, tagged with the plugin id.
//! - `testing` (feature `harness`, native only): build the component and run it through
//!   the real host runtime against recorded fixtures.
//!
//! The WIT world is `portcullis:provider@0.1.5` (`provider`: `plugin`, `oauth-extras`,
//! `catalog`, `auth-extras`, `tool-results`, `routes`, `routes-v2`, `classify-markers`);
//! see `wit/provider.wit`. The SDK's own types convert to the wire types in [`wit`] at
//! the component boundary.

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

#[doc(hidden)]
pub mod export;
pub mod log;
pub mod types;
pub mod url;

#[cfg(all(feature = "harness", not(target_arch = "wasm32")))]
pub use portcullis::plugins::harness as testing;

/// Exports a provider: put it on your `impl Provider for YourType` block.
///
/// - The hooks the host calls are the hook methods the block defines; there is no list
///   to keep in step. `list_tools` and `build_tool_call` come as a pair.
/// - The plugin's id, name and description come from `plugin.toml` next to the crate's
///   `Cargo.toml` (the registry manifest), read at compile time: `defaults()` cannot
///   disagree with it. A missing or invalid manifest is a build error.
/// - Forgetting the attribute is a build error too (the trait's hook list is missing).
pub use portcullis_sdk_macros::provider;
pub use types::*;
pub use url::{form_decode, join_url, percent_encode};

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::Provider;
    pub use crate::types::*;
    pub use crate::url::{form_decode, join_url, percent_encode};
    pub use std::time::Duration;
}

/// The WIT version this SDK builds against.
pub const WIT_VERSION: &str = "0.1.5";

/// A provider. Implement [`Provider::defaults`] and the hooks your provider needs, and
/// put [`macro@provider`] on the impl: it exports the type and tells the host which hooks
/// the impl defines.
///
/// The defaults below are what the host does without a plugin, so a hook you do not
/// define behaves exactly like a connector with no provider (and the host does not
/// call the plugin for it).
pub trait Provider {
    /// The identity in `plugin.toml` and the hooks this impl defines, written by
    /// [`macro@provider`]. Missing means the attribute is missing: add
    /// `#[portcullis_sdk::provider]` to the impl.
    #[doc(hidden)]
    const FROM_PROVIDER_ATTRIBUTE: export::Derived;

    /// What the picker shows and pre-fills. Called once at load. The id, name and
    /// description are `plugin.toml`'s.
    fn defaults() -> Defaults;

    /// Shapes one proxied request: the default sends it to `base-url` + path + query.
    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        Ok(ShapedRequest::join(
            &ctx.base_url,
            &req.path,
            req.query.as_deref(),
        ))
    }

    /// The shaping of [`Provider::shape_request`] that depends only on the path, the
    /// agent's headers and fixed query parameters, as routes the host applies itself
    /// (WIT 0.1.3 `routes`, widened in 0.1.4 `routes-v2`): asked once per connection
    /// context, so the requests they cover cost no plugin call. Each route must give
    /// every request it covers exactly what `shape_request` gives it; the golden-fixture
    /// harness compares the two for every recorded request. Requests no route covers
    /// still go to `shape_request`. The default declares none.
    fn request_routes(_ctx: &Context) -> Vec<Route> {
        Vec::new()
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

    /// Turns a tool call into an API request; `args` is the call's JSON object.
    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        _args: &Args,
    ) -> Result<ToolRequest, PluginError> {
        Err(types::unknown_tool(name))
    }

    /// The tools whose upstream answers go through [`Provider::shape_tool_result`]
    /// before the model sees them (WIT 0.1.2 `tool-results`).
    const SHAPED_TOOL_RESULTS: &'static [&'static str] = &[];

    /// A listed tool's upstream answer (`status`, `body`) as the text the model gets:
    /// trimmed to what it needs ([`pick`]), credentials the API returns removed. An
    /// error is the tool's error. The default passes the answer on.
    fn shape_tool_result(
        _ctx: &Context,
        _name: &str,
        _status: u16,
        body: &[u8],
    ) -> Result<String, PluginError> {
        Ok(String::from_utf8_lossy(body).into_owned())
    }
}
