//! The environment as walhook reads it: a `WALHOOK_LOG` it cannot use and
//! `WALHOOK_…` variables it does not read are warned about on stderr (and
//! the daemon logs at info all the same); an override with a bad value is
//! an error that names its variable, not the file.

use std::ffi::OsStr;
use std::time::Duration;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, WalhookBinary, run_binary, sigterm, stderr};

#[tokio::test]
async fn a_run_warns_about_a_bad_walhook_log_and_unknown_variables_then_logs_at_info() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(
        &db.configure()
            .subscription(subscription("rows", &receiver.url("/rows")).tables(&["items"]))
            .text(),
    );
    let walhook =
        binary.spawn_run_with_env(&[("WALHOOK_LOG", "warning"), ("WALHOOK_SOURCE_SLOT", "typo")]);
    binary
        .wait_for_log("WALHOOK_LOG = \"warning\"", Duration::from_secs(30))
        .await;
    binary
        .wait_for_log(
            "WALHOOK_SOURCE_SLOT is not a variable walhook reads",
            Duration::from_secs(30),
        )
        .await;
    db.wait_slot_active().await;
    // Logging fell back to info: the start-up lines are there.
    binary.wait_for_log(" INFO ", Duration::from_secs(30)).await;
    assert!(
        binary.log().contains("logging at info instead"),
        "{}",
        binary.log()
    );
    sigterm(&walhook);
    let status = walhook.wait_with_output().await.unwrap().status;
    assert!(status.success(), "{status:?}\n{}", binary.log());
}

#[tokio::test]
async fn a_bad_override_is_an_error_that_names_its_variable() {
    let db = TestDb::new().await;
    let binary = WalhookBinary::new(
        &db.configure()
            .subscription(subscription("rows", "http://127.0.0.1:9/rows").tables(&["items"]))
            .text(),
    );
    let path = binary.config_path.as_os_str();
    let args = [OsStr::new("check"), OsStr::new("--config"), path];
    let output = run_binary(&args, &[("WALHOOK_SOURCE__SLOT", Some("Not-A-Slot"))]).await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        stderr(&output).contains("(from the environment variable WALHOOK_SOURCE__SLOT)"),
        "{}",
        stderr(&output)
    );
    let output = run_binary(
        &args,
        &[("WALHOOK_ADMIN__LISTEN", Some("metrics.example:9187"))],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = stderr(&output);
    assert!(
        text.contains("WALHOOK_ADMIN__LISTEN") && text.contains("localhost:9187"),
        "{text}"
    );
}
