//! Reading the repository's operations files (compose, Kubernetes,
//! Prometheus, HAProxy) and running the tools that check them.

use std::collections::BTreeMap;
use std::process::Command;

use serde_yaml::Value as Yaml;

use super::{have, repo_path};

/// A file of the repository, as text.
pub fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// A YAML file of the repository, with merge keys (`<<:`) applied.
pub fn repo_yaml(rel: &str) -> Yaml {
    let mut v: Yaml =
        serde_yaml::from_str(&repo_file(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    v.apply_merge()
        .unwrap_or_else(|e| panic!("{rel}: bad merge key: {e}"));
    v
}

/// True when `tool` is installed; otherwise explains the skip on stderr.
pub fn tool(tool: &str, package: &str) -> bool {
    if have(tool) {
        return true;
    }
    eprintln!(
        "SKIPPED: `{tool}` is not installed (apt-get install -y {package}, or run ./scripts/test which installs it)"
    );
    false
}

/// Runs a command: success and its stdout + stderr.
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Compose's interpolation with the given `.env` values (`${V:?..}` fails
/// when V is unset or empty, `${V:-d}` falls back to d).
pub fn interpolate(value: &str, env: &BTreeMap<&str, &str>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        let end = tail.find('}').ok_or("unclosed ${")?;
        let inner = &tail[..end];
        let (name, modifier) = inner.split_at(
            inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len()),
        );
        let present = env.get(name).copied();
        let set = present.filter(|v| !v.is_empty());
        match (set, modifier) {
            (Some(v), _) => out.push_str(v),
            (None, m) if m.starts_with(":?") => return Err(format!("{name}: {}", &m[2..])),
            (None, m) if m.starts_with(":-") => out.push_str(&m[2..]),
            // `-` without `:`: the default only when unset (set but empty
            // stays empty).
            (None, m) if m.starts_with('-') => {
                if present.is_none() {
                    out.push_str(&m[1..]);
                }
            }
            (None, "") => {}
            (None, m) => return Err(format!("unsupported ${{{name}{m}}}")),
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
