//! walhook configs for the tests: [`TestConfig`] builds the whole file for a
//! test database (its slot and publication named after it, quick status
//! reports, short backoff, no admin server unless asked), and
//! [`Subscription`] one `[[subscriptions]]` table. Every test builds its
//! config through these, so a default changes in one place.

use std::fmt;
use std::path::Path;

use walhook::config::Config;

/// The `[delivery]` keys every test config has unless the test sets them.
/// The timeout is generous: on a loaded 2-core CI machine a 2 s timeout
/// makes spurious retries (duplicates), which tests of exact sequences
/// would misread. The backoff is short so that retries do not slow tests.
const DELIVERY_DEFAULTS: &[(&str, &str)] = &[
    ("concurrency", "16"),
    ("timeout", "\"10s\""),
    ("backoff", "{ initial = \"20ms\", max = \"200ms\" }"),
    ("shutdown_grace", "\"10s\""),
];

/// A whole walhook config file for a test database.
#[derive(Debug, Clone)]
pub struct TestConfig {
    url: String,
    slot: String,
    publication: String,
    /// `[source]` keys beyond url, slot, publication: (key, TOML value).
    source: Vec<(String, String)>,
    /// `[delivery]` keys: the defaults, then what the test set.
    delivery: Vec<(String, String)>,
    admin_listen: String,
    subscriptions: String,
}

impl TestConfig {
    /// A config reading `url`, with slot and publication `name`.
    pub fn new(url: &str, name: &str) -> TestConfig {
        TestConfig {
            url: url.to_owned(),
            slot: name.to_owned(),
            publication: name.to_owned(),
            source: vec![("status_interval".into(), "\"1s\"".into())],
            delivery: DELIVERY_DEFAULTS
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            admin_listen: String::new(),
            subscriptions: String::new(),
        }
    }

    /// Reads the database at `url` instead (another role, a proxy).
    pub fn url(mut self, url: &str) -> Self {
        self.url = url.to_owned();
        self
    }

    pub fn slot(mut self, slot: &str) -> Self {
        self.slot = slot.to_owned();
        self
    }

    pub fn publication(mut self, publication: &str) -> Self {
        self.publication = publication.to_owned();
        self
    }

    /// Sets a `[source]` key to a TOML value (`"\"200ms\""`, `"false"`).
    pub fn source(mut self, key: &str, value: &str) -> Self {
        set(&mut self.source, key, value);
        self
    }

    /// Leaves a `[source]` key out, so walhook's default applies.
    pub fn without_source(mut self, key: &str) -> Self {
        self.source.retain(|(name, _)| name != key);
        self
    }

    /// Sets a `[delivery]` key to a TOML value, replacing the test default.
    pub fn delivery(mut self, key: &str, value: &str) -> Self {
        set(&mut self.delivery, key, value);
        self
    }

    /// Serves the admin endpoints on `listen` (e.g. `127.0.0.1:9187`).
    pub fn admin(mut self, listen: &str) -> Self {
        self.admin_listen = listen.to_owned();
        self
    }

    /// Appends subscriptions: a [`Subscription`] or any `[[subscriptions]]`
    /// TOML.
    pub fn subscription(mut self, subscription: impl fmt::Display) -> Self {
        self.subscriptions.push_str(&subscription.to_string());
        self
    }

    /// The file's text.
    pub fn text(&self) -> String {
        let lines = |pairs: &[(String, String)]| {
            pairs
                .iter()
                .map(|(key, value)| format!("{key} = {value}\n"))
                .collect::<String>()
        };
        format!(
            "[source]\nurl = {url}\nslot = {slot}\npublication = {publication}\n{source}\
             [delivery]\n{delivery}\
             [admin]\nlisten = {listen}\n\
             {subscriptions}",
            url = toml_string(&self.url),
            slot = toml_string(&self.slot),
            publication = toml_string(&self.publication),
            source = lines(&self.source),
            delivery = lines(&self.delivery),
            listen = toml_string(&self.admin_listen),
            subscriptions = self.subscriptions,
        )
    }

    /// The config walhook reads from [`TestConfig::text`].
    pub fn build(&self) -> Config {
        Config::from_toml(Path::new("test.toml"), &self.text())
            .unwrap_or_else(|error| panic!("a valid test config: {error}\n{}", self.text()))
    }
}

fn set(pairs: &mut Vec<(String, String)>, key: &str, value: &str) {
    match pairs.iter_mut().find(|(name, _)| name == key) {
        Some(pair) => pair.1 = value.to_owned(),
        None => pairs.push((key.to_owned(), value.to_owned())),
    }
}

/// One `[[subscriptions]]` table: name and url, then what the test adds.
#[derive(Debug, Clone)]
pub struct Subscription {
    lines: Vec<String>,
}

/// A subscription named `name` that posts to `url`.
pub fn subscription(name: &str, url: &str) -> Subscription {
    Subscription {
        lines: vec![
            format!("name = {}", toml_string(name)),
            format!("url = {}", toml_string(url)),
        ],
    }
}

impl Subscription {
    pub fn tables(self, tables: &[&str]) -> Self {
        self.with("tables", &toml_array(tables))
    }

    /// `insert`, `update`, `delete`, `truncate`.
    pub fn events(self, events: &[&str]) -> Self {
        self.with("events", &toml_array(events))
    }

    pub fn secret(self, secret: &str) -> Self {
        self.with("secret", &toml_string(secret))
    }

    /// `key`, `none` or `strict`.
    pub fn ordering(self, ordering: &str) -> Self {
        self.with("ordering", &toml_string(ordering))
    }

    pub fn filter(self, filter: &str) -> Self {
        self.with("filter", &toml_string(filter))
    }

    pub fn columns(self, columns: &[&str]) -> Self {
        self.with("columns", &toml_array(columns))
    }

    /// Any other key, with its value as TOML (`"{ max_events = 10 }"`).
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.lines.push(format!("{key} = {value}"));
        self
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[[subscriptions]]")?;
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// `text` as a TOML basic string.
pub fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            control if control.is_control() => {
                quoted.push_str(&format!("\\u{:04X}", u32::from(control)));
            }
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

fn toml_array(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|item| toml_string(item)).collect();
    format!("[{}]", items.join(", "))
}
