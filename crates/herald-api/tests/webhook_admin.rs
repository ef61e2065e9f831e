//! `herald.v1.WebhookAdmin` on the in-memory store and log: authorization, updates
//! that keep what is not set, and the replay of dead letters since a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use herald_api::{WebhookAdminConfig, WebhookAdminService};
use herald_backbone::{EventLog, MemoryEventLog, conformance::poll_n};
use herald_core::Apps;
use herald_proto::v1::{self as pb, webhook_admin_server::WebhookAdmin};
use herald_testkit::app;
use herald_webhooks::{
    ssrf::AddressPolicy,
    store::{DeadLetter, MemoryWebhookStore, WebhookStore},
};
use prost::Message as _;
use tonic::{Code, Request};

const TOKEN: &str = "admin-api-token-0123456789";

fn request<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn service() -> (WebhookAdminService, MemoryWebhookStore, MemoryEventLog) {
    let mut main = app("app");
    main.api_tokens = vec![TOKEN.into()];
    let mut other = app("other");
    other.api_tokens = vec!["other-api-token-0123456789".into()];
    let store = MemoryWebhookStore::default();
    let log = MemoryEventLog::new();
    log.ensure_topics(&["replays"], 1).await.unwrap();
    let service = WebhookAdminService::new(
        &Apps::new(vec![main, other]).unwrap(),
        WebhookAdminConfig {
            store: Arc::new(store.clone()),
            log: Arc::new(log.clone()),
            replay_topic: "replays".into(),
            policy: AddressPolicy::new(&["127.0.0.1".into()]).unwrap(),
        },
    );
    (service, store, log)
}

#[tokio::test]
async fn endpoints_belong_to_their_app_and_updates_keep_what_is_not_set() {
    let (admin, _, _) = service().await;
    let created = admin
        .create_endpoint(request(
            pb::CreateEndpointRequest {
                app_id: "app".into(),
                url: "http://127.0.0.1:9/hook".into(),
                event_types: vec!["member.added".into()],
                channel_patterns: vec!["presence-*".into()],
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(created.id.starts_with("ep_") && created.secret.starts_with("whsec_") && created.enabled);

    let denied = admin
        .get_endpoint(request(
            pb::GetEndpointRequest { app_id: "app".into(), id: created.id.clone() },
            "other-api-token-0123456789",
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let missing = admin
        .get_endpoint(request(pb::GetEndpointRequest { app_id: "app".into(), id: "ep_nope".into() }, TOKEN))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let updated = admin
        .update_endpoint(request(
            pb::UpdateEndpointRequest {
                app_id: "app".into(),
                id: created.id.clone(),
                enabled: Some(false),
                max_concurrency: Some(4),
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!updated.enabled);
    assert_eq!(updated.max_concurrency, 4);
    assert_eq!(
        (updated.event_types, updated.channel_patterns),
        (created.event_types, created.channel_patterns)
    );
    assert_eq!(updated.secret, created.secret);

    let bad_type = admin
        .update_endpoint(request(
            pb::UpdateEndpointRequest {
                app_id: "app".into(),
                id: created.id.clone(),
                event_types: Some(pb::StringList { values: vec!["nope".into()] }),
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_type.code(), Code::InvalidArgument);
    assert!(bad_type.message().starts_with("event_types:"), "{}", bad_type.message());
}

#[tokio::test]
async fn dead_letters_since_a_time_are_replayed_with_a_fresh_schedule() {
    let (admin, store, log) = service().await;
    for (id, failed_ms) in [("msg_old", 1_000), ("msg_a", 5_000), ("msg_b", 6_000)] {
        let delivery = pb::Delivery {
            id: id.into(),
            app_id: "app".into(),
            endpoint_id: "ep_x".into(),
            attempt: 8,
            last_error: "HTTP 500".into(),
            failed_ms,
            ..Default::default()
        };
        let dead = DeadLetter {
            webhook_id: id.into(),
            endpoint_id: "ep_x".into(),
            failed_ms,
            attempts: 8,
            last_error: "HTTP 500".into(),
            event_types: vec![],
            delivery: delivery.encode_to_vec(),
        };
        store.put_dead_letter("app", &dead).await.unwrap();
    }
    let mut replays = log.consume("test", "replays").await.unwrap();
    let replayed = admin
        .replay_dead_letters(request(
            pb::ReplayDeadLettersRequest {
                app_id: "app".into(),
                which: Some(pb::replay_dead_letters_request::Which::SinceMs(5_000)),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.replayed, 2);
    let records = poll_n(replays.as_mut(), 2).await;
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| {
            let delivery = pb::Delivery::decode(r.value.as_ref()).unwrap();
            assert_eq!((delivery.attempt, delivery.last_error.as_str()), (0, ""), "a fresh schedule");
            delivery.id
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["msg_a", "msg_b"], "same webhook ids");
    let left: Vec<String> =
        store.dead_letters("app", 0, 10).await.unwrap().into_iter().map(|d| d.webhook_id).collect();
    assert_eq!(left, ["msg_old"]);
    let none = admin
        .replay_dead_letters(request(
            pb::ReplayDeadLettersRequest { app_id: "app".into(), which: None },
            TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn an_app_has_at_most_its_endpoint_limit() {
    let (admin, _, _) = service().await;
    let create = |n: usize| {
        request(
            pb::CreateEndpointRequest {
                app_id: "app".into(),
                url: format!("http://127.0.0.1:9/hook-{n}"),
                ..Default::default()
            },
            TOKEN,
        )
    };
    for n in 0..herald_webhooks::endpoint::MAX_ENDPOINTS_PER_APP {
        admin.create_endpoint(create(n)).await.unwrap();
    }
    let refused = admin.create_endpoint(create(999)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("50 endpoints"), "{}", refused.message());
}
