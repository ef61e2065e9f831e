//! Shutdown on a signal.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub(crate) async fn cancel_on_terminate(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let signal = tokio::select! {
        _ = terminate => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    token.cancel();
    tracing::info!("{signal} received");
}
