//! A small closed-loop HTTP/1.1 load generator, reusable by every benchmark.
//!
//! Why not `wrk`/`oha`: they are not installable from the registries this project may
//! use, and keeping the client in-tree means every benchmark measures with the same
//! hyper stack, the same histogram, and the same bounds.
//!
//! Model: `concurrency` workers, each owning one keep-alive connection and issuing one
//! request at a time (closed loop: a new request only after the previous response body
//! was fully read). Every phase is bounded twice, by a shared request budget and by a
//! wall-clock deadline, and each request and connect has its own timeout, so a stuck
//! target can never hang the benchmark. Latency is recorded per request in an HDR
//! histogram (nanoseconds, 3 significant digits) and merged across workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::host::{CpuTime, cpu_of, tree_cpu_of};

/// Upper bound for one request (send + full response body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for establishing one TCP connection + HTTP/1 handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A worker that fails this many requests in a row gives up instead of spinning.
const MAX_CONSECUTIVE_ERRORS: u32 = 50;
/// Largest latency the histogram tracks (longer ones are clamped): the request timeout.
const HISTOGRAM_MAX_NS: u64 = 60_000_000_000;

/// Where to send requests: a loopback address plus the request path, and for a POST
/// its body and headers.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    /// Origin-form request target, e.g. `/v1/connectors/bench/ping`.
    pub path: String,
    /// `Some` sends this body as a POST; `None` sends a GET.
    pub body: Option<Body>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A 200 only counts as a success if its body contains this (an MCP server answers
    /// a failed call with 200 and a JSON-RPC error).
    pub expect: Option<Bytes>,
    /// More servers answering the same requests (replicas): connection `i` goes to
    /// `[addr, replicas...][i % n]`, as a balancer spreading connections would.
    pub replicas: Vec<SocketAddr>,
}

impl Target {
    /// Where connection `i` goes.
    fn addr_for(&self, i: usize) -> SocketAddr {
        match i % (self.replicas.len() + 1) {
            0 => self.addr,
            n => self.replicas[n - 1],
        }
    }

    /// `GET path`.
    pub fn get(name: impl Into<String>, addr: SocketAddr, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            addr,
            path: path.into(),
            body: None,
            headers: Vec::new(),
            expect: None,
            replicas: Vec::new(),
        }
    }

    /// `POST path` with `body` and `headers`; successes must contain `expect`.
    pub fn post(
        name: impl Into<String>,
        addr: SocketAddr,
        path: impl Into<String>,
        body: impl Into<Body>,
        headers: Vec<(HeaderName, HeaderValue)>,
        expect: Bytes,
    ) -> Self {
        Self {
            body: Some(body.into()),
            headers,
            expect: Some(expect),
            ..Self::get(name, addr, path)
        }
    }
}

/// The body of a POST.
#[derive(Debug, Clone)]
pub enum Body {
    /// The same bytes on every request.
    Fixed(Bytes),
    /// A JSON-RPC request numbered afresh for every request: `before`, a decimal id taken
    /// from a counter all workers share, then `after`. Inside an MCP session a request id
    /// must not repeat while an earlier request with it is open (the server routes each
    /// answer by its id), so concurrent agents in one session need distinct ids, as every
    /// real client sends.
    Numbered {
        before: Bytes,
        after: Bytes,
        next_id: Arc<AtomicU64>,
    },
}

impl Body {
    /// A numbered body whose ids start at `first_id`.
    pub fn numbered(before: &str, after: &str, first_id: u64) -> Self {
        Self::Numbered {
            before: Bytes::copy_from_slice(before.as_bytes()),
            after: Bytes::copy_from_slice(after.as_bytes()),
            next_id: Arc::new(AtomicU64::new(first_id)),
        }
    }

    /// The bytes of the next request.
    fn next(&self) -> Bytes {
        match self {
            Self::Fixed(bytes) => bytes.clone(),
            Self::Numbered {
                before,
                after,
                next_id,
            } => {
                let id = next_id.fetch_add(1, Ordering::Relaxed).to_string();
                let mut body = Vec::with_capacity(before.len() + id.len() + after.len());
                body.extend_from_slice(before);
                body.extend_from_slice(id.as_bytes());
                body.extend_from_slice(after);
                Bytes::from(body)
            }
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self::Fixed(bytes)
    }
}

/// One bounded run at a fixed concurrency. Whichever bound is hit first ends it.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub concurrency: usize,
    pub max_requests: u64,
    pub max_duration: Duration,
}

/// A warm-up phase (results discarded; fills connection pools, caches, JIT-free but
/// allocator- and branch-predictor-warm paths) followed by the measured phase, on the
/// same connections.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub warmup: Phase,
    pub measure: Phase,
    /// Tokio worker threads for the client. 1 uses a current-thread runtime, which is
    /// the cheapest client on a small machine where the client competes for cores.
    pub client_threads: usize,
    /// The measured phase starts no earlier than this (a burst timed to an event, with
    /// its connections already open).
    pub start_at: Option<Instant>,
}

/// Results of the measured phase. Latencies are in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub concurrency: usize,
    /// Requests answered with 200 and the expected body (only these are in the latency
    /// histogram).
    pub ok: u64,
    /// Requests answered with another status, or without the expected body.
    pub bad_status: u64,
    /// Transport errors and timeouts.
    pub errors: u64,
    /// Connections (re)established during the measured phase.
    pub reconnects: u64,
    pub elapsed_s: f64,
    /// Successful requests per second over the phase.
    pub rps: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// CPU time spent per successful request during the phase.
    pub cpu: CpuPerRequest,
    /// Instructions the program measured executed in user space over the phase, when
    /// counted ([`run_counted`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u64>,
}

/// CPU time (user + system) per successful request of a measured phase, in µs: what a
/// request costs each side, which throughput on shared cores hides (the load generator,
/// the upstream and the program measured all compete for the same cores).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuPerRequest {
    /// The benchmark process: the load generator and the upstream it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bench_us: Option<f64>,
    /// The program measured, with its worker processes (none for a direct target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_us: Option<f64>,
    /// Of [`Self::server_us`], the part spent in the kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_system_us: Option<f64>,
}

impl CpuPerRequest {
    /// Both sides together, when both were measured.
    pub fn total_us(&self) -> Option<f64> {
        Some(self.bench_us? + self.server_us?)
    }

    /// A table cell: `µs`, or `—` where nothing was measured.
    pub fn cell(us: Option<f64>) -> String {
        us.map_or_else(|| "—".to_owned(), |us| format!("{us:.1}"))
    }

    /// The server's cell: its total, with the kernel's part.
    pub fn server_cell(&self) -> String {
        match (self.server_us, self.server_system_us) {
            (Some(all), Some(system)) => format!("{all:.1} ({system:.1})"),
            (all, _) => Self::cell(all),
        }
    }
}

/// CPU time spent so far by this process and by the servers measured.
struct CpuClock {
    bench: Option<CpuTime>,
    servers: Option<CpuTime>,
}

impl CpuClock {
    fn read(servers: &[u32]) -> Self {
        let servers = servers
            .iter()
            .map(|&pid| tree_cpu_of(pid).ok())
            .reduce(|a, b| Some(a? + b?))
            .flatten();
        Self {
            bench: cpu_of(std::process::id()).ok(),
            servers,
        }
    }

    /// What each side spent per request of `ok` since `self`.
    fn per_request(&self, now: &Self, ok: u64) -> CpuPerRequest {
        let spent = |a: Option<CpuTime>, b: Option<CpuTime>| b?.since(&a?).filter(|_| ok > 0);
        let us = |d: Duration| d.as_secs_f64() * 1e6 / ok as f64;
        let server = spent(self.servers, now.servers);
        CpuPerRequest {
            bench_us: spent(self.bench, now.bench).map(|t| us(t.total())),
            server_us: server.map(|t| us(t.total())),
            server_system_us: server.map(|t| us(t.system)),
        }
    }
}

/// Runs `spec` against `target` on a private tokio runtime (so it never shares threads
/// with servers living in the same process) and returns the measured phase's stats.
pub fn run(target: &Target, spec: &LoadSpec) -> Result<Stats> {
    run_charging(target, spec, &[])
}

/// [`run`], with the CPU time the processes `servers` (and their descendants) spent in
/// the measured phase reported per request.
fn run_charging(target: &Target, spec: &LoadSpec, servers: &[u32]) -> Result<Stats> {
    let rt = build_runtime(spec.client_threads)?;
    rt.block_on(run_async(target, spec, servers, None))
}

/// [`run`], with the instructions the program under `counter` executed over the
/// measured phase (zeroed just before its first request, read just after its last
/// answer, on the connections the warm-up opened) in [`Stats::instructions`].
pub fn run_counted(
    target: &Target,
    spec: &LoadSpec,
    counter: &super::callgrind::Counter,
) -> Result<Stats> {
    let rt = build_runtime(spec.client_threads)?;
    rt.block_on(run_async(target, spec, &[], Some(counter)))
}

/// Runs the concurrency-1 phase, then the high-concurrency one, against `target`,
/// failing if `proxy` (the program behind it, if any) exited or a phase had no success.
/// `unit` names a request in the progress lines ("req", "calls").
pub fn run_both(
    target: &Target,
    mut proxy: Option<&mut super::ChildGuard>,
    spec_c1: &LoadSpec,
    spec_high: &LoadSpec,
    unit: &str,
) -> Result<(Stats, Stats)> {
    let servers = proxy.as_ref().map(|p| p.pids()).unwrap_or_default();
    let mut check_alive = || -> Result<()> {
        if let Some(status) = proxy.as_mut().and_then(|p| p.exited()) {
            anyhow::bail!("{} exited during the benchmark ({status})", target.name);
        }
        Ok(())
    };
    let latency = run_charging(target, spec_c1, &servers)?;
    check_alive()?;
    eprintln!(
        "bench:   c=1: {} ok in {:.1}s, p50 {:.1}µs p99 {:.1}µs",
        latency.ok, latency.elapsed_s, latency.p50_us, latency.p99_us
    );
    let throughput = run_charging(target, spec_high, &servers)?;
    check_alive()?;
    eprintln!(
        "bench:   c={}: {} ok in {:.1}s, {:.0} {unit}/s",
        throughput.concurrency, throughput.ok, throughput.elapsed_s, throughput.rps
    );
    for s in [&latency, &throughput] {
        if s.ok == 0 {
            anyhow::bail!(
                "nothing succeeded at concurrency {} ({})",
                s.concurrency,
                s.last_error.as_deref().unwrap_or("no error recorded")
            );
        }
    }
    Ok((latency, throughput))
}

/// One request on a fresh connection: used to check a target answers correctly before
/// it is loaded, and for readiness polling.
pub fn probe(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes)> {
    probe_target(&Target::get("probe", addr, path))
}

/// [`probe`] for any target (a POST with its body and headers).
pub fn probe_target(target: &Target) -> Result<(StatusCode, Bytes)> {
    probe_response(target).map(|(status, _, body)| (status, body))
}

/// One request to `target` on a fresh connection: status, headers and the whole body.
pub fn probe_response(target: &Target) -> Result<(StatusCode, hyper::HeaderMap, Bytes)> {
    let rt = build_runtime(1)?;
    rt.block_on(async {
        let (addr, path) = (target.addr, &target.path);
        let uri: Uri = path
            .parse()
            .with_context(|| format!("invalid path {path:?}"))?;
        let host = host_header(addr)?;
        let mut sender = connect(addr).await?;
        let req = build_request(target, &uri, &host)?;
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let res = sender.send_request(req).await?;
            let (parts, body) = res.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((parts.status, parts.headers, body))
        })
        .await
        .map_err(|_| anyhow!("request to {addr}{path} timed out"))?
        .with_context(|| format!("request to {addr}{path}"))
    })
}

fn build_runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("building load-generator runtime")
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let fut = async {
        let stream = TcpStream::connect(addr).await?;
        // Without TCP_NODELAY small requests can sit in Nagle's buffer for ~40 ms.
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            // Ends when the peer closes or the sender is dropped; errors surface on the
            // sender side.
            let _ = conn.await;
        });
        Ok::<_, std::io::Error>(sender)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))
}

fn host_header(addr: SocketAddr) -> Result<HeaderValue> {
    HeaderValue::from_str(&addr.to_string()).context("building Host header")
}

fn build_request(target: &Target, uri: &Uri, host: &HeaderValue) -> Result<Request<Full<Bytes>>> {
    let method = if target.body.is_some() {
        Method::POST
    } else {
        Method::GET
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri.clone())
        .header(HOST, host.clone());
    for (name, value) in &target.headers {
        req = req.header(name, value);
    }
    let body = target.body.as_ref().map(Body::next).unwrap_or_default();
    req.body(Full::new(body)).context("building request")
}

/// Whether `haystack` contains `needle` (the expected marker in a response body).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_NS, 3).context("creating histogram")
}

/// Shared bounds of one phase.
struct Budget {
    issued: AtomicU64,
    max_requests: u64,
    deadline: Instant,
}

impl Budget {
    /// Claims one request slot; false once either bound is reached or on interrupt.
    fn take(&self) -> bool {
        if super::interrupted() || Instant::now() >= self.deadline {
            return false;
        }
        self.issued.fetch_add(1, Ordering::Relaxed) < self.max_requests
    }
}

/// Per-worker tallies, merged after the phase.
struct WorkerOut {
    hist: Histogram<u64>,
    ok: u64,
    bad_status: u64,
    errors: u64,
    reconnects: u64,
    last_error: Option<String>,
}

async fn run_async(
    target: &Target,
    spec: &LoadSpec,
    servers: &[u32],
    counter: Option<&super::callgrind::Counter>,
) -> Result<Stats> {
    let uri: Uri = target
        .path
        .parse()
        .with_context(|| format!("invalid path {:?}", target.path))?;
    let max_conc = spec.warmup.concurrency.max(spec.measure.concurrency).max(1);

    // Connect everything up front so connection setup is not part of the measurement.
    let mut senders: Vec<Option<Sender>> = Vec::with_capacity(max_conc);
    for i in 0..max_conc {
        senders.push(Some(connect(target.addr_for(i)).await?));
    }

    let target = Arc::new(target.clone());
    let (senders, _) = run_phase(&target, &uri, senders, &spec.warmup).await?;
    super::check_interrupted()?;
    if let Some(at) = spec.start_at {
        tokio::time::sleep_until(at.into()).await;
    }
    let recorder = super::profile::start(servers, spec.measure.concurrency)?;
    if let Some(counter) = counter {
        counter.zero()?;
    }
    let before = CpuClock::read(servers);
    let (_, mut stats) = run_phase(&target, &uri, senders, &spec.measure).await?;
    stats.cpu = before.per_request(&CpuClock::read(servers), stats.ok);
    if let Some(counter) = counter {
        stats.instructions = Some(counter.read()?);
    }
    super::profile::finish(recorder, stats.cpu.server_us)?;
    super::check_interrupted()?;
    Ok(stats)
}

async fn run_phase(
    target: &Arc<Target>,
    uri: &Uri,
    mut senders: Vec<Option<Sender>>,
    phase: &Phase,
) -> Result<(Vec<Option<Sender>>, Stats)> {
    let concurrency = phase.concurrency.max(1);
    let start = Instant::now();
    let budget = Arc::new(Budget {
        issued: AtomicU64::new(0),
        max_requests: phase.max_requests,
        deadline: start + phase.max_duration,
    });

    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let sender = senders.get_mut(i).and_then(Option::take);
        let budget = Arc::clone(&budget);
        let uri = uri.clone();
        let addr = target.addr_for(i);
        let host = host_header(addr)?;
        let hist = new_histogram()?;
        let target = Arc::clone(target);
        tasks.push(tokio::spawn(worker(
            target, addr, uri, host, sender, budget, hist,
        )));
    }

    let mut total = new_histogram()?;
    let mut out = WorkerOut {
        hist: new_histogram()?,
        ok: 0,
        bad_status: 0,
        errors: 0,
        reconnects: 0,
        last_error: None,
    };
    for (i, task) in tasks.into_iter().enumerate() {
        let (sender, w) = task.await.context("load worker panicked")?;
        if let Some(slot) = senders.get_mut(i) {
            *slot = sender;
        }
        total.add(&w.hist).context("merging histograms")?;
        out.ok += w.ok;
        out.bad_status += w.bad_status;
        out.errors += w.errors;
        out.reconnects += w.reconnects;
        if w.last_error.is_some() {
            out.last_error = w.last_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let us = |ns: u64| ns as f64 / 1_000.0;
    let stats = Stats {
        concurrency,
        ok: out.ok,
        bad_status: out.bad_status,
        errors: out.errors,
        reconnects: out.reconnects,
        elapsed_s: elapsed,
        rps: if elapsed > 0.0 {
            out.ok as f64 / elapsed
        } else {
            0.0
        },
        mean_us: total.mean() / 1_000.0,
        p50_us: us(total.value_at_quantile(0.50)),
        p90_us: us(total.value_at_quantile(0.90)),
        p99_us: us(total.value_at_quantile(0.99)),
        p999_us: us(total.value_at_quantile(0.999)),
        max_us: us(total.max()),
        last_error: out.last_error,
        cpu: CpuPerRequest::default(),
        instructions: None,
    };
    Ok((senders, stats))
}

async fn worker(
    target: Arc<Target>,
    addr: SocketAddr,
    uri: Uri,
    host: HeaderValue,
    mut sender: Option<Sender>,
    budget: Arc<Budget>,
    hist: Histogram<u64>,
) -> (Option<Sender>, WorkerOut) {
    let mut out = WorkerOut {
        hist,
        ok: 0,
        bad_status: 0,
        errors: 0,
        reconnects: 0,
        last_error: None,
    };
    let mut consecutive_errors = 0u32;
    while budget.take() {
        // The server may have closed the connection (e.g. a keep-alive request limit);
        // reconnect rather than count every later request as an error.
        let mut conn = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(addr).await {
                Ok(s) => {
                    out.reconnects += 1;
                    s
                }
                Err(e) => {
                    out.errors += 1;
                    out.last_error = Some(format!("{e:#}"));
                    consecutive_errors += 1;
                    if consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                        break;
                    }
                    continue;
                }
            },
        };
        let req = match build_request(&target, &uri, &host) {
            Ok(r) => r,
            Err(e) => {
                out.errors += 1;
                out.last_error = Some(format!("{e:#}"));
                break;
            }
        };
        let t0 = Instant::now();
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            conn.ready().await?;
            let res = conn.send_request(req).await?;
            let status = res.status();
            // Read the whole body: latency is time to the last byte, like a real caller.
            let body = res.into_body().collect().await?.to_bytes();
            let expected = target.expect.as_ref().is_none_or(|e| contains(&body, e));
            Ok::<_, hyper::Error>((status, expected))
        })
        .await;
        let elapsed_ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match result {
            Ok(Ok((status, true))) if status == StatusCode::OK => {
                out.hist.saturating_record(elapsed_ns.max(1));
                out.ok += 1;
                consecutive_errors = 0;
                sender = Some(conn);
            }
            Ok(Ok((status, expected))) => {
                out.bad_status += 1;
                out.last_error = Some(if status != StatusCode::OK || expected {
                    format!("HTTP status {status}")
                } else {
                    "the response body lacks the expected content".to_owned()
                });
                consecutive_errors += 1;
                sender = Some(conn);
            }
            Ok(Err(e)) => {
                out.errors += 1;
                out.last_error = Some(format!("{e}"));
                consecutive_errors += 1;
            }
            Err(_) => {
                out.errors += 1;
                out.last_error = Some(format!("request timed out after {REQUEST_TIMEOUT:?}"));
                consecutive_errors += 1;
            }
        }
        if consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
            break;
        }
    }
    (sender, out)
}
