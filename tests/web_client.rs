//! The built-in web page (`web/index.html`) reconnects by itself and says
//! whether it resumed. The page's own script runs in Node with a minimal
//! DOM stand-in (`tests/web/harness.js`) against real hub processes, which
//! can restart it quickly; without Node the test is skipped with a
//! message. (The dashboard, this page's link to it, and how both pages
//! show an image in a message are tested in a real chromium:
//! tests/dashboard.rs.)

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Node's WebSocket is global from Node 22, behind a flag in 20 and 21.
fn node_websocket_flag() -> Option<&'static [&'static str]> {
    for flags in [&[][..], &["--experimental-websocket"][..]] {
        let ok = std::process::Command::new("node")
            .args(flags)
            .args([
                "-e",
                "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(flags);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_reconnects_after_the_hub_restarts() {
    let Some(flags) = have("node").then(node_websocket_flag).flatten() else {
        eprintln!("skipped: no Node.js with WebSocket to run the web page's script");
        return;
    };
    let port = free_port().to_string();
    let mut hub = HubProcess::start(&["--port", &port], &[]).await;
    let mut page = Command::new("node")
        .args(flags)
        .arg(repo_path("tests/web/harness.js"))
        .arg(repo_path("web/index.html"))
        .arg(&port)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut input = page.stdin.take().expect("stdin");
    let mut log = BufReader::new(page.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    wait_for_line(&mut log, "LOG registered as", &mut seen).await;
    input.write_all(b"/send John before\n").await.expect("type");
    wait_for_line(&mut log, "LOG → John: before", &mut seen).await;

    hub.sigterm();
    assert!(hub.wait_exit(Duration::from_secs(15)).await.is_some());
    wait_for_line(&mut log, "LOG connection lost (1001", &mut seen).await;
    let _hub = HubProcess::start(&["--port", &port], &[]).await;
    wait_for_line(&mut log, "LOG reconnected as", &mut seen).await;
    // A restarted standalone hub has no event log to resume from.
    wait_for_line(
        &mut log,
        "LOG (could not resume: history reloaded)",
        &mut seen,
    )
    .await;
    input.write_all(b"/send John after\n").await.expect("type");
    wait_for_line(&mut log, "LOG → John: after", &mut seen).await;
    let _ = page.kill().await;
}
