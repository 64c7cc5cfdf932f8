//! A TCP relay on 127.0.0.1 between the controller and the apiserver (TLS
//! passes through unchanged), which can black-hole its connections: bytes
//! are read and dropped, nothing is closed, as when a peer vanishes without
//! a reset (a half-open connection).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Control {
    next_id: AtomicU64,
    /// Connections with an id below this are black-holed.
    stalled_below: AtomicU64,
    /// New connections are black-holed too while set.
    stall_new: AtomicBool,
}

impl Control {
    fn is_stalled(&self, id: u64) -> bool {
        id < self.stalled_below.load(Ordering::SeqCst)
    }
}

pub struct Relay {
    pub addr: SocketAddr,
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays every connection to `upstream` (runs on the calling test's runtime).
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
        let addr = listener.local_addr().unwrap();
        let control = Arc::new(Control::default());
        let ctl = control.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let id = ctl.next_id.fetch_add(1, Ordering::SeqCst);
                if ctl.stall_new.load(Ordering::SeqCst) {
                    ctl.stalled_below.fetch_max(id + 1, Ordering::SeqCst);
                }
                let ctl = ctl.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, id, ctl.clone()), pump(sr, cw, id, ctl));
                });
            }
        });
        Relay { addr, control, task }
    }

    /// Black-holes every connection open now and every new one, until `resume`.
    pub fn stall(&self) {
        self.control.stall_new.store(true, Ordering::SeqCst);
        let next = self.control.next_id.load(Ordering::SeqCst);
        self.control.stalled_below.fetch_max(next, Ordering::SeqCst);
    }

    /// New connections work again; the black-holed ones stay so (no reset ever reaches their ends).
    pub fn resume(&self) {
        let next = self.control.next_id.load(Ordering::SeqCst);
        self.control.stalled_below.fetch_max(next, Ordering::SeqCst);
        self.control.stall_new.store(false, Ordering::SeqCst);
    }

    /// A copy of `kubeconfig` whose server is this relay.
    pub fn kubeconfig(&self, kubeconfig: &Path, dir: &Path) -> PathBuf {
        let text = std::fs::read_to_string(kubeconfig).unwrap();
        let upstream = upstream_of(kubeconfig);
        let text = text.replace(&format!("https://{upstream}"), &format!("https://{}", self.addr));
        assert!(text.contains(&self.addr.to_string()), "kubeconfig server not rewritten");
        let path = dir.join("relay-kubeconfig");
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The apiserver address a kubeconfig points at (`https://127.0.0.1:PORT`).
pub fn upstream_of(kubeconfig: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let server = text.lines().find_map(|l| l.trim().strip_prefix("server:")).expect("server line").trim();
    let server = server.trim_matches('"').trim_start_matches("https://").trim_end_matches('/');
    server.parse().expect("server is 127.0.0.1:PORT")
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    ctl: Arc<Control>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if ctl.is_stalled(id) {
            // Keep reading (so the sender never sees back-pressure) and drop it.
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            // Never close the other side: the peer must see silence, not EOF.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
