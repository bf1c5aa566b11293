//! Upstream MCP sessions: rmcp's client over [`UpstreamHttp`]. Streamable HTTP first;
//! a server that refuses it with a 4xx gets [`LegacySse`], the HTTP+SSE transport of
//! MCP 2024-11-05.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use rmcp::ServiceExt as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, Implementation,
    ReadResourceRequestParams, ReadResourceResponse, Resource, ResourceTemplate, Tool,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

use super::legacy::LegacySse;
use super::transport::{MAX_MESSAGE_BYTES, UpstreamError, UpstreamHttp, other_transport};

/// Receives the upstream's notifications for one session.
#[derive(Clone)]
pub struct Listener {
    /// Called when the upstream says its tools, resources or templates changed.
    pub on_change: Arc<dyn Fn() + Send + Sync>,
}

impl rmcp::ClientHandler for Listener {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("portcullis", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        (self.on_change)();
    }

    async fn on_resource_list_changed(&self, _cx: NotificationContext<RoleClient>) {
        (self.on_change)();
    }
}

/// How a session reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Streamable HTTP (MCP 2025-03-26 and later): the one tried first.
    Streamable,
    /// HTTP+SSE (MCP 2024-11-05): for servers that refuse a streamable `initialize`.
    LegacySse,
}

/// One live upstream MCP session.
pub struct Session {
    service: RunningService<RoleClient, Listener>,
    flavor: Flavor,
}

/// A connector's catalog as its upstream lists it (names not yet prefixed).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Listing {
    pub tools: Vec<Tool>,
    pub resources: Vec<Resource>,
    pub templates: Vec<ResourceTemplate>,
}

impl Session {
    /// Opens a session (the `initialize` handshake), first over `preferred` (the flavour
    /// that worked last time, else streamable HTTP). A server that answers it with a
    /// 4xx other than an authorization failure is tried once with the other flavour,
    /// as the MCP specification's backwards-compatibility section describes.
    pub async fn open(
        http: UpstreamHttp,
        url: &url::Url,
        listener: Listener,
        preferred: Flavor,
    ) -> anyhow::Result<Self> {
        let (first, wrong_flavor) = Self::open_as(preferred, &http, url, listener.clone()).await;
        let Err(e) = first else { return first };
        let Some(status) = wrong_flavor else {
            return Err(e);
        };
        let other = match preferred {
            Flavor::Streamable => Flavor::LegacySse,
            Flavor::LegacySse => Flavor::Streamable,
        };
        tracing::info!(
            connector = %http.connector.id,
            "MCP server answered HTTP {status} to {preferred:?}; trying {other:?}"
        );
        Self::open_as(other, &http, url, listener)
            .await
            .0
            .map_err(|second| anyhow::anyhow!("{preferred:?}: {e:#}; {other:?}: {second:#}"))
    }

    /// One attempt; on failure, also the status that says the server may speak the
    /// other flavour.
    async fn open_as(
        flavor: Flavor,
        http: &UpstreamHttp,
        url: &url::Url,
        listener: Listener,
    ) -> (anyhow::Result<Self>, Option<u16>) {
        let init =
            |e: rmcp::service::ClientInitializeError| anyhow::anyhow!("{}", describe_init(&e));
        match flavor {
            Flavor::Streamable => {
                let refused = Arc::new(AtomicU16::new(0));
                let mut probe = http.clone();
                probe.init_refused = Some(refused.clone());
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .max_sse_event_size(MAX_MESSAGE_BYTES);
                let transport = StreamableHttpClientTransport::with_client(probe, config);
                match listener.serve(transport).await {
                    Ok(service) => (Ok(Self { service, flavor }), None),
                    Err(e) => {
                        let status = refused.load(Ordering::Relaxed);
                        (Err(init(e)), (status != 0).then_some(status))
                    }
                }
            }
            Flavor::LegacySse => {
                let transport = match LegacySse::connect(http.clone(), url).await {
                    Ok(t) => t,
                    Err(UpstreamError::Status(s)) if other_transport(s) => {
                        return (Err(UpstreamError::Status(s).into()), Some(s));
                    }
                    Err(e) => return (Err(e.into()), None),
                };
                match listener.serve(transport).await {
                    Ok(service) => (Ok(Self { service, flavor }), None),
                    Err(e) => (Err(init(e)), None),
                }
            }
        }
    }

    /// The flavour this session speaks.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Lists everything the upstream offers, following cursors. An upstream without
    /// resources (it did not announce the capability, or answers "method not found")
    /// simply has none.
    pub async fn list(&self) -> Result<Listing, ServiceError> {
        let caps = self
            .service
            .peer_info()
            .map(|i| i.capabilities.clone())
            .unwrap_or_default();
        let tools = if caps.tools.is_some() {
            self.service.list_all_tools().await?
        } else {
            Vec::new()
        };
        let (resources, templates) = if caps.resources.is_some() {
            (
                optional(self.service.list_all_resources().await)?,
                optional(self.service.list_all_resource_templates().await)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Listing {
            tools,
            resources,
            templates,
        })
    }

    pub async fn call_tool(
        &self,
        params: CallToolRequestParams,
    ) -> Result<CallToolResponse, ServiceError> {
        self.service.call_tool_once(params).await
    }

    pub async fn read_resource(
        &self,
        params: ReadResourceRequestParams,
    ) -> Result<ReadResourceResponse, ServiceError> {
        self.service.read_resource_once(params).await
    }

    /// Whether the session's connection is gone (the next call needs a new session).
    pub fn is_closed(&self) -> bool {
        self.service.is_transport_closed()
    }

    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

fn optional<T>(r: Result<Vec<T>, ServiceError>) -> Result<Vec<T>, ServiceError> {
    match r {
        Err(ServiceError::McpError(e)) if e.code == rmcp::model::ErrorCode::METHOD_NOT_FOUND => {
            Ok(Vec::new())
        }
        other => other,
    }
}

/// Whether a failed request may be sent again on a new session: the connection broke
/// rather than the upstream answering. Over HTTP+SSE the server acknowledges a message
/// before it answers on the event stream, so a stream that closes while a request waits
/// may have lost the answer to a call that ran: only a failed send is repeated there.
pub fn worth_retrying(e: &ServiceError, flavor: Flavor) -> bool {
    match e {
        ServiceError::TransportSend(_) => true,
        ServiceError::TransportClosed => flavor == Flavor::Streamable,
        _ => false,
    }
}

fn describe_init(e: &rmcp::service::ClientInitializeError) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
