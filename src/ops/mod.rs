//! The operator commands: `check-config`, `health`, `completions`, `man`.

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use mcp_hub::config::check::{effective_settings, known_settings, render, unknown_settings};
use mcp_hub::config::{CheckConfigArgs, HealthArgs, command};

/// `mcp-hub check-config`: unknown settings (warnings, errors with
/// `--strict`), then the validation `serve` runs before it opens its store
/// (and the contacts file it reads), then the effective settings on stdout.
/// Exit 0 when valid, 2 naming the setting otherwise.
pub fn check_config(args: CheckConfigArgs, before_dotenv: &HashSet<String>) -> ExitCode {
    let dotenv_keys: HashSet<String> = dotenvy::dotenv_iter()
        .map(|iter| iter.filter_map(Result::ok).map(|(k, _)| k).collect())
        .unwrap_or_default();
    let from_dotenv = |name: &str| !before_dotenv.contains(name) && dotenv_keys.contains(name);

    let mut cmd = command();
    let known = known_settings(&cmd);
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    let present = names.iter().map(|n| {
        let source = if from_dotenv(n) {
            ".env"
        } else {
            "environment"
        };
        (n.as_str(), source)
    });
    let unknown = unknown_settings(&known, present);
    let level = if args.strict { "error" } else { "warning" };
    for u in &unknown {
        eprintln!("{level}: {u}");
    }

    let strict = args.strict;
    let config = match args.serve.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &config.contacts_file
        && let Err(reason) = mcp_hub::whatsapp::simulated::load_contacts(path)
    {
        eprintln!(
            "error: invalid setting CONTACTS_FILE: {}: {reason}",
            path.display()
        );
        return ExitCode::from(2);
    }

    // The same command line again, for where each value came from.
    let matches = match cmd.try_get_matches_from_mut(std::env::args_os()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (Some(sub), Some((_, sub_matches))) =
        (cmd.find_subcommand("check-config"), matches.subcommand())
    else {
        eprintln!("error: not a check-config command line");
        return ExitCode::from(2);
    };
    let settings = effective_settings(sub, sub_matches, from_dotenv);
    let store = match (&config.redis, &config.data_dir) {
        (Some(topology), _) => format!("Redis {topology:?}"),
        (None, Some(dir)) => format!("standalone, data directory {}", dir.display()),
        (None, None) => "standalone, in memory only".to_string(),
    };
    let mut out = std::io::stdout().lock();
    let _ = write!(
        out,
        "# mcp-hub check-config: the settings `serve` would use (secrets redacted)\n\
         # store: {store}\n\
         # auth: {:?}{}\n\
         # listening on: {}\n{}",
        config.auth.mode,
        if config.auth.open_by_default {
            " (off: loopback and no key set)"
        } else {
            ""
        },
        std::net::SocketAddr::new(config.host, config.port),
        render(&settings)
    );
    if strict && !unknown.is_empty() {
        eprintln!("error: {} unknown setting(s) with --strict", unknown.len());
        return ExitCode::from(2);
    }
    eprintln!("configuration valid");
    ExitCode::SUCCESS
}

/// The URL `health` asks: `--url` as given when it has a path, else with
/// `/ready` (`/health` with `--live`) appended; no `--url`: this host's
/// hub as MCP_SERVER_HOST / MCP_SERVER_PORT say (loopback for an
/// unspecified address).
pub fn health_url(args: &HealthArgs) -> String {
    let path = if args.live { "/health" } else { "/ready" };
    let base = match &args.url {
        Some(url) => url.clone(),
        None => {
            let port = std::env::var("MCP_SERVER_PORT")
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok())
                .filter(|p| *p != 0)
                .unwrap_or(8002);
            let host = std::env::var("MCP_SERVER_HOST")
                .ok()
                .and_then(|h| h.trim().parse::<std::net::IpAddr>().ok())
                .map(|ip| match ip {
                    std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    }
                    std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    }
                    ip => ip,
                })
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
            format!("http://{}", std::net::SocketAddr::new(host, port))
        }
    };
    match reqwest::Url::parse(&base) {
        Ok(url) if url.path() != "/" => base,
        _ => format!("{}{path}", base.trim_end_matches('/')),
    }
}

/// `mcp-hub health`: one GET, no proxy, no redirect; 0 on 200, 1 otherwise.
pub fn health(args: &HealthArgs) -> ExitCode {
    let url = health_url(args);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let answer = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()?;
        client.get(&url).send().await
    });
    match answer {
        Ok(r) if r.status() == reqwest::StatusCode::OK => {
            println!("{url}: {}", r.status());
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("{url}: {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mcp-hub completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = command();
    // Into memory first: clap_complete panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "mcp-hub", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mcp-hub man`: the man page, roff.
pub fn man() -> ExitCode {
    let mut out = std::io::stdout().lock();
    match clap_mangen::Man::new(command()).render(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
