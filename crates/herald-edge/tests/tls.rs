//! The edge port over TLS: `wss://` and `https://` with the same protocols inside,
//! the outbox's queue and overflow over encrypted connections, client certificates
//! for the HTTP API only (`client_auth = "api"`), and a certificate renewed under
//! connected clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use herald_node::EdgeConfig;
use herald_testkit::{
    Client, Server, app, config,
    tls::{Issued, TestCa},
};
use herald_tls::{ClientAuth, ListenerTls, ServerTls};
use http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn settings(cert: &Issued) -> ListenerTls {
    ListenerTls {
        cert_file: cert.cert_file.display().to_string(),
        key_file: cert.key_file.display().to_string(),
        ..ListenerTls::default()
    }
}

async fn tls_server(settings: &ListenerTls, config: EdgeConfig) -> Server {
    let tls = ServerTls::load(settings, "edge", &[b"http/1.1"]).unwrap().unwrap();
    Server::start_tls(vec![app("app")], config, tls).await
}

async fn trigger(
    server: &Server,
    client: Arc<rustls::ClientConfig>,
    channel: &str,
    data: &str,
) -> StatusCode {
    let body = json!({ "name": "news", "channels": [channel], "data": data });
    let path = format!("/apps/{}/events", server.app().id);
    server.api_tls(client, "POST", &path, Some(body)).await.0
}

#[tokio::test]
async fn wss_and_https_carry_the_pusher_protocols() {
    let ca = TestCa::new();
    let server = tls_server(&settings(&ca.issue("edge")), config()).await;
    let trust = ca.client_config(None);
    let mut client = Client::connect_tls(server.addr, &server.app().key, trust.clone()).await;
    client.subscribe("news").await;
    assert_eq!(trigger(&server, trust.clone(), "news", "over TLS").await, StatusCode::OK);
    let event = client.recv_event("news").await;
    assert_eq!(event["data"], "over TLS");
    // The client's own frames are decrypted too: a ping is answered.
    client.send(json!({ "event": "pusher:ping", "data": {} })).await;
    client.recv_event("pusher:pong").await;

    // Plain HTTP to the TLS port: the handshake fails and the connection is closed,
    // nothing waits.
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(b"GET /apps/app/channels HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "served in plain text");

    // A client that does not trust the server's CA refuses it.
    let stranger = TestCa::named("Another CA");
    assert!(herald_testkit::tls::connect(server.addr, stranger.client_config(None)).await.is_err());
}

#[tokio::test]
async fn a_burst_arrives_whole_and_in_order() {
    let ca = TestCa::new();
    let server = tls_server(&settings(&ca.issue("edge")), config()).await;
    let trust = ca.client_config(None);
    let mut client = Client::connect_tls(server.addr, &server.app().key, trust.clone()).await;
    client.subscribe("burst").await;
    // Published faster than one write each: the outbox queues and encrypts batches.
    let path = format!("/apps/{}/batch_events", server.app().id);
    let filler = "x".repeat(2000);
    for batch in 0..40 {
        let events: Vec<_> = (0..10)
            .map(|i| json!({ "name": "n", "channel": "burst", "data": format!("{} {filler}", batch * 10 + i) }))
            .collect();
        let (status, _) =
            server.api_tls(trust.clone(), "POST", &path, Some(json!({ "batch": events }))).await;
        assert_eq!(status, StatusCode::OK);
    }
    for expected in 0..400 {
        let event = client.recv_event("n").await;
        let data = event["data"].as_str().unwrap();
        assert_eq!(data.split(' ').next(), Some(expected.to_string().as_str()));
    }
}

#[tokio::test]
async fn a_tls_client_that_stops_reading_is_cut_off_with_4100_after_what_it_was_sent() {
    let ca = TestCa::new();
    let mut config = config();
    config.connection.outbound_queue_bytes = 64 * 1024;
    let server = tls_server(&settings(&ca.issue("edge")), config).await;
    let trust = ca.client_config(None);
    let mut client = Client::connect_tls(server.addr, &server.app().key, trust.clone()).await;
    client.subscribe("firehose").await;
    let closing = || {
        let mut closing = false;
        server.node.sessions().for_each_shard(|shard| closing |= shard.values().any(|o| o.is_closing()));
        closing
    };
    let data = "y".repeat(8 * 1024);
    let mut published = 0;
    while !closing() {
        assert_eq!(trigger(&server, trust.clone(), "firehose", &data).await, StatusCode::OK);
        published += 1;
        assert!(published < 5_000, "never overflowed");
    }
    // Whatever was encrypted arrives intact, then the 4100.
    let closed = client.closed().await;
    assert_eq!(closed.code, Some(4100));
    assert!(closed.messages.iter().filter(|m| m["event"] == "news").all(|m| m["data"] == data.as_str()));
}

#[tokio::test]
async fn client_certificates_guard_the_http_api_not_websocket_clients() {
    let ca = TestCa::new();
    let stranger = TestCa::named("Another CA");
    let settings = ListenerTls {
        client_ca_file: ca.ca_file().display().to_string(),
        client_auth: ClientAuth::Api,
        ..settings(&ca.issue("edge"))
    };
    let server = tls_server(&settings, config()).await;
    let (backend, browser) = (ca.client_config(Some(&ca.issue("backend"))), ca.client_config(None));

    let mut client = Client::connect_tls(server.addr, &server.app().key, browser.clone()).await;
    client.subscribe("news").await;
    assert_eq!(trigger(&server, browser.clone(), "news", "no certificate").await, StatusCode::UNAUTHORIZED);
    assert_eq!(trigger(&server, backend, "news", "with one").await, StatusCode::OK);
    assert_eq!(client.recv_event("news").await["data"], "with one");

    // A certificate of another CA fails the handshake (TLS 1.3: at the first read).
    let intruder = ca.client_config(Some(&stranger.issue("intruder")));
    let refused = tokio::spawn(async move {
        let mut stream = herald_testkit::tls::connect(server.addr, intruder).await?;
        stream.write_all(b"GET /apps/app/channels HTTP/1.1\r\nhost: x\r\n\r\n").await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map(|_| answer)
    });
    match refused.await.unwrap() {
        Err(_) => {}
        Ok(answer) => assert!(answer.is_empty(), "served: {}", String::from_utf8_lossy(&answer)),
    }
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_handshakes_while_connected_clients_keep_receiving() {
    let ca = TestCa::new();
    let (first, second) = (ca.issue("first"), ca.issue("second"));
    let live = ca.issue("live");
    std::fs::copy(&first.cert_file, &live.cert_file).unwrap();
    std::fs::copy(&first.key_file, &live.key_file).unwrap();
    let settings = ListenerTls { reload_interval: Duration::from_secs(1), ..settings(&live) };
    let server = tls_server(&settings, config()).await;
    let trust = ca.client_config(None);
    let presented = || async {
        let stream = herald_testkit::tls::connect(server.addr, trust.clone()).await.unwrap();
        stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let der = |issued: &Issued| herald_tls::pem::read_certs(&issued.cert_file).unwrap().remove(0).to_vec();
    assert_eq!(presented().await, der(&first));
    let mut client = Client::connect_tls(server.addr, &server.app().key, trust.clone()).await;
    client.subscribe("news").await;

    std::fs::copy(&second.key_file, &live.key_file).unwrap();
    std::fs::copy(&second.cert_file, &live.cert_file).unwrap();
    herald_testkit::eventually_async("new handshakes present the renewed certificate", || async {
        presented().await == der(&second)
    })
    .await;
    assert_eq!(trigger(&server, trust.clone(), "news", "after the renewal").await, StatusCode::OK);
    assert_eq!(client.recv_event("news").await["data"], "after the renewal");
}

#[tokio::test]
async fn a_client_that_never_completes_its_handshake_is_closed_after_the_handshake_timeout() {
    let ca = TestCa::new();
    let mut config = config();
    config.connection.handshake_timeout = Duration::from_millis(300);
    let server = tls_server(&settings(&ca.issue("edge")), config).await;
    // Half a ClientHello (a TLS record header announcing more), then nothing.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let mut answer = Vec::new();
    // The server closes it (the bound only keeps a broken server from hanging the test).
    let closed = tokio::time::timeout(herald_testkit::WAIT, stalled.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the stalled handshake was never closed");
    // And a client that does complete its handshake is still served.
    let mut client = Client::connect_tls(server.addr, &server.app().key, ca.client_config(None)).await;
    client.subscribe("news").await;
}
