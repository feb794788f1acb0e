//! The registry's unit tests.

use futures_util::FutureExt;

use super::*;
use crate::hub::fanout::{MAX_JOBS, QUEUED_AT_ONCE};
use crate::outbox::{WakeCount, until};

fn handle(max_frames: usize) -> ClientHandle {
    named("c", max_frames)
}

fn named(client_id: &str, max_frames: usize) -> ClientHandle {
    let info = ClientInfo {
        client_id: client_id.into(),
        client_name: "c".into(),
        instance: "i".into(),
        capabilities: Vec::new(),
        owner: None,
        connected_at: None,
    };
    ClientHandle::new(info, 1, max_frames, 1 << 20)
}

fn event(session: &str, offset: u64) -> (crate::broker::LoggedEvent, Outbound) {
    let frame = format!("{session} {offset}");
    let event = crate::broker::LoggedEvent {
        offset,
        epoch: "e".into(),
        header: crate::broker::EventHeader {
            session: session.into(),
            origin: "i".into(),
            kind: "broadcast".into(),
            produced_at: 1,
            except: None,
            presence: None,
            traceparent: None,
        },
        frame: frame.clone(),
    };
    (event, Outbound::reply(frame.as_str().into(), "broadcast"))
}

/// Delivers event `offset` of `session` (see [`event`]).
fn deliver(registry: &Registry, session: &str, offset: u64, metrics: &Arc<Metrics>) -> Delivery {
    let (e, out) = event(session, offset);
    registry.deliver_logged(&e, &out, false, metrics)
}

/// Each of `clients` leaves `session`.
fn leave(registry: &Registry, session: &str, clients: &[Watched]) {
    for (h, _) in clients {
        assert!(registry.remove(session, &h.info.client_id, h.conn_id));
    }
}

/// Lets the spawned tasks (a session's fan-out task) run a while.
async fn let_tasks_run() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Holds the registry's flusher, delivers event `offset` of the large
/// session and lets its task hand the event over: the event is under way,
/// none of it queued, until the returned sender is dropped.
async fn deliver_held(
    registry: &Registry,
    offset: u64,
    metrics: &Arc<Metrics>,
) -> std::sync::mpsc::Sender<()> {
    let held = registry.fanouts.flusher().hold(metrics);
    deliver(registry, "big", offset, metrics);
    let_tasks_run().await;
    held
}

fn frames(h: &ClientHandle) -> Vec<String> {
    std::iter::from_fn(|| h.outbox().next_frame())
        .map(|out| out.frame.as_str().to_string())
        .collect()
}

/// A client and its connection task's wake-ups.
type Watched = (ClientHandle, Arc<WakeCount>);

/// A registry with `n` clients in session "big", each watched, and the
/// metrics to deliver with.
fn big_session(n: usize) -> (Arc<Metrics>, Registry, Vec<Watched>) {
    let registry = Registry::default();
    let big = (0..n)
        .map(|i| {
            let h = named(&format!("big{i}"), 64);
            registry.insert("big", h.clone());
            let woken = WakeCount::watching(h.outbox());
            (h, woken)
        })
        .collect();
    (Arc::new(Metrics::new("i")), registry, big)
}

fn wake_ups(big: &[Watched]) -> Vec<usize> {
    big.iter().map(|(_, w)| w.count()).collect()
}

/// Until every one of `big` was woken more often than `before` says (by
/// the flusher's thread: no write half is attached here); then their
/// tasks run (register again).
async fn until_woken_since(big: &[Watched], before: &[usize]) {
    for _ in 0..10_000 {
        if wake_ups(big)
            .iter()
            .zip(before)
            .all(|(now, then)| now > then)
        {
            for (h, w) in big {
                w.runs(h.outbox());
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("the flusher never woke them all");
}

/// Until the flusher has flushed what it was handed before this call: a
/// marker connection it lists after all of it is flushed (woken) last.
fn until_the_flusher_is_idle(registry: &Registry, metrics: &Arc<Metrics>) {
    let marker = named("marker", 8);
    let woken = WakeCount::watching(marker.outbox());
    let shared = marker.shared.clone();
    registry
        .fanouts
        .flusher()
        .queue_and_flush(metrics, move |listed, metrics| {
            let out = Outbound::reply("marker".into(), "broadcast");
            if AsRef::<Outbox>::as_ref(&*shared).send_deferred(out, metrics) {
                listed.push(shared);
            }
        });
    until("the marker flushed", || woken.count() > 0);
}

/// A large session's events are queued for all its clients, in order,
/// and their connections flushed by the flusher (here, with no write half
/// attached, it wakes their tasks); a small session's client is woken at
/// once by its own event, not by the flusher.
#[tokio::test]
async fn a_large_fan_out_is_flushed_off_the_runtime_and_a_small_session_woken_at_once() {
    let (metrics, registry, big) = big_session(FANOUT_CHUNK * 3);
    let small = named("small", 8);
    registry.insert("small", small.clone());
    let small_woken = WakeCount::watching(small.outbox());

    for offset in 1..=2 {
        assert_eq!(
            deliver(&registry, "big", offset, &metrics),
            Delivery::Delivered
        );
    }
    deliver(&registry, "small", 1, &metrics);
    assert_eq!(small_woken.count(), 1);
    registry.delivered("big", "e", 2).await;
    // Every flush of events 1 and 2 done before the tasks run again: a
    // later one would take the wake-up the next event is to give.
    until_the_flusher_is_idle(&registry, &metrics);
    until_woken_since(&big, &vec![0; big.len()]).await;
    for (h, _) in &big {
        assert_eq!(frames(h), ["big 1", "big 2"]);
    }

    // Once flushed, a client is listed again by the next event.
    let before = wake_ups(&big);
    deliver(&registry, "big", 3, &metrics);
    registry.settled().await;
    until_woken_since(&big, &before).await;
    for (h, _) in &big {
        assert_eq!(frames(h), ["big 3"]);
    }
}

/// A large session's frames are queued by a task of its own: the broker's
/// dispatcher goes on at once, and a small session's event after it is
/// queued before them.
#[tokio::test]
async fn a_small_sessions_event_does_not_wait_for_a_large_sessions_queueing() {
    let (metrics, registry, big) = big_session(FANOUT_CHUNK + 1);
    let small = named("small", 8);
    registry.insert("small", small.clone());
    for session in ["big", "small"] {
        deliver(&registry, session, 1, &metrics);
    }
    assert_eq!(frames(&small), ["small 1"]);
    assert!(
        big.iter().all(|(h, _)| h.outbox().queued_bytes() == 0),
        "queued by the session's task, not yet run"
    );
    registry.settled().await;
    for (h, _) in &big {
        assert_eq!(frames(h), ["big 1"]);
    }
}

/// While a session's task has events to queue, the session's next events
/// are queued by it too, however few the recipients now: every client
/// still gets them in order.
#[tokio::test]
async fn a_session_shrinking_below_the_large_size_keeps_its_events_in_order() {
    let (metrics, registry, big) = big_session(FANOUT_CHUNK + 1);
    deliver(&registry, "big", 1, &metrics);
    leave(&registry, "big", &big[..2]);
    deliver(&registry, "big", 2, &metrics);
    registry.settled().await;
    for (h, _) in &big[2..] {
        assert_eq!(frames(h), ["big 1", "big 2"]);
    }
}

/// The dispatcher waits once a session's task has [`MAX_JOBS`] events
/// waiting (they are bounded), and goes on once they are queued; other
/// sessions have room meanwhile.
#[tokio::test]
async fn the_dispatcher_waits_while_a_large_sessions_task_is_behind() {
    let (metrics, registry, big) = big_session(FANOUT_CHUNK + 1);
    for offset in 1..MAX_JOBS as u64 {
        deliver(&registry, "big", offset, &metrics);
    }
    assert!(registry.fanout_room("big").now_or_never().is_some());
    deliver(&registry, "big", MAX_JOBS as u64, &metrics);
    let mut waiting = std::pin::pin!(registry.fanout_room("big"));
    assert!(waiting.as_mut().now_or_never().is_none(), "no room");
    assert!(registry.fanout_room("small").now_or_never().is_some());
    waiting.await;
    registry.settled().await;
    assert_eq!(frames(&big[0].0).len(), MAX_JOBS);
}

/// A large session nobody here subscribes to any more has its waiting
/// events dropped, and its task queues nothing more.
#[tokio::test]
async fn the_last_client_leaving_drops_a_large_sessions_waiting_events() {
    let (metrics, registry, big) = big_session(FANOUT_CHUNK + 1);
    for offset in 1..=2 {
        deliver(&registry, "big", offset, &metrics);
    }
    leave(&registry, "big", &big);
    assert!(registry.settled().now_or_never().is_some(), "nothing waits");
    let_tasks_run().await;
    assert!(big.iter().all(|(h, _)| h.outbox().queued_bytes() == 0));
}

/// A client that leaves a large session gets none of the events handed to
/// its task before it left and not yet queued; the others get them all, in
/// order.
#[tokio::test]
async fn a_client_that_left_gets_no_event_still_waiting_to_be_queued() {
    let (metrics, registry, big) = big_session(FANOUT_CHUNK + 1);
    deliver(&registry, "big", 1, &metrics);
    deliver(&registry, "big", 2, &metrics);
    leave(&registry, "big", &big[..1]);
    registry.settled().await;
    assert!(frames(&big[0].0).is_empty());
    for (h, _) in &big[1..] {
        assert_eq!(frames(h), ["big 1", "big 2"]);
    }
}

/// Nor does a client that leaves while its event is under way (handed to
/// the flusher), if the flusher has not queued it for it yet.
#[tokio::test]
async fn a_client_that_left_mid_event_is_skipped_by_the_rest_of_it() {
    let (metrics, registry, big) = big_session(QUEUED_AT_ONCE + 1);
    let held = deliver_held(&registry, 1, &metrics).await;
    let left = &big[QUEUED_AT_ONCE];
    leave(&registry, "big", std::slice::from_ref(left));
    drop(held);
    registry.settled().await;
    assert!(frames(&left.0).is_empty());
    assert_eq!(frames(&big[0].0), ["big 1"]);
}

/// A connection replaced by a new one with the same client id gets no
/// event still waiting to be queued (it is being closed), nor does the new
/// one (it joined after).
#[tokio::test]
async fn a_replaced_connection_gets_no_event_still_waiting_to_be_queued() {
    let (metrics, registry, big) = big_session(FANOUT_CHUNK + 1);
    deliver(&registry, "big", 1, &metrics);
    let new = named(&big[0].0.info.client_id, 64);
    assert!(registry.insert("big", new.clone()).is_some());
    registry.settled().await;
    assert!(frames(&big[0].0).is_empty());
    assert!(frames(&new).is_empty());
    assert_eq!(frames(&big[1].0), ["big 1"]);
}

/// An admin feed that switches from a large session to another gets no
/// event of the first collected before it switched after the second's.
#[tokio::test]
async fn a_feed_switching_sessions_gets_no_old_event_after_the_new_ones() {
    let (metrics, registry, _big) = big_session(FANOUT_CHUNK + 1);
    let feed = named("feed", 8);
    registry.watch("big", feed.clone(), None);
    deliver(&registry, "big", 1, &metrics);
    registry.unwatch("big", feed.conn_id);
    registry.watch("small", feed.clone(), None);
    deliver(&registry, "small", 1, &metrics);
    registry.settled().await;
    assert_eq!(frames(&feed), ["small 1"]);
}

/// A large session forgotten (nobody here subscribes) while an event is
/// under way: a watcher back meanwhile gets what was published after its
/// new watch, as any new watch does, not the event being queued when it
/// left.
#[tokio::test]
async fn a_watcher_back_mid_event_gets_the_next_events_not_the_one_it_left() {
    let (metrics, registry, big) = big_session(QUEUED_AT_ONCE + 1);
    let watcher = named("w", 8);
    registry.watch("big", watcher.clone(), None);
    let held = deliver_held(&registry, 1, &metrics).await;
    leave(&registry, "big", &big);
    registry.unwatch("big", watcher.conn_id);
    let read = Position {
        epoch: "e".into(),
        offset: 1,
    };
    registry.watch("big", watcher.clone(), Some(read));
    deliver(&registry, "big", 2, &metrics);
    drop(held);
    registry.settled().await;
    assert_eq!(frames(&watcher), ["big 2"]);
}

/// A session's task that ends mid-event (here its runtime goes away)
/// does not leave the session busy (the dispatcher would wait for it),
/// and not before the chunks it handed over are queued: until then the
/// session's next events must still come after them.
#[test]
fn a_sessions_task_ended_mid_event_leaves_it_not_busy_once_its_chunks_are_queued() {
    let (metrics, registry, big) = big_session(QUEUED_AT_ONCE + 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let held = runtime.block_on(deliver_held(&registry, 1, &metrics));
    drop(runtime);
    assert!(registry.fanouts.busy("big"), "its chunks are not queued");
    drop(held);
    until("not busy", || !registry.fanouts.busy("big"));
    assert!(big.iter().all(|(h, _)| frames(h) == ["big 1"]));
}

/// A large session's frame is queued by its task after its position
/// moved: `delivered()` (what a REST or MCP broadcast waits for) waits for
/// the queueing too, and only for events up to its own.
#[tokio::test]
async fn delivered_waits_for_a_large_sessions_frame_to_be_queued_for_everyone() {
    let (metrics, registry, big) = big_session(FANOUT_CHUNK + 1);
    deliver(&registry, "big", 1, &metrics);
    assert_eq!(registry.position("big").map(|p| p.offset), Some(1));
    let mut waiting = std::pin::pin!(registry.delivered("big", "e", 1));
    assert!(waiting.as_mut().now_or_never().is_none());
    waiting.await;
    assert!(big.iter().all(|(h, _)| h.outbox().queued_bytes() > 0));

    deliver(&registry, "big", 2, &metrics);
    assert!(registry.delivered("big", "e", 1).now_or_never().is_some());
    assert!(registry.delivered("big", "e", 2).now_or_never().is_none());
}

/// Two tasks delivering a large session's events one after the other (each
/// waits for the previous offset) still have them queued in order for
/// every client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_sessions_events_delivered_from_two_tasks_reach_every_client_in_order() {
    const EVENTS: u64 = 400;
    let metrics = Arc::new(Metrics::new("i"));
    let registry = Arc::new(Registry::default());
    let big: Vec<ClientHandle> = (0..FANOUT_CHUNK * 2)
        .map(|i| {
            let h = named(&format!("big{i}"), EVENTS as usize + 1);
            registry.insert("big", h.clone());
            h
        })
        .collect();
    deliver(&registry, "big", 1, &metrics);
    let deliverers: Vec<_> = (0..2u64)
        .map(|parity| {
            let (registry, metrics) = (registry.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || {
                for offset in (2..=EVENTS).filter(|o| o % 2 == parity) {
                    let (e, out) = event("big", offset);
                    // Refused until the previous offset was delivered.
                    while let Delivery::Gap { .. } =
                        registry.deliver_logged(&e, &out, false, &metrics)
                    {
                        std::hint::spin_loop();
                    }
                }
            })
        })
        .collect();
    for d in deliverers {
        d.await.unwrap();
    }
    registry.settled().await;
    let expected: Vec<String> = (1..=EVENTS).map(|o| format!("big {o}")).collect();
    for h in &big {
        assert_eq!(frames(h), expected);
    }
}

/// A session's last client leaving (or last watcher) takes its
/// delivery position and recent events with it: nothing per session
/// stays behind once nobody here subscribes.
#[test]
fn the_last_local_subscriber_leaving_forgets_the_sessions_delivery_state() {
    let metrics = Arc::new(Metrics::new("i"));
    let registry = Registry::default();
    let joining = registry.keep_recent("s");
    let (a, b) = (named("a", 8), named("b", 8));
    registry.insert("s", a.clone());
    registry.insert("s", b.clone());
    deliver(&registry, "s", 1, &metrics);
    assert_eq!(registry.delivery_state_len(), (1, 1));
    assert!(registry.remove("s", "a", a.conn_id));
    assert_eq!(registry.delivery_state_len(), (1, 1), "b is still here");
    assert!(registry.remove("s", "b", b.conn_id));
    assert_eq!(registry.delivery_state_len(), (0, 0));
    drop(joining);

    let joining = registry.keep_recent("w");
    let watcher = named("w", 8);
    registry.watch("w", watcher.clone(), None);
    deliver(&registry, "w", 1, &metrics);
    assert_eq!(registry.delivery_state_len(), (1, 1));
    registry.unwatch("w", watcher.conn_id);
    assert_eq!(registry.delivery_state_len(), (0, 0));
    drop(joining);
    assert!(registry.recent.lock().is_empty());
}

/// Delivered events are kept for a join only while one is under way:
/// an idle session holds no frames.
#[test]
fn events_are_kept_only_while_a_join_is_under_way() {
    let metrics = Arc::new(Metrics::new("i"));
    let registry = Registry::default();
    registry.insert("s", named("a", 8));
    deliver(&registry, "s", 1, &metrics);
    assert_eq!(registry.delivery_state_len(), (1, 0));
    let first = registry.keep_recent("s");
    let second = registry.keep_recent("s");
    for offset in 2..=3 {
        deliver(&registry, "s", offset, &metrics);
    }
    assert_eq!(registry.delivery_state_len(), (1, 2));
    drop(first);
    assert_eq!(
        registry.delivery_state_len(),
        (1, 2),
        "a join still needs them"
    );
    drop(second);
    assert_eq!(registry.delivery_state_len(), (1, 0));
    assert!(registry.recent.lock().is_empty());
}

#[test]
fn a_slow_consumer_is_counted_once_however_many_frames_it_refuses() {
    let metrics = Metrics::new("i");
    let h = handle(1);
    assert!(h.send(Outbound::reply("a".into(), "broadcast"), &metrics));
    assert!(!h.send(Outbound::reply("b".into(), "broadcast"), &metrics));
    assert!(!h.send(Outbound::reply("c".into(), "broadcast"), &metrics));
    assert_eq!(h.close_reason(), Some(CloseReason::SlowConsumer));
    assert_eq!(metrics.slow_consumer_disconnects.get(), 1);
}
