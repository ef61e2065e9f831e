//! The processes of a scale run: a Redis, the edges (all on one port, with
//! `SO_REUSEPORT`), and what is read off them (memory, Redis INFO, the kernel's
//! socket memory).

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
    sync::mpsc,
};

use crate::server_stats;

/// Lines of a process's stderr kept for when it fails.
const KEPT_LINES: usize = 200;

/// A child process whose stderr is read (so it never blocks on a full pipe) and
/// kept; killed when dropped.
pub struct Process {
    pub name: String,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `command` and waits (at most `within`) for a stderr line containing
    /// `ready`, which it returns.
    pub async fn start(
        name: &str,
        mut command: Command,
        ready: &str,
        within: Duration,
    ) -> anyhow::Result<(Self, String)> {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("starting {name}"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = mpsc::channel(1);
        let (kept, ready) = (output.clone(), ready.to_owned());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(&ready)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.clone()).await;
                }
                let mut kept = kept.lock();
                if kept.len() == KEPT_LINES {
                    kept.remove(0);
                }
                kept.push(line);
            }
        });
        let process = Self { name: name.to_owned(), child, output };
        // The reader ends (closing the channel) when the process exits before it is ready.
        match tokio::time::timeout(within, rx.recv()).await {
            Ok(Some(line)) => Ok((process, line)),
            Ok(None) => bail!("{name} exited before it was ready:\n{}", process.output()),
            Err(_) => bail!("{name} did not get ready within {within:?}:\n{}", process.output()),
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Resident and anonymous memory, bytes.
    pub fn memory(&self) -> (u64, u64) {
        server_stats::sample(self.pid()).map(|s| (s.rss, s.anon)).unwrap_or_default()
    }

    /// `kill -9`, and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, and waits (at most `within`) for it to exit.
    pub async fn terminate(&mut self, within: Duration) -> anyhow::Result<()> {
        let pid = self.pid();
        Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                self.kill().await;
                bail!("{} did not exit within {within:?} of SIGTERM", self.name)
            }
        }
    }
}

/// A throwaway `redis-server` on loopback (no persistence).
pub async fn redis(port: u16) -> anyhow::Result<Process> {
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    command.args(["--maxclients", "100000", "--loglevel", "warning", "--logfile", ""]);
    // redis-server logs to stdout: the ready line is looked for on stderr, so wait
    // for the port instead.
    let mut command_out = command;
    command_out.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    let child = command_out.spawn().context("starting redis-server (is it installed?)")?;
    let process = Process { name: "redis".into(), child, output: Arc::default() };
    // In production Redis has cores of its own; here it shares two with a hundred
    // busy processes, and the scheduler would give it a hundredth of them. A higher
    // priority stands in for its own host (best effort: it needs root).
    let reniced = Command::new("renice")
        .args(["-n", "-10", "-p", &process.pid().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !reniced.is_ok_and(|status| status.success()) {
        eprintln!(
            "scale: could not raise redis-server's priority (renice -10): it competes with the edges for CPU"
        );
    }
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("redis-server did not listen on {port} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(process)
}

/// One `INFO all` reply of a Redis, as `field → value` (`cmdstat_*` values are
/// `calls=N,usec=…`).
pub async fn redis_info(port: u16) -> anyhow::Result<Vec<(String, String)>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n").await?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader.read_line(&mut head).await?;
    let length: usize = head.trim().strip_prefix('$').context("INFO reply")?.parse()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// Script runs (EVAL and EVALSHA calls). INFO's `total_commands_processed` counts
/// each of them and also every command a script runs.
pub fn script_calls(info: &[(String, String)]) -> u64 {
    info.iter()
        .filter(|(k, _)| k == "cmdstat_eval" || k == "cmdstat_evalsha")
        .filter_map(|(_, v)| v.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// Calls of every command (`cmdstat_<name>`), scripts' own included, by name.
pub fn calls_by_command(info: &[(String, String)]) -> std::collections::BTreeMap<String, u64> {
    info.iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("cmdstat_")?;
            let calls = v.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Calls of one command (`cmdstat_<name>`), scripts' own included.
pub fn command_calls(info: &[(String, String)], name: &str) -> u64 {
    let key = format!("cmdstat_{name}");
    info.iter()
        .filter(|(k, _)| *k == key)
        .filter_map(|(_, v)| v.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

pub fn info_number(info: &[(String, String)], field: &str) -> f64 {
    info.iter().find(|(k, _)| k == field).and_then(|(_, v)| v.parse().ok()).unwrap_or(0.0)
}

/// The kernel's TCP memory (bytes; `mem` of /proc/net/sockstat is in pages) and the
/// sockets in use.
pub fn kernel_tcp() -> (u64, u64) {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:")).unwrap_or("");
    let field = |name: &str| {
        let words: Vec<&str> = tcp.split_whitespace().collect();
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|at| words.get(at + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("mem") * 4096, field("inuse"))
}

/// The kernel's slab memory (bytes) of the caches sockets live in, from /proc/slabinfo
/// (root only): TCP sockets, their files, dentries and inodes, epoll entries.
pub fn kernel_socket_slabs() -> u64 {
    let slabinfo = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    let wanted = [
        "TCP",
        "sock_inode_cache",
        "filp",
        "dentry",
        "eventpoll_epi",
        "eventpoll_pwq",
        "tcp_bind_bucket",
        "request_sock_TCP",
    ];
    slabinfo
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // name active_objs num_objs objsize ...
            let (name, objects, size) =
                (w.first()?, w.get(2)?.parse::<u64>().ok()?, w.get(3)?.parse::<u64>().ok()?);
            wanted.contains(name).then_some(objects * size)
        })
        .sum()
}

/// Where the edges listen: the shared WebSocket address and each edge's gRPC address.
pub struct EdgeConfig {
    pub binary: String,
    pub port: u16,
    pub redis_port: u16,
    pub apps: String,
    pub grace: Duration,
    pub extra_env: Vec<(String, String)>,
}

pub struct Edge {
    pub process: Process,
    pub ws: SocketAddr,
    pub grpc: SocketAddr,
}

impl Edge {
    pub async fn start(config: &EdgeConfig, id: usize) -> anyhow::Result<Self> {
        let mut command = Command::new(&config.binary);
        command.args(["edge", "--port", &config.port.to_string(), "--metrics-port", "0", "--grpc-port", "0"]);
        command
            .env("HERALD_REDIS__URL", format!("redis://127.0.0.1:{}/", config.redis_port))
            .env("HERALD_APPS", &config.apps)
            .env("HERALD_SERVER__NODE_ID", (id + 1).to_string())
            .env("HERALD_SERVER__EDGE_THREADS", "1")
            .env("HERALD_SERVER__SHUTDOWN_GRACE", format!("{}ms", config.grace.as_millis()))
            .env("RUST_LOG", "warn,herald=info")
            .env("TOKIO_WORKER_THREADS", "1")
            .envs(config.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let (process, ready) =
            Process::start(&format!("edge {id}"), command, "is running", Duration::from_secs(60)).await?;
        let address = |name: &str| {
            let prefix = format!("{name}=");
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(prefix.as_str()))
                .and_then(|a| a.trim_matches('"').parse().ok())
                .with_context(|| format!("no {name} in {ready:?}"))
        };
        Ok(Self { process, ws: address("ws_addr")?, grpc: address("grpc_addr")? })
    }
}
