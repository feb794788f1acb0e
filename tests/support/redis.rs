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

/// A private Redis Cluster on loopback: `masters` masters with `replicas`
/// replicas each (`redis-server --cluster-enabled yes`, joined by
/// `redis-cli --cluster create`), ready (`cluster_state:ok` on every node)
/// when [`RedisCluster::start`] returns. Nodes are killed when dropped.
pub struct RedisCluster {
    /// Every node's port; the first `masters` were created as masters.
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

/// One master of a [`RedisCluster`].
pub struct ClusterMaster {
    pub id: String,
    pub port: u16,
    /// Inclusive slot ranges it serves.
    pub slots: Vec<(u16, u16)>,
}

/// Ports this test process has handed to cluster nodes (data and bus
/// ports): parallel tests in one binary must not pick each other's.
static RESERVED_CLUSTER_PORTS: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// The first of `n` consecutive free ports for Redis Cluster nodes: Redis
/// Cluster's bus listens on port + 10000, so both must be free (and not
/// reserved by another test of this process), e.g. for `scripts/cluster
/// up --redis cluster --redis-port P`.
pub fn free_cluster_ports(n: u16) -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut reserved = RESERVED_CLUSTER_PORTS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Both below the kernel's ephemeral range and apart from
    // `free_ports`'s (see `PICKED_PORTS`): bases 10000–11999, buses
    // 20000–21999.
    for _ in 0..1000 {
        let base = 10_000 + (rand::random::<u16>() % (2_000 - n));
        let pairs = || (base..base + n).flat_map(|p| [p, p + 10_000]);
        if pairs().all(|p| !reserved.contains(&p) && free(p)) {
            reserved.extend(pairs());
            return base;
        }
    }
    panic!("no {n} free port pairs (p, p+10000) for Redis Cluster nodes");
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        assert!(
            have("redis-server") && have("redis-cli"),
            "redis-server is missing: run ./scripts/test (it installs it) or apt-get install -y redis-server"
        );
        let dir = std::env::temp_dir().join(format!("mcp-hub-redis-cluster-{}", uuid_like()));
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            dir,
            children: Vec::new(),
        };
        for _ in 0..masters * (1 + replicas) {
            let dir = cluster.dir.clone();
            let (port, child) = spawn_redis(
                "a cluster node",
                || free_cluster_ports(1),
                |port| {
                    let node_dir = dir.join(port.to_string());
                    std::fs::create_dir_all(&node_dir).expect("node dir");
                    let mut cmd = Command::new("redis-server");
                    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                        .args([
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            "nodes.conf",
                        ])
                        // Fast failure detection, so a failover test stays short.
                        .args(["--cluster-node-timeout", "1000"])
                        // Replicas sync at once (the default waits 5 s).
                        .args(["--repl-diskless-sync-delay", "0"])
                        .args(["--save", "", "--appendonly", "no", "--dir"])
                        .arg(&node_dir);
                    cmd
                },
            );
            cluster.ports.push(port);
            cluster.children.push(Some(child));
        }
        let ports = cluster.ports.clone();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ok();
        // A replica that has not synced cannot take over from its master.
        let synced = |p: u16| {
            let info = cluster.cli(p, &["INFO", "replication"]);
            !info.contains("role:slave") || info.contains("master_link_status:up")
        };
        wait_until("the replicas to sync", Duration::from_secs(30), || {
            ports.iter().all(|&p| synced(p))
        });
        cluster
    }

    /// The hub's `REDIS_CLUSTER_URLS`: every node as a seed.
    pub fn seeds(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// This cluster as the hub's configuration names it.
    pub fn topology(&self) -> mcp_hub::config::RedisTopology {
        mcp_hub::config::RedisTopology::Cluster {
            nodes: self
                .ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
        }
    }

    /// `redis-cli -p PORT ARGS...` (without cluster redirection).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli(port, args)
    }

    /// Waits until every live node says `cluster_state:ok` and agrees on
    /// the slots (after creation, a failover or a slot move).
    pub fn wait_ok(&self) {
        let live: Vec<u16> = self.live_ports();
        wait_until(
            "the Redis Cluster to be ok",
            Duration::from_secs(30),
            || {
                live.iter().all(|&p| {
                    self.cli(p, &["CLUSTER", "INFO"])
                        .contains("cluster_state:ok")
                }) && self.check_ok(live[0])
            },
        );
    }

    fn check_ok(&self, port: u16) -> bool {
        Command::new("redis-cli")
            .args(["--cluster", "check", &format!("127.0.0.1:{port}")])
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout);
                o.status.success() && text.contains("[OK] All 16384 slots covered")
            })
            .unwrap_or(false)
    }

    fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// The slot of `key`.
    pub fn slot(&self, key: &str) -> u16 {
        let any = self.live_ports()[0];
        let slot = self.cli(any, &["CLUSTER", "KEYSLOT", key]);
        slot.parse().expect("a slot number")
    }

    /// The masters, from `CLUSTER NODES`.
    pub fn masters(&self) -> Vec<ClusterMaster> {
        let any = self.live_ports()[0];
        self.cli(any, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let flags = f.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                let ranges = f
                    .iter()
                    .skip(8)
                    .filter(|r| !r.starts_with('['))
                    .filter_map(|r| {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                Some(ClusterMaster {
                    id: f[0].to_string(),
                    port,
                    slots: ranges,
                })
            })
            .collect()
    }

    /// The master (node id, port) serving `slot` now.
    pub fn master_of_slot(&self, slot: u16) -> (String, u16) {
        self.masters()
            .into_iter()
            .find(|m| m.slots.iter().any(|(a, b)| *a <= slot && slot <= *b))
            .map(|m| (m.id, m.port))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// Moves `slot`, keys and all, to the master on `to` (the steps of
    /// `redis-cli --cluster reshard`, for one given slot): IMPORTING /
    /// MIGRATING, `MIGRATE` in batches, then `SETSLOT NODE` on every master.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let (from_id, from) = self.master_of_slot(slot);
        let masters = self.masters();
        let to_id = masters
            .iter()
            .find(|m| m.port == to)
            .map(|m| m.id.clone())
            .expect("the target is a master");
        let slot = slot.to_string();
        assert_eq!(
            self.cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]),
            "OK"
        );
        assert_eq!(
            self.cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]),
            "OK"
        );
        loop {
            let keys = self.cli(from, &["--raw", "CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            migrate.extend(keys);
            assert_eq!(self.cli(from, &migrate), "OK");
        }
        for m in &masters {
            self.cli(m.port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
        self.wait_ok();
    }

    /// Kills the node on `port` (SIGKILL: a crash).
    pub fn kill(&mut self, port: u16) {
        let i = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("a node port");
        if let Some(mut c) = self.children[i].take() {
            kill_child(&mut c);
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut() {
            if let Some(mut c) = c.take() {
                kill_child(&mut c);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Redis that a cluster-mode suite runs on: one server, or a 3-master
/// Redis Cluster when `MCP_HUB_TEST_REDIS=cluster` (the same test bodies
/// on either topology; see ./scripts/test).
pub enum TestRedis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl TestRedis {
    pub fn start() -> TestRedis {
        match std::env::var("MCP_HUB_TEST_REDIS").as_deref() {
            Ok("cluster") => TestRedis::Cluster(RedisCluster::start(3, 0)),
            _ => TestRedis::Single(RedisServer::start()),
        }
    }

    /// This Redis as the hub's configuration names it.
    pub fn topology(&self) -> mcp_hub::config::RedisTopology {
        match self {
            TestRedis::Single(r) => r.topology(),
            TestRedis::Cluster(c) => c.topology(),
        }
    }

    /// A backend on this Redis with key prefix `prefix`, as an instance
    /// named `instance` uses it (for the contract suites, which drive the
    /// Redis twins without a hub).
    pub fn backend(&self, prefix: &str, instance: &str) -> mcp_hub::redis::RedisBackend {
        let metrics = std::sync::Arc::new(mcp_hub::metrics::Metrics::new(instance));
        mcp_hub::redis::RedisBackend::new(&self.topology(), prefix, metrics).expect("redis backend")
    }

    /// Empties every node, as a Redis that restarted without its data.
    pub fn flushall(&self) {
        match self {
            TestRedis::Single(r) => {
                r.cmd(&["FLUSHALL"]);
            }
            TestRedis::Cluster(c) => {
                for &p in &c.ports {
                    c.cli(p, &["FLUSHALL"]);
                }
            }
        }
    }

    /// `redis-cli ARGS...` on every node (a server-wide command).
    pub fn cmd_all(&self, args: &[&str]) {
        match self {
            TestRedis::Single(r) => {
                r.cmd(args);
            }
            TestRedis::Cluster(c) => {
                for &p in &c.ports {
                    c.cli(p, args);
                }
            }
        }
    }

    /// `redis-cli ARGS...` on the node that owns the key (a cluster's
    /// redirections followed).
    pub fn cmd_any(&self, args: &[&str]) -> String {
        match self {
            TestRedis::Single(r) => r.cmd(args),
            TestRedis::Cluster(c) => {
                let mut with_redirects = vec!["-c"];
                with_redirects.extend_from_slice(args);
                c.cli(c.ports[0], &with_redirects)
            }
        }
    }

    /// `cmd` through a plain redis-rs client, not the hub's backend: what
    /// Redis holds, as any client reads it.
    pub async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> T {
        match self {
            TestRedis::Single(r) => {
                let client = ::redis::Client::open(r.url()).expect("redis client");
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis connection");
                cmd.query_async(&mut conn).await.expect("redis query")
            }
            TestRedis::Cluster(c) => {
                let nodes: Vec<String> = c
                    .ports
                    .iter()
                    .map(|p| format!("redis://127.0.0.1:{p}"))
                    .collect();
                let client = ::redis::cluster::ClusterClient::new(nodes).expect("cluster client");
                let mut conn = client
                    .get_async_connection()
                    .await
                    .expect("cluster connection");
                cmd.query_async(&mut conn).await.expect("redis query")
            }
        }
    }

    /// Every key name, one a line (of every node of a cluster).
    pub fn all_keys(&self) -> String {
        match self {
            TestRedis::Single(r) => r.cmd(&["--raw", "KEYS", "*"]),
            TestRedis::Cluster(c) => c
                .ports
                .iter()
                .map(|&p| c.cli(p, &["--raw", "KEYS", "*"]))
                .filter(|keys| !keys.is_empty())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// A Redis a hub can be pointed at.
pub trait RedisTarget {
    /// The hub settings that point at it.
    fn hub_args(&self) -> Vec<String>;
}

impl RedisTarget for RedisServer {
    fn hub_args(&self) -> Vec<String> {
        vec!["--redis-url".into(), self.url()]
    }
}

impl RedisTarget for RedisCluster {
    fn hub_args(&self) -> Vec<String> {
        vec!["--redis-cluster-urls".into(), self.seeds()]
    }
}

impl RedisTarget for TestRedis {
    fn hub_args(&self) -> Vec<String> {
        match self {
            TestRedis::Single(r) => r.hub_args(),
            TestRedis::Cluster(c) => c.hub_args(),
        }
    }
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
        RedisServer::start_picking(free_port, Vec::new())
    }

    /// Starts on a given port (e.g. one a hub already points at).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::start_with(port, Vec::new())
    }

    /// A server that keeps its data in an append-only file as compose
    /// ships it (`--appendonly yes --appendfsync everysec`), so a restart
    /// ([`RedisServer::shutdown_and_restart`]) reads it back.
    pub fn start_with_aof() -> RedisServer {
        RedisServer::start_picking(
            free_port,
            ["--appendonly", "yes", "--appendfsync", "everysec"]
                .map(String::from)
                .to_vec(),
        )
    }

    /// Freezes the server (SIGSTOP: alive, silent, connections open) until
    /// [`RedisServer::resume`].
    pub fn freeze(&self) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGSTOP) };
        }
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            // SAFETY: as above.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
        }
    }

    /// Stops the server the way an operator's restart does (`SHUTDOWN`:
    /// the append-only file is flushed), then starts it again on the same
    /// port and directory.
    pub fn shutdown_and_restart(&mut self) {
        let _ = self.cmd(&["SHUTDOWN"]);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        let port = self.port;
        wait_until("redis-server to stop", Duration::from_secs(10), || {
            !ping(port)
        });
        self.spawn();
    }

    /// A replica of the server on `master_port`, once its link is up.
    pub fn start_replica_of(master_port: u16) -> RedisServer {
        let replica = RedisServer::start_picking(
            free_port,
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
        RedisServer::start_picking(|| port, extra)
    }

    /// Starts on a port from `pick`; when another process takes that port
    /// first, `pick` is asked again (a fixed port then fails loudly).
    fn start_picking(pick: impl FnMut() -> u16, extra: Vec<String>) -> RedisServer {
        assert!(
            have("redis-server"),
            "redis-server is missing: run ./scripts/test (it installs it) or apt-get install -y redis-server"
        );
        let dir = std::env::temp_dir().join(format!("mcp-hub-redis-{}", uuid_like()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let command = RedisServer::command(dir.clone(), extra.clone());
        let (port, child) = spawn_redis("redis-server", pick, command);
        RedisServer {
            port,
            dir,
            extra,
            child: Some(child),
        }
    }

    fn command(dir: PathBuf, extra: Vec<String>) -> impl Fn(u16) -> Command {
        move |port| {
            let mut cmd = Command::new("redis-server");
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&dir)
            .args(&extra);
            cmd
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// This server as the hub's configuration names it.
    pub fn topology(&self) -> mcp_hub::config::RedisTopology {
        mcp_hub::config::RedisTopology::Single { url: self.url() }
    }

    /// A connection pool to this server, for library-level tests.
    pub fn pool(&self) -> mcp_hub::redis::RedisPool {
        deadpool_redis::Config::from_url(self.url())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("redis pool")
            .into()
    }

    fn spawn(&mut self) {
        let command = RedisServer::command(self.dir.clone(), self.extra.clone());
        let (_, child) = spawn_redis("redis-server", || self.port, command);
        self.child = Some(child);
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
        redis_cli(self.port, args)
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
        let dir = std::env::temp_dir().join(format!("mcp-hub-sentinel-{}", uuid_like()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let template = std::fs::read_to_string(repo_path("deploy/redis/sentinel.conf"))
            .expect("deploy/redis/sentinel.conf");
        let (port, child) = spawn_redis("a sentinel", free_port, |port| {
            let conf = template
                .replace("${SENTINEL_PORT}", &port.to_string())
                .replace("${SENTINEL_BIND}", "127.0.0.1")
                .replace("${MASTER_HOST}", "127.0.0.1")
                .replace("${MASTER_PORT}", &master_port.to_string());
            let file = dir.join("sentinel.conf");
            std::fs::write(&file, conf).expect("write sentinel.conf");
            let mut cmd = Command::new("redis-server");
            cmd.arg(&file).arg("--sentinel").current_dir(&dir);
            cmd
        });
        SentinelNode {
            port,
            dir,
            child: Some(child),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
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

/// Spawns a redis-server (`command(port)`) on a port from `pick` and waits
/// until it answers there as itself: between a port being seen free and
/// the server binding it, another test's server may take it, and a bare
/// PING would then be answered by the wrong process. Then the server is
/// killed (or has exited) and the next port from `pick` is tried.
fn spawn_redis(
    what: &str,
    mut pick: impl FnMut() -> u16,
    command: impl Fn(u16) -> Command,
) -> (u16, Child) {
    for _ in 0..5 {
        let port = pick();
        let mut child = command(port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        if answers_as(port, &mut child, what) {
            return (port, child);
        }
        kill_child(&mut child);
    }
    panic!("{what}: every port tried was taken by another process");
}

/// Polls until `child` answers on `port` (true) or it has exited or another
/// process answers there (false).
fn answers_as(port: u16, child: &mut Child, what: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if ping(port) {
            let info = redis_cli(port, &["INFO", "server"]);
            let pid = info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|p| p.trim().parse::<u32>().ok());
            if pid.is_some() {
                return pid == Some(child.id());
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 10s waiting for {what} on port {port} to answer PING"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `redis-cli -p PORT ARGS...`, its output trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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
        Self::start_with(hubs, expected_up, &[])
    }

    /// [`Haproxy::start`] with extra environment variables for
    /// haproxy.cfg (e.g. `ADMIN_ALLOW_FROM`).
    pub fn start_with(
        hubs: &[std::net::SocketAddr],
        expected_up: usize,
        env: &[(&str, &str)],
    ) -> Haproxy {
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
                .unwrap_or_else(|| super::CLOSED_ADDR.to_string());
            cmd.env(format!("HUB{}_ADDR", slot + 1), addr);
        }
        // Only what the test gives, never the developer's own setting.
        cmd.env_remove("ADMIN_ALLOW_FROM");
        for (name, value) in env {
            cmd.env(name, value);
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
