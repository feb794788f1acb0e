//! The one launcher of private redis-server (plain, TLS, replica, Redis
//! Sentinel) and HAProxy processes on free loopback ports, killed when
//! dropped (also when a test fails), with readiness polling instead of
//! sleeps.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TestCa, free_port, have, http_get_blocking, repo_path, wait_until};

fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A private redis-server that keeps nothing on disk.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    /// Extra `redis-server` arguments (e.g. `--replicaof`).
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts on a given port (e.g. one a hub already points at).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::start_with(port, Vec::new())
    }

    /// A replica of the server on `master_port`, once its link is up.
    pub fn start_replica_of(master_port: u16) -> RedisServer {
        let replica = RedisServer::start_with(
            free_port(),
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master_port.to_string(),
            ],
        );
        wait_until(
            "the replica's link to its master",
            Duration::from_secs(10),
            || {
                replica
                    .cmd(&["INFO", "replication"])
                    .contains("master_link_status:up")
            },
        );
        replica
    }

    fn start_with(port: u16, extra: Vec<String>) -> RedisServer {
        assert!(
            have("redis-server"),
            "redis-server is missing: run ./scripts/test (it installs it) or apt-get install -y redis-server"
        );
        let dir = std::env::temp_dir().join(format!("mcp-hub-redis-{}", uuid_like()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = RedisServer {
            port,
            dir,
            extra,
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection pool to this server, for library-level tests.
    pub fn pool(&self) -> mcp_hub::redis::RedisPool {
        deadpool_redis::Config::from_url(self.url())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("redis pool")
            .into()
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_until(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || ping(port),
        );
    }

    /// Kills the server (SIGKILL: an outage, not a clean stop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
        let port = self.port;
        wait_until("redis-server to stop", Duration::from_secs(10), || {
            !ping(port)
        });
    }

    /// Starts again on the same port, empty.
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The master name of [`SentinelSet`] (deploy/redis/sentinel.conf).
pub const SENTINEL_MASTER: &str = "mcp-hub";

/// One `redis-server --sentinel`, from deploy/redis/sentinel.conf rendered
/// into its own writable copy.
pub struct SentinelNode {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl SentinelNode {
    fn start(master_port: u16) -> SentinelNode {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("mcp-hub-sentinel-{}", uuid_like()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let template = std::fs::read_to_string(repo_path("deploy/redis/sentinel.conf"))
            .expect("deploy/redis/sentinel.conf");
        let conf = template
            .replace("${SENTINEL_PORT}", &port.to_string())
            .replace("${SENTINEL_BIND}", "127.0.0.1")
            .replace("${MASTER_HOST}", "127.0.0.1")
            .replace("${MASTER_PORT}", &master_port.to_string());
        let file = dir.join("sentinel.conf");
        std::fs::write(&file, conf).expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&file)
            .arg("--sentinel")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server --sentinel");
        wait_until("a sentinel to answer PING", Duration::from_secs(10), || {
            ping(port)
        });
        SentinelNode {
            port,
            dir,
            child: Some(child),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A numeric field of `SENTINEL MASTER mcp-hub` (0 if absent).
    fn master_field(&self, field: &str) -> u64 {
        let reply = self.cmd(&["SENTINEL", "MASTER", SENTINEL_MASTER]);
        let mut lines = reply.lines();
        while let Some(line) = lines.next() {
            if line == field {
                return lines.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
        0
    }

    /// The port of the master this Sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let reply = self.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER]);
        reply.lines().nth(1).and_then(|p| p.parse().ok())
    }
}

impl Drop for SentinelNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 1 master, 1 replica and 3 Sentinels (quorum 2) on loopback, started
/// from the repository's deploy/redis/sentinel.conf; ready once every
/// Sentinel knows the replica and the two other Sentinels (so a failover
/// can be voted and has a replica to promote).
pub struct SentinelSet {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<SentinelNode>,
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        let master = RedisServer::start();
        let replica = RedisServer::start_replica_of(master.port);
        let sentinels: Vec<_> = (0..3).map(|_| SentinelNode::start(master.port)).collect();
        // Sentinels find each other through hello messages on the master
        // (every 2 s) and the replica through the master's INFO.
        wait_until(
            "the sentinels to know the replica and each other",
            Duration::from_secs(20),
            || {
                sentinels.iter().all(|s| {
                    s.master_field("num-slaves") == 1 && s.master_field("num-other-sentinels") == 2
                })
            },
        );
        SentinelSet {
            master,
            replica,
            sentinels,
        }
    }

    /// `REDIS_SENTINELS` for these Sentinels.
    pub fn addresses(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port every Sentinel names as master (None while they disagree).
    pub fn master_port(&self) -> Option<u16> {
        let first = self.sentinels[0].master_port()?;
        self.sentinels
            .iter()
            .all(|s| s.master_port() == Some(first))
            .then_some(first)
    }
}

/// A redis-server that only speaks TLS, with a throw-away CA (made with the
/// `openssl` command) whose certificate clients must trust.
pub struct TlsRedisServer {
    pub port: u16,
    pub ca_file: PathBuf,
    /// Kept until the server is stopped: it holds the certificates.
    _certs: TestCa,
    child: Option<Child>,
}

impl TlsRedisServer {
    pub fn start() -> TlsRedisServer {
        let certs = TestCa::make();
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(certs.server_cert())
            .arg("--tls-key-file")
            .arg(certs.server_key())
            .arg("--tls-ca-cert-file")
            .arg(certs.ca())
            .args(["--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        wait_until(
            "TLS redis-server to listen",
            Duration::from_secs(10),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        TlsRedisServer {
            port,
            ca_file: certs.ca(),
            _certs: certs,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// The repository's own haproxy/haproxy.cfg, run on loopback with test
/// ports given through its environment variables.
pub struct Haproxy {
    pub port: u16,
    pub stats_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Haproxy {
    /// Starts HAProxy in front of up to three hubs and waits until
    /// `expected_up` of them pass the /ready health check.
    pub fn start(hubs: &[std::net::SocketAddr], expected_up: usize) -> Haproxy {
        assert!(
            have("haproxy"),
            "haproxy is missing: run ./scripts/test (it installs it) or apt-get install -y haproxy"
        );
        assert!(hubs.len() <= 3, "haproxy.cfg has three hub slots");
        let dir = std::env::temp_dir().join(format!("mcp-hub-haproxy-{}", uuid_like()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let stats_port = free_port();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(repo_path("haproxy/haproxy.cfg"))
            .env("LB_BIND", format!("127.0.0.1:{port}"))
            .env("STATS_BIND", format!("127.0.0.1:{stats_port}"))
            .env("HAPROXY_SOCKET", dir.join("admin.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for slot in 0..3 {
            // Unused slots point at a closed port: those servers are DOWN.
            let addr = hubs
                .get(slot)
                .map(|a| a.to_string())
                .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
            cmd.env(format!("HUB{}_ADDR", slot + 1), addr);
        }
        let child = cmd.spawn().expect("spawn haproxy");
        let haproxy = Haproxy {
            port,
            stats_port,
            dir,
            child: Some(child),
        };
        haproxy.wait_servers_up(expected_up);
        haproxy
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// Number of hub servers HAProxy currently considers UP, from its
    /// Prometheus exporter.
    pub fn servers_up(&self) -> Option<usize> {
        let body = http_get_blocking(self.stats_port, "/metrics")?;
        body.lines()
            .find(|l| l.starts_with("haproxy_backend_active_servers{proxy=\"hubs\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as usize)
    }

    pub fn wait_servers_up(&self, n: usize) {
        wait_until(
            &format!("haproxy to see {n} hubs up"),
            Duration::from_secs(20),
            || self.servers_up() == Some(n),
        );
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
