//! Contract tests of `Membership`: the same test functions run against the
//! standalone twin (`LocalMembership`) and the Redis twin
//! (`RedisMembership`), so what the hub reads about the live instances
//! (`/api/v1/cluster`, readiness) cannot drift between them. Then the
//! Redis twin's cluster behaviour (instances joining, leaving, expiring
//! and being reaped), which the standalone twin has no counterpart of.
//! Each Redis case runs on its own private redis-server (killed when the
//! test ends, also on failure), or its own 3-master Redis Cluster with
//! `MCP_HUB_TEST_REDIS=cluster`.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use mcp_hub::broker::Broker;
use mcp_hub::broker::local::LocalBroker;
use mcp_hub::membership::local::LocalMembership;
use mcp_hub::membership::redis::RedisMembership;
use mcp_hub::membership::{InstanceInfo, Membership};
use mcp_hub::protocol::{ClientInfo, now_millis};
use mcp_hub::redis::{Beat, Keys, RedisBackend};
use mcp_hub::store::redis::RedisStore;
use mcp_hub::store::{JoinRule, Reaped, SessionStore};
use support::{TestRedis, wait_until_async};
use tokio::sync::mpsc;

/// The instance the membership under test runs as.
const ME: &str = "inst-a";
const PREFIX: &str = "contract";
const WAIT: Duration = Duration::from_secs(10);
/// Heartbeat and presence TTL of the cluster tests that need no expiry.
const HEARTBEAT: Duration = Duration::from_secs(2);
const TTL: Duration = Duration::from_secs(10);
/// A presence TTL short enough for a test to see an instance expire.
const SHORT_TTL: Duration = Duration::from_millis(600);

// ---------------------------------------------------------------- fixtures

/// A membership under test, as the hub holds it, with what keeps it
/// current (the cluster driver's part, for the Redis twin).
struct MembershipFixture {
    membership: Arc<dyn Membership>,
    redis: Option<Arc<RedisMembership>>,
    /// The connection epoch of the broker the hub would run beside it.
    broker_epoch: u64,
    mode: &'static str,
    _redis: Option<TestRedis>,
}

impl MembershipFixture {
    /// What the cluster driver does on a heartbeat: publish this
    /// instance's description (nothing to do standalone, where the hub
    /// passes its client count to `instances`).
    async fn heartbeat(&self, clients: usize, ready: bool) {
        if let Some(m) = &self.redis {
            m.beat(clients, ready).await.expect("heartbeat");
            m.set_healthy(true);
        }
    }

    /// What the cluster driver does once the local clients are announced
    /// for the broker's current connection.
    fn synced(&self) {
        if let Some(m) = &self.redis {
            m.mark_synced(self.broker_epoch);
        }
    }
}

fn memory_membership() -> MembershipFixture {
    let (tx, _rx) = mpsc::channel(1);
    let broker = LocalBroker::new(ME.to_string(), tx, 10, Duration::from_secs(60));
    MembershipFixture {
        membership: Arc::new(LocalMembership::new(ME.to_string())),
        redis: None,
        broker_epoch: broker.connection_epoch(),
        mode: "standalone",
        _redis: None,
    }
}

fn redis_membership() -> MembershipFixture {
    let redis = TestRedis::start();
    let m = member(&redis.backend(PREFIX, ME), ME, TTL);
    MembershipFixture {
        membership: m.clone(),
        redis: Some(m),
        broker_epoch: 7,
        mode: "cluster",
        _redis: Some(redis),
    }
}

fn store(backend: &RedisBackend, instance: &str) -> Arc<dyn SessionStore> {
    Arc::new(RedisStore::new(
        backend.clone(),
        instance.to_string(),
        5,
        10_000,
    ))
}

/// One instance's Redis membership over `backend`.
fn member(backend: &RedisBackend, instance: &str, ttl: Duration) -> Arc<RedisMembership> {
    Arc::new(RedisMembership::new(
        backend.clone(),
        store(backend, instance),
        instance.to_string(),
        HEARTBEAT,
        ttl,
    ))
}

fn names(instances: &[InstanceInfo]) -> Vec<String> {
    instances.iter().map(|i| i.instance.clone()).collect()
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

// ------------------------------------------------- membership contract

/// After a heartbeat, this instance is listed once, described as it is.
async fn this_instance_is_listed_with_its_description(f: MembershipFixture) {
    let before = now_millis();
    f.heartbeat(3, true).await;
    let listed = f.membership.instances(3).await.unwrap();
    let after = now_millis();
    assert_eq!(names(&listed), [ME]);
    let me = &listed[0];
    assert_eq!(me.clients, 3);
    assert_eq!(me.version, env!("CARGO_PKG_VERSION"));
    assert!(me.ready);
    assert!(me.started_at <= me.last_heartbeat, "{me:?}");
    assert!(
        (before..=after).contains(&me.last_heartbeat),
        "{me:?} not within {before}..={after}"
    );
    assert_eq!(f.membership.mode(), f.mode);
}

/// The description follows the latest heartbeat: the client count moves,
/// the start time stays, the heartbeat time never goes back.
async fn the_description_follows_the_latest_heartbeat(f: MembershipFixture) {
    f.heartbeat(1, true).await;
    let first = f.membership.instances(1).await.unwrap().remove(0);
    f.heartbeat(5, true).await;
    let listed = f.membership.instances(5).await.unwrap();
    assert_eq!(names(&listed), [ME], "still listed once");
    let second = &listed[0];
    assert_eq!(second.clients, 5);
    assert_eq!(second.started_at, first.started_at);
    assert!(second.last_heartbeat >= first.last_heartbeat);
    f.heartbeat(0, true).await;
    assert_eq!(f.membership.instances(0).await.unwrap()[0].clients, 0);
}

/// Once announced and synced for the broker's connection, the instance is
/// ready as the hub judges it: healthy, synced for the broker's epoch.
async fn an_announced_instance_is_ready(f: MembershipFixture) {
    f.heartbeat(2, true).await;
    f.synced();
    assert!(f.membership.is_healthy());
    assert_eq!(f.membership.synced_epoch(), f.broker_epoch);
}

macro_rules! membership_contract {
    ($($name:ident),* $(,)?) => {
        mod memory_membership {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::memory_membership()).await;
                }
            )*
        }
        mod redis_membership {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::redis_membership()).await;
                }
            )*
        }
    };
}

membership_contract!(
    this_instance_is_listed_with_its_description,
    the_description_follows_the_latest_heartbeat,
    an_announced_instance_is_ready,
);

// ------------------------------------------------ the Redis twin's cluster

/// Before its first heartbeat and re-announcement, a Redis member is
/// neither healthy nor synced for any broker epoch (the hub is not ready),
/// and lists nothing; a lost backend makes it unhealthy again.
#[tokio::test]
async fn a_redis_member_is_not_ready_before_its_first_sync() {
    let f = redis_membership();
    let m = f.redis.as_ref().expect("redis");
    assert!(!m.is_healthy());
    assert_eq!(m.synced_epoch(), u64::MAX, "synced for no epoch");
    assert!(m.instances(0).await.unwrap().is_empty());
    f.heartbeat(0, false).await;
    f.synced();
    assert!(m.is_healthy());
    m.set_healthy(false);
    assert!(!m.is_healthy());
    assert!(!m.instances(0).await.unwrap()[0].ready, "as announced");
}

/// Every instance sees every live one, sorted by name, each with its own
/// description (not the reader's client count).
#[tokio::test]
async fn redis_members_see_each_other_sorted() {
    let redis = TestRedis::start();
    let backend = redis.backend(PREFIX, ME);
    let members: Vec<_> = ["inst-c", ME, "inst-b"]
        .into_iter()
        .map(|i| member(&backend, i, TTL))
        .collect();
    for (n, m) in members.iter().enumerate() {
        m.beat(n + 1, true).await.unwrap();
    }
    for m in &members {
        let listed = m.instances(99).await.unwrap();
        assert_eq!(names(&listed), [ME, "inst-b", "inst-c"]);
        let clients: Vec<usize> = listed.iter().map(|i| i.clients).collect();
        assert_eq!(clients, [2, 3, 1]);
    }
    // Another prefix is another cluster.
    let elsewhere = member(&redis.backend("other", ME), ME, TTL);
    assert!(elsewhere.instances(0).await.unwrap().is_empty());
}

/// An instance that leaves is gone from every listing at once, its
/// description too; the others stay. What presence it left behind (a
/// departure its store did not take) is reaped at the next reap.
#[tokio::test]
async fn a_redis_member_that_leaves_is_gone_at_once_and_its_leftovers_reaped() {
    let redis = TestRedis::start();
    let backend = redis.backend(PREFIX, ME);
    let (me, peer) = (member(&backend, ME, TTL), member(&backend, "inst-b", TTL));
    me.beat(1, true).await.unwrap();
    peer.beat(1, true).await.unwrap();
    assert_eq!(names(&me.instances(0).await.unwrap()), [ME, "inst-b"]);
    // A departure the leaving instance's store did not take.
    store(&backend, ME)
        .join("s", &client("left-behind", "inst-b"), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    peer.leave_cluster().await.unwrap();
    assert_eq!(names(&me.instances(0).await.unwrap()), [ME]);
    let keys = Keys::new(PREFIX);
    assert_eq!(
        redis.cmd_any(&["EXISTS", &keys.instance_info("inst-b")]),
        "0"
    );
    // The next reap takes what it left behind, and forgets it.
    let reaped = me.reap().await.unwrap();
    assert!(
        matches!(reaped.as_slice(), [Reaped::ClientLeft { client, .. }] if client.client_id == "left-behind"),
        "{reaped:?}"
    );
    assert_eq!(redis.cmd_any(&["ZSCORE", &keys.instances(), "inst-b"]), "");
    // A left member beats no more; the instance started again joins.
    peer.beat(4, true).await.unwrap();
    assert_eq!(names(&me.instances(0).await.unwrap()), [ME]);
    let restarted = member(&backend, "inst-b", TTL);
    restarted.beat(4, true).await.unwrap();
    assert_eq!(names(&me.instances(0).await.unwrap()), [ME, "inst-b"]);
}

/// An instance silent for the presence TTL drops out of the listing while
/// the ones that keep beating stay.
#[tokio::test]
async fn a_silent_redis_member_expires_after_the_presence_ttl() {
    let redis = TestRedis::start();
    let backend = redis.backend(PREFIX, ME);
    let (me, silent) = (
        member(&backend, ME, SHORT_TTL),
        member(&backend, "inst-b", SHORT_TTL),
    );
    me.beat(1, true).await.unwrap();
    silent.beat(1, true).await.unwrap();
    let listed = names(&me.instances(0).await.unwrap());
    assert!(listed.contains(&"inst-b".to_string()), "{listed:?}");
    wait_until_async("the silent instance to expire", WAIT, || async {
        me.beat(1, true).await.unwrap();
        names(&me.instances(0).await.unwrap()) == [ME]
    })
    .await;
    // Its description expired with it.
    let info = Keys::new(PREFIX).instance_info("inst-b");
    assert_eq!(redis.cmd_any(&["EXISTS", &info]), "0");
}

/// A dead instance is reaped once: its clients are taken (each announced
/// by exactly one of two reapers running at once) and it is forgotten; a
/// live instance and the reaper itself are never reaped.
#[tokio::test]
async fn a_dead_redis_member_is_reaped_once_and_forgotten() {
    let redis = TestRedis::start();
    let backend = redis.backend(PREFIX, ME);
    let (me, peer, dead) = (
        member(&backend, ME, SHORT_TTL),
        member(&backend, "inst-b", SHORT_TTL),
        member(&backend, "dead", SHORT_TTL),
    );
    let sessions = store(&backend, ME);
    sessions
        .join("s", &client("d1", "dead"), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    sessions
        .join("s", &client("d2", "dead"), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    sessions
        .join("s", &client("b1", "inst-b"), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    sessions
        .join("s", &client("mine", ME), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    dead.beat(2, true).await.unwrap();
    me.beat(1, true).await.unwrap();
    peer.beat(1, true).await.unwrap();
    // Nothing is dead yet.
    assert_eq!(me.reap().await.unwrap(), []);

    let taken: std::sync::Mutex<Vec<Reaped>> = Default::default();
    wait_until_async("the dead instance to be reaped", WAIT, || {
        let taken = &taken;
        let (me, peer) = (&me, &peer);
        async move {
            // The reapers keep beating; "dead" does not.
            me.beat(1, true).await.unwrap();
            peer.beat(1, true).await.unwrap();
            let (a, b) = tokio::join!(me.reap(), peer.reap());
            let mut taken = taken.lock().unwrap();
            taken.extend(a.unwrap().into_iter().chain(b.unwrap()));
            taken.len() >= 2
        }
    })
    .await;
    let mut left: Vec<String> = taken
        .into_inner()
        .unwrap()
        .iter()
        .map(|r| match r {
            Reaped::ClientLeft {
                session, client, ..
            } => format!("{session}/{}@{}", client.client_id, client.instance),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    left.sort();
    assert_eq!(left, ["s/d1@dead", "s/d2@dead"], "each taken exactly once");

    let keys = Keys::new(PREFIX);
    assert_eq!(
        redis.cmd_any(&["ZSCORE", &keys.instances(), "dead"]),
        "",
        "forgotten"
    );
    assert_eq!(me.reap().await.unwrap(), [], "nothing left to reap");
    assert_eq!(members(&sessions).await, ["b1", "mine"], "live ones stay");

    // Silent past the TTL itself (the peer still beating), this instance
    // is no longer listed, yet its own reaping never takes its clients.
    wait_until_async("this instance to expire", WAIT, || async {
        peer.beat(1, true).await.unwrap();
        names(&peer.instances(0).await.unwrap()) == ["inst-b"]
    })
    .await;
    assert_eq!(me.reap().await.unwrap(), []);
    assert_eq!(members(&sessions).await, ["b1", "mine"]);
}

/// A heartbeat tells whether the instance was still in the cluster's set:
/// the first enters it, the next ones continue it, and the first after a
/// reaper forgot the instance (alive, but late by more than the TTL)
/// enters it again, so the instance knows its clients were taken.
#[tokio::test]
async fn a_redis_member_reaped_while_alive_learns_it_at_its_next_heartbeat() {
    let redis = TestRedis::start();
    let backend = redis.backend(PREFIX, ME);
    let (me, late) = (
        member(&backend, ME, SHORT_TTL),
        member(&backend, "inst-b", SHORT_TTL),
    );
    assert_eq!(late.beat(1, true).await.unwrap(), Beat::Entered);
    assert_eq!(late.beat(1, true).await.unwrap(), Beat::Continued);
    let instances = Keys::new(PREFIX).instances();
    wait_until_async("the late instance to be reaped", WAIT, || async {
        me.beat(1, true).await.unwrap();
        me.reap().await.unwrap();
        redis.cmd_any(&["ZSCORE", &instances, "inst-b"]).is_empty()
    })
    .await;
    assert_eq!(late.beat(1, true).await.unwrap(), Beat::Entered);
    assert_eq!(late.beat(1, true).await.unwrap(), Beat::Continued);

    // A reap that stopped part-way (marked, some clients taken, not yet
    // forgotten) is noticed too; a live instance is never marked.
    assert!(!backend.mark_reaping("inst-b", SHORT_TTL).await.unwrap());
    wait_until_async("the late instance to look dead again", WAIT, || async {
        backend.mark_reaping("inst-b", SHORT_TTL).await.unwrap()
    })
    .await;
    assert_eq!(late.beat(1, true).await.unwrap(), Beat::Entered);
    assert!(!backend.mark_reaping("inst-b", SHORT_TTL).await.unwrap());
}

/// The heartbeat and the leave have a connection of their own: with every
/// pooled connection taken (as by the leaves of a mass disconnect), they
/// reach Redis at once, where waiting for the pool would make the
/// heartbeat late by the pool's timeout and, past the TTL, get this live
/// instance reaped.
#[tokio::test]
async fn a_redis_heartbeat_does_not_wait_for_a_busy_pool() {
    let redis = TestRedis::start();
    let backend = redis.backend(PREFIX, ME);
    let me = member(&backend, ME, TTL);
    // Takes pooled connections until a request for one has to wait.
    let mut held = Vec::new();
    while let Ok(conn) = tokio::time::timeout(Duration::from_secs(1), backend.pool.get()).await {
        held.push(conn.expect("a pooled connection"));
    }
    let ping = ::redis::cmd("PING");
    let pooled = backend.query::<String>("ping", &ping);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), pooled)
            .await
            .is_err(),
        "a pooled command waits"
    );
    assert_eq!(me.beat(1, true).await.unwrap(), Beat::Entered);
    assert_eq!(me.beat(1, true).await.unwrap(), Beat::Continued);
    me.leave_cluster().await.unwrap();
    let instances = Keys::new(PREFIX).instances();
    assert_eq!(redis.cmd_any(&["ZSCORE", &instances, ME]), "0", "left");
    drop(held);
}

/// An instance started again under the same id reaps what its earlier
/// run left (here after a clean stop, which no other instance reaped), and
/// leaves alone an id whose heartbeat is fresh (a run still alive).
#[tokio::test]
async fn an_instance_started_again_reaps_what_its_earlier_run_left() {
    let redis = TestRedis::start();
    let backend = redis.backend(PREFIX, ME);
    let earlier = member(&backend, "inst-b", TTL);
    earlier.beat(1, true).await.unwrap();
    store(&backend, "inst-b")
        .join("s", &client("left-behind", "inst-b"), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    earlier.leave_cluster().await.unwrap();

    let again = member(&backend, "inst-b", TTL);
    let reaped = again.reap_earlier_run().await.unwrap();
    assert!(
        matches!(reaped.as_slice(), [Reaped::ClientLeft { client, .. }] if client.client_id == "left-behind"),
        "{reaped:?}"
    );
    assert_eq!(again.beat(1, true).await.unwrap(), Beat::Entered);

    // A live run under the id: nothing is taken.
    store(&backend, "inst-b")
        .join("s", &client("live", "inst-b"), JoinRule::UNBOUNDED)
        .await
        .unwrap()
        .unwrap();
    let duplicate = member(&backend, "inst-b", TTL);
    assert_eq!(duplicate.reap_earlier_run().await.unwrap(), []);
    assert_eq!(members(&store(&backend, ME)).await, ["live"]);
}

async fn members(sessions: &Arc<dyn SessionStore>) -> Vec<String> {
    let mut ids: Vec<String> = sessions
        .members("s")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    ids.sort();
    ids
}
