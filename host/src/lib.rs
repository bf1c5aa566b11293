//! Portcullis: a connector gateway between AI agents on a tailnet and the services they
//! call. It identifies each caller from its tailnet identity, authorizes with grants
//! (deny by default), and forwards to upstream APIs with the connector's credential
//! injected, keeping every secret sealed at rest.
//!
//! # Layout
//!
//! A request flows identity → policy → route → front door → outbound → upstream:
//!
//! ```text
//! request ─► front (log, limits, browser, identify) ─► proxy | mcp | admin ─► outbound ─► egress ─► upstream
//!                                      identity         policy (grants)     shape ─► credential ─► classify
//! ```
//!
//! Each stage is one module with a small public surface, and each security rule lives in
//! exactly one of them (named in brackets):
//!
//! - [`front`]: the way in, one service that puts the stages below in order (the request
//!   log and metrics, limits, browser defence, identity for every non-public route, the
//!   JSON rewrite of framework rejections on the way out); it holds no rule itself.
//! - [`limits`]: before the browser defence, request heads over the size limits refused
//!   in JSON (414, 431) rather than by the HTTP server's bare answers.
//! - [`browser`]: before identity, the Host allow-list (DNS rebinding), cross-site
//!   browser requests refused, preflights answered here. [browser defence]
//! - [`config`]: HuJSON parsing and the one validator into an immutable
//!   [`config::Config`], with every problem reported at once as a [`config::Diagnostic`]
//!   with its JSON path; masking secrets and editing the operator's text (`config::edit`).
//! - [`configure`]: where the config lives, reloads and saves (admin API and command
//!   line) through that validator; [`commands`]: the command-line tools.
//! - [`identity`]: who is calling, from tailscaled's LocalAPI whois, `tailscale serve`
//!   headers, or loopback; fails closed. [identity]
//! - [`policy`]: the [`policy::Caller`] and grants compiled once (config grants per
//!   config, a caller's own capabilities per identity); [`policy::Access::allows`] is the
//!   one decision for listing and use. [policy]
//! - [`state`]: the shared state handlers read: [`state::App`] and the config
//!   [`state::Snapshot`], with [`connector::Connector`]s ready to serve.
//! - Front doors, thin over `outbound` and `policy`: [`proxy`]
//!   (`/v1/connectors/<id>/<path>`), [`mcp`] (`/v1/mcp`: aggregation, upstream sessions,
//!   built-in and plugin tools), [`admin`] (`/api/*`, the OAuth callback pages).
//! - [`ui`]: the dashboard at `/ui/`, static assets compiled in; it calls the admin API
//!   like any script and has no endpoints of its own.
//! - [`outbound`]: the one pipeline every upstream call takes: shape (provider plugin) →
//!   credential → egress → 401 handling → classify, and the discovery cache.
//! - [`headers`]: what is stripped from callers and upstream answers, and refused from
//!   plugins. [header hygiene]
//! - [`credentials`]: what each auth scheme adds, shared or per-user, and what a
//!   rejection does; client-credentials tokens with single-flight minting.
//! - [`connections`]: per-user OAuth (authorization code + PKCE, dynamic client
//!   registration): connect, callback, sealed tokens, single-flight refresh, status,
//!   disconnect, revocation. [`authserver`]: finding an MCP server's (or API's)
//!   authorization server, as the MCP authorization specification says a client must.
//!   [`oauth`]: the OAuth endpoint calls.
//! - [`egress`]: the one outbound HTTP client; addresses checked after DNS on every dial,
//!   no redirects, timeouts. [egress]
//! - [`plugins`]: the Wasm sandbox, the registry folder, and the check on every hook's
//!   output (`plugins::output`). [plugin output]
//! - [`vault`]: redb + AES-256-GCM; the only place that sees secrets at rest. [vault]
//! - [`telemetry`]: request logs (header names only), Prometheus metrics and opt-in
//!   OpenTelemetry traces; [`health`]: what the host last saw of each connector's
//!   upstream; [`audit`]: who used which connector or tool under which grant, and every
//!   admin change (never a secret).
//! - [`error`]: the stable JSON error body every answer of the host's own uses;
//!   [`openapi`]: the HTTP API's OpenAPI document, from the handlers' annotations (the
//!   router takes its paths from them).
//! - [`app`]: wiring only: builds the state, the router behind [`front`], reloads, the
//!   server; `threads`: the connection threads, one per core, each serving the
//!   connections dealt to it on a runtime of its own, and home to the upstream MCP
//!   sessions.

// `unsafe` is denied everywhere; the two exceptions (loading compiled plugin code from
// the host's private cache, and telling the allocator to return what a compile freed,
// both in `plugins::runtime`) are allowed on those functions alone, with their reasoning.
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod authserver;
pub mod browser;
pub mod commands;
pub mod config;
pub mod configure;
pub mod connections;
pub mod connector;
pub mod credentials;
pub mod egress;
pub mod error;
pub mod front;
#[cfg(test)]
mod fuzz;
pub mod headers;
pub mod health;
pub mod identity;
pub mod limits;
pub mod mcp;
pub mod oauth;
pub mod openapi;
pub mod outbound;
pub mod plugins;
pub mod policy;
pub mod proxy;
pub mod redact;
pub mod state;
pub mod telemetry;
mod threads;
pub mod ui;
pub mod vault;
