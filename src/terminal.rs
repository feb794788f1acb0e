//! The terminal client (placeholder until written).
use std::process::ExitCode;
pub async fn run(_args: crate::config::TerminalArgs) -> ExitCode {
    ExitCode::FAILURE
}
