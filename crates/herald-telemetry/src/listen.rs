//! Listening and accepting: listeners that edge threads can share, and accepting
//! without spinning on errors.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use hyper_util::server::graceful::GracefulConnection;
use parking_lot::Mutex;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Pending connections each listening socket queues (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds a listener (the edge's, the gRPC API's, the operations listener) with `SO_REUSEPORT`, so that each edge
/// thread can accept from a socket of its own on the same port: the kernel spreads
/// new connections over them, and no thread is woken for another's connection.
/// Must be called inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(reuse_port_listener(addr)?)
}

/// A non-blocking listening socket with `SO_REUSEADDR` and `SO_REUSEPORT`.
pub fn reuse_port_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    keep_reserve();
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Pause after a failed accept before the next try.
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// Least time between two log lines about failed accepts on one listener. Out of file
/// descriptors, accept fails at every retry (20 times a second); one line with a
/// count per interval says the same.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The failure logs of the listeners, by name. Process-wide on purpose: running out of
/// file descriptors is a condition of the process, so the edge threads' listeners
/// (all named "edge") share one count and one rate instead of each logging.
static FAILURE_LOGS: Mutex<Vec<(&'static str, FailureLog)>> = Mutex::new(Vec::new());

/// The next accepted connection. Accept errors (out of file descriptors, typically)
/// are retried after a short pause instead of spinning, and logged at most once per
/// [`FAILURE_LOG_INTERVAL`] per listener, with how many accepts failed since the last
/// line. Cancel-safe, so it can race a shutdown signal in `select!`.
pub async fn accept(listener: &TcpListener, what: &'static str) -> TcpStream {
    let mut failed = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Only a call that saw failures looks at the shared log: accepting
                // stays lock-free while all is well.
                if failed && let Some(failures) = with_log(what, |log| log.accepted(Instant::now())) {
                    tracing::info!(listener = what, failures, "accepting again after failed accepts");
                }
                return stream;
            }
            Err(e) => {
                failed = true;
                if let Some(failures) = with_log(what, |log| log.failed(Instant::now())) {
                    tracing::warn!(error = %e, listener = what, failures, "accept failed");
                }
                // Out of files, the connections waiting to be accepted would wait
                // until their clients give up, while other processes sharing the port
                // (`SO_REUSEPORT`) could take them: turn one away now.
                if out_of_files(&e) && shed(listener) {
                    metrics::counter!(crate::Metric::ConnectionsShed.name(), "listener" => what).increment(1);
                    continue;
                }
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Raises the process's soft limit on open files to its hard limit (as the Go runtime
/// does: the soft limit is often 1,024 where the hard one is far higher, and every
/// connection is a file) and returns the limit in force (`u64::MAX`: unlimited).
pub fn raise_file_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
    let current = match limit.current != limit.maximum && setrlimit(Resource::Nofile, raised).is_ok() {
        true => limit.maximum,
        false => limit.current,
    };
    current.unwrap_or(u64::MAX)
}

/// An edge's connection cap when none is configured: its open-file limit less a
/// reserve (a tenth, at most 1,000) for what else it holds open — Redis, the gRPC
/// API, the operations listener, the event log.
pub fn default_max_connections(file_limit: u64) -> usize {
    let reserve = (file_limit / 10).min(1_000);
    usize::try_from(file_limit - reserve).unwrap_or(usize::MAX).max(1)
}

/// A file held in reserve, so that a process out of file descriptors can still
/// accept a connection to turn it away (see [`shed`]).
static RESERVE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Opens the reserve file if it is not open (while files are to be had).
fn keep_reserve() {
    let mut reserve = RESERVE.lock();
    if reserve.is_none() {
        *reserve = std::fs::File::open("/dev/null").ok();
    }
}

fn out_of_files(e: &io::Error) -> bool {
    // EMFILE (the process's limit) and ENFILE (the system's).
    matches!(e.raw_os_error(), Some(24 | 23))
}

/// Accepts one waiting connection with the reserve file's descriptor and closes it at
/// once, after a `503` for an HTTP client (a WebSocket client reconnects, and with
/// `SO_REUSEPORT` most likely reaches another process). False if there was no
/// reserve or nothing to accept.
fn shed(listener: &TcpListener) -> bool {
    let mut reserve = RESERVE.lock();
    if reserve.take().is_none() {
        return false;
    }
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let shed = match listener.poll_accept(&mut cx) {
        std::task::Poll::Ready(Ok((stream, _))) => {
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            );
            true
        }
        _ => false,
    };
    *reserve = std::fs::File::open("/dev/null").ok();
    shed
}

fn with_log<T>(what: &'static str, f: impl FnOnce(&mut FailureLog) -> T) -> T {
    let mut logs = FAILURE_LOGS.lock();
    let index = match logs.iter().position(|(name, _)| *name == what) {
        Some(index) => index,
        None => {
            logs.push((what, FailureLog::new(FAILURE_LOG_INTERVAL)));
            logs.len() - 1
        }
    };
    f(&mut logs[index].1)
}

/// Counts failures and decides when they are worth a log line: the first at once,
/// then at most one line per `interval`, each saying how many failed since the last.
/// Time is passed in, so it is tested without a clock. What failed in the last
/// interval before the failures stop is reported with the next failure or recovery
/// after the interval, if any.
#[derive(Debug)]
struct FailureLog {
    interval: Duration,
    /// When the last line was logged.
    last_line: Option<Instant>,
    /// Failures since that line.
    unreported: u64,
}

impl FailureLog {
    fn new(interval: Duration) -> Self {
        Self { interval, last_line: None, unreported: 0 }
    }

    /// A failure at `now`: the number of failures to log now, if a line is due.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        self.due(now)
    }

    /// A success after failures, at `now`: the failures still unreported, if a line
    /// is due.
    fn accepted(&mut self, now: Instant) -> Option<u64> {
        self.due(now)
    }

    fn due(&mut self, now: Instant) -> Option<u64> {
        let quiet = self.last_line.is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if self.unreported == 0 || !quiet {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// Drives a hyper server connection until it ends or `stop` is cancelled; then it
/// finishes what is in flight and closes (HTTP/1.1: after the current response,
/// HTTP/2: GOAWAY, then the open streams). `what` names the listener in the debug log
/// of a connection that ends with an error.
// Not an `async fn`: the future it would infer is not provably `Send` for hyper's
// HTTP/2 connection (rustc's higher-ranked lifetime limitation), so the signature says so.
#[allow(clippy::manual_async_fn)]
pub fn serve_until_stopped<C>(
    connection: C,
    stop: CancellationToken,
    what: &'static str,
) -> impl std::future::Future<Output = ()> + Send
where
    C: GracefulConnection + Send,
    C::Error: std::fmt::Display + Send,
{
    async move {
        tokio::pin!(connection);
        let result = tokio::select! {
            result = &mut connection => result,
            _ = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "{what} connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_a_reserve_of_files() {
        assert_eq!(default_max_connections(20_000), 19_000);
        assert_eq!(default_max_connections(1_048_576), 1_047_576);
        assert_eq!(default_max_connections(1_024), 922);
        assert_eq!(default_max_connections(64), 58);
        assert_eq!(default_max_connections(0), 1);
        assert!(default_max_connections(u64::MAX) > 1 << 40, "unlimited");
    }

    #[test]
    fn the_file_limit_is_raised_to_the_hard_limit() {
        let limit = raise_file_limit();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, now.maximum);
        assert_eq!(limit, now.maximum.unwrap_or(u64::MAX));
    }

    #[test]
    fn failures_are_logged_once_per_interval_with_a_count() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut log = FailureLog::new(Duration::from_secs(10));
        assert_eq!(log.failed(at(0)), Some(1), "the first failure is logged at once");
        // 20 failures a second for 30 s: one line per 10 s, counting every failure.
        let mut lines = Vec::new();
        for tick in 1..=600 {
            if let Some(count) = log.failed(at(tick * 50)) {
                lines.push((tick * 50, count));
            }
        }
        assert_eq!(lines, vec![(10_000, 200), (20_000, 200), (30_000, 200)]);
    }

    #[test]
    fn recovery_reports_what_is_left_when_a_line_is_due() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut log = FailureLog::new(Duration::from_secs(10));
        assert_eq!(log.accepted(at(0)), None, "nothing failed");
        assert_eq!(log.failed(at(0)), Some(1));
        assert_eq!(log.failed(at(1)), None);
        assert_eq!(log.failed(at(2)), None);
        // Accepting again within the interval stays quiet: successes between
        // failures at the fd limit must not make every failure a line.
        assert_eq!(log.accepted(at(3)), None);
        assert_eq!(log.failed(at(4)), None);
        assert_eq!(log.accepted(at(12)), Some(3), "the failures since the last line");
        assert_eq!(log.accepted(at(30)), None, "already reported");
        assert_eq!(log.failed(at(31)), Some(1), "a new episode is logged at once");
    }
}
