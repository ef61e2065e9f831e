//! A tonic transport over one hyper HTTP/2 connection: lets Rust programs (the load
//! generator, tests, a backend) call Herald's gRPC API without a second HTTP stack.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_proto::v1::publisher_client::PublisherClient;
//! let channel = herald_api::client::connect("127.0.0.1:50051".parse()?).await?;
//! let mut publisher = PublisherClient::with_origin(channel, "http://127.0.0.1:50051".parse()?);
//! # Ok(()) }
//! ```

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;

/// One HTTP/2 connection; clones share it (requests are multiplexed).
#[derive(Clone)]
pub struct H2Channel {
    sender: SendRequest<Body>,
    /// The task driving the connection; it stops with the last clone.
    _driver: std::sync::Arc<AbortOnDrop>,
}

/// A connection driver that ends when its channel is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects with 2 MiB receive windows.
pub async fn connect(addr: SocketAddr) -> std::io::Result<H2Channel> {
    connect_with_window(addr, 2 << 20).await
}

/// Connects with `window` bytes of HTTP/2 receive window (stream and connection).
pub async fn connect_with_window(addr: SocketAddr, window: u32) -> std::io::Result<H2Channel> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    over(stream, window).await
}

/// HTTP/2 over a connection already made (TLS with ALPN `h2`, say), with `window`
/// bytes of receive window.
pub async fn over(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    window: u32,
) -> std::io::Result<H2Channel> {
    let (sender, connection) = Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "gRPC client connection ended");
        }
    });
    Ok(H2Channel { sender, _driver: std::sync::Arc::new(AbortOnDrop(driver)) })
}

impl tower_service::Service<http::Request<Body>> for H2Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}
