//! MCP sessions that move between replicas sharing a PostgreSQL vault.
//!
//! A session's `initialize` parameters (rmcp's [`SessionState`]) and its owner (the
//! caller who opened it and the endpoint it was opened on) are sealed into the vault
//! ([`Table::McpSessions`]). A replica that gets a request in a session it never saw
//! checks the stored owner first ([`Shared::owner`]); rmcp then replays the handshake
//! from the stored parameters, so the client goes on without re-initializing. A session
//! ended on one replica (DELETE) is closed on the others through the vault's change feed.
//!
//! One host (redb) keeps sessions in memory only: there is nowhere else to move to.

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::{SessionState, SessionStore};

use super::Scope;
use crate::vault::{Table, Vault, VaultError};

/// How long a stored session may move between replicas after it was opened or last
/// moved; older records are purged and the client is told to start a new session (404).
pub const MOVABLE_FOR_SECS: u64 = 24 * 3600;

/// Who opened a session, on which endpoint, and when it was last placed on a replica.
#[derive(serde::Serialize, serde::Deserialize)]
struct Owner {
    login: String,
    /// `None`: `/v1/mcp`; `Some(id)`: `/v1/mcp/<id>`.
    scope: Option<String>,
    at: u64,
}

fn owner_key(id: &str) -> String {
    format!("{id}\nowner")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The vault-backed session store, for a vault other replicas share.
#[derive(Clone)]
pub struct Shared {
    vault: Arc<Vault>,
}

impl Shared {
    /// `Some` when `vault` is shared by replicas (it has a change feed).
    pub fn new(vault: &Arc<Vault>) -> Option<Self> {
        vault.changes().map(|_| Self {
            vault: vault.clone(),
        })
    }

    /// Records who opened session `id` on which endpoint.
    pub async fn set_owner(&self, id: &str, login: &str, scope: &Scope) {
        let owner = Owner {
            login: login.to_owned(),
            scope: match scope {
                Scope::All => None,
                Scope::One(c) => Some(c.to_string()),
            },
            at: now(),
        };
        let Ok(bytes) = serde_json::to_vec(&owner) else {
            return;
        };
        let (vault, key) = (self.vault.clone(), owner_key(id));
        let stored =
            tokio::task::spawn_blocking(move || vault.put(Table::McpSessions, &key, &bytes)).await;
        if !matches!(stored, Ok(Ok(()))) {
            tracing::warn!("could not store an MCP session's owner; it stays on this replica");
        }
    }

    /// Who opened session `id`, as stored by whichever replica it began on; `None` for
    /// a session no replica knows (or one too old to move). An error when the vault does
    /// not answer: the caller must not take that for "nobody", which would skip the
    /// owner check.
    pub async fn owner(&self, id: &str) -> Result<Option<(String, Scope)>, VaultError> {
        let (vault, key) = (self.vault.clone(), owner_key(id));
        let bytes = tokio::task::spawn_blocking(move || vault.get(Table::McpSessions, &key))
            .await
            .map_err(|e| VaultError::Store(format!("the session lookup stopped: {e}")))??;
        let Some(owner) = bytes.and_then(|b| serde_json::from_slice::<Owner>(&b).ok()) else {
            return Ok(None);
        };
        if now().saturating_sub(owner.at) > MOVABLE_FOR_SECS {
            return Ok(None);
        }
        let scope = match owner.scope {
            None => Scope::All,
            Some(c) => Scope::One(c.into()),
        };
        Ok(Some((owner.login, scope)))
    }

    /// Deletes session records older than [`MOVABLE_FOR_SECS`] (a replica that crashed
    /// never deleted its sessions). Blocking: run off the runtime.
    pub fn purge(&self) {
        let Ok(keys) = self.vault.keys(Table::McpSessions) else {
            return;
        };
        for key in keys.iter().filter(|k| k.ends_with("\nowner")) {
            let old = match self.vault.get(Table::McpSessions, key) {
                Ok(Some(b)) => serde_json::from_slice::<Owner>(&b)
                    .map_or(true, |o| now().saturating_sub(o.at) > MOVABLE_FOR_SECS),
                Ok(None) => false,
                Err(_) => true,
            };
            if old && let Some(id) = key.strip_suffix("\nowner") {
                let _ = self.vault.delete(Table::McpSessions, key);
                let _ = self.vault.delete(Table::McpSessions, id);
            }
        }
    }
}

type StoreError = rmcp::transport::streamable_http_server::session::SessionStoreError;

#[async_trait::async_trait]
impl SessionStore for Shared {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, StoreError> {
        // Only a session whose owner is known (and so was checked) is restored.
        if !matches!(self.owner(session_id).await, Ok(Some(_))) {
            return Ok(None);
        }
        let (vault, key) = (self.vault.clone(), session_id.to_owned());
        let bytes =
            tokio::task::spawn_blocking(move || vault.get(Table::McpSessions, &key)).await??;
        Ok(match bytes {
            Some(b) => Some(serde_json::from_slice(&b)?),
            None => None,
        })
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state)?;
        let (vault, key) = (self.vault.clone(), session_id.to_owned());
        tokio::task::spawn_blocking(move || vault.put(Table::McpSessions, &key, &bytes)).await??;
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), StoreError> {
        let (vault, id) = (self.vault.clone(), session_id.to_owned());
        tokio::task::spawn_blocking(move || {
            vault.delete(Table::McpSessions, &owner_key(&id))?;
            vault.delete(Table::McpSessions, &id)
        })
        .await??;
        Ok(())
    }
}
