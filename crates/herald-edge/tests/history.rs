//! Channel history on the wire, through a real socket against a real server: offsets
//! and epochs on the messages of channels that keep history, the position in the
//! subscription ack, and recovery (`since`) with everything missed replayed in order,
//! exactly once, before the live channel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_core::{App, ChannelPattern, HistoryRule};
use herald_node::{EventRequest, validate_event};
use herald_testkit::*;
use serde_json::{Value, json};

fn history_app(size: usize) -> App {
    App {
        history: vec![HistoryRule {
            channels: ChannelPattern::new("history-*").unwrap(),
            size,
            ttl: Duration::from_secs(300),
            meta_ttl: Duration::from_secs(3600),
        }],
        ..app("app")
    }
}

async fn subscribe_since(client: &mut Client, channel: &str, since: Option<(u64, &str)>) -> Vec<Value> {
    let mut data = json!({ "channel": channel });
    if let Some((offset, epoch)) = since {
        data["since"] = json!({ "offset": offset, "epoch": epoch });
    }
    client.send(json!({ "event": "pusher:subscribe", "data": data })).await;
    // Everything up to and including the ack.
    let mut messages = Vec::new();
    loop {
        let message = client.recv().await;
        let done = message["event"] == "pusher_internal:subscription_succeeded"
            || message["event"] == "pusher:subscription_error";
        messages.push(message);
        if done {
            return messages;
        }
    }
}

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages.iter().filter_map(|m| m["offset"].as_u64()).collect()
}

#[tokio::test]
async fn history_channels_carry_offsets_and_a_reconnecting_client_recovers_what_it_missed() {
    let server = Server::start(vec![history_app(5)], config()).await;
    let mut first = server.connect().await;
    let acked = subscribe_since(&mut first, "history-room", None).await;
    let ack = data(acked.last().unwrap());
    assert_eq!(ack["position"]["offset"], 0, "{ack}");
    assert!(ack.get("recovered").is_none(), "no position was given: {ack}");
    let epoch = ack["position"]["epoch"].as_str().unwrap().to_owned();

    for i in 1..=3 {
        server.trigger(&["history-room"], "e", &format!("m{i}")).await;
    }
    for i in 1..=3u64 {
        let message = first.recv_event("e").await;
        assert_eq!((message["offset"].as_u64(), message["epoch"].as_str()), (Some(i), Some(epoch.as_str())));
        assert_eq!(message["data"], format!("m{i}"), "the data as published");
    }

    // Gone after offset 1: 2 and 3 come back, in order, before the ack.
    let mut back = server.connect().await;
    let recovered = subscribe_since(&mut back, "history-room", Some((1, &epoch))).await;
    assert_eq!(offsets(&recovered), [2, 3]);
    assert_eq!(recovered.iter().map(|m| m["data"].clone()).take(2).collect::<Vec<_>>(), ["m2", "m3"]);
    let ack = data(recovered.last().unwrap());
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["position"], json!({ "offset": 3, "epoch": epoch }));
    // Then live, nothing twice.
    server.trigger(&["history-room"], "e", "m4").await;
    assert_eq!(back.recv_event("e").await["offset"], 4);
    assert!(back.sync().await.is_empty(), "nothing else");

    // Nothing missed: nothing replayed, recovered.
    let mut current = server.connect().await;
    let acked = subscribe_since(&mut current, "history-room", Some((4, &epoch))).await;
    assert_eq!((acked.len(), data(&acked[0])["recovered"].clone()), (1, json!(true)));

    // More missed than is kept (5), another epoch, or a position ahead of the channel:
    // nothing replayed, recovered false, the current position to resume from.
    for i in 5..=9 {
        server.trigger(&["history-room"], "e", &format!("m{i}")).await;
    }
    for since in [(3, epoch.as_str()), (8, "another-epoch"), (42, epoch.as_str())] {
        let mut late = server.connect().await;
        let acked = subscribe_since(&mut late, "history-room", Some(since)).await;
        assert_eq!(acked.len(), 1, "no replay for {since:?}: {acked:?}");
        let ack = data(&acked[0]);
        assert_eq!(ack["recovered"], false, "{since:?}");
        assert_eq!(ack["position"], json!({ "offset": 9, "epoch": epoch }));
    }
    let mut in_time = server.connect().await;
    assert_eq!(
        offsets(&subscribe_since(&mut in_time, "history-room", Some((4, &epoch))).await),
        [5, 6, 7, 8, 9]
    );
}

#[tokio::test]
async fn channels_without_history_are_as_before() {
    let server = Server::start(vec![history_app(5)], config()).await;
    let mut client = server.connect().await;
    let acked = subscribe_since(&mut client, "plain", None).await;
    assert_eq!(data(&acked[0]), json!({}));
    server.trigger(&["plain"], "e", "d").await;
    let message = client.recv_event("e").await;
    assert_eq!(message, json!({ "event": "e", "channel": "plain", "data": "d" }), "no offset, no epoch");
    // A position for a channel that keeps none cannot be recovered.
    let mut other = server.connect().await;
    let acked = subscribe_since(&mut other, "plain", Some((3, "e"))).await;
    assert_eq!(data(&acked[0]), json!({ "recovered": false }));
}

#[tokio::test]
async fn presence_channels_with_history_ack_members_and_position() {
    let mut app = history_app(10);
    app.history[0].channels = ChannelPattern::new("presence-history-*").unwrap();
    let server = Server::start(vec![app.clone()], config()).await;
    let mut client = server.connect().await;
    let ack = client.subscribe_presence(&app, "presence-history-room", "u1").await;
    let ack = data(&ack);
    assert_eq!(ack["presence"]["count"], 1, "{ack}");
    assert_eq!(ack["position"]["offset"], 0, "{ack}");
}

/// While publications flow, clients recover again and again: each gets an unbroken,
/// duplicate-free run of offsets from its position to the live channel. On two
/// threads, so publications land while a subscription is between its history read and
/// its first live message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_under_concurrent_publishing_has_no_gap_and_no_duplicate() {
    let server = Server::start(vec![history_app(10_000)], config()).await;
    let mut watcher = server.connect().await;
    let epoch =
        data(subscribe_since(&mut watcher, "history-busy", None).await.last().unwrap())["position"]["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
    let publish = |count: u64| {
        let (node, app) = (server.node.clone(), server.app().clone());
        tokio::spawn(async move {
            for i in 0..count {
                let request = EventRequest {
                    name: "e".into(),
                    data: i.to_string(),
                    channels: vec!["history-busy".into()],
                    exclude_socket_id: None,
                };
                let event = validate_event(&app, request).unwrap();
                node.publish_event(&app, &event).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let (mut since, mut published) = (0, 0);
    for recovery in 0..20 {
        // A burst lands while the client reconnects and catches up...
        let burst = publish(50);
        let mut client = server.connect().await;
        let messages = subscribe_since(&mut client, "history-busy", Some((since, &epoch))).await;
        let ack = data(messages.last().unwrap());
        assert_eq!(ack["recovered"], true, "{ack}");
        let position = ack["position"]["offset"].as_u64().unwrap();
        burst.await.unwrap();
        // ... and one more after it, so the client has a known last offset to reach.
        publish(1).await.unwrap();
        published += 51;
        let mut got = offsets(&messages);
        while got.last().copied().unwrap_or(since) < published {
            got.push(client.recv_event("e").await["offset"].as_u64().unwrap());
        }
        let expected: Vec<u64> = (since + 1..=published).collect();
        assert_eq!(got, expected, "recovery {recovery} from {since} (position {position})");
        since = published;
    }
}

#[tokio::test]
async fn the_history_endpoint_reads_and_refuses_with_400() {
    let server = Server::start(vec![history_app(5)], config()).await;
    for i in 1..=3 {
        server.trigger(&["history-log"], "e", &format!("m{i}")).await;
    }
    let path = "/apps/app/channels/history-log/history";
    let (status, body) = server.api("GET", path, &[("direction", "forward"), ("limit", "2")], None).await;
    assert_eq!(status, 200, "{body}");
    let read: Vec<(u64, String)> = body["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(read, [(1, "m1".to_owned()), (2, "m2".to_owned())]);
    assert_eq!((body["position"]["offset"].as_u64(), body["first_offset"].as_u64()), (Some(3), Some(1)));
    assert!(body.get("recovered").is_none());

    for (query, expected) in [
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "many")], "limit"),
        (vec![("direction", "sideways")], "direction"),
        (vec![("since", "-1")], "since"),
        (vec![("epoch", "e")], "epoch"),
    ] {
        let (status, body) = server.api("GET", path, &query, None).await;
        assert_eq!(status, 400, "{query:?}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with(expected), "{query:?}: {body}");
    }
    let (status, body) = server.api("GET", "/apps/app/channels/plain/history", &[], None).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("keeps no history"), "{body}");
    let (status, _) = server.api("POST", path, &[], None).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn cache_channels_send_their_last_event_or_a_cache_miss_after_the_ack() {
    // No history rule: cache channels keep their last event anyway.
    let app = app("app");
    let server = Server::start(vec![app.clone()], config()).await;
    let mut first = server.connect().await;
    let acked = subscribe_since(&mut first, "cache-score", None).await;
    assert_eq!(acked.len(), 1);
    let miss = first.recv().await;
    assert_eq!(miss, json!({ "event": "pusher:cache_miss", "channel": "cache-score" }));

    server.trigger(&["cache-score"], "goal", "1-0").await;
    server.trigger(&["cache-score"], "goal", "2-0").await;
    assert_eq!(first.recv_event("goal").await["data"], "1-0");
    assert_eq!(first.recv_event("goal").await["data"], "2-0");

    // A new subscriber: the ack, then the last event, then live ones.
    let mut second = server.connect().await;
    subscribe_since(&mut second, "cache-score", None).await;
    let last = second.recv().await;
    assert_eq!((last["event"].clone(), last["data"].clone()), (json!("goal"), json!("2-0")));
    server.trigger(&["cache-score"], "goal", "3-0").await;
    assert_eq!(second.recv_event("goal").await["data"], "3-0");
    assert!(second.sync().await.is_empty());

    // Private cache channels are authorized like private ones, and cache too.
    let mut private = server.connect().await;
    private.subscribe_private(&app, "private-cache-score").await;
    assert_eq!(private.recv().await["event"], "pusher:cache_miss");

    // The HTTP API shows the cached event and its time to live (Pusher's 30 minutes).
    let (status, info) = server.api("GET", "/apps/app/channels/cache-score", &[], None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["cache"]["data"], "3-0");
    let ttl = info["cache"]["ttl"].as_u64().unwrap();
    assert!((1_700..=1_800).contains(&ttl), "{info}");
}

#[tokio::test]
async fn subscribers_are_told_the_subscription_count_when_the_app_asks_for_it() {
    let counting = App { enable_subscription_count: true, ..app("app") };
    let server = Server::start(vec![counting.clone()], config()).await;
    let count = |message: &Value| data(message)["subscription_count"].as_u64();
    let mut a = server.connect().await;
    a.subscribe("counted").await;
    assert_eq!(count(&a.recv_event("pusher_internal:subscription_count").await), Some(1));
    let mut b = server.connect().await;
    b.subscribe("counted").await;
    assert_eq!(count(&a.recv_event("pusher_internal:subscription_count").await), Some(2));
    assert_eq!(count(&b.recv_event("pusher_internal:subscription_count").await), Some(2));
    b.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "counted" } })).await;
    assert_eq!(count(&a.recv_event("pusher_internal:subscription_count").await), Some(1));

    // Not on presence channels, nor for apps that did not ask.
    let mut p = server.connect().await;
    p.subscribe_presence(&counting, "presence-counted", "u1").await;
    let quiet = Server::start(vec![app("app")], config()).await;
    let mut q = quiet.connect().await;
    q.subscribe("counted").await;
    // Counts are told when a node sends its batch of counts: once that is done, what
    // they were told is in their queues, ahead of the pong.
    server.node.flush_counts().await;
    quiet.node.flush_counts().await;
    for (client, name) in [(&mut p, "presence"), (&mut q, "quiet app")] {
        let told = client.sync().await;
        assert!(told.iter().all(|m| m["event"] != "pusher_internal:subscription_count"), "{name}: {told:?}");
    }
}

fn watchlist_events(message: &Value) -> Vec<(String, Vec<String>)> {
    data(message)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let ids = e["user_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned());
            (e["name"].as_str().unwrap().to_owned(), ids.collect())
        })
        .collect()
}

async fn signin_watching(client: &mut Client, app: &App, user: &str, watchlist: &[&str]) {
    let user_data = json!({ "id": user, "watchlist": watchlist }).to_string();
    let auth = herald_core::auth::user_auth(app, &client.socket_id, &user_data);
    client.send(json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } })).await;
    assert_eq!(client.recv().await["event"], "pusher:signin_success");
}

/// Sessions open on the server: a closed one is counted out once it has cleaned up.
fn open_sessions(server: &Server) -> usize {
    let mut open = 0;
    server.node.sessions().for_each_shard(|shard| open += shard.len());
    open
}

#[tokio::test]
async fn watchlists_hear_users_come_online_and_go_offline_once() {
    let watching = App { enable_watchlist_events: true, ..app("app") };
    let server = Server::start(vec![watching.clone()], config()).await;
    let mut bob = server.connect().await;
    signin_watching(&mut bob, &watching, "bob", &["alice", "carol"]).await;
    let initial = bob.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(watchlist_events(&initial), [("offline".into(), vec!["alice".to_owned(), "carol".into()])]);

    // Alice on two connections: online once.
    let mut alice = server.connect().await;
    signin_watching(&mut alice, &watching, "alice", &["bob"]).await;
    let told = alice.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(watchlist_events(&told), [("online".into(), vec!["bob".to_owned()])], "alice sees bob online");
    let mut alice_again = server.connect().await;
    signin_watching(&mut alice_again, &watching, "alice", &[]).await;
    assert_eq!(
        watchlist_events(&bob.recv_event("pusher_internal:watchlist_events").await),
        [("online".into(), vec!["alice".to_owned()])]
    );
    // Her first connection leaves: she is still online. Her last: offline.
    let before = open_sessions(&server);
    drop(alice);
    eventually("alice's first connection cleaned up", || open_sessions(&server) < before).await;
    let mut carol = server.connect().await;
    signin_watching(&mut carol, &watching, "carol", &[]).await;
    drop(alice_again);
    let mut events = Vec::new();
    for _ in 0..2 {
        events.extend(watchlist_events(&bob.recv_event("pusher_internal:watchlist_events").await));
    }
    assert_eq!(
        events,
        [("online".into(), vec!["carol".to_owned()]), ("offline".into(), vec!["alice".to_owned()])]
    );
    drop(carol);
    assert_eq!(
        watchlist_events(&bob.recv_event("pusher_internal:watchlist_events").await),
        [("offline".into(), vec!["carol".to_owned()])]
    );

    // Over the limit: the first ones are watched, and 4302 says so.
    let mut long = server.connect().await;
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    signin_watching(&mut long, &watching, "dave", &many).await;
    let error = long.recv().await;
    assert_eq!((error["event"].clone(), error["data"]["code"].clone()), (json!("pusher:error"), json!(4302)));
    let initial = watchlist_events(&long.recv_event("pusher_internal:watchlist_events").await);
    assert_eq!(initial[0].1.len(), 100);

    // An app without watchlist events sends none.
    let quiet = Server::start(vec![app("app")], config()).await;
    let mut q = quiet.connect().await;
    signin_watching(&mut q, &quiet.app().clone(), "q", &["x"]).await;
    assert!(q.sync().await.is_empty());
}

/// A publication the backend excluded for the client's old connection (Laravel's
/// `toOthers()`) is not replayed to it when it says which connection that was.
#[tokio::test]
async fn a_recovery_skips_what_was_excluded_for_the_clients_old_connection() {
    let server = Server::start(vec![history_app(10)], config()).await;
    let mut sender = server.connect().await;
    let acked = subscribe_since(&mut sender, "history-chat", None).await;
    let epoch = data(acked.last().unwrap())["position"]["epoch"].as_str().unwrap().to_owned();
    let old_socket = sender.socket_id.clone();
    let body =
        json!({ "name": "said", "channels": ["history-chat"], "data": "mine", "socket_id": old_socket });
    assert_eq!(server.api("POST", "/apps/app/events", &[], Some(body)).await.0, 200);
    server.trigger(&["history-chat"], "said", "theirs").await;
    assert_eq!(sender.recv_event("said").await["data"], "theirs", "excluded live, as Pusher does");

    let resume = |socket_id: Option<&str>| {
        let mut since = json!({ "offset": 0, "epoch": epoch });
        if let Some(id) = socket_id {
            since["socket_id"] = json!(id);
        }
        json!({ "event": "pusher:subscribe", "data": { "channel": "history-chat", "since": since } })
    };
    for (socket_id, expected) in [(Some(old_socket.as_str()), vec!["theirs"]), (None, vec!["mine", "theirs"])]
    {
        let mut back = server.connect().await;
        back.send(resume(socket_id)).await;
        let mut replayed = Vec::new();
        loop {
            let message = back.recv().await;
            if message["event"] == "pusher_internal:subscription_succeeded" {
                assert_eq!(data(&message)["recovered"], true);
                break;
            }
            replayed.push(message["data"].as_str().unwrap().to_owned());
        }
        assert_eq!(replayed, expected, "since with socket_id {socket_id:?}");
    }
}
