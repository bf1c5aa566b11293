//! The one outbound pipeline. Every call to an upstream, whoever starts it (the HTTP
//! proxy, an MCP upstream session over either transport, a plugin tool, a discovery
//! step), goes through the same stages, each a small function:
//!
//! ```text
//! Exchange ─► shape (provider plugin, paths only) ─► credential ─► egress
//!          ─► 401? credential rejected, resend once if the body can be replayed
//!          ─► classify (provider plugin) ─► retry once if the provider says so, or
//!             resend once if it says the (since renewed) credential was refused
//!          ─► response headers filtered, query keys scrubbed ─► Reply
//! ```
//!
//! Nothing else adds credentials, filters headers or talks to [`Egress`]: handlers
//! describe the request and relay the [`Reply`].
//!
//! # Layout
//!
//! - this file: [`Outbound`], the [`Exchange`] it sends and the [`Reply`] it returns.
//! - `discovery`: the plugin context and post-connect discovery, and the cache of its
//!   results (invalidated here and nowhere else).
//! - [`path`]: cleaning a path below a connector (traversal refused, grant form).
//! - `body`: [`UpstreamBody`], a response body with the bytes already read in front.
//! - `error`: [`Error`], which says which stage failed and whether a replay is safe.

mod body;
mod discovery;
mod error;
pub mod path;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

pub use body::UpstreamBody;
pub use error::{Error, Stage, connection_error};

use crate::connections::Connections;
use crate::connector::Connector;
use crate::credentials::Credentials;
use crate::egress::{Egress, InBody};
use crate::error::ApiError;
use crate::health::Health;
use crate::plugins::{Bounds, Plugin, Plugins, types, wit_method};
use discovery::Discoveries;
use types::{Classification, Hook};

/// Where a request goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A path below the connector's base URL (no leading slash, already cleaned with
    /// [`path::normalize_path`]) and query, as an agent or a plugin tool names it. The
    /// provider plugin, if any, shapes and classifies it.
    Path { path: String, query: Option<String> },
    /// An absolute URL the host chose itself (an MCP endpoint, a checked discovery step):
    /// sent as it is.
    Url(url::Url),
}

/// A request body.
#[derive(Debug)]
pub enum Payload {
    Empty,
    /// Held in memory: can be sent again after a 401 or a provider's "retry".
    Bytes(Bytes),
    /// Streamed from the caller: sent once.
    Stream(Body),
}

impl Payload {
    /// The same body again, if it can be replayed.
    fn replay(&self) -> Option<Payload> {
        match self {
            Self::Empty => Some(Self::Empty),
            Self::Bytes(b) => Some(Self::Bytes(b.clone())),
            Self::Stream(_) => None,
        }
    }

    fn into_body(self) -> Body {
        match self {
            Self::Empty => Body::empty(),
            Self::Bytes(b) => Body::from(b),
            Self::Stream(b) => b,
        }
    }
}

/// One outbound call.
#[derive(Debug)]
pub struct Exchange<'a> {
    pub connector: &'a Connector,
    /// Whose call this is: the identified caller's login, or `None` for the host's own
    /// work (a shared MCP connector's catalog). Per-user credentials need it.
    pub user: Option<&'a str>,
    pub method: Method,
    pub target: Target,
    /// Headers to send; a caller's have been through [`crate::headers::from_caller`].
    pub headers: HeaderMap,
    pub body: Payload,
}

/// The upstream's answer, its headers already filtered for the caller.
#[derive(Debug)]
pub struct Reply {
    pub response: http::Response<UpstreamBody>,
    /// What the provider plugin made of it (`Ok` without one).
    pub class: Classification,
}

/// Response header naming the plugin's classification (absent when `ok`).
pub const UPSTREAM_CLASS: HeaderName = HeaderName::from_static("portcullis-upstream-class");
/// Response header with the provider's error text for `failed` and `reauth`.
pub const UPSTREAM_ERROR: HeaderName = HeaderName::from_static("portcullis-upstream-error");

/// The pipeline and the narrow runtime it needs.
pub struct Outbound {
    egress: Egress,
    plugins: Arc<Plugins>,
    connections: Arc<Connections>,
    credentials: Credentials,
    discoveries: Discoveries,
    /// Where discovery results are reported.
    health: Arc<Health>,
    /// Where every upstream request is counted and timed.
    metrics: Arc<crate::telemetry::Metrics>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

/// A plugin and the context its hooks get for this call.
type Classifier = (Arc<Plugin>, Arc<crate::plugins::ConnectionContext>);

/// Whose credential a request carries: the connector's, for `user`, the token `grant`.
#[derive(Clone, Copy)]
pub(super) struct Auth<'a> {
    pub(super) connector: &'a Connector,
    pub(super) user: Option<&'a str>,
    pub(super) grant: Option<&'a str>,
}

impl Outbound {
    /// Builds the pipeline, and has discovery results forgotten whenever a connection
    /// starts or ends (a new user token can reach other accounts).
    pub fn new(
        egress: Egress,
        plugins: Arc<Plugins>,
        connections: Arc<Connections>,
        health: Arc<Health>,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            metrics,
            credentials: Credentials::new(egress.clone(), connections.clone()),
            egress,
            plugins,
            connections: connections.clone(),
            discoveries: Discoveries::default(),
            health,
        });
        let weak = Arc::downgrade(&this);
        let mut changes = connections.changes();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(this) = weak.upgrade() else { return };
                this.discoveries.clear();
            }
        });
        this
    }

    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    /// A new config is in force: discovery starts afresh.
    pub fn config_changed(&self) {
        self.discoveries.clear();
    }

    /// The connector's provider plugin: `None` for a Custom connector, an error when the
    /// provider it names is not loaded.
    pub fn plugin(&self, c: &Connector) -> Result<Option<Arc<Plugin>>, Error> {
        let Some(p) = &c.provider else {
            return Ok(None);
        };
        self.plugins.get(p).map(Some).ok_or_else(|| {
            Error::connector(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                format!(
                    "connector \"{}\" uses provider \"{p}\", which is not loaded from the registry; GET /api/registry lists what loaded and why entries failed",
                    c.id
                ),
            ))
        })
    }

    /// Sends one request through every stage. The stages' state lives on the heap: the
    /// pipeline is awaited inside deep MCP transport futures (the legacy HTTP+SSE
    /// fallback most of all), and held inline it would make each of them as large, which
    /// overflows a worker's stack in unoptimised builds.
    pub async fn send(&self, x: Exchange<'_>) -> Result<Reply, Error> {
        Box::pin(self.stages(x)).await
    }

    async fn stages(&self, x: Exchange<'_>) -> Result<Reply, Error> {
        let Exchange {
            connector: c,
            user,
            method,
            target,
            mut headers,
            body,
        } = x;
        let (url, grant, classifier) = match target {
            Target::Url(url) => (url, None, None),
            Target::Path { path, query } => {
                self.shape(c, user, &method, &path, query, &mut headers)
                    .await?
            }
        };
        // A provider's "retry" is honoured for requests that are safe to repeat.
        let retry = (classifier.is_some()
            && matches!(method, Method::GET | Method::HEAD | Method::OPTIONS))
        .then(|| body.replay().map(|b| (b, headers.clone())))
        .flatten();
        let auth = Auth {
            connector: c,
            user,
            grant: grant.as_deref(),
        };
        let (resp, sent) = self
            .deliver(auth, method.clone(), &url, headers, body)
            .await?;
        self.classify(auth, &method, &url, classifier, retry, resp, sent)
            .await
    }

    /// Shape stage: the plugin maps the path to a URL (and headers, and which token
    /// grant); without a shaping plugin the path is joined to the base URL. Returns the
    /// plugin and context when the response is to be classified.
    async fn shape(
        &self,
        c: &Connector,
        user: Option<&str>,
        method: &Method,
        path: &str,
        query: Option<String>,
        headers: &mut HeaderMap,
    ) -> Result<(url::Url, Option<String>, Option<Classifier>), Error> {
        let plugin = self.plugin(c)?;
        let base = base_url(c, plugin.as_deref())?;
        let Some(p) = plugin
            .as_ref()
            .filter(|p| p.has(Hook::ShapeRequest) || p.has(Hook::ClassifyResponse))
        else {
            return Ok((path::join(base, path, query.as_deref()), None, None));
        };
        let ctx = self.context(c, user, p, base).await?;
        if !p.has(Hook::ShapeRequest) {
            return Ok((
                path::join(base, path, query.as_deref()),
                None,
                Some((p.clone(), ctx)),
            ));
        }
        let req = crate::plugins::Outgoing {
            method: wit_method(method).unwrap_or(types::Method::Get),
            path,
            query,
            headers,
        };
        let bounds = Bounds {
            base,
            credential_header: c.credential.header_name(),
        };
        let shaped = self
            .plugins
            .shape(p, &ctx, req, bounds)
            .await
            .map_err(|e| Error::plugin(&c.id, &e))?;
        shaped.apply_headers(headers);
        Ok((shaped.url, shaped.grant, Some((p.clone(), ctx))))
    }

    /// Credential and egress stages, with the one rule for a rejected credential (a 403
    /// for want of scope tells the credential which scopes, for the user's next
    /// authorization): the credential is told (a cached token forgotten, a user token marked due), discovery
    /// results for the connector forgotten, and a replayable request sent once more if
    /// the credential is now a different one. A 401 means the upstream did not act on the
    /// request, so the resend is safe for any method. Returns the response and the
    /// `Authorization` value it answered.
    async fn deliver(
        &self,
        auth: Auth<'_>,
        method: Method,
        url: &url::Url,
        headers: HeaderMap,
        body: Payload,
    ) -> Result<(http::Response<InBody>, Option<HeaderValue>), Error> {
        let c = auth.connector;
        // Only a credential that can change is worth a second try.
        let again = c
            .credential
            .renewable()
            .then(|| body.replay().map(|b| (b, headers.clone())))
            .flatten();
        let (first, headers, sent) = self.authorize(auth, url, headers).await?;
        let resp = self
            .transmit(c, method.clone(), &first, headers, body)
            .await?;
        if resp.status() == StatusCode::FORBIDDEN {
            self.credentials
                .forbidden(&c.credential, auth.user, resp.headers());
        }
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok((resp, sent));
        }
        self.credentials
            .rejected(&c.credential, auth.user, sent.as_ref())
            .await;
        self.discoveries.forget(&c.id);
        let Some((body, headers)) = again else {
            return Ok((resp, sent));
        };
        let (url, headers, now) = self.authorize(auth, url, headers).await?;
        if now == sent {
            return Ok((resp, sent));
        }
        tracing::info!(connector = %c.id, "upstream answered 401; sending once more with the new credential");
        let resp = self.transmit(c, method, &url, headers, body).await?;
        Ok((resp, now))
    }

    /// Credential stage: the URL and headers with the credential on them, and the
    /// `Authorization` value set. The URL is copied only for a key in the query.
    async fn authorize<'u>(
        &self,
        auth: Auth<'_>,
        url: &'u url::Url,
        mut headers: HeaderMap,
    ) -> Result<(Cow<'u, url::Url>, HeaderMap, Option<HeaderValue>), Error> {
        let c = auth.connector;
        let mut url = Cow::Borrowed(url);
        let sent = self
            .credentials
            .apply(
                &c.id,
                &c.credential,
                auth.user,
                auth.grant,
                &mut headers,
                &mut url,
            )
            .await
            .map_err(|e| Error::credential(&e))?;
        Ok((url, headers, sent))
    }

    /// Egress stage.
    async fn transmit(
        &self,
        c: &Connector,
        method: Method,
        url: &url::Url,
        mut headers: HeaderMap,
        body: Payload,
    ) -> Result<http::Response<InBody>, Error> {
        let started = std::time::Instant::now();
        // With traces on, the upstream continues this request's trace.
        let span = crate::telemetry::otel::client_span(
            &c.id,
            &method,
            url.host_str().unwrap_or_default(),
            &mut headers,
        );
        let send = self.egress.send(method, url, headers, body.into_body());
        let sent = match &span {
            Some(span) => {
                use tracing::Instrument as _;
                send.instrument(span.clone()).await
            }
            None => send.await,
        };
        let status = sent.as_ref().ok().map(|r| r.status().as_u16());
        if let Some(span) = &span {
            crate::telemetry::otel::finish_client_span(span, status);
        }
        let elapsed = started.elapsed();
        self.metrics
            .observe_upstream(&c.meters, &c.id, status, elapsed);
        sent.map(|mut resp| {
            // For the request log line of the request this answer is relayed to.
            resp.extensions_mut()
                .insert(crate::telemetry::UpstreamTime(elapsed));
            resp
        })
        .map_err(|e| Error::egress(&c.id, &e))
    }

    /// Classify stage: the provider plugin reads the status, headers and the first bytes
    /// of the body; a transient failure of a repeatable request is retried once after the
    /// delay it names, a rejected token is reported like a 401, and the class is marked
    /// on the answer for the agent.
    #[allow(clippy::too_many_arguments)]
    async fn classify(
        &self,
        auth: Auth<'_>,
        method: &Method,
        url: &url::Url,
        classifier: Option<Classifier>,
        mut retry: Option<(Payload, HeaderMap)>,
        mut resp: http::Response<InBody>,
        mut sent: Option<HeaderValue>,
    ) -> Result<Reply, Error> {
        let c = auth.connector;
        let idle = self.egress.read_timeout();
        let Some((plugin, ctx)) = classifier.filter(|(p, _)| p.classifies(resp.status().as_u16()))
        else {
            let (parts, body) = resp.into_parts();
            return Ok(self.finish(c, parts, UpstreamBody::stream(body), Classification::Ok));
        };
        loop {
            let limit = plugin.defaults.classify_body_bytes as usize;
            let wanted = plugin.classifies(resp.status().as_u16());
            let (parts, body) = resp.into_parts();
            let body = UpstreamBody::stream(body);
            let (prefix, rest) = if wanted && limit > 0 && method != Method::HEAD {
                body.read_prefix(limit, idle).await
            } else {
                (Bytes::new(), Some(body))
            };
            let class = if wanted {
                self.plugins
                    .classify(
                        &plugin,
                        ctx.wit(),
                        parts.status.as_u16(),
                        &parts.headers,
                        &prefix[..prefix.len().min(limit)],
                    )
                    .await
                    .unwrap_or(Classification::Ok)
            } else {
                Classification::Ok
            };
            if let Classification::Retry(delay) = &class
                && let Some((body, headers)) = retry.take()
            {
                let wait = Duration::from_millis(u64::from(delay.unwrap_or(250)));
                tracing::info!(
                    connector = %c.id,
                    wait_ms = wait.as_millis() as u64,
                    "provider asked for a retry; retrying once"
                );
                tokio::time::sleep(wait).await;
                // Boxed, as the resend below: inline, this rare second delivery would
                // double the size of every request's pipeline future.
                (resp, sent) =
                    Box::pin(self.deliver(auth, method.clone(), url, headers, body)).await?;
                continue;
            }
            if let Classification::Reauth(_) = &class {
                self.credentials
                    .rejected(&c.credential, auth.user, sent.as_ref())
                    .await;
                self.discoveries.forget(&c.id);
                // The provider says the token was refused with another status (Figma's
                // 403 "Token expired"): like a 401 (resent by `deliver` already), a
                // request safe to repeat goes once more if the credential is now a
                // different one.
                if parts.status != StatusCode::UNAUTHORIZED
                    && let Some((body, headers)) = retry.take()
                    && let Some(again) =
                        Box::pin(self.resend_refused(auth, method, url, headers, body, &sent))
                            .await?
                {
                    (resp, sent) = again;
                    continue;
                }
            }
            let body = match rest {
                Some(rest) => rest.after(prefix),
                None => UpstreamBody::new(prefix, None),
            };
            return Ok(self.finish(c, parts, body, class));
        }
    }

    /// A request whose token the provider refused, sent once more if the credential is
    /// now a different one (renewed after the refusal); `None` when it is not.
    async fn resend_refused(
        &self,
        auth: Auth<'_>,
        method: &Method,
        url: &url::Url,
        headers: HeaderMap,
        body: Payload,
        sent: &Option<HeaderValue>,
    ) -> Result<Option<(http::Response<InBody>, Option<HeaderValue>)>, Error> {
        let c = auth.connector;
        if !c.credential.renewable() {
            return Ok(None);
        }
        let (url, headers, now) = self.authorize(auth, url, headers).await?;
        if now == *sent {
            return Ok(None);
        }
        tracing::info!(connector = %c.id, "provider refused the token; sending once more with the new credential");
        let resp = self
            .transmit(c, method.clone(), &url, headers, body)
            .await?;
        Ok(Some((resp, now)))
    }

    /// The answer as the caller may see it: the header policy applied, a query-string
    /// key scrubbed from anything that echoes it, the classification marked.
    fn finish(
        &self,
        c: &Connector,
        mut parts: http::response::Parts,
        body: UpstreamBody,
        class: Classification,
    ) -> Reply {
        crate::headers::from_upstream(&mut parts.headers);
        // The gateway answers in its own HTTP version (RFC 9110 §6.2), not the
        // upstream's: an HTTP/1.0 upstream's version would make the agent's keep-alive
        // connection an HTTP/1.0 one, closed after this answer.
        parts.version = http::Version::default();
        mark(&c.id, &class, &mut parts.headers);
        c.credential.scrub_response(&c.id, &mut parts.headers);
        Reply {
            response: http::Response::from_parts(parts, body),
            class,
        }
    }

    /// Runs a provider plugin's tool for `user`: the plugin builds the request
    /// (checked: a plain path below the connector, allowed headers, bounded body), which
    /// then takes the whole pipeline with the user's credential. The caller's tool grant
    /// was checked by the MCP layer.
    pub async fn tool_call(
        &self,
        c: &Connector,
        user: &str,
        plugin: &Arc<Plugin>,
        name: &str,
        arguments: &serde_json::Value,
    ) -> Result<Reply, Error> {
        let base = base_url(c, Some(plugin))?;
        let ctx = self.context_at(c, Some(user), plugin, base);
        let bounds = Bounds {
            base,
            credential_header: c.credential.header_name(),
        };
        let call = self
            .plugins
            .tool_call(plugin, ctx, name.to_owned(), arguments.to_string(), bounds)
            .await
            .map_err(|e| Error::plugin(&c.id, &e))?;
        let clean = path::normalize_path(call.path.trim_start_matches('/')).map_err(|e| {
            Error::plugin(
                &c.id,
                &crate::plugins::CallError::Invalid {
                    plugin: plugin.id().into(),
                    detail: format!("the tool request path is not usable: {}", e.message),
                },
            )
        })?;
        self.send(Exchange {
            connector: c,
            user: Some(user),
            method: call.method,
            target: Target::Path {
                path: clean.forward,
                query: call.query,
            },
            headers: call.headers,
            body: call
                .body
                .map_or(Payload::Empty, |b| Payload::Bytes(b.into())),
        })
        .await
    }
}

/// The connector's `url`, else its provider's default API URL.
fn base_url<'a>(c: &'a Connector, plugin: Option<&'a Plugin>) -> Result<&'a url::Url, Error> {
    match (&c.url, plugin) {
        (Some(u), _) => Ok(u),
        (None, Some(p)) => Ok(&p.api_url),
        (None, None) => Err(misconfigured(&c.id)),
    }
}

fn misconfigured(id: &str) -> Error {
    Error::connector(ApiError::bad_gateway(
        "connector_misconfigured",
        format!("connector \"{id}\" has no url; an admin must set connectors.servers.{id}.url"),
    ))
}

/// Marks a classified response for the agent: `Portcullis-Upstream-Class`, a
/// `Retry-After` when the provider gave a delay the upstream did not send as a header,
/// and the provider's error text for failures hidden in a success status.
fn mark(id: &str, class: &Classification, headers: &mut HeaderMap) {
    let (name, detail) = match class {
        Classification::Ok => return,
        Classification::Retry(_) => ("retry", None),
        Classification::RateLimited(secs) => {
            if let Some(s) = secs
                && !headers.contains_key(http::header::RETRY_AFTER)
            {
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from(*s));
            }
            ("rate-limited", None)
        }
        Classification::Reauth(why) => ("reauth", Some(why)),
        Classification::Failed(why) => ("failed", Some(why)),
    };
    headers.insert(UPSTREAM_CLASS, HeaderValue::from_static(name));
    if let Some(why) = detail {
        let clean: String = why
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(200)
            .collect();
        if let Ok(v) = HeaderValue::try_from(clean) {
            headers.insert(UPSTREAM_ERROR, v);
        }
        tracing::info!(connector = id, class = name, "upstream reported: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request's pipeline future is moved whole into its box ([`Outbound::send`]),
    /// so what only some requests do (a plugin call, a discovery, a provider's retry) is
    /// boxed where it starts, and the common path's future stays small.
    #[test]
    fn the_pipeline_future_stays_small() {
        fn size<F: Future>(_: impl Fn(&'static Outbound, Exchange<'static>) -> F) -> usize {
            size_of::<F>()
        }
        // About 2.8 KB in a debug build; 5.5 KB with those inline.
        let stages = size(Outbound::stages);
        assert!(stages <= 4096, "{stages} bytes");
    }
}
