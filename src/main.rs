use std::process::ExitCode;

use mcp_hub::config::{Command, parse_cli};

fn main() -> ExitCode {
    // .env fills in only what the environment does not already set. A
    // missing file is fine; a malformed one is reported, not half-applied.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: invalid .env file: {e}");
        return ExitCode::from(2);
    }
    let cli = parse_cli();
    // rediss:// and HTTPS share one TLS crypto provider; an error only
    // means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Terminal(args)) => runtime.block_on(mcp_hub::terminal::run(args)),
        Some(Command::Serve(args)) => serve(&runtime, *args),
        None => serve(&runtime, cli.serve),
    }
}

fn serve(runtime: &tokio::runtime::Runtime, args: mcp_hub::config::ServeArgs) -> ExitCode {
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    mcp_hub::telemetry::init(config.log_format);
    match runtime.block_on(mcp_hub::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
