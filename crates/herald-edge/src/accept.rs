//! Listening and accepting: listeners that edge threads can share, and accepting
//! without spinning on errors.

use std::{io, net::SocketAddr, time::Duration};

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// Pending connections each listening socket queues (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds a listener for [`crate::serve`] with `SO_REUSEPORT`, so that each edge
/// thread can accept from a socket of its own on the same port: the kernel spreads
/// new connections over them, and no thread is woken for another's connection.
/// Must be called inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(reuse_port_listener(addr)?)
}

/// A non-blocking listening socket with `SO_REUSEADDR` and `SO_REUSEPORT`.
pub(crate) fn reuse_port_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

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
