//! Where the configuration comes from, lowest first: the defaults, the TOML file,
//! `MCP_GATEWAY_*` environment variables, command-line flags. Each layer overrides the
//! ones below it key by key (a flag can set back to `false` what the file set to `true`),
//! and every value remembers its layer, for `config check`.
//!
//! Variables name keys in capitals after the prefix, with `__` between a table and its key:
//! `MCP_GATEWAY_ACCESS_TOKEN_TTL=600`, `MCP_GATEWAY_EXTERNAL__ISSUER=https://idp`. Values
//! are read as TOML values where they parse as one (`true`, `600`, `["a", "b"]`), else as
//! strings.

use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{Config, ConfigError, DatabaseUrl, closest};

/// The prefix of the variables that set keys.
pub const ENV_PREFIX: &str = "MCP_GATEWAY_";

/// Variables with the prefix that are not keys: the config file's path, and the secrets
/// whose variable names are the defaults of `*_env` keys.
const NOT_KEYS: &[&str] = &[
    "config",
    "key_encryption_key",
    "introspection_secret",
    "shared_secret",
];

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Nothing set it.
    Default,
    /// The TOML file.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
    /// A command-line flag, by name.
    Flag(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(name) => write!(f, "env {name}"),
            Self::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// A validated configuration and the layers it was read from.
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    figment: Figment,
    /// Variables with the prefix that name no key (ignored), for the log.
    pub ignored: Vec<String>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("config", &self.config)
            .field("ignored", &self.ignored)
            .finish_non_exhaustive()
    }
}

/// One layer: a table of keys with a name for where they came from.
struct Layer {
    data: Dict,
    name: &'static str,
    file: Option<PathBuf>,
    /// A key path to the name the operator wrote it under (a flag).
    spelling: fn(&[&str]) -> String,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let spelling = self.spelling;
        let meta = Metadata::named(self.name).interpolater(move |_, key| spelling(key));
        match &self.file {
            Some(path) => meta.source(figment::Source::File(path.clone())),
            None => meta,
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

const FILE_LAYER: &str = "config file";
const FLAG_LAYER: &str = "command-line flag";

/// The flag that sets a key: `--proxy-addr` for `proxy_addr`.
pub fn flag_name(key: &[&str]) -> String {
    match key.join(".").as_str() {
        "trusted_proxies" => "--trusted-proxy".into(),
        k => format!("--{}", k.replace('_', "-")),
    }
}

/// The variable that sets a key: `MCP_GATEWAY_EXTERNAL__ISSUER` for `external.issuer`.
pub fn env_name(key: &[&str]) -> String {
    format!("{ENV_PREFIX}{}", key.join("__").to_uppercase())
}

/// Read the layers: `file` (if any), the process's `MCP_GATEWAY_*` variables, then `flags`
/// (the keys the command line set); resolve `*_file` secrets; validate.
pub fn load(file: Option<&Path>, flags: toml::Table) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        // Read alone first: the parser's errors name the line, and an unknown key gets
        // the closest one suggested.
        Config::from_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        figment = figment.merge(Layer {
            data: dict(&table)?,
            name: FILE_LAYER,
            file: Some(path.to_path_buf()),
            spelling: |key| key.join("."),
        });
    }
    let keys = config_keys();
    let mut ignored = Vec::new();
    let mut env = Dict::new();
    for (name, value) in std::env::vars() {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = rest.to_lowercase();
        let top = key.split("__").next().unwrap_or_default();
        if value.is_empty() || NOT_KEYS.contains(&key.as_str()) || key.starts_with("test_") {
            continue;
        }
        if !keys.contains(&top) {
            ignored.push(unknown_variable(&name, top, keys));
            continue;
        }
        let path: Vec<&str> = key.split("__").collect();
        insert(&mut env, &path, env_value(&value));
    }
    figment = figment.merge(Layer {
        data: env,
        name: "environment variable",
        file: None,
        spelling: env_name,
    });
    figment = figment.merge(Layer {
        data: dict(&flags)?,
        name: FLAG_LAYER,
        file: None,
        spelling: flag_name,
    });
    let mut config: Config = figment.extract().map_err(|e| layer_error(&e))?;
    read_secret_files(&mut config)?;
    config.validate()?;
    Ok(Loaded {
        config,
        figment,
        ignored,
    })
}

impl Loaded {
    /// Where the value of `key` (dotted: `external.issuer`) came from.
    pub fn origin(&self, key: &str) -> Origin {
        // A secret read from a file was set by whoever named the file.
        if key == "database_url" && self.config.database_url_file.is_some() {
            return self.origin("database_url_file");
        }
        let Some(meta) = self.figment.find_metadata(key) else {
            return Origin::Default;
        };
        let path: Vec<&str> = key.split('.').collect();
        match meta.name.as_ref() {
            FILE_LAYER => Origin::File(
                meta.source
                    .as_ref()
                    .and_then(|s| s.file_path())
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            ),
            FLAG_LAYER => Origin::Flag(flag_name(&path)),
            _ => Origin::Env(env_name(&path)),
        }
    }

    /// The effective configuration as TOML, secrets redacted, each key followed by where
    /// its value came from; keys with no value are listed as comments.
    pub fn report(&self) -> Result<String, ConfigError> {
        let table = toml::Table::try_from(&self.config).map_err(|e| ConfigError::Invalid {
            key: "config",
            message: e.to_string(),
        })?;
        let toml::Value::Table(table) = redact(&[], &toml::Value::Table(table)) else {
            return Ok(String::new());
        };
        let mut out = String::new();
        self.table(&mut out, &[], &table);
        let unset: Vec<&str> = config_keys()
            .iter()
            .copied()
            .filter(|k| !table.contains_key(*k))
            .collect();
        if !unset.is_empty() {
            out.push_str("\n# not set: ");
            out.push_str(&unset.join(", "));
            out.push('\n');
        }
        Ok(out)
    }

    /// The keys of one table (plain values first, then tables), at `path`.
    fn table(&self, out: &mut String, path: &[&str], table: &toml::Table) {
        let (plain, nested): (Vec<_>, Vec<_>) = table
            .iter()
            .partition(|(_, v)| !v.is_table() && !is_table_array(v));
        for (key, value) in plain {
            let mut one = toml::Table::new();
            one.insert(key.clone(), value.clone());
            let text = toml::to_string(&one).unwrap_or_default();
            let origin = self.origin(&dotted(path, key));
            out.push_str(&format!("{}  # {origin}\n", text.trim_end()));
        }
        for (key, value) in nested {
            let origin = self.origin(&dotted(path, key));
            let mut inner = path.to_vec();
            inner.push(key);
            let header: Vec<String> = inner.iter().map(|k| bare_or_quoted(k)).collect();
            match value {
                toml::Value::Table(t) => {
                    out.push_str(&format!("\n[{}]  # {origin}\n", header.join(".")));
                    self.table(out, &inner, t);
                }
                _ => {
                    // Arrays of tables: entries are not merged across layers, so one
                    // origin holds for the whole list.
                    out.push_str(&format!("\n# {}: {origin}\n", header.join(".")));
                    let mut one = toml::Table::new();
                    one.insert(header.join("."), value.clone());
                    out.push_str(&toml::to_string(&one).unwrap_or_default());
                }
            }
        }
    }
}

fn dotted(path: &[&str], key: &str) -> String {
    path.iter()
        .copied()
        .chain([key])
        .collect::<Vec<_>>()
        .join(".")
}

/// A key as a TOML header writes it.
fn bare_or_quoted(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        serde_json::to_string(key).unwrap_or_default()
    }
}

fn is_table_array(v: &toml::Value) -> bool {
    matches!(v, toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_table))
}

/// Values that are secrets, or that may carry one, shown as `<redacted>`.
fn redact(path: &[&str], value: &toml::Value) -> toml::Value {
    const SECRET_KEYS: &[&str] = &["password_hash", "sha256", "secret_sha256"];
    const SECRET_TABLES: &[&str] = &["upstream_headers", "set"];
    let hidden = || toml::Value::String("<redacted>".into());
    let last = path.last().copied().unwrap_or_default();
    match value {
        _ if SECRET_KEYS.contains(&last) => hidden(),
        toml::Value::Table(t) if SECRET_TABLES.contains(&last) => {
            toml::Value::Table(t.iter().map(|(k, _)| (k.clone(), hidden())).collect())
        }
        toml::Value::Table(t) => toml::Value::Table(
            t.iter()
                .map(|(k, v)| {
                    let mut p = path.to_vec();
                    p.push(k);
                    (k.clone(), redact(&p, v))
                })
                .collect(),
        ),
        toml::Value::Array(a) => toml::Value::Array(a.iter().map(|v| redact(path, v)).collect()),
        v => v.clone(),
    }
}

/// A TOML table as figment's dictionary.
fn dict(table: &toml::Table) -> Result<Dict, ConfigError> {
    match Value::serialize(table) {
        Ok(Value::Dict(_, d)) => Ok(d),
        Ok(_) => Ok(Dict::new()),
        Err(e) => Err(ConfigError::Invalid {
            key: "config",
            message: e.to_string(),
        }),
    }
}

/// A variable's value: a TOML value where it parses as one, else the string itself.
fn env_value(raw: &str) -> Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .and_then(|v| Value::serialize(v).ok());
    parsed.unwrap_or_else(|| Value::from(raw.to_string()))
}

fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// The warning for a prefixed variable that names no key.
fn unknown_variable(name: &str, top: &str, keys: &[&str]) -> String {
    match closest(top, keys.iter().copied()) {
        Some(key) => format!(
            "{name} names no setting (did you mean {}?); ignored",
            env_name(&[key])
        ),
        None => format!("{name} names no setting; ignored"),
    }
}

/// A layer's value that does not fit, named as the operator wrote it.
fn layer_error(e: &figment::Error) -> ConfigError {
    let mut messages = Vec::new();
    for e in e.clone() {
        let key: Vec<&str> = e.path.iter().map(String::as_str).collect();
        let place = match &e.metadata {
            Some(meta) if meta.name == FILE_LAYER => {
                format!("`{}` in the config file", key.join("."))
            }
            Some(meta) => meta.interpolate(&Profile::Default, &e.path),
            None => format!("`{}`", key.join(".")),
        };
        let kind = match &e.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                match closest(field, expected.iter().copied()) {
                    Some(k) => format!("unknown key `{field}`: did you mean `{k}`?"),
                    None => format!("unknown key `{field}`"),
                }
            }
            kind => kind.to_string(),
        };
        messages.push(format!("{place}: {kind}"));
    }
    ConfigError::Layer {
        message: messages.join("; "),
    }
}

/// Secrets given as files: read them into the values they stand for.
fn read_secret_files(config: &mut Config) -> Result<(), ConfigError> {
    if let Some(path) = &config.database_url_file {
        if config.database_url.is_some() {
            return Err(ConfigError::Invalid {
                key: "database_url_file",
                message: "give the database URL as one of database_url and database_url_file"
                    .into(),
            });
        }
        let url = read_secret(path, "database_url_file")?;
        config.database_url = Some(DatabaseUrl(url));
    }
    Ok(())
}

/// A secret file's contents without the trailing newline editors add.
pub fn read_secret(path: &Path, key: &'static str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// The top-level keys of [`Config`], as its deserializer knows them.
pub fn config_keys() -> &'static [&'static str] {
    struct_fields::<Config>()
}

/// The field names a derived `Deserialize` asks for: it hands them to
/// `deserialize_struct`, which this deserializer records instead of reading anything.
fn struct_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_are_the_config_fields() {
        let keys = config_keys();
        assert!(keys.contains(&"proxy_addr"), "{keys:?}");
        assert!(keys.contains(&"identity_providers"), "{keys:?}");
        assert!(!keys.contains(&"config"));
    }

    #[test]
    fn variable_values_are_toml_values_or_strings() {
        assert_eq!(env_value("600"), Value::from(600i64));
        assert_eq!(env_value("true"), Value::from(true));
        assert_eq!(
            env_value("127.0.0.1:3002"),
            Value::from("127.0.0.1:3002".to_string())
        );
        assert_eq!(
            env_value("node server.js --port 1"),
            Value::from("node server.js --port 1".to_string())
        );
        assert!(matches!(env_value(r#"["a", "b"]"#), Value::Array(_, a) if a.len() == 2));
    }

    #[test]
    fn names_for_keys() {
        assert_eq!(flag_name(&["proxy_addr"]), "--proxy-addr");
        assert_eq!(flag_name(&["trusted_proxies"]), "--trusted-proxy");
        assert_eq!(
            env_name(&["external", "issuer"]),
            "MCP_GATEWAY_EXTERNAL__ISSUER"
        );
    }

    #[test]
    fn an_unknown_variable_gets_the_closest_key() {
        let msg = unknown_variable("MCP_GATEWAY_PROXY_ADR", "proxy_adr", config_keys());
        assert!(
            msg.contains("did you mean MCP_GATEWAY_PROXY_ADDR?"),
            "{msg}"
        );
    }

    #[test]
    fn secrets_are_redacted_in_the_report() {
        let mut headers = toml::Table::new();
        headers.insert("Authorization".into(), "Bearer s3cret".into());
        let shown = redact(&["upstream_headers"], &toml::Value::Table(headers));
        assert!(!shown.to_string().contains("s3cret"), "{shown}");
        let hash = redact(&["users", "password_hash"], &"$argon2id$x".into());
        assert_eq!(hash.as_str(), Some("<redacted>"));
    }
}
