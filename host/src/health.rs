//! Connector health as the host last saw it, so that "Ready" does not hide a dead
//! upstream: whether an MCP server answered its last catalog request (and with how many
//! tools), and what a provider's post-connect discovery said last.
//!
//! The stages that talk to upstreams write here (the MCP hub, discovery in the outbound
//! pipeline); `GET /api/connectors` reads it. Entries are per connector and, for per-user
//! connectors, per user: each viewer sees their own.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Longest error text kept: enough to say what failed, not a copy of an upstream page.
const MAX_ERROR_CHARS: usize = 300;

/// What was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// An MCP server's catalog (`tools/list` and friends).
    McpCatalog,
    /// A provider plugin's post-connect discovery.
    Discovery,
}

/// One check's last result.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Probe {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tools listed, for an MCP catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<usize>,
    /// Unix seconds.
    pub checked_at: u64,
}

/// Connector, user (for a per-user connector), check.
type Key = (String, Option<String>, Check);

/// Every connector's last results.
#[derive(Debug, Default)]
pub struct Health {
    probes: RwLock<HashMap<Key, Probe>>,
}

impl Health {
    /// Records a check of `connector` (as `user` sees it, for a per-user connector).
    /// `Ok` carries the tool count where there is one.
    pub fn record(
        &self,
        connector: &str,
        user: Option<&str>,
        check: Check,
        result: Result<Option<usize>, &str>,
    ) {
        let checked_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let probe = match result {
            Ok(tools) => Probe {
                ok: true,
                error: None,
                tools,
                checked_at,
            },
            Err(e) => Probe {
                ok: false,
                error: Some(e.chars().take(MAX_ERROR_CHARS).collect()),
                tools: None,
                checked_at,
            },
        };
        self.probes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((connector.to_owned(), user.map(Into::into), check), probe);
    }

    /// The last result of `check` on `connector` as `user` sees it.
    pub fn get(&self, connector: &str, user: Option<&str>, check: Check) -> Option<Probe> {
        self.probes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(connector.to_owned(), user.map(Into::into), check))
            .cloned()
    }

    /// Forgets connectors that are no longer configured.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.probes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, _, _), _| live(id));
    }

    /// Forgets one user's results on a connector (their connection ended).
    pub fn forget_user(&self, connector: &str, user: &str) {
        self.probes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, u, _), _| !(id == connector && u.as_deref() == Some(user)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_per_connector_user_and_check_and_errors_are_capped() {
        let h = Health::default();
        h.record("mcp", None, Check::McpCatalog, Ok(Some(3)));
        h.record(
            "mcp",
            Some("alice"),
            Check::McpCatalog,
            Err(&"x".repeat(1000)),
        );
        let shared = h.get("mcp", None, Check::McpCatalog).expect("shared");
        assert!(shared.ok);
        assert_eq!(shared.tools, Some(3));
        let alice = h
            .get("mcp", Some("alice"), Check::McpCatalog)
            .expect("alice");
        assert!(!alice.ok);
        assert_eq!(alice.error.map(|e| e.len()), Some(MAX_ERROR_CHARS));
        assert!(h.get("mcp", None, Check::Discovery).is_none());
        h.forget_user("mcp", "alice");
        assert!(h.get("mcp", Some("alice"), Check::McpCatalog).is_none());
        h.retain(|id| id != "mcp");
        assert!(h.get("mcp", None, Check::McpCatalog).is_none());
    }
}
