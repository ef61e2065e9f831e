//! Bearer-token authentication of gRPC calls against the apps' `api_tokens`.

use std::sync::Arc;

use herald_core::{App, Apps, auth::constant_time_eq};
use tonic::metadata::MetadataMap;

use crate::error::{Error, Result};

/// Maps tokens to their app, comparing in constant time.
pub struct Authenticator {
    tokens: Vec<(String, Arc<App>)>,
}

impl Authenticator {
    pub fn new(apps: &Apps) -> Self {
        let tokens = apps
            .iter()
            .flat_map(|app| app.api_tokens.iter().map(move |token| (token.clone(), app.clone())))
            .collect();
        Self { tokens }
    }

    /// The app whose token the call carries. Every token is compared, so the time
    /// taken does not tell which one (or how much of one) matched.
    pub fn caller(&self, metadata: &MetadataMap) -> Result<Arc<App>> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Error::Unauthenticated("missing authorization: Bearer <token> metadata".into()))?
            .to_str()
            .map_err(|_| Error::Unauthenticated("authorization metadata is not text".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Error::Unauthenticated("authorization must be Bearer <token>".into()))?
            .trim();
        let mut found = None;
        for (candidate, app) in &self.tokens {
            if constant_time_eq(candidate, token) {
                found = Some(app.clone());
            }
        }
        found.ok_or_else(|| Error::Unauthenticated("unknown API token".into()))
    }
}

/// Checks that `caller` may act on `app_id` and that the app is enabled.
pub fn authorize(caller: &Arc<App>, app_id: &str) -> Result<Arc<App>> {
    if app_id.is_empty() {
        return Err(Error::InvalidArgument("app_id: required".into()));
    }
    if caller.id != app_id {
        return Err(Error::PermissionDenied(format!("the API token is not valid for app {app_id:?}")));
    }
    if !caller.enabled {
        return Err(Error::FailedPrecondition(format!("app {app_id:?} is disabled")));
    }
    Ok(caller.clone())
}
