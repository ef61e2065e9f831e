//! The Pusher Channels protocol v7, driven through a real socket against a real server:
//! connection, channels of every kind, presence, client events, sign-in, errors, limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_core::auth;
use herald_node::{ConnectionConfig, EdgeConfig};
use herald_testkit::*;
use serde_json::json;

#[tokio::test]
async fn connection_established_gives_unique_socket_ids_and_the_activity_timeout() {
    let server = Server::default().await;
    let mut a = Client::connect(server.addr, "app-key").await;
    let b = Client::connect(server.addr, "app-key").await;
    assert_ne!(a.socket_id, b.socket_id);
    let (node, conn) = a.socket_id.split_once('.').unwrap();
    assert_eq!(node, server.node.id().to_string());
    assert!(conn.parse::<u64>().is_ok());
    // pusher:ping is answered with pusher:pong.
    a.send(json!({ "event": "pusher:ping", "data": {} })).await;
    assert_eq!(a.recv().await["event"], "pusher:pong");
}

#[tokio::test]
async fn the_established_message_advertises_the_activity_timeout() {
    let server = Server::default().await;
    let mut ws = open(server.addr, "/app/app-key?protocol=7").await;
    let frame = ws.read_frame().await.unwrap();
    let message: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
    assert_eq!(data(&message)["activity_timeout"], 120);
}

async fn refused(server: &Server, path: &str) -> Closed {
    let ws = open(server.addr, path).await;
    let mut client = Client { ws, socket_id: String::new() };
    client.closed().await
}

#[tokio::test]
async fn admission_errors_carry_pusher_codes() {
    let mut disabled = app("off");
    disabled.enabled = false;
    let server = Server::start(vec![app("app"), disabled], config()).await;
    for (path, code) in [
        ("/app/nope?protocol=7", 4001),
        ("/app/off-key?protocol=7", 4003),
        ("/app/app-key", 4008),
        ("/app/app-key?protocol=seven", 4006),
        ("/app/app-key?protocol=8", 4007),
        ("/somewhere?protocol=7", 4005),
    ] {
        let closed = refused(&server, path).await;
        assert_eq!(closed.code, Some(code), "{path}: {closed:?}");
        let error = &closed.messages[0];
        assert_eq!(error["event"], "pusher:error", "{path}");
        assert_eq!(error["data"]["code"], code, "{path}");
    }
}

#[tokio::test]
async fn over_the_connection_quota_is_4004() {
    let mut limited = app("app");
    limited.limits.max_connections = 1;
    let server = Server::start(vec![limited], config()).await;
    let first = server.connect().await;
    let closed = refused(&server, "/app/app-key?protocol=7").await;
    assert_eq!(closed.code, Some(4004));
    drop(first);
    // The slot frees when the first connection goes.
    eventually_connects(&server).await;
}

async fn eventually_connects(server: &Server) {
    eventually_async("a connection admitted again", || async {
        let mut ws = open(server.addr, "/app/app-key?protocol=7").await;
        let frame = ws.read_frame().await.unwrap();
        let message: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
        message["event"] == "pusher:connection_established"
    })
    .await;
}

#[tokio::test]
async fn idle_clients_are_pinged_and_closed_with_4201_without_a_pong() {
    let config = EdgeConfig {
        connection: ConnectionConfig {
            activity_timeout: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..config()
    };
    let server = Server::start(vec![app("app")], config).await;
    let mut answering = server.connect().await;
    let mut silent = server.connect().await;
    // The answering client gets a ping, answers, and is pinged again later: still open.
    assert_eq!(answering.recv().await["event"], "pusher:ping");
    answering.send(json!({ "event": "pusher:pong", "data": {} })).await;
    assert_eq!(answering.recv().await["event"], "pusher:ping");
    let closed = silent.closed().await;
    assert_eq!(closed.code, Some(4201), "{closed:?}");
    assert_eq!(closed.messages[0]["event"], "pusher:ping");
}

#[tokio::test]
async fn public_channel_delivery_exclusion_and_unsubscribe() {
    let server = Server::default().await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    let ok = a.subscribe("news").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(ok["data"], "{}");
    b.subscribe("news").await;

    let (status, body) = server.trigger(&["news"], "headline", r#"{"title":"hi"}"#).await;
    assert_eq!((status.as_u16(), body), (200, json!({})));
    for client in [&mut a, &mut b] {
        let event = client.recv_event("headline").await;
        assert_eq!(event["channel"], "news");
        assert_eq!(data(&event), json!({"title": "hi"}));
    }

    // socket_id exclusion: a is excluded, b is not.
    let path = format!("/apps/{}/events", server.app().id);
    let body = json!({ "name": "ex", "channels": ["news"], "data": "1", "socket_id": a.socket_id });
    assert_eq!(server.api("POST", &path, &[], Some(body)).await.0.as_u16(), 200);
    assert_eq!(b.recv_event("ex").await["data"], "1");
    assert!(a.sync().await.is_empty(), "the excluded socket got the event");

    a.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "news" } })).await;
    a.sync().await;
    server.trigger(&["news"], "after", "2").await;
    b.recv_event("after").await;
    assert!(a.sync().await.is_empty(), "unsubscribed socket got an event");
}

#[tokio::test]
async fn private_channels_need_a_valid_signature() {
    let server = Server::default().await;
    let app = server.app().clone();
    let mut client = server.connect().await;

    client.send(json!({ "event": "pusher:subscribe", "data": { "channel": "private-a" } })).await;
    let error = client.subscription_result("private-a").await;
    assert_eq!(error["event"], "pusher:subscription_error");
    assert_eq!(error["data"]["status"], 401);

    let wrong = auth::channel_auth(&app, "1.1", "private-a", None);
    client
        .send(json!({ "event": "pusher:subscribe", "data": { "channel": "private-a", "auth": wrong } }))
        .await;
    let error = client.subscription_result("private-a").await;
    assert_eq!(error["event"], "pusher:subscription_error");
    assert_eq!(error["data"]["type"], "AuthError");

    let ok = client.subscribe_private(&app, "private-a").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    server.trigger(&["private-a"], "secret", "s").await;
    assert_eq!(client.recv_event("secret").await["data"], "s");

    // Encrypted channels authorize the same way.
    let ok = client.subscribe_private(&app, "private-encrypted-a").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
}

#[tokio::test]
async fn presence_members_are_counted_once_per_user() {
    let server = Server::default().await;
    let app = server.app().clone();
    let mut alice1 = server.connect().await;
    let mut alice2 = server.connect().await;
    let mut bob = server.connect().await;

    let ok = alice1.subscribe_presence(&app, "presence-room", "alice").await;
    assert_eq!(
        data(&ok)["presence"],
        json!({ "ids": ["alice"], "hash": { "alice": { "name": "alice" } }, "count": 1 })
    );

    let ok = bob.subscribe_presence(&app, "presence-room", "bob").await;
    let presence = &data(&ok)["presence"];
    assert_eq!(presence["count"], 2);
    let added = alice1.recv_event("pusher_internal:member_added").await;
    assert_eq!(data(&added), json!({ "user_id": "bob", "user_info": { "name": "bob" } }));

    // Alice's second connection: no member_added for anyone.
    let ok = alice2.subscribe_presence(&app, "presence-room", "alice").await;
    assert_eq!(data(&ok)["presence"]["count"], 2);
    let seen = bob.sync().await;
    assert!(seen.iter().all(|m| m["event"] != "pusher_internal:member_added"), "{seen:?}");

    let path = format!("/apps/{}/channels/presence-room/users", app.id);
    let (_, users) = server.api("GET", &path, &[], None).await;
    let mut ids: Vec<_> = users["users"].as_array().unwrap().iter().map(|u| u["id"].clone()).collect();
    ids.sort_by_key(|v| v.to_string());
    assert_eq!(ids, [json!("alice"), json!("bob")]);

    // member_removed only when Alice's last connection leaves.
    drop(alice1);
    assert!(bob.sync().await.iter().all(|m| m["event"] != "pusher_internal:member_removed"));
    alice2.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "presence-room" } })).await;
    let removed = bob.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data(&removed), json!({ "user_id": "alice" }));
}

#[tokio::test]
async fn presence_limits_and_bad_channel_data() {
    let mut limited = app("app");
    limited.limits.max_presence_members = 1;
    limited.limits.max_presence_user_info_bytes = 20;
    let server = Server::start(vec![limited.clone()], config()).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    assert_eq!(
        a.subscribe_presence(&limited, "presence-x", "a").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let full = b.subscribe_presence(&limited, "presence-x", "b").await;
    assert_eq!(full["event"], "pusher:subscription_error");
    assert_eq!(full["data"]["status"], 403);

    // user_info over the limit, and channel_data without a user_id.
    for channel_data in [
        json!({ "user_id": "c", "user_info": { "bio": "x".repeat(50) } }).to_string(),
        json!({ "user_info": {} }).to_string(),
    ] {
        let auth = auth::channel_auth(&limited, &b.socket_id, "presence-y", Some(&channel_data));
        b.send(json!({ "event": "pusher:subscribe", "data": { "channel": "presence-y", "auth": auth, "channel_data": channel_data } }))
            .await;
        let error = b.subscription_result("presence-y").await;
        assert_eq!(error["event"], "pusher:subscription_error", "{channel_data}");
        assert_eq!(error["data"]["status"], 400);
    }
}

#[tokio::test]
async fn client_events_reach_others_with_user_id_on_presence() {
    let server = Server::default().await;
    let app = server.app().clone();
    let mut alice = server.connect().await;
    let mut bob = server.connect().await;
    alice.subscribe_presence(&app, "presence-chat", "alice").await;
    bob.subscribe_presence(&app, "presence-chat", "bob").await;
    alice.subscribe_private(&app, "private-chat").await;
    bob.subscribe_private(&app, "private-chat").await;

    alice.send(json!({ "event": "client-typing", "channel": "presence-chat", "data": { "on": true } })).await;
    let typing = bob.recv_event("client-typing").await;
    assert_eq!(typing["data"], json!({ "on": true }), "data is relayed as sent");
    assert_eq!(typing["user_id"], "alice");

    alice.send(json!({ "event": "client-private", "channel": "private-chat", "data": "x" })).await;
    let private = bob.recv_event("client-private").await;
    assert!(private.get("user_id").is_none());
    assert!(
        alice.sync().await.iter().all(|m| !m["event"].as_str().unwrap().starts_with("client-")),
        "echoed"
    );
}

#[tokio::test]
async fn client_events_are_refused_where_pusher_refuses_them() {
    let mut no_client_events = app("quiet");
    no_client_events.enable_client_events = false;
    let server = Server::start(vec![app("app"), no_client_events.clone()], config()).await;
    let app = server.app().clone();
    let mut client = server.connect().await;
    client.subscribe("public").await;
    client.subscribe_private(&app, "private-encrypted-e").await;
    for (channel, why) in [
        ("public", "private and presence"),
        ("private-encrypted-e", "private and presence"),
        ("private-x", "not subscribed"),
    ] {
        client.send(json!({ "event": "client-x", "channel": channel, "data": {} })).await;
        let error = client.recv_event("pusher:error").await;
        assert!(error["data"]["message"].as_str().unwrap().contains(why), "{channel}: {error}");
    }
    let mut quiet = Client::connect(server.addr, &no_client_events.key).await;
    quiet.subscribe_private(&no_client_events, "private-q").await;
    quiet.send(json!({ "event": "client-x", "channel": "private-q", "data": {} })).await;
    let error = quiet.recv_event("pusher:error").await;
    assert!(error["data"]["message"].as_str().unwrap().contains("not enabled"));
}

#[tokio::test]
async fn client_events_over_the_rate_get_4301() {
    let server = Server::default().await;
    let app = server.app().clone();
    let mut sender = server.connect().await;
    let mut receiver = server.connect().await;
    sender.subscribe_private(&app, "private-r").await;
    receiver.subscribe_private(&app, "private-r").await;
    for i in 0..30 {
        sender.send(json!({ "event": "client-burst", "channel": "private-r", "data": i })).await;
    }
    let replies = sender.sync().await;
    let limited: Vec<_> = replies.iter().filter(|m| m["data"]["code"] == 4301).collect();
    assert!(limited.len() >= 19, "{replies:?}");
    let received = receiver.sync().await;
    let count = received.iter().filter(|m| m["event"] == "client-burst").count();
    assert!((10..=11).contains(&count), "received {count}");
}

#[tokio::test]
async fn signin_unlocks_the_user_channel_and_terminate_closes_its_connections() {
    let server = Server::default().await;
    let app = server.app().clone();
    let mut alice = server.connect().await;
    let mut bob = server.connect().await;

    // Not signed in: the user channel is refused.
    let refused = alice.subscribe("#server-to-user-alice").await;
    assert_eq!(refused["event"], "pusher:subscription_error");

    let success = alice.signin(&app, "alice").await;
    assert_eq!(success["event"], "pusher:signin_success");
    assert_eq!(data(&success)["user_data"], r#"{"id":"alice"}"#);
    assert_eq!(
        alice.subscribe("#server-to-user-alice").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(alice.subscribe("#server-to-user-bob").await["event"], "pusher:subscription_error");
    bob.signin(&app, "bob").await;

    server.trigger(&["#server-to-user-alice"], "dm", "hello").await;
    assert_eq!(alice.recv_event("dm").await["data"], "hello");

    // A bad signin signature is an error, not a sign-in.
    let mut mallory = server.connect().await;
    mallory.send(json!({ "event": "pusher:signin", "data": { "auth": "app-key:00", "user_data": "{\"id\":\"alice\"}" } })).await;
    assert_eq!(mallory.recv().await["data"]["code"], 4009);

    let path = format!("/apps/{}/users/alice/terminate_connections", app.id);
    let (status, _) = server.api("POST", &path, &[], Some(json!({}))).await;
    assert_eq!(status.as_u16(), 200);
    let closed = alice.closed().await;
    assert_eq!(closed.code, Some(4200), "terminated clients may reconnect, as with Pusher");
    assert!(bob.sync().await.is_empty(), "bob is untouched");
}

#[tokio::test]
async fn bad_input_gets_errors_and_keeps_the_connection() {
    let server = Server::default().await;
    let mut client = server.connect().await;
    for text in [
        "not json",
        "{\"event\":5}",
        "[]",
        "{\"event\":\"pusher:subscribe\",\"data\":{}}",
        "{\"event\":\"nope\"}",
    ] {
        client.send_text(text).await;
        let error = client.recv().await;
        assert_eq!(error["event"], "pusher:error", "{text}");
    }
    client.send_binary(b"\x00\x01").await;
    assert!(client.recv().await["data"]["message"].as_str().unwrap().contains("binary"));

    for (channel, status) in [("bad channel", 400), (&"x".repeat(165)[..], 400)] {
        let error = client.subscribe(channel).await;
        assert_eq!(error["event"], "pusher:subscription_error");
        assert_eq!(error["data"]["status"], status);
    }
    // Still usable.
    assert_eq!(client.subscribe("fine").await["event"], "pusher_internal:subscription_succeeded");
}

#[tokio::test]
async fn too_many_channels_per_connection_is_refused() {
    let mut limited = app("app");
    limited.limits.max_channels_per_connection = 3;
    let server = Server::start(vec![limited], config()).await;
    let mut client = server.connect().await;
    for i in 0..3 {
        assert_eq!(
            client.subscribe(&format!("c{i}")).await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    let error = client.subscribe("c3").await;
    assert_eq!(error["data"]["type"], "LimitReached");
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let config = EdgeConfig {
        connection: ConnectionConfig { max_message_bytes: 1024, ..Default::default() },
        ..config()
    };
    let server = Server::start(vec![app("app")], config).await;
    let mut client = server.connect().await;
    client.send_text(&format!("{{\"event\":\"x\",\"data\":\"{}\"}}", "a".repeat(2000))).await;
    assert_eq!(client.closed().await.code, Some(1009));
}

#[tokio::test]
async fn client_event_data_over_the_limit_is_refused() {
    let server = Server::default().await;
    let app = server.app().clone();
    let mut client = server.connect().await;
    client.subscribe_private(&app, "private-big").await;
    client
        .send(json!({ "event": "client-big", "channel": "private-big", "data": "a".repeat(11 * 1024) }))
        .await;
    let error = client.recv_event("pusher:error").await;
    assert!(error["data"]["message"].as_str().unwrap().contains("limit"), "{error}");
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_with_4100_while_others_keep_up() {
    let config = EdgeConfig {
        connection: ConnectionConfig { outbound_queue_bytes: 256 * 1024, ..Default::default() },
        ..config()
    };
    let server = Server::start(vec![app("app")], config).await;
    let mut slow = server.connect().await;
    let mut fast = server.connect().await;
    slow.subscribe("firehose").await;
    fast.subscribe("firehose").await;

    // 16 MB through a channel the slow client never reads: far more than the kernel's
    // socket buffers and the 256 KiB queue can hold.
    let payload = "x".repeat(10_000);
    let path = format!("/apps/{}/batch_events", server.app().id);
    let batches = 160;
    let reader = tokio::spawn(async move {
        let mut received = 0;
        while received < batches * 10 {
            if fast.recv().await["event"] == "burst" {
                received += 1;
            }
        }
        received
    });
    for _ in 0..batches {
        let batch: Vec<_> =
            (0..10).map(|_| json!({ "name": "burst", "channel": "firehose", "data": payload })).collect();
        let (status, _) = server.api("POST", &path, &[], Some(json!({ "batch": batch }))).await;
        assert_eq!(status.as_u16(), 200);
    }
    assert_eq!(reader.await.unwrap(), batches * 10, "the fast consumer got everything");
    let closed = slow.closed().await;
    assert_eq!(closed.code, Some(4100), "after {} messages", closed.messages.len());
    assert_eq!(closed.messages.last().unwrap()["data"]["code"], 4100);
}

#[tokio::test]
async fn shutdown_closes_clients_with_4200_spread_over_the_grace_period() {
    let mut server = Server::default().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(server.connect().await);
    }
    let started = tokio::time::Instant::now();
    let serve = server.shutdown();
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let closed = c.closed().await;
                (closed.code, started.elapsed())
            })
        })
        .collect();
    let mut times = Vec::new();
    for close in closes {
        let (code, at) = close.await.unwrap();
        assert_eq!(code, Some(4200));
        times.push(at);
    }
    // It returns once every session has closed (how soon is the grace's business, not
    // a wall-clock bound here).
    Deadline::after(WAIT).run(serve, || "serve to return".into()).await.unwrap();
    times.sort();
    // Grace 2 s, spread over 1.6 s: the 20 closes are not all in one instant.
    let span = *times.last().unwrap() - times[0];
    assert!(span >= Duration::from_millis(800), "closes spanned only {span:?}");
    // New connections are refused once shutdown began.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn dedicated_edge_threads_serve_deliver_and_shut_down() {
    let mut server = Server::start(vec![app("app")], EdgeConfig { threads: 2, ..config() }).await;
    let mut clients = Vec::new();
    for _ in 0..16 {
        let mut client = server.connect().await;
        client.subscribe("news").await;
        clients.push(client);
    }
    let ids: std::collections::HashSet<_> = clients.iter().map(|c| c.socket_id.clone()).collect();
    assert_eq!(ids.len(), 16, "socket ids stay unique across threads");
    let (status, _) = server.trigger(&["news"], "hello", "world").await;
    assert_eq!(status.as_u16(), 200);
    for client in &mut clients {
        assert_eq!(client.recv_event("hello").await["data"], "world");
    }
    let serve = server.shutdown();
    for client in &mut clients {
        assert_eq!(client.closed().await.code, Some(4200));
    }
    // It returns once every session has closed (how soon is the grace's business, not
    // a wall-clock bound here).
    Deadline::after(WAIT).run(serve, || "serve to return".into()).await.unwrap();
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "no thread still listens");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = EdgeConfig {
        connection: ConnectionConfig { handshake_timeout: Duration::from_secs(1), ..Default::default() },
        ..config()
    };
    let server = Server::start(vec![app("app")], config).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // The headers never end: the server must give up rather than hold the socket.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the half-open handshake was kept past the timeout");
}

/// Sends `request` on a fresh connection and returns everything the server answers
/// until it closes the connection (or 5 s pass).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_bad_first_request_gets_a_clear_http_error() {
    let config = EdgeConfig {
        connection: ConnectionConfig { max_request_head_bytes: 1024, ..Default::default() },
        ..config()
    };
    let server = Server::start(vec![app("app")], config).await;
    let upgrade =
        "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";

    // A head over `max_request_head_bytes`: 431, and the connection is closed.
    let huge = format!("{upgrade}X-Filler: {}\r\n\r\n", "a".repeat(2000));
    let answer = raw_exchange(server.addr, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A WebSocket version other than 13: 426 naming the one spoken.
    let old =
        format!("{upgrade}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n");
    let answer = raw_exchange(server.addr, old.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    assert!(answer.contains("Sec-WebSocket-Version: 13"), "{answer}");

    // No key: 400. Garbage: 400.
    let answer =
        raw_exchange(server.addr, format!("{upgrade}Sec-WebSocket-Version: 13\r\n\r\n").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw_exchange(server.addr, b"\x00\x01 nonsense\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // An upgrade after another request on the same connection: 400 from the HTTP side.
    let second = format!(
        "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n{upgrade}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_exchange(server.addr, second.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("first request on its connection"), "{answer}");
}
