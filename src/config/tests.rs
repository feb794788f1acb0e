//! The settings as parsed from a command line: defaults, errors naming the
//! setting, the auth mode rules and what `Debug` keeps secret.

use super::*;

fn parse(args: &[&str]) -> Result<HubConfig, String> {
    let cli = Cli::try_parse_from(std::iter::once("mcp-hub").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    let serve = match cli.command {
        Some(Command::Serve(s)) => *s,
        _ => cli.serve,
    };
    serve.validate().map_err(|e| e.to_string())
}

#[test]
fn defaults_are_standalone_on_8002() {
    let cfg = parse(&[]).unwrap();
    assert_eq!(cfg.port, 8002);
    assert!(cfg.redis.is_none());
    assert_eq!(cfg.max_message_bytes, 65536);
    assert_eq!(cfg.max_connections, 10_000);
    assert_eq!(cfg.max_clients_per_session, 100);
    assert_eq!(cfg.max_contacts_per_session, 10_000);
    assert_eq!(cfg.max_rest_body_bytes, 64 * 1024);
    assert_eq!(cfg.field_limits, FieldLimits::default());
    assert!(cfg.allowed_origins.is_empty());
}

#[test]
fn allowed_origins_are_normalized() {
    let cfg = parse(&[
        "--allowed-origins",
        " https://App.Example.com/ ,http://localhost:3000",
    ])
    .unwrap();
    assert_eq!(
        cfg.allowed_origins,
        ["https://app.example.com", "http://localhost:3000"]
    );
}

#[test]
fn serve_subcommand_and_flags() {
    let cfg = parse(&["serve", "--port", "0", "--instance-id", "a"]).unwrap();
    assert_eq!(cfg.port, 0);
    assert_eq!(cfg.instance_id, "a");
}

#[test]
fn bad_settings_name_themselves() {
    let err = parse(&["--redis-url", "http://x"]).unwrap_err();
    assert!(err.contains("REDIS_URL"), "{err}");
    let err = parse(&["--heartbeat-ms", "5000", "--presence-ttl-ms", "1000"]).unwrap_err();
    assert!(err.contains("PRESENCE_TTL_MS"), "{err}");
    let err = parse(&["--allowed-origins", "https://a.example/path"]).unwrap_err();
    assert!(err.contains("ALLOWED_ORIGINS"), "{err}");
    let err = parse(&["--allowed-origins", "*"]).unwrap_err();
    assert!(err.contains("ALLOWED_ORIGINS"), "{err}");
    let err = parse(&["--ping-interval-ms", "5000", "--idle-timeout-ms", "5000"]).unwrap_err();
    assert!(err.contains("IDLE_TIMEOUT_MS"), "{err}");
    let err = parse(&["--port", "notaport"]).unwrap_err();
    assert!(err.contains("--port"), "{err}");
}

#[test]
fn redis_topology_is_one_of_the_exclusive_settings() {
    let cfg = parse(&["--redis-url", "redis://127.0.0.1:6379"]).unwrap();
    assert_eq!(
        cfg.redis,
        Some(RedisTopology::Single {
            url: "redis://127.0.0.1:6379".into()
        })
    );
    let cfg = parse(&[
        "--redis-cluster-urls",
        "127.0.0.1:7001, rediss://:pw@10.0.0.2:7002/",
    ])
    .unwrap();
    assert_eq!(
        cfg.redis,
        Some(RedisTopology::Cluster {
            nodes: vec![
                "redis://127.0.0.1:7001".into(),
                "rediss://:pw@10.0.0.2:7002/".into()
            ]
        })
    );
    for bad in [
        &["--redis-cluster-urls", "127.0.0.1"][..],
        &["--redis-cluster-urls", "http://h:1"],
        &["--redis-cluster-urls", " , "],
        &["--redis-cluster-urls", "h:1", "--redis-url", "redis://h:2"],
        &[
            "--redis-cluster-urls",
            "h:1",
            "--redis-sentinels",
            "h:26379",
            "--redis-sentinel-master",
            "m",
        ],
    ] {
        let err = parse(bad).unwrap_err();
        assert!(err.contains("REDIS_CLUSTER_URLS"), "{bad:?}: {err}");
    }
    let err = parse(&["--redis-key-prefix", "a{b}"]).unwrap_err();
    assert!(err.contains("REDIS_KEY_PREFIX"), "{err}");
}

#[test]
fn auth_mode_rules() {
    let cfg = parse(&[]).unwrap();
    assert_eq!(cfg.auth.mode, AuthMode::None);
    assert!(cfg.auth.open_by_default);
    let err = parse(&["--host", "0.0.0.0"]).unwrap_err();
    assert!(
        err.contains("AUTH_JWT_SECRET") && err.contains("AUTH_MODE=none"),
        "{err}"
    );
    let cfg = parse(&["--host", "0.0.0.0", "--auth-mode", "none"]).unwrap();
    assert_eq!(cfg.auth.mode, AuthMode::None);
    assert!(!cfg.auth.open_by_default);
    let err = parse(&["--auth-mode", "jwt"]).unwrap_err();
    assert!(err.contains("AUTH_JWT_SECRET"), "{err}");
    let err = parse(&["--auth-jwt-secret", "short"]).unwrap_err();
    assert!(err.contains("AUTH_JWT_SECRET"), "{err}");
    let secret = "x".repeat(32);
    let cfg = parse(&["--host", "0.0.0.0", "--auth-jwt-secret", &secret]).unwrap();
    assert_eq!(cfg.auth.mode, AuthMode::Jwt);
    assert!(
        !format!("{cfg:?}").contains(&secret),
        "secrets are redacted"
    );
}

#[test]
fn debug_output_shows_no_secret() {
    let secrets = [
        "auth-secret-0123456789abcdef0123456789",
        "prev-secret-0123456789abcdef0123456789",
        "jwkspass",
        "jwkstoken",
        "wa-access-token-x",
        "wa-app-secret-x",
        "wa-verify-token-x",
        "gemini-key-x",
        "openai-key-x",
        "aipass",
        "redispass",
        "clusterpass",
        "sentinelpass",
        "sentinel-own-pass",
    ];
    let serve = [
        "mcp-hub",
        "--auth-jwt-secret",
        secrets[0],
        "--auth-jwt-previous-secret",
        secrets[1],
        "--auth-jwks-url",
        "https://jwksuser:jwkspass@idp.example/jwks.json?access_token=jwkstoken",
        "--whatsapp-access-token",
        secrets[4],
        "--whatsapp-app-secret",
        secrets[5],
        "--whatsapp-verify-token",
        secrets[6],
        "--gemini-api-key",
        secrets[7],
        "--openai-api-key",
        secrets[8],
        "--openai-base-url",
        "https://aiuser:aipass@proxy.example/v1",
        "--redis-url",
        "redis://:redispass@10.0.0.1:6379",
        "--redis-cluster-urls",
        "redis://:clusterpass@10.0.0.2:7001",
        "--redis-sentinels",
        "redis://:sentinelpass@10.0.0.3:26379",
        "--redis-sentinel-password",
        secrets[13],
    ];
    let terminal = [
        "mcp-hub",
        "terminal",
        "--token",
        secrets[0],
        "--url",
        "ws://127.0.0.1:8002/?token=jwkstoken",
    ];
    let token = [
        "mcp-hub",
        "token",
        "--sub",
        "a",
        "--auth-jwt-secret",
        secrets[0],
    ];
    let mut shown = Vec::new();
    for argv in [&serve[..], &terminal, &token] {
        shown.push(format!("{:?}", Cli::try_parse_from(argv).unwrap()));
    }
    // Validated (REDIS_URL alone: the topologies are exclusive).
    shown.push(format!("{:?}", parse(&serve[1..21]).unwrap()));
    for text in &shown {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    assert!(shown[0].contains("idp.example") && shown[3].contains("<redacted>"));
}

#[test]
fn jwks_url_is_https_or_loopback_http() {
    for ok in [
        "https://idp.example/jwks.json",
        "http://127.0.0.1:9000/jwks",
        "http://localhost/jwks",
        "http://[::1]:8080/jwks",
    ] {
        assert!(check_jwks_url(ok).is_ok(), "{ok}");
    }
    for bad in [
        "http://idp.example/jwks.json",
        "http://10.0.0.1/jwks",
        "ftp://idp.example/jwks",
        "idp.example/jwks",
    ] {
        assert!(check_jwks_url(bad).is_err(), "{bad}");
    }
    let err = parse(&["--auth-jwks-url", "http://u:pw@idp.example/jwks?t=tok"]).unwrap_err();
    assert!(
        err.contains("AUTH_JWKS_URL") && err.contains("https"),
        "{err}"
    );
    assert!(!err.contains("pw") && !err.contains("tok"), "{err}");
}

#[test]
fn cloud_api_needs_its_settings_and_hides_the_token() {
    let err = parse(&["--connector", "cloud_api"]).unwrap_err();
    assert!(err.contains("WHATSAPP_PHONE_NUMBER_ID"), "{err}");
    let err = parse(&[
        "--connector",
        "cloud_api",
        "--whatsapp-phone-number-id",
        "1",
    ])
    .unwrap_err();
    assert!(err.contains("WHATSAPP_ACCESS_TOKEN"), "{err}");
    let err = parse(&[
        "--connector",
        "cloud_api",
        "--whatsapp-access-token",
        "tok-secret",
        "--whatsapp-phone-number-id",
        "123",
        "--whatsapp-app-secret",
        "s",
    ])
    .unwrap_err();
    assert!(err.contains("WHATSAPP_VERIFY_TOKEN"), "{err}");
    let cfg = parse(&[
        "--connector",
        "cloud_api",
        "--whatsapp-access-token",
        "tok-secret",
        "--whatsapp-phone-number-id",
        "123",
        "--whatsapp-app-secret",
        "s",
        "--whatsapp-verify-token",
        "v",
    ])
    .unwrap();
    assert_eq!(cfg.connector, ConnectorKind::CloudApi);
    assert!(!format!("{cfg:?}").contains("tok-secret"));
    assert_eq!(
        parse(&["--connector", "none"]).unwrap().connector,
        ConnectorKind::None
    );
}

#[test]
fn several_numbers_each_back_one_session_with_their_own_token() {
    let base = [
        "--connector",
        "cloud_api",
        "--whatsapp-app-secret",
        "s",
        "--whatsapp-verify-token",
        "v",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        parse(&args)
    };
    let cfg = with(&[
        "--whatsapp-access-token",
        "shared-tok",
        "--whatsapp-phone-number-id",
        "100",
        "--whatsapp-session",
        "main",
        "--whatsapp-numbers",
        "200:sales:900, 300:support",
        "--whatsapp-number-tokens",
        "300:support-tok",
        "--whatsapp-business-account-id",
        "800",
    ])
    .unwrap();
    let cloud = cfg.whatsapp.cloud_api.as_ref().unwrap();
    let numbers: Vec<_> = cloud
        .numbers
        .iter()
        .map(|n| {
            (
                n.phone_number_id.as_str(),
                n.session.as_str(),
                n.access_token.expose(),
                n.business_account_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        numbers,
        [
            ("100", "main", "shared-tok", Some("800")),
            ("200", "sales", "shared-tok", Some("900")),
            ("300", "support", "support-tok", Some("800")),
        ]
    );
    let routes = &cfg.whatsapp.routes;
    assert_eq!(routes.session_for(Some("200")), Some("sales"));
    assert_eq!(routes.session_for(Some("999")), None);
    assert_eq!(routes.session_for(None), None, "ambiguous without metadata");
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("-tok"), "{debug}");
    // Only WHATSAPP_NUMBERS, each with its own token: no shared token needed.
    let cfg = with(&[
        "--whatsapp-numbers",
        "200:sales",
        "--whatsapp-number-tokens",
        "200:t",
    ])
    .unwrap();
    assert_eq!(cfg.whatsapp.routes.session_for(None), Some("sales"));
    for (extra, setting) in [
        (
            &["--whatsapp-numbers", "200:sales"][..],
            "WHATSAPP_ACCESS_TOKEN",
        ),
        (
            &[
                "--whatsapp-access-token",
                "t",
                "--whatsapp-numbers",
                "200:a,300:a",
            ][..],
            "WHATSAPP_NUMBERS",
        ),
        (
            &[
                "--whatsapp-access-token",
                "t",
                "--whatsapp-numbers",
                "200:a,200:b",
            ][..],
            "WHATSAPP_NUMBERS",
        ),
        (
            &["--whatsapp-access-token", "t", "--whatsapp-numbers", "x2:a"][..],
            "WHATSAPP_NUMBERS",
        ),
        (
            &[
                "--whatsapp-access-token",
                "t",
                "--whatsapp-numbers",
                "200:a",
                "--whatsapp-number-tokens",
                "201:leak-me",
            ][..],
            "WHATSAPP_NUMBER_TOKENS",
        ),
        (
            &[
                "--whatsapp-numbers",
                "200:a",
                "--whatsapp-number-tokens",
                "leak-me",
            ][..],
            "WHATSAPP_NUMBER_TOKENS",
        ),
    ] {
        let err = with(extra).unwrap_err();
        assert!(err.contains(setting), "{extra:?}: {err}");
        assert!(!err.contains("leak-me"), "{err}");
    }
}

// ------------------------------------------------------- check-config

fn known() -> std::collections::BTreeSet<String> {
    check::known_settings(&command())
}

#[test]
fn the_known_settings_come_from_every_env_attribute() {
    let known = known();
    for name in [
        "RATE_LIMIT_PER_SEC",
        "REDIS_URL",
        "AUTH_JWT_SECRET",
        "WHATSAPP_ACCESS_TOKEN",
        "MCP_HUB_TOKEN",
        "APPROVAL_TTL_MS",
        "MEDIA_CACHE_BYTES",
    ] {
        assert!(known.contains(name), "{name}");
    }
    let prefixes = check::setting_prefixes(&known);
    for p in [
        "RATE_",
        "MAX_",
        "REDIS_",
        "AI_",
        "WHATSAPP_",
        "HUB_",
        "MCP_",
    ] {
        assert!(prefixes.contains(p), "{p}: {prefixes:?}");
    }
}

#[test]
fn a_typo_is_unknown_with_the_closest_setting() {
    let known = known();
    let found = check::unknown_settings(
        &known,
        [
            ("RATE_LIMIT_PER_SECOND", "environment"),
            ("REDIS_URI", ".env"),
            ("rate_limit_per_sec", ".env"),
            ("MAX_SOMETHING_ELSE_ENTIRELY", "environment"),
            ("RATE_LIMIT_PER_SEC", "environment"),
            ("PATH", "environment"),
            ("SESSION_MANAGER", "environment"),
            ("MCP_HUB_TEST_REDIS", "environment"),
        ],
    );
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "unknown setting MAX_SOMETHING_ELSE_ENTIRELY (in environment); no setting has this name",
            "unknown setting RATE_LIMIT_PER_SECOND (in environment); did you mean RATE_LIMIT_PER_SEC?",
            "unknown setting REDIS_URI (in .env); did you mean REDIS_URL?",
            "unknown setting rate_limit_per_sec (in .env); did you mean RATE_LIMIT_PER_SEC?",
        ]
    );
}

#[test]
fn effective_settings_redact_secrets_and_url_credentials() {
    let mut cmd = command();
    let matches = cmd
        .try_get_matches_from_mut([
            "mcp-hub",
            "check-config",
            "--auth-jwt-secret",
            "0123456789abcdef0123456789abcdef",
            "--openai-base-url",
            "https://user:pw@proxy.example/v1",
        ])
        .unwrap();
    let sub = cmd.find_subcommand("check-config").unwrap();
    let (_, sub_matches) = matches.subcommand().unwrap();
    let settings = check::effective_settings(sub, sub_matches, |_| false);
    let text = check::render(&settings);
    assert!(!text.contains("0123456789abcdef"), "{text}");
    assert!(!text.contains("pw@"), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .to_string()
    };
    assert!(
        line("AUTH_JWT_SECRET").contains("<redacted>")
            && line("AUTH_JWT_SECRET").ends_with("# flag")
    );
    assert!(line("OPENAI_BASE_URL").contains("https://<redacted>@proxy.example/v1"));
    assert!(
        line("MCP_SERVER_PORT").contains("=8002") && line("MCP_SERVER_PORT").ends_with("# default")
    );
}

#[test]
fn ops_commands_parse_beside_the_hub_commands() {
    // The program's description stays the hub's (help, man page).
    assert_eq!(
        command().get_about().map(ToString::to_string),
        Cli::command().get_about().map(ToString::to_string)
    );
    let ops = |args: &[&str]| {
        try_parse_invocation(std::iter::once("mcp-hub").chain(args.iter().copied())).unwrap()
    };
    assert!(
        matches!(ops(&["check-config", "--strict"]), Invocation::Ops(OpsCommand::CheckConfig(a)) if a.strict)
    );
    assert!(matches!(ops(&["health", "--live"]), Invocation::Ops(OpsCommand::Health(a)) if a.live));
    assert!(matches!(ops(&["man"]), Invocation::Ops(OpsCommand::Man)));
    assert!(matches!(
        ops(&["completions", "zsh"]),
        Invocation::Ops(OpsCommand::Completions(_))
    ));
    assert!(
        matches!(ops(&["serve", "--port", "1"]), Invocation::Hub(cli) if matches!(&cli.command, Some(Command::Serve(s)) if s.port == 1))
    );
    assert!(
        matches!(ops(&["--port", "2"]), Invocation::Hub(cli) if cli.command.is_none() && cli.serve.port == 2)
    );
}
