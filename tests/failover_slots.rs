//! The slot `walhook setup` creates is a failover slot on PostgreSQL 17 and
//! newer (a standby with `sync_replication_slots` keeps a copy to resume
//! from after promotion), and an ordinary slot on older servers, which do
//! not know the option.

use crate::support::receiver::Receiver;
use crate::support::{TestDb, WalhookBinary};

async fn server_version_num(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn setup_creates_a_failover_slot_from_postgresql_17_on() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(&db.config_text(&format!(
        r#"
        [[subscriptions]]
        name = "items"
        tables = ["items"]
        url = "{}"
        "#,
        receiver.url("/items")
    )));
    let setup = binary.command(&["setup"]).await;
    assert!(setup.status.success(), "{setup:?}");

    let version_num = server_version_num(&db.client).await;
    let plugin: String = db
        .client
        .query_one(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plugin, "pgoutput");
    if version_num >= 170_000 {
        let failover: bool = db
            .client
            .query_one(
                "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        assert!(failover, "server_version_num {version_num}");
    }
}
