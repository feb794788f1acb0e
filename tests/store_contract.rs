//! Contract tests: the same test functions run against every
//! implementation of `SessionStore` (memory, durable in a data directory,
//! Redis) and of `Broker` (local, local durable, Redis pub/sub), so the
//! standalone and cluster backends cannot drift apart. Each Redis case runs on its own private redis-server
//! (killed when the test ends, also on failure), or its own 3-master Redis
//! Cluster with `MCP_HUB_TEST_REDIS=cluster`.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use mcp_hub::broker::local::LocalBroker;
use mcp_hub::broker::redis::RedisBroker;
use mcp_hub::broker::{
    Broker, EventEnvelope, EventHeader, Inbound, InstanceMessage, LoggedEvent, ReadBudget,
};
use mcp_hub::metrics::Metrics;
use mcp_hub::protocol::{
    ClientInfo, Contact, DeliveryStatus, ErrorCode, HistoryEntry, MessageDirection, StatusError,
};
use mcp_hub::redis::RedisBackend;
use mcp_hub::store::memory::MemoryStore;
use mcp_hub::store::redis::RedisStore;
use mcp_hub::store::{
    AgentRef, IdempotencyBegin, IdempotencyKey, JoinRefused, JoinRule, NewSender, Reaped,
    SenderContact, SessionStore,
};
use support::{TempDir, TestRedis, wait_until_async};
use tokio::sync::mpsc;

const HISTORY_CAP: usize = 5;
/// The instance the store under test runs as.
const ME: &str = "inst-a";
const WAIT: Duration = Duration::from_secs(10);
/// The brokers' session log: events kept, and for how long.
const LOG_LEN: usize = 50;
const LOG_TTL: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- fixtures

/// A store under test, with whatever must live as long as it.
struct StoreFixture {
    store: Arc<dyn SessionStore>,
    /// A second instance's view of the same data (Redis only), for races.
    peer: Option<Arc<dyn SessionStore>>,
    _redis: Option<TestRedis>,
    _dir: Option<TempDir>,
}

fn memory_store() -> StoreFixture {
    StoreFixture {
        store: Arc::new(MemoryStore::new(HISTORY_CAP)),
        peer: None,
        _redis: None,
        _dir: None,
    }
}

/// The embedded durable store: memory written through to a fresh data
/// directory.
fn durable_store() -> StoreFixture {
    let dir = TempDir::new();
    let (journal, snapshot) = mcp_hub::durable::Journal::open(dir.path()).expect("data dir");
    let store = MemoryStore::restored(HISTORY_CAP, 64 * 1024 * 1024, journal, &snapshot);
    StoreFixture {
        store: Arc::new(store),
        peer: None,
        _redis: None,
        _dir: Some(dir),
    }
}

fn redis_store() -> StoreFixture {
    let redis = TestRedis::start();
    let metrics = Arc::new(Metrics::new(ME));
    let backend = RedisBackend::new(&redis.topology(), "contract", metrics).expect("backend");
    let store = |instance: &str| -> Arc<dyn SessionStore> {
        Arc::new(RedisStore::new(
            backend.clone(),
            instance.to_string(),
            HISTORY_CAP,
            10_000,
        ))
    };
    StoreFixture {
        store: store(ME),
        peer: Some(store("inst-b")),
        _redis: Some(redis),
        _dir: None,
    }
}

fn client(id: &str, instance: &str) -> ClientInfo {
    ClientInfo {
        client_id: id.to_string(),
        client_name: format!("name of {id}"),
        instance: instance.to_string(),
        capabilities: vec!["whatsapp".to_string()],
        owner: None,
        connected_at: None,
    }
}

fn agent(id: &str, instance: &str) -> AgentRef {
    AgentRef {
        client_id: id.to_string(),
        instance: instance.to_string(),
    }
}

fn contact(name: &str) -> Contact {
    Contact {
        name: name.to_string(),
        phone: Some(format!("+1-{name}")),
    }
}

fn entry(contact: &str, n: usize) -> HistoryEntry {
    HistoryEntry {
        direction: MessageDirection::Outgoing,
        contact: contact.to_string(),
        message: format!("message {n}"),
        message_id: format!("id{n}"),
        timestamp: 1_000 + n as u64,
        by: "tester".to_string(),
        executed_by: Some("simulated".to_string()),
        status: None,
        status_error: None,
        content: Default::default(),
    }
}

fn ids(members: &[ClientInfo]) -> Vec<String> {
    let mut ids: Vec<String> = members.iter().map(|c| c.client_id.clone()).collect();
    ids.sort();
    ids
}

// ------------------------------------------------------- store contract

async fn contacts_seed_set_get(f: StoreFixture) {
    let s = &f.store;
    assert!(s.contacts("fresh").await.unwrap().is_empty());
    s.seed_contacts("s", &[contact("John"), contact("Alice")])
        .await
        .unwrap();
    assert_eq!(
        s.contacts("s").await.unwrap(),
        [contact("John"), contact("Alice")]
    );
    // A second seed never overwrites what is there.
    s.seed_contacts("s", &[contact("Mallory")]).await.unwrap();
    assert_eq!(
        s.contacts("s").await.unwrap(),
        [contact("John"), contact("Alice")]
    );
    s.set_contacts("s", &[contact("Bob")]).await.unwrap();
    assert_eq!(s.contacts("s").await.unwrap(), [contact("Bob")]);
    // Sessions are separate.
    assert!(s.contacts("other").await.unwrap().is_empty());
}

async fn last_contact_follows_messages(f: StoreFixture) {
    let s = &f.store;
    assert_eq!(s.last_contact("s").await.unwrap(), None);
    s.record_message("s", &entry("John", 0)).await.unwrap();
    assert_eq!(s.last_contact("s").await.unwrap().as_deref(), Some("John"));
    s.record_message("s", &entry("Alice", 1)).await.unwrap();
    assert_eq!(s.last_contact("s").await.unwrap().as_deref(), Some("Alice"));
    assert_eq!(s.last_contact("other").await.unwrap(), None);
}

async fn history_is_capped_ordered_and_per_contact(f: StoreFixture) {
    let s = &f.store;
    for n in 0..HISTORY_CAP + 2 {
        s.record_message("s", &entry("John", n)).await.unwrap();
    }
    s.record_message("s", &entry("Alice", 99)).await.unwrap();
    let john: Vec<String> = s
        .history("s", "john", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    assert_eq!(
        john,
        ["id2", "id3", "id4", "id5", "id6"],
        "capped, oldest first"
    );
    let newest: Vec<String> = s
        .history("s", "JOHN", 2)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    assert_eq!(newest, ["id5", "id6"], "the newest `limit`, oldest first");
    let alice = s.history("s", "Alice", 10).await.unwrap();
    assert_eq!(alice, [entry("Alice", 99)], "entries round-trip intact");
    assert!(s.history("s", "nobody", 10).await.unwrap().is_empty());
}

async fn join_and_leave_exactly_once(f: StoreFixture) {
    let s = &f.store;
    let joined = async |c: &str| {
        s.join("s", &client(c, ME), JoinRule::UNBOUNDED)
            .await
            .unwrap()
            .unwrap()
            .changed
    };
    assert!(joined("c1").await, "new entry");
    assert!(joined("c2").await);
    // Joining again replaces, never duplicates, and says it was there.
    assert!(!joined("c1").await);
    assert_eq!(ids(&s.members("s").await.unwrap()), ["c1", "c2"]);
    assert!(s.members("other").await.unwrap().is_empty());

    // The session's room: a third client is refused when two is the most,
    // and nothing is written; the same id registering again replaces.
    let two = JoinRule { max_members: 2 };
    assert_eq!(
        s.join("s", &client("c3", ME), two).await.unwrap(),
        Err(JoinRefused::Full)
    );
    assert_eq!(ids(&s.members("s").await.unwrap()), ["c1", "c2"]);
    assert!(s.join("s", &client("c2", ME), two).await.unwrap().is_ok());
    assert!(
        s.join("other", &client("c1", ME), two)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(s.leave("other", "c1").await.unwrap().changed);

    // Two concurrent leaves of the same client: exactly one wins.
    let (a, b) = tokio::join!(s.leave("s", "c1"), s.leave("s", "c1"));
    assert_eq!(
        [a.unwrap(), b.unwrap()]
            .iter()
            .filter(|x| x.changed)
            .count(),
        1,
        "exactly one leave reports the departure"
    );
    assert!(!s.leave("s", "c1").await.unwrap().changed);
    assert!(!s.leave("s", "never-joined").await.unwrap().changed);
    assert_eq!(ids(&s.members("s").await.unwrap()), ["c2"]);
    let member = &s.members("s").await.unwrap()[0];
    assert_eq!(member, &client("c2", ME), "presence round-trips intact");
    // One entry read by id: present, gone, or in no session.
    assert_eq!(s.member("s", "c2").await.unwrap(), Some(client("c2", ME)));
    assert_eq!(s.member("s", "c1").await.unwrap(), None);
    assert_eq!(s.member("nowhere", "c2").await.unwrap(), None);
}

/// An id registered by one user cannot be taken by another, even when both
/// join it for the first time at once: the owner check and the write are
/// one step. Without owners (no authentication) registering again
/// replaces.
async fn an_owned_id_is_joined_by_one_owner_only(f: StoreFixture) {
    let s = &f.store;
    let owned = |id: &str, owner: &str| ClientInfo {
        owner: Some(owner.to_string()),
        ..client(id, ME)
    };
    for round in 0..20 {
        let id = format!("new-{round}");
        let (alice, bob) = (owned(&id, "alice"), owned(&id, "bob"));
        let (a, b) = tokio::join!(
            s.join("owned", &alice, JoinRule::UNBOUNDED),
            s.join("owned", &bob, JoinRule::UNBOUNDED),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            a.is_ok() != b.is_ok(),
            "round {round}: exactly one owner joins: {a:?} {b:?}"
        );
        let refused = if a.is_ok() { b } else { a };
        assert_eq!(refused, Err(JoinRefused::HeldByAnother));
        let winner = if a.is_ok() { "alice" } else { "bob" };
        let held = s.members("owned").await.unwrap();
        let entry = held.iter().find(|m| m.client_id == id).unwrap();
        assert_eq!(
            entry.owner.as_deref(),
            Some(winner),
            "the refused join wrote nothing"
        );
    }
    // The owner itself registers again; another user cannot, even with room.
    let me = owned("me", "alice");
    let solo = || s.join("solo", &me, JoinRule::UNBOUNDED);
    assert!(solo().await.unwrap().is_ok_and(|c| c.changed));
    assert!(solo().await.unwrap().is_ok_and(|c| !c.changed));
    let bob = s
        .join("solo", &owned("me", "bob"), JoinRule::UNBOUNDED)
        .await;
    assert_eq!(bob.unwrap(), Err(JoinRefused::HeldByAnother));
    // Without an owner, registering again replaces.
    assert!(
        s.join("open", &client("c1", ME), JoinRule::UNBOUNDED)
            .await
            .unwrap()
            .is_ok()
    );
    let again = s
        .join("open", &client("c1", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap();
    assert!(again.is_ok_and(|c| !c.changed));
}

/// Every change of presence has a larger version than the one before, and
/// the member list is read with the version it is as of: a change at or
/// below a list's version is in the list, one above it is not.
async fn presence_versions_order_changes_and_lists(f: StoreFixture) {
    let s = &f.store;
    let j1 = s
        .join("v", &client("c1", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    let listed = s.presence("v", usize::MAX).await.unwrap();
    assert_eq!(ids(&listed.members), ["c1"]);
    assert_eq!(
        listed.version, j1.version,
        "the list is as of the last change"
    );
    let j2 = s
        .join("v", &client("c2", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    let again = s
        .join("v", &client("c2", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    let left = s.leave("v", "c1").await.unwrap();
    assert!(j1.version < j2.version && j2.version < again.version);
    assert!(again.version < left.version && left.changed);
    let now = s.presence("v", usize::MAX).await.unwrap();
    assert_eq!(
        (ids(&now.members), now.version),
        (vec!["c2".into()], left.version)
    );
    // A leave that changes nothing bumps nothing.
    assert!(!s.leave("v", "c1").await.unwrap().changed);
    assert_eq!(
        s.presence("v", usize::MAX).await.unwrap().version,
        left.version
    );
    // Versions are per session.
    assert!(s.members("other-v").await.unwrap().is_empty());
}

/// A presence read lists every member, in join order, up to its limit;
/// past it, that many of them (standalone the first to join), with the
/// count and version of the whole: what a registration into a session of
/// any size reads.
async fn presence_reads_are_bounded_by_their_limit(f: StoreFixture) {
    let s = &f.store;
    // 300 members: past the size where Redis keeps a small hash compactly.
    let joined: Vec<String> = (0..300).map(|i| format!("m{i:03}")).collect();
    let mut last = 0;
    for (at, id) in joined.iter().enumerate() {
        let mut member = client(id, ME);
        member.connected_at = Some(1_000 + at as u64);
        let change = s
            .join("big", &member, JoinRule::UNBOUNDED)
            .await
            .unwrap()
            .unwrap();
        last = change.version;
    }
    let whole = s.presence("big", usize::MAX).await.unwrap();
    let in_order: Vec<&str> = whole.members.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(in_order, joined, "every member, in join order");
    assert_eq!((whole.total, whole.version), (300, last));

    let head = s.presence("big", 100).await.unwrap();
    assert_eq!(
        (head.members.len(), head.total, head.version),
        (100, 300, last)
    );
    let listed = ids(&head.members);
    assert!(listed.iter().all(|id| joined.contains(id)), "{listed:?}");
    assert_eq!(
        listed
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        100,
        "no member listed twice"
    );
    let counted = s.presence("big", 0).await.unwrap();
    assert_eq!(
        (counted.members.len(), counted.total),
        (0, 300),
        "a count alone"
    );
    let small = s.presence("v-none", 100).await.unwrap();
    assert_eq!((small.members.len(), small.total, small.version), (0, 0, 0));
}

async fn agent_claim_release(f: StoreFixture) {
    let s = &f.store;
    assert_eq!(s.agent("s").await.unwrap(), None);
    assert_eq!(s.claim_agent("s", &agent("a1", ME)).await.unwrap(), None);
    // The newest registration wins and reports whom it replaced.
    assert_eq!(
        s.claim_agent("s", &agent("a2", ME)).await.unwrap(),
        Some(agent("a1", ME))
    );
    assert_eq!(s.agent("s").await.unwrap(), Some(agent("a2", ME)));
    assert!(
        !s.claim_agent_if_vacant("s", &agent("a3", ME))
            .await
            .unwrap()
    );
    assert_eq!(s.agent("s").await.unwrap(), Some(agent("a2", ME)));
    // Only the current agent can be released: not the one it replaced, nor
    // its own id as another instance holds it (an old connection there
    // noticed dead after the client registered again here).
    assert!(!s.release_agent("s", &agent("a1", ME)).await.unwrap());
    assert!(
        !s.release_agent("s", &agent("a2", "elsewhere"))
            .await
            .unwrap()
    );
    assert_eq!(s.agent("s").await.unwrap(), Some(agent("a2", ME)));
    assert!(s.release_agent("s", &agent("a2", ME)).await.unwrap());
    assert!(!s.release_agent("s", &agent("a2", ME)).await.unwrap());
    assert_eq!(s.agent("s").await.unwrap(), None);
    assert!(
        s.claim_agent_if_vacant("s", &agent("a3", ME))
            .await
            .unwrap()
    );
    assert_eq!(s.agent("s").await.unwrap(), Some(agent("a3", ME)));
    assert_eq!(s.agent("other").await.unwrap(), None);
}

/// Keys in the fixture's Redis (None for the memory store).
fn redis_keys(f: &StoreFixture) -> Option<String> {
    f._redis.as_ref().map(TestRedis::all_keys)
}

async fn reads_never_create_a_session(f: StoreFixture) {
    let s = &f.store;
    assert!(!s.exists("ghost").await.unwrap());
    assert!(s.contacts("ghost").await.unwrap().is_empty());
    assert_eq!(s.last_contact("ghost").await.unwrap(), None);
    assert!(s.history("ghost", "John", 10).await.unwrap().is_empty());
    assert!(s.members("ghost").await.unwrap().is_empty());
    assert_eq!(s.agent("ghost").await.unwrap(), None);
    // Removals of what is not there change nothing either.
    assert!(!s.leave("ghost", "nobody").await.unwrap().changed);
    assert!(
        !s.release_agent("ghost", &agent("nobody", ME))
            .await
            .unwrap()
    );
    assert!(!s.exists("ghost").await.unwrap());
    if let Some(keys) = redis_keys(&f) {
        assert_eq!(keys, "", "reads wrote keys");
    }
}

async fn every_write_makes_a_session_exist(f: StoreFixture) {
    let s = &f.store;
    s.seed_contacts("seeded", &[]).await.unwrap();
    s.set_contacts("set", &[contact("John")]).await.unwrap();
    s.record_message("talked", &entry("John", 1)).await.unwrap();
    s.join("joined", &client("c1", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    s.claim_agent("claimed", &agent("a1", ME)).await.unwrap();
    for session in ["seeded", "set", "talked", "joined", "claimed"] {
        assert!(s.exists(session).await.unwrap(), "{session}");
    }
    assert!(!s.exists("other").await.unwrap());
    // Sessions are names, not prefixes or patterns.
    assert!(!s.exists("join").await.unwrap());
    assert!(!s.exists("*").await.unwrap());
}

/// Every session that exists is listed exactly once, in name order, page
/// by page, with its presence, agent and activity.
async fn sessions_are_listed_in_pages(f: StoreFixture) {
    let s = &f.store;
    let empty = s.list_sessions(None, 10).await.unwrap();
    assert!(empty.sessions.is_empty() && empty.next_cursor.is_none());
    s.seed_contacts("b-seeded", &[]).await.unwrap();
    s.set_contacts("c-set", &[contact("John")]).await.unwrap();
    s.record_message("d-talked", &entry("John", 1))
        .await
        .unwrap();
    s.record_message("d-talked", &entry("John", 2))
        .await
        .unwrap();
    s.join("a-joined", &client("c1", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    s.join("a-joined", &client("c2", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    s.claim_agent("a-joined", &agent("c1", ME)).await.unwrap();
    s.claim_agent("e-claimed", &agent("a1", ME)).await.unwrap();
    // A read creates nothing, so lists nothing.
    s.contacts("ghost").await.unwrap();

    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s.list_sessions(cursor.as_deref(), 2).await.unwrap();
        assert!(page.sessions.len() <= 2);
        listed.extend(page.sessions);
        pages += 1;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let names: Vec<&str> = listed.iter().map(|l| l.session.as_str()).collect();
    assert_eq!(
        names,
        ["a-joined", "b-seeded", "c-set", "d-talked", "e-claimed"]
    );
    let joined = &listed[0];
    assert_eq!(joined.clients, 2);
    assert_eq!(joined.agent, Some(agent("c1", ME)));
    assert!(joined.last_activity.is_some());
    let talked = &listed[3];
    assert_eq!((talked.messages_out, talked.messages_in), (2, 0));
    assert_eq!(talked.clients, 0);
    assert_eq!(talked.agent, None);
}

async fn adversarial_names_stay_apart(f: StoreFixture) {
    let s = &f.store;
    // Session `a:history:b` with contact `c` against session `a` with
    // contact `b:history:c`: the same key if parts were not escaped.
    s.record_message("a:history:b", &entry("c", 1))
        .await
        .unwrap();
    s.record_message("a", &entry("b:history:c", 2))
        .await
        .unwrap();
    let h1 = s.history("a:history:b", "c", 10).await.unwrap();
    let h2 = s.history("a", "b:history:c", 10).await.unwrap();
    assert_eq!(
        h1.iter().map(|e| e.message_id.as_str()).collect::<Vec<_>>(),
        ["id1"]
    );
    assert_eq!(
        h2.iter().map(|e| e.message_id.as_str()).collect::<Vec<_>>(),
        ["id2"]
    );
    // A session named after another session's key suffix.
    s.set_contacts("x:contacts", &[contact("Mallory")])
        .await
        .unwrap();
    s.join("x:presence", &client("intruder", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    assert!(!s.exists("x").await.unwrap());
    assert!(s.contacts("x").await.unwrap().is_empty());
    assert!(s.members("x").await.unwrap().is_empty());
    // The escape character itself, spaces, braces and globs.
    for (one, other) in [
        ("a%3Ab", "a:b"),
        ("a b", "a%20b"),
        ("{t}", "%7Bt%7D"),
        ("*", "%2A"),
    ] {
        s.set_contacts(one, &[contact("One")]).await.unwrap();
        assert!(!s.exists(other).await.unwrap(), "{one} reached {other}");
        s.set_contacts(other, &[contact("Other")]).await.unwrap();
        assert_eq!(s.contacts(one).await.unwrap(), [contact("One")]);
        assert_eq!(s.contacts(other).await.unwrap(), [contact("Other")]);
    }
    if let Some(keys) = redis_keys(&f) {
        // Readable, with `:` only between parts.
        assert!(
            keys.lines()
                .any(|k| k == "contract:{s:a%3Ahistory%3Ab}:history:c"),
            "{keys}"
        );
        assert!(
            keys.lines()
                .any(|k| k == "contract:{s:a}:history:b%3Ahistory%3Ac"),
            "{keys}"
        );
    }
}

async fn statuses_only_move_forward(f: StoreFixture) {
    let s = &f.store;
    let ttl = Duration::from_secs(60);
    s.record_message("s", &entry("John", 1)).await.unwrap();
    s.record_message("s", &entry("John", 2)).await.unwrap();
    let status_of = async |n: usize| {
        let h = s.history("s", "john", 10).await.unwrap();
        h[n].status
    };
    assert_eq!(status_of(0).await, None);
    assert!(
        s.set_status("s", "id1", DeliveryStatus::Sent, None, ttl)
            .await
            .unwrap()
    );
    // `read` may come before `delivered`; `delivered` after it changes nothing.
    assert!(
        s.set_status("s", "id1", DeliveryStatus::Read, None, ttl)
            .await
            .unwrap()
    );
    assert!(
        !s.set_status("s", "id1", DeliveryStatus::Delivered, None, ttl)
            .await
            .unwrap()
    );
    assert!(
        !s.set_status("s", "id1", DeliveryStatus::Read, None, ttl)
            .await
            .unwrap()
    );
    assert_eq!(status_of(0).await, Some(DeliveryStatus::Read));
    assert_eq!(status_of(1).await, None);
    // `failed` is final and carries its reason.
    let why = StatusError {
        code: "outside_conversation_window".into(),
        message: "use a template".into(),
        upstream_code: Some(131047),
    };
    assert!(
        s.set_status("s", "id2", DeliveryStatus::Failed, Some(&why), ttl)
            .await
            .unwrap()
    );
    assert!(
        !s.set_status("s", "id2", DeliveryStatus::Read, None, ttl)
            .await
            .unwrap()
    );
    let h = s.history("s", "john", 10).await.unwrap();
    assert_eq!(h[1].status, Some(DeliveryStatus::Failed));
    assert_eq!(h[1].status_error.as_ref(), Some(&why));
}

/// A fingerprint as the hub makes them (64 hex characters).
fn fp(request: &str) -> String {
    format!("{:0>64}", request)
}

/// Key `key` of `caller` for the request `request`.
fn idem<'a>(caller: &'a str, key: &'a str, fingerprint: &'a str) -> IdempotencyKey<'a> {
    IdempotencyKey {
        caller,
        key,
        fingerprint,
    }
}

async fn idempotency_keys_run_once(f: StoreFixture) {
    let s = &f.store;
    let other = f.peer.clone().unwrap_or_else(|| s.clone());
    let ttl = Duration::from_secs(60);
    let send = fp("send");
    let (k, k2) = (idem("alice", "k", &send), idem("alice", "k2", &send));
    assert_eq!(
        s.idempotency_begin(&k, "t1", ttl).await.unwrap(),
        IdempotencyBegin::Acquired
    );
    assert_eq!(
        other.idempotency_begin(&k, "t2", ttl).await.unwrap(),
        IdempotencyBegin::Busy
    );
    s.idempotency_finish(&k, "t1", "{\"ok\":1}", ttl, 100)
        .await
        .unwrap();
    assert_eq!(
        other.idempotency_begin(&k, "t2", ttl).await.unwrap(),
        IdempotencyBegin::Done("{\"ok\":1}".into())
    );
    // Abandoned: free again, but only by its holder.
    assert_eq!(
        s.idempotency_begin(&k2, "t1", ttl).await.unwrap(),
        IdempotencyBegin::Acquired
    );
    other.idempotency_abandon(&k2, "t2").await.unwrap();
    assert_eq!(
        other.idempotency_begin(&k2, "t2", ttl).await.unwrap(),
        IdempotencyBegin::Busy
    );
    s.idempotency_abandon(&k2, "t1").await.unwrap();
    assert_eq!(
        other.idempotency_begin(&k2, "t2", ttl).await.unwrap(),
        IdempotencyBegin::Acquired
    );
}

/// A key belongs to its caller and is bound to its first request.
async fn idempotency_keys_are_scoped_and_bound(f: StoreFixture) {
    let s = &f.store;
    let other = f.peer.clone().unwrap_or_else(|| s.clone());
    let ttl = Duration::from_secs(60);
    let (send, other_send) = (fp("send"), fp("other send"));
    let alice = idem("alice", "k", &send);
    assert_eq!(
        s.idempotency_begin(&alice, "t1", ttl).await.unwrap(),
        IdempotencyBegin::Acquired
    );
    // Held: another request with the key is refused, not made to wait.
    assert_eq!(
        other
            .idempotency_begin(&idem("alice", "k", &other_send), "t2", ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Reused
    );
    // Another caller's same key is another key.
    let bob = idem("bob", "k", &other_send);
    assert_eq!(
        other.idempotency_begin(&bob, "t3", ttl).await.unwrap(),
        IdempotencyBegin::Acquired
    );
    s.idempotency_finish(&alice, "t1", "alice's", ttl, 100)
        .await
        .unwrap();
    other
        .idempotency_finish(&bob, "t3", "bob's", ttl, 100)
        .await
        .unwrap();
    // Done: the same request gets its own caller's result, another is refused.
    assert_eq!(
        other.idempotency_begin(&alice, "t4", ttl).await.unwrap(),
        IdempotencyBegin::Done("alice's".into())
    );
    assert_eq!(
        s.idempotency_begin(&bob, "t4", ttl).await.unwrap(),
        IdempotencyBegin::Done("bob's".into())
    );
    assert_eq!(
        s.idempotency_begin(&idem("alice", "k", &other_send), "t4", ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Reused
    );
}

/// A caller keeps at most `per_caller` results, its oldest forgotten
/// first; other callers keep theirs.
async fn idempotency_records_are_capped_per_caller(f: StoreFixture) {
    let s = &f.store;
    let ttl = Duration::from_secs(60);
    let send = fp("send");
    let bob = idem("bob", "b", &send);
    s.idempotency_begin(&bob, "t", ttl).await.unwrap();
    assert_eq!(
        s.idempotency_finish(&bob, "t", "bob's", ttl, 3)
            .await
            .unwrap(),
        0
    );
    let keys: Vec<String> = (0..5).map(|n| format!("k{n}")).collect();
    let mut evicted = Vec::new();
    for k in &keys {
        let key = idem("alice", k, &send);
        assert_eq!(
            s.idempotency_begin(&key, "t", ttl).await.unwrap(),
            IdempotencyBegin::Acquired
        );
        evicted.push(s.idempotency_finish(&key, "t", k, ttl, 3).await.unwrap());
    }
    assert_eq!(evicted, [0, 0, 0, 1, 1]);
    for (n, k) in keys.iter().enumerate() {
        let begun = s
            .idempotency_begin(&idem("alice", k, &send), "again", ttl)
            .await
            .unwrap();
        if n < 2 {
            assert_eq!(begun, IdempotencyBegin::Acquired, "{k} was forgotten");
        } else {
            assert_eq!(begun, IdempotencyBegin::Done(k.clone()), "{k} is kept");
        }
    }
    assert_eq!(
        s.idempotency_begin(&bob, "t", ttl).await.unwrap(),
        IdempotencyBegin::Done("bob's".into())
    );
}

/// A result lives `ttl`; then the key is free again.
async fn idempotency_records_expire(f: StoreFixture) {
    let s = &f.store;
    let send = fp("send");
    let key = idem("alice", "k", &send);
    let long = Duration::from_secs(60);
    s.idempotency_begin(&key, "t", long).await.unwrap();
    s.idempotency_finish(&key, "t", "r", Duration::from_millis(100), 10)
        .await
        .unwrap();
    assert_eq!(
        s.idempotency_begin(&key, "t2", long).await.unwrap(),
        IdempotencyBegin::Done("r".into())
    );
    wait_until_async("the result to expire", WAIT, || async {
        s.idempotency_begin(&key, "t2", long).await.unwrap() == IdempotencyBegin::Acquired
    })
    .await;
}

fn sender<'a>(digits: &'a str, name: &'a str, if_taken: &'a str, phone: &'a str) -> NewSender<'a> {
    NewSender {
        digits,
        name,
        name_if_taken: if_taken,
        phone,
    }
}

/// Webhook senders join the contacts atomically and never past the cap,
/// however many instances add them at once.
async fn sender_contacts_are_capped_atomically(f: StoreFixture) {
    let s = &f.store;
    let other = f.peer.clone().unwrap_or_else(|| s.clone());
    let with_phone = |name: &str, phone: &str| Contact {
        name: name.to_string(),
        phone: Some(phone.to_string()),
    };
    s.seed_contacts(
        "s",
        &[
            with_phone("John", "+1 555 0100"),
            with_phone("Jane", "+15550102"),
        ],
    )
    .await
    .unwrap();
    // A known number is its contact (phones compared by digits).
    assert_eq!(
        s.add_sender_contact("s", &sender("15550100", "Johnny", "x", "+15550100"), 4)
            .await
            .unwrap(),
        SenderContact::Known("John".into())
    );
    // A taken name gets the other one.
    match s
        .add_sender_contact("s", &sender("100", "JANE", "JANE (+100)", "+100"), 4)
        .await
        .unwrap()
    {
        SenderContact::Added { name, contacts } => {
            assert_eq!(name, "JANE (+100)");
            assert_eq!(contacts.len(), 3);
            assert_eq!(contacts[2].phone.as_deref(), Some("+100"));
        }
        other => panic!("{other:?}"),
    }
    // Twenty new senders at once on two instances: one more fits.
    let numbers: Vec<(String, String, String)> = (0..20)
        .map(|n| {
            (
                format!("2{n:02}"),
                format!("Sender {n}"),
                format!("+2{n:02}"),
            )
        })
        .collect();
    let adds = numbers
        .iter()
        .enumerate()
        .map(|(n, (digits, name, phone))| {
            let store = if n % 2 == 0 { s.clone() } else { other.clone() };
            async move {
                store
                    .add_sender_contact("s", &sender(digits, name, name, phone), 4)
                    .await
                    .unwrap()
            }
        });
    let outcomes = futures_util::future::join_all(adds).await;
    let added = outcomes
        .iter()
        .filter(|o| matches!(o, SenderContact::Added { .. }))
        .count();
    let full = outcomes
        .iter()
        .filter(|o| **o == SenderContact::Full)
        .count();
    assert_eq!((added, full), (1, 19), "{outcomes:?}");
    assert_eq!(s.contacts("s").await.unwrap().len(), 4);
    // Full, but a known sender is still found.
    assert_eq!(
        other
            .add_sender_contact("s", &sender("100", "Jane", "x", "+100"), 4)
            .await
            .unwrap(),
        SenderContact::Known("JANE (+100)".into())
    );
}

/// A session without clients and without activity for the idle time is
/// removed with everything of it; one with a client is kept.
async fn idle_sessions_expire(f: StoreFixture) {
    let s = &f.store;
    let idle = Duration::from_millis(300);
    s.seed_contacts("idle", &[contact("John")]).await.unwrap();
    s.record_message("idle", &entry("John", 1)).await.unwrap();
    s.record_message("idle", &entry("Jane", 2)).await.unwrap();
    s.claim_agent("idle", &agent("a1", ME)).await.unwrap();
    s.join("busy", &client("c1", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.expire_idle(idle, 100).await.unwrap().is_empty(),
        "not yet"
    );
    wait_until_async("the idle session to be removed", WAIT, || async {
        s.expire_idle(idle, 100).await.unwrap() == ["idle"]
    })
    .await;
    assert!(!s.exists("idle").await.unwrap());
    assert!(s.history("idle", "John", 10).await.unwrap().is_empty());
    assert!(s.contacts("idle").await.unwrap().is_empty());
    let listed = s.list_sessions(None, 10).await.unwrap().sessions;
    let names: Vec<&str> = listed.iter().map(|l| l.session.as_str()).collect();
    assert_eq!(names, ["busy"]);
    if let Some(keys) = redis_keys(&f) {
        assert!(!keys.contains("{s:idle}"), "keys left behind:\n{keys}");
    }
    // The client's session stays while it is there, and goes once it left
    // and stayed idle.
    assert!(s.exists("busy").await.unwrap());
    s.leave("busy", "c1").await.unwrap();
    wait_until_async("the left session to be removed", WAIT, || async {
        s.expire_idle(idle, 100).await.unwrap() == ["busy"]
    })
    .await;
    assert!(s.list_sessions(None, 10).await.unwrap().sessions.is_empty());
    // A removed session written again exists again, and is listed.
    s.record_message("idle", &entry("John", 3)).await.unwrap();
    let listed = s.list_sessions(None, 10).await.unwrap().sessions;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session, "idle");
}

async fn webhook_items_are_seen_once_and_queued_in_order(f: StoreFixture) {
    let s = &f.store;
    let other = f.peer.clone().unwrap_or_else(|| s.clone());
    let ttl = Duration::from_secs(60);
    assert!(s.mark_seen("in:wamid.1", ttl).await.unwrap());
    assert!(!other.mark_seen("in:wamid.1", ttl).await.unwrap());
    other.forget_seen("in:wamid.1").await.unwrap();
    assert!(other.mark_seen("in:wamid.1", ttl).await.unwrap());
    let lease = Duration::from_secs(60);
    assert_eq!(s.claim_webhook_event(lease).await.unwrap(), None);
    s.push_webhook_event("a").await.unwrap();
    s.push_webhook_event("b").await.unwrap();
    s.push_webhook_event("c").await.unwrap();
    // Any instance takes them, oldest first, each once while claimed.
    let (a, event) = other.claim_webhook_event(lease).await.unwrap().unwrap();
    assert_eq!(event, "a");
    let short = Duration::from_millis(50);
    let (_, event) = s.claim_webhook_event(short).await.unwrap().unwrap();
    assert_eq!(event, "b");
    other.ack_webhook_event(&a).await.unwrap();
    // `b`'s instance died before acknowledging it: once its lease lapsed,
    // it is taken again, before `c`.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let (b, event) = other.claim_webhook_event(lease).await.unwrap().unwrap();
    assert_eq!(event, "b");
    other.ack_webhook_event(&b).await.unwrap();
    let (c, event) = s.claim_webhook_event(lease).await.unwrap().unwrap();
    assert_eq!(event, "c");
    assert_eq!(other.claim_webhook_event(lease).await.unwrap(), None);
    s.ack_webhook_event(&c).await.unwrap();
    assert_eq!(s.claim_webhook_event(short).await.unwrap(), None);
}

macro_rules! store_contract {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::memory_store()).await;
                }
            )*
        }
        mod durable_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::durable_store()).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::redis_store()).await;
                }
            )*
        }
    };
}

store_contract!(
    contacts_seed_set_get,
    last_contact_follows_messages,
    history_is_capped_ordered_and_per_contact,
    join_and_leave_exactly_once,
    an_owned_id_is_joined_by_one_owner_only,
    presence_versions_order_changes_and_lists,
    presence_reads_are_bounded_by_their_limit,
    agent_claim_release,
    reads_never_create_a_session,
    every_write_makes_a_session_exist,
    sessions_are_listed_in_pages,
    adversarial_names_stay_apart,
    statuses_only_move_forward,
    idempotency_keys_run_once,
    idempotency_keys_are_scoped_and_bound,
    idempotency_records_are_capped_per_caller,
    idempotency_records_expire,
    sender_contacts_are_capped_atomically,
    idle_sessions_expire,
    webhook_items_are_seen_once_and_queued_in_order,
);

/// The memory store also caps everyone's idempotency records together, in
/// bytes, forgetting the oldest first.
#[tokio::test]
async fn memory_idempotency_records_are_capped_in_bytes() {
    let store = MemoryStore::with_idempotency_budget(HISTORY_CAP, 64 * 1024);
    let ttl = Duration::from_secs(60);
    let send = fp("send");
    let result = "x".repeat(4000);
    let mut evicted = 0;
    // 32 callers with one 4 KB result each: about half fit.
    for n in 0..32 {
        let caller = format!("caller{n}");
        let key = idem(&caller, "k", &send);
        store.idempotency_begin(&key, "t", ttl).await.unwrap();
        evicted += store
            .idempotency_finish(&key, "t", &result, ttl, 100)
            .await
            .unwrap();
    }
    assert!((14..=18).contains(&evicted), "{evicted} evicted");
    let first = idem("caller0", "k", &send);
    assert_eq!(
        store.idempotency_begin(&first, "t", ttl).await.unwrap(),
        IdempotencyBegin::Acquired,
        "the oldest went first"
    );
    let last = idem("caller31", "k", &send);
    assert_eq!(
        store.idempotency_begin(&last, "t", ttl).await.unwrap(),
        IdempotencyBegin::Done(result)
    );
}

// ------------------------------------------------------------- reaping

#[tokio::test]
async fn memory_store_has_nothing_to_reap() {
    let f = memory_store();
    f.store
        .join("s", &client("c1", "dead"), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    f.store
        .claim_agent("s", &agent("c1", "dead"))
        .await
        .unwrap();
    assert_eq!(f.store.reap_instance("dead").await.unwrap(), []);
    assert_eq!(ids(&f.store.members("s").await.unwrap()), ["c1"]);
}

#[tokio::test]
async fn redis_store_reaps_a_dead_instance_exactly_once() {
    let f = redis_store();
    let (s, peer) = (&f.store, f.peer.as_ref().expect("redis has a peer"));
    // "dead" had two clients in two sessions and was s1's agent; a client
    // of this instance shares s1 and survives.
    s.join("s1", &client("d1", "dead"), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    s.join("s2", &client("d2", "dead"), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    s.join("s1", &client("live", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    s.claim_agent("s1", &agent("d1", "dead")).await.unwrap();
    s.claim_agent("s2", &agent("other", ME)).await.unwrap();

    // Two instances reap at once: every item is taken exactly once.
    let (a, b) = tokio::join!(s.reap_instance("dead"), peer.reap_instance("dead"));
    let mut all: Vec<Reaped> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    // Each take is a change of its session's presence, above the version
    // the session's list had before (compared below without it).
    for r in &mut all {
        if let Reaped::ClientLeft {
            session, version, ..
        } = r
        {
            let listed = s.presence(session, usize::MAX).await.unwrap().version;
            assert!(*version > 0 && *version <= listed, "{r:?}");
            *version = 0;
        }
    }
    all.sort_by_key(|r| format!("{r:?}"));
    let mut expected = vec![
        Reaped::ClientLeft {
            session: "s1".into(),
            client: client("d1", "dead"),
            version: 0,
        },
        Reaped::ClientLeft {
            session: "s2".into(),
            client: client("d2", "dead"),
            version: 0,
        },
        Reaped::AgentReleased {
            session: "s1".into(),
        },
    ];
    expected.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(all, expected);

    assert_eq!(s.reap_instance("dead").await.unwrap(), [], "nothing left");
    assert_eq!(ids(&s.members("s1").await.unwrap()), ["live"]);
    assert!(s.members("s2").await.unwrap().is_empty());
    assert_eq!(s.agent("s1").await.unwrap(), None);
    // Another instance's agent is never released by reaping "dead".
    assert_eq!(s.agent("s2").await.unwrap(), Some(agent("other", ME)));
}

/// A presence version Redis lost (it restarted empty) starts again from
/// the server's clock, above every version given out before: a client's
/// member list never looks newer than the changes that follow.
#[tokio::test]
async fn a_lost_presence_version_starts_again_above_the_old_ones() {
    let f = redis_store();
    let s = &f.store;
    let mut last = 0;
    for c in ["c1", "c2", "c3"] {
        last = s
            .join("lost", &client(c, ME), JoinRule::UNBOUNDED)
            .await
            .unwrap()
            .unwrap()
            .version;
    }
    f._redis.as_ref().expect("redis").flushall();
    assert_eq!(
        s.presence("lost", usize::MAX).await.unwrap().version,
        0,
        "nothing left"
    );
    let again = s
        .join("lost", &client("c1", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    assert!(again.changed, "c1 was lost with the rest");
    assert!(again.version > last, "{} after {last}", again.version);
}

/// A presence version a failover rolled back (the promoted replica had not
/// received the last changes) still moves above every version given out
/// before it, so a client whose list is as of a lost version is still told
/// of the next change.
#[tokio::test]
async fn a_rolled_back_presence_version_still_moves_above_the_old_ones() {
    let f = redis_store();
    let s = &f.store;
    let first = s
        .join("rolled", &client("c1", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap()
        .version;
    let mut last = first;
    for c in ["c2", "c3"] {
        last = s
            .join("rolled", &client(c, ME), JoinRule::UNBOUNDED)
            .await
            .unwrap()
            .unwrap()
            .version;
    }
    // The replica had only the first change when it was promoted.
    let stats = mcp_hub::redis::Keys::new("contract").session_stats("rolled");
    let redis = f._redis.as_ref().expect("redis");
    redis.cmd_any(&["HSET", &stats, "presence_version", &first.to_string()]);
    assert_eq!(
        s.presence("rolled", usize::MAX).await.unwrap().version,
        first
    );
    let next = s
        .join("rolled", &client("c4", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    assert!(next.version > last, "{} after {last}", next.version);
}

#[tokio::test]
async fn redis_reaping_leaves_a_client_that_moved_to_a_live_instance() {
    let f = redis_store();
    let s = &f.store;
    s.join("s", &client("c1", "dead"), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    // The same client id registered again on this instance.
    s.join("s", &client("c1", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    s.claim_agent("s", &agent("c1", ME)).await.unwrap();
    assert_eq!(s.reap_instance("dead").await.unwrap(), []);
    assert_eq!(s.members("s").await.unwrap(), [client("c1", ME)]);
    assert_eq!(s.agent("s").await.unwrap(), Some(agent("c1", ME)));
}

// ------------------------------------------------------ broker contract

/// One instance of a bus under test and what it received.
struct Node {
    instance: String,
    broker: Arc<dyn Broker>,
    inbound: mpsc::Receiver<Inbound>,
}

struct BrokerFixture {
    nodes: Vec<Node>,
    _redis: Option<TestRedis>,
    _dir: Option<TempDir>,
}

fn local_bus() -> BrokerFixture {
    let (tx, rx) = mpsc::channel(1024);
    BrokerFixture {
        nodes: vec![Node {
            instance: "solo".into(),
            broker: Arc::new(LocalBroker::new("solo".into(), tx, LOG_LEN, LOG_TTL)),
            inbound: rx,
        }],
        _redis: None,
        _dir: None,
    }
}

/// The standalone log written through to a fresh data directory.
fn durable_bus() -> BrokerFixture {
    let dir = TempDir::new();
    let (journal, snapshot) = mcp_hub::durable::Journal::open(dir.path()).expect("data dir");
    let (tx, rx) = mpsc::channel(1024);
    let broker = LocalBroker::restored("solo".into(), tx, LOG_LEN, LOG_TTL, journal, &snapshot);
    BrokerFixture {
        nodes: vec![Node {
            instance: "solo".into(),
            broker: Arc::new(broker),
            inbound: rx,
        }],
        _redis: None,
        _dir: Some(dir),
    }
}

async fn redis_bus() -> BrokerFixture {
    let redis = TestRedis::start();
    let mut nodes = Vec::new();
    for instance in ["node-a", "node-b"] {
        let metrics = Arc::new(Metrics::new(instance));
        let backend = RedisBackend::new(&redis.topology(), "contract", metrics).expect("backend");
        let (tx, rx) = mpsc::channel(1024);
        nodes.push(Node {
            instance: instance.into(),
            broker: Arc::new(RedisBroker::start(
                backend,
                instance.into(),
                tx,
                LOG_LEN,
                LOG_TTL,
            )),
            inbound: rx,
        });
    }
    for node in &mut nodes {
        let broker = node.broker.clone();
        wait_until_async("the broker to subscribe", WAIT, || {
            let broker = broker.clone();
            async move { broker.is_healthy() }
        })
        .await;
        // Session channels: a node hears session `s` once it said it has
        // local interest and the subscription is confirmed.
        node.broker.interest("s", true);
        wait_subscribed(node, "s").await;
    }
    BrokerFixture {
        nodes,
        _redis: Some(redis),
        _dir: None,
    }
}

/// A read budget no test log reaches.
const WHOLE: ReadBudget = ReadBudget {
    max_bytes: 1 << 30,
    max_events: 1 << 20,
};

fn envelope(origin: &str, n: usize) -> EventEnvelope {
    EventEnvelope {
        header: EventHeader {
            session: "s".into(),
            origin: origin.into(),
            kind: "message_event".into(),
            produced_at: n as u64,
            except: None,
            presence: None,
            traceparent: None,
        },
        frame: format!("{{\"n\":{n}}}"),
    }
}

fn call(n: usize) -> InstanceMessage {
    InstanceMessage::AgentCall {
        call_id: format!("call-{n}"),
        session: "s".into(),
        agent_client_id: "agent".into(),
        command: serde_json::json!({"n": n}),
        reply_to: "whoever".into(),
    }
}

/// The next message a node receives, failing the test after [`WAIT`].
async fn next(node: &mut Node) -> Inbound {
    tokio::time::timeout(WAIT, node.inbound.recv())
        .await
        .unwrap_or_else(|_| panic!("{} received nothing", node.instance))
        .expect("inbound channel open")
}

/// Waits for the confirmation of the node's subscription to `session`.
async fn wait_subscribed(node: &mut Node, session: &str) {
    loop {
        match next(node).await {
            Inbound::Subscribed(s) if s == session => return,
            _ => continue,
        }
    }
}

/// The next event from `origin` (every instance, the publishing one
/// included, receives every event from the log).
async fn next_event_from(node: &mut Node, origin: &str) -> LoggedEvent {
    loop {
        match next(node).await {
            Inbound::Event(e) if e.header.origin == origin => return e,
            Inbound::Event(_)
            | Inbound::Resubscribed(_)
            | Inbound::Subscribed(_)
            | Inbound::Monitor(_)
            | Inbound::Barrier(_) => continue,
            Inbound::Instance(m) => panic!("unexpected instance message {m:?}"),
        }
    }
}

async fn events_reach_every_instance_once_in_offset_order(mut f: BrokerFixture) {
    const N: usize = 200;
    let mut next_offset = 1;
    for p in 0..f.nodes.len() {
        let origin = f.nodes[p].instance.clone();
        for n in 0..N {
            f.nodes[p]
                .broker
                .publish_event(envelope(&origin, n))
                .unwrap();
        }
        // An end marker: whatever arrives before it is all there is.
        f.nodes[p]
            .broker
            .publish_event(envelope(&origin, usize::MAX))
            .unwrap();
        let mut epochs = Vec::new();
        for node in f.nodes.iter_mut() {
            let mut got = Vec::new();
            let mut offsets = Vec::new();
            loop {
                let e = next_event_from(node, &origin).await;
                // The frame is the event with its position in front.
                let prefix = format!("{{\"offset\":{},\"epoch\":\"{}\",", e.offset, e.epoch);
                assert!(e.frame.starts_with(&prefix), "{}", e.frame);
                epochs.push(e.epoch.clone());
                offsets.push(e.offset);
                if e.header.produced_at == usize::MAX as u64 {
                    break;
                }
                got.push(e.header.produced_at);
            }
            let expected: Vec<u64> = (0..N as u64).collect();
            assert_eq!(got, expected, "{} from {origin}", node.instance);
            let contiguous: Vec<u64> = (next_offset..next_offset + N as u64 + 1).collect();
            assert_eq!(offsets, contiguous, "{} from {origin}", node.instance);
        }
        epochs.dedup();
        assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
        next_offset += N as u64 + 1;
    }
}

async fn the_log_replays_the_last_events_in_order(mut f: BrokerFixture) {
    const N: usize = 80;
    let origin = f.nodes[0].instance.clone();
    let empty = f.nodes[0].broker.log_head("s").await.unwrap();
    assert_eq!(empty.head, 0);
    for n in 0..N {
        // Produced now: the log replays nothing older than its TTL.
        let mut event = envelope(&origin, n);
        event.header.produced_at = mcp_hub::protocol::now_millis();
        f.nodes[0].broker.publish_event(event).unwrap();
    }
    let mut live = Vec::new();
    while live.len() < N {
        live.push(next_event_from(&mut f.nodes[0], &origin).await);
    }
    for node in &f.nodes {
        let read = node.broker.read_log("s", Some(60), WHOLE).await.unwrap();
        assert_eq!(
            (read.head, read.epoch.as_str()),
            (N as u64, empty.epoch.as_str())
        );
        let replay = read.events.expect("offsets 61.. are kept");
        let frames: Vec<&str> = replay.iter().map(|e| e.frame.as_str()).collect();
        let expected: Vec<&str> = live[60..].iter().map(|e| e.frame.as_str()).collect();
        assert_eq!(frames, expected, "{}", node.instance);
        // Up to date: nothing to replay, but recoverable.
        let current = node
            .broker
            .read_log("s", Some(N as u64), WHOLE)
            .await
            .unwrap();
        assert_eq!(current.events.map(|e| e.len()), Some(0));
        // Older than the last LOG_LEN events, or from the future: gone.
        let old = node
            .broker
            .read_log("s", Some(N as u64 - LOG_LEN as u64 - 1), WHOLE)
            .await;
        assert!(old.unwrap().events.is_none(), "{}", node.instance);
        let ahead = node.broker.read_log("s", Some(N as u64 + 1), WHOLE).await;
        assert!(ahead.unwrap().events.is_none(), "{}", node.instance);
    }
}

/// A read stops at its budget (events or frame bytes, at least one event)
/// and says more are left; reading on from the last offset given pages
/// through every event once, in order.
async fn a_log_read_stops_at_its_budget(mut f: BrokerFixture) {
    const N: usize = 50;
    let origin = f.nodes[0].instance.clone();
    for n in 0..N {
        let mut event = envelope(&origin, n);
        event.header.produced_at = mcp_hub::protocol::now_millis();
        f.nodes[0].broker.publish_event(event).unwrap();
    }
    for _ in 0..N {
        next_event_from(&mut f.nodes[0], &origin).await;
    }
    let frame_bytes = |e: &LoggedEvent| e.frame.len();
    for node in &f.nodes {
        let by_count = ReadBudget {
            max_bytes: 1 << 30,
            max_events: 7,
        };
        let mut after = 0;
        let mut pages = 0;
        loop {
            let read = node
                .broker
                .read_log("s", Some(after), by_count)
                .await
                .unwrap();
            let events = read.events.expect("kept");
            assert!(events.len() <= 7);
            let offsets: Vec<u64> = events.iter().map(|e| e.offset).collect();
            let expected: Vec<u64> = (after + 1..after + 1 + events.len() as u64).collect();
            assert_eq!(offsets, expected, "{}", node.instance);
            pages += 1;
            after = events.last().map_or(after, |e| e.offset);
            if !read.more {
                break;
            }
        }
        assert_eq!(
            (after, pages),
            (N as u64, N.div_ceil(7)),
            "{}",
            node.instance
        );
        // Three frames' bytes hold three events (the frames are alike in
        // size to within a digit); a budget smaller than one frame still
        // gives one.
        let first = node.broker.read_log("s", Some(10), WHOLE).await.unwrap();
        let three: usize = first.events.unwrap()[..3].iter().map(frame_bytes).sum();
        let by_bytes = ReadBudget {
            max_bytes: three,
            max_events: 1 << 20,
        };
        let read = node.broker.read_log("s", Some(10), by_bytes).await.unwrap();
        assert_eq!((read.events.map(|e| e.len()), read.more), (Some(3), true));
        let tiny = ReadBudget {
            max_bytes: 1,
            max_events: 1 << 20,
        };
        let read = node.broker.read_log("s", Some(10), tiny).await.unwrap();
        assert_eq!((read.events.map(|e| e.len()), read.more), (Some(1), true));
        // The last page is not cut.
        let read = node
            .broker
            .read_log("s", Some(N as u64 - 2), by_bytes)
            .await
            .unwrap();
        assert_eq!((read.events.map(|e| e.len()), read.more), (Some(2), false));
    }
}

async fn send_to_instance_delivers_once(mut f: BrokerFixture) {
    let count = f.nodes.len();
    for from in 0..count {
        for to in 0..count {
            let target = f.nodes[to].instance.clone();
            let n = from * 10 + to;
            f.nodes[from]
                .broker
                .send_to_instance(&target, call(n))
                .await
                .unwrap();
            // A second message proves the first arrived exactly once.
            f.nodes[from]
                .broker
                .send_to_instance(&target, call(n + 1000))
                .await
                .unwrap();
            for expected in [n, n + 1000] {
                let got = loop {
                    match next(&mut f.nodes[to]).await {
                        Inbound::Instance(m) => break m,
                        // Loop-back events of earlier tests are no concern here.
                        Inbound::Event(_)
                        | Inbound::Resubscribed(_)
                        | Inbound::Subscribed(_)
                        | Inbound::Monitor(_)
                        | Inbound::Barrier(_) => {
                            continue;
                        }
                    }
                };
                match got {
                    InstanceMessage::AgentCall { call_id, .. } => {
                        assert_eq!(call_id, format!("call-{expected}"))
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
}

async fn send_to_unknown_instance_is_agent_unavailable(f: BrokerFixture) {
    for node in &f.nodes {
        let err = node
            .broker
            .send_to_instance("no-such-instance", call(1))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::AgentUnavailable, "{err}");
    }
}

/// A monitor event from any instance reaches every instance (the
/// publishing one included), once.
async fn monitor_events_reach_every_instance(mut f: BrokerFixture) {
    let count = f.nodes.len();
    for from in 0..count {
        let payload = format!("{{\"type\":\"test\",\"from\":{from}}}");
        f.nodes[from]
            .broker
            .publish_monitor(payload.clone())
            .await
            .unwrap();
        for node in f.nodes.iter_mut() {
            let got = loop {
                match next(node).await {
                    Inbound::Monitor(text) => break text,
                    Inbound::Event(_)
                    | Inbound::Resubscribed(_)
                    | Inbound::Subscribed(_)
                    | Inbound::Barrier(_) => {
                        continue;
                    }
                    Inbound::Instance(m) => panic!("unexpected instance message {m:?}"),
                }
            };
            assert_eq!(got, payload, "{}", node.instance);
        }
    }
}

async fn close_flushes_queued_events(mut f: BrokerFixture) {
    const N: usize = 50;
    let origin = f.nodes[0].instance.clone();
    for n in 0..N {
        f.nodes[0]
            .broker
            .publish_event(envelope(&origin, n))
            .unwrap();
    }
    f.nodes[0].broker.close().await;
    // The closed node has stopped listening; the others got everything.
    for node in f.nodes.iter_mut().skip(1) {
        let mut got = Vec::new();
        while got.len() < N {
            got.push(next_event_from(node, &origin).await.header.produced_at);
        }
        assert_eq!(got, (0..N as u64).collect::<Vec<_>>(), "{}", node.instance);
    }
}

macro_rules! broker_contract {
    ($($name:ident),* $(,)?) => {
        mod local_broker {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::local_bus()).await;
                }
            )*
        }
        mod durable_broker {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::durable_bus()).await;
                }
            )*
        }
        mod redis_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::redis_bus().await).await;
                }
            )*
        }
    };
}

broker_contract!(
    events_reach_every_instance_once_in_offset_order,
    the_log_replays_the_last_events_in_order,
    a_log_read_stops_at_its_budget,
    send_to_instance_delivers_once,
    send_to_unknown_instance_is_agent_unavailable,
    monitor_events_reach_every_instance,
    close_flushes_queued_events,
);

/// Per-session channels: a node hears a session's events only while it has
/// local interest in it; the log still has every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_node_hears_only_the_sessions_it_is_interested_in() {
    let mut f = redis_bus().await;
    let origin = f.nodes[0].instance.clone();
    f.nodes[0].broker.interest("t", true);
    wait_subscribed(&mut f.nodes[0], "t").await;
    let in_t = |n: usize| {
        let mut event = envelope(&origin, n);
        event.header.session = "t".into();
        event
    };
    f.nodes[0].broker.publish_event(in_t(1)).unwrap();
    // Node b is not interested in `t`: the next event it gets is from `s`.
    f.nodes[0]
        .broker
        .publish_event(envelope(&origin, 2))
        .unwrap();
    match next(&mut f.nodes[1]).await {
        Inbound::Event(e) => {
            assert_eq!((e.header.session.as_str(), e.header.produced_at), ("s", 2))
        }
        other => panic!("unexpected {other:?}"),
    }
    // Node a hears both. Order is per session: on a Redis Cluster `t` and
    // `s` live on different shards, so they may arrive either way round.
    let mut heard = Vec::new();
    for _ in 0..2 {
        let got = next_event_from(&mut f.nodes[0], &origin).await;
        heard.push((got.header.session.clone(), got.header.produced_at));
    }
    heard.sort();
    assert_eq!(heard, [("s".to_string(), 2), ("t".to_string(), 1)]);
    // Once node a lost interest, it hears `t` no more (`s` still). Leaving
    // is not confirmed, but it is done before a later interest is
    // confirmed.
    f.nodes[0].broker.interest("t", false);
    f.nodes[0].broker.interest("u", true);
    wait_subscribed(&mut f.nodes[0], "u").await;
    f.nodes[0].broker.publish_event(in_t(3)).unwrap();
    f.nodes[0]
        .broker
        .publish_event(envelope(&origin, 4))
        .unwrap();
    let got = next_event_from(&mut f.nodes[0], &origin).await;
    assert_eq!(
        (got.header.session.as_str(), got.header.produced_at),
        ("s", 4)
    );
    // The log has both of `t`'s events all the same.
    let t = f.nodes[1].broker.log_head("t").await.unwrap();
    assert_eq!(t.head, 2);
}

/// The Redis log holds exactly the entry Rust writes: the append script
/// puts the position in front of the header line and the frame as
/// `LoggedEvent::to_entry` does (a field the script names or orders
/// differently fails here), and `LoggedEvent::parse` reads the entry, as
/// logged and as heard on pub/sub, back as the event published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_log_entry_is_the_one_rust_writes_and_parses() {
    let mut f = redis_bus().await;
    let origin = f.nodes[0].instance.clone();
    let mut event = envelope(&origin, 1);
    event.header.kind = "client_joined".into();
    event.header.except = Some("c1".into());
    event.header.presence = Some(42);
    event.frame = serde_json::json!({
        "type": "client_joined",
        "client_id": "c1",
        "client_name": "Zoë \"q\"\n{",
        "timestamp": 1,
    })
    .to_string();
    let (epoch, offset) = f.nodes[0]
        .broker
        .publish_event(event.clone())
        .unwrap()
        .await
        .expect("logged");
    let expected = event.logged(offset, epoch);

    let key = mcp_hub::redis::Keys::new("contract").session_log("s");
    let id = format!("{offset}-0");
    let redis = f._redis.as_ref().expect("redis");
    let entries: Vec<(String, Vec<String>)> = redis
        .query(::redis::cmd("XRANGE").arg(&key).arg(&id).arg(&id))
        .await;
    let [(_, fields)] = entries.as_slice() else {
        panic!("one entry {id} in {key}: {entries:?}");
    };
    let [field, raw] = fields.as_slice() else {
        panic!("one field in entry {id}: {fields:?}");
    };
    assert_eq!(field, "e");
    assert_eq!(*raw, expected.to_entry().unwrap());
    assert_eq!(LoggedEvent::parse(raw).as_ref(), Some(&expected));
    assert_eq!(next_event_from(&mut f.nodes[1], &origin).await, expected);
}

#[tokio::test]
async fn a_new_local_bus_starts_a_new_epoch() {
    // Standalone: a restart loses the log, so its epoch must differ.
    let a = local_bus();
    let b = local_bus();
    let epoch = |f: &BrokerFixture| f.nodes[0].broker.clone();
    let (ea, eb) = (
        epoch(&a).log_head("s").await.unwrap().epoch,
        epoch(&b).log_head("s").await.unwrap().epoch,
    );
    assert_ne!(ea, eb);
}

/// Standalone: the log of a session removed as idle is forgotten; a later
/// log of the same name continues above its offsets, so a `since` from
/// the old one is never replayed from the new one.
#[tokio::test]
async fn a_forgotten_local_log_continues_above_its_offsets() {
    let f = local_bus();
    let bus = f.nodes[0].broker.clone();
    for n in 0..3 {
        bus.publish_event(envelope("solo", n)).unwrap();
    }
    let before = bus.log_head("s").await.unwrap();
    assert_eq!(before.head, 3);
    bus.forget_log("s");
    let after = bus.read_log("s", Some(3), WHOLE).await.unwrap();
    assert_eq!(after.epoch, before.epoch);
    assert_eq!(after.head, 4);
    assert!(after.events.is_none(), "offset 3 is not this log's");
    bus.publish_event(envelope("solo", 9)).unwrap();
    assert_eq!(bus.log_head("s").await.unwrap().head, 5);
}
