//! The configuration's own tests: loading, defaults and each error.

use super::*;

const MINIMAL: &str = r#"
    [source]
    url = "postgres://walhook@localhost/app"

    [[subscriptions]]
    name = "orders"
    tables = ["orders"]
    url = "http://127.0.0.1:8080/hook"
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(Path::new("walhook.toml"), text)
}

#[test]
fn minimal_file_gets_the_documented_defaults() {
    let config = load(MINIMAL).unwrap();
    assert_eq!(config.source.slot, "walhook");
    assert_eq!(config.source.publication, "walhook");
    assert!(config.source.auto_setup);
    assert_eq!(config.delivery.concurrency, 64);
    assert_eq!(config.delivery.timeout, Duration::from_secs(10));
    assert_eq!(config.delivery.max_attempts, 12);
    assert_eq!(config.delivery.shutdown_grace, Duration::from_secs(10));
    assert_eq!(config.admin.listen, "127.0.0.1:9187");
    let subscription = &config.subscriptions[0];
    assert_eq!(
        subscription.events,
        vec![EventKind::Insert, EventKind::Update, EventKind::Delete]
    );
    assert_eq!(subscription.ordering, DeliveryOrder::Key);
    assert_eq!(subscription.batch.max_events, 1);
    assert_eq!(subscription.batch.max_wait, Duration::from_millis(50));
    assert_eq!(
        subscription.table_names(),
        vec![TableName {
            schema: "public".into(),
            name: "orders".into()
        }]
    );
}

#[test]
fn unknown_key_is_named() {
    let error = load(&format!("{MINIMAL}\n[delivery]\nconcurency = 3\n")).unwrap_err();
    assert!(error.message.contains("delivery.concurency"), "{error}");
    assert!(error.message.contains("concurrency"), "{error}");
    assert_eq!(error.file, "walhook.toml");
}

#[test]
fn syntax_error_is_reported_not_panicked() {
    let error = load("[source\nurl = 1").unwrap_err();
    assert!(!error.message.is_empty());
}

#[test]
fn missing_subscription_url_is_named() {
    let error = load(
        "[source]\nurl = \"postgres://x@y/z\"\n[[subscriptions]]\nname = \"a\"\ntables = [\"t\"]\n",
    )
    .unwrap_err();
    assert!(error.message.contains("url"), "{error}");
}

#[test]
fn bad_duration_and_bad_url_are_named() {
    let error =
        load(&MINIMAL.replace("[source]", "[delivery]\ntimeout = \"ten\"\n[source]")).unwrap_err();
    assert!(error.message.contains("delivery.timeout"), "{error}");
    let error = load(&MINIMAL.replace("http://127.0.0.1:8080/hook", "ftp://x")).unwrap_err();
    assert!(
        error.message.contains("subscriptions[0] (orders).url"),
        "{error}"
    );
}

#[test]
fn sizes_beyond_their_range_are_refused_with_the_range() {
    // The value of the issue: it passed `check`, then aborted `run` by
    // asking for 128 GB.
    let error = load(&format!("{MINIMAL}batch = {{ max_events = 1000000000 }}\n")).unwrap_err();
    assert!(
        error
            .message
            .contains("`subscriptions[0] (orders).batch.max_events`")
            && error.message.contains("1000000000")
            && error.message.contains("allowed: 1 to 10000"),
        "{error}"
    );
    let error = load(&format!("{MINIMAL}batch = {{ max_events = 0 }}\n")).unwrap_err();
    assert!(error.message.contains("allowed: 1 to 10000"), "{error}");
    let at_most = load(&format!("{MINIMAL}batch = {{ max_events = 10000 }}\n")).unwrap();
    assert_eq!(at_most.subscriptions[0].batch.max_events, 10_000);

    let concurrency = |value: &str| {
        load(&MINIMAL.replace(
            "[source]",
            &format!("[delivery]\nconcurrency = {value}\n[source]"),
        ))
    };
    for value in ["10001", "9223372036854775807", "0"] {
        let error = concurrency(value).unwrap_err();
        assert!(
            error.message.contains("`delivery.concurrency`")
                && error.message.contains("allowed: 1 to 10000"),
            "{value}: {error}"
        );
    }
    assert_eq!(concurrency("10000").unwrap().delivery.concurrency, 10_000);
}

#[test]
fn env_reference_to_unset_variable_is_named() {
    let error = load(&MINIMAL.replace(
        "postgres://walhook@localhost/app",
        "env:WALHOOK_TEST_SURELY_UNSET_VARIABLE",
    ))
    .unwrap_err();
    assert!(
        error.message.contains("WALHOOK_TEST_SURELY_UNSET_VARIABLE")
            && error.message.contains("source.url"),
        "{error}"
    );
}

#[test]
fn a_filter_that_does_not_parse_names_subscription_key_and_place() {
    let text = MINIMAL.replace(
        "url = \"http://127.0.0.1:8080/hook\"",
        "url = \"http://127.0.0.1:8080/hook\"\nfilter = \"new.status = 'paid' and (old.status is null or\"",
    );
    let error = load(&text).unwrap_err();
    assert!(
        error.message.starts_with(
            "subscription \"orders\": key `subscriptions[0].filter` does not parse: \
             at column 47 expected a condition"
        ),
        "{error}"
    );
    assert!(
        error
            .message
            .ends_with(&format!("\n    {}^", " ".repeat(46))),
        "{error}"
    );
    // Parsed once, here: what the rules and the catalog check take.
    let config = load(&MINIMAL.replace(
        "url = \"http://127.0.0.1:8080/hook\"",
        "url = \"http://127.0.0.1:8080/hook\"\nfilter = \"status = 'paid'\"",
    ))
    .unwrap();
    let filter = config.subscriptions[0].filter.as_ref().unwrap();
    assert_eq!(filter.source(), "status = 'paid'");
}

#[test]
fn secrets_do_not_print() {
    let secret = Secret::new("hunter2");
    assert!(!format!("{secret:?}").contains("hunter2"));
}

#[test]
fn duplicate_subscription_names_are_rejected() {
    let twice = format!(
        "{MINIMAL}\n[[subscriptions]]\nname = \"orders\"\ntables = [\"t\"]\nurl = \"http://x/\"\n"
    );
    let error = load(&twice).unwrap_err();
    assert!(error.message.contains("used twice"), "{error}");
}

#[test]
fn the_example_config_loads_with_the_documented_delivery_settings() {
    // It reads its database URL from DATABASE_URL; every other value is
    // literal, so it must load as written.
    let text = include_str!("../../config/walhook.example.toml").replace(
        "\"env:DATABASE_URL\"",
        "\"postgres://walhook@localhost/app\"",
    );
    let config = load(&text).unwrap();
    assert_eq!(config.delivery.breaker.failures, 5);
    assert_eq!(
        config.delivery.breaker.probe_interval,
        Duration::from_secs(10)
    );
    assert_eq!(config.delivery.backlog.warn_megabytes, 1024);
}

#[test]
fn a_breaker_that_never_probes_is_refused() {
    let text = MINIMAL.replace(
        "[source]",
        "[delivery]\nbreaker = { probe_interval = \"0s\" }\n[source]",
    );
    let error = load(&text).unwrap_err();
    assert!(error.message.contains("probe_interval"), "{error}");
}

#[test]
fn a_syntax_error_says_where_without_quoting_the_line() {
    let text = "[source]\nurl = \"postgres://walhook:hunter2SECRET@localhost/db\n";
    let error = load(text).unwrap_err();
    assert!(!error.message.contains("hunter2"), "{error}");
    assert!(error.message.contains("line 2"), "{error}");
}
