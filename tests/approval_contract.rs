//! Contract tests of `ApprovalStore`: the same test functions run against
//! the standalone twin (`MemoryApprovals`) and the Redis twin
//! (`RedisApprovals`), so held sends behave alike with and without Redis:
//! numbering, the per-session cap, exactly one winning decision among
//! concurrent deciders, expiry, outcomes and the sweep's index. The Redis
//! cases run on a private redis-server, or a 3-master Redis Cluster with
//! `MCP_HUB_TEST_REDIS=cluster`.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use mcp_hub::approvals::memory::MemoryApprovals;
use mcp_hub::approvals::redis::RedisApprovals;
use mcp_hub::approvals::{
    Approval, ApprovalStore, ApprovalVia, Decide, Decision, Held, Resolution,
};
use mcp_hub::protocol::{ClientInfo, WhatsAppCommand, now_millis};
use serde_json::json;
use support::TestRedis;

const KEEP: Duration = Duration::from_secs(60);

/// Runs `case` on the memory twin, then on the Redis twin.
async fn on_both<F, Fut>(case: F)
where
    F: Fn(Arc<dyn ApprovalStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    case(Arc::new(MemoryApprovals::new())).await;
    let redis = TestRedis::start();
    case(Arc::new(RedisApprovals::new(
        redis.backend("contract", "inst-a"),
    )))
    .await;
}

/// A held send to John in `session`, numbered by the store, expiring in
/// `ttl_ms`.
async fn held(store: &dyn ApprovalStore, session: &str, ttl_ms: u64) -> Held {
    let id = store.next_id(session).await.expect("next id");
    let now = now_millis();
    Held {
        approval: Approval {
            id,
            session: session.to_string(),
            requested_by: "claude".into(),
            via: ApprovalVia::Mcp,
            action: "send".into(),
            contact: "John".into(),
            text: format!("hello {id}"),
            created_at: now,
            expires_at: now + ttl_ms,
        },
        command: WhatsAppCommand::text("John", format!("hello {id}")),
        requester: ClientInfo {
            client_id: "claude".into(),
            client_name: "claude".into(),
            instance: "inst-a".into(),
            capabilities: Vec::new(),
            owner: None,
            connected_at: None,
        },
    }
}

fn by(who: &str, decision: Decision) -> Resolution {
    Resolution {
        decision,
        decided_by: who.into(),
        decided_at: now_millis(),
        reason: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_sends_are_numbered_listed_and_capped_per_session() {
    on_both(|store| async move {
        let first = held(&*store, "s1", 60_000).await;
        let second = held(&*store, "s1", 60_000).await;
        assert!(second.approval.id > first.approval.id, "numbers grow");
        assert!(store.hold(&first, 2, KEEP).await.unwrap());
        assert!(store.hold(&second, 2, KEEP).await.unwrap());
        // The cap counts undecided sends of this session only.
        let third = held(&*store, "s1", 60_000).await;
        assert!(!store.hold(&third, 2, KEEP).await.unwrap(), "over the cap");
        let elsewhere = held(&*store, "s2", 60_000).await;
        assert!(store.hold(&elsewhere, 2, KEEP).await.unwrap());
        let pending = store.pending("s1", 10).await.unwrap();
        assert_eq!(pending, [first.approval.clone(), second.approval.clone()]);
        assert_eq!(store.pending("s1", 1).await.unwrap().len(), 1, "bounded");
        // A decided send frees its place.
        let won = store
            .decide(
                "s1",
                first.approval.id,
                &by("alice", Decision::Rejected),
                now_millis(),
                KEEP,
            )
            .await
            .unwrap();
        assert!(matches!(won, Decide::Won(..)), "{won:?}");
        assert!(store.hold(&third, 2, KEEP).await.unwrap());
        assert_eq!(
            store
                .get("s1", third.approval.id)
                .await
                .unwrap()
                .unwrap()
                .held,
            third
        );
        assert!(store.get("s1", 999_999).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_many_concurrent_decisions_wins() {
    on_both(|store| async move {
        let h = held(&*store, "s", 60_000).await;
        let id = h.approval.id;
        assert!(store.hold(&h, 5, KEEP).await.unwrap());
        let deciders = (0..16).map(|i| {
            let store = store.clone();
            let decision = if i % 2 == 0 {
                Decision::Approved
            } else {
                Decision::Rejected
            };
            tokio::spawn(async move {
                let resolution = by(&format!("member-{i}"), decision);
                store
                    .decide("s", id, &resolution, now_millis(), KEEP)
                    .await
                    .unwrap()
            })
        });
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for decider in deciders {
            match decider.await.unwrap() {
                Decide::Won(held, resolution) => winners.push((held, resolution)),
                Decide::Lost(record) => losers.push(record),
                Decide::Unknown => panic!("the held send vanished"),
            }
        }
        assert_eq!(winners.len(), 1, "one winner");
        assert_eq!(losers.len(), 15);
        let (won_held, won) = &winners[0];
        assert_eq!(won_held, &h);
        // Every loser sees the winning decision, and nothing is pending.
        for record in &losers {
            assert_eq!(record.resolution.as_ref(), Some(won));
        }
        assert!(store.pending("s", 10).await.unwrap().is_empty());
        // The outcome is there for whoever waits.
        store
            .finish("s", id, &json!({"success": true, "message_id": "m1"}))
            .await
            .unwrap();
        let record = store.get("s", id).await.unwrap().unwrap();
        assert_eq!(record.resolution.as_ref(), Some(won));
        assert_eq!(
            record.outcome,
            Some(json!({"success": true, "message_id": "m1"}))
        );
        let late = store
            .decide("s", id, &by("late", Decision::Approved), now_millis(), KEEP)
            .await
            .unwrap();
        match late {
            Decide::Lost(record) => assert_eq!(
                record.outcome,
                Some(json!({"success": true, "message_id": "m1"}))
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store
                .decide(
                    "s",
                    id + 1000,
                    &by("x", Decision::Approved),
                    now_millis(),
                    KEEP
                )
                .await
                .unwrap(),
            Decide::Unknown
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_after_the_expiry_is_the_expiry_and_the_sweep_finds_it() {
    on_both(|store| async move {
        let h = held(&*store, "s", 50).await;
        let id = h.approval.id;
        assert!(store.hold(&h, 5, KEEP).await.unwrap());
        let fresh = held(&*store, "s", 60_000).await;
        assert!(store.hold(&fresh, 5, KEEP).await.unwrap());
        assert!(
            store
                .due(now_millis(), 10)
                .await
                .unwrap()
                .iter()
                .all(|(_, i)| *i != fresh.approval.id)
        );
        let later = h.approval.expires_at + 1;
        let due = store.due(later, 10).await.unwrap();
        assert!(due.contains(&("s".to_string(), id)), "{due:?}");
        assert!(!due.contains(&("s".to_string(), fresh.approval.id)));
        // Too late: the approval is recorded as the expiry it is.
        match store
            .decide("s", id, &by("alice", Decision::Approved), later, KEEP)
            .await
            .unwrap()
        {
            Decide::Won(_, resolution) => {
                assert_eq!(resolution.decision, Decision::Expired);
                assert_eq!(resolution.decided_by, "hub");
            }
            other => panic!("{other:?}"),
        }
        // Decided sends leave the sweep's index.
        assert!(
            !store
                .due(later, 10)
                .await
                .unwrap()
                .contains(&("s".to_string(), id))
        );
    })
    .await;
}
