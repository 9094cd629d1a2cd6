//! The slot `walhook setup` creates is a failover slot on PostgreSQL 17 and
//! newer (a standby with `sync_replication_slots` keeps a copy to resume
//! from after promotion), and an ordinary slot on older servers, which do
//! not know the option. With such a standby, walhook follows the promoted
//! server as docs/operations.md describes, losing no row.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use walhook::pgtemp::{StandbyOptions, TempPostgres};

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, WalhookBinary, connect, ids_by_row, sigterm, wait_for_rows};

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn setup_creates_a_failover_slot_from_postgresql_17_on() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(
        &db.config_text(subscription("items", &receiver.url("/items")).tables(&["items"])),
    );
    let setup = binary.command(&["setup"]).await;
    assert!(setup.status.success(), "{setup:?}");

    let version_num = db.server_version_num().await;
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

/// Stands in for the DNS name or virtual IP that follows the primary: each
/// new connection goes to the port it points at then.
struct Forwarder {
    port: u16,
    target: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let current = Arc::clone(&target);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let to = current.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    // A server that is down: the client sees its connection
                    // closed, as behind a real proxy.
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Forwarder { port, target, task }
    }

    fn point_at(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    fn url(&self, database: &str, password: &str) -> String {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn insert_items(client: &tokio_postgres::Client, from: i32, to: i32) {
    client
        .execute(
            "INSERT INTO items SELECT g, 'row ' || g FROM generate_series($1::int, $2::int) g",
            &[&from, &to],
        )
        .await
        .unwrap();
}

/// docs/operations.md, "PostgreSQL failover": a physical standby with
/// `sync_replication_slots = on`, `hot_standby_feedback = on` and a
/// `primary_slot_name` that the primary names in
/// `synchronized_standby_slots`; walhook's URL leads to whichever server is
/// the primary. The primary dies, the standby is promoted, and walhook
/// carries on from the standby's copy of its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walhook_follows_a_promoted_standby_through_its_failover_slot() {
    let primary = Arc::new(
        tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .unwrap()
            .unwrap(),
    );
    let db = TestDb::on(&primary).await;
    let version_num = db.server_version_num().await;
    if version_num < 170_000 {
        eprintln!("skipped: failover slots need PostgreSQL 17 (server_version_num {version_num})");
        return;
    }
    db.client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, note text);
             CREATE TABLE noise (id bigserial PRIMARY KEY);",
        )
        .await
        .unwrap();
    // Reserving WAL at once: the standby starts from the copy's position.
    db.client
        .execute(
            "SELECT pg_create_physical_replication_slot('walhook_standby', true)",
            &[],
        )
        .await
        .unwrap();

    let forwarder = Forwarder::start(primary.port()).await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(
        &db.configure()
            .url(&forwarder.url(&db.name, primary.password()))
            .subscription(
                subscription("items", &receiver.url("/items"))
                    .tables(&["items"])
                    .events(&["insert"]),
            )
            .text(),
    );
    let setup = binary.command(&["setup"]).await;
    assert!(setup.status.success(), "{setup:?}");

    // The standby, made after the slot so that its sync worker finds it at
    // once. (Making it restarts the primary: connect again.)
    let standby = {
        let primary = Arc::clone(&primary);
        Arc::new(
            tokio::task::spawn_blocking(move || {
                primary.start_standby(StandbyOptions {
                    primary_slot: "walhook_standby".into(),
                    extra_conf: vec!["sync_replication_slots = on".into()],
                })
            })
            .await
            .unwrap()
            .unwrap(),
        )
    };
    let on_primary = connect(&primary.url(&db.name)).await;
    // walhook never gets ahead of the standby.
    on_primary
        .batch_execute("ALTER SYSTEM SET synchronized_standby_slots = 'walhook_standby'")
        .await
        .unwrap();
    on_primary
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();

    let mut walhook = binary.spawn_run();
    insert_items(&on_primary, 1, 5).await;
    wait_for_rows(&receiver, 5, DEADLINE, || binary.log()).await;

    // The standby keeps its copy of the slot only once the primary's slot
    // needs nothing older than the standby has; other writes and a
    // checkpoint move it on.
    let on_standby = connect(&standby.url(&db.name)).await;
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let ready = on_standby
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 \
                 AND failover AND synced AND NOT temporary AND invalidation_reason IS NULL",
                &[&db.name],
            )
            .await
            .unwrap();
        if ready.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the standby did not keep a copy of slot {}:\n{}",
            db.name,
            standby.log()
        );
        on_primary
            .batch_execute("INSERT INTO noise DEFAULT VALUES")
            .await
            .unwrap();
        on_primary.batch_execute("CHECKPOINT").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Rows the standby's copy may not have confirmed yet: after the failover
    // walhook may send them again, with the same ids.
    insert_items(&on_primary, 6, 8).await;
    wait_for_rows(&receiver, 8, DEADLINE, || binary.log()).await;
    {
        let primary = Arc::clone(&primary);
        tokio::task::spawn_blocking(move || primary.crash())
            .await
            .unwrap()
            .unwrap();
    }
    {
        let standby = Arc::clone(&standby);
        tokio::task::spawn_blocking(move || standby.promote())
            .await
            .unwrap()
            .unwrap();
    }
    forwarder.point_at(standby.port());

    insert_items(&on_standby, 9, 12).await;
    wait_for_rows(&receiver, 12, DEADLINE, || binary.log()).await;
    binary.wait_for_log("reconnected; resuming", DEADLINE).await;
    let by_row = ids_by_row(&receiver.delivered());
    assert_eq!(
        by_row.keys().copied().collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    for (row, ids) in &by_row {
        assert_eq!(
            ids.len(),
            1,
            "row {row} was sent with different ids: {ids:?}"
        );
    }

    sigterm(&walhook);
    let status = tokio::time::timeout(DEADLINE, walhook.wait())
        .await
        .expect("walhook stops")
        .unwrap();
    assert!(status.success(), "{}", binary.log());
}
