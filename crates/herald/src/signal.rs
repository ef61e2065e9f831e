//! Shutdown on a signal.

use std::future::Future;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT. The handlers are installed by this
/// call, not when the returned future is first polled: a signal that arrives after the
/// process said it was running (before a spawned task got to run) is caught, not fatal.
/// Must be called inside a tokio runtime.
pub(crate) fn cancel_on_terminate(token: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| tracing::warn!(error = %e, "cannot listen for {name}")).ok()
    };
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    async move {
        let signal = tokio::select! {
            () = received(terminate) => "SIGTERM",
            () = received(interrupt) => "SIGINT",
        };
        token.cancel();
        tracing::info!("{signal} received");
    }
}

/// The next signal, or never if there is no handler.
async fn received(signal: Option<Signal>) {
    match signal {
        Some(mut signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
