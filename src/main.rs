use std::process::ExitCode;

use mcp_hub::config::{Command, Invocation, OpsCommand, parse_invocation};

mod ops;

fn main() -> ExitCode {
    // What the environment held before .env (check-config says which
    // settings came from where).
    let before_dotenv: std::collections::HashSet<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    // .env fills in only what the environment does not already set. A
    // missing file is fine; a malformed one is reported, not half-applied.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: invalid .env file: {e}");
        return ExitCode::from(2);
    }
    let cli = match parse_invocation() {
        Invocation::Hub(cli) => *cli,
        Invocation::Ops(OpsCommand::CheckConfig(args)) => {
            return ops::check_config(*args, &before_dotenv);
        }
        Invocation::Ops(OpsCommand::Completions(args)) => return ops::completions(args.shell),
        Invocation::Ops(OpsCommand::Man) => return ops::man(),
        Invocation::Ops(OpsCommand::Health(args)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            return ops::health(&args);
        }
    };
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
        Some(Command::Token(args)) => token(args),
        Some(Command::McpStdio(args)) => {
            ExitCode::from(runtime.block_on(mcp_hub::bridge::run(args)))
        }
        Some(Command::Export(args)) => transfer(&runtime, *args, Transfer::Export),
        Some(Command::Import(args)) => transfer(&runtime, *args, Transfer::Import),
        None => serve(&runtime, cli.serve),
    }
}

enum Transfer {
    Export,
    Import,
}

/// `mcp-hub export` / `import`: the store as JSON lines on stdout / stdin;
/// exit 2 naming a setting, 1 for a failure of the data.
fn transfer(
    runtime: &tokio::runtime::Runtime,
    args: mcp_hub::config::ServeArgs,
    direction: Transfer,
) -> ExitCode {
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let done = runtime.block_on(async {
        match direction {
            Transfer::Export => {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                mcp_hub::transfer::export(&config, &mut out).await
            }
            Transfer::Import => {
                let mut input = std::io::stdin().lock();
                mcp_hub::transfer::import(&config, &mut input).await
            }
        }
    });
    match done {
        Ok(lines) => {
            eprintln!("{lines} lines");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `mcp-hub token`: prints an HS256 token; exit 2 naming the setting.
fn token(args: mcp_hub::config::TokenArgs) -> ExitCode {
    use mcp_hub::auth::{Grant, Role, mint_with, parse_ttl};
    let Some(secret) = args.secret.filter(|s| !s.is_empty()) else {
        eprintln!(
            "error: invalid setting AUTH_JWT_SECRET: not set; export the hubs' secret (or pass --auth-jwt-secret)"
        );
        return ExitCode::from(2);
    };
    let ttl = match parse_ttl(&args.ttl) {
        Ok(ttl) => ttl,
        Err(e) => {
            eprintln!("error: invalid setting --ttl: {e}");
            return ExitCode::from(2);
        }
    };
    let role = Role::parse(&args.role).unwrap_or(Role::Client);
    let grant = Grant {
        audience: args.audience.filter(|a| !a.is_empty()),
        scope: args.scope.filter(|s| !s.is_empty()),
    };
    match mint_with(&secret, &args.sub, &args.sessions, role, ttl, &grant) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
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
    // Spans still batched are sent when this is dropped, after the drain.
    let _telemetry = mcp_hub::telemetry::init(&config);
    // As Go's runtime does: the soft descriptor limit (often 1024) up to
    // the hard one, so connection caps, not the OS default, decide what
    // the hub holds.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    match runtime.block_on(mcp_hub::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
