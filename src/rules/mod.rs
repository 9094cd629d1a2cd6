//! Rules: which subscriptions receive a change of a table, and which of its
//! columns they see.
//!
//! Routes are worked out once per table shape (each time a Relation message
//! arrives) so that matching a change is a scan of a short list: the event
//! kind, then the subscription's filter, bound to the shape's column indexes.
//! A subscription selects a table by its name, by its schema (`schema.*`,
//! tables created later included), or by the relation oid the table had
//! when the rules were bound at start-up ([`Rules::bind`]), so a table
//! renamed or moved while walhook runs is still delivered. TRUNCATE events
//! skip filters. A filter naming a column the table no longer has (a DROP
//! COLUMN after start-up) cannot be judged: its changes are parked as dead
//! letters with the reason, never skipped. This module does not build
//! payloads or send anything.

pub mod catalog_check;

use std::sync::Arc;

use crate::config::{SubscriptionConfig, TableName, TableSelector};
use crate::event::EventKind;
use crate::event::{Change, TableInfo};
use crate::filter::{BoundFilter, ColumnUse, Filter, Side};
use crate::oid::OidMap;
use crate::tables::Resolution;

/// Every subscription, in configuration order.
#[derive(Debug)]
pub struct Rules {
    subscriptions: Vec<Subscription>,
    /// The name each selected table had when the rules were bound to the
    /// catalog, by relation oid: a table renamed or moved since keeps its
    /// routes, and this is the name the config still gives it.
    bound_names: OidMap<TableName>,
}

#[derive(Debug)]
struct Subscription {
    name: String,
    tables: Vec<TableSelector>,
    /// The relation oids of the tables `tables` selected at start-up.
    table_oids: Vec<u32>,
    events: Vec<EventKind>,
    columns: Option<Vec<String>>,
    filter: Option<Filter>,
}

/// One subscription's interest in one table.
#[derive(Debug, Clone)]
pub struct Route {
    pub subscription: usize,
    events: Vec<EventKind>,
    /// `Some(mask)` keeps only the columns whose entry is true.
    pub projection: Option<Vec<bool>>,
    filter: RouteFilter,
}

/// A subscription's filter for one table shape.
#[derive(Debug, Clone)]
enum RouteFilter {
    /// No filter: every change of a wanted kind.
    All,
    Bound(Arc<BoundFilter>),
    /// The filter cannot apply to this shape (a column it names was
    /// dropped): its changes are parked as dead letters with this reason,
    /// so nothing is silently skipped.
    Unusable(Arc<str>),
}

/// What a route does with a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Skip,
    Deliver,
    /// Cannot be decided: park it as a dead letter, for this reason.
    Park(Arc<str>),
}

impl Route {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }

    /// Whether this subscription receives `change`: it wants the kind and,
    /// except for TRUNCATE, its filter is TRUE for the change.
    #[cfg(any(test, feature = "testing"))]
    pub fn matches(&self, change: &Change) -> bool {
        self.decide(change) == Decision::Deliver
    }

    /// Deliver, skip, or — when the filter cannot be evaluated — park.
    pub fn decide(&self, change: &Change) -> Decision {
        if !self.wants(change.kind) {
            return Decision::Skip;
        }
        if change.kind == EventKind::Truncate {
            return Decision::Deliver;
        }
        self.decide_backfilled(change)
    }

    /// Whether this subscription receives a backfilled row (a READ): its
    /// filter decides, as for an insert; `events` does not (a backfill is
    /// asked for explicitly).
    pub fn decide_backfilled(&self, change: &Change) -> Decision {
        match &self.filter {
            RouteFilter::All => Decision::Deliver,
            RouteFilter::Bound(filter) if filter.matches(change) => Decision::Deliver,
            RouteFilter::Bound(_) => Decision::Skip,
            RouteFilter::Unusable(reason) => Decision::Park(Arc::clone(reason)),
        }
    }
}

impl Rules {
    pub fn new(subscriptions: &[SubscriptionConfig]) -> Rules {
        Rules {
            subscriptions: subscriptions
                .iter()
                .map(|subscription| Subscription {
                    name: subscription.name.clone(),
                    tables: subscription.table_selectors(),
                    table_oids: Vec::new(),
                    events: subscription.events.clone(),
                    columns: subscription.columns.clone(),
                    filter: subscription.filter.clone(),
                })
                .collect(),
            bound_names: OidMap::default(),
        }
    }

    /// Binds the rules to the tables as the catalog has them at start-up, so
    /// that each table is routed by its relation oid as well as by its
    /// name: a table renamed or moved to another schema while walhook runs
    /// keeps being delivered (under its new name) instead of silently
    /// matching nothing.
    pub fn bind(&mut self, resolution: &Resolution) {
        for subscription in &mut self.subscriptions {
            subscription.table_oids = resolution
                .selected_by(&subscription.tables)
                .map(|table| table.oid)
                .collect();
        }
        // Only tables named one by one have a name the config must keep
        // up with; a `schema.*` follows its schema.
        let named = self.tables();
        self.bound_names = resolution
            .tables
            .values()
            .filter(|table| named.contains(&table.name))
            .map(|table| (table.oid, table.name.clone()))
            .collect();
    }

    /// For a table the rules select by its oid but no longer by its name
    /// (renamed or moved since start-up): the name the config gives it.
    pub fn former_name(&self, table: &TableInfo) -> Option<&TableName> {
        let selected_by_name = self.subscriptions.iter().any(|subscription| {
            subscription
                .tables
                .iter()
                .any(|selector| selector.selects(&table.schema, &table.name))
        });
        if selected_by_name {
            return None;
        }
        self.bound_names.get(&table.relation_id)
    }

    /// The names of the subscriptions whose `tables` select `table`.
    pub fn subscriptions_selecting(&self, table: &TableName) -> Vec<&str> {
        self.subscriptions
            .iter()
            .filter(|subscription| {
                subscription
                    .tables
                    .iter()
                    .any(|selector| selector.selects(&table.schema, &table.name))
            })
            .map(|subscription| subscription.name.as_str())
            .collect()
    }

    /// The subscription's name.
    pub fn name(&self, subscription: usize) -> &str {
        self.subscriptions
            .get(subscription)
            .map_or("", |subscription| subscription.name.as_str())
    }

    /// Every kind of change some rule asks for.
    pub fn events(&self) -> Vec<EventKind> {
        let mut events: Vec<EventKind> = self
            .subscriptions
            .iter()
            .flat_map(|subscription| subscription.events.iter().copied())
            .collect();
        events.dedup();
        events
    }

    /// Every table some rule names one by one, deduplicated and sorted.
    pub fn tables(&self) -> Vec<TableName> {
        let mut tables: Vec<TableName> = self
            .selectors()
            .into_iter()
            .filter_map(|selector| match selector {
                TableSelector::Table(table) => Some(table),
                TableSelector::Schema(_) => None,
            })
            .collect();
        tables.sort();
        tables.dedup();
        tables
    }

    /// Every schema some rule selects whole (`schema.*`), sorted.
    pub fn schemas(&self) -> Vec<String> {
        let mut schemas: Vec<String> = self
            .selectors()
            .into_iter()
            .filter_map(|selector| match selector {
                TableSelector::Schema(schema) => Some(schema),
                TableSelector::Table(_) => None,
            })
            .collect();
        schemas.sort();
        schemas.dedup();
        schemas
    }

    /// Every entry of every subscription's `tables`.
    pub fn selectors(&self) -> Vec<TableSelector> {
        self.subscriptions
            .iter()
            .flat_map(|subscription| subscription.tables.iter().cloned())
            .collect()
    }

    /// The routes of a table as it is now shaped.
    pub fn routes_for(&self, table: &TableInfo) -> Vec<Route> {
        self.subscriptions
            .iter()
            .enumerate()
            .filter(|(_, subscription)| {
                subscription.table_oids.contains(&table.relation_id)
                    || subscription
                        .tables
                        .iter()
                        .any(|selector| selector.selects(&table.schema, &table.name))
            })
            .map(|(index, subscription)| Route {
                subscription: index,
                events: subscription.events.clone(),
                projection: subscription.columns.as_ref().map(|columns| {
                    table
                        .columns
                        .iter()
                        .map(|column| columns.contains(&column.name))
                        .collect()
                }),
                filter: route_filter(subscription, table),
            })
            .collect()
    }
}

/// Binds a subscription's filter to a table's current shape.
fn route_filter(subscription: &Subscription, table: &TableInfo) -> RouteFilter {
    let Some(filter) = &subscription.filter else {
        return RouteFilter::All;
    };
    match filter.bind(table) {
        Ok(bound) => {
            if !table.identity_full && reads_old_row_of_updates(filter, &subscription.events) {
                tracing::warn!(
                    subscription = %subscription.name,
                    table = %format_args!("{}.{}", table.schema, table.name),
                    "the filter reads old values but the table is no longer REPLICA IDENTITY FULL; \
                     predicates on old values of updates are unknown and do not match"
                );
            }
            RouteFilter::Bound(Arc::new(bound))
        }
        Err(column) => {
            tracing::error!(
                subscription = %subscription.name,
                table = %format_args!("{}.{}", table.schema, table.name),
                column = %column.name,
                "the filter names a column the table no longer has; \
                 its changes are parked as dead letters until the filter or the table is fixed"
            );
            RouteFilter::Unusable(
                format!(
                    "filter of subscription {:?} names column {:?}, which table {}.{} no longer has",
                    subscription.name, column.name, table.schema, table.name
                )
                .into(),
            )
        }
    }
}

fn reads_old_row_of_updates(filter: &Filter, events: &[EventKind]) -> bool {
    events.contains(&EventKind::Update)
        && filter
            .columns()
            .iter()
            .any(|(column, usage)| column.side == Side::Old || *usage == ColumnUse::Changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::fixtures;
    use crate::config::Config;
    use crate::event::ColumnInfo;

    fn rules() -> Rules {
        let config = Config::from_toml(
            std::path::Path::new("t.toml"),
            r#"
            [source]
            url = "postgres://x@localhost/db"
            [[subscriptions]]
            name = "orders-all"
            tables = ["public.orders", "shop.signups"]
            url = "http://127.0.0.1:1/"
            [[subscriptions]]
            name = "orders-inserts"
            tables = ["orders"]
            events = ["insert"]
            columns = ["id"]
            url = "http://127.0.0.1:1/"
            "#,
        )
        .unwrap();
        Rules::new(&config.subscriptions)
    }

    fn table(schema: &str, name: &str) -> TableInfo {
        TableInfo::new(
            1,
            schema.into(),
            name.into(),
            ["id", "status"]
                .into_iter()
                .map(|name| ColumnInfo::new(name.into(), 23, name == "id"))
                .collect(),
            vec![0],
            false,
        )
    }

    #[test]
    fn routes_follow_tables_events_and_columns() {
        let rules = rules();
        let routes = rules.routes_for(&table("public", "orders"));
        assert_eq!(routes.len(), 2);
        assert!(routes[0].wants(EventKind::Delete));
        assert!(!routes[0].wants(EventKind::Truncate));
        assert_eq!(routes[0].projection, None);
        assert!(routes[1].wants(EventKind::Insert) && !routes[1].wants(EventKind::Update));
        assert_eq!(routes[1].projection, Some(vec![true, false]));
        assert_eq!(rules.routes_for(&table("shop", "signups")).len(), 1);
        assert!(rules.routes_for(&table("public", "signups")).is_empty());
        assert_eq!(rules.tables().len(), 2);
    }

    fn change(table: &TableInfo, kind: EventKind, status: &str) -> Change {
        let new = (kind != EventKind::Truncate).then(|| fixtures::row(&[Some("1"), Some(status)]));
        fixtures::change(std::sync::Arc::new(table.clone()), kind, new, None)
    }

    #[test]
    fn filters_apply_except_to_truncate_and_a_lost_column_matches_nothing() {
        let config = Config::from_toml(
            std::path::Path::new("t.toml"),
            r#"
            [source]
            url = "postgres://x@localhost/db"
            [[subscriptions]]
            name = "paid"
            tables = ["orders"]
            events = ["insert", "truncate"]
            filter = "status = 'paid'"
            url = "http://127.0.0.1:1/"
            "#,
        )
        .unwrap();
        let rules = Rules::new(&config.subscriptions);
        let orders = table("public", "orders");
        let routes = rules.routes_for(&orders);
        assert!(routes[0].matches(&change(&orders, EventKind::Insert, "\"paid\"")));
        assert!(!routes[0].matches(&change(&orders, EventKind::Insert, "\"new\"")));
        assert!(!routes[0].matches(&change(&orders, EventKind::Insert, "null")));
        assert!(!routes[0].matches(&change(&orders, EventKind::Update, "\"paid\"")));
        assert!(routes[0].matches(&change(&orders, EventKind::Truncate, "")));

        // ALTER TABLE orders DROP COLUMN status; the next Relation rebinds.
        let mut dropped = orders.clone();
        dropped.columns.truncate(1);
        let routes = rules.routes_for(&dropped);
        assert!(!routes[0].matches(&change(&dropped, EventKind::Insert, "\"paid\"")));
        assert!(routes[0].matches(&change(&dropped, EventKind::Truncate, "")));
    }
}
