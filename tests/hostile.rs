//! Receivers and admin clients that try to hurt walhook: a receiver that
//! answers with an endless body, and a flood of `/status` requests. walhook
//! must stay within its means — memory, database connections — and go on
//! delivering (docs/security.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::config::subscription;
use crate::support::{TestDb, Walhook, free_port, get, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// An endpoint that answers every request with `500` and a body that never
/// ends, counting the bytes it managed to write before walhook hung up.
async fn endless_body_endpoint() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&written);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                // The request: headers and a small body; one read is enough
                // to know it came.
                let mut request = vec![0u8; 64 * 1024];
                if socket.read(&mut request).await.unwrap_or(0) == 0 {
                    return;
                }
                let head = "HTTP/1.1 500 Internal Server Error\r\n\
                            content-length: 3000000000\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                while socket.write_all(&chunk).await.is_ok() {
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (url, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_an_endless_body_is_hung_up_on_after_a_little() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let (url, written) = endless_body_endpoint().await;
    // One attempt, then a dead letter: the answer (500) is what counts,
    // not its body.
    let walhook = Walhook::start(
        db.configure()
            .delivery("max_attempts", "1")
            .subscription(subscription("rows", &url).tables(&["items"]))
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    wait_until("the event to be parked", DEADLINE, || async {
        db.dead_letter_count().await == 1
    })
    .await;
    let last_error: String = db
        .client
        .query_one("SELECT last_error FROM walhook.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    walhook.stop().await.unwrap();
    assert!(last_error.contains("500"), "{last_error}");
    // walhook read 64 KiB and closed the connection; the rest is what the
    // kernel's socket buffers took. Reading it all would have been
    // gigabytes within the 10 s request timeout.
    let sent = written.load(Ordering::Relaxed);
    assert!(
        sent < 32 << 20,
        "the endpoint wrote {} MiB of body before walhook hung up",
        sent >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_status_requests_shares_one_database_connection() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let port = free_port();
    let walhook = Walhook::start(
        db.configure()
            .admin(&format!("127.0.0.1:{port}"))
            .subscription(subscription("rows", "http://127.0.0.1:9/").tables(&["items"]))
            .build(),
    );
    db.wait_slot_active().await;
    let connections = || async {
        db.client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'walhook'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let url = format!("http://127.0.0.1:{port}/status");
    // walhook's own connections, the one /status uses included.
    assert_eq!(get(&url).await.0, 200);
    let before = connections().await;
    let flood: Vec<_> = (0..80)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    // Sampled while the requests are in flight and until they are answered.
    let mut most = before;
    let mut answers = Vec::new();
    for request in flood {
        most = most.max(connections().await);
        answers.push(request.await.unwrap());
    }
    walhook.stop().await.unwrap();
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "every request answered: {:?}",
        answers.iter().map(|(status, _)| status).collect::<Vec<_>>()
    );
    assert!(
        most <= before + 1,
        "80 concurrent /status requests opened {} more database connections than walhook's \
         own {before}",
        most - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_finish_their_headers_are_hung_up_on_and_deliveries_go_on() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let receiver = crate::support::receiver::Receiver::start().await;
    let port = free_port();
    let walhook = Walhook::start(
        db.configure()
            .admin(&format!("127.0.0.1:{port}"))
            .subscription(subscription("rows", &receiver.url("/rows")).tables(&["items"]))
            .build(),
    );
    db.wait_slot_active().await;
    // Far more half-sent requests than the admin server serves at once,
    // each held open by its client.
    const CLIENTS: usize = 300;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        // Refused writes mean walhook already closed it, which is fine.
        let _ = client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await;
        clients.push(client);
    }
    // Deliveries do not wait for the admin side.
    db.client
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    receiver.wait_for_delivered_count(1, DEADLINE).await;
    // Every one of them is closed by walhook: at once beyond the cap, the
    // others when their headers time out.
    for (index, client) in clients.iter_mut().enumerate() {
        let mut buffer = [0u8; 1024];
        let closed = tokio::time::timeout(DEADLINE, async {
            loop {
                match client.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    // An error response (408) before the close is fine.
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "client {index} still open after {DEADLINE:?}"
        );
    }
    // And the admin server answers again.
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/healthz")).await.0,
        200
    );
    walhook.stop().await.unwrap();
}
