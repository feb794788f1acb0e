//! Logging setup: `RUST_LOG` filters, `LOG_FORMAT` picks text or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    // rmcp logs every stateless /mcp request at info (three lines each).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed write to stderr (its reader went away: `mcp-hub | head`,
        // a dead log shipper) is otherwise reported with eprintln!, which
        // panics and kills whatever task was logging - a connection's
        // reader, or the shutdown signal handler. Lose the line instead.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
