//! Accepting connections without spinning on errors.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The next accepted connection. Accept errors (out of file descriptors, typically)
/// are logged and retried after a short pause instead of spinning. Cancel-safe, so
/// it can race a shutdown signal in `select!`.
pub async fn accept(listener: &TcpListener, what: &'static str) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
