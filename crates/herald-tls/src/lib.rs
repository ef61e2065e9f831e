//! TLS for Herald's listeners (the WebSocket + HTTP API port and the gRPC port):
//! certificate and key from PEM files, optional client certificates, and rotation
//! without a restart — the files are read again every `reload_interval`, and a new
//! certificate is used for every handshake after it is read, while connections
//! already open keep theirs (a mounted Kubernetes Secret that cert-manager renews).
//!
//! rustls on ring is the workspace's one TLS stack. `check` is what `herald
//! check-config` and start-up report about the files: unreadable, not PEM, a key
//! that is not the certificate's, expired or not yet valid, settings that cannot
//! work together; every problem at once, never the files' contents.

pub mod pem;
pub mod x509;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use herald_telemetry::Metric;
use parking_lot::{Mutex, RwLock};
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use serde::{Deserialize, Deserializer, de};

pub use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// Completes the TLS handshake of a connection `listener` (a metric label: `edge`,
/// `grpc`) accepted, within `timeout`; a handshake that fails or times out is counted
/// (`herald_tls_handshake_failures_total`), logged at debug level, and `None`.
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    timeout: Duration,
    listener: &'static str,
) -> Option<TlsStream<tokio::net::TcpStream>> {
    let reason = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(listener, error = %e, "TLS handshake failed");
            "error"
        }
        Err(_) => "timeout",
    };
    metrics::counter!(Metric::TlsHandshakeFailures.name(), "listener" => listener, "reason" => reason)
        .increment(1);
    None
}

/// The default `reload_interval`.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// A listener's TLS settings (`[server.tls]`, `[grpc.tls]`). Without `cert_file` and
/// `key_file` the listener speaks plain TCP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: String,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM CA certificates that sign client certificates; empty: clients are not
    /// asked for one.
    pub client_ca_file: String,
    /// With `client_ca_file`: who must present a certificate (see [`ClientAuth`]).
    pub client_auth: ClientAuth,
    /// How often the files are read again to pick up a renewed certificate.
    #[serde(deserialize_with = "deserialize_duration")]
    pub reload_interval: Duration,
}

impl Default for ListenerTls {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            client_auth: ClientAuth::Required,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }
}

/// Who must present a client certificate signed by `client_ca_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Every connection: one without a valid certificate fails its handshake.
    #[default]
    Required,
    /// The edge port only: the HTTP API (`/apps/...`, the backends) requires one,
    /// WebSocket clients (browsers, apps) connect without. A certificate presented
    /// is verified either way.
    Api,
}

impl ListenerTls {
    /// TLS is on: a certificate (or its key) is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty() || !self.key_file.is_empty()
    }

    /// Records every problem of these settings in `errors`, each starting with
    /// `name` (`server.tls`): files, how they fit, and their certificates' validity
    /// at `now`. `api_mode` says whether [`ClientAuth::Api`] applies to the listener.
    pub fn check(&self, name: &str, api_mode: bool, now: SystemTime, errors: &mut Vec<String>) {
        if !self.enabled() {
            if !self.client_ca_file.is_empty() {
                errors.push(format!(
                    "{name}.client_ca_file: client certificates need TLS: set cert_file and key_file too"
                ));
            }
            return;
        }
        if self.cert_file.is_empty() || self.key_file.is_empty() {
            errors.push(format!("{name}: cert_file and key_file go together: set both or neither"));
        } else {
            check_certificate_pair(name, Path::new(&self.cert_file), Path::new(&self.key_file), now, errors);
        }
        if !self.client_ca_file.is_empty() {
            check_ca_file(&format!("{name}.client_ca_file"), Path::new(&self.client_ca_file), now, errors);
        }
        if self.client_auth == ClientAuth::Api && !api_mode {
            errors.push(format!(
                "{name}.client_auth: \"api\" is for the port that serves both WebSocket clients and the HTTP API (server.tls); use \"required\""
            ));
        }
        if self.client_auth == ClientAuth::Api && self.client_ca_file.is_empty() {
            errors.push(format!("{name}.client_auth: \"api\" needs client_ca_file"));
        }
        if self.reload_interval < Duration::from_secs(1) {
            errors.push(format!("{name}.reload_interval: must be at least 1s"));
        }
    }
}

/// Records what is wrong with a certificate and its key (`cert_file`, `key_file` of
/// the settings named `name`): unreadable, not PEM, a key that is not the
/// certificate's, a certificate expired or not yet valid at `now`. For a server's
/// certificate and for a client's (Redis, Kafka).
pub fn check_certificate_pair(
    name: &str,
    cert_file: &Path,
    key_file: &Path,
    now: SystemTime,
    errors: &mut Vec<String>,
) {
    match load_certified_key(cert_file, key_file) {
        Ok(key) => check_validity(&format!("{name}.cert_file"), cert_file, key.cert.first(), now, errors),
        Err(e) => errors.push(format!("{name}: {e}")),
    }
}

/// Records what is wrong with a certificate file alone (its key may be encrypted, for
/// a client that decrypts it): unreadable, not PEM, expired or not yet valid at `now`.
pub fn check_certificate_validity(name: &str, cert_file: &Path, now: SystemTime, errors: &mut Vec<String>) {
    let certs = match pem::read_certs(cert_file) {
        Ok(certs) => certs,
        Err(e) => return errors.push(format!("{name}: {e}")),
    };
    check_validity(name, cert_file, certs.first(), now, errors);
}

/// Records what is wrong with a file of CA certificates (`name`: the setting):
/// unreadable, no certificate in it, or every certificate in it expired or not yet
/// valid at `now` (one that is valid is enough to trust).
pub fn check_ca_file(name: &str, ca_file: &Path, now: SystemTime, errors: &mut Vec<String>) {
    let certs = match pem::read_certs(ca_file) {
        Ok(certs) => certs,
        Err(e) => return errors.push(format!("{name}: {e}")),
    };
    let now = unix_seconds(now);
    let valid = certs
        .iter()
        .filter_map(|c| x509::validity(c))
        .any(|(not_before, not_after)| not_before <= now && now <= not_after);
    if !valid {
        errors.push(format!(
            "{name}: {}: no certificate in it is valid now (expired, or not yet valid)",
            ca_file.display()
        ));
    }
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Expired or not yet valid at `now`.
/// `certificate` (of `file`, the setting `setting`) expired or not yet valid at `now`.
fn check_validity(
    setting: &str,
    file: &Path,
    certificate: Option<&rustls::pki_types::CertificateDer<'_>>,
    now: SystemTime,
    errors: &mut Vec<String>,
) {
    let file = file.display();
    let Some((not_before, not_after)) = certificate.and_then(|c| x509::validity(c)) else {
        errors.push(format!("{setting}: {file}: the certificate's validity cannot be read"));
        return;
    };
    let now = unix_seconds(now);
    if not_after < now {
        errors.push(format!("{setting}: {file}: the certificate expired on {}", date(not_after)));
    } else if not_before > now {
        errors.push(format!("{setting}: {file}: the certificate is not valid before {}", date(not_before)));
    }
}

/// A time in seconds since the epoch, as RFC 3339.
fn date(seconds: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key of two PEM files, checked to belong together.
fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let certs = pem::read_certs(cert_file);
    let key = pem::read_key(key_file);
    let (certs, key) = match (certs, key) {
        (Ok(certs), Ok(key)) => (certs, key),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
        (Err(a), Err(b)) => return Err(format!("{a}; {b}")),
    };
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{} is not the key of the certificate in {}", key_file.display(), cert_file.display())
        }
        e => format!("{}: unusable key ({e})", key_file.display()),
    })
}

fn client_roots(ca_file: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(pem::read_certs(ca_file)?);
    if added == 0 {
        return Err(format!("{}: no usable CA certificate", ca_file.display()));
    }
    Ok(Arc::new(roots))
}

/// A listener's TLS, ready to accept: its rustls configuration, whose certificate
/// is read again from the files (see [`ServerTls::watch`]).
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    certificate: Arc<Reloading>,
    client_auth: Option<ClientAuth>,
    reload_interval: Duration,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.certificate.cert_file)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The TLS of a listener named `listener` (a metric label: `edge`, `grpc`) that
    /// offers the `alpn` protocols; `None` when the settings do not enable TLS.
    /// The settings must have passed [`ListenerTls::check`]; `Err` says what is wrong
    /// if the files changed since.
    pub fn load(
        settings: &ListenerTls,
        listener: &'static str,
        alpn: &[&[u8]],
    ) -> Result<Option<Self>, String> {
        if !settings.enabled() {
            return Ok(None);
        }
        let certificate = Arc::new(Reloading::load(
            PathBuf::from(&settings.cert_file),
            PathBuf::from(&settings.key_file),
            listener,
        )?);
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let client_auth = (!settings.client_ca_file.is_empty()).then_some(settings.client_auth);
        let builder = match client_auth {
            None => builder.with_no_client_auth(),
            Some(mode) => {
                let roots = client_roots(Path::new(&settings.client_ca_file))?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
                let verifier = match mode {
                    ClientAuth::Required => verifier,
                    ClientAuth::Api => verifier.allow_unauthenticated(),
                };
                builder.with_client_cert_verifier(
                    verifier.build().map_err(|e| format!("{}: {e}", settings.client_ca_file))?,
                )
            }
        };
        let mut config = builder.with_cert_resolver(certificate.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // One stateless session ticket per handshake, instead of rustls's two into a
        // 256-entry cache that thousands of clients evict before any reconnects: a
        // client reconnecting to this process resumes (no certificate signature), and
        // the server keeps nothing per client. The ticket keys rotate every 6 hours.
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS session tickets: {e}"))?;
        config.send_tls13_tickets = 1;
        Ok(Some(Self {
            config: Arc::new(config),
            certificate,
            client_auth,
            reload_interval: settings.reload_interval,
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    /// Whether (and from whom) client certificates are asked for.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.client_auth
    }

    /// Reads the files again: `Ok(true)` when they changed and the new certificate is
    /// now in use, `Ok(false)` when unchanged; `Err` (and the old one stays) when the
    /// new files are unusable.
    pub fn reload(&self) -> Result<bool, String> {
        self.certificate.reload()
    }

    /// Reads the files again every `reload_interval`, for as long as this
    /// configuration is in use, logging what changed or why a change was refused;
    /// and records the certificate's expiry (the metrics recorder is installed by
    /// now).
    pub fn watch(&self) {
        self.certificate.record_expiry();
        let certificate = Arc::downgrade(&self.certificate);
        let interval = self.reload_interval;
        tokio::spawn(watch(certificate, interval));
    }
}

async fn watch(certificate: Weak<Reloading>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(certificate) = certificate.upgrade() else { return };
        // File reads (and parsing the key): off the event loop that serves clients.
        let reloading = certificate.clone();
        let Ok(reloaded) = tokio::task::spawn_blocking(move || reloading.reload()).await else { return };
        match reloaded {
            Ok(true) => tracing::info!(
                listener = certificate.listener,
                cert_file = %certificate.cert_file.display(),
                "TLS certificate reloaded: new handshakes use it"
            ),
            Ok(false) => {}
            Err(e) => certificate.refused(e),
        }
    }
}

/// The certificate a listener presents, replaced when its files change.
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    listener: &'static str,
    current: RwLock<Loaded>,
    /// The contents last refused, so that a bad file is logged once, not at every
    /// interval.
    refused: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl fmt::Debug for Reloading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading").field("cert_file", &self.cert_file).finish_non_exhaustive()
    }
}

impl Reloading {
    fn load(cert_file: PathBuf, key_file: PathBuf, listener: &'static str) -> Result<Self, String> {
        let (cert_pem, key_pem) = (pem::read(&cert_file)?, pem::read(&key_file)?);
        let key = load_certified_key(&cert_file, &key_file)?;
        let reloading = Self {
            cert_file,
            key_file,
            listener,
            current: RwLock::new(Loaded { key: Arc::new(key), cert_pem, key_pem }),
            refused: Mutex::new(None),
        };
        reloading.record_expiry();
        Ok(reloading)
    }

    fn reload(&self) -> Result<bool, String> {
        let (cert_pem, key_pem) = (pem::read(&self.cert_file)?, pem::read(&self.key_file)?);
        {
            let current = self.current.read();
            if current.cert_pem == cert_pem && current.key_pem == key_pem {
                return Ok(false);
            }
        }
        if self.refused.lock().as_ref().is_some_and(|(c, k)| *c == cert_pem && *k == key_pem) {
            return Ok(false);
        }
        let key = match load_certified_key(&self.cert_file, &self.key_file) {
            Ok(key) => key,
            Err(e) => {
                *self.refused.lock() = Some((cert_pem, key_pem));
                return Err(e);
            }
        };
        *self.current.write() = Loaded { key: Arc::new(key), cert_pem, key_pem };
        *self.refused.lock() = None;
        self.record_expiry();
        Ok(true)
    }

    fn refused(&self, error: String) {
        tracing::warn!(
            listener = self.listener,
            error,
            "the TLS files changed but cannot be used: the previous certificate stays in use"
        );
    }

    fn record_expiry(&self) {
        let key = self.current.read().key.clone();
        if let Some((_, not_after)) = key.cert.first().and_then(|c| x509::validity(c)) {
            metrics::gauge!(Metric::TlsCertificateExpiry.name(), "listener" => self.listener)
                .set(not_after as f64);
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().key.clone())
    }
}

fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(text.trim())
        .map_err(|e| de::Error::custom(format!("invalid duration {text:?}: {e} (e.g. \"10s\", \"1m\")")))
}

#[cfg(test)]
mod tests;
