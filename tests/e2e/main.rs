//! End-to-end tests: the real `portcullis` binary, driven over HTTP, against real peers
//! on loopback. One test binary (it links once); a module per area.

mod admin_api;
mod audit;
mod browser;
mod cli;
mod client_credentials;
mod config;
mod dashboard;
mod deploy;
mod errors;
mod identity;
mod mcp;
mod mcp_auth_conformance;
mod mcp_conformance;
mod mcp_features;
mod observability;
mod openapi;
mod per_user;
mod plugins;
mod providers;
mod proxy;
mod replicas;
mod schema;
mod startup;
mod template;
mod traces;
mod vault;

use serde_json::{Value, json};

/// A config in loopback identity mode with loopback egress allowed (the documented
/// dev/test switch) and the given connectors and grants.
pub fn loopback_config(connectors: Value, grants: Value) -> String {
    json!({
        "identity": {"mode": "loopback"},
        "egress": {"allow_loopback": true},
        "connectors": {"servers": connectors},
        "grants": grants,
    })
    .to_string()
}

/// `(loopback)` as admin with every connector granted.
pub fn admin_everything() -> Value {
    json!([portcullis_e2e::grant("(loopback)", &["**"], true)])
}
