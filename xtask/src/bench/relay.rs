//! The floor of a Rust HTTP hop: a minimal HTTP/1.1 relay that the proxy benchmark
//! measures beside nginx and Portcullis (`--targets relay`).
//!
//! Portcullis costs two to three times nginx's CPU per proxied request. Profiles put the
//! difference in user space (hyper's general server and client, tokio's task machinery,
//! allocation), not in the gateway's checks. Whether a Rust gateway *can* match nginx on
//! these cores, and so whether a purpose-built HTTP layer is worth building, is a
//! question a measurement answers better than an estimate. This relay is that
//! measurement: the least a header-injecting HTTP/1.1 hop does, on the runtime layout
//! Portcullis already has (a single-threaded tokio runtime per core):
//!
//! - parse the request head in place (`httparse`), rewrite the request line and the two
//!   headers a proxy must (`Host`, the injected `Authorization`), copy the rest;
//! - one keep-alive upstream connection per agent connection, used inline by the
//!   connection's own task: no pool, no task hand-off, no channel (a gateway serving
//!   many connectors and users needs a pool; nginx keeps one per worker);
//! - relay `Content-Length` bodies both ways, the response's head unparsed but for that
//!   length (nginx also rewrites hop-by-hop headers); anything else (chunked, upgrades,
//!   HEAD, 1xx) is answered 501 and the connection closed.
//!
//! With `--stack hyper` (`--targets relay-hyper`) the same relay runs on hyper's HTTP/1
//! server and hyper-util's pooled client instead, the crates Portcullis uses, in their
//! plainest setup: HTTP/1 only (Portcullis's server also detects HTTP/2 and times each
//! head read), plain TCP (Portcullis's client goes through its TLS connector and checked
//! resolver). The difference between the two rows is roughly what hyper costs; between
//! the hyper row and Portcullis's, the gateway's own work and that richer setup.
//!
//! It is not a gateway. It has none of Portcullis's rules: no identity, grants, header
//! hygiene, egress check, limits, timeouts, audit or metrics, and it trusts the
//! benchmark's upstream. The benchmark report says so beside its row.
//!
//! It runs as a child process (`xtask bench-relay`), so the benchmark reads its CPU time
//! apart from the load generator's, as it does nginx's.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The relay's arguments (`xtask bench-relay`), given by the benchmark.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
    /// The upstream's address.
    #[arg(long)]
    upstream: SocketAddr,
    /// Path prefix taken off before the request goes upstream (`/v1/connectors/bench`).
    #[arg(long)]
    prefix: String,
    /// The bearer token injected as `Authorization`.
    #[arg(long)]
    secret: String,
    /// Which HTTP code serves each side.
    #[arg(long, value_enum, default_value = "lean")]
    stack: Stack,
}

/// Whose HTTP code serves both sides: the relay's own, or hyper's (the server's
/// `http1::Builder`, and hyper-util's pooled `legacy::Client` per thread, as Portcullis
/// has them), to tell what hyper costs apart from what the gateway does on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stack {
    Lean,
    Hyper,
}

/// Largest request or response head read.
const MAX_HEAD: usize = 16 * 1024;
/// Most headers parsed in one head.
const MAX_HEADERS: usize = 64;

/// What every connection needs, shared read-only.
struct Settings {
    upstream: SocketAddr,
    prefix: String,
    secret: String,
    /// `Host: …\r\nAuthorization: Bearer …\r\n`, written after the copied headers.
    added: Vec<u8>,
}

/// Serves until killed: one thread per core, each a single-threaded runtime accepting on
/// its own `SO_REUSEPORT` listener, so the kernel deals connections out between them.
pub fn run(args: RelayArgs) -> Result<()> {
    let settings = Arc::new(Settings {
        upstream: args.upstream,
        prefix: args.prefix,
        secret: args.secret.clone(),
        added: format!(
            "host: {}\r\nauthorization: Bearer {}\r\n",
            args.upstream, args.secret
        )
        .into_bytes(),
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stack = args.stack;
    let threads: Vec<_> = (0..cores)
        .map(|i| {
            let settings = settings.clone();
            let listen = args.listen;
            std::thread::Builder::new()
                .name(format!("relay-{i}"))
                .spawn(move || {
                    // A thread that cannot serve ends the relay, so the benchmark never
                    // measures it with fewer threads than cores.
                    if let Err(e) = serve_thread(listen, settings, stack) {
                        eprintln!("relay: {e:#}");
                        std::process::exit(1);
                    }
                })
                .context("starting a relay thread")
        })
        .collect::<Result<_>>()?;
    for t in threads {
        if t.join().is_err() {
            bail!("a relay thread panicked");
        }
    }
    Ok(())
}

fn serve_thread(listen: SocketAddr, settings: Arc<Settings>, stack: Stack) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the relay's runtime")?;
    rt.block_on(async move {
        let socket = TcpSocket::new_v4().context("relay socket")?;
        socket.set_reuseport(true).context("SO_REUSEPORT")?;
        socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
        socket
            .bind(listen)
            .with_context(|| format!("binding {listen}"))?;
        let listener = socket.listen(1024).context("listening")?;
        let client = hyper_side::client();
        loop {
            let (agent, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("relay: accept: {e}");
                    continue;
                }
            };
            let settings = settings.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let served = match stack {
                    Stack::Lean => serve(agent, &settings).await,
                    Stack::Hyper => hyper_side::serve(agent, settings, client).await,
                };
                if let Err(e) = served {
                    eprintln!("relay: connection ended: {e:#}");
                }
            });
        }
    })
}

/// One parsed head: its length, and the `Content-Length` it declared.
struct Head {
    len: usize,
    body: usize,
}

/// Relays requests of one agent connection until it closes.
async fn serve(mut agent: TcpStream, settings: &Settings) -> Result<()> {
    agent.set_nodelay(true)?;
    let mut upstream: Option<TcpStream> = None;
    let mut from_agent = BytesMut::with_capacity(4096);
    let mut from_upstream = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(1024);
    loop {
        // The request head, rewritten into `out` as it is parsed.
        out.clear();
        let head = loop {
            if let Some(head) = request_head(&from_agent, settings, &mut out)? {
                break head;
            }
            if from_agent.len() >= MAX_HEAD {
                return refuse(&mut agent, "431 Request Header Fields Too Large").await;
            }
            if agent.read_buf(&mut from_agent).await? == 0 {
                return Ok(()); // the agent closed between requests
            }
        };
        let Some(head) = head else {
            return refuse(&mut agent, "501 Not Implemented").await;
        };
        from_agent.advance(head.len);
        let up = match &mut upstream {
            Some(up) => up,
            None => {
                let up = TcpStream::connect(settings.upstream).await?;
                up.set_nodelay(true)?;
                upstream.insert(up)
            }
        };
        // Head and whatever of the body is already read go in one write.
        let ready = head.body.min(from_agent.len());
        out.extend_from_slice(&from_agent[..ready]);
        from_agent.advance(ready);
        up.write_all(&out).await?;
        copy_exact(&mut agent, up, head.body - ready).await?;

        // The response: its head and body are passed on as they came.
        let head = loop {
            if let Some(head) = response_head(&from_upstream)? {
                break head;
            }
            if from_upstream.len() >= MAX_HEAD || up.read_buf(&mut from_upstream).await? == 0 {
                return refuse(&mut agent, "502 Bad Gateway").await;
            }
        };
        let Some(head) = head else {
            return refuse(&mut agent, "501 Not Implemented").await;
        };
        let whole = head
            .len
            .checked_add(head.body)
            .context("a Content-Length past the address space")?;
        let ready = whole.min(from_upstream.len());
        agent.write_all(&from_upstream[..ready]).await?;
        from_upstream.advance(ready);
        copy_exact(up, &mut agent, whole - ready).await?;
    }
}

/// Parses a request head in `buf`: `None` while incomplete, `Some(None)` for a request
/// this relay does not handle, otherwise the head, written to `out` with the prefix taken
/// off the path and `Host` and `Authorization` replaced.
fn request_head(
    buf: &[u8],
    settings: &Settings,
    out: &mut Vec<u8>,
) -> Result<Option<Option<Head>>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf).context("parsing a request head")? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) => len,
    };
    // The answer to HEAD declares a length it does not carry: not handled.
    let (Some(method), Some(path)) = (req.method.filter(|m| *m != "HEAD"), req.path) else {
        return Ok(Some(None));
    };
    let Some(rest) = path.strip_prefix(settings.prefix.as_str()) else {
        return Ok(Some(None));
    };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    if !rest.starts_with('/') {
        out.push(b'/');
    }
    out.extend_from_slice(rest.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut body = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body = content_length(h.value)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("upgrade")
        {
            return Ok(Some(None));
        } else if h.name.eq_ignore_ascii_case("host")
            || h.name.eq_ignore_ascii_case("authorization")
            || h.name.eq_ignore_ascii_case("connection")
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&settings.added);
    out.extend_from_slice(b"\r\n");
    Ok(Some(Some(Head { len, body })))
}

/// Parses a response head in `buf`, as [`request_head`] does. 204 and 304 carry no
/// body whatever they declare; an interim (1xx) response, or one without a
/// `Content-Length`, is one this relay does not handle.
fn response_head(buf: &[u8]) -> Result<Option<Option<Head>>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf).context("parsing a response head")? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) => len,
    };
    match resp.code {
        Some(100..=199) | None => return Ok(Some(None)),
        Some(204 | 304) => return Ok(Some(Some(Head { len, body: 0 }))),
        Some(_) => {}
    }
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| content_length(h.value))
        .transpose()?;
    Ok(Some(length.map(|body| Head { len, body })))
}

fn content_length(value: &[u8]) -> Result<usize> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .context("a Content-Length that is not a number")
}

/// Copies exactly `n` more bytes from `from` to `to`.
async fn copy_exact(from: &mut TcpStream, to: &mut TcpStream, mut n: usize) -> Result<()> {
    let mut buf = [0u8; 16 * 1024];
    while n > 0 {
        let want = n.min(buf.len());
        let got = from.read(&mut buf[..want]).await?;
        if got == 0 {
            bail!("the peer closed inside a body");
        }
        to.write_all(&buf[..got]).await?;
        n -= got;
    }
    Ok(())
}

/// Answers `status` with no body and closes the connection.
async fn refuse(agent: &mut TcpStream, status: &str) -> Result<()> {
    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    agent.write_all(answer.as_bytes()).await?;
    Ok(())
}

/// hyper on both sides, for [`Stack::Hyper`]: the request is rewritten in place and
/// its body streamed through, as Portcullis does.
mod hyper_side {
    use super::*;
    use hyper::body::Incoming;
    use hyper::http::{self, HeaderValue, Uri, header};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    pub type Pooled = Client<HttpConnector, Incoming>;

    pub fn client() -> Pooled {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(http)
    }

    /// hyper's HTTP/1 server in front of its pooled client.
    pub async fn serve(agent: TcpStream, settings: Arc<Settings>, client: Pooled) -> Result<()> {
        agent.set_nodelay(true)?;
        let auth = HeaderValue::try_from(format!("Bearer {}", settings.secret))?;
        let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            let (settings, client, auth) = (settings.clone(), client.clone(), auth.clone());
            async move {
                // A path outside the prefix (the benchmark's readiness probe) goes as it is.
                let target = req.uri().path_and_query().map_or("", |p| p.as_str());
                let rest = target
                    .strip_prefix(settings.prefix.as_str())
                    .unwrap_or(target);
                *req.uri_mut() = Uri::try_from(format!(
                    "http://{}/{}",
                    settings.upstream,
                    rest.trim_start_matches('/')
                ))?;
                req.headers_mut().remove(header::HOST);
                req.headers_mut().insert(header::AUTHORIZATION, auth);
                anyhow::Ok(client.request(req).await?)
            }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(agent), service)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            upstream: "127.0.0.1:9".parse().expect("addr"),
            prefix: "/v1/connectors/bench".into(),
            secret: "s".into(),
            added: b"host: 127.0.0.1:9\r\nauthorization: Bearer s\r\n".to_vec(),
        }
    }

    #[test]
    fn a_request_head_is_rewritten_for_the_upstream() {
        let mut out = Vec::new();
        let raw = b"GET /v1/connectors/bench/items/42?f=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer agent\r\nAccept: */*\r\nContent-Length: 3\r\n\r\nabc";
        let head = request_head(raw, &settings(), &mut out)
            .expect("parses")
            .expect("complete")
            .expect("handled");
        assert_eq!((head.len, head.body), (raw.len() - 3, 3));
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "GET /items/42?f=1 HTTP/1.1\r\nAccept: */*\r\nContent-Length: 3\r\nhost: 127.0.0.1:9\r\nauthorization: Bearer s\r\n\r\n"
        );
    }

    #[test]
    fn partial_unprefixed_chunked_and_head_requests_are_told_apart() {
        let mut out = Vec::new();
        let s = settings();
        assert!(matches!(
            request_head(b"GET /v1/conn", &s, &mut out),
            Ok(None)
        ));
        assert!(matches!(
            request_head(b"GET /other HTTP/1.1\r\n\r\n", &s, &mut out),
            Ok(Some(None))
        ));
        assert!(matches!(
            request_head(
                b"HEAD /v1/connectors/bench/x HTTP/1.1\r\n\r\n",
                &s,
                &mut out
            ),
            Ok(Some(None))
        ));
        assert!(matches!(
            request_head(
                b"POST /v1/connectors/bench/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                &s,
                &mut out
            ),
            Ok(Some(None))
        ));
        assert!(
            request_head(
                b"GET /v1/connectors/bench HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                &s,
                &mut out
            )
            .is_err()
        );
    }

    #[test]
    fn a_response_needs_a_content_length_unless_it_carries_no_body() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let head = response_head(ok)
            .expect("parses")
            .expect("complete")
            .expect("handled");
        assert_eq!((head.len, head.body), (ok.len() - 2, 2));
        assert!(matches!(
            response_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Ok(Some(None))
        ));
        assert!(matches!(
            response_head(b"HTTP/1.1 100 Continue\r\n\r\n"),
            Ok(Some(None))
        ));
        let not_modified = b"HTTP/1.1 304 Not Modified\r\ncontent-length: 94\r\n\r\n";
        let head = response_head(not_modified)
            .expect("parses")
            .expect("complete")
            .expect("handled");
        assert_eq!((head.len, head.body), (not_modified.len(), 0));
    }
}
