//! AI settings (flags and environment), validated when the coordinator is built.

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AiProviderKind {
    Rules,
    Gemini,
    Openai,
}

#[derive(Debug, Clone, Args)]
pub struct AiArgs {
    /// AI provider interpreting natural-language commands.
    #[arg(long, env = "AI_PROVIDER", value_enum, default_value = "rules")]
    pub ai_provider: AiProviderKind,
}
