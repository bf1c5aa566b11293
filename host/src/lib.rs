//! Portcullis: a connector gateway between AI agents on a tailnet and the services they
//! call. It identifies each caller from its tailnet identity, authorizes with grants
//! (deny by default), and forwards to upstream APIs with the connector's credential
//! injected, keeping every secret sealed at rest.
//!
//! # Layout
//!
//! A request flows identity → policy → route → credentials → egress → upstream. Each
//! stage is one module with a small public surface, and each security rule lives in
//! exactly one of them:
//!
//! - [`config`]: HuJSON parsing and validation into an immutable [`config::Config`], with
//!   every problem reported at once as a [`config::Diagnostic`] with its JSON path.
//! - [`identity`]: the [`identity::Caller`] of a request, from tailscaled's LocalAPI
//!   whois, `tailscale serve` headers, or loopback. Fails closed.
//! - [`policy`]: grants compiled per config; [`policy::Access::allows`] is the one
//!   decision function for listing and use.
//! - [`vault`]: redb + AES-256-GCM; the only place that sees secrets at rest.
//! - [`credentials`]: what each auth scheme adds to a request; client-credentials token
//!   caching with single-flight minting.
//! - [`connections`]: per-user OAuth (authorization code + PKCE, dynamic client
//!   registration): connect, callback, sealed per-user tokens, single-flight refresh,
//!   status, disconnect and revocation.
//! - [`oauth`]: OAuth endpoint calls (token, revocation, registration, metadata).
//! - [`admin`]: `/api/connectors` (the caller's view with status), connect and
//!   disconnect, and the OAuth callback pages.
//! - [`egress`]: the one outbound HTTP client; the SSRF rules (checked after DNS, on
//!   every dial), no redirects, timeouts.
//! - [`plugins`]: provider plugins: the Wasm sandbox, the registry folder, and the
//!   checks on everything a plugin returns.
//! - [`mcp`]: the aggregated MCP endpoint `/v1/mcp`: upstream MCP sessions through
//!   egress with the connector's credential, catalogs discovered in the background or
//!   per user, grant-filtered listing and calls, `list_changed` to open sessions, and
//!   the built-in `aperture` tools.
//! - [`proxy`]: the `/v1/connectors/<id>/<path>` handler (shaped by the connector's
//!   provider plugin, if any).
//! - [`telemetry`]: request logs (header names only) and Prometheus metrics.
//! - [`error`]: the stable JSON error body every handler returns.
//! - [`app`]: wiring: snapshot building and atomic reload, the router, the server.

// `unsafe` is denied everywhere; the one exception (loading compiled plugin code from
// the host's private cache) is allowed on that function alone, with its reasoning.
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod egress;
pub mod error;
pub mod identity;
pub mod mcp;
pub mod oauth;
pub mod plugins;
pub mod policy;
pub mod proxy;
pub mod telemetry;
pub mod vault;
