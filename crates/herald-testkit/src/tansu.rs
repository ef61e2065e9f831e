//! A real Kafka-protocol broker for a test: [tansu](https://github.com/tansu-io/tansu)
//! on a port of its own, killed on drop. tansu advertises the port it listens on, so
//! it is given one: started on a candidate port, checked to listen on it itself, and
//! started again on another if it could not bind (see [`crate::ports`]). Fails loudly when tansu is not installed
//! (`scripts/install-test-deps.sh` installs it); `HERALD_TANSU` names another binary.
//!
//! tansu does not create topics implicitly: create them through the admin API.
//! Its output goes to `herald-tansu-PORT.log` in the temp directory, quoted when it
//! fails to start and kept when the test fails.
//!
//! ## TLS and SASL ([`Tansu::start_with`])
//!
//! tansu 0.6 has `--cert` and `--key` options but cannot serve TLS: clap declares
//! both in one argument group, which makes them exclusive (given both, tansu refuses
//! to start), and the broker drops the TLS acceptor it builds (`let _acceptor = ...`
//! in `tansu-broker/src/broker.rs`, unchanged on tansu's main branch). So TLS is
//! terminated in front of it, by rustls in the test process ([`TlsOptions`]): tansu
//! listens in plain TCP on one port and advertises the front's port, so every
//! connection a client makes, bootstrap and brokers alike, is TLS. The client's side
//! of it, which is what Herald's tests are about, is the real thing.
//!
//! SASL is tansu's own (`--authentication`): SCRAM-SHA-256/512 checked against
//! credentials stored by `tansu user create` (so only with sqlite storage: the
//! memory engine stores none), and PLAIN, which tansu 0.6 accepts with any password.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{ports, tls::Issued};

/// The in-memory storage engine: everything is lost when the broker stops.
pub const MEMORY_STORAGE: &str = "memory://tansu/";

/// How to start a broker (see [`Tansu::start_with`]).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The storage engine; `None`: memory, or sqlite in a temporary directory when
    /// there are [`Options::scram_users`].
    pub storage: Option<String>,
    /// Serve TLS (in front of tansu: see the module docs).
    pub tls: Option<TlsOptions>,
    /// Users allowed in with SCRAM; with any, the broker requires SASL
    /// authentication (`--authentication`) on every connection.
    pub scram_users: Vec<ScramUser>,
}

/// The TLS a broker serves.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The broker's certificate and key.
    pub server: Issued,
    /// Require a client certificate issued by this CA (a PEM file).
    pub client_ca: Option<PathBuf>,
}

/// A user that can authenticate with SCRAM.
#[derive(Debug, Clone)]
pub struct ScramUser {
    pub name: String,
    pub password: String,
    /// SCRAM-SHA-512 if true, else SCRAM-SHA-256.
    pub sha512: bool,
}

impl ScramUser {
    pub fn sha512(name: &str, password: &str) -> Self {
        Self { name: name.into(), password: password.into(), sha512: true }
    }

    pub fn sha256(name: &str, password: &str) -> Self {
        Self { name: name.into(), password: password.into(), sha512: false }
    }
}

/// How tansu itself is started, the same at every restart.
#[derive(Debug, Clone)]
struct Launch {
    storage: String,
    /// The port clients are told to connect to, when it is not tansu's own.
    advertised: Option<u16>,
    authentication: bool,
}

pub struct Tansu {
    child: Option<Child>,
    /// The port tansu itself listens on.
    pub port: u16,
    launch: Launch,
    /// TLS in front of tansu, if it serves TLS.
    front: Option<TlsFront>,
    /// The sqlite database made for SCRAM users.
    _storage_dir: Option<tempfile::TempDir>,
    /// How much of the log file was written before the current process started.
    log_start: u64,
}

impl Tansu {
    /// A broker on a free port, storing in memory.
    pub fn start() -> Self {
        Self::start_with_storage(MEMORY_STORAGE)
    }

    /// A broker on a free port with the storage engine `storage` (`sqlite:///ABSOLUTE/PATH`
    /// keeps topics, records and committed offsets across a [`Tansu::restart`]).
    ///
    /// tansu opens a sqlite file relative to its working directory, whatever the
    /// URL says (`sqlite:///tmp/t.db` is `$PWD/tmp/t.db`); it runs in `/` here, so
    /// an absolute path means what it says.
    pub fn start_with_storage(storage: &str) -> Self {
        Self::start_with(Options { storage: Some(storage.to_owned()), ..Options::default() })
    }

    /// A broker on free ports, with TLS and SCRAM users as `options` say.
    pub fn start_with(options: Options) -> Self {
        let mut storage_dir = None;
        let storage = match (&options.storage, options.scram_users.is_empty()) {
            (Some(storage), _) => storage.clone(),
            (None, true) => MEMORY_STORAGE.to_owned(),
            (None, false) => {
                let dir = tempfile::Builder::new().prefix("herald-tansu-").tempdir().unwrap();
                let url = format!("sqlite://{}/tansu.db", dir.path().display());
                storage_dir = Some(dir);
                url
            }
        };
        if !options.scram_users.is_empty() {
            create_users(&storage, &options.scram_users);
        }
        // The front's port is known before tansu starts, which must advertise it;
        // tansu's own port is the one to pass to the front.
        let front = options.tls.as_ref().map(TlsFront::bind);
        let launch = Launch {
            storage,
            advertised: front.as_ref().map(|f| f.port),
            authentication: !options.scram_users.is_empty(),
        };
        let (child, ports) = ports::spawn_listening(
            "tansu",
            1,
            |p| spawn(p[0], &launch),
            |p| std::fs::read_to_string(log_path(p[0])).unwrap_or_default(),
        );
        let port = ports[0];
        let front = front.map(|f| f.serve(port));
        Self { child: Some(child), port, launch, front, _storage_dir: storage_dir, log_start: 0 }
    }

    /// A broker on `port` with the storage engine `storage`; panics if it cannot
    /// listen there.
    pub fn start_on(port: u16, storage: &str) -> Self {
        let launch = Launch { storage: storage.to_owned(), advertised: None, authentication: false };
        let mut tansu = Self { child: None, port, launch, front: None, _storage_dir: None, log_start: 0 };
        tansu.respawn();
        tansu
    }

    /// Starts tansu again on its port (which a restart must keep).
    fn respawn(&mut self) {
        assert!(self.child.is_none(), "tansu is already running on port {}", self.port);
        self.log_start = std::fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let mut child = spawn(self.port, &self.launch);
        if let Err(e) = ports::wait_listening(&mut child, &[self.port], Duration::from_secs(10)) {
            let output = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            panic!("tansu did not listen on port {} ({e:?}):\n{output}", self.port);
        }
        self.child = Some(child);
    }

    /// Where tansu's output goes.
    pub fn log_path(&self) -> PathBuf {
        log_path(self.port)
    }

    /// `host:port`, as librdkafka's `bootstrap.servers` wants it: the TLS port if
    /// the broker serves TLS.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.front.as_ref().map_or(self.port, |f| f.port))
    }

    /// Whether the running broker has panicked (its output says so). tansu 0.6's sqlite
    /// storage can panic on a produce right after a restart ("more or less than one
    /// row" in its idempotent-producer check) and then answers nothing: a broker
    /// that is not back, whatever its clients do.
    pub fn crashed(&self) -> bool {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(self.log_start).unwrap_or(usize::MAX).min(log.len());
        String::from_utf8_lossy(&log[start..]).contains("panicked at")
    }

    /// Kills the broker (SIGKILL: no chance to flush anything).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and storage (after [`Tansu::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        self.respawn();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("──── tansu's output is kept in {} ────", self.log_path().display());
        } else {
            let _ = std::fs::remove_file(self.log_path());
        }
    }
}

fn log_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("herald-tansu-{port}.log"))
}

/// Starts tansu on `port` as `launch` says, its output appended to [`log_path`].
fn spawn(port: u16, launch: &Launch) -> Child {
    let binary = binary();
    let listener = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{}", launch.advertised.unwrap_or(port));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(port)).unwrap();
    let mut command = Command::new(&binary);
    command
        .current_dir("/")
        .arg("broker")
        .args(["--listener-url", &listener, "--advertised-listener-url", &advertised])
        .args(["--storage-engine", &launch.storage]);
    if launch.authentication {
        command.arg("--authentication");
    }
    command
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start tansu ({}): {e}", binary.display()))
}

/// Stores `users`' SCRAM credentials in `storage`, through a broker of its own that
/// requires no authentication (one that does refuses `tansu user create`, which
/// does not authenticate), stopped before this returns.
fn create_users(storage: &str, users: &[ScramUser]) {
    let launch = Launch { storage: storage.to_owned(), advertised: None, authentication: false };
    let (mut admin, ports) = ports::spawn_listening(
        "tansu (creating users)",
        1,
        |p| spawn(p[0], &launch),
        |p| std::fs::read_to_string(log_path(p[0])).unwrap_or_default(),
    );
    let broker = format!("tcp://127.0.0.1:{}", ports[0]);
    let mut failures = Vec::new();
    for user in users {
        let mechanism = if user.sha512 { "scram512" } else { "scram256" };
        let output = Command::new(binary())
            .args(["user", "create", "--broker", &broker, "--mechanism", mechanism])
            .args([&user.name, &user.password])
            .output()
            .unwrap_or_else(|e| panic!("cannot run tansu user create: {e}"));
        if !output.status.success() {
            failures.push(format!(
                "{}: {}: {}{}",
                user.name,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    let _ = admin.kill();
    let _ = admin.wait();
    let _ = std::fs::remove_file(log_path(ports[0]));
    assert!(failures.is_empty(), "tansu user create failed:\n{}", failures.join("\n"));
}

/// TLS in front of tansu: accepts TLS on its own port and passes the bytes on, both
/// ways, to tansu's plain port. Runs on a thread of its own (with a runtime of its
/// own, so it serves whatever the test's runtime does), stopped on drop.
struct TlsFront {
    port: u16,
    listener: Option<std::net::TcpListener>,
    config: Arc<rustls::ServerConfig>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    /// Binds the front's port; nothing is served before [`TlsFront::serve`].
    fn bind(options: &TlsOptions) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificates = CertificateDer::pem_slice_iter(options.server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(options.server.key_pem.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match &options.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(certificate.unwrap()).unwrap();
                }
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = Arc::new(builder.with_single_cert(certificates, key).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        Self { port, listener: Some(listener), config, stop: None, thread: None }
    }

    /// Serves TLS on the front's port for the broker on `backend`.
    fn serve(mut self, backend: u16) -> Self {
        let (Some(listener), config) = (self.listener.take(), self.config.clone()) else { return self };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("tansu-tls-{}", self.port))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(front(listener, config, backend, stopped));
            })
            .unwrap();
        self.stop = Some(stop);
        self.thread = Some(thread);
        self
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts TLS connections on `listener` until `stopped`, each piped to `backend`.
async fn front(
    listener: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    backend: u16,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    // A client that does not trust the certificate (or presents
                    // none when one is required) ends its handshake here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Dropping the set aborts the connections still open.
}

/// `HERALD_TANSU`, else `tansu` on `PATH`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_TANSU") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("tansu"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("tansu is required on PATH or in HERALD_TANSU (scripts/install-test-deps.sh installs it)")
        })
}
