//! Errors that cross the outbound pipeline. Like pingora's, each says where it came from
//! and whether sending the same request again is safe, so a front door can decide
//! (the MCP client retries on a new session, the proxy answers) without parsing text.

use http::StatusCode;

use crate::connections::ConnError;
use crate::credentials::CredentialError;
use crate::egress::EgressError;
use crate::error::ApiError;
use crate::plugins::CallError;

/// The pipeline stage that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The connector's own settings (no usable URL, provider not loaded).
    Connector,
    /// The provider plugin shaping, classifying or building the request.
    Plugin,
    /// Post-connect discovery (Atlassian's cloud id, say).
    Discovery,
    /// Getting the credential: a token request, the user's connection.
    Credential,
    /// Reaching the upstream.
    Egress,
}

/// An outbound call that failed, with the answer the caller gets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .api.message)]
pub struct Error {
    pub stage: Stage,
    /// Nothing reached the upstream (or it refused the connection), so the same request
    /// may be sent again without being acted on twice.
    pub replay_safe: bool,
    api: ApiError,
}

impl Error {
    fn new(stage: Stage, replay_safe: bool, api: ApiError) -> Self {
        Self {
            stage,
            replay_safe,
            api,
        }
    }

    /// A connector setting that makes the call impossible.
    pub fn connector(api: ApiError) -> Self {
        Self::new(Stage::Connector, true, api)
    }

    pub(super) fn discovery(api: ApiError) -> Self {
        Self::new(Stage::Discovery, true, api)
    }

    /// The stable error code (`needs_auth`, `upstream_timeout`, ...).
    pub fn code(&self) -> &'static str {
        self.api.code
    }

    pub(super) fn plugin(id: &str, e: &CallError) -> Self {
        let api = match e {
            CallError::Refused { .. } => ApiError::bad_request(format!("connector \"{id}\": {e}")),
            CallError::Busy { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "plugin_busy",
                format!("connector \"{id}\": {e}"),
            ),
            _ => ApiError::bad_gateway(
                "plugin_failed",
                format!("connector \"{id}\": {e}; the request was not sent"),
            ),
        };
        Self::new(Stage::Plugin, true, api)
    }

    pub(super) fn egress(id: &str, e: &EgressError) -> Self {
        let (replay_safe, api) = match e {
            EgressError::Refused { .. } => (
                true,
                ApiError::bad_gateway(
                    "egress_refused",
                    format!(
                        "connector \"{id}\": {e}. Upstreams on loopback, link-local and metadata addresses are blocked; \
                         point the connector at a routable address"
                    ),
                ),
            ),
            EgressError::Connect(_) => (
                true,
                ApiError::bad_gateway(
                    "upstream_unreachable",
                    format!(
                        "connector \"{id}\": {e}; check the connector's url and that the upstream is running"
                    ),
                ),
            ),
            EgressError::Timeout(_) => (
                false,
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!("connector \"{id}\": {e}; the upstream did not answer in time"),
                ),
            ),
            EgressError::Other { .. } => (
                false,
                ApiError::bad_gateway("upstream_error", format!("connector \"{id}\": {e}")),
            ),
        };
        Self::new(Stage::Egress, replay_safe, api)
    }

    pub(super) fn credential(e: &CredentialError) -> Self {
        let api = match e {
            CredentialError::PerUser(c) => connection_error(c),
            CredentialError::Token { .. } | CredentialError::Internal(_) => {
                ApiError::bad_gateway("credential_unavailable", e.to_string())
            }
        };
        Self::new(Stage::Credential, true, api)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        e.api
    }
}

/// The HTTP error for a per-user credential that cannot be used (also what the connect
/// endpoints answer).
pub fn connection_error(e: &ConnError) -> ApiError {
    let (status, code) = match e {
        ConnError::NeedsAuth { .. }
        | ConnError::Misconfigured { .. }
        | ConnError::NoSuchGrant { .. } => (StatusCode::UNAUTHORIZED, "needs_auth"),
        ConnError::RefreshFailed { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "token_refresh_failed")
        }
        ConnError::ProviderUnavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable")
        }
        ConnError::Setup { .. } => (StatusCode::BAD_GATEWAY, "connector_misconfigured"),
        ConnError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let err = ApiError::new(status, code, e.to_string());
    match e {
        ConnError::RefreshFailed { retry_secs, .. } => err.retry_after(*retry_secs),
        _ => err,
    }
}
