//! A connection one duty keeps for itself, outside the pool: the
//! instance's heartbeat. A mass disconnect (20 000 clients leaving at once)
//! fills the pool with their leaves; a heartbeat waiting behind them comes
//! later than the presence TTL, and the other instances reap this live
//! one. On its own connection the heartbeat waits for nothing but Redis.
//!
//! Opened at the first command, dropped after any failed command and at a
//! Sentinel `+switch-master` (so the next command reaches the new master),
//! opened again at the next command.

use std::sync::Mutex;

use ::redis::FromRedisValue;
use futures_util::FutureExt;

use super::{DedicatedConnection, MasterChanges, MasterEvent, RedisBackend, RedisError};

pub struct OwnConnection {
    backend: RedisBackend,
    /// The open connection (a multiplexed handle: a command runs on a clone,
    /// never under the lock) and the Sentinels' announcements.
    state: Mutex<(Option<DedicatedConnection>, MasterChanges)>,
}

impl OwnConnection {
    /// Nothing connects before the first command.
    pub fn new(backend: RedisBackend) -> Self {
        let changes = backend.master_changes();
        OwnConnection {
            backend,
            state: Mutex::new((None, changes)),
        }
    }

    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// Runs a pipeline.
    pub async fn pipe<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &::redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.run(op, async |conn| pipe.query_async(conn).await)
            .await
    }

    /// Runs a Lua script (EVALSHA, loading it when the server lacks it).
    pub async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.run(op, async |conn| invocation.invoke_async(conn).await)
            .await
    }

    async fn run<T>(
        &self,
        op: &'static str,
        work: impl AsyncFnOnce(&mut DedicatedConnection) -> ::redis::RedisResult<T>,
    ) -> Result<T, RedisError> {
        let result = self
            .backend
            .timed(op, async {
                let mut conn = self.connection(op).await?;
                work(&mut conn)
                    .await
                    .map_err(|e| RedisError::from_client(op, &e))
            })
            .await;
        if result.is_err() {
            // Broken, timed out or pointing at a demoted master: a new one
            // next time.
            self.lock().0 = None;
        }
        result
    }

    /// The open connection, or a new one to the current master.
    async fn connection(&self, op: &'static str) -> Result<DedicatedConnection, RedisError> {
        {
            let mut state = self.lock();
            let (conn, changes) = &mut *state;
            // A master switch since the last command: the connection points
            // at the old master, which may still take writes (then lost).
            while let Some(event) = changes.next().now_or_never() {
                if event == MasterEvent::Switched {
                    *conn = None;
                }
            }
            if let Some(conn) = conn {
                return Ok(conn.clone());
            }
        }
        let conn = self
            .backend
            .dedicated()
            .await
            .map_err(|e| RedisError::from_client(op, &e))?;
        self.lock().0 = Some(conn.clone());
        Ok(conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<DedicatedConnection>, MasterChanges)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
