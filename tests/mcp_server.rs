//! An MCP server built with rmcp (the Rust SDK), standing in for a remote MCP upstream:
//! streamable HTTP on loopback behind a credential check, with tools, a resource, a
//! resource template, a tool with an invalid name, a large result, a slow tool, per-user
//! tokens checked
//! by introspection at a real authorization server, and a tool list that tests can change
//! (announced with `notifications/tools/list_changed`). It can be stopped and started
//! again on the same port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    InitializeRequestParams, InitializeResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, ResourceTemplate, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer};
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde_json::{Map, Value, json};

/// What the server demands of each request.
#[derive(Clone, Debug)]
pub enum Expect {
    /// `(header name, exact value)`, e.g. `("authorization", "Bearer t")`.
    Header(String, String),
    /// A bearer token that the authorization server's introspection endpoint (RFC 7662,
    /// `url`, asked with the client's basic credentials) says is active, as a resource
    /// server checks per-user tokens. `echo` then names the token's subject.
    Introspect {
        url: String,
        client: String,
        secret: String,
    },
    Nothing,
}

/// The subject of the request's token, for `echo` to name.
#[derive(Clone, Debug)]
struct Subject(String);

#[derive(Default)]
struct Shared {
    extra_tools: Mutex<Vec<String>>,
    peers: Mutex<Vec<Peer<RoleServer>>>,
    /// `tools/call` requests received, by tool name.
    calls: Mutex<Vec<String>>,
    /// The client address (TCP connection) each `tools/call` came on.
    call_peers: Mutex<Vec<Option<SocketAddr>>>,
    requests: AtomicUsize,
    /// `initialize` requests answered: one per session opened with the server.
    initializes: AtomicUsize,
    /// `tools/list` requests answered.
    tool_lists: AtomicUsize,
    rejected: AtomicUsize,
    expiry: crate::expiry::TokenExpiry,
}

#[derive(Clone)]
struct Handler {
    shared: Arc<Shared>,
}

fn schema(props: Value) -> Arc<Map<String, Value>> {
    let Value::Object(m) = json!({"type": "object", "properties": props}) else {
        unreachable!()
    };
    Arc::new(m)
}

fn text(s: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(s)])
}

impl rmcp::ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .build(),
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        self.shared.initializes.fetch_add(1, Ordering::SeqCst);
        cx.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn on_initialized(&self, cx: NotificationContext<RoleServer>) {
        self.shared
            .peers
            .lock()
            .expect("lock")
            .push(cx.peer.clone());
    }

    async fn list_tools(
        &self,
        _p: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.shared.tool_lists.fetch_add(1, Ordering::SeqCst);
        let mut tools = vec![
            Tool::new(
                "echo",
                "Echoes its text",
                schema(json!({"text": {"type": "string"}})),
            ),
            Tool::new(
                "big",
                "Returns `bytes` bytes of text",
                schema(json!({"bytes": {"type": "integer"}})),
            ),
            Tool::new("secret", "Only for the trusted", schema(json!({}))),
            Tool::new("log", "Logs a message about the call", schema(json!({}))),
            Tool::new(
                "sleep",
                "Answers after `ms` milliseconds",
                schema(json!({"ms": {"type": "integer"}})),
            ),
            Tool::new(
                "add_tool",
                "Adds a tool named `name`",
                schema(json!({"name": {"type": "string"}})),
            ),
            Tool::new("has space", "An invalid MCP tool name", schema(json!({}))),
        ];
        for name in self.shared.extra_tools.lock().expect("lock").iter() {
            tools.push(Tool::new(
                name.clone(),
                "Added at run time",
                schema(json!({})),
            ));
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        req: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = req.name.to_string();
        self.shared.calls.lock().expect("lock").push(name.clone());
        let peer = cx
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>())
            .map(|c| c.0);
        self.shared.call_peers.lock().expect("lock").push(peer);
        let arg = |k: &str| req.arguments.as_ref().and_then(|a| a.get(k)).cloned();
        let subject = cx
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<Subject>())
            .map(|s| format!(" (for {})", s.0))
            .unwrap_or_default();
        let result = match name.as_str() {
            "echo" => text(format!(
                "echo: {}{subject}",
                arg("text")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )),
            "big" => {
                let n = arg("bytes").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
                text("x".repeat(n))
            }
            "secret" => text("the secret tool ran"),
            // A log message about this call, naming whose call it is.
            #[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
            "log" => {
                let note = rmcp::model::LoggingMessageNotificationParam::new(
                    rmcp::model::LoggingLevel::Info,
                    json!(format!("logged{subject}")),
                );
                let _ = cx.peer.notify_logging_message(note).await;
                text("logged")
            }
            "sleep" => {
                let ms = arg("ms").and_then(|v| v.as_u64()).unwrap_or(0);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                text("slept")
            }
            "add_tool" => {
                let new = arg("name")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "added".into());
                self.shared.extra_tools.lock().expect("lock").push(new);
                let peers: Vec<_> = self.shared.peers.lock().expect("lock").clone();
                for p in peers {
                    let _ = p.notify_tool_list_changed().await;
                }
                text("added")
            }
            other
                if self
                    .shared
                    .extra_tools
                    .lock()
                    .expect("lock")
                    .iter()
                    .any(|t| t == other) =>
            {
                text(format!("{other} ran"))
            }
            other => {
                return Err(ErrorData::invalid_params(format!("no tool {other}"), None));
            }
        };
        Ok(CallToolResponse::Complete(result))
    }

    async fn list_resources(
        &self,
        _p: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new("mem://notes/readme", "readme"),
            Resource::new("mem://private/keys", "keys"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _p: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("mem://notes/{id}", "note"),
        ]))
    }

    async fn read_resource(
        &self,
        req: ReadResourceRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if !req.uri.starts_with("mem://") {
            return Err(ErrorData::resource_not_found(
                format!("no {}", req.uri),
                None,
            ));
        }
        Ok(ReadResourceResponse::Complete(ReadResourceResult::new(
            vec![ResourceContents::text(
                format!("contents of {}", req.uri),
                req.uri.clone(),
            )],
        )))
    }
}

async fn check(
    State((expect, shared)): State<(Expect, Arc<Shared>)>,
    mut req: Request,
    next: Next,
) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let header = |req: &Request, name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if !shared
        .expiry
        .admit(header(&req, "authorization").as_deref())
    {
        return crate::expiry::TokenExpiry::refusal();
    }
    let accepted = match &expect {
        Expect::Nothing => true,
        Expect::Header(name, value) => header(&req, name).as_deref() == Some(value.as_str()),
        Expect::Introspect {
            url,
            client,
            secret,
        } => {
            let token = header(&req, "authorization")
                .and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned));
            let subject = match token {
                Some(token) => introspect(url, client, secret, &token).await,
                None => None,
            };
            let known = subject.is_some();
            if let Some(sub) = subject {
                req.extensions_mut().insert(Subject(sub));
            }
            known
        }
    };
    if !accepted {
        shared.rejected.fetch_add(1, Ordering::SeqCst);
        return (
            http::StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer error=\"invalid_token\"")],
            "bad credential",
        )
            .into_response();
    }
    next.run(req).await
}

/// The subject of an active token, or `None`.
async fn introspect(url: &str, client: &str, secret: &str, token: &str) -> Option<String> {
    match crate::oidc::introspect(url, client, secret, token).await {
        Ok((true, sub)) => sub,
        _ => None,
    }
}

/// The running test server.
pub struct McpServer {
    pub addr: SocketAddr,
    expect: Expect,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
    cancel: tokio_util::sync::CancellationToken,
    /// Names no session at `initialize` and keeps none: each request stands alone.
    stateless: bool,
}

impl McpServer {
    pub async fn start(expect: Expect) -> McpServer {
        Self::start_as(expect, false).await
    }

    /// A server that names no session (`Mcp-Session-Id`) at `initialize` and serves every
    /// request on its own, as a stateless deployment behind a load balancer does.
    pub async fn start_stateless(expect: Expect) -> McpServer {
        Self::start_as(expect, true).await
    }

    async fn start_as(expect: Expect, stateless: bool) -> McpServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut s = McpServer {
            addr: listener.local_addr().expect("addr"),
            expect,
            shared: Arc::default(),
            task: None,
            cancel: tokio_util::sync::CancellationToken::new(),
            stateless,
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let cancel = tokio_util::sync::CancellationToken::new();
        self.cancel = cancel.clone();
        let shared = self.shared.clone();
        let svc = StreamableHttpService::new(
            move || {
                Ok(Handler {
                    shared: shared.clone(),
                })
            },
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default()
                .with_legacy_session_mode(!self.stateless)
                .with_cancellation_token(cancel.child_token()),
        );
        let app =
            axum::Router::new()
                .nest_service("/mcp", svc)
                .layer(middleware::from_fn_with_state(
                    (self.expect.clone(), self.shared.clone()),
                    check,
                ));
        self.task = Some(tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
        }));
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Stops answering: the port is closed and open connections end.
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Names of tools called so far, as the server received them.
    pub fn calls(&self) -> Vec<String> {
        self.shared.calls.lock().expect("lock").clone()
    }

    /// The client address (TCP connection) of each `tools/call` so far, in order.
    pub fn call_peers(&self) -> Vec<Option<SocketAddr>> {
        self.shared.call_peers.lock().expect("lock").clone()
    }

    /// Adds tool `name` (it answers "`name` ran") without telling anyone, as a server
    /// that does not send `list_changed`, or whose notice is still on its way.
    pub fn add_tool_unannounced(&self, name: &str) {
        self.shared
            .extra_tools
            .lock()
            .expect("lock")
            .push(name.to_owned());
    }

    /// How many `initialize` requests the server has answered: the sessions opened with it.
    pub fn initializes(&self) -> usize {
        self.shared.initializes.load(Ordering::SeqCst)
    }

    /// How many `tools/list` requests the server has answered.
    pub fn tool_lists(&self) -> usize {
        self.shared.tool_lists.load(Ordering::SeqCst)
    }

    /// The upstream's view of token expiry (see [`crate::expiry`]).
    pub fn expiry(&self) -> &crate::expiry::TokenExpiry {
        &self.shared.expiry
    }

    pub fn rejected(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
