//! [`RedisIdempotency`]: idempotency keys shared by every node, one Redis key each
//! with the window as its expiry: `pending:<id>` while the first publish runs,
//! `done:<id>` after it.

use std::time::Duration;

use crate::{Connection, RedisConfig, Shards};
use async_trait::async_trait;
use herald_backbone::{Claim, IdempotencyStore, Result};

pub struct RedisIdempotency {
    connections: Shards<Connection>,
    prefix: String,
}

impl RedisIdempotency {
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        Ok(Self { connections: Shards::open(config).await?, prefix: config.prefix.clone() })
    }

    fn key(&self, app_id: &str, key: &str) -> String {
        format!("{}:idem:{}:{app_id}:{key}", self.prefix, app_id.len())
    }

    /// The instance that holds `key` of `app_id`.
    fn connection(&self, app_id: &str, key: &str) -> &Connection {
        self.connections.pick(&format!("{app_id}:{key}"))
    }
}

fn millis(window: Duration) -> u64 {
    window.as_millis().max(1) as u64
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn claim(&self, app_id: &str, key: &str, id: &str, window: Duration) -> Result<Claim> {
        let connection = self.connection(app_id, key);
        let key = self.key(app_id, key);
        let won: Option<String> = connection
            .query(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(format!("pending:{id}"))
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(window)),
            )
            .await?;
        if won.is_some() {
            return Ok(Claim::Won);
        }
        let value: Option<String> = connection.query(redis::cmd("GET").arg(&key)).await?;
        Ok(match value.as_deref().and_then(|v| v.strip_prefix("done:")) {
            Some(id) => Claim::Done(id.to_string()),
            // Pending, or gone between the two commands: ask again.
            None => Claim::Pending,
        })
    }

    async fn complete(&self, app_id: &str, key: &str, id: &str, window: Duration) -> Result<()> {
        let connection = self.connection(app_id, key);
        let key = self.key(app_id, key);
        connection
            .query(redis::cmd("SET").arg(key).arg(format!("done:{id}")).arg("PX").arg(millis(window)))
            .await
    }

    async fn release(&self, app_id: &str, key: &str) -> Result<()> {
        self.connection(app_id, key).query(redis::cmd("DEL").arg(self.key(app_id, key))).await
    }
}
