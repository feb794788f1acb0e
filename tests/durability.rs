//! The standalone hub's data directory (DATA_DIR, docs/reliability.md):
//! what the embedded store and the durable log write is read back after a
//! restart — through their APIs, and for a real hub process killed with
//! SIGKILL, whose clients then resume with `recovered: true` in the same
//! epoch and whose idempotent sends stay sent once.

use crate::support;

use std::path::Path;
use std::time::Duration;

use mcp_hub::broker::local::LocalBroker;
use mcp_hub::broker::{Broker, EventEnvelope, EventHeader, Inbound, ReadBudget};
use mcp_hub::durable::{Journal, Snapshot};
use mcp_hub::protocol::{Contact, DeliveryStatus, HistoryEntry, MessageDirection};
use mcp_hub::store::memory::MemoryStore;
use mcp_hub::store::{IdempotencyBegin, IdempotencyKey, SessionStore};
use serde_json::json;
use support::*;
use tokio::sync::mpsc;

const HISTORY_CAP: usize = 3;
const LOG_LEN: usize = 4;

/// Opens `dir`, waiting for the previous opener's writer to let go of it
/// (its thread ends once every handle is dropped).
async fn reopen(dir: &Path) -> (Journal, Snapshot) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Journal::open(dir) {
            Ok(opened) => return opened,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the data directory never reopened: {e}"),
        }
    }
}

/// Waits until no handle of this process holds `dir`'s database (its
/// writer thread lets go once every handle is dropped), so another
/// process can open it.
async fn released(dir: &Path) {
    let file = dir.join(mcp_hub::durable::FILE_NAME);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while redb::Database::create(&file).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the data directory stayed open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The store and the log of `dir`, as a standalone hub opens them, and
/// what was read back.
async fn store_and_log(dir: &Path) -> (MemoryStore, LocalBroker, Snapshot) {
    let (journal, snapshot) = reopen(dir).await;
    let store = MemoryStore::restored(HISTORY_CAP, 1 << 26, journal.clone(), &snapshot);
    // The dispatcher's side is dropped: these tests read the log directly.
    let (tx, _) = mpsc::channel::<Inbound>(1024);
    let log_ttl = Duration::from_secs(600);
    let broker = LocalBroker::restored("solo".into(), tx, LOG_LEN, log_ttl, journal, &snapshot);
    (store, broker, snapshot)
}

/// alice registers in `team` and stays; bob registers and leaves. alice,
/// and where bob left off (offset, epoch).
async fn alice_stays_bob_leaves(url: &str) -> (WsClient, (u64, String)) {
    let (alice, _) = WsClient::register(url, "team", "alice").await;
    let (bob, conf) = WsClient::register(url, "team", "bob").await;
    let epoch = conf["epoch"].as_str().expect("epoch").to_string();
    let offset = conf["offset"].as_u64().expect("offset");
    bob.close().await;
    (alice, (offset, epoch))
}

/// bob back where he left off: recovered, in the same epoch; the texts of
/// the first `n` messages replayed to him.
async fn bob_resumes(url: &str, left: &(u64, String), n: usize) -> (WsClient, Vec<String>) {
    let (offset, epoch) = left;
    let (mut bob, conf) = WsClient::register_with(
        url,
        json!({"type": "register", "session": "team", "client_id": "bob",
               "since": {"offset": offset, "epoch": epoch}}),
    )
    .await;
    assert_eq!(
        (&conf["recovered"], &conf["epoch"]),
        (&json!(true), &json!(epoch)),
        "{conf}"
    );
    let mut replayed = Vec::new();
    while replayed.len() < n {
        let event = bob.recv().await;
        if event["type"] == "message_event" {
            replayed.push(event["message"].as_str().unwrap_or_default().to_string());
        }
    }
    (bob, replayed)
}

fn entry(contact: &str, n: usize) -> HistoryEntry {
    HistoryEntry {
        direction: MessageDirection::Outgoing,
        contact: contact.into(),
        message: format!("m{n}"),
        message_id: format!("id{n}"),
        timestamp: n as u64,
        by: "alice".into(),
        executed_by: Some("simulated".into()),
        status: None,
        status_error: None,
        content: Default::default(),
    }
}

fn envelope(session: &str, n: usize) -> EventEnvelope {
    EventEnvelope {
        header: EventHeader {
            session: session.into(),
            origin: "solo".into(),
            kind: "broadcast".into(),
            produced_at: mcp_hub::protocol::now_millis(),
            except: None,
            presence: None,
            traceparent: None,
        },
        frame: format!(r#"{{"type":"broadcast","from":"x","payload":{n},"timestamp":1}}"#),
    }
}

const WHOLE: ReadBudget = ReadBudget {
    max_bytes: 1 << 30,
    max_events: 1 << 20,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_and_the_log_read_back_what_they_wrote() {
    let dir = TempDir::new();
    let key = IdempotencyKey {
        caller: "alice",
        key: "k1",
        fingerprint: "f1",
    };
    let (epoch, head) = {
        let (store, broker, _) = store_and_log(dir.path()).await;
        store
            .set_contacts(
                "s",
                &[Contact {
                    name: "John".into(),
                    phone: Some("+1".into()),
                }],
            )
            .await
            .unwrap();
        for n in 0..5 {
            store.record_message("s", &entry("John", n)).await.unwrap();
        }
        store
            .set_status(
                "s",
                "id4",
                DeliveryStatus::Delivered,
                None,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .idempotency_begin(&key, "t", Duration::from_secs(30))
                .await
                .unwrap(),
            IdempotencyBegin::Acquired
        );
        store
            .idempotency_finish(
                &key,
                "t",
                r#"{"ok":{"message_id":"id4"}}"#,
                Duration::from_secs(600),
                10,
            )
            .await
            .unwrap();
        assert!(
            store
                .mark_seen("wamid.1", Duration::from_secs(600))
                .await
                .unwrap()
        );
        store.push_webhook_event("first").await.unwrap();
        store.push_webhook_event("second").await.unwrap();
        store.push_webhook_event("third").await.unwrap();
        let lease = Duration::from_secs(60);
        let (first, event) = store.claim_webhook_event(lease).await.unwrap().unwrap();
        assert_eq!(event, "first");
        store.ack_webhook_event(&first).await.unwrap();
        // Claimed, never acknowledged: the process dies while processing it.
        let (_, event) = store.claim_webhook_event(lease).await.unwrap().unwrap();
        assert_eq!(event, "second");
        // A session the idle sweep removes takes its rows along.
        store
            .record_message("gone", &entry("Ann", 9))
            .await
            .unwrap();
        let mut published = None;
        for n in 0..6 {
            published = Some(broker.publish_event(envelope("s", n)).unwrap());
        }
        let (epoch, head) = published.unwrap().await.expect("logged");
        broker
            .publish_event(envelope("gone", 0))
            .unwrap()
            .await
            .expect("logged");
        broker.settle().await;
        (epoch, head)
    };
    // A second life: everything above is back.
    let (store, broker, snapshot) = store_and_log(dir.path()).await;
    assert_eq!(
        snapshot.epoch, epoch,
        "the epoch belongs to the data directory"
    );
    assert!(store.exists("s").await.unwrap());
    assert_eq!(store.contacts("s").await.unwrap()[0].name, "John");
    assert_eq!(
        store.last_contact("s").await.unwrap().as_deref(),
        Some("John")
    );
    let history = store.history("s", "john", 10).await.unwrap();
    let ids: Vec<&str> = history.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(
        ids,
        ["id2", "id3", "id4"],
        "capped at HISTORY_LIMIT, in order"
    );
    assert_eq!(history[2].status, Some(DeliveryStatus::Delivered));
    assert_eq!(
        store
            .idempotency_begin(&key, "t2", Duration::from_secs(30))
            .await
            .unwrap(),
        IdempotencyBegin::Done(r#"{"ok":{"message_id":"id4"}}"#.into())
    );
    assert!(
        !store
            .mark_seen("wamid.1", Duration::from_secs(600))
            .await
            .unwrap(),
        "still seen"
    );
    // The event it was processing is queued again, first; the acknowledged
    // one is gone.
    let lease = Duration::from_secs(60);
    let mut taken = Vec::new();
    while let Some((_, event)) = store.claim_webhook_event(lease).await.unwrap() {
        taken.push(event);
    }
    assert_eq!(taken, ["second", "third"]);
    let page = store.list_sessions(None, 10).await.unwrap();
    let s = page
        .sessions
        .iter()
        .find(|l| l.session == "s")
        .expect("listed");
    assert_eq!(s.messages_out, 5, "the counters survive too");
    // The log carries on: same epoch, the last LOG_LEN events, next offset.
    let read = broker.read_log("s", Some(head - 2), WHOLE).await.unwrap();
    assert_eq!((read.epoch.as_str(), read.head), (epoch.as_str(), head));
    let offsets: Vec<u64> = read.events.unwrap().iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [head - 1, head]);
    let (_, next) = broker
        .publish_event(envelope("s", 7))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(next, head + 1);

    // The sweep removes `gone` (and its log): a third life has neither.
    std::thread::sleep(Duration::from_millis(5));
    let removed = store
        .expire_idle(Duration::from_millis(1), 100)
        .await
        .unwrap();
    assert!(removed.contains(&"gone".to_string()), "{removed:?}");
    for session in &removed {
        broker.forget_log(session);
    }
    broker.settle().await;
    drop((store, broker));
    let (_journal, snapshot) = reopen(dir.path()).await;
    assert!(!snapshot.sessions.contains_key("gone"));
    assert!(!snapshot.logs.contains_key("gone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_with_9_keeps_what_it_acknowledged_and_its_clients_resume() {
    let data = TempDir::new();
    let data_dir = data.path().to_str().expect("utf8").to_string();
    let args = ["--data-dir", data_dir.as_str()];
    let mut hub = HubProcess::start(&args, &[]).await;
    let (mut alice, bob_left) = alice_stays_bob_leaves(&hub.ws_url()).await;
    // Acknowledged while bob is away: three sends and one idempotent send.
    for n in 0..3 {
        let answer = alice
            .request(send_cmd("John", &format!("before the crash {n}")))
            .await;
        assert_eq!(answer["content"]["success"], true, "{answer}");
    }
    let keyed = json!({"type": "whatsapp_command", "idempotency_key": "order-42",
        "command": {"action": "send", "contact": "John", "message": "exactly once"}});
    let first = alice.request(keyed.clone()).await;
    let message_id = first["content"]["message_id"].clone();
    assert!(message_id.is_string(), "{first}");

    hub.kill();
    let mut hub = HubProcess::start(&args, &[]).await;
    // bob resumes from where he left: every event he missed, same epoch.
    let (_bob, replayed) = bob_resumes(&hub.ws_url(), &bob_left, 4).await;
    assert_eq!(
        replayed,
        [
            "before the crash 0",
            "before the crash 1",
            "before the crash 2",
            "exactly once"
        ]
    );
    // The history is there, and the idempotent send is not sent again.
    let (mut alice, _) = WsClient::register(&hub.ws_url(), "team", "alice").await;
    let again = alice.request(keyed).await;
    assert_eq!(again["content"]["message_id"], message_id, "{again}");
    let history = alice.request(history_cmd("John")).await;
    assert_eq!(history["content"]["count"], 4, "{history}");
    hub.kill();
}

/// Runs `mcp-hub ARGS` with only `envs` for settings, `stdin` as input:
/// exit code, stdout, stderr.
async fn run_hub_command(
    args: &[&str],
    envs: &[(&str, &str)],
    stdin: &str,
) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let cwd = TempDir::new();
    let mut cmd = tokio::process::Command::new(hub_binary());
    cmd.args(args)
        .current_dir(cwd.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for var in hub_env_vars() {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn mcp-hub");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("finished within 30 s")
        .expect("ran");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_move_a_store_from_a_data_directory_to_redis_and_back() {
    let data = TempDir::new();
    let data_dir = data.path().to_str().expect("utf8").to_string();
    let mut hub = HubProcess::start(&["--data-dir", &data_dir], &[]).await;
    let (mut alice, _) = WsClient::register(&hub.ws_url(), "team", "alice").await;
    for (contact, message) in [("John", "hello"), ("Jane", "see you at 5"), ("John", "bye")] {
        let answer = alice.request(send_cmd(contact, message)).await;
        assert_eq!(answer["content"]["success"], true, "{answer}");
    }
    // The directory is the hub's while it runs.
    let dir_env = [("DATA_DIR", data_dir.as_str())];
    let (code, _, err) = run_hub_command(&["export"], &dir_env, "").await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("DATA_DIR"), "{err}");
    hub.sigterm();
    hub.wait_exit(Duration::from_secs(15))
        .await
        .expect("the hub stops");

    let (code, exported, err) = run_hub_command(&["export"], &dir_env, "").await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines[0]["kind"], "session");
    assert_eq!(lines[0]["session"], "team");
    let messages: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "message")
        .map(|l| l["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        messages,
        ["see you at 5", "hello", "bye"],
        "per conversation, oldest first"
    );

    // Into Redis, where a hub of a cluster serves it.
    let redis = RedisServer::start();
    let redis_env = [("REDIS_URL", redis.url())];
    let redis_env: Vec<(&str, &str)> = redis_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, err) = run_hub_command(&["import"], &redis_env, &exported).await;
    assert_eq!(code, 0, "{err}");
    let cluster_hub = TestHub::start(&["--redis-url", &redis.url()]).await;
    let (status, history) = http_get_json(&cluster_hub, "/api/v1/sessions/team/history/john").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["count"], 2, "{history}");
    // And back out of Redis: the same lines.
    let (code, again, err) = run_hub_command(&["export"], &redis_env, "").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, exported);

    // A line that is not a record stops the import, naming it.
    let (code, _, err) = run_hub_command(
        &["import"],
        &redis_env,
        "{\"kind\":\"session\",\"session\":\"x\",\"contacts\":[]}\nnot json\n",
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_with_its_append_only_file_keeps_history_epoch_and_resume() {
    let mut redis = RedisServer::start_with_aof();
    let hub = TestHub::start(&[
        "--redis-url",
        &redis.url(),
        "--heartbeat-ms",
        "200",
        "--presence-ttl-ms",
        "1000",
    ])
    .await;
    let (mut alice, bob_left) = alice_stays_bob_leaves(&hub.ws_url()).await;
    for n in 0..3 {
        let answer = alice.request(send_cmd("John", &format!("kept {n}"))).await;
        assert_eq!(answer["content"]["success"], true, "{answer}");
    }

    redis.shutdown_and_restart();
    hub.wait_ready().await;
    let (mut bob, replayed) = bob_resumes(&hub.ws_url(), &bob_left, 3).await;
    assert_eq!(replayed, ["kept 0", "kept 1", "kept 2"]);
    let history = bob.request(history_cmd("John")).await;
    assert_eq!(history["content"]["count"], 3, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_refuses_no_send_once_the_hub_says_it_is_ready() {
    let mut redis = RedisServer::start_with_aof();
    let hub = TestHub::start(&["--redis-url", &redis.url(), "--instance-id", "quiet-hub"]).await;
    // The session exists, nobody is connected: after the restart nothing
    // makes the hub use its publishing connection before the sends do.
    let (alice, _) = WsClient::register(&hub.ws_url(), "team", "alice").await;
    alice.close().await;
    wait_until_async("alice gone", Duration::from_secs(10), || {
        let url = hub.http_url("/api/v1/sessions/team");
        async move { !http_get_url(&url).await.1.contains("alice") }
    })
    .await;

    redis.shutdown_and_restart();
    // The hub noticed (its pub/sub connection is back) and says it is ready.
    wait_until(
        "the hub to subscribe again",
        Duration::from_secs(20),
        || {
            redis
                .cmd(&["PUBSUB", "CHANNELS", "*quiet-hub*"])
                .contains("inbox")
        },
    );
    hub.wait_ready().await;
    let sends = (0..5).map(|n| {
        let url = hub.http_url("/api/v1/sessions/team/commands");
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&json!({"command": {"action": "send", "contact": "john", "message": format!("after {n}")}}))
                .send()
                .await
                .expect("POST");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        })
    });
    for send in sends {
        let (status, body) = send.await.expect("join");
        assert_eq!(status, 200, "a send refused after the restart: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_events_a_dead_hub_was_processing_are_processed_once_after_its_restart() {
    use mcp_hub::whatsapp::webhooks::WebhookEvent;
    let data = TempDir::new();
    let inbound = |id: &str, text: &str| {
        serde_json::to_string(&WebhookEvent::Inbound {
            session: "default".into(),
            message_id: id.into(),
            from: "15550100009".into(),
            name: Some("Zed".into()),
            text: text.into(),
            timestamp: 1,
            content: Default::default(),
        })
        .unwrap()
    };
    {
        // The hub that died: it had taken both events; it had recorded the
        // second but not acknowledged it.
        let (journal, snapshot) = reopen(data.path()).await;
        let store = MemoryStore::restored(200, 1 << 26, journal, &snapshot);
        let lease = Duration::from_secs(60);
        store
            .push_webhook_event(&inbound("wamid.A", "one"))
            .await
            .unwrap();
        store
            .push_webhook_event(&inbound("wamid.B", "two"))
            .await
            .unwrap();
        store.claim_webhook_event(lease).await.unwrap().expect("A");
        store.claim_webhook_event(lease).await.unwrap().expect("B");
        let mut recorded = entry("Zed", 2);
        recorded.direction = MessageDirection::Incoming;
        recorded.message_id = "wamid.B".into();
        recorded.message = "two".into();
        store.record_message("default", &recorded).await.unwrap();
    }
    released(data.path()).await;
    let data_dir = data.path().to_str().expect("utf8").to_string();
    let hub = HubProcess::start(&["--data-dir", &data_dir], &[]).await;
    let history = hub.http_url("/api/v1/sessions/default/history/zed");
    let ids = async || -> Vec<String> {
        let (_, body) = http_get_url(&history).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["message_id"].as_str().map(str::to_string))
            .collect()
    };
    wait_until_async("both events processed", Duration::from_secs(10), || async {
        ids().await.contains(&"wamid.A".to_string())
    })
    .await;
    let ids = ids().await;
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ["wamid.A", "wamid.B"], "each once: {ids:?}");
}

/// A small tmpfs mounted for a test, unmounted when dropped (None, saying
/// why, where mounting is not allowed).
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let dir = TempDir::new();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with a file, to the last byte.
    fn fill(&self) {
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", self.path().join("filler").display()))
            .stderr(std::process::Stdio::null())
            .status();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.path().join("filler"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_loses_nothing_acknowledged_and_recovers() {
    let Some(disk) = SmallDisk::mount(16) else {
        return;
    };
    let data_dir = disk.path().join("data");
    let data_dir = data_dir.to_str().expect("utf8").to_string();
    let args = ["--data-dir", data_dir.as_str()];
    let mut hub = HubProcess::start(&args, &[]).await;
    let (mut alice, _) = WsClient::register(&hub.ws_url(), "team", "alice").await;
    let mut acknowledged = Vec::new();
    let send = async |client: &mut WsClient, text: String| {
        let answer = client.request(send_cmd("John", &text)).await;
        if answer["content"]["success"] == true {
            Some(text)
        } else {
            assert_eq!(answer["code"], "store_unavailable", "{answer}");
            None
        }
    };
    for n in 0..5 {
        acknowledged.extend(send(&mut alice, format!("before {n}")).await);
    }
    assert_eq!(acknowledged.len(), 5);

    // The disk fills up: sends are refused (the hub stays up), and what
    // was acknowledged meanwhile is on disk.
    disk.fill();
    let mut refused = 0;
    for n in 0..2000 {
        match send(&mut alice, format!("full {n}")).await {
            Some(text) => acknowledged.push(text),
            None => refused += 1,
        }
        if refused >= 3 {
            break;
        }
    }
    assert!(refused >= 3, "a full disk refused nothing");
    let pong = alice.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");

    // Space again: sends are acknowledged again, without a restart.
    disk.free();
    let mut back = None;
    for n in 0..50 {
        if let Some(text) = send(&mut alice, format!("after {n}")).await {
            back = Some(text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acknowledged.push(back.expect("sends are acknowledged once there is space"));

    // Every acknowledged send survives a kill -9.
    hub.kill();
    let hub = HubProcess::start(&args, &[]).await;
    let (mut alice, _) = WsClient::register(&hub.ws_url(), "team", "alice").await;
    let history = alice
        .request(ws_command(
            json!({"action": "get_history", "contact": "John", "limit": 500}),
        ))
        .await;
    let kept: Vec<&str> = history["content"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["message"].as_str())
        .collect();
    for text in &acknowledged {
        assert!(
            kept.contains(&text.as_str()),
            "acknowledged `{text}` was lost"
        );
    }
}
