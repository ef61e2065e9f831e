//! The Pusher HTTP API over real HTTP: publishing, channel state, termination, and
//! every refusal with its status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use herald_core::{App, auth};
use herald_node::{ConnectionConfig, EdgeConfig, HttpApiConfig};
use herald_testkit::*;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn events_path(server: &Server) -> String {
    format!("/apps/{}/events", server.app().id)
}

#[tokio::test]
async fn trigger_to_many_channels_with_info() {
    let server = Server::default().await;
    let app = server.app().clone();
    let mut a = server.connect().await;
    a.subscribe("one").await;
    a.subscribe_presence(&app, "presence-two", "u1").await;
    let body = json!({
        "name": "e", "channels": ["one", "presence-two", "empty"], "data": "d",
        "info": "user_count,subscription_count",
    });
    let (status, reply) = server.api("POST", &events_path(&server), &[], Some(body)).await;
    assert_eq!(status.as_u16(), 200, "{reply}");
    assert_eq!(
        reply,
        json!({ "channels": {
            "one": { "subscription_count": 1 },
            "presence-two": { "user_count": 1, "subscription_count": 1 },
            "empty": { "subscription_count": 0 },
        }})
    );
    assert_eq!(a.recv_event("e").await["channel"], "one");
    assert_eq!(a.recv_event("e").await["channel"], "presence-two");
}

#[tokio::test]
async fn batch_events_publish_each_and_refuse_oversized_batches() {
    let server = Server::default().await;
    let mut a = server.connect().await;
    a.subscribe("b1").await;
    a.subscribe("b2").await;
    let path = format!("/apps/{}/batch_events", server.app().id);
    let batch = json!({ "batch": [
        { "name": "x", "channel": "b1", "data": "1" },
        { "name": "y", "channel": "b2", "data": "2", "info": "subscription_count" },
    ]});
    let (status, reply) = server.api("POST", &path, &[], Some(batch)).await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(reply, json!({ "batch": [{}, { "subscription_count": 1 }] }));
    assert_eq!(a.recv_event("x").await["data"], "1");
    assert_eq!(a.recv_event("y").await["data"], "2");

    let eleven: Vec<Value> =
        (0..11).map(|i| json!({ "name": "z", "channel": "b1", "data": i.to_string() })).collect();
    let (status, reply) = server.api("POST", &path, &[], Some(json!({ "batch": eleven }))).await;
    assert_eq!(status.as_u16(), 400, "{reply}");

    // One bad item: nothing of the batch is published.
    let mixed = json!({ "batch": [
        { "name": "ok", "channel": "b1", "data": "1" },
        { "name": "bad", "channel": "bad channel", "data": "2" },
    ]});
    let (status, reply) = server.api("POST", &path, &[], Some(mixed)).await;
    assert_eq!(status.as_u16(), 400);
    assert!(reply["error"].as_str().unwrap().starts_with("batch[1]"), "{reply}");
    assert!(a.sync().await.is_empty());
}

#[tokio::test]
async fn channel_listing_info_and_users() {
    let server = Server::default().await;
    let app = server.app().clone();
    let base = format!("/apps/{}", app.id);
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    a.subscribe_presence(&app, "presence-lobby", "ann").await;
    b.subscribe_presence(&app, "presence-lobby", "ben").await;

    let (_, all) = server.api("GET", &format!("{base}/channels"), &[], None).await;
    assert_eq!(all, json!({ "channels": { "news": {}, "presence-lobby": {} } }));
    let query = [("filter_by_prefix", "presence-"), ("info", "user_count")];
    let (_, presence) = server.api("GET", &format!("{base}/channels"), &query, None).await;
    assert_eq!(presence, json!({ "channels": { "presence-lobby": { "user_count": 2 } } }));
    let (status, _) = server.api("GET", &format!("{base}/channels"), &[("info", "user_count")], None).await;
    assert_eq!(status.as_u16(), 400, "user_count without the presence- prefix");

    let info = [("info", "user_count,subscription_count")];
    let (_, lobby) = server.api("GET", &format!("{base}/channels/presence-lobby"), &info, None).await;
    assert_eq!(lobby, json!({ "occupied": true, "user_count": 2, "subscription_count": 2 }));
    let (_, news) =
        server.api("GET", &format!("{base}/channels/news"), &[("info", "subscription_count")], None).await;
    assert_eq!(news, json!({ "occupied": true, "subscription_count": 2 }));
    let (_, empty) = server.api("GET", &format!("{base}/channels/nobody"), &[], None).await;
    assert_eq!(empty, json!({ "occupied": false }));
    let (status, _) =
        server.api("GET", &format!("{base}/channels/news"), &[("info", "user_count")], None).await;
    assert_eq!(status.as_u16(), 400);

    let (_, users) = server.api("GET", &format!("{base}/channels/presence-lobby/users"), &[], None).await;
    assert_eq!(users["users"].as_array().unwrap().len(), 2);
    let (status, _) = server.api("GET", &format!("{base}/channels/news/users"), &[], None).await;
    assert_eq!(status.as_u16(), 400);
}

#[tokio::test]
async fn authentication_failures_are_401_with_a_reason() {
    let server = Server::default().await;
    let mut wrong_secret = server.app().clone();
    wrong_secret.secret = "wrong".into();
    let path = events_path(&server);
    let body = json!({ "name": "e", "channels": ["c"], "data": "d" });
    let (status, reply) = server.api_as(&wrong_secret, "POST", &path, &[], Some(body.clone())).await;
    assert_eq!(status.as_u16(), 401);
    assert!(reply["error"].as_str().unwrap().contains("signature"), "{reply}");

    // Expired timestamp.
    let app = server.app();
    let bytes = body.to_string().into_bytes();
    let signed = auth::sign_api_request(app, "POST", &path, vec![], &bytes, now() - 700);
    let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(signed).finish();
    let (status, reply) = http_request(server.addr, "POST", &format!("{path}?{query}"), bytes.clone()).await;
    assert_eq!(status.as_u16(), 401);
    assert!(reply["error"].as_str().unwrap().contains("auth_timestamp"), "{reply}");

    // Body changed after signing.
    let signed = auth::sign_api_request(app, "POST", &path, vec![], &bytes, now());
    let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(signed).finish();
    let (status, reply) = http_request(server.addr, "POST", &format!("{path}?{query}"), b"{}".to_vec()).await;
    assert_eq!(status.as_u16(), 401);
    assert!(reply["error"].as_str().unwrap().contains("body_md5"), "{reply}");

    // No signature at all.
    let (status, _) = http_request(server.addr, "GET", &format!("/apps/{}/channels", app.id), vec![]).await;
    assert_eq!(status.as_u16(), 401);
}

#[tokio::test]
async fn unknown_and_disabled_apps() {
    let mut off = app("off");
    off.enabled = false;
    let server = Server::start(vec![app("app"), off.clone()], config()).await;
    let (status, _) = http_request(server.addr, "GET", "/apps/missing/channels", vec![]).await;
    assert_eq!(status.as_u16(), 404);
    let (status, reply) = server.api_as(&off, "GET", "/apps/off/channels", &[], None).await;
    assert_eq!(status.as_u16(), 403, "{reply}");
    let (status, _) = server.api("GET", "/apps/app/nowhere", &[], None).await;
    assert_eq!(status.as_u16(), 404);
    let (status, _) = server.api("GET", "/apps/app/events", &[], None).await;
    assert_eq!(status.as_u16(), 405);
}

#[tokio::test]
async fn invalid_events_are_400_and_oversized_ones_413() {
    let server = Server::default().await;
    let path = events_path(&server);
    let hundred_one: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    for (body, status) in [
        (json!({ "channels": ["c"], "data": "d" }), 400),
        (json!({ "name": "e", "data": "d" }), 400),
        (json!({ "name": "e", "channels": [], "data": "d" }), 400),
        (json!({ "name": "e", "channels": ["bad name"], "data": "d" }), 400),
        (json!({ "name": "e", "channels": hundred_one, "data": "d" }), 400),
        (json!({ "name": "e", "channels": ["c"], "data": { "not": "a string" } }), 400),
        (json!({ "name": "e", "channels": ["c"], "data": "d", "socket_id": "nope" }), 400),
        (json!({ "name": "pusher:fake", "channels": ["c"], "data": "d" }), 400),
        (json!({ "name": "e", "channels": ["private-encrypted-a", "b"], "data": "d" }), 400),
        (json!({ "name": "e", "channels": ["c"], "data": "x".repeat(10 * 1024 + 1) }), 413),
        (json!({ "name": "e", "channels": ["c"], "data": "x".repeat(10 * 1024) }), 200),
    ] {
        let (got, reply) = server.api("POST", &path, &[], Some(body.clone())).await;
        assert_eq!(got.as_u16(), status, "{body:.80}: {reply}");
        if status != 200 {
            assert!(reply["error"].is_string());
        }
    }
    let (status, _) = http_request(server.addr, "POST", &path, b"{not json".to_vec()).await;
    assert_eq!(status.as_u16(), 401, "unsigned garbage is refused before parsing");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let config =
        EdgeConfig { http: HttpApiConfig { max_body_bytes: 2048, ..Default::default() }, ..config() };
    let server = Server::start(vec![app("app")], config).await;
    let body = json!({ "name": "e", "channels": ["c"], "data": "x".repeat(4096) });
    let (status, reply) = server.api("POST", &events_path(&server), &[], Some(body)).await;
    assert_eq!(status.as_u16(), 413, "{reply}");
}

/// How long a test waits for the server to answer and close before it fails rather
/// than hangs. Not a bound on the server: every limit under test is much shorter.
const GIVE_UP: Duration = Duration::from_secs(20);

/// The signed query of a request whose body is `body` (sent or not), as `app` signs it.
fn signed_query(app: &App, method: &str, path: &str, body: &[u8], timestamp: u64) -> String {
    let signed = auth::sign_api_request(app, method, path, vec![], body, timestamp);
    form_urlencoded::Serializer::new(String::new()).extend_pairs(signed).finish()
}

/// Opens a connection and sends a request head declaring `headers`, then `sent` (all,
/// part or none of the body).
async fn send_head(addr: SocketAddr, method: &str, target: &str, headers: &str, sent: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{headers}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

/// A response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Header lines, lowercased.
    headers: Vec<String>,
    body: Value,
}

fn parse_response(bytes: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers = lines.map(str::to_ascii_lowercase).collect();
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into()));
    RawResponse { status, headers, body }
}

/// Reads until the server closes the connection; returns the one response it sent.
/// A reset counts as a close: a server that closes with request bytes still unread
/// resets the connection, after the response.
async fn response_then_close(mut stream: TcpStream) -> RawResponse {
    let mut bytes = Vec::new();
    let read_all = async {
        let mut buf = [0; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("reading the response: {e}"),
            }
        }
    };
    tokio::time::timeout(GIVE_UP, read_all)
        .await
        .expect("the server neither answered nor closed the connection");
    parse_response(&bytes)
}

/// A server whose body timeout is far longer than [`GIVE_UP`]: an answer that comes
/// in time did not wait for the body.
async fn patient_server() -> Server {
    let http = HttpApiConfig { body_timeout: Duration::from_secs(3600), ..Default::default() };
    Server::start(vec![app("app")], EdgeConfig { http, ..config() }).await
}

/// The server still publishes to a subscriber over a fresh connection.
async fn still_serves(server: &Server) {
    let mut client = server.connect().await;
    client.subscribe("after").await;
    let (status, reply) = server.trigger(&["after"], "fresh", "ok").await;
    assert_eq!(status.as_u16(), 200, "{reply}");
    assert_eq!(client.recv_event("fresh").await["data"], "ok");
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408_and_the_connection_closed() {
    let http = HttpApiConfig { body_timeout: Duration::from_secs(1), ..Default::default() };
    let server = Server::start(vec![app("app")], EdgeConfig { http, ..config() }).await;
    let path = events_path(&server);
    let body = vec![b' '; 100_000];
    let query = signed_query(server.app(), "POST", &path, &body, now());
    for target in [format!("{path}?{query}"), path.clone()] {
        let stream = send_head(server.addr, "POST", &target, "content-length: 100000\r\n", &body[..10]).await;
        let response = response_then_close(stream).await;
        if target == path {
            // Unsigned: refused without waiting for the body at all.
            assert_eq!(response.status, 401, "{response:?}");
            continue;
        }
        assert_eq!(response.status, 408, "{response:?}");
        assert!(response.body["error"].as_str().unwrap().contains("body"), "{response:?}");
        assert!(response.headers.iter().any(|h| h == "connection: close"), "{response:?}");
    }
    still_serves(&server).await;
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_before_any_body() {
    let server = patient_server().await;
    let path = events_path(&server);
    let query = signed_query(server.app(), "POST", &path, b"{}", now());
    let stream =
        send_head(server.addr, "POST", &format!("{path}?{query}"), "content-length: 1000000000000\r\n", b"")
            .await;
    let response = response_then_close(stream).await;
    assert_eq!(response.status, 413, "{response:?}");
    assert!(response.body["error"].as_str().unwrap().contains("262144"), "{response:?}");
    still_serves(&server).await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413() {
    let http = HttpApiConfig { max_body_bytes: 2048, ..Default::default() };
    let server = Server::start(vec![app("app")], EdgeConfig { http, ..config() }).await;
    let path = events_path(&server);
    let query = signed_query(server.app(), "POST", &path, b"{}", now());
    let chunk = format!("{:x}\r\n{}\r\n", 1024, "x".repeat(1024));
    let stream = send_head(
        server.addr,
        "POST",
        &format!("{path}?{query}"),
        "transfer-encoding: chunked\r\n",
        chunk.repeat(3).as_bytes(),
    )
    .await;
    let response = response_then_close(stream).await;
    assert_eq!(response.status, 413, "{response:?}");
    still_serves(&server).await;
}

#[tokio::test]
async fn requests_that_fail_their_checks_are_answered_without_the_body() {
    let mut off = app("off");
    off.enabled = false;
    let http = HttpApiConfig { body_timeout: Duration::from_secs(3600), ..Default::default() };
    let server = Server::start(vec![app("app"), off.clone()], EdgeConfig { http, ..config() }).await;
    let app = server.app().clone();
    let path = events_path(&server);
    // The body each request declares and never sends.
    let body = br#"{"name":"e","channels":["c"],"data":"d"}"#;
    let mut wrong_secret = app.clone();
    wrong_secret.secret = "wrong".into();
    let mut wrong_key = app.clone();
    wrong_key.key = "nobody-key".into();
    let nowhere = format!("/apps/{}/nowhere", app.id);
    let cases = [
        ("bad signature", "POST", path.clone(), signed_query(&wrong_secret, "POST", &path, body, now()), 401),
        ("unknown key", "POST", path.clone(), signed_query(&wrong_key, "POST", &path, body, now()), 401),
        ("stale timestamp", "POST", path.clone(), signed_query(&app, "POST", &path, body, now() - 700), 401),
        ("unsigned", "POST", path.clone(), String::new(), 401),
        ("unknown app", "POST", "/apps/missing/events".into(), String::new(), 404),
        (
            "disabled app",
            "POST",
            "/apps/off/events".into(),
            signed_query(&off, "POST", "/apps/off/events", body, now()),
            403,
        ),
        ("no such endpoint", "POST", nowhere.clone(), signed_query(&app, "POST", &nowhere, body, now()), 404),
        ("wrong method", "PUT", path.clone(), signed_query(&app, "PUT", &path, body, now()), 405),
        ("not the API", "POST", "/elsewhere".into(), String::new(), 404),
    ];
    for (what, method, path, query, status) in cases {
        let headers = format!("content-length: {}\r\n", body.len());
        let stream = send_head(server.addr, method, &format!("{path}?{query}"), &headers, b"").await;
        let response = response_then_close(stream).await;
        assert_eq!(response.status, status, "{what}: {response:?}");
        assert!(response.body["error"].is_string(), "{what}: {response:?}");
    }
    still_serves(&server).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let connection = ConnectionConfig { handshake_timeout: Duration::from_secs(1), ..Default::default() };
    let server = Server::start(vec![app("app")], EdgeConfig { connection, ..config() }).await;
    let path = format!("/apps/{}/channels", server.app().id);
    let query = signed_query(server.app(), "GET", &path, b"", now());
    let stream = send_head(server.addr, "GET", &format!("{path}?{query}"), "", b"").await;
    // One answered request, then nothing: the connection is closed after the timeout.
    let response = response_then_close(stream).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, json!({ "channels": {} }));

    // The same for a connection that starts a second request and never ends its head.
    let mut stream = send_head(server.addr, "GET", &format!("{path}?{query}"), "", b"").await;
    let mut first = vec![0; 1024];
    let n = tokio::time::timeout(GIVE_UP, stream.read(&mut first)).await.unwrap().unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&first[..n]));
    stream.write_all(b"GET /apps/app/channels HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(GIVE_UP, stream.read_to_end(&mut rest))
        .await
        .expect("a request head that never ends was kept open")
        .unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_its_responses_is_dropped() {
    let connection = ConnectionConfig { write_timeout: Duration::from_secs(1), ..Default::default() };
    let server = Server::start(vec![app("app")], EdgeConfig { connection, ..config() }).await;
    let path = format!("/apps/{}/channels", server.app().id);
    let query = signed_query(server.app(), "GET", &path, b"", now());
    let requests = format!("GET {path}?{query} HTTP/1.1\r\nhost: x\r\n\r\n").repeat(100);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    // Pipelined requests, and not one response read: the answers fill the socket
    // buffers, the server's writes wait, and it must give up on the connection
    // (which then refuses these writes) rather than hold it.
    let refused =
        tokio::time::timeout(GIVE_UP, async { while stream.write_all(requests.as_bytes()).await.is_ok() {} })
            .await;
    assert!(refused.is_ok(), "a client that reads nothing was kept");
    still_serves(&server).await;
}
