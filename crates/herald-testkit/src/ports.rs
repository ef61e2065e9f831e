//! Ports for servers that cannot bind port 0 and report it (`redis-server --port 0`
//! disables TCP; tansu must advertise the port it listens on).
//!
//! Guessing a free port and handing it over cannot be made safe: between the guess
//! and the server's bind, another process may take the port, and two guesses may
//! name the same port. So the guess is only a candidate, and the outcome is checked
//! rather than hoped for: [`spawn_listening`] starts the server on candidates, then
//! waits until the kernel shows that very process listening on every one of its
//! ports (its own sockets, found through `/proc`, so an answer from another process
//! on that port never passes for ours). A server that could not bind exits (redis
//! and tansu both do on `EADDRINUSE`), and it is started again on new candidates.
//! Whether a test passes never depends on a guess, only how many attempts it takes.
//!
//! Herald itself binds port 0 and reports its ports (`--ready-file`); so do the
//! test kit's own listeners (they keep the socket they bound).

use std::{collections::HashSet, process::Child, time::Duration};

use herald_test_util::Deadline;

/// Attempts on fresh candidates before giving up. Each failed attempt means some
/// other process took a candidate in the instant between the guess and the bind.
pub const ATTEMPTS: usize = 8;

/// How long one attempt may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `n` distinct candidate ports: bound together on `127.0.0.1:0` (so the kernel
/// gives `n` different ones, all free at that instant), released on return.
pub fn candidate_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0"))
        .collect();
    listeners.iter().map(|l| l.local_addr().expect("a bound listener has an address").port()).collect()
}

/// Inodes of the TCP sockets listening on `port` in the network namespace of `pid`.
fn listening_inodes(pid: u32, port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A"
                && local_port == Some(port)
                && let Ok(inode) = inode.parse()
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// Whether process `pid` itself holds a socket listening on TCP `port`.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(pid, port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(Result::ok).filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|target| {
        target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok())
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// Why a process did not come to listen on its ports.
#[derive(Debug)]
pub enum NotListening {
    /// It exited first (a port was taken, typically): try other ports.
    Exited(std::process::ExitStatus),
    /// It is still running but did not listen in time (it was killed).
    TimedOut,
}

/// Waits until `child` listens on every port of `ports`, or exits, or `timeout`
/// passes (then it is killed).
pub fn wait_listening(child: &mut Child, ports: &[u16], timeout: Duration) -> Result<(), NotListening> {
    let deadline = Deadline::after(timeout);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotListening::Exited(status));
        }
        if ports.iter().all(|port| listens_on(child.id(), *port)) {
            return Ok(());
        }
        if deadline.passed() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NotListening::TimedOut);
        }
        deadline.poll_again_blocking(String::new);
    }
}

/// Starts a server with `spawn(ports)` on `count` candidate ports until it listens
/// on all of them itself (see the module docs); returns it and its ports. `what`
/// names it in the panic after [`ATTEMPTS`] failures, `output` gives its output
/// for that message.
pub fn spawn_listening(
    what: &str,
    count: usize,
    mut spawn: impl FnMut(&[u16]) -> Child,
    output: impl Fn(&[u16]) -> String,
) -> (Child, Vec<u16>) {
    let mut failures = Vec::new();
    for _ in 0..ATTEMPTS {
        let ports = candidate_ports(count);
        let mut child = spawn(&ports);
        match wait_listening(&mut child, &ports, START_TIMEOUT) {
            Ok(()) => return (child, ports),
            Err(NotListening::TimedOut) => {
                panic!("{what} did not listen on {ports:?} within {START_TIMEOUT:?}:\n{}", output(&ports))
            }
            Err(NotListening::Exited(status)) => {
                failures.push(format!("{ports:?}: {status}: {}", output(&ports)))
            }
        }
    }
    panic!("{what} exited before listening, {ATTEMPTS} times:\n{}", failures.join("\n"));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn candidates_are_distinct() {
        let ports = candidate_ports(16);
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 16);
    }

    #[test]
    fn a_listener_belongs_to_the_process_that_holds_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        // Another process sees the same socket table, but does not hold the socket.
        let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(!listens_on(other.id(), port));
        let _ = other.kill();
        let _ = other.wait();
        drop(listener);
        assert!(!listens_on(std::process::id(), port));
    }
}
