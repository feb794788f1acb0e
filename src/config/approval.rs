//! Human approval of sends (`APPROVAL_REQUIRED`, docs/protocol.md §14):
//! which sends wait for a person, how long, and how many may wait at once.

use std::time::Duration;

use clap::{Args, ValueEnum};

/// The approval settings, flattened into `ServeArgs`.
#[derive(Debug, Clone, Args)]
pub struct ApprovalArgs {
    /// Which sends wait for a person's `approve`: `off`, `mcp` (sends by MCP tools)
    /// or `ai` (those, and every send an AI interpreted from natural language).
    #[arg(long, env = "APPROVAL_REQUIRED", value_enum, default_value = "off")]
    pub approval_required: ApprovalRequired,
    /// A held send nobody approved within this time is rejected as expired.
    #[arg(long, env = "APPROVAL_TTL_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1_000..=86_400_000))]
    pub approval_ttl_ms: u64,
    /// Held sends one session may have waiting at once; more are refused (`approval_queue_full`).
    #[arg(long, env = "MAX_PENDING_APPROVALS_PER_SESSION", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_pending_approvals_per_session: u32,
}

/// `APPROVAL_REQUIRED`: which sends wait for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ApprovalRequired {
    /// Nothing waits.
    #[default]
    Off,
    /// Sends by MCP tools (`send_message`, and `run_command`'s).
    Mcp,
    /// Sends by MCP tools and every send an AI interpreted (any door).
    Ai,
}

/// Validated approval settings.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    pub required: ApprovalRequired,
    pub ttl: Duration,
    pub max_pending_per_session: usize,
}

impl ApprovalArgs {
    pub fn validate(self) -> ApprovalSettings {
        ApprovalSettings {
            required: self.approval_required,
            ttl: Duration::from_millis(self.approval_ttl_ms),
            max_pending_per_session: self.max_pending_approvals_per_session as usize,
        }
    }
}

impl ApprovalSettings {
    /// Whether a send waits: `from_mcp` (an MCP tool asked for it),
    /// `from_ai` (an AI interpreted it).
    pub fn holds(&self, from_mcp: bool, from_ai: bool) -> bool {
        match self.required {
            ApprovalRequired::Off => false,
            ApprovalRequired::Mcp => from_mcp,
            ApprovalRequired::Ai => from_mcp || from_ai,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_holds_what_it_names() {
        let settings = |required| ApprovalSettings {
            required,
            ttl: Duration::from_secs(1),
            max_pending_per_session: 1,
        };
        let cases = [(false, false), (true, false), (false, true), (true, true)];
        let held = |required| {
            cases
                .iter()
                .map(|&(mcp, ai)| settings(required).holds(mcp, ai))
                .collect::<Vec<_>>()
        };
        assert_eq!(held(ApprovalRequired::Off), [false, false, false, false]);
        assert_eq!(held(ApprovalRequired::Mcp), [false, true, false, true]);
        assert_eq!(held(ApprovalRequired::Ai), [false, true, true, true]);
    }
}
