//! Connections opened and dropped while a fan-out runs (`--churn`).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use serde_json::json;

use crate::{
    connect::target_of,
    fanout::FanoutArgs,
    pusher::{PusherConn, source_address},
};

/// Connections opened and dropped while the fan-out runs.
#[derive(Default)]
pub(super) struct Churn {
    opened: AtomicU64,
    failed: AtomicU64,
    /// Microseconds from connect to subscription ack.
    setup: Mutex<Vec<u64>>,
}

impl Churn {
    /// Opens `args.churn` connections a second for `args.seconds`, each held for
    /// `args.churn_hold` seconds then dropped without a close handshake (as a
    /// vanishing mobile client does). Their deliveries are not counted.
    pub(super) async fn run(&self, args: &FanoutArgs, channels: usize) {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(args.seconds);
        let mut opened = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut holds = tokio::task::JoinSet::new();
        while Instant::now() < end {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * args.churn) as u64;
            while opened < due {
                opened += 1;
                let (target, key) =
                    (target_of(&args.subscribers.target, opened as usize), args.subscribers.key.clone());
                let channel = format!("c{}", opened as usize % channels);
                let source = source_address(opened as usize + 127);
                let hold = Duration::from_secs_f64(args.churn_hold);
                holds.spawn(async move {
                    let started = Instant::now();
                    let mut conn = PusherConn::connect(target, Some(source), &key).await?;
                    conn.subscribe(&channel).await?;
                    let setup = started.elapsed().as_micros() as u64;
                    tokio::time::sleep(hold).await;
                    anyhow::Ok(setup)
                });
            }
            while let Some(done) = holds.try_join_next() {
                self.record(done);
            }
        }
        while let Some(done) = holds.join_next().await {
            self.record(done);
        }
    }

    fn record(&self, done: Result<anyhow::Result<u64>, tokio::task::JoinError>) {
        match done {
            Ok(Ok(setup)) => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                self.setup.lock().push(setup);
            }
            _ => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn report(&self, seconds: f64) -> serde_json::Value {
        let mut setup = self.setup.lock().clone();
        setup.sort_unstable();
        let at = |q: f64| setup.get(((setup.len() as f64 - 1.0) * q) as usize).map(|us| *us as f64 / 1000.0);
        let opened = self.opened.load(Ordering::Relaxed);
        json!({
            "opened": opened,
            "failed": self.failed.load(Ordering::Relaxed),
            "per_second": opened as f64 / seconds,
            "setup_ms": { "p50": at(0.5), "p99": at(0.99) },
        })
    }
}
