//! The Pusher HTTP API over real HTTP: publishing, channel state, termination, and
//! every refusal with its status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use herald_core::auth;
use herald_edge::{EdgeConfig, HttpApiConfig};
use herald_testkit::*;
use serde_json::{Value, json};

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
