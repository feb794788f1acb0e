//! `mcp-hub terminal`: an interactive (or scripted) client of a hub.
//!
//! It registers in a session, turns every typed line into a request (plain
//! text is a `whatsapp_ai_command`, `/send`, `/contacts`, `/history`,
//! `/buttons`, `/read`, `/templates`, `/broadcast`, `/ping` map to the
//! other requests, see [`input`]; `/send-file` first uploads the file over
//! HTTP, see [`upload`]) and prints every event the hub sends as it
//! arrives (see [`format`]; media, picked replies and the like are shown by
//! [`content`] with absolute URLs on the hub's HTTP origin).
//!
//! With piped input it is scriptable: at the end of input it waits (at most
//! `--wait-ms`) for the responses to its requests, keeps printing events for
//! `--linger-ms`, and exits 0. If the first connection cannot be made, it
//! says why on stderr and exits 1.
//!
//! A lost connection (hub restart, network, idle timeout) is re-established
//! with backoff (`--reconnect-attempts`), registering again under the same
//! client id with `since` = the last event offset/epoch seen, so the hub
//! replays what was missed: `(resumed: N missed events)`, or `(could not
//! resume: history reloaded)` and the contacts and last conversation are
//! loaded afresh. Input typed meanwhile waits and is sent afterwards. A
//! close with a 4xxx code (replaced, refused) is final: exit 1.

mod console;
pub mod content;
mod failure;
pub mod format;
pub mod input;
pub mod protocol;
mod upload;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::TerminalArgs;
use console::{Output, spawn_stdin_reader};
use failure::Failure;
use format::Names;
use input::{HELP, Input, parse_line};
use protocol::{AfterClose, Position, after_close, after_registration, answered_request, track};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the hub to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests in progress at once when typing; further input waits (the
/// hub's default cap per connection is 16). Piped input is sent one
/// request at a time, so a script's lines take effect in order.
const MAX_OUTSTANDING: usize = 8;
/// Reconnection delays: 200 ms doubling up to 5 s, with jitter so many
/// terminals cut off by one hub restart do not come back in lockstep.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

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

struct Pending {
    kind: &'static str,
    sent: Instant,
    /// What a successful answer means, where the hub's answer does not say
    /// it well (`/read`, `/send-file`).
    ok: Option<String>,
}

impl Pending {
    fn new(kind: &'static str, ok: Option<String>) -> Pending {
        Pending {
            kind,
            sent: Instant::now(),
            ok,
        }
    }
}

/// The kind of a [`Pending`] file upload (HTTP, not yet a request).
const UPLOAD: &str = "upload";

/// A `/send-file` whose upload ended: the `send` to make of it, or why not.
struct UploadDone {
    id: String,
    contact: String,
    file: upload::FileToSend,
    caption: Option<String>,
    result: Result<upload::Uploaded, upload::UploadError>,
}

struct Terminal {
    args: TerminalArgs,
    /// Stdin is not a terminal: echo each input line into the transcript
    /// (so the output shows what was asked) and send one request at a time.
    scripted: bool,
    pending: HashMap<String, Pending>,
    next_id: u64,
    names: Names,
    out: Output,
    /// The token of the current connection (`--token-file` is read again
    /// on every connect).
    token: Option<String>,
    /// The client id the hub confirmed, kept across reconnections.
    client_id: Option<String>,
    /// The last event offset seen (None before the event log existed).
    position: Option<Position>,
    /// The contact of the last message seen, whose history is reloaded
    /// when a resume fails.
    last_contact: Option<String>,
    /// Where upload tasks report (the receiver is [`Terminal::run`]'s).
    uploads: mpsc::Sender<UploadDone>,
    uploaded: Option<mpsc::Receiver<UploadDone>>,
}

/// After a 4401, how long to wait for `--token-file` to hold a new token.
const TOKEN_RENEW_WAIT: Duration = Duration::from_secs(60);

impl Terminal {
    fn new(args: TerminalArgs, scripted: bool) -> Self {
        let names = Names::with_origin(content::http_origin(&args.url));
        let (uploads, uploaded) = mpsc::channel(MAX_OUTSTANDING);
        Terminal {
            args,
            scripted,
            pending: HashMap::new(),
            next_id: 1,
            names,
            out: Output::default(),
            token: None,
            client_id: None,
            position: None,
            last_contact: None,
            uploads,
            uploaded: Some(uploaded),
        }
    }

    fn max_outstanding(&self) -> usize {
        if self.scripted { 1 } else { MAX_OUTSTANDING }
    }

    /// The session after connecting: input lines become requests and events
    /// are printed until `/quit`, or until input has ended, every request
    /// has been answered (or given up on) and the linger time has passed.
    async fn run(&mut self, mut lines: mpsc::Receiver<String>) -> Result<(), Failure> {
        self.token = self.read_token();
        let mut uploaded = self.uploaded.take().expect("run is called once");
        loop {
            match self.session(&mut lines, &mut uploaded).await {
                Err(Failure::ClosedByHub(Some(frame)))
                    if after_close(Some(u16::from(frame.code)), self.args.token_file.is_some())
                        == AfterClose::RenewToken =>
                {
                    self.out
                        .note("the hub closed the connection: token expired (4401)");
                    if !self.await_fresh_token().await {
                        return Err(Failure::TokenExpired);
                    }
                    // Requests in flight on the old connection are lost.
                    self.pending.clear();
                    self.out.note("reconnecting with the renewed token");
                }
                other => return other,
            }
        }
    }

    /// `--token-file` (read fresh) or `--token` / `MCP_HUB_TOKEN`.
    fn read_token(&self) -> Option<String> {
        if let Some(path) = &self.args.token_file {
            match std::fs::read_to_string(path) {
                Ok(t) if !t.trim().is_empty() => return Some(t.trim().to_string()),
                Ok(_) => {}
                Err(e) => self
                    .out
                    .note(&format!("warning: cannot read {}: {e}", path.display())),
            }
        }
        self.args.token.clone().filter(|t| !t.is_empty())
    }

    /// After a 4401: waits (bounded) for `--token-file` to hold a token
    /// other than the expired one. Without a token file there is nothing
    /// to wait for.
    async fn await_fresh_token(&mut self) -> bool {
        if self.args.token_file.is_none() {
            return false;
        }
        self.out
            .note("waiting for a renewed token in the token file");
        let deadline = Instant::now() + TOKEN_RENEW_WAIT;
        while Instant::now() < deadline {
            let fresh = self.read_token();
            if fresh.is_some() && fresh != self.token {
                self.token = fresh;
                return true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        false
    }

    /// One connection: connect, register, then serve input, events and
    /// finished uploads.
    async fn session(
        &mut self,
        lines: &mut mpsc::Receiver<String>,
        uploaded: &mut mpsc::Receiver<UploadDone>,
    ) -> Result<(), Failure> {
        let mut ws = self.connect().await?;
        self.register(&mut ws, false).await?;
        let wait = Duration::from_millis(self.args.wait_ms);
        let linger = Duration::from_millis(self.args.linger_ms);
        let mut input_open = true;
        let mut linger_until: Option<Instant> = None;
        loop {
            if !input_open && self.pending.is_empty() && linger_until.is_none() {
                linger_until = Some(Instant::now() + linger);
            }
            // A reload after a reconnection is waited for like any request.
            if !self.pending.is_empty() {
                linger_until = None;
            }
            // The oldest request is given up on `wait` after it was sent.
            let expiry = self.pending.values().map(|p| p.sent + wait).min();
            let accepting = input_open && self.pending.len() < self.max_outstanding();
            tokio::select! {
                msg = ws.next() => {
                    if let Err(failure) = self.on_message(msg) {
                        ws = self.reconnect(ws, failure).await?;
                    }
                }
                line = lines.recv(), if accepting => match line {
                    Some(line) => match self.on_line(&mut ws, &line).await {
                        Ok(true) => {}
                        Ok(false) => {
                            self.close(&mut ws).await;
                            return Ok(());
                        }
                        Err(failure) => ws = self.reconnect(ws, failure).await?,
                    },
                    None => input_open = false,
                },
                Some(done) = uploaded.recv() => {
                    if let Err(failure) = self.on_uploaded(&mut ws, done).await {
                        ws = self.reconnect(ws, failure).await?;
                    }
                }
                _ = sleep_until(expiry), if expiry.is_some() => self.expire(wait),
                _ = sleep_until(linger_until), if linger_until.is_some() => {
                    self.close(&mut ws).await;
                    return Ok(());
                }
            }
        }
    }

    /// Forgets the requests that have waited `wait` for a response.
    fn expire(&mut self, wait: Duration) {
        let now = Instant::now();
        let mut expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent + wait <= now)
            .map(|(id, _)| id.clone())
            .collect();
        expired.sort_by_key(|id| id.parse::<u64>().unwrap_or(u64::MAX));
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.out.note(&format!(
                    "warning: [#{id}] no response to {} after {} ms; not waiting longer",
                    p.kind,
                    wait.as_millis()
                ));
            }
        }
    }

    /// Connects and registers again after `failure`, with backoff, unless
    /// the failure is final or reconnecting is disabled. Requests sent on
    /// the lost connection are given up on (their answers went with it);
    /// input lines not yet read stay queued for the new connection.
    async fn reconnect(&mut self, old: Ws, failure: Failure) -> Result<Ws, Failure> {
        // Whatever state the old socket is in, it is done with.
        drop(old);
        if !failure.is_transient() || self.args.reconnect_attempts == 0 {
            return Err(failure);
        }
        self.out.note(&format!("{failure}; reconnecting"));
        // Uploads go on over HTTP; their sends will use the new connection.
        let (uploads, lost): (HashMap<_, _>, HashMap<_, _>) =
            self.pending.drain().partition(|(_, p)| p.kind == UPLOAD);
        self.pending = uploads;
        let mut lost: Vec<(String, Pending)> = lost.into_iter().collect();
        lost.sort_by_key(|(id, _)| id.parse::<u64>().unwrap_or(u64::MAX));
        for (id, p) in lost {
            self.out.note(&format!(
                "warning: [#{id}] connection lost before the response to {}",
                p.kind
            ));
        }
        let delays = ExponentialBuilder::default()
            .with_min_delay(RECONNECT_MIN)
            .with_max_delay(RECONNECT_MAX)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.args.reconnect_attempts)
            .build();
        let mut last = failure;
        for delay in delays {
            tokio::time::sleep(delay).await;
            let mut ws = match self.connect().await {
                Ok(ws) => ws,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match self.register(&mut ws, true).await {
                Ok(()) => return Ok(ws),
                Err(e) if e.is_transient() => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn connect(&self) -> Result<Ws, Failure> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = self.args.url.as_str();
        let mut request = url
            .into_client_request()
            .map_err(|e| Failure::Connect(format!("{url}: {e}")))?;
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Failure::Connect("the token is not a valid header value".into()))?;
            request.headers_mut().insert("authorization", value);
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await
        {
            Ok(Ok((ws, _response))) => Ok(ws),
            Ok(Err(e)) => Err(Failure::Connect(format!("{url}: {e}"))),
            Err(_) => Err(Failure::Connect(format!(
                "{url}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Registers and prints the banner (or, `resuming`, the resume line).
    /// Events that arrive first are printed too; an error before the
    /// confirmation is fatal.
    async fn register(&mut self, ws: &mut Ws, resuming: bool) -> Result<(), Failure> {
        let mut register = json!({
            "type": "register",
            "client_name": self.args.name,
            "session": self.args.session,
        });
        if let Some(id) = self.client_id.as_ref().or(self.args.client_id.as_ref()) {
            register["client_id"] = json!(id);
        }
        let since = self.position.clone().filter(|_| resuming);
        if let Some(p) = &since {
            register["since"] = json!({"offset": p.offset, "epoch": p.epoch});
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
                    self.client_id = format::str_field(&event, "client_id").map(str::to_string);
                    if resuming {
                        self.on_resumed(ws, &event, since).await?;
                    } else {
                        self.position = after_registration(None, &event).1;
                        self.out.say(&format::banner(&self.args.url, &event));
                    }
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

    /// Says whether the hub could replay what was missed. Without the event
    /// log (no `recovered` field) nothing was replayed: treated as not
    /// recovered, so the state is reloaded. The contacts come with every
    /// registration; the last conversation's history is asked for.
    async fn on_resumed(
        &mut self,
        ws: &mut Ws,
        confirmed: &Value,
        since: Option<Position>,
    ) -> Result<(), Failure> {
        let now = Position::of(confirmed);
        let (recovered, position) = after_registration(since.as_ref(), confirmed);
        self.out.say(&format!(
            "reconnected to {} (instance {})",
            format::clean(&self.args.url),
            format::clean(format::str_field(confirmed, "instance").unwrap_or("?")),
        ));
        self.position = position;
        if let (true, Some(since)) = (recovered, since) {
            // The replay follows; each replayed event moves the position.
            let missed = now.map_or(0, |n| n.offset.saturating_sub(since.offset));
            self.out.say(&format!("(resumed: {missed} missed events)"));
            return Ok(());
        }
        self.out.say("(could not resume: history reloaded)");
        if let Some(contact) = self.last_contact.clone() {
            let id = self.next_id.to_string();
            self.next_id += 1;
            let body = json!({
                "type": "whatsapp_command",
                "command": {"action": "get_history", "contact": contact},
                "request_id": id,
            });
            self.pending
                .insert(id, Pending::new("whatsapp_command", None));
            send(ws, &body).await?;
        }
        Ok(())
    }

    /// Handles one thing read from the socket; `Err` ends the connection.
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
                self.out
                    .say(&format!("? binary frame of {} bytes", bytes.len()));
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

    /// Prints one text frame and settles the request it answers, if any.
    fn on_text(&mut self, text: &str) {
        let event = serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
        let (position, duplicate) = track(self.position.as_ref(), &event);
        if duplicate {
            return; // shown already, before a reconnect
        }
        self.position = position;
        self.names.learn(&event);
        if event.get("type").and_then(Value::as_str) == Some("message_event")
            && let Some(contact) = format::str_field(&event, "contact")
        {
            self.last_contact = Some(contact.to_string());
        }
        // From the text, so that anything unrecognized is shown as sent.
        let mut line = format::format_frame(text, &self.names);
        let answered = answered_request(&event)
            // An upload's id is not a request's yet.
            .filter(|id| self.pending.get(*id).is_some_and(|p| p.kind != UPLOAD))
            .and_then(|id| self.pending.remove(id));
        if let Some(p) = &answered
            && p.kind == "ping"
        {
            let _ = write!(line, " ({} ms)", p.sent.elapsed().as_millis());
        }
        if let Some(ok) = answered.and_then(|p| p.ok)
            && event.get("response_type").and_then(Value::as_str) == Some("whatsapp_command_result")
            && event.pointer("/content/success").and_then(Value::as_bool) == Some(true)
        {
            let id = format::request_id(&event).unwrap_or_default();
            line = format!("[#{}] ok: {ok}", format::clean(&id));
        }
        self.out.say(&line);
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
            Input::Help => self.out.say(HELP),
            Input::Quit => return Ok(false),
            Input::Invalid(msg) => self.out.note(&format!("error: {msg}")),
            Input::Request { kind, mut body } => {
                let id = self.take_id(line);
                body["request_id"] = json!(id);
                let ok = success_text(&body);
                self.pending.insert(id, Pending::new(kind, ok));
                send(ws, &body).await?;
            }
            Input::SendFile {
                contact,
                path,
                caption,
            } => self.start_upload(line, contact, &path, caption),
        }
        Ok(true)
    }

    /// A new request id; piped input echoes the line with it.
    fn take_id(&mut self, line: &str) -> String {
        let id = self.next_id.to_string();
        self.next_id += 1;
        if self.scripted {
            self.out
                .say(&format!("[#{id}] > {}", format::clean(line.trim())));
        }
        id
    }

    /// `/send-file`: checks the file here (a bad path or type is a local
    /// error), then reads and uploads it on a task that reports to
    /// [`Terminal::on_uploaded`]. The upload counts as a request in flight.
    fn start_upload(
        &mut self,
        line: &str,
        contact: String,
        path: &std::path::Path,
        caption: Option<String>,
    ) {
        let file = match upload::check(path) {
            Ok(file) => file,
            Err(msg) => return self.out.note(&format!("error: {msg}")),
        };
        let origin = content::http_origin(&self.args.url);
        let Some(url) = origin.and_then(|o| upload::media_endpoint(&o, &self.args.session)) else {
            let msg = format!("cannot upload: no HTTP address for {}", self.args.url);
            return self.out.note(&format!("error: {}", format::clean(&msg)));
        };
        let target = upload::Target {
            url,
            token: self.token.clone(),
            timeout: Duration::from_millis(self.args.wait_ms),
        };
        let id = self.take_id(line);
        self.pending.insert(id.clone(), Pending::new(UPLOAD, None));
        let tx = self.uploads.clone();
        tokio::spawn(async move {
            let result = upload::upload(&file, &target).await;
            let done = UploadDone {
                id,
                contact,
                file,
                caption,
                result,
            };
            // The terminal has ended if nobody receives.
            let _ = tx.send(done).await;
        });
    }

    /// An upload ended: its `send` goes out under the same request id, or
    /// its failure is printed like a failed command.
    async fn on_uploaded(&mut self, ws: &mut Ws, done: UploadDone) -> Result<(), Failure> {
        if self.pending.remove(&done.id).is_none() {
            // Given up on already (and said so): nothing is sent.
            return Ok(());
        }
        let uploaded = match done.result {
            Ok(uploaded) => uploaded,
            Err(content) => {
                self.out
                    .say(&format!("[#{}] {}", done.id, format::failure(&content)));
                return Ok(());
            }
        };
        let mut body = upload::send_body(
            &done.contact,
            &done.file,
            &uploaded.id,
            done.caption.as_deref(),
        );
        body["request_id"] = json!(done.id);
        let size = uploaded
            .size
            .map(|n| format!(" ({})", content::human_size(n)))
            .unwrap_or_default();
        let ok = format!(
            "sent {}{size} to {}",
            format::clean(&done.file.filename),
            format::clean(&done.contact)
        );
        self.pending
            .insert(done.id, Pending::new("whatsapp_command", Some(ok)));
        send(ws, &body).await
    }
}

/// What a successful answer to `body` means, where the hub's answer does
/// not say it well: `/read`.
fn success_text(body: &Value) -> Option<String> {
    let command = body.get("command")?;
    match format::str_field(command, "action")? {
        "mark_read" => Some(format!(
            "marked the latest message from {} read",
            format::clean(format::str_field(command, "contact")?)
        )),
        _ => None,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn send(ws: &mut Ws, body: &Value) -> Result<(), Failure> {
    ws.send(Message::text(body.to_string()))
        .await
        .map_err(|e| Failure::Lost(format!("sending failed: {e}")))
}

#[cfg(test)]
mod tests;
