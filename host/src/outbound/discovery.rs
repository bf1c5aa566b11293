//! The plugin's view of a connection: input defaults, `provider_vars`, the caller's
//! token variables, and what post-connect discovery found (Atlassian's cloud id). This
//! module owns the discovery cache and is the only code that invalidates it: on a
//! rejected credential (in the pipeline), on any connection change (it follows
//! [`crate::connections::Connections::changes`]) and on a new config.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::StatusCode;

use super::{Error, Outbound, UpstreamBody};
use crate::connector::Connector;
use crate::error::ApiError;
use crate::health::Check;
use crate::plugins::{ConnectionContext, DiscoveryOutcome, Plugin, types};
use types::Hook;

/// Largest discovery response handed to a plugin.
const DISCOVERY_BODY_BYTES: usize = 1 << 20;

/// How long a failed or undecided discovery is remembered, so a retrying agent does not
/// hammer the provider.
const DISCOVERY_RETRY_AFTER: Duration = Duration::from_secs(30);

/// One discovery: locked while it runs, so concurrent requests wait for it.
type DiscoverySlot = tokio::sync::Mutex<Option<(Instant, DiscoveryOutcome)>>;

/// Discovery results per connector, base URL, variables and user, computed once at a
/// time.
#[derive(Default)]
pub struct Discoveries {
    entries: Mutex<HashMap<String, Arc<DiscoverySlot>>>,
}

impl Discoveries {
    async fn get_or_run<F, Fut>(&self, key: String, run: F) -> Result<DiscoveryOutcome, Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<DiscoveryOutcome, Error>>,
    {
        let slot = {
            let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            map.entry(key).or_default().clone()
        };
        let mut entry = slot.lock().await;
        if let Some((at, outcome)) = entry.as_ref() {
            let fresh = matches!(outcome, DiscoveryOutcome::Done(_))
                || at.elapsed() < DISCOVERY_RETRY_AFTER;
            if fresh {
                return Ok(outcome.clone());
            }
        }
        let outcome = run().await?;
        *entry = Some((Instant::now(), outcome.clone()));
        Ok(outcome)
    }

    /// Forgets a connector's results (its credential was rejected).
    pub(super) fn forget(&self, connector: &str) {
        let prefix = format!("{connector}\n");
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| !k.starts_with(&prefix));
    }

    /// Forgets everything (a new config, a connection that started or ended).
    pub(super) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Outbound {
    /// The plugin context without discovery: input defaults, `provider_vars`, and
    /// `user`'s token variables for a per-user connector. Enough to list a plugin's tools.
    pub fn plugin_context(
        &self,
        connector: &Connector,
        user: Option<&str>,
        plugin: &Plugin,
    ) -> Option<types::Context> {
        let base = super::base_url(connector, Some(plugin)).ok()?;
        Some(self.context_at(connector, user, plugin, base))
    }

    /// [`Outbound::plugin_context`] with the connector's base URL already resolved: it is
    /// built for each request a plugin shapes (unless kept on the connector,
    /// [`Outbound::context`]), so nothing is done twice.
    pub(super) fn context_at(
        &self,
        connector: &Connector,
        user: Option<&str>,
        plugin: &Plugin,
        base: &url::Url,
    ) -> types::Context {
        let mut variables: Vec<(String, String)> = plugin
            .defaults
            .inputs
            .iter()
            .filter(|i| !connector.provider_vars.iter().any(|(k, _)| *k == i.name))
            .filter_map(|i| Some((i.name.clone(), i.default_value.clone()?)))
            .collect();
        variables.extend(connector.provider_vars.iter().cloned());
        if let (Some(pu), Some(user)) = (connector.per_user(), user) {
            variables.extend(self.connections.variables(pu, user));
        }
        types::Context {
            connector: connector.id.clone(),
            base_url: base.as_str().to_owned(),
            variables,
        }
    }

    /// The connection's variables for the plugin: [`Outbound::plugin_context`] at `base`
    /// plus what discovery found (run once and cached). Without a user's variables or a
    /// discovery it is the same on every request, and kept with the connector.
    pub(super) async fn context(
        &self,
        connector: &Connector,
        user: Option<&str>,
        plugin: &Arc<Plugin>,
        base: &url::Url,
    ) -> Result<Arc<ConnectionContext>, Error> {
        let id = connector.id.as_str();
        // A per-user connection's variables come from that user's token responses.
        let user = connector.per_user().and(user);
        if !plugin.has(Hook::Discover) {
            let ctx = match user {
                None => connector.plugin_context.get_or_build(plugin, || {
                    self.context_at(connector, None, plugin, base).into()
                }),
                Some(_) => Arc::new(self.context_at(connector, user, plugin, base).into()),
            };
            // Kept for the base every request of this connector and plugin resolves.
            debug_assert_eq!(ctx.wit().base_url, base.as_str());
            return Ok(ctx);
        }
        let mut ctx = self.context_at(connector, user, plugin, base);
        let key = format!("{id}\n{}\n{:?}\n{user:?}", ctx.base_url, ctx.variables);
        // The discovery boxed, as a plugin's call is ([`crate::plugins::Plugins`]): its
        // requests and calls would otherwise size every request's pipeline future. Only
        // a discovery that runs allocates; a found one is read as before.
        let outcome = self
            .discoveries
            .get_or_run(key, || {
                Box::pin(self.discover(connector, user, plugin, base, &ctx))
            })
            .await;
        let report = match &outcome {
            Ok(DiscoveryOutcome::Done(_)) => Ok(None),
            Ok(DiscoveryOutcome::Choose(sel)) => Err(format!(
                "several accounts are reachable; set provider_vars.{} to choose one",
                sel.variable
            )),
            Ok(DiscoveryOutcome::Failed(why)) => Err(why.clone()),
            Err(e) => Err(e.to_string()),
        };
        self.health.record(
            id,
            user,
            Check::Discovery,
            report.as_ref().map(|t| *t).map_err(String::as_str),
        );
        match outcome? {
            DiscoveryOutcome::Done(vars) => {
                ctx.variables.extend(vars);
                Ok(Arc::new(ctx.into()))
            }
            DiscoveryOutcome::Choose(sel) => {
                let options: Vec<String> = sel
                    .options
                    .iter()
                    .map(|o| format!("\"{}\" ({})", o.value, o.label))
                    .collect();
                Err(Error::discovery(ApiError::new(
                    StatusCode::CONFLICT,
                    "provider_choice_required",
                    format!(
                        "connector \"{id}\" can reach several {} accounts; an admin must choose one by setting connectors.servers.{id}.provider_vars.{} to one of: {}",
                        plugin.defaults.display_name,
                        sel.variable,
                        options.join(", ")
                    ),
                )))
            }
            DiscoveryOutcome::Failed(why) => Err(Error::discovery(ApiError::bad_gateway(
                "discovery_failed",
                format!(
                    "connector \"{id}\": {} discovery failed: {why}",
                    plugin.defaults.display_name
                ),
            ))),
        }
    }

    /// Runs the plugin's discovery; each step goes out with the connection's credential
    /// through [`Outbound::deliver`].
    async fn discover(
        &self,
        connector: &Connector,
        user: Option<&str>,
        plugin: &Arc<Plugin>,
        base: &url::Url,
        ctx: &types::Context,
    ) -> Result<DiscoveryOutcome, Error> {
        let idle = self.egress.read_timeout();
        self.plugins
            .run_discovery(
                plugin,
                base,
                ctx,
                connector.credential.header_name(),
                |req| async move {
                    let body = req
                        .body
                        .map_or(super::Payload::Empty, |b| super::Payload::Bytes(b.into()));
                    let auth = super::Auth {
                        connector,
                        user,
                        grant: req.grant.as_deref(),
                    };
                    let (resp, _) = self
                        .deliver(auth, req.method, &req.url, req.headers, body)
                        .await
                        .map_err(|e| e.to_string())?;
                    let (mut parts, body) = resp.into_parts();
                    crate::headers::from_upstream(&mut parts.headers);
                    let headers = crate::plugins::wit_headers(&parts.headers);
                    let (body, rest) = UpstreamBody::stream(body)
                        .read_prefix(DISCOVERY_BODY_BYTES, idle)
                        .await;
                    if rest.is_some() {
                        return Err(format!(
                            "the response is larger than {DISCOVERY_BODY_BYTES} bytes"
                        ));
                    }
                    Ok(types::Response {
                        status: parts.status.as_u16(),
                        headers,
                        body: body.to_vec(),
                    })
                },
            )
            .await
            .map_err(|e| Error::plugin(&connector.id, &e))
    }
}
