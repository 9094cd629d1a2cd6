//! walhook's configuration: one TOML file, then `WALHOOK_…` environment
//! overrides, each with its `env:NAME` references resolved, then typed and
//! checked.
//!
//! [`Config::load`] returns either a config whose every value has the right
//! shape, or one [`ConfigError`] that names the file, the key and the fix.
//! What can only be checked against the database (does the table exist, does
//! the column) is not done here; `app` does it before the slot is touched.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::destination::{AddressRange, DestinationPolicy};
use crate::event::EventKind;
use crate::filter::Filter;
use crate::webhook::SigningKey;

mod env;
mod names;
mod tls;

use env::{EnvReferences, describe_figment_error, env_overrides};
pub use names::{TableName, TableSelector, quote_identifier};
pub use tls::{CaFile, ClientIdentity, ReceiverTls};
use tls::{TlsKeys, TlsLoader};

/// The whole configuration, every value checked and parsed once: filters
/// into [`Filter`]s, secrets into [`SigningKey`]s, headers into a
/// [`HeaderMap`], table entries into [`TableSelector`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub source: SourceConfig,
    pub delivery: DeliveryConfig,
    pub admin: AdminConfig,
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// The file as written, before its values are parsed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    source: SourceConfig,
    #[serde(default)]
    delivery: DeliveryConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    subscriptions: Vec<SubscriptionFile>,
}

/// `[source]`: where the changes come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A `postgres://` URL; usually `"env:DATABASE_URL"` since it may hold a
    /// password.
    #[serde(deserialize_with = "env::lenient_string")]
    pub url: Secret,
    #[serde(default = "default_slot", deserialize_with = "env::lenient_string")]
    pub slot: String,
    #[serde(
        default = "default_publication",
        deserialize_with = "env::lenient_string"
    )]
    pub publication: String,
    /// Run the idempotent `setup` steps on start.
    #[serde(default = "default_true", deserialize_with = "env::lenient_bool")]
    pub auto_setup: bool,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often walhook reports its progress to the walsender when nothing
    /// else prompts it; must stay well under the server's `wal_sender_timeout`.
    #[serde(default = "default_status_interval", with = "humantime_serde")]
    pub status_interval: Duration,
    /// How often the running daemon looks in the catalog for rule tables
    /// that were renamed, moved, dropped or created again, and puts
    /// re-created ones back into the publication.
    #[serde(default = "default_catalog_watch_interval", with = "humantime_serde")]
    pub catalog_watch_interval: Duration,
}

/// `[delivery]`: how webhooks are sent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Requests in flight per subscription (and its ordering lanes).
    #[serde(
        default = "default_concurrency",
        deserialize_with = "env::lenient_usize"
    )]
    pub concurrency: usize,
    /// Per request, connect to end of response.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts before an event is parked as a dead letter.
    #[serde(
        default = "default_max_attempts",
        deserialize_with = "env::lenient_u32"
    )]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// When a subscription's endpoint counts as down, and how it is probed.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// When `check` and `status` warn about a subscription's backlog.
    #[serde(default)]
    pub backlog: BacklogConfig,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Refuse to connect to private addresses (loopback, RFC 1918,
    /// link-local, …) unless `allow` lists them; checked on the resolved
    /// addresses at connect time.
    #[serde(default, deserialize_with = "env::lenient_bool")]
    pub deny_private: bool,
    /// Networks and addresses allowed even with `deny_private`.
    #[serde(default)]
    pub allow: Vec<AddressRange>,
    /// As written; [`DeliveryConfig::tls`] holds what they were loaded into.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    client_cert: Option<PathBuf>,
    #[serde(default)]
    client_key: Option<PathBuf>,
    /// The delivery-wide TLS settings towards receivers, from `ca_file`,
    /// `client_cert` and `client_key`; each subscription's own are in
    /// [`SubscriptionConfig::tls`].
    #[serde(skip)]
    pub tls: ReceiverTls,
}

impl DeliveryConfig {
    /// `deny_private` and `allow`, as delivery and `check` apply them.
    pub fn destination_policy(&self) -> DestinationPolicy {
        DestinationPolicy {
            deny_private: self.deny_private,
            allow: self.allow.clone(),
        }
    }
}

/// Exponential backoff with full jitter between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
}

/// The circuit breaker of each subscription (docs/operations.md, "When an
/// endpoint is down").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed requests that open the circuit.
    #[serde(
        default = "default_breaker_failures",
        deserialize_with = "env::lenient_u32"
    )]
    pub failures: u32,
    /// Every request failing for this long opens it too.
    #[serde(default = "default_breaker_window", with = "humantime_serde")]
    pub window: Duration,
    /// How often an open circuit sends its one probe request.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
}

/// Thresholds past which `check` and `status` warn about a backlog, and
/// whether rows without a matching seal are sent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacklogConfig {
    /// The oldest waiting event's age.
    #[serde(default = "default_backlog_warn_age", with = "humantime_serde")]
    pub warn_age: Duration,
    /// The waiting payloads' size, in megabytes.
    #[serde(
        default = "default_backlog_warn_megabytes",
        deserialize_with = "env::lenient_u64"
    )]
    pub warn_megabytes: u64,
    /// Send backlog rows whose seal does not match instead of parking them
    /// (the behaviour before row seals; for a backlog stored by an older
    /// walhook). Off: such a row may have been written by anyone with
    /// INSERT on `walhook.backlog` (docs/security.md).
    #[serde(default, deserialize_with = "env::lenient_bool")]
    pub trust_unsealed: bool,
}

/// `[admin]`: the metrics and health server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port`; empty disables the admin server.
    #[serde(
        default = "default_admin_listen",
        deserialize_with = "env::lenient_string"
    )]
    pub listen: String,
}

/// One `[[subscriptions]]` entry: which changes go to which URL.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionConfig {
    pub name: String,
    /// Tables, and schemas taken whole.
    pub tables: Vec<TableSelector>,
    pub events: Vec<EventKind>,
    pub filter: Option<Filter>,
    pub columns: Option<Vec<String>>,
    /// An http(s) URL; secret, since it may carry a token.
    pub url: Secret,
    /// From `secret = "whsec_<base64>"` (or the first of `secrets`): signs
    /// with Standard Webhooks headers, and seals stored rows.
    pub signing_key: Option<SigningKey>,
    /// The rest of `secrets = [newest, older…]`, while a receiver rolls its
    /// key: each also signs every request (one `v1,` signature per key), and
    /// rows sealed under them still verify.
    pub previous_keys: Vec<SigningKey>,
    /// The configured headers, their values marked sensitive (never logged).
    pub headers: HeaderMap,
    pub ordering: DeliveryOrder,
    pub batch: BatchConfig,
    /// The TLS settings towards its receiver: its own `ca_file` and client
    /// certificate where it sets them, else the delivery-wide ones.
    pub tls: ReceiverTls,
}

/// A `[[subscriptions]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionFile {
    name: String,
    tables: Vec<String>,
    #[serde(default = "default_events")]
    events: Vec<EventKind>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    columns: Option<Vec<String>>,
    url: Secret,
    #[serde(default)]
    secret: Option<Secret>,
    #[serde(default)]
    secrets: Option<Vec<Secret>>,
    #[serde(default)]
    headers: BTreeMap<String, Secret>,
    #[serde(default)]
    ordering: DeliveryOrder,
    #[serde(default)]
    batch: BatchConfig,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    client_cert: Option<PathBuf>,
    #[serde(default)]
    client_key: Option<PathBuf>,
}

/// The largest `batch.max_events` accepted. A subscription holds at most
/// 16,384 events at once (its 4 MiB budget at 256 bytes of overhead each),
/// so a batch much larger could never fill; the bound also keeps a typo from
/// sizing anything in the lanes.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// The largest `delivery.concurrency` accepted: far more requests in flight
/// than lanes can send (256 per subscription), and well below what the
/// in-flight semaphore can count (it panics beyond `MAX_PERMITS`).
pub const MAX_CONCURRENCY: usize = 10_000;

/// Which deliveries of one subscription must keep commit order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryOrder {
    /// Changes to the same primary key arrive in commit order.
    #[default]
    Key,
    /// Every change of the subscription arrives in commit order.
    Strict,
    /// Any order, for the highest throughput.
    None,
}

/// `batch = { max_events, max_wait }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    #[serde(
        default = "default_batch_max_events",
        deserialize_with = "env::lenient_usize"
    )]
    pub max_events: usize,
    #[serde(default = "default_batch_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: default_concurrency(),
            timeout: default_timeout(),
            max_attempts: default_max_attempts(),
            backoff: BackoffConfig::default(),
            breaker: BreakerConfig::default(),
            backlog: BacklogConfig::default(),
            shutdown_grace: default_shutdown_grace(),
            deny_private: false,
            allow: Vec::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            tls: ReceiverTls::default(),
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: default_breaker_failures(),
            window: default_breaker_window(),
            probe_interval: default_probe_interval(),
        }
    }
}

impl Default for BacklogConfig {
    fn default() -> Self {
        BacklogConfig {
            warn_age: default_backlog_warn_age(),
            warn_megabytes: default_backlog_warn_megabytes(),
            trust_unsealed: false,
        }
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: default_batch_max_events(),
            max_wait: default_batch_max_wait(),
        }
    }
}

fn default_slot() -> String {
    "walhook".into()
}
fn default_publication() -> String {
    "walhook".into()
}
fn default_true() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_catalog_watch_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    64
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_attempts() -> u32 {
    12
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(300)
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_window() -> Duration {
    Duration::from_secs(30)
}
fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_backlog_warn_age() -> Duration {
    Duration::from_secs(3600)
}
fn default_backlog_warn_megabytes() -> u64 {
    1024
}
fn default_admin_listen() -> String {
    "127.0.0.1:9187".into()
}
fn default_events() -> Vec<EventKind> {
    vec![EventKind::Insert, EventKind::Update, EventKind::Delete]
}
fn default_batch_max_events() -> usize {
    1
}
fn default_batch_max_wait() -> Duration {
    Duration::from_millis(50)
}

/// A value that may be a secret (a password in a URL, a signing key, an
/// authorization header): it never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A configuration problem: what is wrong, where, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

impl ConfigError {
    fn at(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            message: message.into(),
        }
    }
}

/// Where the config file is when `--config` is not given.
pub fn default_path() -> PathBuf {
    std::env::var_os("WALHOOK_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("walhook.toml"))
}

impl Config {
    /// Reads `path`, applies the environment, resolves `env:` references and
    /// checks every value that can be checked without a database.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::at(
                path,
                "no such config file; pass --config FILE or set WALHOOK_CONFIG \
                 (config/walhook.example.toml is a commented starting point)",
            ));
        }
        let figment = Figment::from(EnvReferences(
            Figment::new()
                .merge(Toml::file_exact(path))
                .merge(env_overrides()),
        ));
        let config = Self::from_figment(path, figment)?;
        // Read again only for its `env:` references (it parsed just now).
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
        for problem in env::unknown_variables(names, &text) {
            tracing::warn!("{problem}");
        }
        Ok(config)
    }

    /// Builds a config from TOML text, with the environment applied, as if it
    /// had been read from `path` (used by `demo` and tests).
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let figment = Figment::from(EnvReferences(
            Figment::new()
                .merge(Toml::string(text))
                .merge(env_overrides()),
        ));
        Self::from_figment(path, figment)
    }

    fn from_figment(path: &Path, figment: Figment) -> Result<Config, ConfigError> {
        let file: ConfigFile = figment
            .extract()
            .map_err(|error| ConfigError::at(path, describe_figment_error(error)))?;
        file.parse()
            .map_err(|message| ConfigError::at(path, from_environment(&figment, message)))
    }
}

/// `message` about key `…`, naming the variable the value came from when
/// an environment override set it (the file is not where to fix it).
fn from_environment(figment: &Figment, message: String) -> String {
    let Some(key) = message
        .strip_prefix("key `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_owned())
    else {
        return message;
    };
    match figment.find_metadata(&key) {
        Some(metadata) if metadata.name.contains("environment") => format!(
            "{message} (from the environment variable {})",
            env::override_variable(&key)
        ),
        _ => message,
    }
}

impl ConfigFile {
    /// Checks every value and parses each once.
    fn parse(mut self) -> Result<Config, String> {
        self.validate()?;
        if !self.admin.listen.is_empty() {
            self.admin.listen = env::admin_listen_address(&self.admin.listen)?;
        }
        let mut loader = TlsLoader::default();
        let delivery = &self.delivery;
        self.delivery.tls = loader.load(
            TlsKeys {
                at: "delivery",
                ca_file: delivery.ca_file.as_deref(),
                client_cert: delivery.client_cert.as_deref(),
                client_key: delivery.client_key.as_deref(),
            },
            &ReceiverTls::default(),
        )?;
        let subscriptions = self
            .subscriptions
            .into_iter()
            .enumerate()
            .map(|(index, subscription)| subscription.parse(index, &mut loader, &self.delivery.tls))
            .collect::<Result<_, _>>()?;
        Ok(Config {
            source: self.source,
            delivery: self.delivery,
            admin: self.admin,
            subscriptions,
        })
    }

    fn validate(&self) -> Result<(), String> {
        let source = &self.source;
        if source.url.expose().trim().is_empty() {
            return Err("key `source.url` is empty; set it to a postgres:// URL".into());
        }
        for (key, value) in [
            ("source.slot", &source.slot),
            ("source.publication", &source.publication),
        ] {
            if !is_valid_identifier(value) {
                return Err(format!(
                    "key `{key}` = {value:?} must be 1-63 lowercase letters, digits or underscores"
                ));
            }
        }
        if source.status_interval.is_zero() {
            return Err("key `source.status_interval` must be more than 0s".into());
        }
        if source.catalog_watch_interval < Duration::from_millis(100) {
            return Err("key `source.catalog_watch_interval` must be at least 100ms".into());
        }
        let delivery = &self.delivery;
        // Bounded above too: it sizes a semaphore (which panics beyond its
        // maximum) and the HTTP pool; a typo must stop here, `check` too.
        let concurrency_range = 1..=MAX_CONCURRENCY;
        if !concurrency_range.contains(&delivery.concurrency) {
            return Err(format!(
                "key `delivery.concurrency` = {} is out of range; allowed: {} to {} \
                 (requests in flight per subscription)",
                delivery.concurrency,
                concurrency_range.start(),
                concurrency_range.end()
            ));
        }
        if delivery.max_attempts == 0 {
            return Err("key `delivery.max_attempts` must be at least 1".into());
        }
        if delivery.timeout.is_zero() {
            return Err("key `delivery.timeout` must be more than 0s".into());
        }
        if delivery.backoff.initial > delivery.backoff.max {
            return Err(
                "key `delivery.backoff.initial` is larger than `delivery.backoff.max`".into(),
            );
        }
        if delivery.breaker.failures == 0 {
            return Err("key `delivery.breaker.failures` must be at least 1".into());
        }
        if delivery.breaker.probe_interval.is_zero() {
            return Err("key `delivery.breaker.probe_interval` must be more than 0s".into());
        }
        if !self.admin.listen.is_empty() {
            env::admin_listen_address(&self.admin.listen)?;
        }
        if self.subscriptions.is_empty() {
            return Err("no [[subscriptions]]: add at least one with name, tables and url".into());
        }
        let mut names = std::collections::HashSet::new();
        for (index, subscription) in self.subscriptions.iter().enumerate() {
            let at = subscription_key(index, &subscription.name);
            if subscription.name.trim().is_empty() {
                return Err(format!(
                    "key `{at}.name` is empty; give each subscription a name"
                ));
            }
            if !names.insert(subscription.name.as_str()) {
                return Err(format!(
                    "key `{at}.name`: the name {:?} is used twice; names must be unique",
                    subscription.name
                ));
            }
        }
        Ok(())
    }
}

impl SubscriptionFile {
    /// Checks the entry and parses its values: the one place they are read.
    fn parse(
        self,
        index: usize,
        loader: &mut TlsLoader,
        delivery_tls: &ReceiverTls,
    ) -> Result<SubscriptionConfig, String> {
        let at = subscription_key(index, &self.name);
        if self.tables.is_empty() {
            return Err(format!(
                "key `{at}.tables` is empty; list tables such as [\"public.orders\"]"
            ));
        }
        let tables = self
            .tables
            .iter()
            .map(|table| {
                TableSelector::parse(table)
                    .map_err(|why| format!("key `{at}.tables`: {table:?} {why}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.events.is_empty() {
            return Err(format!(
                "key `{at}.events` is empty; use any of insert, update, delete, truncate"
            ));
        }
        match url::Url::parse(self.url.expose()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => {
                return Err(format!(
                    "key `{at}.url` is not an http:// or https:// URL with a host"
                ));
            }
        }
        let (signing_key, previous_keys) = match (&self.secret, &self.secrets) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "key `{at}` has both `secret` and `secrets`; keep `secrets = [newest, older]` \
                     while rolling a key, `secret` otherwise"
                ));
            }
            (Some(secret), None) => (
                Some(
                    SigningKey::from_secret(secret.expose())
                        .map_err(|why| format!("key `{at}.secret`: {why}"))?,
                ),
                Vec::new(),
            ),
            (None, Some(secrets)) if secrets.is_empty() => {
                return Err(format!(
                    "key `{at}.secrets` is empty; list the keys newest first, or leave it out"
                ));
            }
            (None, Some(secrets)) => {
                let mut keys = secrets
                    .iter()
                    .enumerate()
                    .map(|(index, secret)| {
                        SigningKey::from_secret(secret.expose())
                            .map_err(|why| format!("key `{at}.secrets[{index}]`: {why}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let newest = keys.remove(0);
                (Some(newest), keys)
            }
            (None, None) => (None, Vec::new()),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let invalid =
                || format!("key `{at}.headers.{name}` is not a valid HTTP header name and value");
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| invalid())?;
            // Never printed, not even by Debug.
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        if let Some(columns) = &self.columns
            && columns.is_empty()
        {
            return Err(format!(
                "key `{at}.columns` is empty; leave it out to send every column"
            ));
        }
        // Bounded above so that a typo (1000000000) is refused here, by
        // `check` too, rather than sizing memory in the lanes.
        let batch_range = 1..=MAX_BATCH_EVENTS;
        if !batch_range.contains(&self.batch.max_events) {
            return Err(format!(
                "key `{at}.batch.max_events` = {} is out of range; allowed: {} to {} \
                 (events per request; 1 sends each event alone)",
                self.batch.max_events,
                batch_range.start(),
                batch_range.end()
            ));
        }
        let filter = match &self.filter {
            Some(text) => Some(Filter::parse(text).map_err(|error| {
                // The catalog check's filter errors read the same way.
                format!(
                    "subscription {:?}: key `subscriptions[{index}].filter` does not parse: \
                     {error}{}",
                    self.name,
                    crate::filter::pointer(text, error.position)
                )
            })?),
            None => None,
        };
        let tls = loader.load(
            TlsKeys {
                at: &at,
                ca_file: self.ca_file.as_deref(),
                client_cert: self.client_cert.as_deref(),
                client_key: self.client_key.as_deref(),
            },
            delivery_tls,
        )?;
        Ok(SubscriptionConfig {
            name: self.name,
            tables,
            events: self.events,
            filter,
            columns: self.columns,
            url: self.url,
            signing_key,
            previous_keys,
            headers,
            ordering: self.ordering,
            batch: self.batch,
            tls,
        })
    }
}

impl SubscriptionConfig {
    /// Every entry of `tables`: tables and whole schemas.
    pub fn table_selectors(&self) -> Vec<TableSelector> {
        self.tables.clone()
    }

    /// The tables `tables` names one by one (not those of a `schema.*`).
    pub fn table_names(&self) -> Vec<TableName> {
        self.table_selectors()
            .into_iter()
            .filter_map(|selector| match selector {
                TableSelector::Table(table) => Some(table),
                TableSelector::Schema(_) => None,
            })
            .collect()
    }

    /// The schemas `tables` names whole (`schema.*`).
    pub fn schemas(&self) -> Vec<String> {
        self.table_selectors()
            .into_iter()
            .filter_map(|selector| match selector {
                TableSelector::Schema(schema) => Some(schema),
                TableSelector::Table(_) => None,
            })
            .collect()
    }
}

fn is_valid_identifier(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

fn subscription_key(index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("subscriptions[{index}]")
    } else {
        format!("subscriptions[{index}] ({name})")
    }
}

#[cfg(test)]
mod tests;
