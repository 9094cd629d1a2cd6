//! Receivers over HTTPS on a private CA and with mutual TLS: without the
//! CA (or the client certificate) walhook does not deliver and says why in
//! words, naming the host and the setting (the dead letter's `last_error`);
//! with `ca_file` (delivery-wide or per subscription) and `client_cert` /
//! `client_key` it delivers. Certificates come from rcgen; the receivers
//! are real rustls servers on 127.0.0.1.

use std::time::Duration;

use crate::support::config::{Subscription, subscription, toml_string};
use crate::support::receiver::Receiver;
use crate::support::tls::ReceiverCertificates;
use crate::support::{TestDb, Walhook, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// Inserts into `items`, posted to `receiver`'s `/<name>`.
fn items(name: &str, receiver: &Receiver) -> Subscription {
    subscription(name, &receiver.url(&format!("/{name}")))
        .tables(&["items"])
        .events(&["insert"])
}

/// Inserts one row, waits until `delivered` events reached `receiver` and
/// `parked` dead letters were written, and returns the dead letters'
/// (subscription, last_error).
async fn insert_and_settle(
    db: &TestDb,
    receiver: &Receiver,
    delivered: usize,
    parked: i64,
) -> Vec<(String, String)> {
    db.client
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    receiver.wait_for_delivered_count(delivered, DEADLINE).await;
    wait_until("the refused events to be parked", DEADLINE, || async {
        db.dead_letter_count().await == parked
    })
    .await;
    db.client
        .query(
            "SELECT subscription, last_error FROM walhook.dead_letters ORDER BY subscription",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_refused_in_words_and_trusted_with_a_subscriptions_ca_file() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let certificates = ReceiverCertificates::create();
    let receiver = Receiver::start_https(certificates.server(false)).await;
    let walhook = Walhook::start(
        db.configure()
            .delivery("max_attempts", "1")
            .subscription(items("public_roots", &receiver))
            .subscription(
                items("own_ca", &receiver).with("ca_file", &toml_string(&certificates.ca_file())),
            )
            .build(),
    );
    db.wait_slot_active().await;
    let letters = insert_and_settle(&db, &receiver, 1, 1).await;
    walhook.stop().await.unwrap();

    assert_eq!(receiver.delivered_to("/own_ca").len(), 1);
    assert!(receiver.delivered_to("/public_roots").is_empty());
    let [(subscription, last_error)] = &letters[..] else {
        panic!("one dead letter: {letters:?}");
    };
    assert_eq!(subscription, "public_roots");
    assert!(
        last_error.starts_with(
            "the certificate of localhost is not signed by a CA walhook trusts (unknown issuer); \
             set ca_file"
        ),
        "{last_error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_wide_ca_file_is_trusted_and_a_ca_posing_as_the_server_is_named() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let certificates = ReceiverCertificates::create();
    let receiver = Receiver::start_https(certificates.server(false)).await;
    let impostor = Receiver::start_https(certificates.server_presenting_the_ca()).await;
    let walhook = Walhook::start(
        db.configure()
            .delivery("max_attempts", "1")
            .delivery("ca_file", &toml_string(&certificates.ca_file()))
            .subscription(items("inherits", &receiver))
            .subscription(items("impostor", &impostor))
            .build(),
    );
    db.wait_slot_active().await;
    let letters = insert_and_settle(&db, &receiver, 1, 1).await;
    walhook.stop().await.unwrap();

    assert_eq!(receiver.delivered_to("/inherits").len(), 1);
    let [(subscription, last_error)] = &letters[..] else {
        panic!("one dead letter: {letters:?}");
    };
    assert_eq!(subscription, "impostor");
    assert!(
        last_error.contains("localhost presents a CA certificate as its own"),
        "{last_error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_requiring_a_client_certificate_refuses_walhook_without_one() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let certificates = ReceiverCertificates::create();
    let receiver = Receiver::start_https(certificates.server(true)).await;
    let walhook = Walhook::start(
        db.configure()
            .delivery("max_attempts", "1")
            .delivery("ca_file", &toml_string(&certificates.ca_file()))
            .subscription(items("anonymous", &receiver))
            .subscription(
                items("identified", &receiver)
                    .with("client_cert", &toml_string(&certificates.client_cert()))
                    .with("client_key", &toml_string(&certificates.client_key())),
            )
            .build(),
    );
    db.wait_slot_active().await;
    let letters = insert_and_settle(&db, &receiver, 1, 1).await;
    walhook.stop().await.unwrap();

    assert_eq!(receiver.delivered_to("/identified").len(), 1);
    assert!(receiver.delivered_to("/anonymous").is_empty());
    let [(subscription, last_error)] = &letters[..] else {
        panic!("one dead letter: {letters:?}");
    };
    assert_eq!(subscription, "anonymous");
    assert!(
        last_error
            .contains("localhost requires a client certificate; set client_cert and client_key"),
        "{last_error}"
    );
}
