//! A throw-away PostgreSQL cluster for `walhook demo` and the tests.
//!
//! [`TempPostgres::start`] finds the installed server binaries, runs `initdb`
//! into a fresh temporary directory, and starts a server with
//! `wal_level = logical` on a free port of 127.0.0.1. Dropping the value stops
//! the server and removes the directory, so nothing is left behind. `initdb`
//! and `postgres` refuse to run as root; when walhook runs as root the cluster
//! is created and run as the `postgres` system user.
//!
//! [`TempPostgres::start_standby`] adds a physical standby of a cluster, for
//! tests of what happens when a standby is promoted. Its base backup is a
//! copy of the stopped primary's files, because the server packages walhook
//! is tested with do not all ship `pg_basebackup`.
//!
//! It is not a way to run a production database: durability is switched off
//! (`fsync = off`) for speed. It is not open to other users of the machine
//! either: the superuser has a random password (scram-sha-256, on the TCP
//! port and the socket alike), which [`TempPostgres::url`] carries — an
//! open `trust` port once let any local user become superuser and run
//! programs as the server (docs/security.md).

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What can go wrong while creating or running the throw-away cluster.
#[derive(Debug, thiserror::Error)]
pub enum PgTempError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and pg_ctl in {searched}); \
         install them, e.g. `apt-get install -y postgresql`, or set WALHOOK_PG_BINDIR"
    )]
    NoBinaries { searched: String },
    #[error(
        "running as root, but there is no `postgres` system user to run the server as; create one or run walhook as an ordinary user"
    )]
    NoPostgresUser,
    #[error("cannot draw a random password for the throw-away cluster")]
    Random,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgTempError {
    let what = what.into();
    move |source| PgTempError::Io { what, source }
}

/// Settings for a throw-away cluster beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct TempPostgresOptions {
    /// Extra `postgresql.conf` lines, e.g. `"max_slot_wal_keep_size = 1MB"`.
    pub extra_conf: Vec<String>,
    /// `pg_hba.conf` lines placed before the catch-all `trust` lines, e.g.
    /// `"host all alice 127.0.0.1/32 scram-sha-256"`.
    pub hba_lines: Vec<String>,
}

/// Settings for a physical standby made by [`TempPostgres::start_standby`].
#[derive(Debug, Clone, Default)]
pub struct StandbyOptions {
    /// The physical replication slot on the primary the standby streams
    /// through (`primary_slot_name`); it must exist before the standby starts.
    pub primary_slot: String,
    /// Extra `postgresql.conf` lines for the standby, e.g.
    /// `"sync_replication_slots = on"`.
    pub extra_conf: Vec<String>,
}

/// A running throw-away cluster; dropping it stops the server and deletes its
/// files.
#[derive(Debug)]
pub struct TempPostgres {
    root: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    run_as_postgres: bool,
    /// The superuser's password, drawn at random for this cluster.
    password: String,
}

/// The superuser of every throw-away cluster.
pub const SUPERUSER: &str = "postgres";

impl TempPostgres {
    /// Creates and starts a cluster with the default settings.
    pub fn start() -> Result<Self, PgTempError> {
        Self::start_with(TempPostgresOptions::default())
    }

    /// Creates and starts a cluster with extra settings.
    pub fn start_with(options: TempPostgresOptions) -> Result<Self, PgTempError> {
        let bindir = find_server_binaries()?;
        let run_as_postgres = nix::unistd::geteuid().is_root();
        let mut cluster = TempPostgres {
            root: server_root(run_as_postgres)?,
            bindir,
            port: 0,
            run_as_postgres,
            password: random_password()?,
        };
        cluster.initdb(&options)?;
        cluster.start_on_a_free_port()?;
        Ok(cluster)
    }

    /// Makes and starts a physical standby of this cluster, streaming through
    /// `options.primary_slot`: stops this server, copies its files, starts it
    /// again, then starts the copy in standby mode on a port of its own.
    ///
    /// The copy leaves out this cluster's replication slots — slots belong to
    /// the server they were made on, and a standby's own copy of a failover
    /// slot is what `sync_replication_slots` is for.
    pub fn start_standby(&self, options: StandbyOptions) -> Result<TempPostgres, PgTempError> {
        let mut standby = TempPostgres {
            root: server_root(self.run_as_postgres)?,
            bindir: self.bindir.clone(),
            port: 0,
            run_as_postgres: self.run_as_postgres,
            // A copy of the primary's files: the same superuser password.
            password: self.password.clone(),
        };
        self.stop()?;
        // As the server's user, so that the copy belongs to it too.
        let copied = self.run_program(
            Path::new("cp"),
            &[
                "-a",
                &self.data_dir().display().to_string(),
                &standby.data_dir().display().to_string(),
            ],
        );
        let started = self.start_again();
        copied?;
        started?;
        let slots = standby.data_dir().join("pg_replslot");
        for entry in
            std::fs::read_dir(&slots).map_err(io_error(format!("reading {}", slots.display())))?
        {
            let path = entry
                .map_err(io_error(format!("reading {}", slots.display())))?
                .path();
            std::fs::remove_dir_all(&path)
                .map_err(io_error(format!("removing {}", path.display())))?;
        }
        // Settings of the primary that name its own files go; the rest is
        // the standby's.
        let mut conf = vec![
            format!(
                "unix_socket_directories = '{}'",
                standby.root.path().display()
            ),
            // dbname: the slot sync worker connects to a database.
            format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user={SUPERUSER} password={} \
                 dbname=postgres'",
                self.port, self.password
            ),
            format!("primary_slot_name = '{}'", options.primary_slot),
            "hot_standby_feedback = on".to_owned(),
        ];
        conf.extend(options.extra_conf);
        standby.append(
            "postgresql.conf",
            &format!("\n# walhook throw-away standby\n{}\n", conf.join("\n")),
        )?;
        standby.write("standby.signal", "")?;
        standby.start_on_a_free_port()?;
        Ok(standby)
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the superuser (with its
    /// password), without TLS.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}?sslmode=disable",
            self.password, self.port
        )
    }

    /// The superuser's password (for a client that takes it apart from a
    /// URL, e.g. as `PGPASSWORD`).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A connection URL for `database` as `user` with `password`.
    pub fn url_as(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// The directory that holds the data directory, the log and the socket.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The server's log so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server (fast shutdown) and keeps its files.
    pub fn stop(&self) -> Result<(), PgTempError> {
        self.pg_ctl(&["stop", "-w", "-m", "fast"]).map(drop)
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) -> Result<(), PgTempError> {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &self.log_path()])
            .map(drop)
    }

    /// Stops the server without a shutdown checkpoint, as if its host had
    /// died (`pg_ctl stop -m immediate`); the files stay.
    pub fn crash(&self) -> Result<(), PgTempError> {
        self.pg_ctl(&["stop", "-w", "-m", "immediate"]).map(drop)
    }

    /// Promotes a standby to a primary and waits until it accepts writes.
    pub fn promote(&self) -> Result<(), PgTempError> {
        self.pg_ctl(&["promote", "-w", "-t", "60"]).map(drop)
    }

    /// Restarts the server (fast shutdown), as an operator's `pg_ctl restart`.
    pub fn restart(&self) -> Result<(), PgTempError> {
        self.pg_ctl(&[
            "restart",
            "-w",
            "-t",
            "60",
            "-m",
            "fast",
            "-l",
            &self.log_path(),
        ])
        .map(drop)
    }

    /// Starts a small shell process that stops the server and deletes the
    /// files if this process dies without dropping the cluster (a killed
    /// test run, a static that is never dropped).
    fn spawn_watchdog(&self) {
        let run_as = if self.run_as_postgres {
            format!("runuser -u {SUPERUSER} -- ")
        } else {
            String::new()
        };
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
             {run_as}'{pg_ctl}' -D '{data}' stop -m immediate -w >/dev/null 2>&1; rm -rf '{root}'",
            parent = std::process::id(),
            pg_ctl = self.bindir.join("pg_ctl").display(),
            data = self.data_dir().display(),
            root = self.root.path().display(),
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }

    /// Starts the server on a free port of 127.0.0.1 and arms the watchdog.
    fn start_on_a_free_port(&mut self) -> Result<(), PgTempError> {
        // A free port can be taken by someone else between our probe and the
        // server's bind; try a few.
        let mut last_error = None;
        for _ in 0..5 {
            self.port = free_port()?;
            self.write_port()?;
            match self.pg_ctl(&["start", "-w", "-t", "60", "-l", &self.log_path()]) {
                Ok(_) => {
                    self.spawn_watchdog();
                    return Ok(());
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| PgTempError::CommandFailed {
            command: "pg_ctl start".into(),
            status: "not run".into(),
            output: String::new(),
        }))
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn log_path(&self) -> String {
        self.root.path().join("server.log").display().to_string()
    }

    fn initdb(&self, options: &TempPostgresOptions) -> Result<(), PgTempError> {
        let data = self.data_dir().display().to_string();
        // Readable by the server's user through the private directory; gone
        // once initdb has read it.
        let password_file = self.root.path().join("superuser-password");
        std::fs::write(&password_file, &self.password)
            .map_err(io_error("writing the superuser's password for initdb"))?;
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644))
            .map_err(io_error("letting initdb read the password file"))?;
        let password_arg = format!("--pwfile={}", password_file.display());
        let initialised = self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                SUPERUSER,
                &password_arg,
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        let _ = std::fs::remove_file(&password_file);
        initialised?;
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("unix_socket_directories = '{}'", self.root.path().display()),
            "wal_level = logical".to_owned(),
            // A test binary shares one cluster, and its tests leave their
            // slots (and walsenders' connections) behind, one per test
            // database: room for many.
            "max_wal_senders = 100".to_owned(),
            "max_replication_slots = 400".to_owned(),
            // As the README asks of every server walhook reads.
            "max_slot_wal_keep_size = '10GB'".to_owned(),
            "max_connections = 300".to_owned(),
            "fsync = off".to_owned(),
            "full_page_writes = off".to_owned(),
            "log_min_messages = warning".to_owned(),
            "log_line_prefix = '%m [%p] '".to_owned(),
        ];
        conf.extend(options.extra_conf.iter().cloned());
        self.append(
            "postgresql.conf",
            &format!("\n# walhook throw-away cluster\n{}\n", conf.join("\n")),
        )?;
        // pg_hba.conf is matched top-down: the caller's lines go first.
        let mut hba = options.hba_lines.clone();
        hba.push("local all all scram-sha-256".into());
        hba.push("host all all 127.0.0.1/32 scram-sha-256".into());
        hba.push("host replication all 127.0.0.1/32 scram-sha-256".into());
        self.write("pg_hba.conf", &format!("{}\n", hba.join("\n")))
    }

    fn write_port(&self) -> Result<(), PgTempError> {
        // The last `port =` line of postgresql.conf wins.
        self.append("postgresql.conf", &format!("port = {}\n", self.port))
    }

    fn append(&self, file: &str, text: &str) -> Result<(), PgTempError> {
        let path = self.data_dir().join(file);
        let mut contents = std::fs::read_to_string(&path)
            .map_err(io_error(format!("reading {}", path.display())))?;
        contents.push_str(text);
        std::fs::write(&path, contents).map_err(io_error(format!("writing {}", path.display())))
    }

    fn write(&self, file: &str, text: &str) -> Result<(), PgTempError> {
        let path = self.data_dir().join(file);
        std::fs::write(&path, text).map_err(io_error(format!("writing {}", path.display())))
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, PgTempError> {
        let data = self.data_dir().display().to_string();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    /// Runs a server binary, as the postgres user when we are root.
    fn run(&self, program: &str, args: &[&str]) -> Result<Output, PgTempError> {
        self.run_program(&self.bindir.join(program), args)
    }

    /// Runs `binary`, as the postgres user when we are root.
    fn run_program(&self, binary: &Path, args: &[&str]) -> Result<Output, PgTempError> {
        let program = binary
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut command = if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", SUPERUSER, "--"]).arg(binary);
            command
        } else {
            Command::new(binary)
        };
        command.args(args).current_dir(self.root.path());
        // The server must not inherit settings meant for a client.
        for variable in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE"] {
            command.env_remove(variable);
        }
        let described = format!("{} {}", binary.display(), args.join(" "));
        let output = command
            .output()
            .map_err(io_error(format!("starting `{described}`")))?;
        if output.status.success() {
            return Ok(output);
        }
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        if program == "pg_ctl" {
            text.push_str(&self.log());
        }
        Err(PgTempError::CommandFailed {
            command: described,
            status: output.status.to_string(),
            output: text.trim().to_owned(),
        })
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Immediate: the files are deleted next, so a clean checkpoint is waste.
        if self.port != 0 {
            let _ = self.pg_ctl(&["stop", "-w", "-m", "immediate"]);
        }
    }
}

/// 24 random bytes as hex, from the operating system's generator.
fn random_password() -> Result<String, PgTempError> {
    let mut bytes = [0u8; 24];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PgTempError::Random)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// A fresh private directory for a server's files, owned by the postgres
/// user when the server runs as it.
fn server_root(run_as_postgres: bool) -> Result<tempfile::TempDir, PgTempError> {
    let root = tempfile::Builder::new()
        .prefix("walhook-pg-")
        .tempdir()
        .map_err(io_error("creating a temporary directory for PostgreSQL"))?;
    if run_as_postgres {
        let user = nix::unistd::User::from_name(SUPERUSER)
            .ok()
            .flatten()
            .ok_or(PgTempError::NoPostgresUser)?;
        std::os::unix::fs::chown(
            root.path(),
            Some(user.uid.as_raw()),
            Some(user.gid.as_raw()),
        )
        .map_err(io_error(format!(
            "handing {} to the postgres user",
            root.path().display()
        )))?;
    }
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(io_error("restricting the temporary directory"))?;
    Ok(root)
}

/// Finds a directory holding `initdb` and `pg_ctl`: `WALHOOK_PG_BINDIR`, then
/// `PATH`, then `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_server_binaries() -> Result<PathBuf, PgTempError> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let candidates = candidate_dirs("initdb");
    candidates
        .iter()
        .find(|dir| has_both(dir))
        .cloned()
        .ok_or_else(|| PgTempError::NoBinaries {
            searched: if candidates.is_empty() {
                "WALHOOK_PG_BINDIR, PATH, pg_config --bindir, /usr/lib/postgresql/*/bin".into()
            } else {
                candidates
                    .iter()
                    .map(|dir| dir.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// Finds a PostgreSQL client program (e.g. `pg_recvlogical`) in the same
/// places, in the same order: server binary packages that lack the client
/// programs (the npm ones) then fall back to the distribution's.
pub fn find_program(name: &str) -> Option<PathBuf> {
    candidate_dirs(name)
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Where PostgreSQL's programs may be, most preferred first; `PATH` entries
/// are those that hold `program`, followed to their real directory.
fn candidate_dirs(program: &str) -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("WALHOOK_PG_BINDIR") {
        candidates.push(PathBuf::from(dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // A symlinked program (as in /usr/local/bin) should lead to the
            // real directory, where `postgres` lives beside it.
            if let Ok(real) = std::fs::canonicalize(dir.join(program))
                && let Some(parent) = real.parent()
            {
                candidates.push(parent.to_path_buf());
            }
        }
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        candidates.push(PathBuf::from(dir));
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort();
    candidates.extend(versioned.into_iter().rev().map(|(_, dir)| dir));
    candidates
}

fn free_port() -> Result<u16, PgTempError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(io_error("finding a free port on 127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("finding a free port on 127.0.0.1"))?
        .port();
    Ok(port)
}
