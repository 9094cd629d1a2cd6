//! The catalog watch: while the daemon runs, it looks at the tables the rules
//! name every `source.catalog_watch_interval`, because some schema changes
//! send nothing down the replication stream and would otherwise go unseen.
//!
//! - A table **renamed** or moved to another schema keeps its relation oid,
//!   its place in the publication and its routes (`rules` routes by oid
//!   too): its changes go on being delivered under the new name. The watch
//!   says so loudly, once, and until the config is updated the table counts
//!   in `walhook_rule_table_problems{problem="renamed"}`.
//! - A table **dropped** has nothing more to deliver; the watch says which
//!   subscriptions lost it (`problem="dropped"`).
//! - A table **dropped and created again** under the same name is a new
//!   relation that the publication does not hold: none of its changes would
//!   be published. With `source.auto_setup` the watch adds it back
//!   (`ALTER PUBLICATION … ADD TABLE`) and says that rows written to it in
//!   between were not published (a backfill sends them); otherwise it names
//!   the statement (`problem="unpublished"`). A table that cannot log the
//!   updates or deletes the publication publishes is not added (PostgreSQL
//!   would refuse the application's UPDATE and DELETE on it); the watch
//!   names the fix instead (`problem="no_replica_identity"`), and adds it
//!   once the fix is made.
//! - A table created in a schema the rules select whole needs nothing (the
//!   publication holds the schema), except the same replica identity check.
//!
//! It never stops the daemon and never touches the slot; a lost connection
//! is retried at the next look.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{TableName, quote_identifier};
use crate::event::EventKind;
use crate::pgconn::{ConnectParams, connect_sql};
use crate::rules::Rules;
use crate::store::publication;
use crate::tables::{self, Resolution};
use crate::telemetry::{Metrics, TableProblem};

/// What the watch needs from the daemon.
pub struct CatalogWatch {
    pub params: ConnectParams,
    pub publication: String,
    pub auto_setup: bool,
    pub interval: Duration,
    pub rules: Arc<Rules>,
    pub metrics: Arc<Metrics>,
}

/// What the watch remembers between looks.
struct Seen {
    /// The relation oid of each table the rules name one by one, as last
    /// seen under that name.
    oids: BTreeMap<TableName, u32>,
    /// The problems found at the last look, each logged when it appeared.
    problems: BTreeSet<(TableName, TableProblem)>,
}

impl CatalogWatch {
    /// Looks every interval until `shutdown`, starting from the tables as
    /// the rules were bound to them (`start`).
    pub async fn run(self, start: Resolution, shutdown: CancellationToken) {
        let mut seen = Seen {
            oids: self
                .rules
                .tables()
                .into_iter()
                .filter_map(|name| Some((name.clone(), start.tables.get(&name)?.oid)))
                .collect(),
            problems: BTreeSet::new(),
        };
        let mut client: Option<tokio_postgres::Client> = None;
        // Failures are logged when they start and when they stop, not at
        // every look (the replication connection reports an outage too).
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            if client
                .as_ref()
                .is_none_or(tokio_postgres::Client::is_closed)
            {
                client = match connect_sql(&self.params).await {
                    Ok(client) => Some(client),
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "catalog watch: cannot connect; renamed, dropped and re-created tables go unseen until it can");
                        }
                        failing = true;
                        None
                    }
                };
            }
            let Some(connection) = &client else { continue };
            match self.look(connection, &mut seen).await {
                Ok(()) if failing => {
                    tracing::info!("catalog watch: looking at the catalog again");
                    failing = false;
                }
                Ok(()) => {}
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "catalog watch: a catalog query failed; trying at each look");
                    }
                    failing = true;
                }
            }
        }
    }

    /// One look: compares the catalog with what was seen, fixes the
    /// publication where it may, and reports each problem when it appears
    /// and when it is gone.
    async fn look(
        &self,
        client: &tokio_postgres::Client,
        seen: &mut Seen,
    ) -> Result<(), tokio_postgres::Error> {
        let now = tables::resolve(client, &self.rules.selectors()).await?;
        let known_oids: Vec<u32> = seen.oids.values().copied().collect();
        let names_by_oid: BTreeMap<u32, TableName> = client
            .query(
                "SELECT c.oid, n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = ANY($1::oid[])",
                &[&known_oids],
            )
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    TableName {
                        schema: row.try_get(1)?,
                        name: row.try_get(2)?,
                    },
                ))
            })
            .collect::<Result<_, tokio_postgres::Error>>()?;
        let mut problems = BTreeSet::new();
        // Tables whose changes should be published, by the name they have now.
        let mut expected: Vec<TableName> = now.tables.keys().cloned().collect();
        for (name, oid) in seen.oids.iter_mut() {
            let current = now.tables.get(name).map(|table| table.oid);
            match names_by_oid.get(oid) {
                Some(renamed) if renamed != name => {
                    if !seen
                        .problems
                        .contains(&(name.clone(), TableProblem::Renamed))
                    {
                        tracing::warn!(table = %name, now = %renamed, subscriptions = %self.subscriptions_of(name), "a table the rules name was renamed or moved to another schema; walhook keeps delivering its changes, under the new name — update `tables` in the config (a restart with the old name fails)");
                    }
                    problems.insert((name.clone(), TableProblem::Renamed));
                    expected.push(renamed.clone());
                }
                Some(_) => {}
                None => match current {
                    Some(recreated) => {
                        tracing::warn!(table = %name, old_oid = *oid, new_oid = recreated, "a table the rules name was dropped and created again; it is a new table to PostgreSQL, which the publication must hold again");
                        *oid = recreated;
                    }
                    None => {
                        if !seen
                            .problems
                            .contains(&(name.clone(), TableProblem::Dropped))
                        {
                            tracing::warn!(table = %name, subscriptions = %self.subscriptions_of(name), "a table the rules name was dropped; its subscriptions receive nothing from it until a table of that name exists again");
                        }
                        problems.insert((name.clone(), TableProblem::Dropped));
                    }
                },
            }
        }
        expected.sort();
        expected.dedup();
        let published = publication::published_tables(client, &self.publication).await?;
        let events = self.rules.events();
        let publishes_old_rows = events
            .iter()
            .any(|kind| matches!(kind, EventKind::Update | EventKind::Delete));
        for name in expected {
            let weak = now
                .tables
                .get(&name)
                .map(|table| table.without_identity.clone())
                .unwrap_or_default();
            if publishes_old_rows && !weak.is_empty() {
                if !seen
                    .problems
                    .contains(&(name.clone(), TableProblem::NoReplicaIdentity))
                {
                    let fixes: Vec<String> = weak
                        .iter()
                        .map(|table| {
                            format!("ALTER TABLE {} REPLICA IDENTITY FULL", table.quoted())
                        })
                        .collect();
                    tracing::warn!(table = %name, fix = %fixes.join("; "), "a table the rules select has no replica identity (no primary key, no identity index, not FULL) while the publication publishes updates or deletes: PostgreSQL refuses the application's UPDATE and DELETE on it until this is fixed (or a primary key is added)");
                }
                problems.insert((name.clone(), TableProblem::NoReplicaIdentity));
            }
            if published.contains(&name) {
                continue;
            }
            if self.auto_setup && (weak.is_empty() || !publishes_old_rows) {
                let statement = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_identifier(&self.publication),
                    name.quoted()
                );
                match client.batch_execute(&statement).await {
                    Ok(()) => {
                        tracing::warn!(table = %name, publication = %self.publication, "added a table the rules select to the publication (it was created again, or removed from the publication); rows written to it before now were not published and are not delivered — a backfill sends them");
                        continue;
                    }
                    Err(error) => {
                        tracing::debug!(%error, %statement, "catalog watch: cannot add the table to the publication");
                    }
                }
            }
            if !seen
                .problems
                .contains(&(name.clone(), TableProblem::Unpublished))
            {
                tracing::warn!(table = %name, publication = %self.publication, fix = %format!("ALTER PUBLICATION {} ADD TABLE {}", quote_identifier(&self.publication), name.quoted()), "a table the rules select is not in the publication, so none of its changes are published");
            }
            problems.insert((name, TableProblem::Unpublished));
        }
        for gone in seen.problems.difference(&problems) {
            tracing::info!(table = %gone.0, problem = gone.1.label(), "a rule table's problem is gone");
        }
        // Every problem of every named table is set, present or not: the
        // reader may have raised one (a rename seen in a Relation message)
        // that this look finds gone.
        let named = seen
            .oids
            .keys()
            .flat_map(|table| TableProblem::ALL.map(|problem| (table.clone(), problem)));
        for (table, problem) in named.chain(seen.problems.iter().cloned()) {
            let present = problems.contains(&(table.clone(), problem));
            self.metrics
                .set_table_problem(&table.to_string(), problem, present);
        }
        for (table, problem) in &problems {
            self.metrics
                .set_table_problem(&table.to_string(), *problem, true);
        }
        seen.problems = problems;
        Ok(())
    }

    /// The names of the subscriptions whose `tables` select `table`, for
    /// log lines.
    fn subscriptions_of(&self, table: &TableName) -> String {
        self.rules.subscriptions_selecting(table).join(", ")
    }
}
