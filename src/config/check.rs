//! `mcp-hub check-config`: which settings a command line names (clap's
//! `env = …` attributes, so the list cannot drift from the settings), the
//! effective value of each with secrets redacted, and the names in the
//! environment or `.env` that look like a setting but are none (typos),
//! with the closest known name.

use std::collections::BTreeSet;

use clap::parser::ValueSource;

/// Names that share a prefix with settings but belong to someone else.
const FOREIGN: &[&str] = &["SESSION_MANAGER"];
/// Prefixes of variables that are not hub settings: the test suite's.
const FOREIGN_PREFIXES: &[&str] = &["MCP_HUB_TEST_"];
/// Prefixes that mark a hub setting besides those the settings share.
const EXTRA_PREFIXES: &[&str] = &["HUB_", "MCP_"];

/// Every environment variable `cmd` and its subcommands read.
pub fn known_settings(cmd: &clap::Command) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    collect(cmd, &mut names);
    names
}

fn collect(cmd: &clap::Command, names: &mut BTreeSet<String>) {
    for arg in cmd.get_arguments() {
        if let Some(env) = arg.get_env() {
            names.insert(env.to_string_lossy().into_owned());
        }
    }
    for sub in cmd.get_subcommands() {
        collect(sub, names);
    }
}

/// The prefixes (up to and including the first `_`) that at least two
/// known settings share (`MAX_`, `REDIS_`, `AI_`, `WHATSAPP_`, …), plus
/// `HUB_` and `MCP_`: a name with one of them is meant for the hub.
pub fn setting_prefixes(known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut shared: BTreeSet<String> = EXTRA_PREFIXES.iter().map(|p| p.to_string()).collect();
    for name in known {
        if let Some(at) = name.find('_') {
            let prefix = &name[..=at];
            if !seen.insert(prefix.to_string()) {
                shared.insert(prefix.to_string());
            }
        }
    }
    shared
}

/// A name that looks like a hub setting but is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSetting {
    pub name: String,
    /// `environment` or `.env`.
    pub source: &'static str,
    /// The closest known setting, when one is close enough.
    pub suggestion: Option<String>,
}

impl std::fmt::Display for UnknownSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown setting {} (in {})", self.name, self.source)?;
        match &self.suggestion {
            Some(s) => write!(f, "; did you mean {s}?"),
            None => write!(f, "; no setting has this name"),
        }
    }
}

/// The names among `present` (name, where it was set) that have a
/// setting's prefix but are no setting. Lower-case names count too: the
/// environment is case-sensitive, so `rate_limit_per_sec` in `.env` is
/// ignored by the hub, and worth a warning.
pub fn unknown_settings<'a>(
    known: &BTreeSet<String>,
    present: impl IntoIterator<Item = (&'a str, &'static str)>,
) -> Vec<UnknownSetting> {
    let prefixes = setting_prefixes(known);
    let mut unknown: Vec<UnknownSetting> = Vec::new();
    for (name, source) in present {
        let upper = name.to_ascii_uppercase();
        let looks_like_setting = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && prefixes.iter().any(|p| upper.starts_with(p.as_str()));
        if !looks_like_setting
            || known.contains(name)
            || FOREIGN.contains(&name)
            || FOREIGN_PREFIXES.iter().any(|p| name.starts_with(p))
            || unknown.iter().any(|u| u.name == name)
        {
            continue;
        }
        unknown.push(UnknownSetting {
            name: name.to_string(),
            source,
            suggestion: closest(&upper, known).map(str::to_string),
        });
    }
    unknown.sort_by(|a, b| a.name.cmp(&b.name));
    unknown
}

/// The known name closest to `name` by Jaro-Winkler similarity (which
/// weighs a shared beginning, as typos of these names keep theirs), if it
/// scores at least 0.9.
pub fn closest<'a>(name: &str, known: &'a BTreeSet<String>) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score >= 0.9)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.as_str())
}

/// One line of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSetting {
    pub name: String,
    /// As given (secrets: `<redacted>`; URLs: credentials removed); empty
    /// when unset.
    pub value: String,
    /// `default`, `flag`, `environment`, `.env` or `unset`.
    pub source: &'static str,
}

/// Every setting of `cmd` (the `check-config` subcommand) as `matches`
/// has it. `from_dotenv` tells which environment variables came from
/// `.env` rather than the process's environment.
pub fn effective_settings(
    cmd: &clap::Command,
    matches: &clap::ArgMatches,
    from_dotenv: impl Fn(&str) -> bool,
) -> Vec<EffectiveSetting> {
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let name = env.to_string_lossy().into_owned();
        let id = arg.get_id().as_str();
        let raw: Option<Vec<String>> = matches
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect());
        let source = match matches.value_source(id) {
            Some(ValueSource::DefaultValue) => "default",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) if from_dotenv(&name) => ".env",
            Some(ValueSource::EnvVariable) => "environment",
            _ => "unset",
        };
        let value = match raw {
            None => String::new(),
            Some(vals) => {
                let joined = vals.join(",");
                if arg.is_hide_env_values_set() && !joined.is_empty() {
                    "<redacted>".to_string()
                } else {
                    redact_userinfo(&joined)
                }
            }
        };
        out.push(EffectiveSetting {
            name,
            value,
            source,
        });
    }
    out
}

/// URLs in a (comma-separated) value without their credentials: a
/// `user:password@` is shown as `<redacted>@`.
fn redact_userinfo(value: &str) -> String {
    if !value.contains("://") || !value.contains('@') {
        return value.to_string();
    }
    value
        .split(',')
        .map(|item| match item.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
                    None => item.to_string(),
                }
            }
            None => item.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `KEY=value` lines (aligned source comments), values with whitespace or
/// quotes double-quoted.
pub fn render(settings: &[EffectiveSetting]) -> String {
    let lines: Vec<(String, &str)> = settings
        .iter()
        .map(|s| {
            let needs_quotes = s
                .value
                .contains(|c: char| c.is_whitespace() || c == '"' || c == '#');
            let value = if needs_quotes {
                format!("{:?}", s.value)
            } else {
                s.value.clone()
            };
            (format!("{}={value}", s.name), s.source)
        })
        .collect();
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (line, source) in lines {
        out.push_str(&format!("{line:<width$}  # {source}\n"));
    }
    out
}
