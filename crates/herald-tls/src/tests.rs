use std::{sync::Arc, time::SystemTime};

use herald_testkit::tls::{Leaf, TestCa};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;

fn settings(cert: &herald_testkit::tls::Issued) -> ListenerTls {
    ListenerTls {
        cert_file: cert.cert_file.display().to_string(),
        key_file: cert.key_file.display().to_string(),
        ..ListenerTls::default()
    }
}

fn problems(settings: &ListenerTls, api_mode: bool) -> Vec<String> {
    let mut errors = Vec::new();
    settings.check("server.tls", api_mode, SystemTime::now(), &mut errors);
    errors
}

#[test]
fn good_files_pass_the_check() {
    let ca = TestCa::new();
    let server = ca.issue("server");
    assert_eq!(problems(&settings(&server), false), Vec::<String>::new());
    let mutual = ListenerTls { client_ca_file: ca.ca_file().display().to_string(), ..settings(&server) };
    assert_eq!(problems(&mutual, false), Vec::<String>::new());
    assert_eq!(problems(&ListenerTls::default(), false), Vec::<String>::new(), "TLS off");
}

#[test]
fn every_problem_is_reported_at_once_without_the_files_contents() {
    let ca = TestCa::new();
    let (a, b) = (ca.issue("a"), ca.issue("b"));
    let expired = ca.issue_leaf(Leaf::new("old").expired());

    let mismatched = ListenerTls { key_file: b.key_file.display().to_string(), ..settings(&a) };
    let errors = problems(&mismatched, false);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("is not the key of the certificate in"), "{errors:?}");

    let errors = problems(&settings(&expired), false);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("expired on 2021-01-01T00:00:00Z"), "{errors:?}");

    let garbage = ca.dir().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
        .unwrap();
    let broken = ListenerTls {
        cert_file: garbage.display().to_string(),
        key_file: "/nonexistent/tls.key".into(),
        client_ca_file: a.key_file.display().to_string(),
        client_auth: ClientAuth::Api,
        reload_interval: Duration::from_millis(10),
    };
    let errors = problems(&broken, false);
    let text = errors.join("\n");
    assert_eq!(errors.len(), 4, "{text}");
    assert!(text.contains("garbage.pem: not PEM certificates (bad base64)"), "{text}");
    assert!(text.contains("/nonexistent/tls.key: cannot be read"), "{text}");
    assert!(text.contains("server.tls.client_ca_file:"), "{text}");
    assert!(text.contains("server.tls.client_auth: \"api\" is for the port"), "{text}");
    assert!(text.contains("server.tls.reload_interval: must be at least 1s"), "{text}");
    for secret in [&a.key_pem, &b.key_pem] {
        let body = secret.lines().nth(1).unwrap();
        assert!(!text.contains(body), "key material in {text}");
    }

    let half = ListenerTls { key_file: String::new(), ..settings(&a) };
    assert_eq!(
        problems(&half, false),
        ["server.tls: cert_file and key_file go together: set both or neither"]
    );
    let no_tls = ListenerTls { client_ca_file: ca.ca_file().display().to_string(), ..ListenerTls::default() };
    assert!(problems(&no_tls, true)[0].contains("client certificates need TLS"));
}

/// A TLS server on 127.0.0.1 answering "hello" on each connection; the port.
async fn serve(tls: &ServerTls) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tls.acceptor();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut stream) = acceptor.accept(stream).await {
                    let _ = stream.write_all(b"hello").await;
                    let _ = stream.flush().await;
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest).await;
                }
            });
        }
    });
    port
}

/// Connects with TLS trusting `ca`, optionally with a client certificate; the
/// certificate the server presented, once it said hello.
async fn connect(
    port: u16,
    ca: &TestCa,
    client: Option<&herald_testkit::tls::Issued>,
) -> std::io::Result<Vec<u8>> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(pem::read_certs(&ca.ca_file()).unwrap());
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                pem::read_certs(&c.cert_file).unwrap(),
                pem::read_key(&c.key_file).unwrap(),
            )
            .unwrap(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut stream = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    let mut hello = [0u8; 5];
    stream.read_exact(&mut hello).await?;
    assert_eq!(&hello, b"hello");
    Ok(stream.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

fn der(issued: &herald_testkit::tls::Issued) -> Vec<u8> {
    pem::read_certs(&issued.cert_file).unwrap().remove(0).to_vec()
}

#[tokio::test]
async fn a_renewed_certificate_is_presented_after_a_reload_and_a_bad_one_is_refused() {
    let ca = TestCa::new();
    let (first, second, other) = (ca.issue("first"), ca.issue("second"), ca.issue("other"));
    let live = ca.issue("live");
    std::fs::copy(&first.cert_file, &live.cert_file).unwrap();
    std::fs::copy(&first.key_file, &live.key_file).unwrap();
    let tls = ServerTls::load(&settings(&live), "edge", &[]).unwrap().unwrap();
    let port = serve(&tls).await;
    assert_eq!(connect(port, &ca, None).await.unwrap(), der(&first));
    assert!(!tls.reload().unwrap(), "unchanged files");

    // Half a renewal: the new certificate with the old key. Refused; the old one stays.
    std::fs::copy(&second.cert_file, &live.cert_file).unwrap();
    let error = tls.reload().unwrap_err();
    assert!(error.contains("is not the key of the certificate"), "{error}");
    assert_eq!(connect(port, &ca, None).await.unwrap(), der(&first));

    std::fs::copy(&second.key_file, &live.key_file).unwrap();
    assert!(tls.reload().unwrap());
    assert_eq!(connect(port, &ca, None).await.unwrap(), der(&second));
    assert_ne!(der(&second), der(&other));
}

#[tokio::test]
async fn the_watcher_picks_up_new_files() {
    let ca = TestCa::new();
    let (first, second) = (ca.issue("first"), ca.issue("second"));
    let live = ca.issue("live");
    std::fs::copy(&first.cert_file, &live.cert_file).unwrap();
    std::fs::copy(&first.key_file, &live.key_file).unwrap();
    let settings = ListenerTls { reload_interval: Duration::from_secs(1), ..settings(&live) };
    let tls = ServerTls::load(&settings, "edge", &[]).unwrap().unwrap();
    tls.watch();
    let port = serve(&tls).await;
    // A Secret's update: both files replaced at once (a rename).
    let staging = ca.dir().join("staging");
    std::fs::create_dir(&staging).unwrap();
    std::fs::copy(&second.cert_file, staging.join("c")).unwrap();
    std::fs::copy(&second.key_file, staging.join("k")).unwrap();
    std::fs::rename(staging.join("k"), &live.key_file).unwrap();
    std::fs::rename(staging.join("c"), &live.cert_file).unwrap();
    herald_testkit::eventually_async("the renewed certificate is presented", || async {
        connect(port, &ca, None).await.unwrap() == der(&second)
    })
    .await;
}

#[tokio::test]
async fn client_certificates_of_the_ca_are_required() {
    let ca = TestCa::new();
    let stranger = TestCa::named("Another CA");
    let server = ca.issue("server");
    let (client, intruder) = (ca.issue("client"), stranger.issue("intruder"));
    let settings = ListenerTls { client_ca_file: ca.ca_file().display().to_string(), ..settings(&server) };
    let tls = ServerTls::load(&settings, "grpc", &[]).unwrap().unwrap();
    assert_eq!(tls.client_auth(), Some(ClientAuth::Required));
    let port = serve(&tls).await;
    assert_eq!(connect(port, &ca, Some(&client)).await.unwrap(), der(&server));
    // TLS 1.3: the client's handshake completes before the server checks its
    // certificate; the refusal arrives as an alert on the first read.
    assert!(connect(port, &ca, None).await.is_err(), "no certificate");
    assert!(connect(port, &ca, Some(&intruder)).await.is_err(), "a certificate of another CA");
}

#[test]
fn client_certificates_and_ca_files_are_checked_the_same_way() {
    let ca = TestCa::new();
    let (a, b) = (ca.issue("a"), ca.issue("b"));
    let expired = ca.issue_leaf(Leaf::new("old").expired());
    let now = SystemTime::now();
    let mut errors = Vec::new();
    check_certificate_pair("redis", &a.cert_file, &a.key_file, now, &mut errors);
    check_ca_file("redis.ca_file", &ca.ca_file(), now, &mut errors);
    assert_eq!(errors, Vec::<String>::new());
    check_certificate_pair("redis", &a.cert_file, &b.key_file, now, &mut errors);
    check_certificate_pair("kafka", &expired.cert_file, &expired.key_file, now, &mut errors);
    // A file holding only an expired certificate, used as a CA bundle.
    check_ca_file("kafka.ssl.ca.location", &expired.cert_file, now, &mut errors);
    check_certificate_validity("kafka.ssl.certificate.location", &expired.cert_file, now, &mut errors);
    check_certificate_validity("kafka.ssl.certificate.location", &a.cert_file, now, &mut errors);
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors[3].starts_with("kafka.ssl.certificate.location: ") && errors[3].contains("expired on"));
    assert!(errors[0].starts_with("redis: ") && errors[0].contains("is not the key of"), "{errors:?}");
    assert!(errors[1].starts_with("kafka.cert_file: ") && errors[1].contains("expired on"), "{errors:?}");
    assert!(errors[2].contains("no certificate in it is valid now"), "{errors:?}");
}

/// A TLS client with a session store of its own, trusting `ca`.
fn client_of(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(pem::read_certs(&ca.ca_file()).unwrap());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One connection of `client`, through the server's first bytes (the session
/// ticket comes before them); how its handshake went.
async fn handshake(port: u16, client: &Arc<rustls::ClientConfig>) -> Option<rustls::HandshakeKind> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    let mut stream = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let mut hello = [0u8; 5];
    stream.read_exact(&mut hello).await.unwrap();
    stream.get_ref().1.handshake_kind()
}

#[tokio::test]
async fn a_client_resumes_its_session_however_many_others_came_since() {
    let ca = TestCa::new();
    let tls = ServerTls::load(&settings(&ca.issue("server")), "edge", &[]).unwrap().unwrap();
    let port = serve(&tls).await;
    let returning = client_of(&ca);
    assert_eq!(handshake(port, &returning).await, Some(rustls::HandshakeKind::Full));
    // More clients than a server-side session cache of rustls's default size (256)
    // holds: with it, the first client's session would be gone. The tickets are
    // stateless: nothing per client is kept to be evicted.
    for _ in 0..260 {
        assert_eq!(handshake(port, &client_of(&ca)).await, Some(rustls::HandshakeKind::Full));
    }
    assert_eq!(handshake(port, &returning).await, Some(rustls::HandshakeKind::Resumed));
}
