//! `mcp-hub terminal`: an interactive (or scripted) client of a hub.
//!
//! It registers in a session, turns every typed line into a request (plain
//! text is a `whatsapp_ai_command`, `/send`, `/contacts`, `/history`,
//! `/broadcast`, `/ping` map to the other requests, see [`input`]) and
//! prints every event the hub sends as it arrives (see [`format`]).
//!
//! With piped input it is scriptable: at the end of input it waits (at most
//! `--wait-ms`) for the responses to its requests, keeps printing events for
//! `--linger-ms`, and exits 0. If the connection cannot be made or the hub
//! closes it, it says why on stderr and exits 1.
//!
//! Stdin is read by a dedicated thread feeding a channel rather than by
//! `tokio::io::stdin()`: tokio's stdin is a blocking read that cannot be
//! cancelled, so after `/quit` (or the hub closing the connection) with the
//! terminal still open, shutting the runtime down would hang until the user
//! pressed Enter. A plain thread blocked in `read` does not keep the process
//! alive.

pub mod format;
pub mod input;

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::TerminalArgs;
use format::Names;
use input::{HELP, Input, parse_line};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the hub to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests in progress at once when typing; further input waits (the
/// hub's default cap per connection is 16). Piped input is sent one
/// request at a time, so a script's lines take effect in order.
const MAX_OUTSTANDING: usize = 8;
/// Input lines buffered between the stdin thread and the event loop.
const INPUT_QUEUE: usize = 64;

/// Runs the terminal client until `/quit`, end of input, or the connection
/// failing; the exit code is 0 for the first two, 1 otherwise.
pub async fn run(args: TerminalArgs) -> ExitCode {
    let scripted = !std::io::stdin().is_terminal();
    let lines = spawn_stdin_reader();
    match Terminal::new(args, scripted).run(lines).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads stdin line by line on its own thread. The channel closes at end
/// of input (or on a read error, which ends input just the same).
fn spawn_stdin_reader() -> mpsc::Receiver<String> {
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

/// Why the terminal stopped with a failure.
#[derive(Debug)]
enum Failure {
    Connect(String),
    Registration(String),
    ClosedByHub(Option<CloseFrame>),
    Lost(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Registration(e) => write!(f, "registration failed: {e}"),
            Failure::ClosedByHub(Some(frame)) => {
                let code = u16::from(frame.code);
                if frame.reason.is_empty() {
                    write!(f, "connection closed by the hub: {code}")
                } else {
                    write!(
                        f,
                        "connection closed by the hub: {code} {}",
                        format::clean(&frame.reason)
                    )
                }
            }
            Failure::ClosedByHub(None) => {
                write!(f, "connection closed by the hub (no close code)")
            }
            Failure::Lost(e) => write!(f, "connection lost: {e}"),
        }
    }
}

/// Where the session is: reading input, or past its end.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Reading,
    /// Input ended; waiting for outstanding responses until the deadline.
    Draining(Instant),
    /// Only printing events until the deadline.
    Lingering(Instant),
}

struct Pending {
    kind: &'static str,
    sent: Instant,
}

struct Terminal {
    args: TerminalArgs,
    /// Stdin is not a terminal: echo each input line into the transcript
    /// (so the output shows what was asked) and send one request at a time.
    scripted: bool,
    pending: HashMap<String, Pending>,
    next_id: u64,
    names: Names,
}

impl Terminal {
    fn new(args: TerminalArgs, scripted: bool) -> Self {
        Terminal {
            args,
            scripted,
            pending: HashMap::new(),
            next_id: 1,
            names: Names::default(),
        }
    }

    fn max_outstanding(&self) -> usize {
        if self.scripted { 1 } else { MAX_OUTSTANDING }
    }

    async fn run(&mut self, mut lines: mpsc::Receiver<String>) -> Result<(), Failure> {
        let mut ws = self.connect().await?;
        self.register(&mut ws).await?;
        let wait = Duration::from_millis(self.args.wait_ms);
        let linger = Duration::from_millis(self.args.linger_ms);
        let mut phase = Phase::Reading;
        loop {
            if matches!(phase, Phase::Draining(_)) && self.pending.is_empty() {
                phase = Phase::Lingering(Instant::now() + linger);
            }
            let deadline = match phase {
                Phase::Reading => None,
                Phase::Draining(d) | Phase::Lingering(d) => Some(d),
            };
            let accepting =
                matches!(phase, Phase::Reading) && self.pending.len() < self.max_outstanding();
            tokio::select! {
                msg = ws.next() => self.on_message(msg)?,
                line = lines.recv(), if accepting => match line {
                    Some(line) => {
                        if !self.on_line(&mut ws, &line).await? {
                            self.close(&mut ws).await;
                            return Ok(());
                        }
                    }
                    None => phase = Phase::Draining(Instant::now() + wait),
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    match phase {
                        Phase::Draining(_) => {
                            note(&format!(
                                "warning: no response to {} request(s) after {} ms; not waiting longer",
                                self.pending.len(),
                                self.args.wait_ms
                            ));
                            self.pending.clear();
                        }
                        Phase::Lingering(_) | Phase::Reading => {
                            self.close(&mut ws).await;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<Ws, Failure> {
        let url = self.args.url.as_str();
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((ws, _response))) => Ok(ws),
            Ok(Err(e)) => Err(Failure::Connect(format!("{url}: {e}"))),
            Err(_) => Err(Failure::Connect(format!(
                "{url}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Registers and prints the banner. Events that arrive first are
    /// printed too; an error before the confirmation is fatal.
    async fn register(&mut self, ws: &mut Ws) -> Result<(), Failure> {
        let mut register = json!({
            "type": "register",
            "client_name": self.args.name,
            "session": self.args.session,
        });
        if let Some(id) = &self.args.client_id {
            register["client_id"] = json!(id);
        }
        send(ws, &register).await?;
        let deadline = Instant::now() + REGISTER_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(msg) => msg,
                Err(_) => {
                    return Err(Failure::Registration(format!(
                        "no registration_confirmed within {} s",
                        REGISTER_TIMEOUT.as_secs()
                    )));
                }
            };
            let Some(Ok(Message::Text(text))) = msg else {
                self.on_message(msg)?;
                continue;
            };
            let event = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
            match event.get("type").and_then(Value::as_str) {
                Some("registration_confirmed") => {
                    self.names.learn(&event);
                    say(&format::banner(&self.args.url, &event));
                    return Ok(());
                }
                Some("error") => {
                    return Err(Failure::Registration(format::format_event(
                        &event,
                        &self.names,
                    )));
                }
                _ => self.on_text(&text),
            }
        }
    }

    /// Handles one thing read from the socket; `Err` ends the session.
    fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), Failure> {
        match msg {
            Some(Ok(Message::Text(text))) => {
                self.on_text(&text);
                Ok(())
            }
            Some(Ok(Message::Binary(bytes))) => {
                say(&format!("? binary frame of {} bytes", bytes.len()));
                Ok(())
            }
            Some(Ok(Message::Close(frame))) => Err(Failure::ClosedByHub(frame)),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
            Some(Err(e)) => Err(Failure::Lost(e.to_string())),
            None => Err(Failure::Lost(
                "the stream ended without a close frame".into(),
            )),
        }
    }

    fn on_text(&mut self, text: &str) {
        let Ok(event) = serde_json::from_str::<Value>(text) else {
            return say(&format::format_frame(text, &self.names));
        };
        self.names.learn(&event);
        let mut line = format::format_event(&event, &self.names);
        let answered = match event.get("type").and_then(Value::as_str) {
            Some("response" | "error" | "pong") => {
                format::request_id(&event).and_then(|id| self.pending.remove(&id))
            }
            _ => None,
        };
        if let Some(p) = answered
            && p.kind == "ping"
        {
            let _ = write!(line, " ({} ms)", p.sent.elapsed().as_millis());
        }
        say(&line);
    }

    /// Says goodbye: sends a close frame and waits briefly for the hub's,
    /// still printing whatever arrives before it.
    async fn close(&mut self, ws: &mut Ws) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = ws.close(None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(text) = msg {
                    self.on_text(&text);
                }
            }
        })
        .await;
    }

    /// Handles one input line; `Ok(false)` means quit.
    async fn on_line(&mut self, ws: &mut Ws, line: &str) -> Result<bool, Failure> {
        match parse_line(line) {
            Input::Nothing => {}
            Input::Help => say(HELP),
            Input::Quit => return Ok(false),
            Input::Invalid(msg) => note(&format!("error: {msg}")),
            Input::Request { kind, mut body } => {
                let id = self.next_id.to_string();
                self.next_id += 1;
                body["request_id"] = json!(id);
                if self.scripted {
                    say(&format!("[#{id}] > {}", format::clean(line.trim())));
                }
                self.pending.insert(
                    id,
                    Pending {
                        kind,
                        sent: Instant::now(),
                    },
                );
                send(ws, &body).await?;
            }
        }
        Ok(true)
    }
}

async fn send(ws: &mut Ws, body: &Value) -> Result<(), Failure> {
    ws.send(Message::text(body.to_string()))
        .await
        .map_err(|e| Failure::Lost(format!("sending failed: {e}")))
}

/// One transcript entry on stdout. A closed stdout (`| head`) is ignored:
/// the session goes on, as it does for a terminal that scrolled away.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// A local message (bad input, warnings) on stderr.
fn note(text: &str) {
    let _ = std::io::stdout().flush();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}
