//! A certificate authority made at test time, and certificates it issues, written as
//! PEM files into a temporary directory that is removed on drop. For the tests of
//! every TLS hop: Herald's listeners, `redis-server --tls-port`, tansu with `--cert`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A test CA: its certificate in `ca.pem` under [`TestCa::dir`].
pub struct TestCa {
    dir: tempfile::TempDir,
    certificate: Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM files (and text).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Files are `<name>.pem` and `<name>.key`.
    pub name: String,
    /// DNS names in the subject alternative names; 127.0.0.1 is always there.
    pub dns: Vec<String>,
    /// Already expired (for the checks that must refuse it).
    pub expired: bool,
}

impl Leaf {
    /// A certificate for `localhost` and 127.0.0.1, good for servers and clients.
    pub fn new(name: &str) -> Self {
        Self { name: name.into(), dns: vec!["localhost".into()], expired: false }
    }

    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }
}

impl TestCa {
    pub fn new() -> Self {
        Self::named("Herald test CA")
    }

    /// A CA with this common name (two CAs trust nothing of each other).
    pub fn named(common_name: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("herald-tls-").tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), certificate.pem()).unwrap();
        Self { dir, certificate, key }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA's certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> String {
        self.certificate.pem()
    }

    /// Issues a certificate for servers and clients on 127.0.0.1 and `localhost`.
    pub fn issue(&self, name: &str) -> Issued {
        self.issue_leaf(Leaf::new(name))
    }

    pub fn issue_leaf(&self, leaf: Leaf) -> Issued {
        let mut params = CertificateParams::new(leaf.dns.clone()).unwrap();
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, leaf.name.clone());
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.certificate, &self.key).unwrap();
        let issued = Issued {
            cert_file: self.dir.path().join(format!("{}.pem", leaf.name)),
            key_file: self.dir.path().join(format!("{}.key", leaf.name)),
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&issued.cert_file, &issued.cert_pem).unwrap();
        std::fs::write(&issued.key_file, &issued.key_pem).unwrap();
        issued
    }
}

impl TestCa {
    /// A client configuration that trusts this CA (only), presenting `identity` as
    /// its client certificate if given.
    pub fn client_config(&self, identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(self.certificate.der().to_vec())).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(issued) => {
                use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
                let certs = CertificateDer::pem_file_iter(&issued.cert_file)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(&issued.key_file).unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
        };
        Arc::new(config)
    }
}

/// A TLS connection to `addr`, verifying its certificate for `localhost`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
