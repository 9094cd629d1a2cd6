//! The connections to a plain-HTTP receiver: kept open between requests
//! and shared by the lanes, so light traffic uses one; a new one when the
//! receiver answered `Connection: close`; and when the receiver closed an
//! idle one meanwhile the request goes on a new connection without counting
//! as a failed attempt. A
//! configured `Host` is sent as configured, and a 2xx whose body never ends
//! is delivered. The receiver here is mostly a bare HTTP/1.1 server, so the
//! test sees connections, not just requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::config::subscription;
use crate::support::{TestDb, Walhook, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// How the bare server treats a connection after answering.
#[derive(Clone, Copy)]
enum AfterAnswer {
    /// Waits for the next request.
    KeepAlive,
    /// Answers `connection: close` and closes.
    Close,
    /// Keeps it open until it has been idle this long, then closes it.
    CloseWhenIdleFor(Duration),
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
    closed_idle: AtomicUsize,
}

/// A bare HTTP/1.1 server answering 200 to every request; its URL and
/// what it counted.
async fn bare_server(after: AfterAnswer) -> (String, Arc<Counts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook?token=t", listener.local_addr().unwrap());
    let counts = Arc::new(Counts::default());
    let shared = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(socket, after, Arc::clone(&shared)));
        }
    });
    (url, counts)
}

async fn serve(mut socket: TcpStream, after: AfterAnswer, counts: Arc<Counts>) {
    let mut buffer = Vec::new();
    loop {
        let request_len = loop {
            if let Some(len) = complete_request(&buffer) {
                break len;
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = match after {
                AfterAnswer::CloseWhenIdleFor(idle) if buffer.is_empty() => {
                    match tokio::time::timeout(idle, socket.read(&mut chunk)).await {
                        Ok(read) => read,
                        Err(_) => {
                            counts.closed_idle.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                _ => socket.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        buffer.drain(..request_len);
        counts.requests.fetch_add(1, Ordering::SeqCst);
        let close = matches!(after, AfterAnswer::Close);
        let answer = if close {
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        };
        if socket.write_all(answer.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// The length of the first whole request in `buffer` (head and
/// content-length body), if it has one.
fn complete_request(buffer: &[u8]) -> Option<usize> {
    let head_end = buffer.windows(4).position(|window| window == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let body_len: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    (buffer.len() >= head_end + body_len).then_some(head_end + body_len)
}

/// A walhook whose one `strict` subscription (one lane) sends each row of
/// `items` to `url` with a single attempt: any failed request parks its
/// event as a dead letter.
fn one_lane_one_attempt(db: &TestDb, url: &str) -> Walhook {
    Walhook::start(
        db.configure()
            .delivery("max_attempts", "1")
            .subscription(
                subscription("rows", url)
                    .tables(&["items"])
                    .ordering("strict"),
            )
            .build(),
    )
}

async fn insert(db: &TestDb, id: i64) {
    db.client
        .execute("INSERT INTO items VALUES ($1)", &[&id])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lane_sends_its_requests_on_one_kept_alive_connection() {
    let db = TestDb::with_schema("CREATE TABLE items (id bigint PRIMARY KEY)").await;
    let (url, counts) = bare_server(AfterAnswer::KeepAlive).await;
    let walhook = one_lane_one_attempt(&db, &url);
    db.wait_slot_active().await;
    for id in 1..=30 {
        insert(&db, id).await;
    }
    wait_until("30 requests", DEADLINE, || async {
        counts.requests.load(Ordering::SeqCst) == 30
    })
    .await;
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
    assert_eq!(db.dead_letter_count().await, 0);
    walhook.stop().await.unwrap();
}

/// 64 lanes, one row at a time: each request finds the connection the last
/// one left, whichever lane sends it.
#[tokio::test]
async fn light_traffic_of_many_keys_shares_one_connection() {
    let db = TestDb::with_schema("CREATE TABLE items (id bigint PRIMARY KEY)").await;
    let (url, counts) = bare_server(AfterAnswer::KeepAlive).await;
    let walhook = Walhook::start(
        db.configure()
            .delivery("concurrency", "64")
            .subscription(
                subscription("rows", &url)
                    .tables(&["items"])
                    .ordering("key"),
            )
            .build(),
    );
    db.wait_slot_active().await;
    for id in 1..=20 {
        insert(&db, id).await;
        let sent = id as usize;
        wait_until("the row's request", DEADLINE, || async {
            counts.requests.load(Ordering::SeqCst) == sent
        })
        .await;
    }
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn a_receiver_that_closes_after_each_answer_gets_every_request_on_a_new_connection() {
    let db = TestDb::with_schema("CREATE TABLE items (id bigint PRIMARY KEY)").await;
    let (url, counts) = bare_server(AfterAnswer::Close).await;
    let walhook = one_lane_one_attempt(&db, &url);
    db.wait_slot_active().await;
    for id in 1..=20 {
        insert(&db, id).await;
    }
    wait_until("20 requests", DEADLINE, || async {
        counts.requests.load(Ordering::SeqCst) == 20
    })
    .await;
    assert_eq!(counts.connections.load(Ordering::SeqCst), 20);
    assert_eq!(db.dead_letter_count().await, 0, "no request failed");
    walhook.stop().await.unwrap();
}

/// Each row goes only once the server has closed the previous
/// connection for being idle: walhook's kept connection is always stale
/// when it sends, and with one attempt allowed, a request lost on it would
/// be a dead letter.
#[tokio::test]
async fn a_connection_the_receiver_closed_while_idle_costs_no_attempt() {
    let db = TestDb::with_schema("CREATE TABLE items (id bigint PRIMARY KEY)").await;
    let (url, counts) = bare_server(AfterAnswer::CloseWhenIdleFor(Duration::from_millis(30))).await;
    let walhook = one_lane_one_attempt(&db, &url);
    db.wait_slot_active().await;
    for id in 1..=8 {
        insert(&db, id).await;
        let sent = id as usize;
        wait_until("the row's request and the idle close", DEADLINE, || async {
            counts.requests.load(Ordering::SeqCst) == sent
                && counts.closed_idle.load(Ordering::SeqCst) == sent
        })
        .await;
    }
    assert_eq!(db.dead_letter_count().await, 0, "no request failed");
    assert_eq!(counts.connections.load(Ordering::SeqCst), 8);
    walhook.stop().await.unwrap();
}

/// A `Host` the subscription sets (a virtual host behind an address) is
/// the one the receiver sees.
#[tokio::test]
async fn a_configured_host_header_is_sent_as_configured() {
    let db = TestDb::with_schema("CREATE TABLE items (id bigint PRIMARY KEY)").await;
    let receiver = crate::support::receiver::Receiver::start().await;
    let walhook = Walhook::start(
        db.configure()
            .subscription(
                subscription("rows", &receiver.url("/hook"))
                    .tables(&["items"])
                    .with("headers", r#"{ Host = "api.internal" }"#),
            )
            .build(),
    );
    db.wait_slot_active().await;
    insert(&db, 1).await;
    receiver.wait_for_requests(1, DEADLINE).await;
    assert_eq!(receiver.requests()[0].headers["host"], "api.internal");
    walhook.stop().await.unwrap();
}

/// The receiver answers 200 and then never finishes the body: the answer
/// was 2xx, so the event is delivered, not retried or parked when the
/// request times out.
#[tokio::test]
async fn a_2xx_whose_body_never_ends_counts_as_delivered() {
    let db = TestDb::with_schema("CREATE TABLE items (id bigint PRIMARY KEY)").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                while complete_request(&buffer).is_none() {
                    let mut chunk = [0u8; 16 * 1024];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial";
                let _ = socket.write_all(head.as_bytes()).await;
                // Holds the connection open without finishing the body.
                let _ = socket.read(&mut [0u8; 1]).await;
            });
        }
    });
    let walhook = Walhook::start(
        db.configure()
            .delivery("max_attempts", "1")
            .delivery("timeout", "\"500ms\"")
            .subscription(subscription("rows", &url).tables(&["items"]))
            .build(),
    );
    db.wait_slot_active().await;
    insert(&db, 1).await;
    let written = db.current_wal().await;
    wait_until("the slot to move past the row", DEADLINE, || async {
        db.confirmed_flush()
            .await
            .is_some_and(|confirmed| confirmed >= written)
    })
    .await;
    assert_eq!(db.dead_letter_count().await, 0, "delivered, not parked");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "sent once");
    walhook.stop().await.unwrap();
}
