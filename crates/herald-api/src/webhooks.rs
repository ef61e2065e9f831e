//! `herald.v1.WebhookAdmin`: an app's webhook endpoints, their delivery attempts, and
//! the replay of dead letters. Authenticated like the Publisher service.

use std::sync::Arc;

use herald_backbone::EventLog;
use herald_core::{App, Apps};
use herald_proto::v1::{self as pb, webhook_admin_server::WebhookAdmin};
use herald_webhooks::{
    delivery::encode_delivery,
    endpoint::{Endpoint, Format, MAX_ENDPOINTS_PER_APP, SECRET_OVERLAP, new_endpoint_id, validate_url},
    filter::EventType,
    sign::generate_secret,
    ssrf::{AddressPolicy, ResolveError},
    store::WebhookStore,
};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::{
    auth::{Authenticator, authorize},
    error::{Error, Result},
};

/// What the admin service works on.
pub struct WebhookAdminConfig {
    pub store: Arc<dyn WebhookStore>,
    /// Where replayed dead letters are appended (the dispatcher's parked topic).
    pub log: Arc<dyn EventLog>,
    pub replay_topic: String,
    /// Endpoint URLs must resolve to addresses this allows.
    pub policy: AddressPolicy,
}

#[derive(Clone)]
pub struct WebhookAdminService {
    inner: Arc<Inner>,
}

struct Inner {
    auth: Authenticator,
    config: WebhookAdminConfig,
}

impl WebhookAdminService {
    pub fn new(apps: &Apps, config: WebhookAdminConfig) -> Self {
        Self { inner: Arc::new(Inner { auth: Authenticator::new(apps), config }) }
    }
}

fn format_of(value: i32) -> Result<Format> {
    match pb::WebhookFormat::try_from(value) {
        Ok(pb::WebhookFormat::Unspecified | pb::WebhookFormat::StandardWebhooks) => {
            Ok(Format::StandardWebhooks)
        }
        Ok(pb::WebhookFormat::Pusher) => Ok(Format::Pusher),
        Err(_) => Err(Error::InvalidArgument(format!("format: {value} is not a WebhookFormat"))),
    }
}

fn event_types(values: &[String]) -> Result<Vec<EventType>> {
    values
        .iter()
        .map(|v| v.parse::<EventType>().map_err(|e| Error::InvalidArgument(format!("event_types: {e}"))))
        .collect()
}

fn to_proto(endpoint: &Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        id: endpoint.id.clone(),
        app_id: endpoint.app_id.clone(),
        url: endpoint.url.clone(),
        event_types: endpoint.event_types.iter().map(|t| t.as_str().to_owned()).collect(),
        channel_patterns: endpoint.channel_patterns.clone(),
        format: match endpoint.format {
            Format::StandardWebhooks => pb::WebhookFormat::StandardWebhooks,
            Format::Pusher => pb::WebhookFormat::Pusher,
        } as i32,
        secret: endpoint.secret.clone(),
        enabled: endpoint.enabled,
        disabled_reason: endpoint.disabled_reason.clone(),
        rate_per_second: endpoint.rate_per_second,
        max_concurrency: endpoint.max_concurrency,
        created_ms: endpoint.created_ms,
        updated_ms: endpoint.updated_ms,
        previous_secret_expires_ms: if endpoint.previous_secret.is_some() {
            endpoint.previous_secret_expires_ms
        } else {
            0
        },
    }
}

impl Inner {
    fn app<T>(&self, request: &Request<T>, app_id: &str) -> Result<Arc<App>> {
        authorize(&self.auth.caller(request.metadata())?, app_id)
    }

    /// Validates every field, and that the URL's host resolves to allowed addresses.
    async fn check(&self, endpoint: &Endpoint) -> Result<()> {
        endpoint.validate().map_err(Error::InvalidArgument)?;
        let target = validate_url(&endpoint.url).map_err(Error::InvalidArgument)?;
        match self.config.policy.resolve(&target.host, target.port).await {
            Ok(_) => Ok(()),
            Err(ResolveError::Refused(refused)) => Err(Error::InvalidArgument(format!("url: {refused}"))),
            Err(e) => Err(Error::InvalidArgument(format!("url: {e}"))),
        }
    }

    async fn endpoint(&self, app_id: &str, id: &str) -> Result<Endpoint> {
        self.config
            .store
            .get_endpoint(app_id, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no endpoint {id:?} in app {app_id:?}")))
    }

    /// Appends dead letters back to the dispatcher with a fresh schedule.
    async fn replay(&self, app_id: &str, letters: Vec<herald_webhooks::store::DeadLetter>) -> Result<u32> {
        let mut appends = Vec::with_capacity(letters.len());
        for letter in &letters {
            let mut delivery = pb::Delivery::decode(letter.delivery.as_slice())
                .map_err(|e| Error::Internal(format!("dead letter {}: {e}", letter.webhook_id)))?;
            delivery.attempt = 0;
            delivery.due_ms = herald_core::time::now_ms();
            delivery.failed_ms = 0;
            delivery.last_error.clear();
            appends.push(encode_delivery(&delivery));
        }
        let count = appends.len() as u32;
        if let Err(e) = self.config.log.append(&self.config.replay_topic, appends).await {
            // Put them back: nothing was replayed for sure.
            for letter in &letters {
                let _ = self.config.store.put_dead_letter(app_id, letter).await;
            }
            return Err(Error::Unavailable(e.to_string()));
        }
        Ok(count)
    }
}

/// Most dead letters one replay-since call takes.
const MAX_REPLAY: usize = 10_000;

#[tonic::async_trait]
impl WebhookAdmin for WebhookAdminService {
    async fn create_endpoint(
        &self,
        request: Request<pb::CreateEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let inner = &self.inner;
        let app = inner.app(&request, &request.get_ref().app_id)?;
        let r = request.into_inner();
        let existing = inner.config.store.list_endpoints(&app.id).await.map_err(Error::from)?;
        if existing.len() >= MAX_ENDPOINTS_PER_APP {
            return Err(Error::ResourceExhausted(format!(
                "app {:?} has {MAX_ENDPOINTS_PER_APP} endpoints, the most it may have",
                app.id
            ))
            .into());
        }
        let now = herald_core::time::now_ms();
        let secret = if r.secret.is_empty() {
            generate_secret().map_err(|e| Error::Internal(e.to_string()))?
        } else {
            r.secret
        };
        let mut endpoint = Endpoint::new(new_endpoint_id(), &app.id, &r.url, format_of(r.format)?, &secret);
        endpoint.event_types = event_types(&r.event_types)?;
        endpoint.channel_patterns = r.channel_patterns;
        endpoint.enabled = !r.disabled;
        endpoint.rate_per_second = r.rate_per_second;
        endpoint.max_concurrency = r.max_concurrency;
        endpoint.created_ms = now;
        endpoint.updated_ms = now;
        inner.check(&endpoint).await?;
        inner.config.store.put_endpoint(&endpoint).await.map_err(Error::from)?;
        Ok(Response::new(to_proto(&endpoint)))
    }

    async fn get_endpoint(
        &self,
        request: Request<pb::GetEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let endpoint = self.inner.endpoint(&app.id, &request.get_ref().id).await?;
        Ok(Response::new(to_proto(&endpoint)))
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let mut endpoints = self.inner.config.store.list_endpoints(&app.id).await.map_err(Error::from)?;
        endpoints.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(Response::new(pb::ListEndpointsResponse { endpoints: endpoints.iter().map(to_proto).collect() }))
    }

    async fn update_endpoint(
        &self,
        request: Request<pb::UpdateEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let inner = &self.inner;
        let app = inner.app(&request, &request.get_ref().app_id)?;
        let r = request.into_inner();
        let mut endpoint = inner.endpoint(&app.id, &r.id).await?;
        if let Some(url) = r.url {
            endpoint.url = url;
        }
        if let Some(types) = r.event_types {
            endpoint.event_types = event_types(&types.values)?;
        }
        if let Some(patterns) = r.channel_patterns {
            endpoint.channel_patterns = patterns.values;
        }
        if let Some(format) = r.format {
            endpoint.format = format_of(format)?;
        }
        if let Some(enabled) = r.enabled {
            endpoint.enabled = enabled;
            if enabled {
                endpoint.disabled_reason.clear();
            }
        }
        if let Some(rate) = r.rate_per_second {
            endpoint.rate_per_second = rate;
        }
        if let Some(max) = r.max_concurrency {
            endpoint.max_concurrency = max;
        }
        endpoint.updated_ms = herald_core::time::now_ms();
        inner.check(&endpoint).await?;
        inner.config.store.put_endpoint(&endpoint).await.map_err(Error::from)?;
        Ok(Response::new(to_proto(&endpoint)))
    }

    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let id = &request.get_ref().id;
        if !self.inner.config.store.delete_endpoint(&app.id, id).await.map_err(Error::from)? {
            return Err(Error::NotFound(format!("no endpoint {id:?} in app {:?}", app.id)).into());
        }
        Ok(Response::new(pb::DeleteEndpointResponse {}))
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let inner = &self.inner;
        let app = inner.app(&request, &request.get_ref().app_id)?;
        let r = request.into_inner();
        let mut endpoint = inner.endpoint(&app.id, &r.id).await?;
        let secret = if r.secret.is_empty() {
            generate_secret().map_err(|e| Error::Internal(e.to_string()))?
        } else {
            r.secret
        };
        let now = herald_core::time::now_ms();
        endpoint.previous_secret = Some(std::mem::replace(&mut endpoint.secret, secret));
        endpoint.previous_secret_expires_ms = now + SECRET_OVERLAP.as_millis() as i64;
        endpoint.updated_ms = now;
        endpoint.validate().map_err(Error::InvalidArgument)?;
        inner.config.store.put_endpoint(&endpoint).await.map_err(Error::from)?;
        Ok(Response::new(to_proto(&endpoint)))
    }

    async fn list_attempts(
        &self,
        request: Request<pb::ListAttemptsRequest>,
    ) -> Result<Response<pb::ListAttemptsResponse>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 100,
            n => n.min(100) as usize,
        };
        let webhook_id = Some(r.webhook_id.as_str()).filter(|w| !w.is_empty());
        let attempts = self
            .inner
            .config
            .store
            .attempts(&app.id, &r.endpoint_id, webhook_id, limit)
            .await
            .map_err(Error::from)?;
        let attempts = attempts
            .into_iter()
            .map(|a| pb::Attempt {
                webhook_id: a.webhook_id,
                endpoint_id: a.endpoint_id,
                attempt: a.attempt,
                time_ms: a.time_ms,
                status: u32::from(a.status),
                latency_ms: a.latency_ms,
                response_excerpt: a.response_excerpt,
                error: a.error,
            })
            .collect();
        Ok(Response::new(pb::ListAttemptsResponse { attempts }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let app = self.inner.app(&request, &request.get_ref().app_id)?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 100,
            n => n.min(1_000) as usize,
        };
        let letters =
            self.inner.config.store.dead_letters(&app.id, r.since_ms, limit).await.map_err(Error::from)?;
        let dead_letters = letters
            .into_iter()
            .map(|d| pb::DeadLetter {
                webhook_id: d.webhook_id,
                endpoint_id: d.endpoint_id,
                failed_ms: d.failed_ms,
                attempts: d.attempts,
                last_error: d.last_error,
                event_types: d.event_types,
            })
            .collect();
        Ok(Response::new(pb::ListDeadLettersResponse { dead_letters }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let inner = &self.inner;
        let app = inner.app(&request, &request.get_ref().app_id)?;
        let store = &inner.config.store;
        let letters = match request.into_inner().which {
            Some(pb::replay_dead_letters_request::Which::WebhookId(id)) => {
                match store.take_dead_letter(&app.id, &id).await.map_err(Error::from)? {
                    Some(letter) => vec![letter],
                    None => {
                        return Err(
                            Error::NotFound(format!("no dead letter {id:?} in app {:?}", app.id)).into()
                        );
                    }
                }
            }
            Some(pb::replay_dead_letters_request::Which::SinceMs(since)) => {
                let listed = store.dead_letters(&app.id, since, MAX_REPLAY).await.map_err(Error::from)?;
                let mut taken = Vec::with_capacity(listed.len());
                for letter in listed {
                    if let Some(letter) =
                        store.take_dead_letter(&app.id, &letter.webhook_id).await.map_err(Error::from)?
                    {
                        taken.push(letter);
                    }
                }
                taken
            }
            None => {
                return Err(Error::InvalidArgument("which: webhook_id or since_ms is required".into()).into());
            }
        };
        let replayed = inner.replay(&app.id, letters).await?;
        Ok(Response::new(pb::ReplayDeadLettersResponse { replayed }))
    }
}
