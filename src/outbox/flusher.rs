//! The flusher: one thread of the process's own that writes the queued
//! frames of a large fan-out's connections ([`Outbox::flush_deferred`]).
//!
//! A large session's event is queued for each of its recipients at once
//! (`hub/fanout.rs`); writing it is the expensive part (a `writev` each,
//! which on loopback also runs the receiver's TCP). Done by the
//! connections' own tasks, those writes filled the runtime's worker threads
//! and a small session's connection, woken meanwhile, waited for a worker
//! behind them, and for the worker's core. Here they run one after the
//! other on this thread instead, so the worker threads stay free for the
//! other sessions, and the operating system, not the order of a run queue,
//! shares the cores between the fan-out and them: a worker woken for a
//! small session's frame gets a core as soon as the scheduler lets a
//! thread that slept preempt one that ran (docs/performance.md,
//! "Isolation").
//!
//! Each connection is listed at most once until flushed (the outbox's
//! flag), so what waits here is bounded by the connections, not the
//! events: a fan-out faster than this thread batches each connection's
//! frames into one write. A socket that does not take all, a connection
//! whose task is writing, or one with no write half (an MCP watch) gets its
//! task woken instead. Without the thread (it could not be started) every
//! listed connection's task is woken, as a small session's is.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};

use super::Outbox;
use crate::metrics::Metrics;

/// Connections to flush, with the metrics their writes count in.
struct Batch<R> {
    metrics: Arc<Metrics>,
    recipients: Vec<Arc<R>>,
}

/// See the module docs. Its thread starts with the first flush and ends
/// when the flusher is dropped (after what was handed to it).
pub struct Flusher<R> {
    thread: OnceLock<Option<Sender<Batch<R>>>>,
}

impl<R> Default for Flusher<R> {
    fn default() -> Self {
        Flusher {
            thread: OnceLock::new(),
        }
    }
}

impl<R: AsRef<Outbox> + Send + Sync + 'static> Flusher<R> {
    /// Has the queued frames of `recipients` (each listed by
    /// [`Outbox::send_deferred`]) written, in the order given.
    pub fn flush(&self, recipients: Vec<Arc<R>>, metrics: &Arc<Metrics>) {
        if recipients.is_empty() {
            return;
        }
        let batch = Batch {
            metrics: metrics.clone(),
            recipients,
        };
        let unsent = match self.thread.get_or_init(start) {
            Some(thread) => thread.send(batch).err().map(|e| e.0),
            None => Some(batch),
        };
        if let Some(batch) = unsent {
            for r in batch.recipients {
                R::as_ref(&r).wake_deferred();
            }
        }
    }
}

fn start<R: AsRef<Outbox> + Send + Sync + 'static>() -> Option<Sender<Batch<R>>> {
    let (sender, receiver) = mpsc::channel();
    let started = std::thread::Builder::new()
        .name("mcp-hub-flusher".into())
        .spawn(move || run(receiver));
    match started {
        Ok(_) => Some(sender),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the flusher thread: connections write their own frames");
            None
        }
    }
}

fn run<R: AsRef<Outbox>>(batches: Receiver<Batch<R>>) {
    while let Ok(batch) = batches.recv() {
        for r in &batch.recipients {
            let outbox = R::as_ref(r);
            // A panic must not leave the connection's flush asked for and
            // never done (nor end the thread, stranding the batches queued).
            let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                outbox.flush_deferred(&batch.metrics)
            }));
            if flushed.is_err() {
                outbox.wake_deferred();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::outbox::{Outbound, RecordingWrite, WakeCount};

    /// A connection: its outbox, its task's wake-ups, and what its write
    /// half wrote (none attached: an MCP watch).
    struct Connection {
        outbox: Outbox,
        task: Arc<WakeCount>,
        written: Arc<RecordingWrite>,
    }

    impl AsRef<Outbox> for Connection {
        fn as_ref(&self) -> &Outbox {
            &self.outbox
        }
    }

    fn connection(attached: bool) -> Arc<Connection> {
        let c = Connection {
            outbox: Outbox::new(64, 1 << 20),
            task: Arc::default(),
            written: Arc::default(),
        };
        c.task.runs(&c.outbox);
        if attached {
            c.outbox.attach(&c.written);
        }
        Arc::new(c)
    }

    /// Queues `text` for each, its flush deferred: those to list.
    fn send_deferred(connections: &[Arc<Connection>], text: &str) -> Vec<Arc<Connection>> {
        let metrics = Metrics::new("i");
        connections
            .iter()
            .filter(|c| {
                c.outbox
                    .send_deferred(Outbound::reply(text.into(), "broadcast"), &metrics)
            })
            .cloned()
            .collect()
    }

    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The flusher's thread writes each listed connection's frames, all of
    /// them in one write however many events came before it ran, and wakes
    /// no task; a connection without a write half gets its task woken.
    #[test]
    fn the_flusher_writes_listed_connections_frames_without_waking_their_tasks() {
        let metrics = Arc::new(Metrics::new("i"));
        let flusher = Flusher::default();
        let attached: Vec<_> = (0..300).map(|_| connection(true)).collect();
        let watch = connection(false);
        let mut everyone = attached.clone();
        everyone.push(watch.clone());
        let listed = send_deferred(&everyone, "a");
        assert_eq!(listed.len(), everyone.len());
        assert!(send_deferred(&everyone, "b").is_empty(), "listed once");
        flusher.flush(listed, &metrics);

        until("every frame written", || {
            attached.iter().all(|c| c.outbox.queued_bytes() == 0)
        });
        until("the watch woken", || watch.task.count() == 1);
        for c in &attached {
            assert_eq!(*c.written.frames.lock().unwrap(), ["a", "b"]);
            assert_eq!(c.written.writes.load(Ordering::Relaxed), 1);
            assert_eq!(c.task.count(), 0);
        }
        assert_eq!(watch.outbox.queued_bytes(), 2, "its task writes");

        // Flushed, a connection is listed again by the next event.
        flusher.flush(send_deferred(&attached, "c"), &metrics);
        until("the next event written", || {
            attached
                .iter()
                .all(|c| c.written.frames.lock().unwrap().len() == 3)
        });
    }
}
