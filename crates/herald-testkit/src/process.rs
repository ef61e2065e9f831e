//! A child process whose output a failing test shows: its stderr is read line by line
//! (so the process never blocks on a full pipe) and kept, and printed when the
//! process is dropped during a panic (always, with `HERALD_TEST_OUTPUT` set). Killed
//! (SIGKILL) on drop.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

/// How many of the last lines are kept and shown.
const KEPT_LINES: usize = 1000;

pub struct Process {
    label: String,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `command` (stdout discarded, stderr kept) and returns once a line of its
    /// stderr contains `ready`, with that line. Panics with its output if it exits first.
    pub fn start(label: &str, mut command: Command, ready: &str) -> (Self, String) {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let process = Self { label: label.to_owned(), child, output: output.clone() };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            // Bytes, not `lines()`: a line that is not UTF-8 must not stop the
            // reading (the child would block once the pipe filled).
            for line in stderr.split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line)).into_owned();
                if line.contains(&ready)
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(line.clone());
                }
                let mut kept = output.lock().unwrap();
                if kept.len() == KEPT_LINES {
                    kept.remove(0);
                }
                kept.push(line);
            }
        });
        match ready_rx.recv() {
            Ok(line) => (process, line),
            Err(_) => panic!("{label} exited before it was ready:\n{}", process.output()),
        }
    }

    /// `herald ROLE` (the binary at `binary`) on ports the kernel picks, with `env`,
    /// running once it logged `ready`; with that line, whose `name=address` fields
    /// [`address`] reads.
    pub fn herald<'a>(
        binary: &str,
        role: &str,
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
        ready: &str,
    ) -> (Self, String) {
        let mut command = Command::new(binary);
        command.args([role, "--port", "0", "--metrics-port", "0", "--grpc-port", "0"]).envs(env);
        Self::start(&format!("herald {role}"), command, ready)
    }

    /// The kept lines of its stderr.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// SIGTERM (a graceful shutdown), and waits until it has exited.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }

    /// `kill -9`, and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address a ready line names as `name=ADDRESS` (quotes allowed), if it does.
pub fn address(ready_line: &str, name: &str) -> Option<std::net::SocketAddr> {
    let prefix = format!("{name}=");
    ready_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .and_then(|a| a.trim_matches('"').parse().ok())
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || std::env::var_os("HERALD_TEST_OUTPUT").is_some() {
            eprintln!("──── {} (last {KEPT_LINES} lines of stderr) ────\n{}", self.label, self.output());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line that is not UTF-8 neither stops the reading nor hides what follows.
    #[test]
    fn output_that_is_not_utf8_is_read_on() {
        let mut command = Command::new("sh");
        let script = "printf 'bad \\377 byte\\n' >&2; i=0; while [ $i -lt 5000 ]; do echo \"line $i\" >&2; i=$((i+1)); done; echo ready >&2; sleep 30";
        command.args(["-c", script]);
        let (mut process, line) = Process::start("sh", command, "ready");
        assert_eq!(line, "ready");
        assert!(process.output().contains("line 4999"));
        process.kill();
    }
}
