//! Admin HTTP endpoints (/metrics, /healthz, /readyz): one request per
//! connection, headers read within a deadline, bounded size and concurrency,
//! and accept errors backed off instead of spun on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

/// A reply: status, body, content type.
pub type Reply = (StatusCode, String, &'static str);
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A client must send its request headers within this.
    pub header_read: Duration,
    /// A whole connection (one request) ends after this.
    pub request: Duration,
    /// Bytes buffered for a request head; larger requests are refused.
    pub max_request_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(5),
            request: Duration::from_secs(30),
            max_request_bytes: 16 * 1024,
            max_connections: 64,
        }
    }
}

/// Binds now (so a bad address fails start-up) and serves in the background.
pub async fn serve(addr: SocketAddr, limits: Limits, handler: Handler) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(10);
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    pause = Duration::from_millis(10);
                    stream
                }
                Err(e) => {
                    // Typically EMFILE: retrying at once would spin.
                    warn!(error = %e, ?pause, "admin server cannot accept; pausing");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| respond(req, handler.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read)
                    .max_buf_size(limits.max_request_bytes.max(8192))
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(limits.request, conn).await;
            });
        }
    });
    Ok(local)
}

async fn respond(req: Request<Incoming>, handler: Handler) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body, content_type) = handler(req.uri().path());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits) -> SocketAddr {
        let handler: Handler = Arc::new(|path| (StatusCode::OK, format!("path {path}"), "text/plain"));
        serve("127.0.0.1:0".parse().unwrap(), limits, handler).await.unwrap()
    }

    async fn read_all(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await.expect("closed");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_one_request_and_closes() {
        let addr = start(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let reply = read_all(&mut s).await;
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("path /healthz"), "{reply}");
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_disconnected_after_the_header_deadline() {
        let limits = Limits { header_read: Duration::from_millis(300), ..Limits::default() };
        let addr = start(limits).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
        for s in [&mut silent, &mut slow] {
            let reply = read_all(s).await;
            assert!(!reply.contains("200"), "{reply}");
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn an_oversized_request_head_is_refused() {
        let addr = start(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let big = format!("GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
        let _ = s.write_all(big.as_bytes()).await; // the server may close before it has read it all
        let reply = read_all(&mut s).await;
        assert!(!reply.contains("200 OK"), "{reply}");
    }
}
