//! A connector ready to serve requests: one `connectors.servers` entry with its secrets
//! resolved into a [`Credential`]. Built once per config snapshot; every outbound call
//! names the connector it is for.

use crate::config::{self, Protocol};
use crate::credentials::{Credential, TokenSlots};
use crate::vault::Vault;

/// A connector ready to serve requests.
#[derive(Debug)]
pub struct Connector {
    pub id: String,
    pub protocol: Protocol,
    pub url: Option<url::Url>,
    pub credential: Credential,
    pub description: String,
    pub context: Option<serde_json::Value>,
    /// Registry id of the provider plugin; `None` for `"Custom"`.
    pub provider: Option<String>,
    /// The connector's `provider_vars`, passed to its plugin.
    pub provider_vars: Vec<(String, String)>,
    /// Its series in the host's metrics, kept once found.
    pub meters: crate::telemetry::ConnectorMeters,
    /// Its plugin's context, where it is the same on every request.
    pub plugin_context: crate::plugins::KeptContext,
}

impl Connector {
    /// Resolves the connector's secrets now, so that a missing environment variable or
    /// vault entry fails the config load rather than a request.
    pub fn build(
        c: &config::Connector,
        vault: &Vault,
        tokens: &TokenSlots,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            id: c.id.clone(),
            protocol: c.protocol,
            url: c.url.clone(),
            credential: Credential::build(c, vault, tokens)?,
            description: c.description.clone(),
            context: c.context.clone(),
            provider: (!c.provider.eq_ignore_ascii_case("custom")).then(|| c.provider.clone()),
            provider_vars: c
                .provider_vars
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            meters: Default::default(),
            plugin_context: Default::default(),
        })
    }

    /// The per-user OAuth settings, for connectors whose token depends on the caller.
    pub fn per_user(&self) -> Option<&std::sync::Arc<crate::connections::PerUser>> {
        match &self.credential {
            Credential::PerUser(pu) => Some(pu),
            _ => None,
        }
    }
}
