//! An in-process hub: `mcp_hub::app::bind` + `serve` on `127.0.0.1:0` in
//! the test's own runtime, configured from the same flags as the binary.
//! Use it whenever the process itself is not what the test is about;
//! [`crate::support::HubProcess`] is for exit codes, signals, `kill -9`,
//! `.env` and stderr.
//!
//! The hub's settings come from flags only: the environment is ignored
//! (every `[env: ...]` is detached before parsing), so a developer's shell
//! cannot leak into a test, as with the spawned binary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches};
use mcp_hub::config::{Cli, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Endpoint, START_TIMEOUT};

/// A hub served by a task of the current runtime; shut down (drained like
/// on SIGTERM) on drop or with [`TestHub::shutdown`].
pub struct TestHub {
    pub addr: SocketAddr,
    /// The instance id it reports (given with `--instance-id` or generated).
    pub instance_id: String,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<std::io::Result<()>>>,
}

impl Endpoint for TestHub {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Validated settings from flags (`--host 127.0.0.1 --port 0` first, and
/// `--data-dir :memory:` unless given), the environment ignored. Err: clap's or the validation's message.
pub fn config_from_flags(args: &[&str]) -> Result<mcp_hub::config::HubConfig, String> {
    let cmd = Cli::command().mut_args(|a| a.env(None::<&'static str>));
    // In-process hubs keep their state in memory unless a test names a
    // data directory (they would share the working directory's `data`).
    let memory: &[&str] = if args.contains(&"--data-dir") {
        &[]
    } else {
        &["--data-dir", ":memory:"]
    };
    let argv = ["mcp-hub", "--host", "127.0.0.1", "--port", "0"]
        .into_iter()
        .chain(memory.iter().copied())
        .chain(args.iter().copied());
    let matches = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let serve = match cli.command {
        Some(Command::Serve(s)) => *s,
        Some(
            Command::Terminal(_)
            | Command::Token(_)
            | Command::McpStdio(_)
            | Command::Export(_)
            | Command::Import(_),
        ) => {
            return Err("not a hub command line".into());
        }
        None => cli.serve,
    };
    serve.validate().map_err(|e| e.to_string())
}

impl TestHub {
    /// Starts a hub with `args` and waits until `/ready` answers 200.
    pub async fn start(args: &[&str]) -> TestHub {
        let hub = Self::start_unready(args).await;
        hub.wait_ready().await;
        hub
    }

    /// Starts a hub and returns as soon as it listens (for tests where it
    /// cannot become ready, e.g. Redis is down).
    pub async fn start_unready(args: &[&str]) -> TestHub {
        match Self::try_start(args).await {
            Ok(hub) => hub,
            Err(e) => panic!("hub {args:?} did not start: {e}"),
        }
    }

    /// Like [`TestHub::start_unready`], reporting a configuration or
    /// startup error instead of panicking.
    pub async fn try_start(args: &[&str]) -> Result<TestHub, String> {
        // rediss:// and HTTPS share one TLS crypto provider (as in main);
        // an error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = config_from_flags(args)?;
        let (hub, listener) = mcp_hub::app::bind(config)
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let instance_id = hub.instance().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(mcp_hub::app::serve(hub, listener, async move {
            // A dropped sender stops the hub too.
            let _ = stopped.await;
        }));
        Ok(TestHub {
            addr,
            instance_id,
            stop: Some(stop),
            served: Some(served),
        })
    }

    /// Polls `/ready` until 200; panics after [`START_TIMEOUT`].
    pub async fn wait_ready(&self) {
        self.wait_ready_for(START_TIMEOUT).await;
    }

    pub async fn wait_ready_for(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        loop {
            if self.ready_status().await == Some(200) {
                return;
            }
            if self.served.as_ref().is_some_and(|s| s.is_finished()) {
                panic!("in-process hub {} stopped before becoming ready", self.addr);
            }
            if Instant::now() > deadline {
                panic!(
                    "{} never answered 200 within {bound:?}",
                    self.http_url("/ready")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drains like SIGTERM (clients get close 1001) and waits, bounded,
    /// until `serve` returned; its result.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = self.served.take().expect("served once");
        match tokio::time::timeout(Duration::from_secs(20), served).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => Err(std::io::Error::other("serve did not return within 20 s")),
        }
    }
}

/// In-process hubs `ids` on one Redis (any topology): a cluster
/// (heartbeat 200 ms, presence TTL 1 s, so failures are noticed fast),
/// each started ready.
pub async fn start_cluster(
    redis: &impl super::redis::RedisTarget,
    ids: &[&str],
    extra: &[&str],
) -> Vec<TestHub> {
    let mut hubs = Vec::new();
    for id in ids {
        let args = member_args(redis.hub_args(), id, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        hubs.push(TestHub::start(&args).await);
    }
    hubs
}

/// The settings of cluster member `id` on the Redis `redis_args` name
/// (heartbeat 200 ms, presence TTL 1 s, so failures are noticed fast),
/// then `extra`: what [`start_cluster`] starts, for a hub started another
/// way (a process to kill, a hub on another path to Redis).
pub fn member_args(redis_args: Vec<String>, id: &str, extra: &[&str]) -> Vec<String> {
    let mut args = redis_args;
    args.extend(
        [
            "--instance-id",
            id,
            "--heartbeat-ms",
            "200",
            "--presence-ttl-ms",
            "1000",
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string()),
    );
    args
}

impl Drop for TestHub {
    fn drop(&mut self) {
        // The serving task drains and ends by itself; when the test's
        // runtime ends first, it is cancelled with it.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
