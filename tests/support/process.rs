//! The real `mcp-hub` binary on a free loopback port, for tests where the
//! process is the point: exit codes, signals, `kill -9`, `.env`, stderr.
//! Processes (the hub and helpers such as redis-server) are killed on drop,
//! so a failing test never leaves one running.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{Endpoint, START_TIMEOUT, TempDir};

/// Variables a developer's shell could leak into a test hub, besides every
/// `[env: ...]` the hub's own `--help` lists (see [`hub_env_vars`]).
const EXTRA_HUB_ENV: &[&str] = &[
    "MCP_SERVER_HOST",
    "MCP_SERVER_PORT",
    "INSTANCE_ID",
    "LOG_FORMAT",
    "REDIS_URL",
    "REDIS_KEY_PREFIX",
    "AI_PROVIDER",
    "CONTACTS_FILE",
    "AUTO_REPLY",
    "GEMINI_API_KEY",
    "OPENAI_API_KEY",
    "MCP_HUB_URL",
    "RUST_LOG",
];

pub fn hub_binary() -> &'static str {
    env!("CARGO_BIN_EXE_mcp-hub")
}

/// Every environment variable the hub reads: the `[env: NAME=...]` entries
/// of `mcp-hub serve --help` (so a setting added later is covered without
/// touching this file) plus [`EXTRA_HUB_ENV`].
pub fn hub_env_vars() -> &'static [String] {
    static VARS: OnceLock<Vec<String>> = OnceLock::new();
    VARS.get_or_init(|| {
        let help = std::process::Command::new(hub_binary())
            .args(["serve", "--help"])
            .env_clear()
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut vars: Vec<String> = EXTRA_HUB_ENV.iter().map(|s| s.to_string()).collect();
        for part in help.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && !vars.contains(&name) {
                vars.push(name);
            }
        }
        vars
    })
}

fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A hub process. Its stderr is captured for [`HubProcess::log`] and
/// printed when a test panics while the hub is alive.
pub struct HubProcess {
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// Set when the hub's stderr ends, i.e. the process (almost surely) died.
    stderr_closed: Arc<AtomicBool>,
    _cwd: TempDir,
}

impl Endpoint for HubProcess {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl HubProcess {
    /// Starts a hub (`serve --host 127.0.0.1 --port 0` plus `args`, in an
    /// empty directory, with none of the caller's hub settings in its
    /// environment except `envs`) and waits until `/ready` answers 200.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> HubProcess {
        let hub = Self::start_unready(args, envs).await;
        hub.wait_ready().await;
        hub
    }

    /// Starts a hub and waits only until it listens (for tests where it
    /// cannot become ready, e.g. Redis is down).
    pub async fn start_unready(args: &[&str], envs: &[(&str, &str)]) -> HubProcess {
        Self::start_unready_in(TempDir::new(), args, envs).await
    }

    /// Like [`HubProcess::start`], in a given working directory (e.g. one
    /// with a `.env`); the directory lives as long as the hub.
    pub async fn start_in(cwd: TempDir, args: &[&str], envs: &[(&str, &str)]) -> HubProcess {
        let hub = Self::start_unready_in(cwd, args, envs).await;
        hub.wait_ready().await;
        hub
    }

    pub async fn start_unready_in(
        cwd: TempDir,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> HubProcess {
        let mut cmd = Command::new(hub_binary());
        cmd.arg("serve").args(["--host", "127.0.0.1"]);
        // A given `--port` (a hub restarted on its predecessor's port) wins.
        if !args.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        cmd.args(args)
            .current_dir(&cwd.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in hub_env_vars() {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn mcp-hub");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr_closed = Arc::new(AtomicBool::new(false));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        let closed = stderr_closed.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                {
                    let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(rest) = line.split("mcp-hub listening on ").nth(1)
                    && let Some(tx) = addr_tx.take()
                {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
            }
            closed.store(true, Ordering::Release);
        });
        let addr = match tokio::time::timeout(START_TIMEOUT, addr_rx).await {
            Ok(Ok(addr)) => addr
                .parse()
                .unwrap_or_else(|e| panic!("bad listening address {addr:?}: {e}; args {args:?}")),
            _ => {
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                panic!(
                    "hub {args:?} did not start listening (exit: {status:?}); log:\n{}",
                    log.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        HubProcess {
            addr,
            child: Some(child),
            log,
            stderr_closed,
            _cwd: cwd,
        }
    }

    /// Polls `/ready` until 200; panics with the log after [`START_TIMEOUT`]
    /// or as soon as the process is seen to have died.
    pub async fn wait_ready(&self) {
        self.wait_ready_for(START_TIMEOUT).await;
    }

    pub async fn wait_ready_for(&self, bound: Duration) {
        let url = self.http_url("/ready");
        let deadline = Instant::now() + bound;
        loop {
            if self.ready_status().await == Some(200) {
                return;
            }
            if self.stderr_closed.load(Ordering::Acquire) {
                panic!("hub exited before becoming ready; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "{url} never answered 200 within {bound:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("hub is running")
    }

    fn signal(&self, sig: libc::c_int) {
        // `id()` is None once the child has been reaped: never signal a
        // pid that may have been reused.
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            send_signal(pid, sig);
        }
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    /// SIGKILL and reap: a crash, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
    }

    /// Waits for the process to exit (reaping it) and for its stderr to be
    /// read to the end, so [`HubProcess::log`] holds its last lines; None
    /// if it is still running after `timeout` (or was already reaped).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => {
                self.child = None;
                let deadline = Instant::now() + Duration::from_secs(5);
                while !self.stderr_closed.load(Ordering::Acquire) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Some(status)
            }
            _ => None,
        }
    }

    /// Everything the hub wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Polls the log until it contains `needle`; panics with it after `bound`.
    pub async fn wait_for_log(&self, needle: &str, bound: Duration) {
        let deadline = Instant::now() + bound;
        while !self.log().contains(needle) {
            if Instant::now() > deadline {
                panic!("`{needle}` never appeared in the log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// SIGKILL, then wait (bounded) until the process is gone.
fn kill_and_reap(mut child: Child) {
    let _ = child.start_kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- hub {} log ---\n{}", self.addr, self.log());
        }
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
    }
}

/// Kills (SIGKILL) and reaps a helper process (redis-server, haproxy...)
/// when dropped, so a failing test never leaves it behind.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut std::process::Command) -> ChildGuard {
        ChildGuard(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program())),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `sig` unless the process has already exited.
    pub fn signal(&mut self, sig: libc::c_int) {
        if matches!(self.0.try_wait(), Ok(None)) {
            send_signal(self.0.id(), sig);
        }
    }

    /// Waits (polling) up to `bound` for the process to exit.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs the binary to completion (it must exit by itself: invalid
/// settings, `mcp-hub token`) in `cwd`, with none of the caller's hub
/// settings except `envs`: exit code, stdout, stderr.
pub fn run_binary(
    args: &[&str],
    envs: &[(&str, &str)],
    cwd: &TempDir,
) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut cmd = std::process::Command::new(hub_binary());
    cmd.args(args)
        .current_dir(cwd.path())
        .stdin(std::process::Stdio::null());
    for var in hub_env_vars() {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = ChildGuard::spawn(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    let status = child.wait_exit(Duration::from_secs(20));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut pipe) = child.0.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.0.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = status.unwrap_or_else(|| {
        panic!("mcp-hub {args:?} {envs:?} did not exit; it should have by itself")
    });
    (status.code(), stdout, stderr)
}

/// Runs the hub to completion (it must exit by itself: invalid settings):
/// exit code and stderr.
pub fn run_hub(args: &[&str], envs: &[(&str, &str)], cwd: &TempDir) -> (Option<i32>, String) {
    let (code, _, stderr) = run_binary(args, envs, cwd);
    (code, stderr)
}

/// Reads stdout lines until one contains `needle` (bounded).
pub async fn wait_for_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    needle: &str,
    seen: &mut Vec<String>,
) {
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        found,
        "no line containing {needle:?}; output so far:\n{}",
        seen.join("\n")
    );
}
