//! A real Kafka-protocol broker for a test: [tansu](https://github.com/tansu-io/tansu)
//! on a port of its own, killed on drop. tansu advertises the port it listens on, so
//! it is given one: started on a candidate port, checked to listen on it itself, and
//! started again on another if it could not bind (see [`crate::ports`]). Fails loudly when tansu is not installed
//! (`scripts/install-test-deps.sh` installs it); `HERALD_TANSU` names another binary.
//!
//! tansu does not create topics implicitly: create them through the admin API.
//! Its output goes to `herald-tansu-PORT.log` in the temp directory, quoted when it
//! fails to start and kept when the test fails.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::ports;

/// The in-memory storage engine: everything is lost when the broker stops.
pub const MEMORY_STORAGE: &str = "memory://tansu/";

pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    storage: String,
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
        let (child, ports) = ports::spawn_listening(
            "tansu",
            1,
            |p| spawn(p[0], storage),
            |p| std::fs::read_to_string(log_path(p[0])).unwrap_or_default(),
        );
        Self { child: Some(child), port: ports[0], storage: storage.to_owned(), log_start: 0 }
    }

    /// A broker on `port` with the storage engine `storage`; panics if it cannot
    /// listen there.
    pub fn start_on(port: u16, storage: &str) -> Self {
        let mut tansu = Self { child: None, port, storage: storage.to_owned(), log_start: 0 };
        tansu.respawn();
        tansu
    }

    /// Starts tansu again on its port (which a restart must keep).
    fn respawn(&mut self) {
        assert!(self.child.is_none(), "tansu is already running on port {}", self.port);
        self.log_start = std::fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let mut child = spawn(self.port, &self.storage);
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

    /// `host:port`, as librdkafka's `bootstrap.servers` wants it.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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

/// Starts tansu on `port` with the storage engine `storage`, its output appended to
/// [`log_path`].
fn spawn(port: u16, storage: &str) -> Child {
    let binary = binary();
    let listener = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(port)).unwrap();
    Command::new(&binary)
        .current_dir("/")
        .arg("broker")
        .args(["--listener-url", &listener, "--advertised-listener-url", &listener])
        .args(["--storage-engine", storage])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start tansu ({}): {e}", binary.display()))
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
