//! The receivers of `examples/` as the tests run them: each example's
//! files, its binary started on a free port (built first when a run of the
//! integration tests alone finds it missing or older than its code), and
//! the walhook binary running the example's `walhook.toml` unchanged, with
//! the variables it reads. Not the assertions: those are `tests/examples.rs`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::{TestDb, WalhookBinary, run_binary, stderr, stdout};

/// How long an example receiver may take to listen.
const DEADLINE: Duration = Duration::from_secs(60);

/// `examples/<example>/<file>`'s text.
pub fn example_file(example: &str, file: &str) -> String {
    let path = examples_dir().join(example).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// walhook with an example's `walhook.toml` as it is: the test gives the
/// variables its `env:` values read, and overrides (`WALHOOK_…`) the slot
/// and publication — per test database, since the cluster's slots are
/// shared — and the admin address (off), as a user may.
pub struct ExampleWalhook {
    binary: WalhookBinary,
    overrides: Vec<(String, String)>,
}

impl ExampleWalhook {
    pub fn new(example: &str, db: &TestDb) -> ExampleWalhook {
        ExampleWalhook {
            binary: WalhookBinary::new(&example_file(example, "walhook.toml")),
            overrides: vec![
                ("DATABASE_URL".into(), db.url.clone()),
                ("WALHOOK_SOURCE__SLOT".into(), db.name.clone()),
                ("WALHOOK_SOURCE__PUBLICATION".into(), db.name.clone()),
                ("WALHOOK_SOURCE__STATUS_INTERVAL".into(), "1s".into()),
                ("WALHOOK_ADMIN__LISTEN".into(), String::new()),
                ("WALHOOK_DELIVERY__BACKOFF__INITIAL".into(), "50ms".into()),
            ],
        }
    }

    fn env<'a>(&'a self, env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        self.overrides
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .chain(env.iter().copied())
            .collect()
    }

    /// `walhook run`, killed when dropped.
    pub fn run(&self, env: &[(&str, &str)]) -> tokio::process::Child {
        self.binary.spawn_run_with_env(&self.env(env))
    }

    /// `walhook <args> --config <the example's file>`, to completion.
    pub async fn command(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        all.extend([OsStr::new("--config"), self.binary.config_path.as_os_str()]);
        let env: Vec<(&str, Option<&str>)> = self
            .env(env)
            .into_iter()
            .map(|(name, value)| (name, Some(value)))
            .collect();
        run_binary(&all, &env).await
    }

    /// `walhook check` passes on the example's file.
    pub async fn check(&self, env: &[(&str, &str)]) {
        let checked = self.command(&["check"], env).await;
        assert!(
            checked.status.success(),
            "walhook check:\n{}\n{}",
            stdout(&checked),
            stderr(&checked)
        );
    }

    pub fn log(&self) -> String {
        format!("walhook:\n{}\n", self.binary.log())
    }
}

/// An example's receiver binary, listening on a free port of 127.0.0.1;
/// killed when dropped.
pub struct ExampleReceiver {
    pub url: String,
    name: &'static str,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    log_path: PathBuf,
}

impl ExampleReceiver {
    pub async fn start(name: &'static str, env: &[(&str, &str)]) -> ExampleReceiver {
        let binary = example_binary(name).await;
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("receiver.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(["--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        // The chat service of the tests is local: no proxy.
        for (variable, _) in std::env::vars_os() {
            if variable
                .to_string_lossy()
                .to_ascii_lowercase()
                .ends_with("_proxy")
            {
                command.env_remove(variable);
            }
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", binary.display()));
        // It says where it listens once it does.
        let marker = format!("{name}: listening on ");
        let until = tokio::time::Instant::now() + DEADLINE;
        let url = loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(line) = log.lines().find_map(|line| line.strip_prefix(&marker)) {
                break format!("{line}/");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the {name} example exited ({status}) before listening:\n{log}");
            }
            assert!(
                tokio::time::Instant::now() < until,
                "the {name} example did not listen within {DEADLINE:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        ExampleReceiver {
            url,
            name,
            _child: child,
            _dir: dir,
            log_path,
        }
    }

    pub fn log(&self) -> String {
        format!(
            "{} example:\n{}\n",
            self.name,
            std::fs::read_to_string(&self.log_path).unwrap_or_default()
        )
    }
}

/// The example's binary beside this test binary's (`target/<profile>/
/// examples/<name>`), built first if it is missing or older than its
/// sources (a run of this test binary alone does not build examples).
async fn example_binary(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    // target/<profile>/deps/integration-… → target/<profile>
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned();
    let binary = profile_dir.join("examples").join(name);
    let built_at = std::fs::metadata(&binary)
        .and_then(|meta| meta.modified())
        .ok();
    let sources_changed_at = [examples_dir().join(name), examples_dir().join("common")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            // Only the code: cargo leaves the binary as it is when a
            // README or a walhook.toml changes.
            let code = path.extension().is_some_and(|extension| extension == "rs");
            code.then(|| path.metadata().ok()?.modified().ok())?
        })
        .max();
    if built_at.is_some_and(|built| sources_changed_at.is_none_or(|changed| built >= changed)) {
        return binary;
    }
    build_example(name, &profile_dir).await;
    assert!(
        binary.exists(),
        "no {} after building it; run `cargo build --examples`",
        binary.display()
    );
    binary
}

/// `cargo build --example <name>` into the target directory of this test
/// binary, one build at a time.
async fn build_example(name: &str, profile_dir: &Path) {
    static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = BUILDING.lock().await;
    let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = tokio::process::Command::new(cargo);
    command
        .args([
            "build",
            "--example",
            name,
            "--profile",
            profile,
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true);
    // What cargo sets for this test process, not for a build: some build
    // scripts (ring's) track CARGO_MANIFEST_DIR, so passing it on would
    // make this build and the next `cargo test` rebuild them.
    for (variable, _) in std::env::vars_os() {
        let variable_name = variable.to_string_lossy();
        let set_for_the_test = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "OUT_DIR",
        ]
        .iter()
        .any(|prefix| variable_name.starts_with(prefix));
        if set_for_the_test {
            command.env_remove(&variable);
        }
    }
    let built = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .unwrap_or_else(|_| panic!("building the {name} example took over 10 minutes"))
        .unwrap();
    assert!(
        built.status.success(),
        "cargo build --example {name}:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
}
