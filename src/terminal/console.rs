//! The local side of the terminal: input lines from stdin, the transcript
//! to stdout and stderr (or, in tests, to memory).
//!
//! Stdin is read by a dedicated thread feeding a channel rather than by
//! `tokio::io::stdin()`: tokio's stdin is a blocking read that cannot be
//! cancelled, so after `/quit` (or the hub closing the connection) with the
//! terminal still open, shutting the runtime down would hang until the user
//! pressed Enter. A plain thread blocked in `read` does not keep the process
//! alive.

use std::io::{BufRead, Write};

use tokio::sync::mpsc;

/// Input lines buffered between the stdin thread and the event loop.
const INPUT_QUEUE: usize = 64;

/// Reads stdin line by line on its own thread. The channel closes at end
/// of input (or on a read error, which ends input just the same).
pub(super) fn spawn_stdin_reader() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {
                        // Invalid UTF-8 is replaced rather than ending input.
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_string();
                        if tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!("error: reading stdin: {e}");
                        break;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // Without an input thread the channel is closed at once, which is
        // treated as empty input.
        eprintln!("error: cannot start the stdin reader: {e}");
    }
    rx
}

/// Where the transcript goes: stdout and stderr, or (in tests) memory.
#[derive(Clone, Default)]
pub(super) struct Output {
    pub(super) captured: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
}

impl Output {
    /// One transcript entry on stdout. A closed stdout (`| head`) is
    /// ignored: the session goes on, as for a terminal that scrolled away.
    pub(super) fn say(&self, text: &str) {
        if let Some(buf) = &self.captured {
            buf.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(text.to_string());
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// A local message (bad input, warnings) on stderr.
    pub(super) fn note(&self, text: &str) {
        if let Some(buf) = &self.captured {
            buf.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("stderr: {text}"));
            return;
        }
        let _ = std::io::stdout().flush();
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }
}
