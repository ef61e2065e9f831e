//! Untrusted input through a real server, generated: whatever text messages a client
//! sends, every answer is JSON and the connection stays usable; whatever body a signed
//! HTTP API request carries, the answer is a success or a 4xx, never a 5xx or a
//! dropped connection. The parsers' own properties are unit tests (`message.rs`,
//! `http_api.rs`); these catch what the handling after parsing does with odd values
//! (presence members, sign-in users, client events).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use herald_core::{App, auth};
use herald_testkit::*;
use proptest::{
    collection::vec,
    prelude::*,
    sample::{Index, select},
    test_runner::TestRunner,
};
use serde_json::{Value, json};

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() })
}

/// The name of the threads that run the server's tasks.
const SERVER_THREAD: &str = "properties-server";

/// A runtime for the server; a panic on one of its threads (in a connection's task,
/// say) is reported at once through [`server_panics`], rather than noticed by a
/// client waiting in vain.
fn runtime() -> tokio::runtime::Runtime {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(SERVER_THREAD) {
            *server_panics().1.lock().unwrap() = Some(info.to_string());
            server_panics().0.notify_one();
        }
        previous(info);
    }));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .unwrap()
}

/// Notified (and the message kept) when a server thread panics.
fn server_panics() -> &'static (tokio::sync::Notify, std::sync::Mutex<Option<String>>) {
    static PANICS: std::sync::OnceLock<(tokio::sync::Notify, std::sync::Mutex<Option<String>>)> =
        std::sync::OnceLock::new();
    PANICS.get_or_init(Default::default)
}

/// A client message; those that carry a signature are signed for the connection's
/// socket id once it is known (or signed wrongly, when `signed` is false).
#[derive(Debug, Clone)]
enum ClientMessage {
    Raw(String),
    Subscribe { channel: String, channel_data: Option<String>, signed: bool, as_string: bool },
    Unsubscribe { channel: String },
    Signin { user_data: String, signed: bool },
    ClientEvent { event: String, channel: String, data: Value },
}

impl ClientMessage {
    fn render(&self, app: &App, socket_id: &str) -> String {
        let auth_for = |signed: bool, auth: String| {
            if signed { auth } else { format!("{}:{}", app.key, "0".repeat(64)) }
        };
        match self {
            Self::Raw(text) => text.clone(),
            Self::Subscribe { channel, channel_data, signed, as_string } => {
                let auth = auth::channel_auth(app, socket_id, channel, channel_data.as_deref());
                let mut data = json!({ "channel": channel, "auth": auth_for(*signed, auth) });
                if let Some(channel_data) = channel_data {
                    data["channel_data"] = json!(channel_data);
                }
                let data = if *as_string { Value::String(data.to_string()) } else { data };
                json!({ "event": "pusher:subscribe", "data": data }).to_string()
            }
            Self::Unsubscribe { channel } => {
                json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } }).to_string()
            }
            Self::Signin { user_data, signed } => {
                let auth = auth_for(*signed, auth::user_auth(app, socket_id, user_data));
                json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } })
                    .to_string()
            }
            Self::ClientEvent { event, channel, data } => {
                json!({ "event": event, "channel": channel, "data": data }).to_string()
            }
        }
    }
}

/// A few channels of every kind, so that messages of one case meet each other, and
/// odd names.
fn channel() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec![
            "news",
            "private-a",
            "private-encrypted-a",
            "presence-a",
            "presence-b",
            "#server-to-user-1",
            "#server-to-user-",
        ])
        .prop_map(String::from),
        1 => "(presence-|private-|#server-to-user-)?[A-Za-z0-9_=@,.;-]{1,20}",
        1 => ".{0,20}",
    ]
}

/// A user id as clients send it: mostly usable, sometimes not.
fn user_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => select(vec!["1", "2", "ü", ""]).prop_map(Value::from),
        3 => any::<i64>().prop_map(Value::from),
        1 => herald_test_util::strategy::json_value(true),
    ]
}

fn channel_data() -> impl Strategy<Value = Option<String>> {
    let member = (user_id(), proptest::option::of(herald_test_util::strategy::json_value(true))).prop_map(
        |(id, info)| {
            let mut data = json!({ "user_id": id });
            if let Some(info) = info {
                data["user_info"] = info;
            }
            data.to_string()
        },
    );
    proptest::option::of(prop_oneof![4 => member, 1 => ".{0,20}"])
}

/// Valid messages with a few characters replaced by JSON punctuation, or cut short.
fn mangled(message: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    let punctuation = select(vec!['"', '\\', '{', '}', '[', ']', ':', ',', '0', ' ', 'é']);
    (message, vec((any::<Index>(), punctuation), 0..3), any::<Index>()).prop_map(|(text, edits, cut)| {
        let mut chars: Vec<char> = text.chars().collect();
        for (at, c) in edits {
            let at = at.index(chars.len());
            chars[at] = c;
        }
        chars.truncate(cut.index(chars.len() + 1).max(chars.len() / 2));
        chars.into_iter().collect()
    })
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    // Mostly signed: an unsigned subscription stops at the signature check.
    let signed = proptest::bool::weighted(0.8);
    let any_channel = (channel(), channel_data(), signed, any::<bool>());
    let presence = ("presence-[ab]", channel_data(), signed, any::<bool>());
    let subscribe =
        prop_oneof![any_channel, presence].prop_map(|(channel, channel_data, signed, as_string)| {
            ClientMessage::Subscribe { channel, channel_data, signed, as_string }
        });
    let user_data = prop_oneof![
        user_id().prop_map(|id| json!({ "id": id }).to_string()),
        herald_test_util::strategy::json_value(true).prop_map(|v| v.to_string()),
    ];
    let signin =
        (user_data, signed).prop_map(|(user_data, signed)| ClientMessage::Signin { user_data, signed });
    let client_event = ("client-.{0,10}", channel(), herald_test_util::strategy::json_value(true))
        .prop_map(|(event, channel, data)| ClientMessage::ClientEvent { event, channel, data });
    let raw = prop_oneof![
        any::<String>(),
        mangled(
            herald_test_util::strategy::json_value(true)
                .prop_map(|data| json!({ "event": "pusher:subscribe", "data": data }).to_string())
        ),
    ];
    prop_oneof![
        4 => subscribe,
        1 => channel().prop_map(|channel| ClientMessage::Unsubscribe { channel }),
        2 => signin,
        2 => client_event,
        2 => raw.prop_map(ClientMessage::Raw),
    ]
}

#[test]
fn arbitrary_client_messages_are_answered_and_the_connection_stays_usable() {
    let runtime = runtime();
    let server = runtime.block_on(Server::default());
    let app = server.app().clone();
    let result = runner(48).run(&vec(client_message(), 1..10), |messages| {
        runtime.block_on(async {
            let mut client = server.connect().await;
            let exchange = async {
                for message in &messages {
                    client.send_text(&message.render(&app, &client.socket_id)).await;
                }
                // Panics unless every message before the pong is JSON and the
                // connection is still open.
                client.sync().await;
            };
            tokio::select! {
                () = exchange => Ok(()),
                () = server_panics().0.notified() => {
                    let panic = server_panics().1.lock().unwrap().take().unwrap_or_default();
                    Err(TestCaseError::fail(format!("the server panicked: {panic}")))
                }
            }
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// An event that is almost valid: the fields the API reads, each mostly present and
/// of the right type, `channels` or `channel` (mostly not both).
fn api_event() -> impl Strategy<Value = Value> {
    let field = |right: BoxedStrategy<Value>, present: f64| {
        proptest::option::weighted(
            present,
            prop_oneof![24 => right, 1 => herald_test_util::strategy::json_value(true)],
        )
    };
    let name = ".{1,12}".prop_filter("reserved", |n| !n.starts_with("pusher")).prop_map(Value::from);
    let channels = prop_oneof![
        4 => vec(channel(), 0..4).prop_map(|c| ("channels", Value::from(c))),
        4 => channel().prop_map(|c| ("channel", Value::from(c))),
        1 => herald_test_util::strategy::json_value(true).prop_map(|v| ("channel", v)),
    ];
    let both = proptest::option::weighted(0.1, channel().prop_map(Value::from));
    (
        field(name.boxed(), 0.95),
        field(".{0,40}".prop_map(Value::from).boxed(), 0.95),
        channels,
        both,
        field("[0-9]{1,3}\\.[0-9]{1,3}".prop_map(Value::from).boxed(), 0.3),
        field("(user_count|subscription_count|,)*".prop_map(Value::from).boxed(), 0.3),
    )
        .prop_map(|(name, data, (key, channels), both, socket_id, info)| {
            let mut event = serde_json::Map::new();
            event.insert(key.into(), channels);
            let other = if key == "channel" { "channels" } else { "channel" };
            for (key, value) in
                [("name", name), ("data", data), (other, both), ("socket_id", socket_id), ("info", info)]
            {
                if let Some(value) = value {
                    event.insert(key.into(), value);
                }
            }
            Value::Object(event)
        })
}

/// An endpoint and a body for it: mostly an (almost valid) event or batch, sometimes
/// random bytes.
fn api_request() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let bytes = (select(vec!["events", "batch_events"]), vec(any::<u8>(), 0..100));
    prop_oneof![
        3 => api_event().prop_map(|e| ("events", e.to_string().into_bytes())),
        2 => vec(api_event(), 0..6)
            .prop_map(|batch| ("batch_events", json!({ "batch": batch }).to_string().into_bytes())),
        1 => bytes,
    ]
}

#[test]
fn arbitrary_event_bodies_get_a_success_or_a_client_error() {
    let runtime = runtime();
    let server = runtime.block_on(Server::default());
    let app = server.app().clone();
    let result = runner(64).run(&api_request(), |(endpoint, body)| {
        let path = format!("/apps/{}/{endpoint}", app.id);
        let signed = auth::sign_api_request(&app, "POST", &path, vec![], &body, now());
        let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(signed).finish();
        let (status, answer) =
            runtime.block_on(http_request(server.addr, "POST", &format!("{path}?{query}"), body.clone()));
        prop_assert!(
            status.is_success() || matches!(status.as_u16(), 400 | 413),
            "{} {}: {}",
            status,
            answer,
            String::from_utf8_lossy(&body)
        );
        if !status.is_success() {
            prop_assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", answer);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A query string of URI-valid characters: parameters the API reads, percent escapes
/// (some of them not UTF-8), empty and repeated keys.
fn raw_query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        select(vec!["auth_key", "auth_timestamp", "auth_version", "auth_signature", "body_md5", "info"])
            .prop_map(String::from),
        "[A-Za-z0-9_%+.~-]{0,8}",
    ];
    let value = prop_oneof!["[A-Za-z0-9_+.~-]{0,12}", "(%[0-9A-Fa-f]{2}|[a-z0-9=]){0,8}"];
    vec((key, value), 0..6)
        .prop_map(|pairs| pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"))
}

#[test]
fn arbitrary_api_queries_get_a_client_error() {
    let runtime = runtime();
    let server = runtime.block_on(Server::default());
    let app = server.app().clone();
    let paths = select(vec![
        "/apps/app/events",
        "/apps/app/batch_events",
        "/apps/app/channels",
        "/apps/app/channels/presence-a/users",
        "/apps/nope/events",
        "/apps//events",
        "/apps/app/users/1/terminate_connections",
    ]);
    let request = (select(vec!["GET", "POST"]), paths, raw_query(), any::<bool>());
    let result = runner(64).run(&request, |(method, path, garbage, signed)| {
        // Garbage alone, or after a valid signature (which it then invalidates).
        let query = if signed {
            let signed = auth::sign_api_request(&app, method, path, vec![], &[], now());
            let signed: String =
                form_urlencoded::Serializer::new(String::new()).extend_pairs(signed).finish();
            format!("{signed}&{garbage}")
        } else {
            garbage.clone()
        };
        let (status, answer) =
            runtime.block_on(http_request(server.addr, method, &format!("{path}?{query}"), Vec::new()));
        prop_assert!(!status.is_server_error(), "{} {}: {} {}?{}", status, answer, method, path, query);
        // What the signature does not cover: nothing at all, or another
        // `auth_signature` (the first one counts, and none is signed).
        let unsigned_extra =
            form_urlencoded::parse(garbage.as_bytes()).all(|(k, _)| k.eq_ignore_ascii_case("auth_signature"));
        if !(signed && unsigned_extra) {
            prop_assert!(status.is_client_error(), "{} {}: {} {}?{}", status, answer, method, path, query);
            prop_assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", answer);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
