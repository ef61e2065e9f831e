//! The ready file (`[server] ready_file`, `--ready-file`): once every listener is
//! bound, Herald writes the addresses it actually listens on, so that whoever
//! started it (a test harness, a supervisor script) can give it port 0 and learn the
//! ports the kernel chose, instead of guessing free ports beforehand (a guess can
//! collide: two guesses may name the same port, or another process may take it).
//!
//! The file is one JSON object, for example
//! `{"pid":4242,"ws":"127.0.0.1:41001","http":"127.0.0.1:41001","grpc":"127.0.0.1:41002","metrics":"127.0.0.1:41003"}`
//! (`herald dispatcher` has only `pid` and `metrics`). `ws` and `http` are the same
//! listener: WebSocket clients and the Pusher HTTP API share it.
//!
//! It is written to a temporary file beside it and renamed into place, so a reader
//! sees either no file or the whole of it, never a partial one. A file left by an
//! earlier run is removed before any port is bound, and the file is removed again
//! at a clean stop: while it exists, it describes a process that is serving.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// The addresses a process listens on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Addresses {
    /// WebSocket clients and the Pusher HTTP API (one listener).
    pub ws: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub metrics: Option<SocketAddr>,
}

impl Addresses {
    /// The file's JSON text. Written by hand: socket addresses and a pid need no
    /// escaping, and the binary keeps its dependencies lean.
    fn to_json(self, pid: u32) -> String {
        let mut fields = vec![format!("\"pid\":{pid}")];
        if let Some(ws) = self.ws {
            fields.push(format!("\"ws\":\"{ws}\""));
            fields.push(format!("\"http\":\"{ws}\""));
        }
        if let Some(grpc) = self.grpc {
            fields.push(format!("\"grpc\":\"{grpc}\""));
        }
        if let Some(metrics) = self.metrics {
            fields.push(format!("\"metrics\":\"{metrics}\""));
        }
        format!("{{{}}}\n", fields.join(","))
    }
}

/// Where the ready file goes, if anywhere.
pub struct ReadyFile {
    path: Option<PathBuf>,
}

impl ReadyFile {
    /// `path` empty: no ready file. Removes a file an earlier run left there (call it
    /// before binding anything).
    pub fn prepare(path: &str) -> io::Result<Self> {
        if path.is_empty() {
            return Ok(Self { path: None });
        }
        let path = PathBuf::from(path);
        remove_if_present(&path)?;
        Ok(Self { path: Some(path) })
    }

    /// Writes `addresses` atomically (temporary file, then rename).
    pub fn write(&self, addresses: Addresses) -> io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let pid = std::process::id();
        let temporary = temporary_path(path, pid);
        std::fs::write(&temporary, addresses.to_json(pid))
            .and_then(|()| std::fs::rename(&temporary, path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&temporary);
            })
    }

    /// Removes the file (at a clean stop): nothing is served at those addresses now.
    pub fn remove(&self) {
        if let Some(path) = &self.path
            && let Err(e) = remove_if_present(path)
        {
            tracing::warn!(error = %e, path = %path.display(), "could not remove the ready file");
        }
    }
}

/// `PATH.PID.tmp`, beside `path` (a rename is atomic only within one file system).
fn temporary_path(path: &Path, pid: u32) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{pid}.tmp"));
    path.with_file_name(name)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What is wrong with `path` as a ready file, checked with the rest of the config
/// (before any port is bound): its directory must exist.
pub fn validate(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let path = Path::new(path);
    if path.file_name().is_none() {
        return Some(format!("server.ready_file: {:?} does not name a file", path.display().to_string()));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Some(format!("server.ready_file: no directory {:?}", dir.display().to_string()));
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-ready-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_the_addresses_as_json_replacing_a_stale_file() {
        let dir = temp_dir("write");
        let path = dir.join("ready.json");
        std::fs::write(&path, "stale").unwrap();
        let ready = ReadyFile::prepare(path.to_str().unwrap()).unwrap();
        assert!(!path.exists(), "a stale file is removed before anything is bound");

        let addresses = Addresses {
            ws: Some("127.0.0.1:41001".parse().unwrap()),
            grpc: Some("[::1]:41002".parse().unwrap()),
            metrics: Some("127.0.0.1:41003".parse().unwrap()),
        };
        ready.write(addresses).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["pid"], std::process::id());
        assert_eq!(json["ws"], "127.0.0.1:41001");
        assert_eq!(json["http"], "127.0.0.1:41001");
        assert_eq!(json["grpc"], "[::1]:41002");
        assert_eq!(json["metrics"], "127.0.0.1:41003");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("ready.json")], "no temporary file is left");

        ready.remove();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dispatcher_reports_only_its_metrics_listener() {
        let addresses = Addresses { metrics: Some("127.0.0.1:9".parse().unwrap()), ..Addresses::default() };
        let json: serde_json::Value = serde_json::from_str(&addresses.to_json(7)).unwrap();
        assert_eq!(json, serde_json::json!({"pid": 7, "metrics": "127.0.0.1:9"}));
    }

    #[test]
    fn no_path_no_file() {
        let ready = ReadyFile::prepare("").unwrap();
        ready.write(Addresses::default()).unwrap();
        assert_eq!(validate(""), None);
    }

    #[test]
    fn the_directory_must_exist() {
        assert!(validate("/nonexistent-herald-dir/ready.json").unwrap().contains("no directory"));
        assert_eq!(validate("ready.json"), None, "relative to the working directory");
        assert!(validate("/").is_some());
    }
}
