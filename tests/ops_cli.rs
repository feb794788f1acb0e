//! The operator commands of the binary: `check-config` (exit codes, the
//! redacted listing, unknown-setting warnings from the environment and
//! `.env`), `health` against a live hub and a closed port, `completions`
//! and `man`. Each run has an empty environment and a private working
//! directory, so neither a developer's shell nor a stray `.env` counts.

use crate::support;

use std::process::{Output, Stdio};

use support::*;

/// A secret no output may contain (40 bytes: a valid HS256 secret).
const SECRET: &str = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3";

/// `mcp-hub ARGS` in `cwd` with only `envs` in its environment.
async fn run(cwd: &TempDir, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out: Output = tokio::process::Command::new(hub_binary())
        .args(args)
        .current_dir(cwd.path())
        .env_clear()
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run mcp-hub");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_config_exits_0_and_prints_settings_with_secrets_redacted() {
    let dir = TempDir::new();
    // One secret from the environment, one from .env.
    dir.write(".env", "WHATSAPP_APP_SECRET=dotenv-app-secret-value\n");
    let (code, out, err) = run(
        &dir,
        &["check-config"],
        &[("AUTH_JWT_SECRET", SECRET), ("RATE_LIMIT_BURST", "77")],
    )
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for secret in [SECRET, "dotenv-app-secret-value"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} printed:\n{out}{err}"
        );
    }
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} line:\n{out}"))
    };
    assert!(line("AUTH_JWT_SECRET").contains("=<redacted>"));
    assert!(line("AUTH_JWT_SECRET").ends_with("# environment"));
    assert!(line("WHATSAPP_APP_SECRET").contains("=<redacted>"));
    assert!(line("WHATSAPP_APP_SECRET").ends_with("# .env"));
    assert!(line("RATE_LIMIT_BURST").starts_with("RATE_LIMIT_BURST=77 "));
    assert!(line("MCP_SERVER_PORT").ends_with("# default"));
    assert!(err.contains("configuration valid"), "{err}");
}

#[tokio::test]
async fn check_config_exits_2_naming_an_invalid_setting() {
    let dir = TempDir::new();
    // A value the validation refuses, and one clap refuses.
    for (name, value) in [("RATE_LIMIT_PER_SEC", "-1"), ("MCP_SERVER_PORT", "abc")] {
        let (code, out, err) = run(&dir, &["check-config"], &[(name, value)]).await;
        assert_eq!(code, 2, "{name}={value}: stdout:\n{out}\nstderr:\n{err}");
        assert!(
            err.lines()
                .any(|l| l.starts_with("error:") && l.contains(name)),
            "{name}={value}: {err}"
        );
    }
}

#[tokio::test]
async fn check_config_warns_on_typos_with_the_closest_setting() {
    let dir = TempDir::new();
    dir.write(".env", "REDIS_URI=redis://127.0.0.1:6379\n");
    let envs = [("RATE_LIMIT_PER_SECOND", "5")];
    let (code, out, err) = run(&dir, &["check-config"], &envs).await;
    assert_eq!(code, 0, "a warning only: {err}");
    assert!(
        err.contains("warning: unknown setting RATE_LIMIT_PER_SECOND (in environment); did you mean RATE_LIMIT_PER_SEC?"),
        "{err}"
    );
    assert!(
        err.contains("warning: unknown setting REDIS_URI (in .env); did you mean REDIS_URL?"),
        "{err}"
    );
    // Unknown names are never listed as settings.
    assert!(!out.contains("RATE_LIMIT_PER_SECOND"), "{out}");
}

#[tokio::test]
async fn check_config_strict_makes_an_unknown_setting_exit_2() {
    let dir = TempDir::new();
    let envs = [("RATE_LIMIT_PER_SECOND", "5")];
    let (code, _, err) = run(&dir, &["check-config", "--strict"], &envs).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error: unknown setting RATE_LIMIT_PER_SECOND"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_0_against_a_ready_hub() {
    let hub = TestHub::start(&[]).await;
    let dir = TempDir::new();
    let base = hub.http_url("");
    let (code, out, err) = run(&dir, &["health", "--url", &base], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/ready"), "{out}");
    let (code, out, err) = run(&dir, &["health", "--live", "--url", &base], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/health"), "{out}");
    // No --url: MCP_SERVER_PORT says where (0.0.0.0 means loopback).
    let port = hub.addr.port().to_string();
    let envs = [("MCP_SERVER_HOST", "0.0.0.0"), ("MCP_SERVER_PORT", &port)];
    let (code, out, err) = run(&dir, &["health"], &envs).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn health_exits_1_against_a_closed_port() {
    let dir = TempDir::new();
    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, out, err) = run(&dir, &["health", "--url", &url], &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&url), "{err}");
}

#[tokio::test]
async fn completions_for_bash_know_the_ops_commands() {
    let dir = TempDir::new();
    let (code, out, err) = run(&dir, &["completions", "bash"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    assert!(out.contains("check-config"), "{out}");
}

#[tokio::test]
async fn man_prints_a_roff_page() {
    let dir = TempDir::new();
    let (code, out, err) = run(&dir, &["man"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with('.'), "{}", &out[..out.len().min(200)]);
    assert!(
        out.lines().any(|l| l.starts_with(".TH mcp-hub 1")),
        "{}",
        &out[..out.len().min(400)]
    );
    assert!(
        out.contains("check\\-config"),
        "the page lists the subcommands"
    );
    assert!(out.contains("Real\\-time hub"), "the hub's own description");
}
