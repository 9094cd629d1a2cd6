//! `delivery.deny_private`: with it on, a receiver on 127.0.0.1 — by
//! address or by the name `localhost` — is not delivered to, and the dead
//! letter says why and what to do; listed in `delivery.allow` it is
//! delivered to. `walhook check` reports such URLs as problems.

use std::time::Duration;

use crate::support::config::{Subscription, subscription};
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, WalhookBinary, stdout, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// Inserts into `items`, posted to `/<name>` at `url` (the receiver's URL
/// with its host as given).
fn items(name: &str, url: &str) -> Subscription {
    subscription(name, &format!("{url}/{name}"))
        .tables(&["items"])
        .events(&["insert"])
}

/// The receiver's base URL by address and by the name `localhost`.
fn urls(receiver: &Receiver) -> (String, String) {
    let by_ip = receiver.base_url.clone();
    let by_name = by_ip.replace("127.0.0.1", "localhost");
    (by_ip, by_name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_private_refuses_a_loopback_receiver_by_address_and_by_name() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let (by_ip, by_name) = urls(&receiver);
    let walhook = Walhook::start(
        db.configure()
            .delivery("max_attempts", "1")
            .delivery("deny_private", "true")
            .subscription(items("by_ip", &by_ip))
            .subscription(items("by_name", &by_name))
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    wait_until("both events to be parked", DEADLINE, || async {
        db.dead_letter_count().await == 2
    })
    .await;
    walhook.stop().await.unwrap();
    assert_eq!(receiver.arrivals(), 0, "nothing reached the receiver");

    let letters: Vec<(String, String)> = db
        .client
        .query(
            "SELECT subscription, last_error FROM walhook.dead_letters ORDER BY subscription",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let fix = "delivery.deny_private is on — add the address to delivery.allow or turn \
               deny_private off";
    let (subscription, by_ip_error) = &letters[0];
    assert_eq!(subscription, "by_ip");
    assert!(
        by_ip_error.contains("127.0.0.1 is a private address (loopback)"),
        "{by_ip_error}"
    );
    assert!(by_ip_error.contains(fix), "{by_ip_error}");
    let (subscription, by_name_error) = &letters[1];
    assert_eq!(subscription, "by_name");
    assert!(
        by_name_error.contains("localhost resolves only to private addresses (")
            && by_name_error.contains("127.0.0.1"),
        "{by_name_error}"
    );
    assert!(by_name_error.contains(fix), "{by_name_error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_loopback_receiver_is_delivered_to_with_deny_private_on() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let (by_ip, by_name) = urls(&receiver);
    let walhook = Walhook::start(
        db.configure()
            .delivery("max_attempts", "1")
            .delivery("deny_private", "true")
            .delivery("allow", "[\"127.0.0.1/32\", \"::1\"]")
            .subscription(items("by_ip", &by_ip))
            .subscription(items("by_name", &by_name))
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    receiver.wait_for_delivered_count(2, DEADLINE).await;
    walhook.stop().await.unwrap();
    assert_eq!(receiver.delivered_to("/by_ip").len(), 1);
    assert_eq!(receiver.delivered_to("/by_name").len(), 1);
    assert_eq!(db.dead_letter_count().await, 0);
}

#[tokio::test]
async fn check_reports_urls_the_policy_refuses() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let (by_ip, by_name) = urls(&receiver);
    let config = |deny: bool| {
        db.configure()
            .delivery("deny_private", if deny { "true" } else { "false" })
            .subscription(items("by_ip", &by_ip))
            .subscription(items("by_name", &by_name))
            .text()
    };
    let output = WalhookBinary::new(&config(true)).command(&["check"]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    for expected in [
        "problem: subscription \"by_ip\": url host 127.0.0.1 is a private address (loopback); \
         delivery.deny_private is on",
        "problem: subscription \"by_name\": url host localhost resolves only to private addresses",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    // Off (the default), the same URLs are fine.
    let output = WalhookBinary::new(&config(false)).command(&["check"]).await;
    let text = stdout(&output);
    assert!(!text.contains("deny_private"), "{text}");
}
