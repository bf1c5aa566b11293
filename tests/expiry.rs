//! An upstream's view of token expiry, shared by the test upstreams: it remembers every
//! bearer token it has seen, and [`TokenExpiry::expire_seen`] makes it refuse all of
//! them from then on (401 with `error="invalid_token"`), as a resource server does
//! when a token expires before the client expected. New tokens are accepted.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub struct TokenExpiry {
    seen: Mutex<HashSet<String>>,
    expired: Mutex<HashSet<String>>,
    rejected: AtomicUsize,
}

impl TokenExpiry {
    /// Records the request's bearer token; `false` if that token has expired (the
    /// request must then be answered with [`TokenExpiry::refusal`]).
    pub fn admit(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            return true;
        };
        if self
            .expired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(token)
        {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_owned());
        true
    }

    /// Every token seen so far has expired.
    pub fn expire_seen(&self) {
        let seen: Vec<String> = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        self.expired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(seen);
    }

    /// Requests refused for an expired token.
    pub fn rejected(&self) -> usize {
        self.rejected.load(Ordering::SeqCst)
    }

    /// The answer to a request with an expired token.
    pub fn refusal() -> axum::response::Response {
        use axum::response::IntoResponse as _;
        (
            axum::http::StatusCode::UNAUTHORIZED,
            [(
                "www-authenticate",
                "Bearer error=\"invalid_token\", error_description=\"The access token expired\"",
            )],
            "token expired",
        )
            .into_response()
    }
}
