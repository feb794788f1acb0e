//! `mcp-hub terminal` driven through stdin against a real hub, as a
//! newcomer would use it from the README walk-through. The terminal client
//! is the spawned process under test; the hub runs in-process (or as a
//! spawned process when the test restarts it).

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

fn terminal(url: &str, name: &str) -> Child {
    Command::new(hub_binary())
        .args([
            "terminal",
            "--url",
            url,
            "--name",
            name,
            "--linger-ms",
            "300",
        ])
        .env_remove("MCP_HUB_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn terminal client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_terminal_sends_lists_and_reads_history() {
    let hub = TestHub::start(&[]).await;
    let (mut watcher, _) = WsClient::register(&hub.ws_url(), "default", "watcher").await;

    let mut t = terminal(&hub.ws_url(), "t1");
    let mut stdin = t.stdin.take().expect("stdin");
    stdin
        .write_all(
            b"send john a message saying hello from the terminal\n/contacts\n/history john\n",
        )
        .await
        .expect("write stdin");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), t.wait_with_output())
        .await
        .expect("terminal exits after stdin ends")
        .expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{text}", out.status);
    assert!(text.contains("→ John: hello from the terminal"), "{text}");
    assert!(
        text.contains("contacts: John, Jane, Alice, Bob, Maria, Mom (6)"),
        "{text}"
    );
    assert!(text.contains("history with John"), "{text}");

    let ev = watcher.recv_type("message_event").await;
    assert_eq!(ev["message"], "hello from the terminal");
    assert_eq!(ev["contact"], "John");
}

/// `/send-file` uploads the file to the hub's media endpoint, then sends it:
/// the hub's `message_event` for the send names a document and the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_file_uploads_to_the_hub_and_sends_a_document() {
    let hub = TestHub::start(&[]).await;
    let (mut watcher, _) = WsClient::register(&hub.ws_url(), "default", "watcher").await;
    let dir = TempDir::new();
    let path = dir.write("minutes 2024.pdf", "%PDF-1.4\n% minutes of the meeting\n");

    let mut t = terminal(&hub.ws_url(), "t1");
    let mut stdin = t.stdin.take().expect("stdin");
    let line = format!("/send-file John \"{}\" as promised\n", path.display());
    stdin.write_all(line.as_bytes()).await.expect("write stdin");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), t.wait_with_output())
        .await
        .expect("terminal exits after stdin ends")
        .expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{text}", out.status);
    assert!(text.contains("[#1] ok: sent minutes 2024.pdf"), "{text}");
    assert!(text.contains("→ John: document minutes 2024.pdf"), "{text}");

    let ev = watcher.recv_type("message_event").await;
    assert_eq!(ev["contact"], "John", "{ev}");
    assert_eq!(ev["direction"], "outgoing", "{ev}");
    assert_eq!(ev["media"]["kind"], "document", "{ev}");
    assert_eq!(ev["media"]["filename"], "minutes 2024.pdf", "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_terminals_see_each_other() {
    let hub = TestHub::start(&[]).await;
    let mut bob = terminal(&hub.ws_url(), "bob");
    let mut bob_out = BufReader::new(bob.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    wait_for_line(&mut bob_out, "connected to", &mut seen).await;

    let mut alice = terminal(&hub.ws_url(), "alice");
    let mut alice_in = alice.stdin.take().expect("stdin");
    // Bob sees Alice arrive, then her message.
    wait_for_line(&mut bob_out, "alice", &mut seen).await;
    alice_in
        .write_all(b"/send Jane see you at noon\n")
        .await
        .expect("write");
    wait_for_line(&mut bob_out, "Jane: see you at noon", &mut seen).await;
    drop(alice_in);
    let status = tokio::time::timeout(Duration::from_secs(20), alice.wait())
        .await
        .expect("alice exits")
        .expect("status");
    assert!(status.success());

    // Bob quits with /quit.
    let mut bob_in = bob.stdin.take().expect("stdin");
    bob_in.write_all(b"/quit\n").await.expect("write");
    let status = tokio::time::timeout(Duration::from_secs(20), bob.wait())
        .await
        .expect("bob exits")
        .expect("status");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_reports_an_unreachable_hub() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let t = terminal(&format!("ws://127.0.0.1:{port}/"), "lost");
    let out = tokio::time::timeout(Duration::from_secs(20), t.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.trim().is_empty(), "should say why it failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_reconnects_after_the_hub_restarts_and_says_what_it_resumed() {
    let port = free_port().to_string();
    let mut hub = HubProcess::start(&["--port", &port], &[]).await;
    let mut t = terminal(&hub.ws_url(), "phoenix");
    let mut t_in = t.stdin.take().expect("stdin");
    let mut out = BufReader::new(t.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    wait_for_line(&mut out, "connected to", &mut seen).await;
    t_in.write_all(b"/send John before the restart\n")
        .await
        .expect("write");
    wait_for_line(&mut out, "John: before the restart", &mut seen).await;

    // The hub restarts (SIGTERM closes with 1001); a new one takes the port.
    hub.sigterm();
    assert!(hub.wait_exit(Duration::from_secs(15)).await.is_some());
    let _hub = HubProcess::start(&["--port", &port], &[]).await;
    wait_for_line(&mut out, "reconnected to", &mut seen).await;
    // A restarted standalone hub lost the session's events: no resume, so
    // the terminal reloads the conversation it was in.
    wait_for_line(&mut out, "(could not resume: history reloaded)", &mut seen).await;
    // (the new hub kept nothing: "no messages with John").
    wait_for_line(&mut out, "messages with John", &mut seen).await;

    // The same terminal goes on working on the new connection.
    t_in.write_all(b"/send John after the restart\n")
        .await
        .expect("write");
    wait_for_line(&mut out, "John: after the restart", &mut seen).await;
    drop(t_in);
    let status = tokio::time::timeout(Duration::from_secs(20), t.wait())
        .await
        .expect("the terminal exits after stdin ends")
        .expect("status");
    assert!(status.success(), "{}", seen.join("\n"));
}
