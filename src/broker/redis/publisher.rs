//! The publisher: one task per instance drains the bounded queue of
//! events onto one connection, pipelining the append script per batch,
//! numbering events so a retried batch is never logged twice, and holding
//! its queue while Sentinel promotes a new master.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event_log::{APPEND_SCRIPT, epoch_candidate};
use super::{LogSettings, publish_command, reconnect_delays, wait_to_reconnect};
use crate::redis::{DedicatedConnection, MasterEvent, RedisBackend, RedisError};

pub(super) const PUBLISH_QUEUE: usize = 16 * 1024;
/// Longest wait for the new master once Sentinel started promoting one.
pub(super) const PROMOTION_HOLD: Duration = Duration::from_secs(5);
const MAX_BATCH: usize = 256;

/// One event waiting for the append script.
pub(super) struct Queued {
    pub(super) session: String,
    pub(super) seq: u64,
    /// The entry's header line and frame after the position (the
    /// script's ARGV[7] and ARGV[8]).
    pub(super) header: String,
    pub(super) frame: String,
    pub(super) done: Option<tokio::sync::oneshot::Sender<(String, u64)>>,
}

/// Logs and publishes a batch in one round trip: one pipeline of append
/// scripts, in queue order. On a Redis Cluster a pipeline must stay in one
/// slot, so the batch goes as one pipeline per session (each in queue
/// order), all at once. Returns `(offset, epoch)` per event, in batch order.
async fn append_batch(
    backend: &RedisBackend,
    settings: &LogSettings,
    script: &::redis::Script,
    batch: &[Queued],
    conn: &mut DedicatedConnection,
) -> ::redis::RedisResult<Vec<(u64, String)>> {
    let keys = &backend.keys;
    let publish = publish_command(backend);
    let invocation = |q: &Queued| {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.session_log(&q.session))
            .key(keys.session_log_epoch(&q.session))
            .key(keys.session_log_offset(&q.session))
            .key(keys.session_log_seen(&q.session))
            .key(keys.session_channel(&q.session))
            .arg(epoch_candidate())
            .arg(settings.len)
            .arg(settings.ttl_ms)
            .arg(publish)
            .arg(&settings.publisher)
            .arg(q.seq)
            .arg(&q.header)
            .arg(&q.frame);
        invocation
    };
    if !backend.is_cluster() {
        let mut pipe = ::redis::pipe();
        for q in batch {
            pipe.invoke_script(&invocation(q));
        }
        return pipe.query_async(conn).await;
    }
    // Per session, the positions of its events in the batch.
    let mut sessions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, q) in batch.iter().enumerate() {
        sessions.entry(q.session.as_str()).or_default().push(i);
    }
    let pipes = sessions.into_values().map(|positions| {
        let mut pipe = ::redis::pipe();
        for &i in &positions {
            pipe.invoke_script(&invocation(&batch[i]));
        }
        // The connection is multiplexed: each pipeline gets its own handle.
        let mut handle = conn.clone();
        async move {
            let logged: Vec<(u64, String)> = pipe.query_async(&mut handle).await?;
            Ok::<_, ::redis::RedisError>((positions, logged))
        }
    });
    let mut out = vec![(0, String::new()); batch.len()];
    for (positions, logged) in futures_util::future::try_join_all(pipes).await? {
        for (i, result) in positions.into_iter().zip(logged) {
            out[i] = result;
        }
    }
    Ok(out)
}

pub(super) async fn publisher_loop(
    backend: RedisBackend,
    settings: LogSettings,
    mut rx: mpsc::Receiver<Queued>,
    healthy: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let script = ::redis::Script::new(APPEND_SCRIPT);
    let mut backoff = reconnect_delays();
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    let mut seq: u64 = 0;
    let mut master_changes = backend.master_changes();
    'connect: loop {
        // A new connection each time: with Sentinel, to the current master.
        let connected = backend
            .timed("publisher_connect", async {
                let mut conn = backend
                    .dedicated()
                    .await
                    .map_err(|e| RedisError::from_client("publisher_connect", &e))?;
                // Loaded once per connection (on every master of a Redis
                // Cluster), so the pipeline's EVALSHAs find it (a restarted
                // Redis, or a promoted replica, may not have it).
                script
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| RedisError::from_client("publisher_connect", &e))?;
                Ok(conn)
            })
            .await;
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                healthy.store(false, Ordering::Release);
                tracing::warn!(error = %e, "redis publisher cannot connect; retrying");
                wait_to_reconnect(&mut backoff, &shutdown).await;
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
        };
        healthy.store(true, Ordering::Release);
        backoff = reconnect_delays();
        loop {
            let mut last = false;
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    // The old master may still accept writes until Sentinel
                    // demotes it; they would be lost then.
                    event = master_changes.next() => {
                        if event == MasterEvent::Promoting {
                            tokio::select! {
                                _ = master_changes.switched() => {}
                                _ = tokio::time::sleep(PROMOTION_HOLD) => {}
                                _ = shutdown.cancelled() => {}
                            }
                        }
                        continue 'connect;
                    }
                    n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
                    _ = shutdown.cancelled() => {
                        // Final flush of whatever is still queued.
                        while let Ok(queued) = rx.try_recv() {
                            batch.push(queued);
                        }
                        if batch.is_empty() {
                            return;
                        }
                        last = true;
                    }
                }
            }
            // Sequence numbers follow the queue order, which is the log
            // order: numbering at `publish_event` would race between
            // producers, and the script would then skip a later-queued
            // smaller number as already logged. A retried batch keeps its
            // numbers.
            for q in batch.iter_mut().filter(|q| q.seq == 0) {
                seq += 1;
                q.seq = seq;
            }
            let sent = backend
                .timed("publish_events", async {
                    append_batch(&backend, &settings, &script, &batch, &mut conn)
                        .await
                        .map_err(|e| RedisError::from_client("publish_events", &e))
                })
                .await;
            match sent {
                Ok(logged) => {
                    for (q, (offset, epoch)) in batch.iter_mut().zip(logged) {
                        if let Some(done) = q.done.take()
                            && offset > 0
                        {
                            let _ = done.send((epoch, offset));
                        }
                    }
                    if last {
                        return;
                    }
                    batch.clear();
                }
                Err(error) => {
                    // READONLY (a demoted master) included: the reconnection
                    // asks Sentinel for the master again.
                    tracing::warn!(%error, pending = batch.len(), "redis publish failed; reconnecting");
                    // The batch is kept and sent first on the new connection,
                    // so order holds; the script skips what was already
                    // logged, so nothing is logged twice and nothing dropped.
                    healthy.store(false, Ordering::Release);
                    wait_to_reconnect(&mut backoff, &shutdown).await;
                    if last || shutdown.is_cancelled() {
                        return;
                    }
                    continue 'connect;
                }
            }
        }
    }
}
