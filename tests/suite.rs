//! Every integration test of the hub, in one test binary: one crate
//! compiles and links `support` once instead of once per file, and the
//! harness runs all files' tests on one pool of threads, so a file's slow
//! test no longer holds the next file back (README, "Tests"). Each file
//! is a module named after it: `cargo test --test suite cluster::` runs
//! tests/cluster.rs. The soak (tests/soak.rs) stays a binary of its own:
//! `scripts/test` runs it beside the rest.

mod support;

mod abuse;
mod admin;
mod agents;
mod ai_cluster;
mod ai_coordination;
mod approval_contract;
mod approvals;
mod asyncapi;
mod auth;
mod browser_safety;
mod chaos;
mod cluster;
mod dashboard;
mod durability;
mod fake_graph;
mod limits;
mod liveness;
mod mcp;
mod membership_contract;
mod observability;
mod ops_cli;
mod ops_config;
mod ops_monitoring;
mod ops_security;
mod process;
mod protocol;
mod protocol_cases;
mod quota_contract;
mod rest;
mod resume;
mod sdk_python;
mod sdk_readme;
mod sdk_typescript;
mod sentinel;
mod sessions;
mod store_contract;
mod terminal_cli;
mod web_client;
mod whatsapp;
mod whatsapp_content;
mod ws_protocol;
