//! Delivery under failure: receivers that answer 500, 429 with Retry-After,
//! or 503 a few times; walhook killed with SIGKILL mid-stream; undeliverable
//! events parked as dead letters, and a dead-letter store that refuses them.
//! Throughout, the slot stays behind what is neither delivered nor stored.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::config::{Subscription, subscription};
use crate::support::receiver::{Receiver, Reply};
use crate::support::{
    TestDb, Walhook, WalhookBinary, connect, ids_by_row, source_lsn, wait_for_rows, wait_until,
};

const DEADLINE: Duration = Duration::from_secs(30);

fn rows(receiver: &Receiver) -> Subscription {
    subscription("rows", &receiver.url("/rows"))
        .tables(&["items"])
        .events(&["insert"])
}

async fn items_db() -> TestDb {
    TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY, payload text)").await
}

#[tokio::test]
async fn a_receiver_that_fails_for_a_while_gets_every_row_once_it_recovers() {
    let db = items_db().await;
    let receiver = Receiver::start().await;
    receiver.respond_with(500);
    let walhook = Walhook::start(
        db.configure()
            .delivery("breaker", r#"{ probe_interval = "200ms" }"#)
            .subscription(rows(&receiver))
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 300) g")
        .await
        .unwrap();
    let written = db.current_wal().await;
    // Failing requests open the circuit: the rows wait in the backlog, so
    // the slot moves past them though none was delivered.
    receiver.wait_for_requests(5, DEADLINE).await;
    wait_until("the slot to move past the rows", DEADLINE, || async {
        db.confirmed_flush().await.unwrap() >= written
    })
    .await;
    assert_eq!(receiver.delivered_count(), 0);
    receiver.respond_with(200);
    let events = receiver
        .wait_for_delivered(300, Duration::from_secs(60))
        .await;
    let by_row = ids_by_row(&events);
    assert_eq!(by_row.len(), 300, "every row delivered");
    assert!(by_row.values().all(|ids| ids.len() == 1));
    assert_eq!(db.dead_letter_count().await, 0, "an outage parks nothing");
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn a_permanent_refusal_is_parked_as_a_dead_letter_before_the_slot_moves() {
    let db = items_db().await;
    let receiver = Receiver::start().await;
    receiver.respond_with(422);
    let walhook = Walhook::start(db.config(rows(&receiver)));
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 'refused')")
        .await
        .unwrap();
    let written = db.current_wal().await;
    receiver.wait_for_requests(1, DEADLINE).await;
    wait_until("the slot to move past the parked row", DEADLINE, || async {
        db.confirmed_flush()
            .await
            .is_some_and(|confirmed| confirmed >= written)
    })
    .await;
    let row = db
        .client
        .query_one(
            "SELECT subscription, event_id, payload::text, last_status, attempts \
             FROM walhook.dead_letters",
            &[],
        )
        .await
        .unwrap();
    let request = &receiver.requests()[0];
    assert_eq!(row.get::<_, String>(0), "rows");
    assert_eq!(row.get::<_, String>(1), request.headers["webhook-id"]);
    assert_eq!(row.get::<_, String>(2).as_bytes(), &request.body[..]);
    assert_eq!(row.get::<_, Option<i32>>(3), Some(422));
    assert_eq!(row.get::<_, i32>(4), 1, "a 4xx is not retried");
    walhook.stop().await.unwrap();
}

/// The dead-letter table refuses every insert (as a full disk, a revoked
/// grant or a broken trigger would): the refused row is not confirmed while
/// walhook cannot store it, however long that lasts, and is confirmed once
/// it is stored.
#[tokio::test]
async fn a_dead_letter_that_cannot_be_stored_holds_the_slot_until_it_is() {
    let db = items_db().await;
    let receiver = Receiver::start().await;
    receiver.respond_with(422);
    let walhook = Walhook::start(db.config(rows(&receiver)));
    // Streaming means `run` has created the walhook schema.
    db.wait_slot_active().await;
    // A sequence counts the refused inserts: nextval is not rolled back
    // with them.
    db.client
        .batch_execute(
            "CREATE SEQUENCE refused_letters;
             CREATE FUNCTION refuse_letters() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM nextval('public.refused_letters');
                 RAISE EXCEPTION 'the test refuses dead letters';
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON walhook.dead_letters
                 FOR EACH ROW EXECUTE FUNCTION public.refuse_letters();",
        )
        .await
        .unwrap();
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 'refused twice')")
        .await
        .unwrap();
    receiver.wait_for_requests(1, DEADLINE).await;
    let commit = source_lsn(&receiver.requests()[0].json(), "commit_lsn");
    wait_until("walhook to try to store the letter", DEADLINE, || async {
        let row = db
            .client
            .query_one("SELECT is_called FROM refused_letters", &[])
            .await
            .unwrap();
        row.get::<_, bool>(0)
    })
    .await;
    // Whatever walhook had resolved when its store failed is in the next
    // position it reports: the row must not be in it.
    db.wait_for_status_report().await;
    let held = db.confirmed_flush().await.unwrap();
    assert!(
        held < commit,
        "the slot confirmed {held}, past the commit {commit} of a row whose dead letter was never stored"
    );
    assert_eq!(db.dead_letter_count().await, 0);

    db.client
        .batch_execute("DROP TRIGGER refuse ON walhook.dead_letters")
        .await
        .unwrap();
    wait_until("the letter to be stored", DEADLINE, || async {
        db.dead_letter_count().await == 1
    })
    .await;
    wait_until("the slot to move past the stored row", DEADLINE, || async {
        db.confirmed_flush().await.unwrap() > commit
    })
    .await;
    let payload: String = db
        .client
        .query_one("SELECT payload::text FROM walhook.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(payload.as_bytes(), &receiver.requests()[0].body[..]);
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_no_sooner_than_it_says() {
    let db = items_db().await;
    let receiver = Receiver::start().await;
    receiver.answer_next([Reply::status(429).header("retry-after", "2")]);
    // The backoff alone would retry within 20 ms; its maximum is far above
    // the 2 s asked for, so it does not cut the wait short.
    let walhook = Walhook::start(
        db.configure()
            .delivery("backoff", r#"{ initial = "20ms", max = "10s" }"#)
            .subscription(rows(&receiver))
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 'later, please')")
        .await
        .unwrap();
    receiver.wait_for_delivered(1, DEADLINE).await;
    let requests = receiver.requests();
    let statuses: Vec<u16> = requests.iter().map(|request| request.status).collect();
    assert_eq!(statuses, [429, 200]);
    assert_eq!(
        requests[0].headers["webhook-id"],
        requests[1].headers["webhook-id"]
    );
    let waited = requests[1].arrived_at - requests[0].arrived_at;
    assert!(
        waited >= Duration::from_secs(2),
        "retried {waited:?} after a 429 with Retry-After: 2"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn the_waits_between_retries_grow() {
    const ROWS: i64 = 8;
    const FAILURES: u32 = 5;
    const INITIAL: Duration = Duration::from_millis(50);
    let db = items_db().await;
    let receiver = Receiver::start().await;
    receiver.fail_first_attempts(FAILURES);
    // Unordered: each row in a lane of its own, retried on its own.
    // The circuit stays closed: this is about the retries of one request.
    let walhook = Walhook::start(
        db.configure()
            .delivery("backoff", r#"{ initial = "50ms", max = "10s" }"#)
            .delivery("breaker", r#"{ failures = 1000000, window = "1d" }"#)
            .subscription(rows(&receiver).ordering("none"))
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute(&format!(
            "INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
    receiver
        .wait_for_delivered(ROWS as usize, Duration::from_secs(60))
        .await;
    let mut attempts: BTreeMap<String, Vec<std::time::Instant>> = BTreeMap::new();
    for request in receiver.requests() {
        attempts
            .entry(request.headers["webhook-id"].clone())
            .or_default()
            .push(request.arrived_at);
    }
    assert_eq!(attempts.len() as i64, ROWS);
    let mut last_waits = Vec::new();
    for (id, arrivals) in &attempts {
        assert_eq!(arrivals.len(), FAILURES as usize + 1, "{id}");
        last_waits.push(arrivals[FAILURES as usize] - arrivals[FAILURES as usize - 1]);
    }
    // Full jitter under a cap that doubles: the wait after the fifth
    // failure is drawn from [0, 16 × 50 ms]. A backoff that never grew
    // would keep every wait within [0, 50 ms]; that none of eight exceeds
    // 4 × 50 ms has a chance of (1/4)^8, about 1 in 65,000.
    let longest = last_waits.iter().max().unwrap();
    assert!(
        *longest > INITIAL * 4,
        "the waits after {FAILURES} failures did not grow past {:?}: {last_waits:?}",
        INITIAL * 4
    );
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn sigkill_at_any_moment_loses_nothing_and_duplicates_keep_their_id() {
    const ROWS: i64 = 4000;
    const PER_TRANSACTION: i64 = 40;
    let db = items_db().await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(&db.config_text(rows(&receiver)));
    let mut walhook = binary.spawn_run();
    db.wait_slot_active().await;

    let writer = {
        let client = connect(&db.url).await;
        tokio::spawn(async move {
            for start in (1..=ROWS).step_by(PER_TRANSACTION as usize) {
                let end = start + PER_TRANSACTION - 1;
                client
                    .batch_execute(&format!(
                        "INSERT INTO items SELECT g, 'row ' || g FROM generate_series({start}, {end}) g"
                    ))
                    .await
                    .unwrap();
            }
        })
    };

    // Kill it at moments spread over the stream, restarting each time.
    for (kill, after) in [(1, 300), (2, 1200), (3, 2500)] {
        receiver
            .wait_for_delivered_count(after, Duration::from_secs(60))
            .await;
        walhook.kill().await.unwrap();
        let _ = walhook.wait().await;
        eprintln!(
            "killed walhook (kill {kill}) after {} deliveries",
            receiver.delivered_count()
        );
        walhook = binary.spawn_run();
    }
    writer.await.unwrap();
    wait_for_rows(&receiver, ROWS, Duration::from_secs(90), || binary.log()).await;
    walhook.kill().await.unwrap();
}
