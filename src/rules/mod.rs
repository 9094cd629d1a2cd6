//! Rules: which subscriptions receive a change of a table, and which of its
//! columns they see.
//!
//! Routes are worked out once per table shape (each time a Relation message
//! arrives) so that matching a change is a scan of a short list. This module
//! does not build payloads or send anything.

pub mod catalog_check;

use crate::config::{EventKind, SubscriptionConfig, TableName};
use crate::event::TableInfo;

/// Every subscription, in configuration order.
#[derive(Debug)]
pub struct Rules {
    subscriptions: Vec<Subscription>,
}

#[derive(Debug)]
struct Subscription {
    name: String,
    tables: Vec<TableName>,
    events: Vec<EventKind>,
    columns: Option<Vec<String>>,
}

/// One subscription's interest in one table.
#[derive(Debug, Clone)]
pub struct Route {
    pub subscription: usize,
    events: Vec<EventKind>,
    /// `Some(mask)` keeps only the columns whose entry is true.
    pub projection: Option<Vec<bool>>,
}

impl Route {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }
}

impl Rules {
    pub fn new(subscriptions: &[SubscriptionConfig]) -> Rules {
        Rules {
            subscriptions: subscriptions
                .iter()
                .map(|subscription| Subscription {
                    name: subscription.name.clone(),
                    tables: subscription.table_names(),
                    events: subscription.events.clone(),
                    columns: subscription.columns.clone(),
                })
                .collect(),
        }
    }

    /// The subscription's name.
    pub fn name(&self, subscription: usize) -> &str {
        self.subscriptions
            .get(subscription)
            .map_or("", |subscription| subscription.name.as_str())
    }

    /// Every table some rule names, deduplicated and sorted.
    pub fn tables(&self) -> Vec<TableName> {
        let mut tables: Vec<TableName> = self
            .subscriptions
            .iter()
            .flat_map(|subscription| subscription.tables.iter().cloned())
            .collect();
        tables.sort();
        tables.dedup();
        tables
    }

    /// The routes of a table as it is now shaped.
    pub fn routes_for(&self, table: &TableInfo) -> Vec<Route> {
        self.subscriptions
            .iter()
            .enumerate()
            .filter(|(_, subscription)| {
                subscription
                    .tables
                    .iter()
                    .any(|name| name.schema == table.schema && name.name == table.name)
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
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        TableInfo {
            relation_id: 1,
            schema: schema.into(),
            name: name.into(),
            columns: ["id", "status"]
                .into_iter()
                .map(|name| ColumnInfo {
                    name: name.into(),
                    type_oid: 23,
                    in_identity: name == "id",
                })
                .collect(),
            key_columns: vec![0],
            identity_full: false,
        }
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
}
