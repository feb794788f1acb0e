//! One pub/sub connection, whatever the topology: RESP2 `SUBSCRIBE` on one
//! server, or sharded `SSUBSCRIBE` (RESP3 pushes) on a Redis Cluster, with
//! what it reports turned into one [`Incoming`] type.

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::redis::{COMMAND_TIMEOUT, RedisBackend};

/// What the subscription connection reports, whatever the topology.
pub(super) enum Incoming {
    Message {
        channel: String,
        payload: Vec<u8>,
    },
    /// Sharded: a subscription confirmed by a node (ours, or the client
    /// library's own after it reconnected to a node).
    Subscribed(String),
    /// Sharded: a node dropped a subscription (its slot moved away), or
    /// confirmed our own unsubscription.
    Unsubscribed(String),
    /// Sharded: the connection to one node was lost.
    Disconnected,
}

/// The subscription connection: RESP2 pub/sub on one server, or sharded
/// pub/sub (RESP3 pushes) over a Redis Cluster connection, which sends
/// each `SSUBSCRIBE` to the node owning the channel's slot.
pub(super) enum Subscription {
    Plain {
        sink: ::redis::aio::PubSubSink,
        stream: ::redis::aio::PubSubStream,
    },
    Sharded {
        conn: ::redis::cluster_async::ClusterConnection,
        pushes: mpsc::UnboundedReceiver<::redis::PushInfo>,
    },
}

impl Subscription {
    pub(super) async fn connect(backend: &RedisBackend) -> ::redis::RedisResult<Self> {
        if backend.is_cluster() {
            let (tx, pushes) = mpsc::unbounded_channel();
            let conn = backend.sharded_pubsub(tx).await?;
            Ok(Subscription::Sharded { conn, pushes })
        } else {
            let (sink, stream) = backend.pubsub().await?.split();
            Ok(Subscription::Plain { sink, stream })
        }
    }

    pub(super) fn is_sharded(&self) -> bool {
        matches!(self, Subscription::Sharded { .. })
    }

    pub(super) async fn subscribe(&mut self, channels: &[String]) -> ::redis::RedisResult<()> {
        match self {
            Subscription::Plain { sink, .. } => sink.subscribe(channels).await,
            // One SSUBSCRIBE per channel: channels of one command must
            // share a slot.
            Subscription::Sharded { conn, .. } => {
                futures_util::future::try_join_all(channels.iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { conn.ssubscribe(c).await }
                }))
                .await
                .map(drop)
            }
        }
    }

    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> ::redis::RedisResult<()> {
        match self {
            Subscription::Plain { sink, .. } => sink.unsubscribe(channels).await,
            Subscription::Sharded { conn, .. } => {
                futures_util::future::try_join_all(channels.iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { conn.sunsubscribe(c).await }
                }))
                .await
                .map(drop)
            }
        }
    }

    /// The next report; None when the connection is gone.
    pub(super) async fn next(&mut self) -> Option<Incoming> {
        match self {
            Subscription::Plain { stream, .. } => {
                let msg = stream.next().await?;
                Some(Incoming::Message {
                    channel: msg.get_channel_name().to_string(),
                    payload: msg.get_payload_bytes().to_vec(),
                })
            }
            Subscription::Sharded { pushes, .. } => loop {
                let push = pushes.recv().await?;
                let text = |i: usize| match push.data.get(i) {
                    Some(::redis::Value::BulkString(b)) => Some(b.clone()),
                    _ => None,
                };
                let channel = || text(0).map(|c| String::from_utf8_lossy(&c).into_owned());
                let incoming = match push.kind {
                    ::redis::PushKind::SMessage => channel()
                        .zip(text(1))
                        .map(|(channel, payload)| Incoming::Message { channel, payload }),
                    ::redis::PushKind::SSubscribe => channel().map(Incoming::Subscribed),
                    ::redis::PushKind::SUnsubscribe => channel().map(Incoming::Unsubscribed),
                    ::redis::PushKind::Disconnection => Some(Incoming::Disconnected),
                    _ => None,
                };
                if let Some(incoming) = incoming {
                    return Some(incoming);
                }
            },
        }
    }
}

/// A subscription command under the shared timeout.
pub(super) async fn bounded(
    what: &str,
    command: impl Future<Output = ::redis::RedisResult<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}
