//! `walhook listen` as a developer runs it: the binary on a free port prints
//! each webhook with its signature verdict and answers 204 or 401; walhook
//! itself delivers to it; Ctrl-C stops it cleanly.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use walhook::webhook::SigningKey;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, walhook_binary};

const SECRET: &str = "whsec_bGlzdGVuLXRlc3Qtc2VjcmV0LWZvci13YWxob29r";
const OTHER_SECRET: &str = "whsec_c29tZW9uZS1lbHNlcy1zZWNyZXQ=";
const DEADLINE: Duration = Duration::from_secs(30);

/// A running `walhook listen` and everything it printed so far.
struct Listening {
    child: tokio::process::Child,
    base_url: String,
    output: Arc<Mutex<String>>,
}

impl Listening {
    async fn start(secret: Option<&str>) -> Listening {
        let mut command = tokio::process::Command::new(walhook_binary());
        command
            .args(["listen", "--port", "0"])
            .env_remove("WALHOOK_LISTEN_SECRET");
        if let Some(secret) = secret {
            command.args(["--secret", secret]);
        }
        Listening::spawn(command).await
    }

    /// Starts `command` (a `walhook listen`) and reads its first line.
    async fn spawn(mut command: tokio::process::Command) -> Listening {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("listen prints its address")
            .unwrap()
            .expect("a first line");
        let base_url = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line {first:?}"))
            .to_owned();
        assert!(base_url.starts_with("http://127.0.0.1:"), "{first}");
        let output = Arc::new(Mutex::new(format!("{first}\n")));
        tokio::spawn({
            let output = Arc::clone(&output);
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut output = output.lock().unwrap();
                    output.push_str(&line);
                    output.push('\n');
                }
            }
        });
        Listening {
            child,
            base_url,
            output,
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    async fn wait_for_output(&self, text: &str) {
        let until = tokio::time::Instant::now() + DEADLINE;
        while !self.output().contains(text) {
            assert!(
                tokio::time::Instant::now() < until,
                "{text:?} not printed:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ctrl-C, then the exit status.
    async fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("listen stops on Ctrl-C")
            .unwrap()
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// POSTs `body` with Standard Webhooks headers; `signature` replaces the
/// correct one when given. Returns the status.
async fn post(
    listening: &Listening,
    id: &str,
    body: &str,
    secret: Option<&str>,
    signature: Option<String>,
) -> u16 {
    let timestamp = now();
    let mut request = client()
        .post(format!("{}/hooks/orders", listening.base_url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(secret) = secret {
        let key = SigningKey::from_secret(secret).unwrap();
        let signature = signature.unwrap_or_else(|| key.sign(id, timestamp, body.as_bytes()));
        request = request
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
    }
    request.send().await.unwrap().status().as_u16()
}

fn event(id: &str, kind: &str, amount: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"{kind}","schema":"public","table":"orders","record":{{"id":1,"amount":{amount}}},"old_record":null}}"#
    )
}

#[tokio::test]
async fn listen_verifies_signatures_prints_digits_and_stops_on_ctrl_c() {
    let listening = Listening::start(Some(SECRET)).await;

    let good = event("wh_good", "INSERT", "12.50");
    assert_eq!(
        post(&listening, "wh_good", &good, Some(SECRET), None).await,
        204
    );
    listening
        .wait_for_output(
            "← INSERT public.orders  wh_good /hooks/orders  signature verified ✓  → 204",
        )
        .await;
    listening.wait_for_output("\"amount\": 12.50").await;

    let forged = event("wh_forged", "UPDATE", "1");
    assert_eq!(
        post(&listening, "wh_forged", &forged, Some(OTHER_SECRET), None).await,
        401
    );
    listening
        .wait_for_output("← UPDATE public.orders  wh_forged /hooks/orders  signature INVALID ✗")
        .await;

    // Several signatures (a key rotation): one good one is enough.
    let rotated = event("wh_rotated", "DELETE", "2");
    let key = SigningKey::from_secret(SECRET).unwrap();
    let other = SigningKey::from_secret(OTHER_SECRET).unwrap();
    let timestamp = now();
    let both = format!(
        "{} {}",
        other.sign("wh_rotated", timestamp, rotated.as_bytes()),
        key.sign("wh_rotated", timestamp, rotated.as_bytes())
    );
    let status = client()
        .post(format!("{}/", listening.base_url))
        .header("webhook-id", "wh_rotated")
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", both)
        .body(rotated)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 204);

    // Unsigned while a secret is set: refused.
    let unsigned = event("wh_unsigned", "INSERT", "3");
    assert_eq!(
        post(&listening, "wh_unsigned", &unsigned, None, None).await,
        401
    );

    let batch = format!(
        r#"{{"events":[{},{}]}}"#,
        event("wh_b1", "INSERT", "4.10"),
        event("wh_b2", "UPDATE", "5")
    );
    assert_eq!(
        post(&listening, "whb_batch", &batch, Some(SECRET), None).await,
        204
    );
    listening
        .wait_for_output("← batch of 2 events  whb_batch /hooks/orders  signature verified ✓")
        .await;
    listening
        .wait_for_output("[2/2] UPDATE public.orders  wh_b2")
        .await;
    listening.wait_for_output("\"amount\": 4.10").await;

    let output = listening.output();
    assert!(!output.contains('\x1b'), "no colour when not a terminal");
    let status = listening.interrupt().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn without_a_secret_listen_accepts_and_says_it_did_not_check() {
    let listening = Listening::start(None).await;
    let body = event("wh_plain", "INSERT", "1.0");
    assert_eq!(post(&listening, "wh_plain", &body, None, None).await, 204);
    listening
        .wait_for_output("wh_plain /hooks/orders  unsigned  → 204")
        .await;
    assert_eq!(
        post(&listening, "wh_signed", &body, Some(SECRET), None).await,
        204
    );
    listening
        .wait_for_output("signature not checked (no --secret)  → 204")
        .await;
    // Not JSON is shown as it came and answered 400.
    let status = client()
        .post(format!("{}/x", listening.base_url))
        .body("not json")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 400);
    listening.wait_for_output("not json").await;
    assert!(listening.interrupt().await.success());
}

#[tokio::test]
async fn walhook_delivers_to_listen_and_the_signature_verifies() {
    let db = TestDb::with_schema(
        "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2));
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )
    .await;
    let listening = Listening::start(Some(SECRET)).await;
    // A recording receiver too, so the test waits on delivery, not on text.
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(
        db.configure()
            .subscription(
                subscription("to-listen", &format!("{}/hooks/orders", listening.base_url))
                    .tables(&["orders"])
                    .secret(SECRET),
            )
            .subscription(subscription("recorded", &receiver.url("/recorded")).tables(&["orders"]))
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute(
            "INSERT INTO orders VALUES (7, 12.50); UPDATE orders SET amount = 99.90 WHERE id = 7;",
        )
        .await
        .unwrap();
    receiver.wait_for_delivered(2, DEADLINE).await;
    listening
        .wait_for_output("← UPDATE public.orders  wh_")
        .await;
    let output = listening.output();
    assert_eq!(
        output.matches("signature verified ✓  → 204").count(),
        2,
        "{output}"
    );
    assert!(output.contains("\"amount\": 12.50"), "{output}");
    assert!(output.contains("\"amount\": 99.90"), "{output}");
    assert!(!output.contains("INVALID"), "{output}");
    walhook.stop().await.unwrap();
    assert!(listening.interrupt().await.success());
}

#[tokio::test]
async fn with_config_listen_takes_the_subscriptions_port_and_secret() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [source]
            url = "postgres://walhook@127.0.0.1:9/app"
            [[subscriptions]]
            name = "orders"
            tables = ["orders"]
            url = "http://127.0.0.1:{port}/hooks/orders"
            secret = "{SECRET}"
            [[subscriptions]]
            name = "elsewhere"
            tables = ["orders"]
            url = "https://hooks.example.com/orders"
            "#
        ),
    )
    .unwrap();
    let listen = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(walhook_binary());
        command
            .arg("listen")
            .arg("--config")
            .arg(&path)
            .args(extra)
            .env_remove("WALHOOK_LISTEN_SECRET");
        command
    };

    // Two subscriptions: it asks which; one it cannot stand in for: says why.
    for (extra, expected) in [
        (&[][..], "name one of \"orders\", \"elsewhere\""),
        (
            &["--subscription", "elsewhere"][..],
            "not plain HTTP on this machine",
        ),
        (&["--subscription", "nope"][..], "\"nope\" is not in"),
    ] {
        let output = listen(extra).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }

    // A secret left in the shell does not override the subscription's.
    let mut command = listen(&["--subscription", "orders"]);
    command.env("WALHOOK_LISTEN_SECRET", OTHER_SECRET);
    let listening = Listening::spawn(command).await;
    assert_eq!(listening.base_url, format!("http://127.0.0.1:{port}"));
    listening
        .wait_for_output("standing in for subscription \"orders\"")
        .await;
    // The subscription's secret is the one checked.
    let good = event("wh_good", "INSERT", "1.00");
    assert_eq!(
        post(&listening, "wh_good", &good, Some(SECRET), None).await,
        204
    );
    let forged = event("wh_forged", "INSERT", "2.00");
    assert_eq!(
        post(&listening, "wh_forged", &forged, Some(OTHER_SECRET), None).await,
        401
    );
    assert!(listening.interrupt().await.success());
}

#[tokio::test]
async fn what_a_request_carries_cannot_drive_the_terminal() {
    let listening = Listening::start(None).await;
    // Sequences that retitle the window, clear the screen (C1 CSI) and
    // ring the bell, in a field, in a value and in a body that is not JSON.
    let hostile = "owned\u{1b}]0;pwned\u{7}\u{9b}2J";
    let event = serde_json::json!({
        "id": "wh_1", "type": hostile, "schema": "public", "table": "t",
        "record": {"note": hostile},
    });
    let answered = client()
        .post(format!("{}/x", listening.base_url))
        .header("content-type", "application/json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert!(answered.status().is_success());
    let answered = client()
        .post(format!("{}/y", listening.base_url))
        .body(format!("not json {hostile}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status().as_u16(), 400);
    listening.wait_for_output("not json").await;
    let output = listening.output();
    assert!(
        !output.chars().any(|c| c.is_control() && c != '\n'),
        "a control character reached the terminal:\n{output:?}"
    );
    assert!(
        output.contains("\\u{1b}]0;pwned"),
        "shown escaped:\n{output}"
    );
    listening.interrupt().await;
}
