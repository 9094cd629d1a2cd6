//! Reloading the configuration of a running daemon (SIGHUP): reads the
//! file again with the loader `run` uses, says what changed, and decides
//! whether the new configuration may replace the running one.
//!
//! A reload is refused — the daemon goes on with the configuration it has,
//! and one line says why — when the file does not load (the same message
//! `walhook check` prints), when it moves the stream to another source
//! (`source.url`, `source.slot`, `source.publication`: those need a
//! restart), or when its rules do not hold against the catalog. A file that
//! changes nothing is said to be unchanged. `admin.listen` is not rebound:
//! the admin server stays where it is until the next restart, and the
//! reload says so.
//!
//! This module only reads and judges; `app` stops the stream at a confirmed
//! position, applies the publication changes and streams on with the new
//! configuration (docs/operations.md, "Reloading the configuration").

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::config::{Config, ReceiverTls, SubscriptionConfig};
use crate::pgconn::{ConnectParams, connect_sql};
use crate::rules::Rules;
use crate::rules::catalog_check;

/// Where reload requests come from: the config file to read again, and a
/// channel that says "read it" (one pending request stands for any number:
/// the file is read when the request is handled).
pub struct Reloads {
    source: Option<(PathBuf, mpsc::Receiver<()>)>,
}

impl Reloads {
    /// No reloads: a daemon embedded without a config file.
    pub fn never() -> Reloads {
        Reloads { source: None }
    }

    /// Reloads of the file at `path`, each asked for on `requests`.
    pub fn from_file(path: PathBuf, requests: mpsc::Receiver<()>) -> Reloads {
        Reloads {
            source: Some((path, requests)),
        }
    }

    /// Waits for the next request and returns the file to read; never
    /// resolves when there are none to come.
    pub async fn requested(&mut self) -> PathBuf {
        if let Some((path, requests)) = &mut self.source
            && requests.recv().await.is_some()
        {
            return path.clone();
        }
        // None to come (or the sender is gone).
        self.source = None;
        std::future::pending().await
    }
}

/// What a new configuration changes, by name; never a value (URLs and
/// headers may hold secrets).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Subscriptions whose settings changed (tables, URL, secret, …), or
    /// only their place in the file.
    pub changed: Vec<String>,
    /// `[delivery]` changed.
    pub delivery: bool,
    /// A `[source]` key a reload applies changed (`auto_setup`,
    /// `connect_timeout`, `status_interval`, `catalog_watch_interval`).
    pub source: bool,
    /// `admin.listen` changed (from, to): not applied before a restart.
    pub admin_listen: Option<(String, String)>,
}

/// A change a reload does not make.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "key `source.{key}` changed; a reload does not move the stream to another \
     {what}: restart walhook to use it (or put the running value back and reload)"
)]
pub struct Refused {
    key: &'static str,
    what: &'static str,
}

impl Changes {
    /// Compares the running configuration with a new one.
    pub fn between(running: &Config, new: &Config) -> Result<Changes, Refused> {
        let (old_source, new_source) = (&running.source, &new.source);
        for (key, what, same) in [
            (
                "url",
                "database (or role, or connection settings)",
                old_source.url == new_source.url,
            ),
            ("slot", "slot", old_source.slot == new_source.slot),
            (
                "publication",
                "publication",
                old_source.publication == new_source.publication,
            ),
        ] {
            if !same {
                return Err(Refused { key, what });
            }
        }
        let mut changes = Changes {
            delivery: running.delivery != new.delivery
                || !same_tls(&running.delivery.tls, &new.delivery.tls),
            source: old_source != new_source,
            ..Changes::default()
        };
        if running.admin.listen != new.admin.listen {
            changes.admin_listen = Some((running.admin.listen.clone(), new.admin.listen.clone()));
        }
        for (index, subscription) in new.subscriptions.iter().enumerate() {
            match running
                .subscriptions
                .iter()
                .position(|old| old.name == subscription.name)
            {
                None => changes.added.push(subscription.name.clone()),
                // Delivery, metrics and backfills number subscriptions by
                // their place in the file: a moved one is rebuilt too.
                Some(old_index) => {
                    let old = &running.subscriptions[old_index];
                    if old_index != index || !same_subscription(old, subscription) {
                        changes.changed.push(subscription.name.clone());
                    }
                }
            }
        }
        changes.removed = running
            .subscriptions
            .iter()
            .filter(|old| new.subscriptions.iter().all(|sub| sub.name != old.name))
            .map(|old| old.name.clone())
            .collect();
        Ok(changes)
    }

    /// Whether the stream must restart to apply it: anything but
    /// `admin.listen`, which is not applied.
    pub fn restarts_stream(&self) -> bool {
        !self.added.is_empty()
            || !self.removed.is_empty()
            || !self.changed.is_empty()
            || self.delivery
            || self.source
    }

    /// One line for the log: what changed, by name.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (label, names) in [
            ("subscriptions added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{label}: {}", names.join(", ")));
            }
        }
        if self.delivery {
            parts.push("[delivery] changed".to_owned());
        }
        if self.source {
            parts.push("[source] changed".to_owned());
        }
        if parts.is_empty() {
            "nothing the stream uses".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// Whether a subscription sends the same requests to the same receiver.
/// [`ReceiverTls`] compares file names; a reload also rereads the files, so
/// a certificate renewed in place counts as a change.
pub fn same_subscription(a: &SubscriptionConfig, b: &SubscriptionConfig) -> bool {
    a == b && same_tls(&a.tls, &b.tls)
}

fn same_tls(a: &ReceiverTls, b: &ReceiverTls) -> bool {
    let same_ca = match (&a.ca, &b.ca) {
        (Some(a), Some(b)) => a.path == b.path && a.certificates == b.certificates,
        (None, None) => true,
        _ => false,
    };
    let same_identity = match (&a.identity, &b.identity) {
        (Some(a), Some(b)) => a == b && a.pem() == b.pem(),
        (None, None) => true,
        _ => false,
    };
    same_ca && same_identity
}

/// What to do with a reload request.
pub enum Verdict {
    /// Go on as before (why has been logged).
    Keep,
    /// Stop the stream at a confirmed position and go on with this.
    Apply(Box<Plan>),
}

/// A new configuration that loaded, changes what the stream uses, and whose
/// rules hold against the catalog as it is now.
pub struct Plan {
    pub config: Config,
    pub changes: Changes,
}

/// Reads `path` again and judges it against the `running` configuration,
/// checking its rules in the catalog (as `run` does before it streams).
/// Logs every outcome but [`Verdict::Apply`], which the caller logs once
/// it is applied.
pub async fn review(path: &Path, running: &Config) -> Verdict {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => return reject(&error),
    };
    let changes = match Changes::between(running, &config) {
        Ok(changes) => changes,
        Err(refused) => return reject(&format!("{}: {refused}", path.display())),
    };
    if let Some((from, to)) = &changes.admin_listen {
        tracing::warn!(
            from = %from,
            to = %to,
            "admin.listen changed: the admin server stays on its address until walhook restarts"
        );
    }
    if !changes.restarts_stream() {
        let except = match changes.admin_listen {
            Some(_) => " apart from admin.listen",
            None => "",
        };
        tracing::info!(config = %path.display(), "configuration unchanged{except}; nothing to reload");
        return Verdict::Keep;
    }
    if let Err(problem) = check_rules(&config).await {
        return reject(&problem);
    }
    Verdict::Apply(Box::new(Plan { config, changes }))
}

/// The checks `run` makes of the rules before it touches the slot.
async fn check_rules(config: &Config) -> Result<(), String> {
    let params =
        ConnectParams::from_source(&config.source).map_err(|error| format!("source.url: {error}"))?;
    let client = connect_sql(&params).await.map_err(|error| {
        format!("cannot check the new rules against the database ({error}); send SIGHUP again once it answers")
    })?;
    let resolution = catalog_check::check(&client, &config.subscriptions)
        .await
        .map_err(|error| error.to_string())?;
    if config.source.auto_setup {
        let rules = Rules::new(&config.subscriptions);
        catalog_check::refuse_unloggable(&resolution, &rules.events())
            .map_err(|error| error.to_string())?;
    }
    Ok(())
}

fn reject(why: &dyn std::fmt::Display) -> Verdict {
    tracing::error!("reload rejected, walhook goes on with its running configuration: {why}");
    Verdict::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(source: &str, subscriptions: &str) -> Config {
        let text = format!(
            "[source]\nurl = \"postgres://walhook@localhost/app\"\n{source}\n{subscriptions}"
        );
        Config::from_toml(Path::new("walhook.toml"), &text).unwrap()
    }

    const ORDERS: &str = "[[subscriptions]]\nname = \"orders\"\ntables = [\"orders\"]\nurl = \"http://a.example/hook\"\n";
    const REFUNDS: &str = "[[subscriptions]]\nname = \"refunds\"\ntables = [\"refunds\"]\nurl = \"http://b.example/hook\"\n";

    #[test]
    fn the_same_file_changes_nothing() {
        let changes = Changes::between(&config("", ORDERS), &config("", ORDERS)).unwrap();
        assert_eq!(changes, Changes::default());
        assert!(!changes.restarts_stream());
    }

    #[test]
    fn subscriptions_are_compared_by_name() {
        let running = config("", &format!("{ORDERS}{REFUNDS}"));
        let moved_url = ORDERS.replace("a.example", "c.example");
        let new = config(
            "",
            &format!("{moved_url}[[subscriptions]]\nname = \"signups\"\ntables = [\"signups\"]\nurl = \"http://d.example/\"\n"),
        );
        let changes = Changes::between(&running, &new).unwrap();
        assert_eq!(changes.added, ["signups"]);
        assert_eq!(changes.removed, ["refunds"]);
        assert_eq!(changes.changed, ["orders"]);
        assert!(!changes.delivery && !changes.source);
        assert_eq!(
            changes.summary(),
            "subscriptions added: signups; removed: refunds; changed: orders"
        );
        assert!(!changes.summary().contains("example"), "no URL in the log");
    }

    #[test]
    fn a_secret_or_a_filter_is_a_change() {
        let running = config("", ORDERS);
        let signed = format!(
            "{ORDERS}secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
        );
        let filtered = format!("{ORDERS}filter = \"id > 1\"\n");
        for new in [signed, filtered] {
            let changes = Changes::between(&running, &config("", &new)).unwrap();
            assert_eq!(changes.changed, ["orders"], "{new}");
        }
    }

    #[test]
    fn the_source_of_the_stream_cannot_change() {
        let running = config("", ORDERS);
        for (source, key) in [
            ("slot = \"other\"", "source.slot"),
            ("publication = \"other\"", "source.publication"),
        ] {
            let refused = Changes::between(&running, &config(source, ORDERS)).unwrap_err();
            assert!(refused.to_string().contains(key), "{refused}");
        }
        let moved = config("", ORDERS);
        let mut moved = moved;
        moved.source.url = crate::config::Secret::new("postgres://walhook@elsewhere/app");
        assert!(Changes::between(&running, &moved).is_err());
    }

    #[test]
    fn delivery_and_applicable_source_keys_restart_the_stream_but_admin_listen_does_not() {
        let running = config("", ORDERS);
        let delivery = config("[delivery]\nmax_attempts = 3", ORDERS);
        assert!(Changes::between(&running, &delivery).unwrap().delivery);
        let interval = config("status_interval = \"2s\"", ORDERS);
        let changes = Changes::between(&running, &interval).unwrap();
        assert!(changes.source && changes.restarts_stream());
        let admin = config("[admin]\nlisten = \"127.0.0.1:1\"", ORDERS);
        let changes = Changes::between(&running, &admin).unwrap();
        assert!(changes.admin_listen.is_some());
        assert!(!changes.restarts_stream());
    }
}
