//! The terminal client (`mcp-hub terminal`) against the protocol cases the
//! SDKs run too (clients/cases/protocol-cases.json, clients/cases/README.md):
//! close codes, resume positions, offsets and request-id matching, through
//! `mcp_hub::terminal::protocol`, the functions the terminal decides with.

use crate::support;

use mcp_hub::terminal::protocol::{
    Position, after_close, after_registration, answered_request, track,
};
use serde_json::{Value, json};
use support::repo_path;

fn cases(kind: &str) -> Vec<Value> {
    let path = repo_path("clients/cases/protocol-cases.json");
    let text = std::fs::read_to_string(&path).expect("clients/cases/protocol-cases.json");
    let all: Value = serde_json::from_str(&text).expect("the cases are JSON");
    let list = all[kind].as_array().cloned().unwrap_or_default();
    assert!(!list.is_empty(), "no `{kind}` cases");
    list
}

fn position(v: &Value) -> Option<Position> {
    (!v.is_null()).then(|| Position {
        offset: v["offset"].as_u64().expect("a case's offset"),
        epoch: v["epoch"].as_str().expect("a case's epoch").to_string(),
    })
}

fn as_json(p: &Option<Position>) -> Value {
    p.as_ref().map_or(
        Value::Null,
        |p| json!({"offset": p.offset, "epoch": p.epoch}),
    )
}

/// Every case is run; the failures are reported together.
fn check(kind: &str, run: impl Fn(&Value) -> Value) {
    let failures: Vec<String> = cases(kind)
        .iter()
        .filter_map(|case| {
            let got = run(case);
            (got != case["expect"])
                .then(|| format!("{}: expected {}, got {got}", case["name"], case["expect"]))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{kind} cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_terminal_decides_every_close_case_alike() {
    check("close", |case| {
        let code = case["code"].as_u64().map(|c| c as u16);
        let renew = case["can_renew_token"].as_bool().expect("can_renew_token");
        json!(after_close(code, renew).as_str())
    });
}

#[test]
fn the_terminal_resumes_from_every_resume_case_alike() {
    check("resume", |case| {
        let since = position(&case["since"]);
        let (recovered, position) = after_registration(since.as_ref(), &case["confirmed"]);
        json!({"recovered": recovered, "position": as_json(&position)})
    });
}

#[test]
fn the_terminal_tracks_offsets_in_every_track_case_alike() {
    check("track", |case| {
        let known = position(&case["known"]);
        let (position, duplicate) = track(known.as_ref(), &case["frame"]);
        json!({"position": as_json(&position), "duplicate": duplicate})
    });
}

#[test]
fn the_terminal_matches_request_ids_in_every_answers_case_alike() {
    check("answers", |case| json!(answered_request(&case["frame"])));
}
