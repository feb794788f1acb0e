//! The operations files are what users run: haproxy/haproxy.cfg,
//! deploy/prometheus/, grafana/, docker-compose.yml, deploy/Dockerfile,
//! deploy/kubernetes/ and scripts/cluster. These tests validate them with
//! the real tools (haproxy -c, promtool) and check that docker compose and
//! the local loopback cluster use the very same files.
//!
//! A test whose tool is not installed says so on stderr and passes, except
//! the Kubernetes ones, which fail with the command that installs kubectl or
//! kubernetes-validate; ./scripts/test installs haproxy, prometheus
//! (promtool), redis-server, kubectl and kubernetes-validate.

use crate::support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use support::{
    CLOSED_ADDR, TempDir, TestCa, free_port, have, http_get_blocking, interpolate, repo_file,
    repo_path, repo_yaml, run, tool,
};

fn str_of<'a>(v: &'a Yaml, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} should be a string, is {v:?}"))
}

// ---------------------------------------------------------------- HAProxy

const HAPROXY_VARS: &[&str] = &[
    "LB_BIND",
    "STATS_BIND",
    "HAPROXY_SOCKET",
    "HUB1_ADDR",
    "HUB2_ADDR",
    "HUB3_ADDR",
    "ADMIN_ALLOW_FROM",
];

/// The variables haproxy.cfg reads that compose leaves to `.env`.
const HAPROXY_OPTIONAL_VARS: &[&str] = &[
    "HAPROXY_STATS_USER",
    "HAPROXY_STATS_PASSWORD",
    "TLS_BIND",
    "TLS_CERT",
];

fn haproxy_check(env: &[(String, String)]) -> (bool, String) {
    let mut cmd = Command::new("haproxy");
    cmd.arg("-c")
        .arg("-f")
        .arg(repo_path("haproxy/haproxy.cfg"));
    for var in HAPROXY_VARS.iter().chain(HAPROXY_OPTIONAL_VARS) {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

#[test]
fn haproxy_cfg_is_valid_with_the_loopback_defaults() {
    if !tool("haproxy", "haproxy") {
        return;
    }
    let (ok, out) = haproxy_check(&[]);
    assert!(ok, "haproxy -c failed with no variables set:\n{out}");
    assert!(out.contains("Configuration file is valid"), "{out}");
    assert!(!out.contains("ALERT"), "{out}");
}

/// The environment docker-compose.yml gives the haproxy service, as
/// compose would pass it with `dotenv` as `.env`.
fn compose_haproxy_env(dotenv: &BTreeMap<&str, &str>) -> Vec<(String, String)> {
    let compose = repo_yaml("docker-compose.yml");
    let env = compose["services"]["haproxy"]["environment"]
        .as_mapping()
        .expect("haproxy.environment is a mapping");
    env.iter()
        .map(|(k, v)| {
            let k = str_of(k, "variable name").to_string();
            let v = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => n.to_string(),
                other => panic!("haproxy.environment.{k}: unexpected {other:?}"),
            };
            let v = interpolate(&v, dotenv).unwrap_or_else(|e| panic!("haproxy.{k}: {e}"));
            (k, v)
        })
        .collect()
}

#[test]
fn haproxy_cfg_is_valid_with_the_compose_environment_and_each_option() {
    if !tool("haproxy", "haproxy") {
        return;
    }
    let names: BTreeSet<String> = compose_haproxy_env(&BTreeMap::new())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for var in HAPROXY_VARS {
        assert!(
            names.contains(*var),
            "docker-compose.yml's haproxy service does not set {var}"
        );
    }
    // The compose socket path is inside the container; check with a
    // writable one (the path is the only thing that differs).
    let dir = TempDir::new();
    let socket = dir.path().join("haproxy.sock").display().to_string();
    let check = |mut env: Vec<(String, String)>, what: &str| {
        for (k, v) in env.iter_mut() {
            if k == "HAPROXY_SOCKET" {
                v.clone_from(&socket);
            }
        }
        // hub1..hub3 do not resolve here, as in compose before the hubs
        // start: HAProxy must still start (init-addr none) and mark them
        // DOWN.
        let (ok, out) = haproxy_check(&env);
        assert!(
            ok,
            "haproxy -c failed with the compose variables {what}:\n{out}"
        );
        assert!(!out.contains("ALERT"), "{what}: {out}");
    };
    let plain = BTreeMap::new();
    let with_stats: BTreeMap<&str, &str> = [
        ("HAPROXY_STATS_USER", "ops"),
        ("HAPROXY_STATS_PASSWORD", "pw with spaces"),
    ]
    .into();
    let admin_networks: BTreeMap<&str, &str> =
        [("ADMIN_ALLOW_FROM", "203.0.113.0/24 2001:db8::/32")].into();
    for dotenv in [&plain, &with_stats, &admin_networks] {
        check(compose_haproxy_env(dotenv), &format!("and .env {dotenv:?}"));
    }
    // TLS on, with a real certificate.
    if tool("openssl", "openssl") {
        let certs = TestCa::make();
        let mut env = compose_haproxy_env(&with_stats);
        env.push(("TLS_BIND".into(), ":8443".into()));
        env.push(("TLS_CERT".into(), certs.bundle().display().to_string()));
        check(env, "and TLS");
    }
}

#[test]
fn haproxy_cfg_is_websocket_aware_and_env_driven() {
    let cfg = repo_file("haproxy/haproxy.cfg");
    // Non-comment lines, whitespace-normalised.
    let lines: Vec<String> = cfg
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    for t in [
        "timeout connect ",
        "timeout client ",
        "timeout server ",
        "timeout tunnel ",
        "timeout client-fin ",
        "timeout http-request ",
    ] {
        assert!(has(t), "haproxy.cfg lacks `{t}`");
    }
    assert!(has("balance leastconn"), "WebSockets need leastconn");
    assert!(has("option httpchk"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("http-check send") && l.contains("uri /ready")),
        "health checks must GET /ready"
    );
    assert!(has("http-check expect status 200"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("use-service prometheus-exporter")),
        "the stats frontend must serve HAProxy's Prometheus exporter"
    );
    assert!(has("stats uri "));
    assert!(
        lines.iter().any(
            |l| l.starts_with("stats socket \"${HAPROXY_SOCKET-") && l.contains("level admin")
        ),
        "the runtime socket path must come from HAPROXY_SOCKET"
    );
    assert!(has("bind \"${LB_BIND-127.0.0.1:"));
    assert!(has("bind \"${STATS_BIND-127.0.0.1:"));
    for i in 1..=3 {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!(
                "server hub{i} \"${{HUB{i}_ADDR-127.0.0.1:900{i}}}\" check"
            ))),
            "hub{i} must be `server hub{i} \"${{HUB{i}_ADDR-127.0.0.1:900{i}}}\" check ...`"
        );
    }
    // Unresolvable or absent hubs must not stop HAProxy from starting.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("default-server") && l.contains("init-addr last,libc,none")),
        "default-server needs init-addr ...,none"
    );
}

/// HAProxy with no hub behind any slot starts, reports every server DOWN
/// and answers clients 503 instead of failing.
#[test]
fn haproxy_with_every_slot_empty_answers_503() {
    if !tool("haproxy", "haproxy") {
        return;
    }
    let (port, stats) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("mcp-hub-ops-lb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db")
        .arg("-f")
        .arg(repo_path("haproxy/haproxy.cfg"))
        .env("LB_BIND", format!("127.0.0.1:{port}"))
        .env("STATS_BIND", format!("127.0.0.1:{stats}"))
        .env("HAPROXY_SOCKET", dir.join("admin.sock"))
        .env_remove("HAPROXY_STATS_USER")
        .env_remove("HAPROXY_STATS_PASSWORD")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for i in 1..=3 {
        cmd.env(format!("HUB{i}_ADDR"), CLOSED_ADDR);
    }
    struct Kill(std::process::Child, PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _lb = Kill(cmd.spawn().expect("spawn haproxy"), dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = String::new();
    loop {
        if let Some(body) = http_get_blocking(stats, "/metrics") {
            let down = body
                .lines()
                .filter(|l| {
                    l.starts_with("haproxy_server_status{proxy=\"hubs\"")
                        && l.contains("state=\"DOWN\"")
                        && l.ends_with(" 1")
                })
                .count();
            if down == 3 {
                assert!(
                    body.contains("haproxy_backend_active_servers{proxy=\"hubs\"} 0"),
                    "{body}"
                );
                break;
            }
            last = body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "HAProxy never reported 3 DOWN hub servers:\n{last}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let answer = http_get_blocking(port, "/ready").expect("HAProxy answers with no hub up");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // No HAPROXY_STATS_USER/PASSWORD: the stats page is closed (403);
    // tests/ops_security.rs covers the page with credentials.
    let stats_page = http_get_blocking(stats, "/stats").expect("stats page");
    assert!(stats_page.starts_with("HTTP/1.1 403"), "{stats_page}");
}

// ------------------------------------------------------------- Prometheus

#[test]
fn prometheus_config_targets_and_rules_pass_promtool() {
    if !tool("promtool", "prometheus") {
        return;
    }
    // check config also reads the file_sd targets files and the rule files.
    let (ok, out) = run(Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(repo_path("deploy/prometheus/prometheus.yml")));
    assert!(ok, "promtool check config:\n{out}");
    assert!(out.contains("1 rule files found"), "{out}");
    let (ok, out) = run(Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg(repo_path("deploy/prometheus/tests/mcp-hub-alerts.test.yml")));
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn prometheus_scrapes_every_hub_directly_and_haproxy_through_file_sd_without_credentials() {
    let cfg = repo_yaml("deploy/prometheus/prometheus.yml");
    let jobs: BTreeMap<String, &Yaml> = cfg["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .map(|j| (str_of(&j["job_name"], "job_name").to_string(), j))
        .collect();
    for (job, file) in [
        ("hub", "targets/hubs.yml"),
        ("haproxy", "targets/haproxy.yml"),
    ] {
        let j = jobs
            .get(job)
            .unwrap_or_else(|| panic!("no scrape job {job}"));
        let files: Vec<&str> = j["file_sd_configs"][0]["files"]
            .as_sequence()
            .unwrap_or_else(|| panic!("job {job} must use file_sd_configs"))
            .iter()
            .map(|f| str_of(f, "file"))
            .collect();
        assert_eq!(
            files,
            [file],
            "job {job} reads its targets from {file}, relative to prometheus.yml"
        );
        assert!(
            j.get("static_configs").is_none(),
            "job {job}: no fixed targets"
        );
    }
    // The exporter is outside the stats page's auth: no credentials.
    for (job, j) in &jobs {
        assert!(
            j.get("basic_auth").is_none(),
            "job {job}: the exporter needs no credentials in prometheus.yml"
        );
        assert_eq!(j["metrics_path"].as_str(), Some("/metrics"), "job {job}");
    }
    // Hubs are scraped directly, not through the load balancer.
    let hubs = repo_yaml("deploy/prometheus/targets/hubs.yml");
    for group in hubs.as_sequence().expect("target groups") {
        for t in group["targets"].as_sequence().expect("targets") {
            let t = str_of(t, "target");
            assert!(
                t.starts_with("hub") && !t.starts_with("haproxy"),
                "hubs are scraped directly, not through the load balancer: {t}"
            );
        }
    }
}

// ---------------------------------------------------------- docker compose

fn compose() -> Yaml {
    repo_yaml("docker-compose.yml")
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &compose["services"][name];
    assert!(s.is_mapping(), "docker-compose.yml has no service `{name}`");
    s
}

fn env_of(service: &Yaml) -> HashMap<String, String> {
    match &service["environment"] {
        Yaml::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    other => panic!("environment value {other:?}"),
                };
                (str_of(k, "variable").to_string(), v)
            })
            .collect(),
        Yaml::Null => HashMap::new(),
        other => panic!("environment should be a mapping, is {other:?}"),
    }
}

/// (host path relative to the repo, container path, options) of every bind
/// mount (`./...:...`) of a service.
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    service["volumes"]
        .as_sequence()
        .map(|v| {
            v.iter()
                .map(|m| str_of(m, "volume"))
                .filter(|m| m.starts_with("./"))
                .map(|m| {
                    let mut parts = m.splitn(3, ':');
                    let host = parts.next().unwrap_or_default();
                    let target = parts.next().unwrap_or_default();
                    (
                        host.trim_start_matches("./")
                            .trim_end_matches('/')
                            .to_string(),
                        target.to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn mount_of(service: &Yaml, host: &str) -> String {
    bind_mounts(service)
        .into_iter()
        .find(|(h, _)| h == host)
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("{service:?} does not mount ./{host}"))
}

#[test]
fn compose_has_the_whole_stack() {
    let c = compose();
    let names: BTreeSet<&str> = c["services"]
        .as_mapping()
        .expect("services")
        .keys()
        .map(|k| str_of(k, "service name"))
        .collect();
    for s in [
        "redis",
        "hub1",
        "hub2",
        "hub3",
        "haproxy",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(s), "service {s} missing: {names:?}");
    }

    // Redis persists to a named volume.
    let redis = service(&c, "redis");
    let cmd: Vec<&str> = redis["command"]
        .as_sequence()
        .expect("redis command list")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert!(
        cmd.windows(2).any(|w| w == ["--appendonly", "yes"]),
        "{cmd:?}"
    );
    let volumes: Vec<&str> = redis["volumes"]
        .as_sequence()
        .expect("redis volumes")
        .iter()
        .map(|v| str_of(v, "volume"))
        .collect();
    let data = volumes
        .iter()
        .find(|v| v.ends_with(":/data"))
        .expect("redis mounts a volume at /data");
    let volume_name = data.split(':').next().unwrap_or_default();
    assert!(
        c["volumes"].get(volume_name).is_some(),
        "{volume_name} is not a named volume"
    );

    // Three hubs from deploy/Dockerfile, each its own instance on Redis.
    let mut ids = BTreeSet::new();
    for i in 1..=3 {
        let hub = service(&c, &format!("hub{i}"));
        assert_eq!(str_of(&hub["build"]["context"], "build.context"), ".");
        let dockerfile = str_of(&hub["build"]["dockerfile"], "build.dockerfile");
        assert_eq!(dockerfile, "deploy/Dockerfile");
        assert!(repo_path(dockerfile).is_file());
        let env = env_of(hub);
        // Single Redis unless .env selects the `sentinel` profile.
        assert_eq!(
            compose_default(&env["REDIS_URL"]),
            "redis://redis:6379",
            "hub{i}"
        );
        assert_eq!(compose_default(&env["REDIS_SENTINELS"]), "", "hub{i}");
        assert_eq!(env["MCP_SERVER_HOST"], "0.0.0.0", "hub{i}");
        assert_eq!(env["MCP_SERVER_PORT"], "8002", "hub{i}");
        assert!(
            ids.insert(env["INSTANCE_ID"].clone()),
            "duplicate INSTANCE_ID"
        );
        assert_eq!(env["INSTANCE_ID"], format!("hub{i}"));
    }

    // HAProxy: the repo's haproxy.cfg, listening on 8002, one slot per hub
    // (that it publishes exactly LB_BIND's port: ops_security).
    let lb = service(&c, "haproxy");
    assert_eq!(
        mount_of(lb, "haproxy/haproxy.cfg"),
        "/usr/local/etc/haproxy/haproxy.cfg"
    );
    let env = env_of(lb);
    assert_eq!(env["LB_BIND"], ":8002");
    for i in 1..=3 {
        assert_eq!(env[&format!("HUB{i}_ADDR")], format!("hub{i}:8002"));
    }
}

/// The value compose gives `${VAR-default}` / `${VAR:-default}` when VAR
/// is unset; any other value as it is.
fn compose_default(value: &str) -> &str {
    value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .and_then(|v| v.split_once('-'))
        .map_or(value, |(_, default)| default)
}

/// The `${NAME}` placeholders of deploy/redis/sentinel.conf.
fn sentinel_placeholders() -> BTreeSet<String> {
    let template = repo_file("deploy/redis/sentinel.conf");
    let names: BTreeSet<String> = template
        .split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string()))
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(!names.is_empty(), "sentinel.conf has no placeholders");
    names
}

#[test]
fn compose_sentinel_profile_runs_the_shared_sentinel_template() {
    let c = compose();
    let profiles = |s: &Yaml| -> Vec<String> {
        s["profiles"]
            .as_sequence()
            .map(|p| p.iter().map(|v| str_of(v, "profile").to_string()).collect())
            .unwrap_or_default()
    };
    // Only the Sentinel pieces are in the profile: the default stack keeps
    // its single Redis.
    for (name, s) in c["services"].as_mapping().expect("services") {
        let name = str_of(name, "service name");
        let sentinel_part = name == "redis-replica" || name.starts_with("sentinel");
        let expected: Vec<String> = if sentinel_part {
            vec!["sentinel".into()]
        } else {
            vec![]
        };
        assert_eq!(profiles(s), expected, "profiles of {name}");
    }
    let replica: Vec<&str> = service(&c, "redis-replica")["command"]
        .as_sequence()
        .expect("replica command")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert!(
        replica
            .windows(3)
            .any(|w| w == ["--replicaof", "redis", "6379"]),
        "{replica:?}"
    );

    // Three Sentinels, each rendering every placeholder of the template
    // the local cluster renders too.
    let placeholders = sentinel_placeholders();
    let template = repo_file("deploy/redis/sentinel.conf");
    let mut addresses = Vec::new();
    for i in 1..=3 {
        let s = service(&c, &format!("sentinel{i}"));
        let target = mount_of(s, "deploy/redis/sentinel.conf");
        let script = s["entrypoint"]
            .as_sequence()
            .expect("entrypoint")
            .iter()
            .map(|a| str_of(a, "arg"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(script.contains(&target), "sentinel{i} renders {target}");
        assert!(script.contains("--sentinel"), "{script}");
        let env = env_of(s);
        for name in &placeholders {
            assert!(env.contains_key(name), "sentinel{i} sets {name}");
            assert!(
                script.contains(&format!("s/[$$]{{{name}}}/$${name}/")),
                "sentinel{i} substitutes {name}: {script}"
            );
        }
        assert_eq!(env["MASTER_HOST"], "redis");
        assert_eq!(env["MASTER_PORT"], "6379");
        addresses.push(format!("sentinel{i}:{}", env["SENTINEL_PORT"]));
    }
    let script = repo_file("scripts/redis-topology.sh");
    assert!(repo_file("scripts/cluster").contains(". \"$root/scripts/redis-topology.sh\""));
    assert!(script.contains("\"$root/deploy/redis/sentinel.conf\""));
    for name in &placeholders {
        assert!(
            script.contains(&format!("s/\\${{{name}}}/")),
            "scripts/redis-topology.sh substitutes {name}"
        );
    }

    // The .env lines that switch the hubs over name these Sentinels and the
    // master the template monitors.
    let master = template
        .lines()
        .find_map(|l| l.strip_prefix("sentinel monitor "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("sentinel monitor line");
    let example = repo_file(".env.example");
    for line in [
        "# COMPOSE_PROFILES=sentinel".to_string(),
        "# REDIS_URL=".to_string(),
        format!("# REDIS_SENTINELS={}", addresses.join(",")),
        format!("# REDIS_SENTINEL_MASTER={master}"),
    ] {
        assert!(
            example.lines().any(|l| l == line),
            ".env.example lacks `{line}`"
        );
    }
}

#[test]
fn compose_mounts_the_files_the_local_cluster_uses() {
    let c = compose();
    // Every bind mount exists in the repository.
    for (name, s) in c["services"].as_mapping().expect("services") {
        for (host, _) in bind_mounts(s) {
            assert!(
                repo_path(&host).exists(),
                "service {name:?} mounts ./{host}, which does not exist"
            );
        }
    }
    // The local loopback cluster runs the same haproxy.cfg and
    // prometheus.yml (scripts/cluster) ...
    let script = repo_file("scripts/cluster");
    assert!(script.contains("\"$root/haproxy/haproxy.cfg\""));
    assert!(script.contains("\"$root/deploy/prometheus/prometheus.yml\""));
    assert!(script.contains("\"$root/deploy/prometheus/rules\""));

    // ... and compose runs Prometheus on deploy/prometheus/ as a whole, so
    // prometheus.yml finds targets/ and rules/ next to it.
    let prom = service(&c, "prometheus");
    let dir = mount_of(prom, "deploy/prometheus");
    let args: Vec<&str> = prom["command"]
        .as_sequence()
        .expect("prometheus command")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert!(
        args.contains(&format!("--config.file={dir}/prometheus.yml").as_str()),
        "{args:?}"
    );

    // The compose targets are the compose services and their ports.
    let hubs = repo_yaml("deploy/prometheus/targets/hubs.yml");
    let listed: Vec<(String, String)> = hubs
        .as_sequence()
        .expect("target groups")
        .iter()
        .map(|g| {
            (
                str_of(&g["targets"][0], "target").to_string(),
                str_of(&g["labels"]["instance"], "instance label").to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = (1..=3)
        .map(|i| {
            let hub = service(&c, &format!("hub{i}"));
            let env = env_of(hub);
            (
                format!("hub{i}:{}", env["MCP_SERVER_PORT"]),
                env["INSTANCE_ID"].clone(),
            )
        })
        .collect();
    assert_eq!(listed, expected);
    let stats_port = env_of(service(&c, "haproxy"))["STATS_BIND"]
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let lb = repo_yaml("deploy/prometheus/targets/haproxy.yml");
    assert_eq!(
        str_of(&lb[0]["targets"][0], "haproxy target"),
        format!("haproxy:{stats_port}")
    );

    // Grafana: provisioning and dashboards mounted where the provider
    // looks, datasource URL given.
    let grafana = service(&c, "grafana");
    assert_eq!(
        mount_of(grafana, "grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let dashboards_dir = mount_of(grafana, "grafana/dashboards");
    let provider = repo_yaml("grafana/provisioning/dashboards/mcp-hub.yaml");
    assert_eq!(
        str_of(
            &provider["providers"][0]["options"]["path"],
            "provider path"
        ),
        dashboards_dir
    );
    assert_eq!(env_of(grafana)["PROMETHEUS_URL"], "http://prometheus:9090");
    let ds = repo_yaml("grafana/provisioning/datasources/prometheus.yaml");
    let ds = &ds["datasources"][0];
    assert_eq!(str_of(&ds["uid"], "uid"), "prometheus");
    assert_eq!(str_of(&ds["type"], "type"), "prometheus");
    assert_eq!(str_of(&ds["url"], "url"), "${PROMETHEUS_URL}");
}

// ------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged_with_a_healthcheck() {
    let text = repo_file("deploy/Dockerfile");
    // Instructions with their continuation lines joined.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(stripped) = t.strip_suffix('\\') {
            current.push_str(stripped);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        instructions.push(std::mem::take(&mut current));
    }
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains("rust:") && froms[0].ends_with(" AS builder"));
    let runtime = froms.last().expect("a runtime stage");
    assert!(
        runtime.contains("gcr.io/distroless/") && runtime.contains(":nonroot"),
        "a distroless runtime: {runtime}"
    );
    assert!(
        instructions
            .iter()
            .any(|i| i.starts_with("RUN ") && i.contains("cargo build --release --locked")),
        "the build must use the lock file"
    );
    let last_stage = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("FROM");
    let user = instructions[last_stage..]
        .iter()
        .find(|i| i.starts_with("USER "))
        .expect("the runtime stage sets USER");
    let user = user.trim_start_matches("USER ").trim();
    assert!(
        !user.starts_with("root") && !user.starts_with("0:") && user != "0",
        "runs as root: {user}"
    );
    // Distroless has no shell: nothing in the runtime stage may need one.
    for i in &instructions[last_stage..] {
        assert!(
            !i.starts_with("RUN "),
            "the runtime stage has no shell: {i}"
        );
    }
    let health = instructions
        .iter()
        .find(|i| i.starts_with("HEALTHCHECK "))
        .expect("HEALTHCHECK");
    assert!(
        health.contains(r#"CMD ["/usr/local/bin/mcp-hub", "health", "--live""#),
        "exec form, liveness: {health}"
    );
    assert!(instructions.iter().any(|i| i == "EXPOSE 8002"));

    // Every COPY from the build context exists and is not in .dockerignore.
    let ignored: Vec<String> = repo_file(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    let mut copied = Vec::new();
    for i in instructions.iter().filter(|i| i.starts_with("COPY ")) {
        if i.contains("--from=") {
            continue;
        }
        let parts: Vec<&str> = i.split_whitespace().skip(1).collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo_path(src).exists(), "COPY {src}: not in the repository");
            let top = src.split('/').next().unwrap_or_default();
            assert!(
                !ignored.iter().any(|g| g == top),
                "COPY {src}, but .dockerignore excludes {top}"
            );
            copied.push(src.to_string());
        }
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src", "web"] {
        assert!(copied.iter().any(|c| c == needed), "{needed} is not copied");
    }
    // (.env, a secret: ops_security::env_example_lists_every_variable_compose_reads_with_no_value)
    for never in ["target", ".git"] {
        assert!(
            ignored.iter().any(|g| g == never),
            ".dockerignore must exclude {never}"
        );
    }
}

// ---------------------------------------------------------------- Grafana

/// Metric names defined in src/metrics.rs, with the series a histogram
/// exposes.
fn hub_metric_names() -> BTreeSet<String> {
    let src = repo_file("src/metrics.rs");
    let mut names = BTreeSet::new();
    let mut rest = src.as_str();
    while let Some(at) = rest.find("\"hub_") {
        let tail = &rest[at + 1..];
        let end = tail.find('"').expect("closing quote");
        let name = &tail[..end];
        let before = &rest[..at];
        let is_histogram = before
            .trim_end()
            .trim_end_matches('(')
            .trim_end()
            .ends_with("HistogramOpts::new");
        if is_histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_string());
        }
        rest = &tail[end..];
    }
    assert!(names.contains("hub_ws_connections"), "{names:?}");
    assert!(
        names.contains("hub_broadcast_latency_seconds_bucket"),
        "{names:?}"
    );
    names
}

/// Metric names an expression reads: identifiers left after removing
/// strings, label matchers, ranges, grouping clauses, function calls and
/// keywords.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_string = false;
    for ch in expr.chars() {
        match ch {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => cleaned.push(ch),
        }
        if matches!(ch, '{' | '}' | '[' | ']') {
            cleaned.push(' ');
        }
    }
    // Drop `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`.
    let mut tokens: Vec<String> = Vec::new();
    let mut word = String::new();
    for ch in cleaned.chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' || ch == '.' {
            word.push(ch);
        } else {
            if !word.is_empty() {
                tokens.push(std::mem::take(&mut word));
            }
            if !ch.is_whitespace() {
                tokens.push(ch.to_string());
            }
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        let next = tokens.get(i + 1).map(String::as_str);
        if matches!(
            t,
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        ) {
            if next == Some("(") {
                while i < tokens.len() && tokens[i] != ")" {
                    i += 1;
                }
            }
        } else if matches!(t, "and" | "or" | "unless" | "bool" | "offset") {
        } else if matches!(next, Some("(" | "by" | "without")) {
            // A function, or an aggregation (`sum by (le) (...)`).
        } else if t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && !t.starts_with("$")
        {
            out.insert(t.to_string());
        }
        i += 1;
    }
    out
}

fn allowed_metric(name: &str, hub: &BTreeSet<String>) -> bool {
    hub.contains(name)
        || name == "up"
        || name.starts_with("process_")
        || name.starts_with("haproxy_")
}

#[test]
fn metric_name_extraction_sees_through_promql() {
    let m = metrics_in(
        r#"histogram_quantile(0.99, sum by (le, op) (rate(hub_redis_command_duration_seconds_bucket{instance=~"$instance", op!="x y"}[$__rate_interval]))) / ignoring (op) up"#,
    );
    assert_eq!(
        m.into_iter().collect::<Vec<_>>(),
        ["hub_redis_command_duration_seconds_bucket", "up"]
    );
}

fn dashboard() -> Json {
    serde_json::from_str(&repo_file("grafana/dashboards/mcp-hub-overview.json"))
        .expect("the dashboard is JSON")
}

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    assert!(d["id"].is_null(), "provisioned dashboards have id null");
    assert_eq!(d["uid"], "mcp-hub-overview");
    let vars = d["templating"]["list"].as_array().expect("templating");
    let instance = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an `instance` variable");
    assert_eq!(instance["datasource"]["uid"], "prometheus");
    assert!(
        instance["definition"]
            .as_str()
            .is_some_and(|q| q.contains("label_values(") && q.contains("instance")),
        "{instance}"
    );

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_i64().expect("x"),
            g["y"].as_i64().expect("y"),
            g["w"].as_i64().expect("w"),
            g["h"].as_i64().expect("h"),
        );
        assert!(
            x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24,
            "{title}: {g}"
        );
        for (bx, by, bw, bh, other) in &boxes {
            let overlap = x < bx + bw && *bx < x + w && y < by + bh && *by < y + h;
            assert!(!overlap, "panels `{title}` and `{other}` overlap");
        }
        boxes.push((x, y, w, h, title.clone()));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "prometheus", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "prometheus", "{title}");
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }
}

/// Every PromQL expression of the dashboard (with the panel title).
fn dashboard_exprs() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or("?").to_string(),
                t["expr"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

#[test]
fn dashboard_queries_only_existing_metrics() {
    let hub = hub_metric_names();
    let mut used = BTreeSet::new();
    for (title, expr) in dashboard_exprs() {
        let metrics = metrics_in(&expr);
        assert!(!metrics.is_empty(), "{title}: no metric in {expr}");
        let per_hub = metrics
            .iter()
            .any(|m| m.starts_with("hub_") || m.starts_with("process_"));
        for m in metrics {
            assert!(
                allowed_metric(&m, &hub),
                "panel `{title}` queries `{m}`, which src/metrics.rs does not define: {expr}"
            );
            used.insert(m);
        }
        if per_hub {
            assert!(
                expr.contains("instance=~\"$instance\""),
                "`{title}` ignores the instance variable: {expr}"
            );
        }
    }
    // The panels the dashboard promises.
    for m in [
        "hub_ws_connections",
        "hub_ws_messages_received_total",
        "hub_ws_messages_sent_total",
        "hub_broadcast_latency_seconds_bucket",
        "hub_errors_total",
        "hub_redis_command_duration_seconds_bucket",
        "hub_ai_requests_total",
        "hub_ai_cache_hits_total",
        "hub_ai_singleflight_joins_total",
        "hub_ai_lock_waits_total",
        "hub_ai_rate_limited_total",
        "hub_agent_calls_total",
        "hub_mcp_tool_calls_total",
        "hub_slow_consumer_disconnects_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(m), "no panel shows {m}");
    }
}

#[test]
fn alert_rules_query_only_existing_metrics() {
    let hub = hub_metric_names();
    let rules = repo_yaml("deploy/prometheus/rules/mcp-hub.yml");
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = str_of(&rule["alert"], "alert");
            let expr = str_of(&rule["expr"], "expr");
            for m in metrics_in(expr) {
                assert!(
                    allowed_metric(&m, &hub),
                    "alert {name} queries unknown `{m}`"
                );
            }
        }
    }
}

// ------------------------------------------------------------- Kubernetes

fn k8s(file: &str) -> Yaml {
    repo_yaml(&format!("deploy/kubernetes/{file}"))
}

#[test]
fn kubernetes_manifests_are_consistent() {
    let kustomization = k8s("kustomization.yaml");
    let resources: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| str_of(r, "resource"))
        .collect();
    for r in &resources {
        assert!(
            repo_path(&format!("deploy/kubernetes/{r}")).is_file(),
            "{r}"
        );
    }
    let mut kinds = BTreeMap::new();
    for r in &resources {
        let doc = k8s(r);
        kinds.insert(str_of(&doc["kind"], "kind").to_string(), doc);
    }
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains_key(kind), "no {kind}");
    }
    // The manifests carry their labels themselves (no `labels:`
    // transformer, which kubectl 1.20's kustomize does not know).
    for (kind, doc) in &kinds {
        for (k, v) in [
            ("app.kubernetes.io/name", "mcp-hub"),
            ("app.kubernetes.io/part-of", "mcp-hub"),
        ] {
            assert_eq!(doc["metadata"]["labels"][k], v, "{kind}: label {k}");
        }
    }
    let config = &kinds["ConfigMap"]["data"];
    let port: i64 = str_of(&config["MCP_SERVER_PORT"], "port")
        .parse()
        .expect("port");
    assert_eq!(str_of(&config["MCP_SERVER_HOST"], "host"), "0.0.0.0");
    assert!(str_of(&config["REDIS_URL"], "REDIS_URL").starts_with("redis://"));
    let shutdown_ms: i64 = str_of(&config["SHUTDOWN_TIMEOUT_MS"], "SHUTDOWN_TIMEOUT_MS")
        .parse()
        .expect("number");

    let deploy = &kinds["Deployment"];
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["ports"][0]["containerPort"].as_i64(), Some(port));
    assert_eq!(
        str_of(&c["readinessProbe"]["httpGet"]["path"], "readiness"),
        "/ready"
    );
    assert_eq!(
        str_of(&c["livenessProbe"]["httpGet"]["path"], "liveness"),
        "/health"
    );
    // The kubelet's sleep: the distroless image has no `sleep` to exec.
    let pre_stop_s: i64 = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .expect("preStop sleep seconds");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace * 1000 > pre_stop_s * 1000 + shutdown_ms,
        "grace {grace}s must exceed preStop {pre_stop_s}s + SHUTDOWN_TIMEOUT_MS {shutdown_ms}ms"
    );
    assert_eq!(
        c["envFrom"][0]["configMapRef"]["name"],
        kinds["ConfigMap"]["metadata"]["name"]
    );
    assert_eq!(
        str_of(
            &c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "INSTANCE_ID"
        ),
        "metadata.name"
    );
    assert!(pod["securityContext"]["runAsNonRoot"].as_bool() == Some(true));

    let selector = &deploy["spec"]["selector"]["matchLabels"];
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector.as_mapping().expect("selector") {
        assert_eq!(&labels[k], v, "pod labels must match the selector");
        assert_eq!(&kinds["Service"]["spec"]["selector"][k], v);
    }
    assert_eq!(
        str_of(
            &kinds["Service"]["spec"]["ports"][0]["targetPort"],
            "targetPort"
        ),
        str_of(&c["ports"][0]["name"], "port name")
    );
    // Every selector of the hub pods is the Deployment's.
    assert_eq!(labels["app.kubernetes.io/name"], "mcp-hub");
    assert_eq!(
        &pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"],
        selector
    );
    assert_eq!(
        &kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        selector
    );
    assert_eq!(
        &kinds["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
        selector
    );
    assert_eq!(&kinds["Service"]["spec"]["selector"], selector);
    let hpa = &kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"];
    assert_eq!(hpa["kind"], "Deployment");
    assert_eq!(hpa["name"], deploy["metadata"]["name"]);
    assert!(
        deploy["spec"].get("replicas").is_none(),
        "the HPA owns the replica count"
    );
}

/// The environment variables the hub reads (its clap settings).
fn hub_env_settings() -> BTreeSet<String> {
    use clap::CommandFactory;
    mcp_hub::config::Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn kubernetes_sentinel_settings_are_hub_settings() {
    let known = hub_env_settings();
    let mut named = BTreeSet::new();
    for file in [
        "deploy/kubernetes/README.md",
        "deploy/kubernetes/configmap.yaml",
    ] {
        let text = repo_file(file);
        for (i, _) in text.match_indices("REDIS_SENTINEL") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            named.insert(name);
        }
    }
    for name in [
        "REDIS_SENTINELS",
        "REDIS_SENTINEL_MASTER",
        "REDIS_SENTINEL_PASSWORD",
    ] {
        assert!(named.contains(name), "deploy/kubernetes documents {name}");
    }
    for name in &named {
        assert!(known.contains(name), "{name} is not a hub setting");
    }
}

/// The Redis that compose and the Kubernetes example run keeps an
/// append-only file, fsynced every second (docs/reliability.md).
#[test]
fn the_shipped_redis_keeps_an_append_only_file() {
    let aof = ["--appendonly", "yes", "--appendfsync", "everysec"];
    let has_aof = |args: &[String]| aof.iter().all(|a| args.iter().any(|x| x == a));
    let compose = repo_yaml("docker-compose.yml");
    for service in ["redis", "redis-replica"] {
        let command: Vec<String> = compose["services"][service]["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{service} has a command"))
            .iter()
            .map(|a| str_of(a, "argument").to_string())
            .collect();
        assert!(has_aof(&command), "compose {service}: {command:?}");
    }
    let text = repo_file("deploy/kubernetes/redis.yaml");
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect();
    let set = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("a StatefulSet");
    let args: Vec<String> = set["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| str_of(a, "argument").to_string())
        .collect();
    assert!(has_aof(&args), "kubernetes redis: {args:?}");
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("a Service");
    // The name the ConfigMap's REDIS_URL points at.
    assert_eq!(service["metadata"]["name"], "redis");
    assert_eq!(
        k8s("configmap.yaml")["data"]["REDIS_URL"],
        "redis://redis:6379"
    );
}

/// The image is set once, in kustomization.yaml's `images:`, to the crate's
/// version; nothing runs `latest`.
#[test]
fn kubernetes_image_is_the_crate_version() {
    let version = env!("CARGO_PKG_VERSION");
    let images = k8s("kustomization.yaml")["images"].clone();
    let images = images.as_sequence().expect("images");
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["name"], "mcp-hub");
    assert_eq!(
        str_of(&images[0]["newTag"], "newTag (quote it)"),
        version,
        "kustomization.yaml's newTag must be Cargo.toml's version"
    );
    let c = &k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "mcp-hub", "the tag comes from `images:` only");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    // No manifest names `latest`, and every other image has a tag.
    for entry in std::fs::read_dir(repo_path("deploy/kubernetes")).expect("deploy/kubernetes") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("manifest");
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') {
                continue;
            }
            assert!(!line.contains("latest"), "{}: {line}", path.display());
            if let Some(image) = line.strip_prefix("image:") {
                let image = image.trim();
                assert!(
                    image == "mcp-hub" || image.rsplit('/').next().unwrap().contains(':'),
                    "{}: image {image} without a tag",
                    path.display()
                );
            }
        }
    }
    // The README's build commands tag the same version.
    let readme = repo_file("deploy/kubernetes/README.md");
    assert!(
        readme.contains(&format!("mcp-hub:{version}")),
        "deploy/kubernetes/README.md should build mcp-hub:{version}"
    );
}

#[test]
fn kubernetes_monitoring_scrapes_the_hubs_with_the_alert_rules() {
    let service = k8s("service.yaml");
    let monitor = k8s("servicemonitor.yaml");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let spec = &monitor["spec"];
    for (k, v) in spec["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector")
    {
        assert_eq!(&service["metadata"]["labels"][k], v, "Service label {k:?}");
    }
    let endpoint = &spec["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    // instance = pod name = INSTANCE_ID, as the dashboard and alerts expect.
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "instance");
    assert_eq!(
        endpoint["relabelings"][0]["sourceLabels"][0],
        "__meta_kubernetes_pod_name"
    );
    // The job is named after a Service label: "hub", the job the alert
    // rules and prometheus.yml use.
    let job_label = str_of(&spec["jobLabel"], "jobLabel");
    assert_eq!(service["metadata"]["labels"][job_label], "hub");
    assert!(repo_file("deploy/prometheus/rules/mcp-hub.yml").contains("up{job=\"hub\"}"));

    // The PrometheusRule carries the rules file's groups, unchanged.
    let rule = k8s("prometheusrule.yaml");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    let rules = repo_yaml("deploy/prometheus/rules/mcp-hub.yml");
    assert!(
        rule["spec"]["groups"] == rules["groups"],
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/rules/mcp-hub.yml: \
         regenerate it with the command in its header"
    );
    assert_eq!(
        rule["spec"].as_mapping().expect("spec").len(),
        1,
        "spec has only groups"
    );
}

#[test]
fn kubernetes_network_policies_admit_the_front_prometheus_and_the_hubs() {
    let port = str_of(&k8s("configmap.yaml")["data"]["MCP_SERVER_PORT"], "port")
        .parse::<i64>()
        .expect("port");
    let pod_labels = k8s("deployment.yaml")["spec"]["template"]["metadata"]["labels"].clone();
    let policy = k8s("networkpolicy.yaml");
    let spec = &policy["spec"];
    assert_eq!(spec["policyTypes"].as_sequence().expect("types").len(), 1);
    assert_eq!(spec["policyTypes"][0], "Ingress");
    let rules = spec["ingress"].as_sequence().expect("ingress");
    assert_eq!(rules.len(), 1, "one rule: these peers, this port");
    let ports = rules[0]["ports"].as_sequence().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["port"].as_i64(), Some(port));
    assert_eq!(ports[0]["protocol"], "TCP");
    let peers = rules[0]["from"].as_sequence().expect("from");
    let namespaces: Vec<&Yaml> = peers
        .iter()
        .map(|p| &p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
        .collect();
    assert!(
        namespaces.contains(&&Yaml::from("ingress-nginx")),
        "{peers:?}"
    );
    let prometheus = peers
        .iter()
        .find(|p| p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "prometheus")
        .expect("a Prometheus peer");
    assert!(
        prometheus.get("namespaceSelector").is_some(),
        "{prometheus:?}"
    );
    assert!(
        peers
            .iter()
            .any(|p| p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "haproxy"),
        "an HAProxy peer"
    );

    // redis.yaml: Redis only from the hub pods, on its port.
    let text = repo_file("deploy/kubernetes/redis.yaml");
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect();
    let set = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("StatefulSet");
    let redis_port = set["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        .as_i64()
        .expect("redis port");
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy")
        .expect("NetworkPolicy");
    let spec = &policy["spec"];
    for (k, v) in spec["podSelector"]["matchLabels"]
        .as_mapping()
        .expect("podSelector")
    {
        assert_eq!(&set["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert_eq!(spec["policyTypes"][0], "Ingress");
    let rules = spec["ingress"].as_sequence().expect("ingress");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["ports"][0]["port"].as_i64(), Some(redis_port));
    let peers = rules[0]["from"].as_sequence().expect("from");
    assert_eq!(peers.len(), 1, "only the hubs: {peers:?}");
    assert!(peers[0].get("namespaceSelector").is_none());
    let hubs = peers[0]["podSelector"]["matchLabels"]
        .as_mapping()
        .expect("hub selector");
    assert!(hubs.contains_key("app.kubernetes.io/component"));
    for (k, v) in hubs {
        assert_eq!(&pod_labels[k], v, "the Redis policy selects the hub pods");
    }
}

/// A tool these tests need: a failure with the way to install it, never a
/// silent skip.
fn required(tool: &str, install: &str) {
    assert!(
        have(tool),
        "`{tool}` is not installed: {install}, or run ./scripts/test, which installs it"
    );
}

const KUBECTL_HINT: &str =
    "apt-get install -y kubernetes-client (Debian's kubectl; any kubectl from 1.20 on works)";

/// kubernetes-validate (`python3 -m kubernetes_validate`, so that pip's
/// script directory need not be on PATH) and the newest Kubernetes version
/// its schemas cover.
fn kubernetes_validate() -> String {
    let (ok, out) = run(Command::new("python3")
        .arg("-c")
        .arg("import kubernetes_validate.utils as u; print(u.latest_version())"));
    assert!(
        ok,
        "kubernetes-validate is not installed: python3 -m pip install kubernetes-validate, \
         or run ./scripts/test, which installs it\n{out}"
    );
    out.trim().to_string()
}

/// `kubectl kustomize deploy/kubernetes`: the rendered documents.
fn kustomize() -> (String, Vec<Json>) {
    required("kubectl", KUBECTL_HINT);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_path("deploy/kubernetes"))
        .output()
        .expect("running kubectl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl kustomize:\n{stderr}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect();
    (text, docs)
}

#[test]
fn kustomize_renders_the_manifests() {
    let (text, docs) = kustomize();
    let kinds: BTreeSet<&str> = docs
        .iter()
        .map(|d| d["kind"].as_str().expect("kind"))
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from:\n{text}");
    }
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("mcp-hub:{}", env!("CARGO_PKG_VERSION"))
    );
    assert!(!text.contains(":latest"), "{text}");
}

/// JSON Schemas of the Prometheus Operator's kinds (monitoring.coreos.com/v1),
/// for the fields the manifests use, as the operator's CRDs define them:
/// kubernetes-validate has schemas for Kubernetes' own kinds only. Unknown
/// fields are refused, as the strict built-in schemas do.
fn operator_schemas() -> Json {
    let duration = serde_json::json!({
        "type": "string",
        "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
    });
    let labels = serde_json::json!({
        "type": "object", "additionalProperties": {"type": "string"}
    });
    let metadata = serde_json::json!({
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "namespace": {"type": "string"},
            "labels": labels,
            "annotations": labels
        },
        "additionalProperties": false
    });
    let head = |kind: &str| {
        serde_json::json!({
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": metadata,
        })
    };
    let with_spec = |kind: &str, spec: Json| {
        let mut properties = head(kind);
        properties["spec"] = spec;
        serde_json::json!({
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": properties,
            "additionalProperties": false
        })
    };
    let service_monitor = with_spec(
        "ServiceMonitor",
        serde_json::json!({
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": labels},
                    "additionalProperties": false
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": duration,
                            "scrapeTimeout": duration,
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "sourceLabels": {
                                            "type": "array",
                                            "items": {
                                                "type": "string",
                                                "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"
                                            }
                                        },
                                        "targetLabel": {"type": "string"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "separator": {"type": "string"},
                                        "action": {"enum": [
                                            "replace", "keep", "drop", "hashmod",
                                            "labelmap", "labeldrop", "labelkeep",
                                            "lowercase", "uppercase", "keepequal",
                                            "dropequal"
                                        ]}
                                    },
                                    "additionalProperties": false
                                }
                            }
                        },
                        "additionalProperties": false
                    }
                }
            },
            "additionalProperties": false
        }),
    );
    let prometheus_rule = with_spec(
        "PrometheusRule",
        serde_json::json!({
            "type": "object",
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": duration,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "oneOf": [
                                        {"required": ["alert"]},
                                        {"required": ["record"]}
                                    ],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": duration,
                                        "keep_firing_for": duration,
                                        "labels": labels,
                                        "annotations": labels
                                    },
                                    "additionalProperties": false
                                }
                            }
                        },
                        "additionalProperties": false
                    }
                }
            },
            "additionalProperties": false
        }),
    );
    serde_json::json!({
        "monitoring.coreos.com/v1/ServiceMonitor": service_monitor,
        "monitoring.coreos.com/v1/PrometheusRule": prometheus_rule,
    })
}

/// Validates `docs` against [`operator_schemas`] with Python's jsonschema
/// (a dependency of kubernetes-validate): success and the report.
fn validate_operator_kinds(dir: &TempDir, docs: &[Json]) -> (bool, String) {
    let schemas = dir.write("schemas.json", &operator_schemas().to_string());
    let docs = dir.write("docs.json", &Json::from(docs.to_vec()).to_string());
    run(Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import json, sys, jsonschema
schemas = json.load(open(sys.argv[1]))
bad = 0
for doc in json.load(open(sys.argv[2])):
    key = doc["apiVersion"] + "/" + doc["kind"]
    errors = list(jsonschema.Draft202012Validator(schemas[key]).iter_errors(doc))
    for e in errors:
        print("ERROR", key, ".".join(map(str, e.absolute_path)), e.message)
    if not errors:
        print("INFO", key, doc["metadata"]["name"], "passed")
    bad = bad or errors
sys.exit(1 if bad else 0)
"#,
        )
        .arg(schemas)
        .arg(docs))
}

/// The oldest Kubernetes the manifests are checked against, besides the
/// newest kubernetes-validate knows: the hub's `preStop` is the kubelet's
/// own `sleep` action (the image is distroless, with no `sleep` to exec),
/// on by default from 1.30.
const OLDEST_KUBERNETES: &str = "1.30";

/// The rendered set, and redis.yaml, pass kubernetes-validate's strict
/// schemas; the Prometheus Operator's kinds, which it has no schema for,
/// pass [`operator_schemas`]. A kind neither knows fails the test.
#[test]
fn kubernetes_manifests_pass_schema_validation() {
    let newest = kubernetes_validate();
    let versions = [OLDEST_KUBERNETES, newest.as_str()];
    let (text, docs) = kustomize();
    let dir = TempDir::new();
    let rendered = dir.write("rendered.yaml", &text);
    let schemas = operator_schemas();
    let operator_kind = |d: &Json| {
        schemas
            .get(format!(
                "{}/{}",
                d["apiVersion"].as_str().unwrap_or_default(),
                d["kind"].as_str().unwrap_or_default()
            ))
            .is_some()
    };
    for file in [rendered, repo_path("deploy/kubernetes/redis.yaml")] {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "kubernetes_validate", "--strict"]);
        for v in versions {
            cmd.arg("-k").arg(v);
        }
        let (ok, out) = run(cmd.arg(&file));
        assert!(ok, "kubernetes-validate {}:\n{out}", file.display());
        let file_docs: Vec<Json> = if file.ends_with("rendered.yaml") {
            docs.clone()
        } else {
            serde_yaml::Deserializer::from_str(&repo_file("deploy/kubernetes/redis.yaml"))
                .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
                .collect()
        };
        let builtin = file_docs.iter().filter(|d| !operator_kind(d)).count();
        let passed = out.lines().filter(|l| l.starts_with("INFO ")).count();
        assert_eq!(
            passed,
            builtin * versions.len(),
            "every built-in kind passes on every version:\n{out}"
        );
        for line in out.lines().filter(|l| !l.starts_with("INFO ")) {
            assert!(
                line.starts_with("WARN ")
                    && line.contains("Couldn't find schema for kind")
                    && (line
                        .contains("kind ServiceMonitor with api version monitoring.coreos.com/v1")
                        || line.contains(
                            "kind PrometheusRule with api version monitoring.coreos.com/v1"
                        )),
                "kubernetes-validate has no schema and neither has this test: {line}"
            );
        }
    }
    let operator_docs: Vec<Json> = docs.iter().filter(|d| operator_kind(d)).cloned().collect();
    assert_eq!(operator_docs.len(), 2, "ServiceMonitor and PrometheusRule");
    let (ok, out) = validate_operator_kinds(&dir, &operator_docs);
    assert!(ok, "Prometheus Operator kinds:\n{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" passed")).count(),
        2,
        "{out}"
    );

    // The operator schemas do refuse what the operator would: a misspelt
    // field and a bad duration.
    let mut typo = operator_docs.clone();
    for d in &mut typo {
        if d["kind"] == "ServiceMonitor" {
            d["spec"]["endpoints"][0]["intervall"] = Json::from("15s");
        } else {
            d["spec"]["groups"][0]["rules"][0]["for"] = Json::from("1 minute");
        }
    }
    let (ok, out) = validate_operator_kinds(&dir, &typo);
    assert!(!ok, "{out}");
    assert!(out.contains("'intervall' was unexpected"), "{out}");
    assert!(out.contains("'1 minute' does not match"), "{out}");
}

// ---------------------------------------------------------- scripts/cluster

#[test]
fn cluster_script_is_valid_bash() {
    for script in [
        "scripts/cluster",
        "scripts/redis-topology.sh",
        "scripts/bench-fanout",
        "scripts/bench-curve",
        "scripts/bench-isolation",
        "scripts/bench-registration",
        "scripts/bench-departures",
        "scripts/soak",
    ] {
        let (ok, out) = run(Command::new("bash").arg("-n").arg(repo_path(script)));
        assert!(ok, "{script}: {out}");
        if tool("shellcheck", "shellcheck") {
            let (ok, out) = run(Command::new("shellcheck").arg(repo_path(script)));
            assert!(ok, "shellcheck {script}:\n{out}");
        }
    }
}

#[test]
fn cluster_script_explains_missing_tools() {
    // A PATH with bash and the few tools the script needs before it looks
    // for redis-server and haproxy, and neither of those.
    let dir = std::env::temp_dir().join(format!("mcp-hub-ops-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for t in ["bash", "dirname", "env"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .expect("sh");
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        assert!(!path.is_empty(), "{t} not found");
        let _ = std::os::unix::fs::symlink(&path, dir.join(t));
    }
    let out = Command::new(dir.join("bash"))
        .arg(repo_path("scripts/cluster"))
        .arg("up")
        .env("PATH", &dir)
        .env("CLUSTER_DIR", dir.join("run"))
        .output()
        .expect("run scripts/cluster");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up must fail without redis-server");
    assert!(
        stderr.contains("apt-get install -y redis-server"),
        "no install hint: {stderr}"
    );
    let usage = Command::new("bash")
        .arg(repo_path("scripts/cluster"))
        .arg("--help")
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&usage.stdout);
    assert!(usage.status.success());
    assert!(
        text.contains("scripts/cluster up") && text.contains("--prometheus"),
        "{text}"
    );
}
