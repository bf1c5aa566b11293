//! What a config refers to outside its own text: environment variables, vault secrets
//! and registry providers.
//!
//! The one validator ([`super::load`]) checks every reference against a
//! [`Surroundings`]; `validate`, `serve`, a reload and a save through the admin API differ
//! only in the surroundings they pass, so they agree on what is usable.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use zeroize::Zeroizing;

/// Where the validator looks things up.
pub trait Surroundings {
    /// An environment variable (`{"env": NAME}`); `None` when unset or not UTF-8.
    fn env(&self, name: &str) -> Option<Zeroizing<String>>;
    /// A vault secret (`{"vault": NAME}`): `Ok(None)` when there is none of that name,
    /// `Err(why)` when the vault cannot be read here (the reference is then unchecked).
    fn vault(&self, name: &str) -> Result<Option<Zeroizing<String>>, String>;
    /// A registry provider, by id (case-insensitive).
    fn provider(&self, id: &str) -> Provider;
}

/// A provider as the validator sees it.
#[derive(Debug, Clone)]
pub enum Provider {
    Loaded(Box<ProviderTemplate>),
    /// In the registry folder, but it did not load (the reason, from the registry scan).
    Broken(String),
    /// Not in the registry; `known` lists the ids that are.
    Unknown {
        known: Vec<String>,
    },
    /// No registry is configured here.
    NoRegistry,
}

/// What a registry provider pre-fills: its defaults, in config terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderTemplate {
    /// Registry id (`slack`).
    pub id: String,
    /// Display name (`Slack`); its first word is the connector ID the picker proposes.
    pub name: String,
    pub description: String,
    pub api_url: String,
    pub mcp_url: Option<String>,
    pub oauth: Option<OAuthTemplate>,
    /// Provider variables that have a default (`api_version`).
    pub vars: BTreeMap<String, String>,
    /// The connector ID the picker proposes, when not the name's first word (a picker
    /// entry such as Google Drive proposes `Drive`).
    pub connector_id: Option<String>,
    /// How the provider's own static credential is sent (a Discord bot token, a Figma
    /// personal access token, a Trello token); `None`: `Authorization: Bearer`.
    pub static_credential: Option<StaticCredential>,
    /// Provider variables that fill `{name}` in the OAuth URLs (Microsoft's `tenant`).
    pub url_inputs: Vec<String>,
}

/// Why a connector cannot be made from a template as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    /// `protocol: mcp` for a provider without an MCP server of its own.
    #[error("{0}")]
    NoMcpServer(String),
    /// A provider variable that goes into a URL is not one segment.
    #[error("{0}")]
    BadVariable(String),
    /// Credentials of two kinds, or of a kind the provider does not sign in with (a
    /// token for an OAuth-only provider, a client ID for one without OAuth): saving
    /// would silently drop what the operator gave.
    #[error("{0}")]
    Conflicting(String),
}

impl FillError {
    /// The error code the admin API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoMcpServer(_) => "no_mcp_server",
            Self::BadVariable(_) | Self::Conflicting(_) => "invalid_config",
        }
    }
}

/// Whether `value` can fill a `{name}` in a URL: one segment, nothing to encode.
fn url_segment(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// How a provider takes a token the operator pastes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticCredential {
    /// `Authorization: <scheme> <token>`.
    Authorization(String),
    /// A header of this name.
    Header(String),
    /// A query parameter of this name.
    Query(String),
}

/// The OAuth part of a [`ProviderTemplate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OAuthTemplate {
    pub authorization_url: String,
    pub token_url: String,
    pub scopes: Vec<String>,
    pub auth_params: BTreeMap<String, String>,
}

impl ProviderTemplate {
    /// The connector ID the picker proposes: the display name's first word, letters and
    /// digits only (`Salesforce`), as Aperture does; it also names the callback URL.
    pub fn connector_id(&self) -> String {
        if let Some(id) = &self.connector_id {
            return id.clone();
        }
        let id: String = self
            .name
            .split_whitespace()
            .next()
            .unwrap_or(&self.id)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(super::MAX_ID_LEN)
            .collect();
        if id.starts_with(|c: char| c.is_ascii_alphabetic()) {
            id
        } else {
            self.id
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect()
        }
    }

    /// The connector this provider pre-fills, as it goes into `connectors.servers`: the
    /// URL (the MCP server's for `protocol: mcp`), the OAuth endpoints, scopes and
    /// `auth_params`, and provider variables with defaults. The client ID and secret are
    /// empty: the operator supplies them.
    pub fn connector(&self, protocol: super::Protocol) -> Value {
        self.server(protocol, &self.vars, self.oauth.is_some())
    }

    /// The connector for `protocol` with provider variables `vars` (which also fill the
    /// OAuth URLs), signing in with OAuth when `oauth`, else with the provider's static
    /// credential.
    fn server(
        &self,
        protocol: super::Protocol,
        vars: &BTreeMap<String, String>,
        oauth: bool,
    ) -> Value {
        let url = match (protocol, &self.mcp_url) {
            (super::Protocol::Mcp, Some(u)) => u.clone(),
            _ => self.api_url.clone(),
        };
        let mut server = json!({
            "protocol": protocol,
            "url": url,
            "provider": self.id,
            "description": self.description,
        });
        server["auth"] = match self.oauth.as_ref().filter(|_| oauth) {
            Some(o) => json!({
                "type": "oauth2_authorization_code",
                "client_id": "",
                "client_secret": "",
                "authorization_url": self.oauth_url(&o.authorization_url, vars),
                "token_url": self.oauth_url(&o.token_url, vars),
                "scopes": o.scopes,
                "auth_params": o.auth_params,
            }),
            None => self.static_auth(),
        };
        if !vars.is_empty() {
            server["provider_vars"] = json!(vars);
        }
        server
    }

    /// `url` (an OAuth URL of the provider's) with each `{input}` of [`Self::url_inputs`]
    /// filled from `vars`. Values are checked by [`Self::fill`] and the validator; one
    /// that is not a single segment is left out, so the placeholder stays visible.
    pub fn oauth_url(&self, url: &str, vars: &BTreeMap<String, String>) -> String {
        self.url_inputs.iter().fold(url.to_owned(), |url, name| {
            match vars.get(name).filter(|v| url_segment(v)) {
                Some(v) => url.replace(&format!("{{{name}}}"), v),
                None => url,
            }
        })
    }

    /// The `auth` of a connector holding a pasted token, sent the provider's way; the
    /// secret is the operator's to fill in.
    pub fn static_auth(&self) -> Value {
        match &self.static_credential {
            Some(StaticCredential::Authorization(scheme)) if scheme != "Bearer" => {
                json!({"type": "bearer_token", "scheme": scheme, "secret": ""})
            }
            Some(StaticCredential::Header(name)) => {
                json!({"type": "api_key", "name": name, "in": "header", "secret": ""})
            }
            Some(StaticCredential::Query(name)) => {
                json!({"type": "api_key", "name": name, "in": "query", "secret": ""})
            }
            _ => json!({"type": "bearer_token", "secret": ""}),
        }
    }

    /// Whether the connector `req` asks for signs in with OAuth (else with the provider's
    /// static credential). What does not fit the answer is refused, not dropped.
    fn signs_in_with_oauth(&self, req: &FromTemplate) -> Result<bool, FillError> {
        let client = req.client_id.is_some() || req.client_secret.is_some();
        let name = &self.name;
        if self.oauth.is_none() {
            if client || req.scopes.is_some() {
                return Err(FillError::Conflicting(format!(
                    "{name} has no OAuth sign-in: give its token as `secret`, without an OAuth client or `scopes`"
                )));
            }
            return Ok(false);
        }
        if client && req.secret.is_some() {
            return Err(FillError::Conflicting(format!(
                "give {name} either a token (`secret`) or an OAuth client (`client_id`, `client_secret`), not both"
            )));
        }
        if req.secret.is_none() {
            return Ok(true);
        }
        if self.static_credential.is_none() {
            return Err(FillError::Conflicting(format!(
                "{name} signs in with OAuth only: give `client_id` (and `client_secret` unless the application uses PKCE only), not `secret`"
            )));
        }
        if req.scopes.is_some() {
            return Err(FillError::Conflicting(format!(
                "a pasted token (`secret`) takes no `scopes`: they are for {name}'s OAuth sign-in"
            )));
        }
        Ok(false)
    }

    /// The default a hand-written connector of this provider should have for `field` of
    /// its `auth`, as JSON to paste.
    pub(crate) fn auth_default(&self, field: &str) -> Option<Value> {
        let o = self.oauth.as_ref()?;
        Some(match field {
            "authorization_url" => json!(self.oauth_url(&o.authorization_url, &self.vars)),
            "token_url" => json!(self.oauth_url(&o.token_url, &self.vars)),
            "scopes" => json!(o.scopes),
            "auth_params" => json!(o.auth_params),
            _ => return None,
        })
    }
}

/// A connector to add from a provider template: what the operator supplies on top of
/// the provider's defaults. No `Debug`: it carries secrets.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromTemplate {
    /// Registry id (`slack`).
    pub provider: String,
    /// Default: the provider's display name's first word (`Slack`).
    #[serde(default)]
    pub id: Option<String>,
    /// `http` (the provider's API) or `mcp` (its MCP server, when it has one).
    #[serde(default)]
    pub protocol: Option<super::Protocol>,
    #[serde(default)]
    pub client_id: Option<String>,
    /// Omit it for a PKCE-only OAuth application.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The token, for a provider without OAuth, or instead of OAuth for one with a
    /// static credential of its own (a Discord bot token): sent the provider's way.
    #[serde(default)]
    pub secret: Option<String>,
    /// Replaces the provider's default scopes.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Added to the provider's defaults.
    #[serde(default)]
    pub provider_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl ProviderTemplate {
    /// The connector ID and `connectors.servers` entry for `req`: the provider's
    /// defaults with what the operator supplied on top. Left-out credentials stay out,
    /// so the validator names them. `Err` for `protocol: mcp` when the provider has no
    /// MCP server, and for a URL variable (Microsoft's `tenant`) that is not one segment.
    pub fn fill(&self, req: &FromTemplate) -> Result<(String, Value), FillError> {
        let protocol = req.protocol.unwrap_or(super::Protocol::Http);
        if protocol == super::Protocol::Mcp && self.mcp_url.is_none() {
            return Err(FillError::NoMcpServer(format!(
                "{} has no MCP server of its own; add it with protocol \"http\" (its API), or as an MCP connector without a provider",
                self.name
            )));
        }
        for name in &self.url_inputs {
            if let Some(v) = req.provider_vars.get(name).filter(|v| !url_segment(v)) {
                return Err(FillError::BadVariable(format!(
                    "provider_vars.{name} \"{v}\" goes into {}'s sign-in URLs: use letters, digits, '.', '_' and '-' only",
                    self.name
                )));
            }
        }
        let id = req.id.clone().unwrap_or_else(|| self.connector_id());
        let oauth = self.signs_in_with_oauth(req)?;
        let mut vars = self.vars.clone();
        vars.extend(req.provider_vars.clone());
        let mut server = self.server(protocol, &vars, oauth);
        let auth = &mut server["auth"];
        if let Some(auth) = auth.as_object_mut() {
            let mut set = |field: &str, v: &Option<String>| match v {
                Some(v) => {
                    auth.insert(field.to_owned(), Value::String(v.clone()));
                }
                None => {
                    auth.remove(field);
                }
            };
            if oauth {
                set("client_id", &req.client_id);
                set("client_secret", &req.client_secret);
                if let Some(scopes) = &req.scopes {
                    auth.insert("scopes".to_owned(), json!(scopes));
                }
            } else {
                set("secret", &req.secret);
            }
        }
        if let Some(d) = &req.description {
            server["description"] = json!(d);
        }
        Ok((id, server))
    }
}

/// Surroundings for unit tests: named environment variables, vault secrets and
/// providers, and nothing else.
#[cfg(test)]
#[derive(Default)]
pub struct Fixture {
    pub env: BTreeMap<String, String>,
    pub vault: BTreeMap<String, String>,
    pub providers: BTreeMap<String, ProviderTemplate>,
    /// Every secret reference resolves (to `"x"`): for tests about other things.
    pub permissive: bool,
    /// The vault cannot be read (why).
    pub vault_error: Option<String>,
    /// Every provider is in the registry but did not load (why).
    pub broken: Option<String>,
}

#[cfg(test)]
impl Surroundings for Fixture {
    fn env(&self, name: &str) -> Option<Zeroizing<String>> {
        match self.env.get(name) {
            Some(v) => Some(Zeroizing::new(v.clone())),
            None => self.permissive.then(|| Zeroizing::new("x".to_owned())),
        }
    }

    fn vault(&self, name: &str) -> Result<Option<Zeroizing<String>>, String> {
        if let Some(why) = &self.vault_error {
            return Err(why.clone());
        }
        Ok(match self.vault.get(name) {
            Some(v) => Some(Zeroizing::new(v.clone())),
            None => self.permissive.then(|| Zeroizing::new("x".to_owned())),
        })
    }

    fn provider(&self, id: &str) -> Provider {
        if let Some(why) = &self.broken {
            return Provider::Broken(why.clone());
        }
        match self
            .providers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(id))
        {
            Some((_, t)) => Provider::Loaded(Box::new(t.clone())),
            None => Provider::Unknown {
                known: self.providers.keys().cloned().collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connector_ids_come_from_the_display_name() {
        let t = ProviderTemplate {
            id: "google".into(),
            name: "Google Workspace".into(),
            ..Default::default()
        };
        assert_eq!(t.connector_id(), "Google");
        let odd = ProviderTemplate {
            id: "x9".into(),
            name: "9 Lives".into(),
            ..Default::default()
        };
        assert_eq!(odd.connector_id(), "x9");
        let entry = ProviderTemplate {
            connector_id: Some("Drive".into()),
            ..t
        };
        assert_eq!(entry.connector_id(), "Drive");
    }
}
