//! A simple TCP load balancer in front of several replicas: each new connection goes to
//! the next backend in turn, skipping one taken out of rotation (drained for a restart)
//! or that refuses connections, as a health-checked L4 balancer does. It connects to the backend *from the
//! client's own loopback address*, so the replicas still see who is calling (tailnet
//! identity comes from the peer address, as with a transparent balancer).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    /// Each backend's address, once named.
    backends: Arc<Vec<Mutex<Option<SocketAddr>>>>,
    /// Connections handed to each backend, in order.
    served: Arc<Vec<AtomicUsize>>,
    /// Backends in rotation.
    enabled: Arc<Vec<AtomicBool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// A balancer with room for `n` backends, listening at once (so its URL can go in
    /// the replicas' config) and sending connections to none until
    /// [`Balancer::set_backend`] names them. Replicas listen on ports of their own choosing
    /// and are named afterwards: a port picked for them in advance could be taken by
    /// another test's connection before they bind it.
    pub async fn start(n: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let backends: Arc<Vec<Mutex<Option<SocketAddr>>>> =
            Arc::new((0..n).map(|_| Mutex::new(None)).collect());
        let served: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
        let enabled: Arc<Vec<AtomicBool>> =
            Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
        let (slots, counts, in_rotation) = (backends.clone(), served.clone(), enabled.clone());
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, peer)) = listener.accept().await else {
                    continue;
                };
                let (slots, counts, next, in_rotation) = (
                    slots.clone(),
                    counts.clone(),
                    next.clone(),
                    in_rotation.clone(),
                );
                tokio::spawn(async move {
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..slots.len() {
                        let n = (start + i) % slots.len();
                        if !in_rotation[n].load(Ordering::SeqCst) {
                            continue;
                        }
                        let Some(backend) = *slots[n].lock().expect("lock") else {
                            continue;
                        };
                        if let Ok(upstream) = connect_from(peer.ip(), backend).await {
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
            backends,
            served,
            enabled,
            task,
        }
    }

    /// Backend `n` is at `addr` (a replica started, or started again), in rotation.
    pub fn set_backend(&self, n: usize, addr: SocketAddr) {
        *self.backends[n].lock().expect("lock") = Some(addr);
        self.enabled[n].store(true, Ordering::SeqCst);
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
