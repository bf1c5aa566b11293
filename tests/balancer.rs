//! A simple TCP load balancer in front of several replicas: each new connection goes to
//! the next backend in turn, skipping one taken out of rotation (drained for a restart)
//! or that refuses connections, as a health-checked L4 balancer does. It connects to the backend *from the
//! client's own loopback address*, so the replicas still see who is calling (tailnet
//! identity comes from the peer address, as with a transparent balancer).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    /// Connections handed to each backend, in order.
    served: Arc<Vec<AtomicUsize>>,
    /// Backends in rotation.
    enabled: Arc<Vec<AtomicBool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = served.clone();
        let enabled: Arc<Vec<AtomicBool>> =
            Arc::new(backends.iter().map(|_| AtomicBool::new(true)).collect());
        let in_rotation = enabled.clone();
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, peer)) = listener.accept().await else {
                    continue;
                };
                let (backends, counts, next, in_rotation) = (
                    backends.clone(),
                    counts.clone(),
                    next.clone(),
                    in_rotation.clone(),
                );
                tokio::spawn(async move {
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..backends.len() {
                        let n = (start + i) % backends.len();
                        if !in_rotation[n].load(Ordering::SeqCst) {
                            continue;
                        }
                        if let Ok(upstream) = connect_from(peer.ip(), backends[n]).await {
                            counts[n].fetch_add(1, Ordering::Relaxed);
                            pipe(client, upstream).await;
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            served,
            enabled,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Takes backend `n` out of rotation (new connections go elsewhere) or puts it back.
    pub fn set_in_rotation(&self, n: usize, on: bool) {
        self.enabled[n].store(on, Ordering::SeqCst);
    }

    /// How many connections each backend was given.
    pub fn served(&self) -> Vec<usize> {
        self.served
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect_from(ip: IpAddr, backend: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(backend).await
}

async fn pipe(mut a: TcpStream, mut b: TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}
