//! Reading the file and the environment: `env:NAME` references resolved
//! before the values are typed, `WALHOOK_<SECTION>__<KEY>` overrides, error
//! messages that name the key (and the variable) without echoing the value,
//! and lenient scalars (an environment variable is text, whatever the key
//! takes).

use figment::providers::Env;
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer};

/// The merged file and overrides with every string value `"env:NAME"`
/// replaced by the variable's value, before the config is typed, so that any
/// key may come from the environment (docs/configuration.md) and an override can stand
/// in for a file's reference to a variable that is not set. The value stays
/// a string; the keys that take numbers or booleans accept them as strings.
/// A value that starts with `env:` is always a reference.
pub(super) struct EnvReferences(pub(super) Figment);

impl Provider for EnvReferences {
    fn metadata(&self) -> Metadata {
        Provider::metadata(&self.0)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.0.data()?;
        for dict in data.values_mut() {
            for (key, value) in dict.iter_mut() {
                resolve_env_reference(value, vec![key.clone()]).map_err(|unset| {
                    let mut error = figment::Error::from(format!(
                        "reads the environment variable {}, which is not set; \
                         export it or write the value itself",
                        unset.variable
                    ));
                    error.path = unset.path;
                    error
                })?;
            }
        }
        Ok(data)
    }

    // Where each value came from (file or variable), for error messages.
    fn __metadata_map(&self) -> Option<Map<Tag, Metadata>> {
        self.0.__metadata_map()
    }
}

/// An `env:` reference to a variable that is not set, and where it is.
struct UnsetVariable {
    path: Vec<String>,
    variable: String,
}

/// Resolves `env:` strings in `value` (found at `path`), recursively.
fn resolve_env_reference(value: &mut Value, path: Vec<String>) -> Result<(), UnsetVariable> {
    match value {
        Value::String(_, text) => {
            if let Some(variable) = text.strip_prefix("env:") {
                match std::env::var(variable) {
                    Ok(resolved) => *text = resolved,
                    Err(_) => {
                        return Err(UnsetVariable {
                            path,
                            variable: variable.to_owned(),
                        });
                    }
                }
            }
        }
        Value::Dict(_, dict) => {
            for (name, inner) in dict.iter_mut() {
                let mut inner_path = path.clone();
                inner_path.push(name.clone());
                resolve_env_reference(inner, inner_path)?;
            }
        }
        Value::Array(_, items) => {
            for (index, item) in items.iter_mut().enumerate() {
                // A subscription is named by its index and, when it has one
                // written plainly, its name.
                let name = item
                    .find_ref("name")
                    .and_then(Value::as_str)
                    .filter(|name| !name.starts_with("env:"))
                    .map(str::to_owned);
                let mut item_path = path.clone();
                let last = item_path.pop().unwrap_or_default();
                item_path.push(match name {
                    Some(name) => format!("{last}[{index}] ({name})"),
                    None => format!("{last}[{index}]"),
                });
                resolve_env_reference(item, item_path)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `WALHOOK_SOURCE__URL` and friends: only the scalar keys of `[source]`,
/// `[delivery]` and `[admin]`, as docs/configuration.md says.
pub(super) fn env_overrides() -> Env {
    // Keys arrive as written (WALHOOK_SOURCE__URL → "SOURCE.URL") and are
    // lower-cased by figment only after this filter: compare lower-cased.
    Env::prefixed("WALHOOK_").split("__").filter(|key| {
        let key = key.as_str().to_ascii_lowercase();
        ["source.", "delivery.", "admin."]
            .iter()
            .any(|section| key.starts_with(section))
    })
}

/// The variables walhook reads itself, besides the overrides.
/// `WALHOOK_TEST_…` is left to test suites.
pub(super) const OWN_VARIABLES: &[&str] = &[
    "WALHOOK_CONFIG",
    "WALHOOK_LOG",
    "WALHOOK_LISTEN_SECRET",
    "WALHOOK_WORKER_THREADS",
    "WALHOOK_PG_BINDIR",
];

/// The sections whose keys the environment may override.
const OVERRIDABLE_SECTIONS: [&str; 3] = ["SOURCE", "DELIVERY", "ADMIN"];

/// The `WALHOOK_…` variables among `names` that walhook does not read,
/// each with what is wrong: a section the environment cannot override, or
/// a name that is neither an override (`WALHOOK_<SECTION>__<KEY>`) nor one
/// of [`OWN_VARIABLES`] nor referenced as `env:NAME` in `config_text`.
/// (An override of an unknown key in an overridable section is an error
/// already, not a warning.)
pub(super) fn unknown_variables(
    names: impl IntoIterator<Item = String>,
    config_text: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for name in names {
        let upper = name.to_ascii_uppercase();
        let Some(rest) = upper.strip_prefix("WALHOOK_") else {
            continue;
        };
        if OWN_VARIABLES.contains(&upper.as_str())
            || upper.starts_with("WALHOOK_TEST_")
            || references(config_text, &name)
        {
            continue;
        }
        match rest.split_once("__") {
            Some((section, _)) if OVERRIDABLE_SECTIONS.contains(&section) => {}
            Some((section, _)) => problems.push(format!(
                "{name} is ignored: only keys of [source], [delivery] and [admin] can come \
                 from the environment (not {section:?}); subscriptions come from the file, \
                 where any value may be \"env:NAME\""
            )),
            None => problems.push(format!(
                "{name} is not a variable walhook reads: an override is \
                 WALHOOK_<SECTION>__<KEY> with two underscores, e.g. WALHOOK_SOURCE__URL \
                 (docs/configuration.md); walhook's own are {}",
                OWN_VARIABLES.join(", ")
            )),
        }
    }
    problems.sort();
    problems
}

/// Whether `text` holds `env:<name>` (the variable is a value's source).
fn references(text: &str, name: &str) -> bool {
    text.match_indices("env:").any(|(at, _)| {
        let after = &text[at + 4..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        &after[..end] == name
    })
}

/// The variable that overrides `key` (`source.slot` →
/// `WALHOOK_SOURCE__SLOT`).
pub(super) fn override_variable(key: &str) -> String {
    format!("WALHOOK_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// `admin.listen` as an address to bind: an IP address and port, or
/// `localhost:PORT` (taken as 127.0.0.1, so that it does not depend on
/// what the resolver lists first). Other host names are refused rather
/// than resolved: the admin server should bind what the config says.
pub(super) fn admin_listen_address(text: &str) -> Result<String, String> {
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(text.to_owned());
    }
    let refused = |why: &str| {
        Err(format!(
            "key `admin.listen` = {text:?} {why}; write an IP address and a port, e.g. \
             127.0.0.1:9187 (this host only), 0.0.0.0:9187 (every interface), [::1]:9187, or \
             localhost:9187; \"\" disables the admin server"
        ))
    };
    let Some((host, port)) = text.rsplit_once(':') else {
        return refused("has no port");
    };
    let Ok(port) = port.parse::<u16>() else {
        return refused("has no port number after the last `:`");
    };
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(format!("127.0.0.1:{port}"));
    }
    if host.is_empty() {
        return refused("has no host");
    }
    if host.contains(':') && !host.starts_with('[') {
        return refused("is an IPv6 address without brackets");
    }
    refused("names a host other than localhost, which walhook does not resolve")
}

/// A TOML syntax error without the excerpt of the file it quotes (the line
/// may hold a password): where it is, and what is wrong.
fn without_excerpt(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let Some(first) = lines.next() else {
        return String::new();
    };
    let is_excerpt = |line: &&str| {
        line.starts_with('|')
            || line.starts_with('^')
            || line
                .split_once('|')
                .is_some_and(|(number, _)| number.trim().chars().all(|c| c.is_ascii_digit()))
    };
    let rest: Vec<&str> = lines.filter(|line| !is_excerpt(line)).collect();
    if rest.is_empty() {
        first.to_owned()
    } else {
        format!("{first}: {}", rest.join(" "))
    }
}

/// A key's path as the config writes it: `subscriptions[0].events[1]`, the
/// same form the other config errors use.
fn key_path(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// serde's names for what a key expected, in a config writer's words.
fn plain_words(expected: &str) -> String {
    match expected {
        "a sequence" => "an array, e.g. [\"a\", \"b\"]".to_owned(),
        "a map" => "a table, e.g. { key = \"value\" }".to_owned(),
        "a duration" => "a duration such as \"10s\", \"500ms\" or \"5m\"".to_owned(),
        other => other.to_owned(),
    }
}

pub(super) fn describe_figment_error(error: figment::Error) -> String {
    let mut messages = Vec::new();
    for error in error {
        let key = key_path(&error.path);
        let origin = match &error.metadata {
            Some(metadata) if metadata.name.contains("environment") => {
                let variable = format!("WALHOOK_{}", error.path.join("__").to_uppercase());
                format!(" (from the environment variable {variable})")
            }
            _ => String::new(),
        };
        let what = match &error.kind {
            figment::error::Kind::UnknownField(field, expected) => format!(
                "unknown key `{field}`; expected one of: {}",
                expected.join(", ")
            ),
            figment::error::Kind::MissingField(field) => {
                let full = if key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
                format!("missing key `{full}`; it is required")
            }
            // Not the value itself: an `env:` reference may have put a
            // secret there.
            figment::error::Kind::InvalidType(_, expected) => {
                format!("has the wrong type; expected {}", plain_words(expected))
            }
            figment::error::Kind::InvalidValue(_, expected) => {
                format!(
                    "has a value that is not valid; expected {}",
                    plain_words(expected)
                )
            }
            // Variant names are the config's own words, never a secret.
            figment::error::Kind::UnknownVariant(found, expected) => format!(
                "`{found}` is not one of {}",
                expected
                    .iter()
                    .map(|variant| format!("`{variant}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            figment::error::Kind::Message(text) => without_excerpt(text),
            other => other.to_string(),
        };
        if key.is_empty() || matches!(error.kind, figment::error::Kind::MissingField(_)) {
            messages.push(format!("{what}{origin}"));
        } else {
            messages.push(format!("key `{key}`: {what}{origin}"));
        }
    }
    messages.join("; ")
}

pub(super) fn lenient_string<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    // An environment value such as WALHOOK_SOURCE__SLOT=123 arrives as a
    // number; a string field should still take it.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Integer(i64),
        Float(f64),
        Bool(bool),
    }
    let text = match Scalar::deserialize(deserializer)? {
        Scalar::Text(text) => text,
        Scalar::Integer(number) => number.to_string(),
        Scalar::Float(number) => number.to_string(),
        Scalar::Bool(flag) => flag.to_string(),
    };
    Ok(T::from(text))
}

pub(super) fn lenient_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
        // A number where a flag was expected: refused below by name.
        Number(#[allow(dead_code)] f64),
    }
    let untagged = |_| serde::de::Error::custom("expected true or false");
    match Flag::deserialize(deserializer).map_err(untagged)? {
        Flag::Bool(flag) => Ok(flag),
        Flag::Number(_) => Err(serde::de::Error::custom("expected true or false")),
        Flag::Text(text) => match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            // The value is not repeated: it may have come from a variable.
            _ => Err(serde::de::Error::custom("expected true or false")),
        },
    }
}

pub(super) fn lenient_usize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    lenient_number(deserializer)
}

pub(super) fn lenient_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    lenient_number(deserializer)
}

pub(super) fn lenient_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    lenient_number(deserializer)
}

pub(super) fn lenient_number<'de, D, N>(deserializer: D) -> Result<N, D::Error>
where
    D: Deserializer<'de>,
    N: TryFrom<u64> + std::str::FromStr,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Integer(u64),
        Text(String),
        // Negative or fractional: named in the error below, not serde's
        // "did not match any variant of untagged enum".
        Other(#[allow(dead_code)] f64),
    }
    let expected = || serde::de::Error::custom("expected a non-negative whole number, e.g. 12");
    let parsed = match Number::deserialize(deserializer).map_err(|_: D::Error| expected())? {
        Number::Integer(number) => N::try_from(number).ok(),
        Number::Text(text) => text.trim().parse::<N>().ok(),
        Number::Other(_) => None,
    };
    parsed.ok_or_else(expected)
}
