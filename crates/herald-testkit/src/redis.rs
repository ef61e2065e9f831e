//! A real `redis-server` for a test, on a port of its own, stopped on drop. Fails
//! loudly when Redis is not installed (`scripts/install-test-deps.sh` installs it).
//!
//! `redis-server --port 0` disables TCP instead of picking a port, so each server is
//! started on candidate ports and checked to listen on them itself, and started
//! again on others if it could not bind (see [`crate::ports`]). Its log goes to
//! `herald-redis-PORT.log` in the temp directory, quoted when it fails to start.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use herald_test_util::wait_until_blocking;

use crate::ports;

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

/// `redis-server` with the arguments every test server shares: loopback only, no
/// persistence, its log in [`log_path`].
fn redis_command(port: u16) -> Command {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--logfile", &log_path(port).display().to_string()])
        .stdout(Stdio::null());
    command
}

fn spawn(mut command: Command) -> Child {
    command.spawn().expect("redis-server is required (scripts/install-test-deps.sh installs it)")
}

fn log_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("herald-redis-{port}.log"))
}

fn log(port: u16) -> String {
    std::fs::read_to_string(log_path(port)).unwrap_or_default()
}

impl RedisServer {
    pub fn start() -> Self {
        let (child, ports) =
            ports::spawn_listening("redis-server", 1, |p| spawn(redis_command(p[0])), |p| log(p[0]));
        Self { child, port: ports[0] }
    }

    /// Starts one on `port` (a restart, after [`RedisServer::stop`]), empty. Panics if
    /// the port was taken in the meantime: a restart must keep its port.
    pub fn start_on(port: u16) -> Self {
        let mut child = spawn(redis_command(port));
        if let Err(e) = ports::wait_listening(&mut child, &[port], Duration::from_secs(10)) {
            panic!("redis-server could not listen on port {port} again ({e:?}):\n{}", log(port));
        }
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stalls the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Ends a [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("kill is required");
        assert!(status.success(), "kill -s {signal} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(log_path(self.port));
        }
    }
}

/// A real Redis Cluster for a test: six `redis-server`s (three masters, three
/// replicas) on free ports, joined with `redis-cli --cluster create`; stopped on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("herald-redis-cluster-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self { nodes: Vec::new(), ports: Vec::new(), dir: dir.clone() };
        // Each node listens on two ports: clients, and the cluster bus (by default
        // port + 10000, which does not exist for ports above 55535: given explicitly).
        for _ in 0..6 {
            let node = |ports: &[u16]| {
                let node_dir = dir.join(ports[0].to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                let mut command = redis_command(ports[0]);
                command
                    .current_dir(&node_dir)
                    .args(["--cluster-enabled", "yes", "--cluster-port", &ports[1].to_string()])
                    .args(["--cluster-config-file", "nodes.conf"]);
                spawn(command)
            };
            let (child, ports) =
                ports::spawn_listening("redis-server (cluster node)", 2, node, |p| log(p[0]));
            cluster.nodes.push(child);
            cluster.ports.push(ports[0]);
        }
        let ports = cluster.ports.clone();
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli is required (it comes with redis-server)");
        assert!(created.success(), "redis-cli --cluster create failed");
        // Every node must agree the cluster is up before it takes commands.
        for port in &ports {
            wait_until_blocking(Duration::from_secs(20), || {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                let info = String::from_utf8_lossy(&info.stdout);
                if info.contains("cluster_state:ok") {
                    Ok(())
                } else {
                    Err(format!("the cluster to come up on port {port}: {info}"))
                }
            });
        }
        cluster
    }

    /// Seed URLs: every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}/")).collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        if !std::thread::panicking() {
            self.ports.iter().for_each(|port| drop(std::fs::remove_file(log_path(*port))));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
