//! The flusher: one thread of the process's own that queues a large
//! fan-out's frames for its connections and writes them
//! ([`Outbox::send_deferred`], [`Outbox::flush_deferred`]).
//!
//! A large session's event goes to each of its recipients at once
//! (`hub/fanout.rs`). Queueing it is a lock and a reference count per
//! recipient; writing it is the expensive part (a `writev` each, which on
//! loopback also runs the receiver's TCP). Done by the connections' own
//! tasks, those writes filled the runtime's worker threads, and a small
//! session's connection, woken meanwhile, waited for a worker behind them
//! and for the worker's core. Done here, queueing included, they run one
//! after the other on this thread: the worker threads keep no part of a
//! large fan-out but handing it over. The operating system, not the order of a run queue,
//! shares the cores between the fan-out and the other sessions: a worker
//! woken for a small session's frame gets a core as soon as the scheduler
//! lets a thread that slept preempt one that ran (docs/performance.md,
//! "Isolation").
//!
//! Work comes as closures that queue frames and list the connections to
//! flush. Each connection is listed at most once until flushed (the
//! outbox's flag), so what waits here is bounded by the connections, not
//! the events; and the thread takes in new work every
//! [`FLUSHED_BETWEEN_LOOKS`] flushes, so a fan-out faster than it batches
//! a connection's frames into one write. A socket that does not take all,
//! a connection whose task is writing, or one with no write half (an MCP
//! watch) gets its task woken instead. Without the thread (it could not be
//! started) the work runs on the caller and every listed connection's task
//! is woken, as a small session's is.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};

use super::Outbox;
use crate::metrics::Metrics;

/// Connections flushed between looks for new work.
const FLUSHED_BETWEEN_LOOKS: usize = 256;

/// Queues frames, pushing each connection to flush (those for which
/// [`Outbox::send_deferred`] said so) onto the list it is given; the
/// metrics are the work's.
type Queueing<R> = Box<dyn FnOnce(&mut Vec<Arc<R>>, &Metrics) + Send>;

/// Frames to queue, with the metrics their writes count in.
struct Work<R> {
    metrics: Arc<Metrics>,
    queue: Queueing<R>,
}

/// Connections a [`Work`] listed, not flushed yet.
struct Listed<R> {
    metrics: Arc<Metrics>,
    recipients: std::vec::IntoIter<Arc<R>>,
}

impl<R> Work<R> {
    fn run(self) -> Listed<R> {
        let mut recipients = Vec::new();
        let (listing, metrics) = (&mut recipients, &*self.metrics);
        let queue = self.queue;
        // A panic while queueing must not end the thread (stranding the
        // work behind it); what was listed before it is still flushed.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            queue(listing, metrics)
        }));
        Listed {
            metrics: self.metrics,
            recipients: recipients.into_iter(),
        }
    }
}

/// See the module docs. Its thread starts with the first work and ends
/// when the flusher is dropped (after the work handed to it).
pub struct Flusher<R> {
    thread: OnceLock<Option<Sender<Work<R>>>>,
}

impl<R> Default for Flusher<R> {
    fn default() -> Self {
        Flusher {
            thread: OnceLock::new(),
        }
    }
}

impl<R: AsRef<Outbox> + Send + Sync + 'static> Flusher<R> {
    /// Runs `queue` on the flusher's thread, after the work handed over
    /// before it, then has the queued frames of the connections it listed
    /// written, in the order listed.
    pub fn queue_and_flush(
        &self,
        metrics: &Arc<Metrics>,
        queue: impl FnOnce(&mut Vec<Arc<R>>, &Metrics) + Send + 'static,
    ) {
        let work = Work {
            metrics: metrics.clone(),
            queue: Box::new(queue),
        };
        let unsent = match self.thread.get_or_init(start) {
            Some(thread) => thread.send(work).err().map(|e| e.0),
            None => Some(work),
        };
        if let Some(work) = unsent {
            for r in work.run().recipients {
                R::as_ref(&r).wake_deferred();
            }
        }
    }
}

#[cfg(test)]
impl<R: AsRef<Outbox> + Send + Sync + 'static> Flusher<R> {
    /// Holds the thread: the work handed over after this call waits until
    /// the returned sender is dropped.
    pub fn hold(&self, metrics: &Arc<Metrics>) -> Sender<()> {
        let (release, released) = mpsc::channel::<()>();
        self.queue_and_flush(metrics, move |_, _| {
            let _ = released.recv();
        });
        release
    }
}

fn start<R: AsRef<Outbox> + Send + Sync + 'static>() -> Option<Sender<Work<R>>> {
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

fn run<R: AsRef<Outbox>>(work: Receiver<Work<R>>) {
    let mut listed: VecDeque<Listed<R>> = VecDeque::new();
    loop {
        if listed.is_empty() {
            match work.recv() {
                Ok(w) => listed.push_back(w.run()),
                Err(_) => return,
            }
        }
        // Queued before the flushes: a connection listed already writes
        // the new frames with the ones it had.
        while let Ok(w) = work.try_recv() {
            listed.push_back(w.run());
        }
        flush_some(&mut listed, FLUSHED_BETWEEN_LOOKS);
    }
}

/// Flushes the first `count` connections listed.
fn flush_some<R: AsRef<Outbox>>(listed: &mut VecDeque<Listed<R>>, mut count: usize) {
    while count > 0 {
        let Some(first) = listed.front_mut() else {
            return;
        };
        let Some(r) = first.recipients.next() else {
            listed.pop_front();
            continue;
        };
        count -= 1;
        let outbox = R::as_ref(&r);
        // A panic must not leave the connection's flush asked for and
        // never done (nor end the thread, stranding the work queued).
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            outbox.flush_deferred(&first.metrics)
        }));
        if flushed.is_err() {
            outbox.wake_deferred();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::outbox::{Outbound, RecordingWrite, WakeCount, until};

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
        let outbox = Outbox::new(64, 1 << 20);
        let c = Connection {
            task: WakeCount::watching(&outbox),
            outbox,
            written: Arc::default(),
        };
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

    /// Hands the flusher work that queues `texts` (one event each) for
    /// `connections`; returns the thread the work ran on.
    fn queue_and_flush(
        flusher: &Flusher<Connection>,
        connections: &[Arc<Connection>],
        texts: &'static [&'static str],
    ) -> std::sync::mpsc::Receiver<Option<String>> {
        let (ran_on, thread) = std::sync::mpsc::channel();
        let connections = connections.to_vec();
        flusher.queue_and_flush(&Arc::new(Metrics::new("i")), move |listed, _| {
            for text in texts {
                listed.extend(send_deferred(&connections, text));
            }
            let _ = ran_on.send(std::thread::current().name().map(String::from));
        });
        thread
    }

    /// The flusher's thread queues the frames and writes each listed
    /// connection's, all of them in one write however many events came
    /// before it flushed, and wakes no task; a connection without a write
    /// half gets its task woken.
    #[test]
    fn the_flusher_queues_and_writes_listed_connections_frames_without_waking_their_tasks() {
        let flusher = Flusher::default();
        let attached: Vec<_> = (0..300).map(|_| connection(true)).collect();
        let watch = connection(false);
        let mut everyone = attached.clone();
        everyone.push(watch.clone());
        let ran_on = queue_and_flush(&flusher, &everyone, &["a", "b"]);
        assert_eq!(
            ran_on.recv().unwrap().as_deref(),
            Some("mcp-hub-flusher"),
            "queued off the caller's thread"
        );

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
        queue_and_flush(&flusher, &attached, &["c"]);
        until("the next event written", || {
            attached
                .iter()
                .all(|c| c.written.frames.lock().unwrap().len() == 3)
        });
    }

    /// A panic while queueing ends neither the thread nor the flush of
    /// the connections listed before it.
    #[test]
    fn a_panic_while_queueing_still_flushes_what_was_listed_and_the_next_work() {
        let flusher = Flusher::default();
        let first = connection(true);
        let listed_first = first.clone();
        flusher.queue_and_flush(&Arc::new(Metrics::new("i")), move |listed, _| {
            listed.extend(send_deferred(&[listed_first], "a"));
            panic!("queueing failed");
        });
        let second = connection(true);
        queue_and_flush(&flusher, std::slice::from_ref(&second), &["b"]);
        until("both written", || {
            first.written.frames.lock().unwrap().len() == 1
                && second.written.frames.lock().unwrap().len() == 1
        });
    }
}
