//! A real `redis-server` for a test, on a port of its own, stopped on drop. Fails
//! loudly when Redis is not installed (`scripts/install-test-deps.sh` installs it).
//!
//! `redis-server --port 0` disables TCP instead of picking a port, so each server is
//! started on candidate ports and checked to listen on them itself, and started
//! again on others if it could not bind (see [`crate::ports`]). Its log goes to
//! `herald-redis-PORT.log` in the temp directory, quoted when it fails to start.
//!
//! With [`Tls`], a server speaks TLS only (`--port 0 --tls-port P`), with a certificate
//! from a [`TestCa`], optionally requiring client certificates and with ACL users in
//! place of the default one; a Redis Cluster's nodes then talk TLS to each other too.
//! Debian's `redis-server` is built with TLS; one without it fails these tests loudly.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use herald_test_util::wait_until_blocking;

use crate::{
    ports,
    tls::{Issued, TestCa},
};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    tls: Option<Tls>,
}

/// How a test Redis is secured: TLS with a certificate from a test CA, and optionally
/// a required client certificate and an ACL user for Herald (the default user is then
/// off: only that user and [`Tls::admin`] get in).
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA that signed the server's certificate (clients trust it).
    pub ca_file: PathBuf,
    /// The server's certificate and key (for `localhost` and 127.0.0.1); also the
    /// certificate Redis Cluster nodes present to each other, and a client
    /// certificate the CA signed ([`Tls::client`]).
    pub server: Issued,
    /// `--tls-auth-clients yes`: a client must present a certificate from the CA.
    pub require_client_certificate: bool,
    /// Herald's user, with the least privileges the README asks for: the keys and
    /// channels under the prefix `herald`, no `@dangerous` command. The default user
    /// is then off: besides it, only [`Tls::admin`] gets in.
    pub user: Option<AclUser>,
}

/// The rules of Herald's ACL user (the README recommends them for prefix `herald`).
pub const HERALD_ACL: [&str; 5] = ["~herald:*", "~{herald:*", "&herald:*", "+@all", "-@dangerous"];

#[derive(Debug, Clone)]
pub struct AclUser {
    pub name: String,
    pub password: String,
}

impl Tls {
    /// TLS with a certificate from `ca`; no client certificate required, the default user.
    pub fn new(ca: &TestCa) -> Self {
        Self {
            ca_file: ca.ca_file(),
            server: ca.issue("redis-server"),
            require_client_certificate: false,
            user: None,
        }
    }

    /// Clients must present a certificate from the CA (`--tls-auth-clients yes`).
    pub fn require_client_certificate(mut self) -> Self {
        self.require_client_certificate = true;
        self
    }

    /// Herald signs in as `name` with `password` ([`HERALD_ACL`]); the default user
    /// is off.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.user = Some(AclUser { name: name.into(), password: password.into() });
        self
    }

    /// With [`Tls::user`], the user with every privilege that the test kit (and a test
    /// that inspects or flushes Redis) signs in as, and that replicas replicate as.
    pub fn admin(&self) -> Option<AclUser> {
        self.user.as_ref().map(|_| AclUser { name: "admin".into(), password: "admin-password".into() })
    }

    /// A client certificate the CA signed.
    pub fn client(&self) -> &Issued {
        &self.server
    }

    /// The server's arguments: TLS only, on `port`.
    fn server_args(&self, port: u16) -> Vec<String> {
        let mut args: Vec<String> = vec!["--port".into(), "0".into(), "--tls-port".into(), port.to_string()];
        for (option, path) in [
            ("--tls-cert-file", &self.server.cert_file),
            ("--tls-key-file", &self.server.key_file),
            ("--tls-ca-cert-file", &self.ca_file),
        ] {
            args.extend([option.to_owned(), path.display().to_string()]);
        }
        let clients = if self.require_client_certificate { "yes" } else { "no" };
        args.extend(["--tls-auth-clients".into(), clients.into()]);
        if let (Some(user), Some(admin)) = (&self.user, self.admin()) {
            args.extend(["--user".into(), user.name.clone(), "on".into(), format!(">{}", user.password)]);
            args.extend(HERALD_ACL.map(String::from));
            let admin_password = format!(">{}", admin.password);
            args.extend(
                ["--user", &admin.name, "on", &admin_password, "~*", "&*", "+@all"].map(String::from),
            );
            args.extend(["--user", "default", "off"].map(String::from));
        }
        args
    }

    /// `redis-cli`'s arguments to reach such a server.
    fn cli_args(&self) -> Vec<String> {
        let mut args: Vec<String> =
            vec!["--tls".into(), "--cacert".into(), self.ca_file.display().to_string()];
        args.extend(["--cert".into(), self.server.cert_file.display().to_string()]);
        args.extend(["--key".into(), self.server.key_file.display().to_string()]);
        if let Some(admin) = self.admin() {
            args.extend(
                ["--user", &admin.name, "--pass", &admin.password, "--no-auth-warning"].map(String::from),
            );
        }
        args
    }
}

/// `redis-server` with the arguments every test server shares: loopback only, no
/// persistence, its log in [`log_path`]; on `port`, with TLS if `tls`.
fn redis_command(port: u16, tls: Option<&Tls>) -> Command {
    let mut command = Command::new("redis-server");
    match tls {
        Some(tls) => command.args(tls.server_args(port)),
        None => command.args(["--port", &port.to_string()]),
    };
    command
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
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
        Self::start_secured(None)
    }

    /// A server that speaks TLS only, secured as `tls` says.
    pub fn start_tls(tls: &Tls) -> Self {
        Self::start_secured(Some(tls.clone()))
    }

    fn start_secured(tls: Option<Tls>) -> Self {
        let (child, ports) = ports::spawn_listening(
            "redis-server",
            1,
            |p| spawn(redis_command(p[0], tls.as_ref())),
            |p| log(p[0]),
        );
        Self { child, port: ports[0], tls }
    }

    /// Starts one on `port` (a restart, after [`RedisServer::stop`]), empty. Panics if
    /// the port was taken in the meantime: a restart must keep its port.
    pub fn start_on(port: u16) -> Self {
        let mut child = spawn(redis_command(port, None));
        if let Err(e) = ports::wait_listening(&mut child, &[port], Duration::from_secs(10)) {
            panic!("redis-server could not listen on port {port} again ({e:?}):\n{}", log(port));
        }
        Self { child, port, tls: None }
    }

    /// `redis://127.0.0.1:PORT/`, or `rediss://` for a TLS server (no credentials).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Runs `redis-cli ARGS` against this server (over TLS, as its user, if it has
    /// them) and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, self.tls.as_ref(), args)
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
    tls: Option<Tls>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_secured(None)
    }

    /// A cluster whose nodes speak TLS only, to clients and to each other (cluster bus
    /// and replication), secured as `tls` says.
    pub fn start_tls(tls: &Tls) -> Self {
        Self::start_secured(Some(tls.clone()))
    }

    fn start_secured(tls: Option<Tls>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("herald-redis-cluster-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self { nodes: Vec::new(), ports: Vec::new(), dir: dir.clone(), tls: tls.clone() };
        // Each node listens on two ports: clients, and the cluster bus (by default
        // port + 10000, which does not exist for ports above 55535: given explicitly).
        for _ in 0..6 {
            let node = |ports: &[u16]| {
                let node_dir = dir.join(ports[0].to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                let mut command = redis_command(ports[0], tls.as_ref());
                command
                    .current_dir(&node_dir)
                    .args(["--cluster-enabled", "yes", "--cluster-port", &ports[1].to_string()])
                    .args(["--cluster-config-file", "nodes.conf"]);
                if let Some(tls) = &tls {
                    command.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
                    // Replicas sign in to their master as the admin (replication is
                    // `@dangerous`, which Herald's user may not run).
                    if let Some(admin) = tls.admin() {
                        command.args(["--masteruser", &admin.name, "--masterauth", &admin.password]);
                    }
                }
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
            .args(tls.as_ref().map(Tls::cli_args).unwrap_or_default())
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
                let info = cli(*port, tls.as_ref(), &["cluster", "info"]);
                if info.contains("cluster_state:ok") {
                    Ok(())
                } else {
                    Err(format!("the cluster to come up on port {port}: {info}"))
                }
            });
        }
        cluster
    }

    /// Seed URLs: every node (`rediss://` over TLS; no credentials).
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        self.ports.iter().map(|p| format!("{scheme}://127.0.0.1:{p}/")).collect()
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

/// `redis-cli -p PORT ARGS` (over TLS, as the user of `tls`, if any): what it printed.
fn cli(port: u16, tls: Option<&Tls>, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(tls.map(Tls::cli_args).unwrap_or_default())
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is required (it comes with redis-server)");
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
