//! Where the configuration comes from, each layer overriding the one before: the TOML
//! file, `HERALD_*` environment variables, then command-line flags. They are merged as
//! TOML tables, which serde then reads into [`super::sections::Sections`]. The
//! deprecated names of renamed options are translated here, in the layer that used
//! them, so a later layer's new name overrides an earlier layer's old one.

use std::{collections::BTreeMap, path::Path, time::Duration};

use herald_node::duration;
use toml::{Table, Value};

/// Overrides given on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Flags {
    /// Config file (TOML). Without one, `herald dev` creates a demo app.
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
    /// Listen address for WebSocket, HTTP API and metrics (overrides server.host).
    #[arg(long)]
    pub host: Option<String>,
    /// WebSocket + HTTP API port (overrides server.port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Health and metrics port (overrides server.metrics_port).
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// gRPC API port (overrides grpc.port).
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Write the bound addresses to this file once listening (overrides
    /// server.ready_file).
    #[arg(long)]
    pub ready_file: Option<std::path::PathBuf>,
    /// Not a flag: the command serves the WebSocket and gRPC listeners (`dev`,
    /// `edge`, and `check-config`, which checks what they would), so their TLS files
    /// are checked too.
    #[arg(skip)]
    pub listens: bool,
}

/// The unit a deprecated duration option counted in.
#[derive(Debug, Clone, Copy)]
enum Unit {
    Seconds,
    Milliseconds,
}

/// Every duration option was once a whole number in a unit its name ended with
/// (`activity_timeout_secs = 120`); now it is a duration string (`activity_timeout =
/// "2m"`). The old names still work.
const RENAMED: [(&str, &str, &str, Unit); 17] = [
    ("server", "shutdown_grace_secs", "shutdown_grace", Unit::Seconds),
    ("connection", "activity_timeout_secs", "activity_timeout", Unit::Seconds),
    ("connection", "pong_timeout_secs", "pong_timeout", Unit::Seconds),
    ("connection", "write_timeout_secs", "write_timeout", Unit::Seconds),
    ("connection", "handshake_timeout_secs", "handshake_timeout", Unit::Seconds),
    ("http", "timestamp_tolerance_secs", "timestamp_tolerance", Unit::Seconds),
    ("http", "body_timeout_secs", "body_timeout", Unit::Seconds),
    ("grpc", "idempotency_window_secs", "idempotency_window", Unit::Seconds),
    ("redis", "lease_secs", "lease", Unit::Seconds),
    ("events", "debounce_ms", "debounce", Unit::Milliseconds),
    ("dispatcher", "retry_after_min_secs", "retry_after_min", Unit::Seconds),
    ("dispatcher", "retry_after_max_secs", "retry_after_max", Unit::Seconds),
    ("dispatcher", "connect_timeout_ms", "connect_timeout", Unit::Milliseconds),
    ("dispatcher", "request_timeout_ms", "request_timeout", Unit::Milliseconds),
    ("dispatcher", "max_throttle_wait_ms", "max_throttle_wait", Unit::Milliseconds),
    ("dispatcher", "pusher_batch_window_ms", "pusher_batch_window", Unit::Milliseconds),
    ("dispatcher", "endpoint_refresh_ms", "endpoint_refresh", Unit::Milliseconds),
];

impl Unit {
    /// The old value (a whole number in this unit) as a duration string.
    fn duration(self, value: &Value) -> Result<String, String> {
        let (name, unit): (_, fn(u64) -> Duration) = match self {
            Self::Seconds => ("seconds", Duration::from_secs),
            Self::Milliseconds => ("milliseconds", Duration::from_millis),
        };
        match value {
            Value::Integer(n) if *n >= 0 => Ok(duration::format(unit(n.unsigned_abs()))),
            Value::Integer(n) => Err(format!("expected a whole number of {name}, got {n}")),
            other => Err(format!("expected a whole number of {name}, got a {}", other.type_str())),
        }
    }
}

/// A deprecated name that was used: `given` (`connection.pong_timeout_secs`, or the
/// environment variable) set `name` (`connection.pong_timeout`); `instead` is what to
/// write now (`connection.pong_timeout = "30s"`, or the new variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Alias {
    pub name: String,
    pub given: String,
    pub instead: String,
}

/// The layers merged, and the deprecated names they used.
pub(super) struct Layered {
    pub table: Table,
    pub aliases: Vec<Alias>,
}

/// Reads the file (if any) and applies `env` and the flags. `Err` lists every problem
/// of the layers themselves (unreadable file, a variable naming no option, an old and
/// a new name given together); what the values mean is checked later.
pub(super) fn layered(
    flags: &Flags,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Layered, Vec<String>> {
    let mut table = match &flags.config {
        Some(path) => read_file(path)?,
        None => Table::new(),
    };
    let mut aliases = Vec::new();
    let mut errors = Vec::new();
    rename(&mut table, &mut aliases, &mut errors);
    apply_env(&mut table, env, &mut aliases, &mut errors);
    // Whole sections set from the environment (`HERALD_REDIS = '{lease_secs = 5}'`).
    rename(&mut table, &mut aliases, &mut errors);
    apply_flags(&mut table, flags);
    if errors.is_empty() { Ok(Layered { table, aliases }) } else { Err(errors) }
}

pub(super) fn read_file(path: &Path) -> Result<Table, Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    text.parse::<Table>().map_err(|e| vec![format!("{}: {}", path.display(), e.to_string().trim_end())])
}

fn both_given(new: &str, old: &str) -> String {
    format!("{new} and {old}: both given ({old} is the deprecated name of {new}): keep only {new}")
}

/// Renames the deprecated keys of `table`'s sections, converting their values.
fn rename(table: &mut Table, aliases: &mut Vec<Alias>, errors: &mut Vec<String>) {
    for (section, old, new, unit) in RENAMED {
        let Some(Value::Table(options)) = table.get_mut(section) else { continue };
        let Some(value) = options.remove(old) else { continue };
        let (name, given) = (format!("{section}.{new}"), format!("{section}.{old}"));
        if options.contains_key(new) {
            errors.push(both_given(&name, &given));
            continue;
        }
        match unit.duration(&value) {
            Ok(value) => {
                options.insert(new.to_string(), Value::String(value.clone()));
                let instead = format!("{name} = {value:?}");
                aliases.push(Alias { name, given, instead });
            }
            Err(e) => errors.push(format!("{given}: {e}")),
        }
    }
}

/// The top-level keys of the configuration: `HERALD_*` variables that start with
/// anything else belong to other tools (`HERALD_BIN` in a test harness, say) and are
/// left alone; inside these sections an unknown key is an error like in the file.
const SECTIONS: [&str; 12] = [
    "server",
    "connection",
    "http",
    "grpc",
    "log",
    "telemetry",
    "redis",
    "events",
    "kafka",
    "dispatcher",
    "webhooks",
    "apps",
];

fn variable(name: &str) -> String {
    format!("HERALD_{}", name.to_ascii_uppercase())
}

/// `HERALD_SECTION__KEY=value` sets `section.key` (double underscores separate
/// levels; names are lowercased). Values are read as TOML (`7000`, `true`,
/// `[{id = "1", key = "k", secret = "s"}]`) and otherwise taken as strings (`2m`);
/// a password (`HERALD_REDIS__PASSWORD`) is always taken as the string it is.
fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
    aliases: &mut Vec<Alias>,
    errors: &mut Vec<String>,
) {
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("HERALD_").map(|rest| (rest.to_ascii_lowercase(), v)))
        .filter(|(name, _)| SECTIONS.contains(&name.split("__").next().unwrap_or("")))
        .collect();
    for (name, raw) in &vars {
        let mut path: Vec<&str> = name.split("__").collect();
        // A password is taken as it is: read as TOML, `123456` would be a number and
        // `"pw"` would lose its quotes.
        let mut value =
            if name.ends_with("password") { Value::String(raw.clone()) } else { parse_env_value(raw) };
        if let [section, key] = path[..]
            && let Some((_, _, new, unit)) = RENAMED.iter().find(|r| r.0 == section && r.1 == key)
        {
            let renamed = format!("{section}__{new}");
            if vars.contains_key(&renamed) {
                errors.push(both_given(&variable(&renamed), &variable(name)));
                continue;
            }
            match unit.duration(&value) {
                Ok(text) => {
                    let instead = format!("{}={text}", variable(&renamed));
                    value = Value::String(text);
                    aliases.push(Alias { name: format!("{section}.{new}"), given: variable(name), instead });
                    path = vec![section, new];
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", variable(name)));
                    continue;
                }
            }
        }
        let (last, parents) = match path.split_last() {
            Some((last, parents)) if !last.is_empty() => (last, parents),
            _ => {
                errors.push(format!("{}: not a configuration key", variable(name)));
                continue;
            }
        };
        if let Err(part) = set_path(table, parents, last, value) {
            errors.push(format!("{}: {part} is not a section", variable(name)));
        }
    }
}

fn set_path(table: &mut Table, parents: &[&str], last: &str, value: Value) -> Result<(), String> {
    let Some((first, rest)) = parents.split_first() else {
        table.insert(last.to_string(), value);
        return Ok(());
    };
    match table.entry(first.to_string()).or_insert_with(|| Value::Table(Table::new())) {
        Value::Table(next) => set_path(next, rest, last, value),
        _ => Err(first.to_string()),
    }
}

fn parse_env_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn apply_flags(table: &mut Table, flags: &Flags) {
    let server = table.entry("server").or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(server) = server {
        if let Some(host) = &flags.host {
            server.insert("host".into(), Value::String(host.clone()));
        }
        if let Some(port) = flags.port {
            server.insert("port".into(), Value::Integer(port.into()));
        }
        if let Some(port) = flags.metrics_port {
            server.insert("metrics_port".into(), Value::Integer(port.into()));
        }
        if let Some(path) = &flags.ready_file {
            server.insert("ready_file".into(), Value::String(path.to_string_lossy().into_owned()));
        }
    }
    if let Some(port) = flags.grpc_port {
        let grpc = table.entry("grpc").or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(grpc) = grpc {
            grpc.insert("port".into(), Value::Integer(port.into()));
        }
    }
}
