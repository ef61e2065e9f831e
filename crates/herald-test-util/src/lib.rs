//! Test support at the bottom of the workspace: it depends on no herald crate, so every
//! crate's tests can use it, including the backbone's conformance suite.
//!
//! - [`eventually`] / [`eventually_async`] / [`Deadline`]: wait for a *condition*, with a
//!   deadline that only bounds a failure (a passing test never waits it out). A fixed
//!   sleep hoping something happened is the flaky alternative these replace.
//! - [`tcp_pair`]: two connected loopback sockets, for code that owns a real socket.
//!
//! Helpers panic on failure: they are for tests only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for something that should happen promptly before it fails.
/// Generous on purpose: it is only reached when the behaviour is broken, and a loaded
/// 2-core CI machine can be slow.
pub const WAIT: Duration = Duration::from_secs(5);

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(10);

/// A point in time after which a wait fails. Measured on the real clock (not tokio's),
/// so a test with paused time can't run out of it by auto-advancing.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    within: Duration,
}

impl Deadline {
    pub fn after(within: Duration) -> Self {
        Self { at: Instant::now() + within, within }
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Runs `future` to completion, or panics naming `what` once the deadline passes.
    ///
    /// The deadline is checked every [`POLL`] rather than armed as one tokio timeout,
    /// which would run on tokio's clock: with paused time that clock jumps ahead as
    /// soon as the runtime idles, and would fail a wait the test is entitled to.
    pub async fn run<F: Future>(&self, future: F, what: impl FnOnce() -> String) -> F::Output {
        let mut future = std::pin::pin!(future);
        loop {
            tokio::select! {
                biased;
                output = &mut future => return output,
                () = tokio::time::sleep(POLL.min(self.remaining())) => {
                    if self.passed() {
                        break;
                    }
                }
            }
        }
        panic!("timed out after {:?} waiting for {}", self.within, what())
    }

    /// Before checking a condition again: panics naming `what` if the deadline passed,
    /// else pauses briefly.
    pub async fn poll_again(&self, what: impl FnOnce() -> String) {
        assert!(!self.passed(), "timed out after {:?} waiting for {}", self.within, what());
        tokio::time::sleep(POLL).await;
    }

    /// [`Deadline::poll_again`] for code without a runtime (child processes, files):
    /// blocks the thread for the pause.
    pub fn poll_again_blocking(&self, what: impl FnOnce() -> String) {
        assert!(!self.passed(), "timed out after {:?} waiting for {}", self.within, what());
        std::thread::sleep(POLL);
    }
}

/// Checks `condition` until it holds; panics naming `what` after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Deadline::after(WAIT);
    while !condition() {
        deadline.poll_again(|| what.to_owned()).await;
    }
}

/// [`eventually`] with a condition that has to await (a connection attempt, a query).
pub async fn eventually_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Deadline::after(WAIT);
    while !deadline.run(condition(), || what.to_owned()).await {
        deadline.poll_again(|| what.to_owned()).await;
    }
}

/// Calls `probe` until it returns `Ok`, and returns that; panics after `within` with
/// the last `Err`, which says what was seen instead ("3 of 5 messages: [...]").
pub async fn wait_until<T>(within: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Deadline::after(within);
    loop {
        match probe() {
            Ok(done) => return done,
            Err(seen) => deadline.poll_again(|| seen).await,
        }
    }
}

/// [`wait_until`] for code without a runtime (child processes, files): blocks the
/// thread between probes.
pub fn wait_until_blocking<T>(within: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Deadline::after(within);
    loop {
        match probe() {
            Ok(done) => return done,
            Err(seen) => deadline.poll_again_blocking(|| seen),
        }
    }
}

/// Two connected loopback TCP sockets: `(accepted, connected)`, the server's side first.
pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
    let connected = TcpStream::connect(listener.local_addr().unwrap()).await.expect("connecting");
    let (accepted, _) = listener.accept().await.expect("accepting");
    (accepted, connected)
}

/// Property-test strategies shared by the crates that parse untrusted JSON.
#[cfg(feature = "proptest")]
pub mod strategy {
    use proptest::{
        collection::{btree_map, vec},
        prelude::*,
    };
    use serde_json::Value;

    /// Any JSON value, nested up to three levels; floats only when `floats` (they need
    /// not survive a round trip exactly, so tests of round trips leave them out).
    pub fn json_value(floats: bool) -> impl Strategy<Value = Value> {
        let float =
            if floats { any::<f64>().prop_map(Value::from).boxed() } else { Just(Value::Null).boxed() };
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            float,
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                btree_map(".{0,6}", inner, 0..4).prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        sync::atomic::{AtomicU32, Ordering},
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn eventually_returns_once_the_condition_holds() {
        let calls = Cell::new(0);
        eventually("the third check", || {
            calls.set(calls.get() + 1);
            calls.get() == 3
        })
        .await;
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    async fn eventually_async_awaits_the_condition() {
        let calls = AtomicU32::new(0);
        eventually_async("the second check", || async { calls.fetch_add(1, Ordering::Relaxed) == 1 }).await;
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 30ms waiting for 2 of 3: [1, 2]")]
    async fn wait_until_fails_with_what_it_saw_last() {
        wait_until(Duration::from_millis(30), || Err::<(), _>("2 of 3: [1, 2]".to_owned())).await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a reply")]
    async fn a_future_past_the_deadline_fails() {
        Deadline::after(Duration::from_millis(10))
            .run(std::future::pending::<()>(), || "a reply".into())
            .await;
    }

    #[test]
    fn wait_until_blocking_returns_what_the_probe_found() {
        let mut calls = 0;
        let found = wait_until_blocking(WAIT, || {
            calls += 1;
            if calls == 3 { Ok(calls * 10) } else { Err(format!("{calls} calls")) }
        });
        assert_eq!(found, 30);
    }

    #[test]
    #[should_panic(expected = "waiting for a file")]
    fn wait_until_blocking_fails_after_the_deadline() {
        wait_until_blocking(Duration::from_millis(30), || Err::<(), _>("a file".to_owned()));
    }

    /// With paused time, tokio's clock jumps to the next timer whenever the runtime
    /// idles; the deadline is on the real clock, so a wait of a virtual minute is fine.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_not_run_out_by_paused_time() {
        let minute = tokio::time::sleep(Duration::from_secs(60));
        Deadline::after(WAIT).run(minute, || "a virtual minute".into()).await;
    }

    #[tokio::test]
    async fn the_pair_is_connected_both_ways() {
        let (mut server, mut client) = tcp_pair().await;
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
}
