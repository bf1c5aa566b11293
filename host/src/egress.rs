//! The one outbound HTTP client. Every upstream call (proxy, token endpoints, and later
//! MCP) goes through [`Egress`], so the SSRF rules live here and nowhere else:
//!
//! - every address a name resolves to is checked *after* DNS resolution, on every dial
//!   (a rebinding name cannot slip a loopback address past a load-time check);
//! - IP-literal hosts, which skip the resolver, are checked before the request is sent;
//! - redirects are never followed (a redirect would carry injected credentials, or a
//!   client secret, to wherever the upstream points);
//! - system proxy variables are ignored, so `HTTP_PROXY` cannot reroute credentials.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;

/// The config's `egress` section (its own type here, so the client depends on nothing
/// above it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields, rename = "EgressConfig")]
pub struct Settings {
    /// Dev/test only: permit upstreams on loopback addresses. Warned at load.
    pub allow_loopback: bool,
    pub connect_timeout_secs: u64,
    /// Longest silence while reading an upstream response before it is abandoned.
    pub read_timeout_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            allow_loopback: false,
            connect_timeout_secs: 10,
            read_timeout_secs: 300,
        }
    }
}

/// Why an outbound request failed, in terms a gateway reports to its caller.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The destination address is not one Portcullis may dial.
    #[error("refused to connect to {host}: it resolves to {reason}")]
    Refused { host: String, reason: String },
    #[error("could not connect to {0}")]
    Connect(String),
    #[error("timed out talking to {0}")]
    Timeout(String),
    #[error("upstream request to {host} failed: {detail}")]
    Other { host: String, detail: String },
}

/// Our resolver's refusal, carried through the client's error chain and found again by
/// [`EgressError::from_client`].
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {reason}")]
struct Refusal {
    host: String,
    reason: String,
}

/// Why `ip` must not be dialled, or `None` if it may be.
///
/// Refused: loopback (unless the dev switch allows it), link-local (which includes the
/// cloud metadata address 169.254.169.254), unspecified, multicast and broadcast, and the
/// well-known metadata addresses that sit inside otherwise-allowed ranges. Allowed:
/// public addresses, RFC 1918, ULA (fc00::/7) and the tailnet's 100.64.0.0/10.
pub fn refusal_reason(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4, allow_loopback),
        IpAddr::V6(v6) => {
            // RFC 8215's local-use prefix may embed the IPv4 address at any of RFC 6052's
            // positions (/48 to /96), so which address it reaches cannot be told here.
            if v6.segments()[..3] == [0x64, 0xff9b, 1] {
                return Some(
                    "a local-use NAT64 address (64:ff9b:1::/48), which may stand for any IPv4 address",
                );
            }
            if let Some(v4) = embedded_v4(v6) {
                return v4_reason(v4, allow_loopback);
            }
            if v6.is_loopback() {
                return (!allow_loopback).then_some("a loopback address");
            }
            if v6.is_unspecified() {
                return Some("the unspecified address");
            }
            if v6.is_multicast() {
                return Some("a multicast address");
            }
            if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                return Some("a link-local address");
            }
            // AWS's IPv6 instance metadata endpoint lives inside the ULA range.
            if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                return Some("a cloud metadata address");
            }
            None
        }
    }
}

/// The IPv4 address an IPv6 address stands for, where the kernel or a translator would
/// route it there: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`,
/// RFC 2765), IPv4-compatible (`::a.b.c.d`, but not `::` or `::1`), NAT64 (`64:ff9b::/96`)
/// and 6to4 (`2002:AABB:CCDD::/48`). The local-use NAT64 prefix is refused whole instead
/// ([`refusal_reason`]).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = v6.segments();
    let low = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    if seg[..6] == [0; 6] && !(seg[6] == 0 && seg[7] <= 1) {
        return Some(low);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(low);
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ));
    }
    None
}

fn v4_reason(ip: Ipv4Addr, allow_loopback: bool) -> Option<&'static str> {
    if ip.is_loopback() {
        return (!allow_loopback).then_some("a loopback address");
    }
    if ip.is_link_local() {
        return Some(if ip == Ipv4Addr::new(169, 254, 169, 254) {
            "the cloud metadata address"
        } else {
            "a link-local address"
        });
    }
    if ip.octets()[0] == 0 {
        return Some("an unspecified (0.0.0.0/8) address");
    }
    if ip.is_broadcast() || ip.is_multicast() {
        return Some("a broadcast or multicast address");
    }
    // Alibaba Cloud's metadata service sits inside 100.64.0.0/10, which tailnets use.
    if ip == Ipv4Addr::new(100, 100, 100, 200) {
        return Some("a cloud metadata address");
    }
    None
}

/// For load-time warnings: why `url` will be refused, if that can be known without DNS
/// (an IP literal or `localhost`).
pub fn unsafe_url_reason(url: &url::Url, allow_loopback: bool) -> Option<String> {
    match url.host()? {
        url::Host::Ipv4(ip) => refusal_reason(IpAddr::V4(ip), allow_loopback).map(str::to_owned),
        url::Host::Ipv6(ip) => refusal_reason(IpAddr::V6(ip), allow_loopback).map(str::to_owned),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            let local = d == "localhost" || d.ends_with(".localhost");
            (local && !allow_loopback).then(|| "a loopback address (localhost)".to_owned())
        }
    }
}

/// Checks every resolved address; refuses the whole name if any one is unsafe, since a
/// name that mixes public and internal addresses is a rebinding attempt, not a choice.
#[derive(Clone)]
struct SafeResolver {
    allow_loopback: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for SafeResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                if let Some(reason) = refusal_reason(a.ip(), allow_loopback) {
                    return Err(Box::new(Refusal {
                        host: host.clone(),
                        reason: reason.into(),
                    }) as BoxError);
                }
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Bodies sent upstream: the caller's streamed body, or a small buffered one.
pub type OutBody = axum::body::Body;
/// Bodies received from upstream, streamed.
pub type InBody = hyper::body::Incoming;

type Connector = hyper_rustls::HttpsConnector<HttpConnector<SafeResolver>>;

/// The shared outbound client (hyper over a safe resolver and rustls). Cheap to clone.
///
/// A reload that changes the settings swaps in a new client: its connection pool starts
/// empty, so no connection opened under the old rules (a host name that resolved to
/// loopback while that was allowed, say) is reused under the new ones. Requests in
/// flight finish on the client they started with.
#[derive(Clone)]
pub struct Egress {
    current: Arc<arc_swap::ArcSwap<Current>>,
}

/// The clients for one set of settings, and the settings.
struct Current {
    /// One client per connection thread, and one (the first) for every other thread:
    /// a pooled connection is served by a task on the thread that opened it, so a
    /// request that takes a connection of its own thread's pool makes no hop between
    /// threads ([`crate::threads`]). They share the connector: resolver, TLS settings.
    clients: Vec<Client<Connector, OutBody>>,
    settings: Settings,
    /// Longest wait for response headers, and longest silence within a response body.
    read_timeout: Duration,
}

impl Egress {
    pub fn new(cfg: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            current: Arc::new(arc_swap::ArcSwap::from_pointee(Self::client(cfg)?)),
        })
    }

    fn client(cfg: &Settings) -> anyhow::Result<Current> {
        // Built with ring only; install it as the process default once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = HttpConnector::new_with_resolver(SafeResolver {
            allow_loopback: cfg.allow_loopback,
        });
        http.enforce_http(false);
        http.set_nodelay(true);
        // Long-lived streams (an MCP server's event stream) must notice a peer or a NAT
        // that silently dropped them; idle pooled connections are checked the same way.
        http.set_keepalive(Some(Duration::from_secs(30)));
        http.set_connect_timeout(Some(Duration::from_secs(cfg.connect_timeout_secs.max(1))));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| anyhow::anyhow!("cannot set up TLS certificate verification: {e}"))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let clients = (0..=crate::threads::per_core_count())
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(256)
                    .timer(hyper_util::rt::TokioTimer::new())
                    .build(https.clone())
            })
            .collect();
        Ok(Current {
            clients,
            settings: cfg.clone(),
            read_timeout: Duration::from_secs(cfg.read_timeout_secs.max(1)),
        })
    }

    /// Applies a reloaded config's `egress` section: a new client, with an empty pool,
    /// when anything changed.
    pub fn reconfigure(&self, cfg: &Settings) {
        if self.current.load().settings == *cfg {
            return;
        }
        match Self::client(cfg) {
            Ok(c) => self.current.store(Arc::new(c)),
            // Only TLS setup can fail, and it worked at start: keep serving, say so.
            Err(e) => tracing::error!(
                "the egress client could not be rebuilt, the old settings stay: {e:#}"
            ),
        }
    }

    /// The longest silence tolerated inside a response body.
    pub fn read_timeout(&self) -> Duration {
        self.current.load().read_timeout
    }

    /// Checks the parts of `url` that the resolver cannot see (scheme, IP literals),
    /// under the `settings` the request is sent with (loaded once by [`Egress::send`]).
    fn check_url(url: &url::Url, settings: &Settings) -> Result<(), EgressError> {
        // Copied only for a refusal: this runs for every request sent.
        let host = || url.host_str().unwrap_or_default().to_owned();
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::Refused {
                host: host(),
                reason: format!("a {}: URL", url.scheme()),
            });
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && let Some(reason) = refusal_reason(ip, settings.allow_loopback)
        {
            return Err(EgressError::Refused {
                host: host(),
                reason: reason.into(),
            });
        }
        Ok(())
    }

    /// Sends `method url` with `headers` and `body` after checking the URL. Redirect
    /// responses come back as they are; the response body streams.
    pub async fn send(
        &self,
        method: http::Method,
        url: &url::Url,
        headers: http::HeaderMap,
        body: OutBody,
    ) -> Result<http::Response<InBody>, EgressError> {
        let current = self.current.load_full();
        Self::check_url(url, &current.settings)?;
        let host = url.host_str().unwrap_or_default();
        let uri = http::Uri::try_from(url.as_str()).map_err(|e| EgressError::Other {
            host: host.to_owned(),
            detail: format!("invalid URL: {e}"),
        })?;
        let mut req = http::Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let client = crate::threads::current()
            .and_then(|i| current.clients.get(i + 1))
            .unwrap_or(&current.clients[0]);
        match tokio::time::timeout(current.read_timeout, client.request(req)).await {
            Err(_) => Err(EgressError::Timeout(host.to_owned())),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(EgressError::from_client(host, &e)),
        }
    }
}

impl EgressError {
    fn from_client(host: &str, e: &hyper_util::client::legacy::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(r) = err.downcast_ref::<Refusal>() {
                return Self::Refused {
                    host: r.host.clone(),
                    reason: r.reason.clone(),
                };
            }
            source = err.source();
        }
        let cause = root_cause(e);
        if e.is_connect() {
            if cause.contains("timed out") || cause.contains("timeout") {
                Self::Timeout(host.to_owned())
            } else {
                Self::Connect(format!("{host}: {cause}"))
            }
        } else {
            Self::Other {
                host: host.to_owned(),
                detail: cause,
            }
        }
    }
}

/// The innermost error message: the client's outer ones say little ("client error (Connect)").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str, allow_loopback: bool) -> bool {
        refusal_reason(s.parse().expect("ip"), allow_loopback).is_some()
    }

    #[test]
    fn refuses_loopback_link_local_and_metadata() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::7f00:1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "::ffff:0:7f00:1",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b:1::7f00:1",
            "64:ff9b:1:abcd::a9fe:a9fe",
            // RFC 6052's /48 layout: 169.254.169.254 in bits 48-87, 8.8.8.8 at the end.
            "64:ff9b:1:a9fe:a9:fe00:808:808",
            "2002:7f00:1::1",
            "224.0.0.1",
            "255.255.255.255",
            "fd00:ec2::254",
            "100.100.100.200",
        ] {
            assert!(refused(ip, false), "{ip} should be refused");
        }
    }

    #[test]
    fn allows_private_ula_tailnet_and_public() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "fd7a:115c:a1e0::1",
            "100.64.0.1",
            "100.101.102.103",
            "8.8.8.8",
            "2606:4700::1111",
        ] {
            assert!(!refused(ip, false), "{ip} should be allowed");
        }
    }

    #[test]
    fn dev_switch_allows_loopback_only() {
        assert!(!refused("127.0.0.1", true));
        assert!(!refused("::1", true));
        assert!(refused("169.254.169.254", true));
        assert!(refused("fe80::1", true));
    }

    #[test]
    fn load_time_url_check_sees_literals_and_localhost() {
        let u = |s: &str| url::Url::parse(s).expect("url");
        assert!(unsafe_url_reason(&u("http://localhost:8080/x"), false).is_some());
        assert!(unsafe_url_reason(&u("http://[::1]/"), false).is_some());
        assert!(unsafe_url_reason(&u("http://169.254.169.254/"), true).is_some());
        assert!(unsafe_url_reason(&u("https://api.github.com"), false).is_none());
        assert!(unsafe_url_reason(&u("http://localhost/"), true).is_none());
    }

    /// An upstream on loopback answering `<request line target> <Host>`, counting the
    /// connections it accepted. `/slow` sends one chunk, then stalls.
    async fn upstream() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        upstream_keeping(true).await
    }

    /// [`upstream`], closing each connection after its first answer unless `keep_alive`.
    async fn upstream_keeping(
        keep_alive: bool,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use futures_util::StreamExt as _;
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|req: http::Request<InBody>| async move {
                    let host = req.headers().get("host").and_then(|h| h.to_str().ok());
                    let text = format!("{} {}", req.uri(), host.unwrap_or("-"));
                    let stall = req.uri().path() == "/slow";
                    let chunks = futures_util::stream::iter([text, "!".into()]).then(
                        move |chunk| async move {
                            if stall && chunk == "!" {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                            }
                            Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                                bytes::Bytes::from(chunk),
                            ))
                        },
                    );
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::StreamBody::new(chunks),
                    ))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        (addr, accepted)
    }

    fn loopback_allowed() -> Settings {
        Settings {
            allow_loopback: true,
            ..Settings::default()
        }
    }

    async fn get(egress: &Egress, url: &str) -> Result<http::Response<InBody>, EgressError> {
        let url = url::Url::parse(url).expect("url");
        egress
            .send(
                http::Method::GET,
                &url,
                http::HeaderMap::new(),
                OutBody::empty(),
            )
            .await
    }

    async fn text(resp: http::Response<InBody>) -> String {
        use http_body_util::BodyExt as _;
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn requests_carry_the_path_on_the_request_line_and_the_origin_in_host() {
        let (addr, _) = upstream().await;
        let egress = Egress::new(&loopback_allowed()).expect("client");
        let resp = get(&egress, &format!("http://{addr}/a/b?q=1"))
            .await
            .expect("answer");
        assert_eq!(text(resp).await, format!("/a/b?q=1 {addr}!"));
    }

    #[tokio::test]
    async fn connections_are_reused_unless_an_answer_was_dropped_unread_or_the_rules_changed() {
        use http_body_util::BodyExt as _;
        let (addr, accepted) = upstream().await;
        let egress = Egress::new(&loopback_allowed()).expect("client");
        // A request read to its end, then how many connections the upstream has seen.
        let whole = async || {
            let resp = get(&egress, &format!("http://{addr}/x"))
                .await
                .expect("answer");
            assert_eq!(text(resp).await, format!("/x {addr}!"));
            accepted.load(std::sync::atomic::Ordering::SeqCst)
        };
        for _ in 0..3 {
            assert_eq!(whole().await, 1, "one connection for three requests");
        }

        // An answer dropped before its end leaves its connection unusable.
        let mut slow = get(&egress, &format!("http://{addr}/slow"))
            .await
            .expect("answer");
        let first = slow.body_mut().frame().await.expect("a frame");
        assert_eq!(
            first.expect("data").into_data().expect("data"),
            format!("/slow {addr}")
        );
        drop(slow);
        assert_eq!(whole().await, 2, "the cut connection was not reused");

        // The same settings again keep the pool; changed ones start an empty one.
        egress.reconfigure(&loopback_allowed());
        assert_eq!(whole().await, 2);
        egress.reconfigure(&Settings {
            read_timeout_secs: 30,
            ..loopback_allowed()
        });
        assert_eq!(whole().await, 3, "no connection from the old rules");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_after_its_answer_is_not_taken_again() {
        let (addr, accepted) = upstream_keeping(false).await;
        let egress = Egress::new(&loopback_allowed()).expect("client");
        for n in 1..=3 {
            let resp = get(&egress, &format!("http://{addr}/x"))
                .await
                .expect("answer");
            assert_eq!(text(resp).await, format!("/x {addr}!"));
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), n);
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_by_name_and_by_literal_and_a_closed_port_is_a_connect_error() {
        let (addr, accepted) = upstream().await;
        let strict = Egress::new(&Settings::default()).expect("client");
        // A name is checked after DNS, by the resolver; a literal before the dial.
        for url in [
            format!("http://localhost:{}/", addr.port()),
            format!("http://{addr}/"),
        ] {
            let err = get(&strict, &url).await.expect_err("refused");
            assert!(
                matches!(&err, EgressError::Refused { reason, .. } if reason.contains("loopback")),
                "{url}: {err:?}"
            );
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);

        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address").port()
        };
        let egress = Egress::new(&loopback_allowed()).expect("client");
        let err = get(&egress, &format!("http://127.0.0.1:{port}/"))
            .await
            .expect_err("nothing listens there");
        assert!(matches!(err, EgressError::Connect(_)), "{err:?}");
    }
}
