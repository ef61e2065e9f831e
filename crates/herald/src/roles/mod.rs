//! One module per role. `dev` and `edge` serve a node (`node` holds what they share);
//! `dispatcher` delivers webhooks. Each takes the validated [`Config`], composes its
//! parts from `wiring`, and runs until SIGTERM/SIGINT, then drains within the grace
//! period.
//!
//! [`Config`]: crate::config::Config

pub(crate) mod dev;
pub(crate) mod dispatcher;
pub(crate) mod edge;
mod node;

use std::sync::Arc;

use herald_telemetry::{PrometheusHandle, Readiness};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// The operations listener (`/healthz`, `/readyz`, `/metrics`) of a role, stopped by
/// [`Ops::stop`].
struct Ops {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Ops {
    fn start(listener: TcpListener, ready: Readiness, metrics: PrometheusHandle) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(herald_telemetry::serve_ops(
            listener,
            ready,
            metrics,
            stop.clone().cancelled_owned(),
        ));
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Readiness that is true until [`Ready::clear`] (a role without a node).
#[derive(Clone, Default)]
struct Ready(Arc<std::sync::atomic::AtomicBool>);

impl Ready {
    fn new() -> Self {
        Self(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }

    fn readiness(&self) -> Readiness {
        let ready = self.0.clone();
        Arc::new(move || match ready.load(std::sync::atomic::Ordering::Relaxed) {
            true => Ok(()),
            false => Err("shutting down"),
        })
    }

    fn clear(&self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}
