//! The broker over a Redis Cluster: sharded pub/sub. A topic's channel lives on the
//! node owning its slot; `SPUBLISH` goes there and `SSUBSCRIBE` listens there, so
//! pub/sub traffic scales with the cluster instead of reaching every node. The
//! client (RESP3 pushes) resubscribes by itself after disconnections and slot moves.

use std::{collections::HashMap, sync::Arc};

use herald_backbone::{HistoryPage, HistoryQuery, Message, MessageHandler, Result, Retention, Topic};
use herald_core::{Publication, StreamPosition};
use parking_lot::Mutex;
use redis::{PushKind, Value, cluster_async::ClusterConnection};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{Connection, RedisConfig, client, history::HistoryScripts, unavailable, wire};

/// Most messages handed to the handler at once.
const MAX_BATCH: usize = 256;

pub(crate) struct ClusterBroker {
    connection: ClusterConnection,
    /// Runs the history scripts (reconnecting when it breaks).
    commands: Connection,
    prefix: String,
    /// The topics this node wants, by Redis channel name.
    wanted: Arc<Mutex<HashMap<String, Topic>>>,
    receiver: JoinHandle<()>,
}

impl ClusterBroker {
    pub(crate) async fn connect(config: &RedisConfig, handler: Arc<dyn MessageHandler>) -> Result<Self> {
        // Opened first: a refusal (a wrong password) is reported from here.
        let commands = Connection::open_cluster(config).await?;
        let (pushes, received) = mpsc::unbounded_channel();
        let client = client::cluster_client(config)?
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .response_timeout(config.command_timeout)
            .build()
            .map_err(unavailable)?;
        let connection = match client.get_async_connection().await {
            Ok(connection) => connection,
            Err(e) => return Err(client::cluster_connect_error(config, e).await),
        };
        let wanted = Arc::new(Mutex::new(HashMap::new()));
        let receiver = tokio::spawn(receive(received, wanted.clone(), handler));
        Ok(Self { connection, commands, prefix: config.prefix.clone(), wanted, receiver })
    }

    pub(crate) fn channel(&self, topic: &Topic) -> String {
        format!("{}:{}:{}:{}", self.prefix, topic.app_id.len(), topic.app_id, topic.name)
    }

    /// Publishes in order. Each topic's channel has its own slot, so messages go one
    /// `SPUBLISH` at a time (a run to one topic as one pipeline).
    pub(crate) async fn publish_batch(&self, messages: Vec<(Topic, Message)>) -> Result<()> {
        let mut at = 0;
        while at < messages.len() {
            let topic = &messages[at].0;
            let run = messages[at..].iter().take_while(|(t, _)| t == topic).count();
            let mut pipe = redis::pipe();
            for (topic, message) in &messages[at..at + run] {
                pipe.cmd("SPUBLISH")
                    .arg(self.channel(topic))
                    .arg(wire::encode(&topic.app_id, message))
                    .ignore();
            }
            pipe.query_async::<()>(&mut self.connection.clone()).await.map_err(unavailable)?;
            at += run;
        }
        Ok(())
    }

    /// Publishes and keeps in order, a run of publications to one topic (one slot) as
    /// one pipeline.
    pub(crate) async fn publish_kept(
        &self,
        scripts: &HistoryScripts,
        publications: &[(Topic, Publication, Retention)],
    ) -> Result<Vec<StreamPosition>> {
        let mut positions = Vec::with_capacity(publications.len());
        let mut at = 0;
        while at < publications.len() {
            let topic = &publications[at].0;
            let run = publications[at..].iter().take_while(|(t, _, _)| t == topic).count();
            let run = &publications[at..at + run];
            positions.extend(scripts.publish(&self.commands, "SPUBLISH", |t| self.channel(t), run).await?);
            at += run.len();
        }
        Ok(positions)
    }

    pub(crate) async fn history(
        &self,
        scripts: &HistoryScripts,
        topic: &Topic,
        retention: Retention,
        query: HistoryQuery,
    ) -> Result<HistoryPage> {
        scripts.read(&self.commands, &self.channel(topic), retention, query).await
    }

    pub(crate) async fn subscribe(&self, topic: &Topic) -> Result<()> {
        let channel = self.channel(topic);
        self.wanted.lock().insert(channel.clone(), topic.clone());
        let result = self.connection.clone().ssubscribe(&channel).await.map_err(unavailable);
        if result.is_err() {
            self.wanted.lock().remove(&channel);
        }
        result
    }

    pub(crate) async fn unsubscribe(&self, topic: &Topic) -> Result<()> {
        let channel = self.channel(topic);
        self.connection.clone().sunsubscribe(&channel).await.map_err(unavailable)?;
        self.wanted.lock().remove(&channel);
        Ok(())
    }
}

impl Drop for ClusterBroker {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// Hands sharded messages to the handler, everything already received in one batch.
async fn receive(
    mut pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
    wanted: Arc<Mutex<HashMap<String, Topic>>>,
    handler: Arc<dyn MessageHandler>,
) {
    let mut batch = Vec::new();
    while let Some(push) = pushes.recv().await {
        batch.push(push);
        while batch.len() < MAX_BATCH {
            match pushes.try_recv() {
                Ok(push) => batch.push(push),
                Err(_) => break,
            }
        }
        let messages: Vec<(Topic, Message)> = {
            let wanted = wanted.lock();
            batch
                .drain(..)
                .filter(|push| push.kind == PushKind::SMessage)
                .filter_map(|push| {
                    let [Value::BulkString(channel), Value::BulkString(payload), ..] = push.data.as_slice()
                    else {
                        return None;
                    };
                    let topic = wanted.get(std::str::from_utf8(channel).ok()?)?.clone();
                    Some((topic, wire::decode(payload)?))
                })
                .collect()
        };
        if !messages.is_empty() {
            handler.handle_batch(messages);
        }
    }
}
