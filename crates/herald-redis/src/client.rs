//! How every connection herald-redis opens is made: the URL (`redis://`, or `rediss://`
//! for TLS), the ACL user and password, a private CA and a client certificate; and
//! which failures to connect are refusals that no retry fixes ([`Refused`]).
//!
//! Every client (command connections, the pub/sub connection, the Redis Cluster's)
//! comes from [`client`] or [`cluster_client`], so none can miss the credentials or the
//! TLS settings.

use std::{fmt, path::Path, path::PathBuf};

use herald_backbone::{Error, Result};
use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError,
    TlsCertificates, cluster::ClusterClientBuilder,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::RedisConfig;

/// The TLS settings of `rediss://` URLs. Without a CA file the server's certificate is
/// checked against Mozilla's roots (compiled in), which managed services use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM CA certificates trusted instead of Mozilla's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM files), for servers that require one
    /// (`tls-auth-clients yes`).
    pub client: Option<ClientCertificate>,
}

/// A client certificate (with its chain) and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl RedisTls {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client.is_some()
    }

    /// The files read and checked, as the redis crate takes them.
    fn certificates(&self) -> std::result::Result<TlsCertificates, String> {
        let root_cert = self.ca_file.as_deref().map(read_certificates).transpose()?;
        let client_tls = match &self.client {
            Some(client) => Some(ClientTlsConfig {
                client_cert: read_certificates(&client.cert_file)?,
                client_key: read_private_key(&client.key_file)?,
            }),
            None => None,
        };
        Ok(TlsCertificates { client_tls, root_cert })
    }
}

/// The contents of a PEM file of certificates, checked to hold at least one.
pub fn read_certificates(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let pem = read(path)?;
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(pem)
}

/// The contents of a PEM private key file, checked to hold a key. The error never
/// quotes the file.
pub fn read_private_key(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: holds no PEM private key ({e})", path.display()))?;
    Ok(pem)
}

fn read(path: &Path) -> std::result::Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// What a Redis URL says, for checking a configuration before connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlInfo {
    /// `rediss://`.
    pub tls: bool,
    /// A user name in the URL (`rediss://user:password@host`).
    pub username: bool,
    /// A password in the URL.
    pub password: bool,
}

/// Parses `url` as the client will. The error does not quote the URL (it may hold a
/// password).
pub fn url_info(url: &str) -> std::result::Result<UrlInfo, String> {
    let info = url.into_connection_info().map_err(|e| e.to_string())?;
    let tls = match info.addr() {
        ConnectionAddr::Tcp(..) => false,
        // `#insecure` (no certificate check) needs a feature this build leaves out on
        // purpose: trust a private CA with a CA file instead.
        ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err(
                "#insecure (no certificate check) is not supported: trust the server's CA instead".into()
            );
        }
        ConnectionAddr::TcpTls { .. } => true,
        _ => return Err("only TCP (redis://, rediss://) is supported".into()),
    };
    let settings = info.redis_settings();
    Ok(UrlInfo { tls, username: settings.username().is_some(), password: settings.password().is_some() })
}

/// `url` with the password of its user info (if any) replaced by `***`, for logs
/// and errors. Everything up to the last `@` counts as user info, so a password
/// holding a `/`, `?`, `#` or `@` that should have been percent-encoded is hidden too.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// rustls finds its crypto through the process-wide default provider: ring, the
/// workspace's one (installing it again, or after someone else did, changes nothing).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for the Redis at `url`, with the user, password and TLS settings of
/// `config` (the URL's user and password unless `config` sets them).
pub(crate) fn client(config: &RedisConfig, url: &str) -> Result<redis::Client> {
    install_crypto_provider();
    let mut info = url.into_connection_info().map_err(|e| refused_url(url, e))?;
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    if !tls && config.tls.is_set() {
        return Err(config_error(url, "TLS settings are given, but the URL is not rediss://"));
    }
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &config.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    if !tls {
        return redis::Client::open(info).map_err(|e| refused_url(url, e));
    }
    let certificates = config.tls.certificates().map_err(|e| config_error(url, &e))?;
    redis::Client::build_with_tls(info, certificates).map_err(|e| refused_url(url, e))
}

/// A builder for a client of the Redis Cluster that `config.urls` are nodes of, with
/// its user, password and TLS settings.
pub(crate) fn cluster_client(config: &RedisConfig) -> Result<ClusterClientBuilder> {
    install_crypto_provider();
    let first = config.urls.first().map(String::as_str).unwrap_or_default();
    let mut infos = Vec::with_capacity(config.urls.len());
    for url in &config.urls {
        infos.push(url.as_str().into_connection_info().map_err(|e| refused_url(url, e))?);
    }
    let tls = infos.iter().any(|info| matches!(info.addr(), ConnectionAddr::TcpTls { .. }));
    if !tls && config.tls.is_set() {
        return Err(config_error(first, "TLS settings are given, but the URLs are not rediss://"));
    }
    let mut builder = ClusterClientBuilder::new(infos);
    if let Some(username) = &config.username {
        builder = builder.username(username);
    }
    if let Some(password) = &config.password {
        builder = builder.password(password);
    }
    if tls {
        builder = builder.certs(config.tls.certificates().map_err(|e| config_error(first, &e))?);
    }
    Ok(builder)
}

/// Whether a failure to connect is a refusal, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong user name or password, or none given where Redis wants one.
    Authentication,
    /// The ACL user may not run a command Herald needs.
    Permission,
    /// The TLS handshake failed: the server's certificate is not trusted (or not for
    /// this host), the server wants a client certificate, or it does not speak TLS.
    Tls,
    /// The settings cannot work (a URL that does not parse, unreadable certificates).
    Config,
}

/// Redis refused the connection: another attempt with the same settings fails the
/// same way, so a node starting up stops rather than retrying. Its text names the
/// instance and the problem, never the password.
#[derive(Debug, Clone)]
pub struct Refused {
    addr: String,
    refusal: Refusal,
    /// What Redis or rustls said.
    detail: String,
    /// What that usually means.
    cause: Option<&'static str>,
}

impl Refused {
    /// The refusal `error` reports, if it is one (and not Redis being unreachable).
    pub fn of(error: &Error) -> Option<&Refused> {
        let Error::Unavailable(unavailable) = error else { return None };
        std::error::Error::source(unavailable)?.downcast_ref()
    }

    /// `host:port` of the instance that refused.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn refusal(&self) -> Refusal {
        self.refusal
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.refusal {
            Refusal::Authentication => "authentication failed",
            Refusal::Permission => "permission denied",
            Refusal::Tls => "TLS handshake failed",
            Refusal::Config => "invalid settings",
        };
        write!(f, "{what} ({})", self.detail)?;
        match self.cause {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Refused {}

/// The error of a failure to connect to `addr` (`host:port`): a [`Refused`] when no
/// retry can help, else unavailable.
pub(crate) fn connect_error(addr: &str, e: RedisError) -> Error {
    match refusal(&e) {
        Some(refused) => refused.at(addr),
        None => Error::unavailable_because(format!("redis {addr}"), e),
    }
}

/// The error of a failure to connect to the Redis Cluster of `config`. The cluster
/// client reports its nodes' failures as text only, so each node is tried alone: one
/// that refuses says why.
pub(crate) async fn cluster_connect_error(config: &RedisConfig, e: RedisError) -> Error {
    if let Some(refused) = refusal(&e) {
        return refused.at(&seeds(config));
    }
    let options = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.command_timeout))
        .set_response_timeout(Some(config.command_timeout));
    for url in &config.urls {
        let node = match client(config, url) {
            Ok(node) => node,
            Err(refused) => return refused,
        };
        let addr = address(node.get_connection_info());
        let tried = match node.get_multiplexed_async_connection_with_config(&options).await {
            Ok(mut connection) => redis::cmd("PING").query_async::<()>(&mut connection).await,
            Err(e) => Err(e),
        };
        if let Err(e) = tried
            && refusal(&e).is_some()
        {
            return connect_error(&addr, e);
        }
    }
    Error::unavailable_because(format!("redis cluster {}", seeds(config)), e)
}

/// `host:port` of a client's instance, for errors.
pub(crate) fn address(info: &ConnectionInfo) -> String {
    info.addr().to_string()
}

/// The seed nodes of a Redis Cluster, `host:port` each, for errors.
pub(crate) fn seeds(config: &RedisConfig) -> String {
    let addresses: Vec<String> = config
        .urls
        .iter()
        .map(|url| {
            url.as_str().into_connection_info().map(|i| address(&i)).unwrap_or_else(|_| redact_url(url))
        })
        .collect();
    addresses.join(",")
}

impl Refused {
    fn new(refusal: Refusal, detail: impl Into<String>) -> Self {
        Self { addr: String::new(), refusal, detail: detail.into(), cause: None }
    }

    /// The error of this refusal by `addr`.
    fn at(mut self, addr: &str) -> Error {
        addr.clone_into(&mut self.addr);
        Error::unavailable_because(format!("redis {addr}"), self)
    }
}

fn config_error(url: &str, detail: &str) -> Error {
    Refused::new(Refusal::Config, detail).at(&redact_url(url))
}

/// A URL or TLS setting the redis crate rejected.
fn refused_url(url: &str, e: RedisError) -> Error {
    Refused::new(Refusal::Config, e.to_string()).at(&redact_url(url))
}

/// The refusal `e` is; `None` for failures a retry may fix (refused or dropped
/// connections, timeouts, a Redis still loading).
fn refusal(e: &RedisError) -> Option<Refused> {
    match (e.kind(), e.code()) {
        // RESP2's `AUTH` (the server's code is not kept).
        (ErrorKind::AuthenticationFailed, _) => {
            return Some(Refused::new(Refusal::Authentication, "wrong user name or password"));
        }
        (_, Some(code @ ("WRONGPASS" | "NOAUTH"))) => {
            let detail = e.detail().map(|d| format!("{code} {d}")).unwrap_or_else(|| code.into());
            return Some(Refused::new(Refusal::Authentication, detail));
        }
        (_, Some("NOPERM")) => {
            let detail = format!("NOPERM {}", e.detail().unwrap_or_default());
            return Some(Refused::new(Refusal::Permission, detail));
        }
        (ErrorKind::InvalidClientConfig, _) => return Some(Refused::new(Refusal::Config, e.to_string())),
        _ => {}
    }
    // A TLS failure reaches here as an I/O error around rustls's, which the redis
    // crate keeps in an `Arc` (and `io::Error::source` skips the error it wraps).
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        if let Some(tls) = tls_error(error) {
            return Some(Refused { cause: tls_cause(tls), ..Refused::new(Refusal::Tls, tls.to_string()) });
        }
        source = error.source();
    }
    None
}

/// rustls's error, if `error` is one, or an I/O error around one (in an `Arc` or not).
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let error = match error.downcast_ref::<Shared>() {
        Some(shared) => shared.as_ref() as &(dyn std::error::Error + 'static),
        None => error,
    };
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    error.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<rustls::Error>()
}

/// What usually causes rustls's error `e`.
fn tls_cause(e: &rustls::Error) -> Option<&'static str> {
    use rustls::{AlertDescription, CertificateError};
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            Some("the server's certificate is not signed by a CA trusted here")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Some("the server's certificate is not for this host name"),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => Some("the server's certificate has expired"),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            Some("the server requires a client certificate")
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate | AlertDescription::UnknownCA | AlertDescription::DecryptError,
        ) => Some("the server does not accept the client certificate"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_url_is_redacted_however_it_is_written() {
        for (url, shown) in [
            ("rediss://herald:s3cret@cache.example:6380/0", "rediss://herald:***@cache.example:6380/0"),
            ("redis://:s3cret@10.0.0.1:6379/", "redis://:***@10.0.0.1:6379/"),
            ("rediss://u:p@ss/w?rd#x@host:1/?protocol=resp3", "rediss://u:***@host:1/?protocol=resp3"),
            ("redis://user@host:6379/", "redis://user@host:6379/"),
            ("redis://host:6379/", "redis://host:6379/"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn url_info_says_what_a_url_holds_without_quoting_it() {
        let info = url_info("rediss://herald:s3cret@cache.example:6380/").unwrap();
        assert_eq!(info, UrlInfo { tls: true, username: true, password: true });
        assert_eq!(
            url_info("redis://127.0.0.1:6379/").unwrap(),
            UrlInfo { tls: false, username: false, password: false }
        );
        let insecure = url_info("rediss://:s3cret@host:6380/#insecure").unwrap_err();
        assert!(insecure.contains("#insecure") && !insecure.contains("s3cret"), "{insecure}");
        for wrong in ["http://:s3cret@host/", "redis://:s3cret@0.0.0.0:6379/", "redis+unix:///tmp/r.sock"] {
            let error = url_info(wrong).unwrap_err();
            assert!(!error.contains("s3cret"), "{error}");
        }
    }
}
