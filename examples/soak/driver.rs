//! The soak's load: steady sessions with one publisher broadcasting at a
//! fixed rate and subscribers that keep dropping their connection (a
//! clean close or a bare TCP close) and resuming with `since`, plus
//! sessions created, used briefly and abandoned, so that idle-session
//! expiry and the log's TTL have something to remove.
//!
//! Every wait is bounded; the driver stops everything on [`Driver::shutdown`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bound on one connect + register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the steady clients being (re)connected at start and at the end.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Abandoned sessions in flight at once; past it a tick is skipped.
const MAX_ABANDONING: usize = 64;
/// Broadcasts an abandoned session's first client sends.
const ABANDONED_BROADCASTS: u64 = 3;
/// Session names: steady ones, and the abandoned ones the expiry check
/// looks for (`{s:<session>}` is how the hub's keys name a session).
pub const STEADY_PREFIX: &str = "soak-steady-";
pub const ABANDONED_PREFIX: &str = "soak-gone-";
pub const ABANDONED_KEYS: &str = "*{s:soak-gone-*";
pub const STEADY_PRESENCE_KEYS: &str = "*{s:soak-steady-*}:presence";
pub const MEMBER_SET_KEYS: &str = "*{i:*}:members";
/// The session index and the idle sweep's activity index (sorted sets).
pub const SESSION_INDEX_KEYS: &str = "*{sessions}*";

/// What load to drive.
#[derive(Clone, Debug)]
pub struct Load {
    /// WebSocket URLs; connections go round-robin over them.
    pub urls: Vec<String>,
    pub sessions: usize,
    /// Subscribers per steady session (its publisher comes on top).
    pub subscribers: usize,
    /// Broadcasts per second over all steady sessions.
    pub broadcasts_per_sec: f64,
    /// Subscriber drops (each followed by a resume) per second, on average.
    pub resumes_per_sec: f64,
    /// Sessions created and abandoned per second.
    pub abandoned_per_sec: f64,
}

impl Load {
    /// Steady clients: subscribers and publishers.
    pub fn steady_clients(&self) -> u64 {
        (self.sessions * (self.subscribers + 1)) as u64
    }
}

/// What the driver did so far (read by the sampler).
#[derive(Default, Debug)]
pub struct Counters {
    /// Steady clients registered right now.
    pub connected: AtomicU64,
    pub broadcasts: AtomicU64,
    pub deliveries: AtomicU64,
    pub resumes: AtomicU64,
    /// Resumes answered `recovered: true`.
    pub recovered: AtomicU64,
    /// Publisher broadcasts a subscriber never got while connected or
    /// after a recovered resume (should stay 0).
    pub gaps: AtomicU64,
    pub duplicates: AtomicU64,
    pub abandoned_sessions: AtomicU64,
    /// Abandoned sessions whose short life failed (connect, register,
    /// delivery), and ticks skipped because too many were in flight.
    pub abandoned_failed: AtomicU64,
    pub abandoned_skipped: AtomicU64,
    /// Failed connects or registrations of steady clients (retried).
    pub connect_errors: AtomicU64,
    /// Error frames the hubs sent (e.g. rate_limited).
    pub error_frames: AtomicU64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Counters {
    /// One line of the driver's figures.
    pub fn summary(&self) -> String {
        format!(
            "broadcasts {}, deliveries {}, resumes {} ({} recovered), gaps {}, duplicates {}, \
             abandoned sessions {} (failed {}, skipped {}), connect errors {}, error frames {}",
            get(&self.broadcasts),
            get(&self.deliveries),
            get(&self.resumes),
            get(&self.recovered),
            get(&self.gaps),
            get(&self.duplicates),
            get(&self.abandoned_sessions),
            get(&self.abandoned_failed),
            get(&self.abandoned_skipped),
            get(&self.connect_errors),
            get(&self.error_frames),
        )
    }
}

/// The running load.
pub struct Driver {
    pub load: Load,
    pub counters: Arc<Counters>,
    /// Set while subscribers drop and sessions are abandoned.
    churning: Arc<AtomicBool>,
    churn_stop: CancellationToken,
    stop: CancellationToken,
    steady: JoinSet<()>,
    churn: Option<tokio::task::JoinHandle<()>>,
}

impl Driver {
    /// Connects every publisher and subscriber; returns once all are
    /// registered (no churn yet).
    pub async fn start(load: Load) -> Result<Driver> {
        if load.urls.is_empty() || load.sessions == 0 {
            bail!("the soak needs at least one URL and one session");
        }
        let counters = Arc::new(Counters::default());
        let churning = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let mut steady = JoinSet::new();
        let per_session_rate = load.broadcasts_per_sec / load.sessions as f64;
        // Mean connection life of a subscriber under churn.
        let total_subs = (load.sessions * load.subscribers) as f64;
        let mean_life = (load.resumes_per_sec > 0.0)
            .then(|| Duration::from_secs_f64(total_subs / load.resumes_per_sec));
        let mut n = 0usize;
        for s in 0..load.sessions {
            let session = format!("{STEADY_PREFIX}{s}");
            let publisher = Client {
                url_index: n,
                session: session.clone(),
                id: format!("pub-{s}"),
            };
            n += 1;
            steady.spawn(publish(
                load.urls.clone(),
                publisher,
                per_session_rate,
                counters.clone(),
                stop.clone(),
            ));
            for k in 0..load.subscribers {
                let sub = Client {
                    url_index: n,
                    session: session.clone(),
                    id: format!("sub-{s}-{k}"),
                };
                n += 1;
                steady.spawn(subscribe(
                    load.urls.clone(),
                    sub,
                    format!("pub-{s}"),
                    mean_life,
                    churning.clone(),
                    counters.clone(),
                    stop.clone(),
                ));
            }
        }
        let driver = Driver {
            load,
            counters,
            churning,
            churn_stop: CancellationToken::new(),
            stop,
            steady,
            churn: None,
        };
        driver
            .wait_all_connected()
            .await
            .context("steady clients at start")?;
        Ok(driver)
    }

    /// Waits until every steady client is registered.
    pub async fn wait_all_connected(&self) -> Result<()> {
        let want = self.load.steady_clients();
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while get(&self.counters.connected) != want {
            if Instant::now() >= deadline {
                bail!(
                    "{} of {want} steady clients registered after {SETTLE_TIMEOUT:?}",
                    get(&self.counters.connected)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Subscribers start dropping and resuming; sessions start being
    /// created and abandoned.
    pub fn start_churn(&mut self) {
        self.churning.store(true, Ordering::SeqCst);
        self.churn = Some(tokio::spawn(abandon_sessions(
            self.load.clone(),
            self.counters.clone(),
            self.churn_stop.clone(),
        )));
    }

    /// Ends the churn: no new abandoned session, the ones in flight
    /// finish, and every subscriber is connected again.
    pub async fn stop_churn(&mut self) -> Result<()> {
        self.churning.store(false, Ordering::SeqCst);
        self.churn_stop.cancel();
        if let Some(churn) = self.churn.take() {
            churn.await.context("the abandoning task panicked")?;
        }
        self.wait_all_connected()
            .await
            .context("steady clients after the churn")
    }

    /// Closes every steady client.
    pub async fn shutdown(mut self) {
        self.churn_stop.cancel();
        self.stop.cancel();
        if let Some(churn) = self.churn.take() {
            let _ = churn.await;
        }
        while self.steady.join_next().await.is_some() {}
    }
}

/// Who a steady client is and where it connects first.
struct Client {
    url_index: usize,
    session: String,
    id: String,
}

/// The `{offset, epoch}` of the last session event a client received.
type Since = Option<(u64, String)>;

/// Connects to `url` and registers (`since` when resuming). Returns the
/// socket, `registration_confirmed` and the frames that came before it.
async fn register(
    url: &str,
    session: &str,
    id: &str,
    since: &Since,
) -> Result<(Ws, Value, Vec<Value>)> {
    let work = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connect {url}"))?;
        let mut reg = json!({"type": "register", "session": session, "client_id": id});
        if let Some((offset, epoch)) = since {
            reg["since"] = json!({"offset": offset, "epoch": epoch});
        }
        ws.send(Message::Text(reg.to_string().into())).await?;
        // Frames of the session may come before the confirmation when
        // it registers on another instance; they are kept, in order.
        let mut early = Vec::new();
        for _ in 0..10_000 {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let frame: Value = serde_json::from_str(t.as_str())?;
                    match frame["type"].as_str() {
                        Some("registration_confirmed") => return Ok((ws, frame, early)),
                        Some("error") => bail!("register {id}: {frame}"),
                        _ => early.push(frame),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("register {id}: connection closed"),
            }
        }
        bail!("register {id}: no registration_confirmed")
    };
    tokio::time::timeout(REGISTER_TIMEOUT, work)
        .await
        .map_err(|_| anyhow!("register {id}: timed out"))?
}

/// A subscriber's view of its session: where to resume and the last
/// broadcast sequence number of the publisher it got.
struct Track {
    since: Since,
    last_seq: Option<u64>,
}

impl Track {
    fn frame(&mut self, frame: &Value, publisher: &str, counters: &Counters) {
        if let (Some(offset), Some(epoch)) = (frame["offset"].as_u64(), frame["epoch"].as_str()) {
            self.since = Some((offset, epoch.to_string()));
        }
        match frame["type"].as_str() {
            Some("broadcast") if frame["from"].as_str() == Some(publisher) => {
                counters.deliveries.fetch_add(1, Ordering::Relaxed);
                let Some(seq) = frame["payload"]["seq"].as_u64() else {
                    return;
                };
                match self.last_seq {
                    Some(last) if seq <= last => {
                        counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Some(last) if seq > last + 1 => {
                        counters.gaps.fetch_add(seq - last - 1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                self.last_seq = Some(seq);
            }
            Some("error") => {
                counters.error_frames.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Sleeps `d` unless `stop` comes first; false if stopped.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// A steady subscriber: registers, reads, and while churning drops its
/// connection after a random life (mean `mean_life`; None: never), then
/// resumes on the next URL with `since`.
async fn subscribe(
    urls: Vec<String>,
    me: Client,
    publisher: String,
    mean_life: Option<Duration>,
    churning: Arc<AtomicBool>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut track = Track {
        since: None,
        last_seq: None,
    };
    let mut url_index = me.url_index;
    while !stop.is_cancelled() {
        let url = &urls[url_index % urls.len()];
        let resuming = track.since.is_some();
        let (mut ws, confirmed, early) =
            match register(url, &me.session, &me.id, &track.since).await {
                Ok(r) => r,
                Err(_) => {
                    counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                    if !pause(Duration::from_millis(500), &stop).await {
                        return;
                    }
                    continue;
                }
            };
        let recovered = confirmed["recovered"].as_bool() == Some(true);
        if resuming {
            counters.resumes.fetch_add(1, Ordering::Relaxed);
            if recovered {
                counters.recovered.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !recovered {
            // Nothing replayed: the sequence starts afresh from here.
            track.last_seq = None;
        }
        track.frame(&confirmed, &publisher, &counters);
        for frame in &early {
            track.frame(frame, &publisher, &counters);
        }
        counters.connected.fetch_add(1, Ordering::Relaxed);
        let drop_at = mean_life
            .map(|mean| tokio::time::Instant::now() + mean.mul_f64(rand::random_range(0.5..1.5)));
        let clean = loop {
            let churn_now = churning.load(Ordering::Relaxed) && drop_at.is_some();
            tokio::select! {
                _ = stop.cancelled() => break true,
                _ = tokio::time::sleep_until(drop_at.unwrap_or_else(tokio::time::Instant::now)), if churn_now => {
                    break rand::random::<bool>();
                }
                // Re-reads `churning` now and then, so a subscriber of a
                // quiet session still drops.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(frame) = serde_json::from_str::<Value>(t.as_str()) {
                            track.frame(&frame, &publisher, &counters);
                        }
                    }
                    Some(Ok(_)) => {}
                    // Closed by the hub: resume at once.
                    Some(Err(_)) | None => break false,
                }
            }
        };
        counters.connected.fetch_sub(1, Ordering::Relaxed);
        if clean {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        }
        // A bare drop closes the TCP connection without a close frame.
        drop(ws);
        if stop.is_cancelled() {
            return;
        }
        url_index += 1;
        if !pause(Duration::from_millis(rand::random_range(50..500)), &stop).await {
            return;
        }
    }
}

/// A steady publisher: broadcasts `{"seq": n}` at `rate` per second,
/// reconnecting (a new registration) if its connection ends.
async fn publish(
    urls: Vec<String>,
    me: Client,
    rate: f64,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut seq = 0u64;
    let mut url_index = me.url_index;
    while !stop.is_cancelled() {
        let url = &urls[url_index % urls.len()];
        let Ok((mut ws, _, _)) = register(url, &me.session, &me.id, &None).await else {
            counters.connect_errors.fetch_add(1, Ordering::Relaxed);
            if !pause(Duration::from_millis(500), &stop).await {
                return;
            }
            continue;
        };
        counters.connected.fetch_add(1, Ordering::Relaxed);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    break;
                }
                _ = tick.tick() => {
                    let frame = json!({"type": "broadcast", "payload": {"seq": seq + 1}});
                    if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
                        break;
                    }
                    seq += 1;
                    counters.broadcasts.fetch_add(1, Ordering::Relaxed);
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if t.as_str().contains(r#""type":"error""#) {
                            counters.error_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
        counters.connected.fetch_sub(1, Ordering::Relaxed);
        url_index += 1;
    }
}

/// Creates `abandoned_per_sec` sessions a second until `stop`; waits for
/// the ones in flight before returning.
async fn abandon_sessions(load: Load, counters: Arc<Counters>, stop: CancellationToken) {
    if load.abandoned_per_sec <= 0.0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / load.abandoned_per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let permits = Arc::new(Semaphore::new(MAX_ABANDONING));
    let mut running = JoinSet::new();
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        while running.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counters.abandoned_skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let urls = load.urls.clone();
        let counters = counters.clone();
        running.spawn(async move {
            let ok = abandon_one(&urls, n).await.is_ok();
            let c = if ok {
                &counters.abandoned_sessions
            } else {
                &counters.abandoned_failed
            };
            c.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
        n += 1;
    }
    while running.join_next().await.is_some() {}
}

/// One abandoned session: two clients on different URLs, a few
/// broadcasts from one to the other, then both leave (one cleanly, one by
/// dropping its TCP connection) and the session is never used again.
async fn abandon_one(urls: &[String], n: usize) -> Result<()> {
    let session = format!("{ABANDONED_PREFIX}{n}");
    let (mut a, _, _) = register(&urls[n % urls.len()], &session, "a", &None).await?;
    let (mut b, _, _) = register(&urls[(n + 1) % urls.len()], &session, "b", &None).await?;
    for seq in 1..=ABANDONED_BROADCASTS {
        let frame = json!({"type": "broadcast", "payload": {"seq": seq}});
        a.send(Message::Text(frame.to_string().into())).await?;
    }
    let received = async {
        let mut got = 0;
        while got < ABANDONED_BROADCASTS {
            match b.next().await {
                Some(Ok(Message::Text(t))) if t.as_str().contains(r#""type":"broadcast""#) => {
                    got += 1
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow!(e)),
                None => bail!("closed"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(REGISTER_TIMEOUT, received)
        .await
        .map_err(|_| anyhow!("{session}: broadcasts not delivered"))??;
    let _ = tokio::time::timeout(Duration::from_secs(2), a.close(None)).await;
    drop(a);
    drop(b);
    Ok(())
}
