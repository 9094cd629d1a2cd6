//! The configuration's own tests: loading, defaults and each error.

use super::env::unknown_variables;
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

/// A self-signed certificate and its key, and another key, as PEM files in
/// a temporary directory.
struct TlsFixture {
    dir: tempfile::TempDir,
}

impl TlsFixture {
    fn new() -> TlsFixture {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["walhook-client".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("client.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("other.key"), other_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("not.pem"), "just some text\n").unwrap();
        TlsFixture { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// MINIMAL with `lines` added under `[delivery]`.
    fn load(&self, lines: &str) -> Result<Config, ConfigError> {
        load(&MINIMAL.replace("[source]", &format!("[delivery]\n{lines}\n[source]")))
    }
}

#[test]
fn tls_files_load_and_subscriptions_inherit_or_override_them() {
    let files = TlsFixture::new();
    let config = files
        .load(&format!(
            "ca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}",
            files.path("client.crt"),
            files.path("client.crt"),
            files.path("client.key"),
        ))
        .unwrap();
    let delivery = &config.delivery.tls;
    assert_eq!(delivery.ca.as_ref().unwrap().certificates.len(), 1);
    assert!(delivery.identity.is_some());
    assert_eq!(&config.subscriptions[0].tls, delivery, "inherited");
    // The key never prints.
    let printed = format!("{config:?}");
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");

    let own_ca = MINIMAL.replace(
        "url = \"http://127.0.0.1:8080/hook\"",
        &format!(
            "url = \"http://127.0.0.1:8080/hook\"\nca_file = {:?}",
            files.path("client.crt")
        ),
    );
    let config = load(&own_ca).unwrap();
    assert!(config.delivery.tls.ca.is_none());
    assert!(config.subscriptions[0].tls.ca.is_some());
    assert_ne!(config.subscriptions[0].tls, config.delivery.tls);
}

#[test]
fn a_missing_ca_file_names_the_key_the_path_and_the_fix() {
    let files = TlsFixture::new();
    let missing = files.path("missing.pem");
    let error = files
        .load(&format!("ca_file = {missing:?}"))
        .unwrap_err()
        .message;
    assert!(error.contains("delivery.ca_file"), "{error}");
    assert!(error.contains(&missing), "{error}");
    assert!(error.contains("cannot read"), "{error}");
    assert!(error.contains("PEM file of CA certificates"), "{error}");
}

#[test]
fn a_ca_file_without_a_certificate_is_refused() {
    let files = TlsFixture::new();
    let error = files
        .load(&format!("ca_file = {:?}", files.path("not.pem")))
        .unwrap_err()
        .message;
    assert!(error.contains("delivery.ca_file"), "{error}");
    assert!(error.contains(&files.path("not.pem")), "{error}");
    assert!(error.contains("holds no PEM certificate"), "{error}");
    // A key is not a certificate either.
    let error = files
        .load(&format!("ca_file = {:?}", files.path("client.key")))
        .unwrap_err()
        .message;
    assert!(error.contains("holds no PEM certificate"), "{error}");
}

#[test]
fn a_client_cert_without_its_key_is_refused() {
    let files = TlsFixture::new();
    let error = files
        .load(&format!("client_cert = {:?}", files.path("client.crt")))
        .unwrap_err()
        .message;
    assert!(
        error.contains("`delivery.client_cert` is set without `delivery.client_key`"),
        "{error}"
    );
    let error = files
        .load(&format!("client_key = {:?}", files.path("client.key")))
        .unwrap_err()
        .message;
    assert!(error.contains("give both"), "{error}");
    // Per subscription too, named by its key.
    let error = load(&MINIMAL.replace(
        "url = \"http://127.0.0.1:8080/hook\"",
        &format!(
            "url = \"http://127.0.0.1:8080/hook\"\nclient_cert = {:?}",
            files.path("client.crt")
        ),
    ))
    .unwrap_err()
    .message;
    assert!(
        error.contains("`subscriptions[0] (orders).client_cert`"),
        "{error}"
    );
}

#[test]
fn a_client_key_that_is_not_the_certificates_is_refused() {
    let files = TlsFixture::new();
    let error = files
        .load(&format!(
            "client_cert = {:?}\nclient_key = {:?}",
            files.path("client.crt"),
            files.path("other.key")
        ))
        .unwrap_err()
        .message;
    assert!(error.contains("delivery.client_key"), "{error}");
    assert!(error.contains(&files.path("other.key")), "{error}");
    assert!(error.contains("is not the private key"), "{error}");
    // A file without a key at all.
    let error = files
        .load(&format!(
            "client_cert = {:?}\nclient_key = {:?}",
            files.path("client.crt"),
            files.path("client.crt")
        ))
        .unwrap_err()
        .message;
    assert!(error.contains("holds no PEM private key"), "{error}");
}

#[test]
fn the_destination_policy_is_off_by_default_and_parses_its_allow_list() {
    let config = load(MINIMAL).unwrap();
    assert!(!config.delivery.deny_private);
    assert!(config.delivery.allow.is_empty());

    let config = load(&MINIMAL.replace(
        "[source]",
        "[delivery]\ndeny_private = true\nallow = [\"10.1.0.0/16\", \"::1\"]\n[source]",
    ))
    .unwrap();
    let policy = config.delivery.destination_policy();
    assert!(policy.deny_private);
    assert_eq!(policy.refuses("10.1.2.3".parse().unwrap()), None);
    assert_eq!(policy.refuses("::1".parse().unwrap()), None);
    assert!(policy.refuses("10.2.0.1".parse().unwrap()).is_some());

    let error = load(&MINIMAL.replace(
        "[source]",
        "[delivery]\nallow = [\"10.1.0.0/16\", \"hooks.internal\"]\n[source]",
    ))
    .unwrap_err()
    .message;
    assert!(error.contains("delivery.allow"), "{error}");
    assert!(error.contains("host names are not accepted"), "{error}");
}

#[test]
fn secrets_roll_newest_first_and_not_beside_secret() {
    const NEW: &str = "whsec_bmV3LWtleS1mb3ItdGhlLXJvbGwtdGVzdA==";
    const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let rolling = format!("{MINIMAL}    secrets = [\"{NEW}\", \"{OLD}\"]\n");
    let config = load(&rolling).unwrap();
    let subscription = &config.subscriptions[0];
    let sign = |key: &SigningKey| key.sign("wh_1", 1, b"{}");
    assert_eq!(
        subscription.signing_key.as_ref().map(sign),
        Some(SigningKey::from_secret(NEW).unwrap())
            .as_ref()
            .map(sign),
        "the newest signs first"
    );
    assert_eq!(subscription.previous_keys.len(), 1);

    let both = format!("{MINIMAL}    secret = \"{OLD}\"\n    secrets = [\"{NEW}\"]\n");
    let error = load(&both).unwrap_err().to_string();
    assert!(error.contains("both `secret` and `secrets`"), "{error}");
    let empty = format!("{MINIMAL}    secrets = []\n");
    assert!(load(&empty).unwrap_err().to_string().contains("empty"));
    let short = format!("{MINIMAL}    secrets = [\"{NEW}\", \"whsec_AAAA\"]\n");
    let error = load(&short).unwrap_err().to_string();
    assert!(error.contains("secrets[1]"), "{error}");
}

#[test]
fn type_errors_speak_the_configs_language_not_serdes() {
    let said = |extra: &str| load(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
    let negative = load(&MINIMAL.replace("[source]", "[delivery]\nmax_attempts = -1\n[source]"))
        .unwrap_err()
        .to_string();
    assert!(negative.contains("non-negative whole number"), "{negative}");
    assert!(!negative.contains("untagged"), "{negative}");
    let duration = load(&MINIMAL.replace("[source]", "[delivery]\ntimeout = \"ten\"\n[source]"))
        .unwrap_err()
        .to_string();
    assert!(duration.contains("\"10s\""), "{duration}");
    let variant = said("    events = [\"upsert\"]\n");
    assert!(variant.contains("subscriptions[0].events[0]"), "{variant}");
    assert!(
        variant.contains("`upsert` is not one of `insert`"),
        "{variant}"
    );
    assert!(!variant.contains("``"), "{variant}");
    let array = said("    columns = \"id\"\n");
    assert!(array.contains("an array"), "{array}");
    assert!(!array.contains("sequence"), "{array}");
}

#[test]
fn admin_listen_takes_localhost_and_says_what_else_it_needs() {
    let with_listen = |listen: &str| load(&format!("{MINIMAL}\n[admin]\nlisten = {listen:?}\n"));
    assert_eq!(
        with_listen("localhost:9999").unwrap().admin.listen,
        "127.0.0.1:9999"
    );
    assert_eq!(
        with_listen("[::1]:9187").unwrap().admin.listen,
        "[::1]:9187"
    );
    assert_eq!(with_listen("").unwrap().admin.listen, "");
    let host = with_listen("metrics.internal:9187").unwrap_err().message;
    assert!(host.contains("names a host other than localhost"), "{host}");
    assert!(
        host.contains("127.0.0.1:9187") && host.contains("0.0.0.0:9187"),
        "{host}"
    );
    let no_port = with_listen("localhost").unwrap_err().message;
    assert!(no_port.contains("has no port"), "{no_port}");
    let bare_v6 = with_listen("::1:9187").unwrap_err().message;
    assert!(bare_v6.contains("without brackets"), "{bare_v6}");
}

#[test]
fn unknown_walhook_variables_are_named_with_what_to_write() {
    let names = [
        "WALHOOK_SOURCE__URL",
        "WALHOOK_LOG",
        "WALHOOK_CONFIG",
        "WALHOOK_TEST_SLOT",
        "WALHOOK_ORDERS_SECRET",
        "WALHOOK_SOURCE_URL",
        "WALHOOK_SUBSCRIPTIONS__0__URL",
        "PATH",
    ]
    .map(str::to_owned);
    let text = r#"secret = "env:WALHOOK_ORDERS_SECRET""#;
    let problems = unknown_variables(names, text);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("WALHOOK_SOURCE_URL is not a variable walhook reads"));
    assert!(problems[0].contains("WALHOOK_SOURCE__URL"), "{problems:?}");
    assert!(problems[1].starts_with("WALHOOK_SUBSCRIPTIONS__0__URL is ignored"));
    // A reference is a whole name, not a prefix of a longer one.
    let prefix = unknown_variables(["WALHOOK_ORDERS".to_owned()], text);
    assert_eq!(prefix.len(), 1, "{prefix:?}");
}

/// Values as the environment provider gives them (the tests may not set
/// variables: edition 2024 makes that unsafe).
struct FakeEnvironment(&'static str, &'static str, &'static str);

impl figment::Provider for FakeEnvironment {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("`WALHOOK_` environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut section = figment::value::Dict::new();
        section.insert(self.1.into(), self.2.into());
        let mut dict = figment::value::Dict::new();
        dict.insert(self.0.into(), section.into());
        Ok(figment::Profile::Default.collect(dict))
    }
}

#[test]
fn a_bad_override_names_its_variable_and_a_bad_file_value_does_not() {
    let with = |environment: FakeEnvironment| {
        let figment = Figment::from(EnvReferences(
            Figment::new()
                .merge(Toml::string(MINIMAL))
                .merge(environment),
        ));
        Config::from_figment(Path::new("walhook.toml"), figment)
            .unwrap_err()
            .message
    };
    let slot = with(FakeEnvironment("source", "slot", "Bad-Slot"));
    assert!(slot.starts_with("key `source.slot`"), "{slot}");
    assert!(
        slot.ends_with("(from the environment variable WALHOOK_SOURCE__SLOT)"),
        "{slot}"
    );
    let listen = with(FakeEnvironment("admin", "listen", "somewhere:1"));
    assert!(listen.contains("WALHOOK_ADMIN__LISTEN"), "{listen}");
    let typed = with(FakeEnvironment("delivery", "timeout", "soon"));
    assert!(typed.contains("WALHOOK_DELIVERY__TIMEOUT"), "{typed}");
    let in_file = load(&MINIMAL.replace("[source]", "[source]\nslot = \"Bad-Slot\"")).unwrap_err();
    assert!(
        !in_file.message.contains("environment"),
        "{}",
        in_file.message
    );
}
