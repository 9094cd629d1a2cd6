//! The `walhook` command line: parses arguments, sets up logging and the
//! runtime, runs the command and maps its outcome to an exit code (0 done,
//! 1 a runtime failure, 2 a problem in the configuration).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use walhook::commands;

#[derive(Parser)]
#[command(
    name = "walhook",
    version,
    about = "Committed PostgreSQL rows → signed HTTP webhooks"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: stream the slot and deliver webhooks.
    Run(ConfigArgs),
    /// Create the walhook schema, the publication and the slot (idempotent).
    Setup(ConfigArgs),
    /// Show the whole loop on a throw-away PostgreSQL; leaves nothing behind.
    Demo,
    /// Slot lag, confirmed position, and per subscription its mode, backlog
    /// and dead letters.
    Status(StatusArgs),
    /// Check the config and the database; print each problem with its fix.
    Check(ConfigArgs),
    /// A local receiver for development: prints webhooks, checks signatures.
    Listen(ListenArgs),
    /// Inspect, redeliver or delete events parked as dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Hold a subscription's events in its backlog (on a running daemon
    /// within a second) until `resume`.
    Pause(SubscriptionArgs),
    /// Let a paused subscription's backlog drain, in order.
    Resume(SubscriptionArgs),
    /// Inspect and trim the events waiting in walhook.backlog.
    #[command(subcommand)]
    Backlog(BacklogCommand),
    /// Send rows a table already has as READ events while the stream goes
    /// on (a running `walhook run` sends them); `--list` and `--cancel ID`
    /// manage the requests.
    Backfill(BackfillArgs),
    /// Send one signed test event (sample values, or a row with
    /// --from-row) to a subscription's endpoint and show the answer; exit 0
    /// on a 2xx. Touches no slot, backlog or dead letter.
    SendTest(SendTestArgs),
    /// Print the SQL that `setup` runs (for an administrator's psql), or
    /// with --least-privilege the script that makes walhook's own role.
    Sql(SqlArgs),
    /// Print a shell completion script, e.g.
    /// `walhook completions bash > /etc/bash_completion.d/walhook`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `walhook man | man -l -`.
    Man,
}

#[derive(clap::Args)]
struct SqlArgs {
    /// The least-privilege role script (sql/002), for psql with
    /// `-v tables=… -v walhook_password=…`.
    #[arg(long)]
    least_privilege: bool,
}

#[derive(clap::Args)]
struct BackfillArgs {
    /// The subscription whose receiver gets the rows (every table it
    /// selects, unless --table).
    #[arg(required_unless_present_any = ["list", "cancel"], conflicts_with_all = ["list", "cancel"])]
    subscription: Option<String>,
    /// Only this table (`schema.table`, or `table` in public); one the
    /// subscription selects. Repeatable.
    #[arg(long)]
    table: Vec<String>,
    /// Only the rows meeting this SQL condition on the table's columns,
    /// e.g. "country = 'DE'".
    #[arg(long = "where", value_name = "SQL CONDITION")]
    condition: Option<String>,
    /// Rows read per chunk.
    #[arg(long, default_value_t = walhook::commands::backfill::DEFAULT_CHUNK_ROWS,
          value_parser = clap::value_parser!(i32).range(1..=i64::from(walhook::commands::backfill::MAX_CHUNK_ROWS)))]
    chunk_rows: i32,
    /// Print the backfill ids and return instead of following progress.
    #[arg(long)]
    detach: bool,
    /// List every backfill and its progress.
    #[arg(long, conflicts_with_all = ["cancel", "table", "condition", "detach"])]
    list: bool,
    /// With --list: a JSON array instead of a table.
    #[arg(long, requires = "list")]
    json: bool,
    /// Cancel an active backfill (its id as --list shows it).
    #[arg(long, value_name = "ID", conflicts_with_all = ["table", "condition", "detach"])]
    cancel: Option<i64>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(clap::Args)]
struct SendTestArgs {
    /// The subscription's `name` in the config.
    subscription: String,
    /// The table (`schema.table`, or `table` in public); needed when the
    /// subscription selects several.
    #[arg(long)]
    table: Option<String>,
    /// The kind of change the event describes.
    #[arg(long = "type", value_enum, default_value_t = TestKind::Insert)]
    kind: TestKind,
    /// Send this row (its primary key; `a,b` for a key of two columns)
    /// instead of sample values.
    #[arg(long, value_name = "KEY")]
    from_row: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum TestKind {
    Insert,
    Update,
    Delete,
}

#[derive(clap::Args)]
struct SubscriptionArgs {
    /// The subscription's `name` in the config.
    subscription: String,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Subcommand)]
enum BacklogCommand {
    /// Delete a subscription's waiting events without sending them.
    Purge {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        subscription: String,
        /// Only events committed longer ago than this (e.g. 2h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// List parked events (all, or one subscription's).
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only this subscription's.
        #[arg(long)]
        subscription: Option<String>,
        #[command(flatten)]
        window: TimeWindow,
        /// Print a JSON array (with each payload) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// POST parked events again, in their original order, with their
    /// original ids; each is deleted after a 2xx.
    Replay {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        select: DeadLetterSelect,
        /// Also send letters whose seal does not match (rows walhook did not
        /// store under the subscription's current secret) — only for letters
        /// you have checked and vouch for.
        #[arg(long)]
        trust_unsealed: bool,
        /// Say what would be sent, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete parked events without sending them.
    Purge {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        select: DeadLetterSelect,
        /// Say what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Purge --all without asking.
        #[arg(long)]
        yes: bool,
    },
    /// One dead letter whole: every field, its seal, its payload.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
        /// Its ID (as `list` shows) or its event id (`wh_…`).
        id: String,
    },
}

#[derive(clap::Args)]
struct DeadLetterSelect {
    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["subscription", "id", "since", "until"])]
    all: bool,
    /// Those of one subscription.
    #[arg(long)]
    subscription: Option<String>,
    /// Those with these event ids (`wh_…`, as `list` shows); repeatable.
    #[arg(long, num_args = 1..)]
    id: Vec<String>,
    #[command(flatten)]
    window: TimeWindow,
}

/// Letters by when they were last tried (`last_attempt_at`).
#[derive(clap::Args)]
struct TimeWindow {
    /// Only those last tried at or after this time: RFC 3339
    /// (2026-12-04T10:00:00Z, +02:00 offsets), a date, or a duration back
    /// from now (2h, 7days).
    #[arg(long, value_name = "TIME", value_parser = commands::dead_letters::parse_time)]
    since: Option<std::time::SystemTime>,
    /// Only those last tried before this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = commands::dead_letters::parse_time)]
    until: Option<std::time::SystemTime>,
}

impl DeadLetterSelect {
    fn selector(self) -> commands::dead_letters::Selector {
        commands::dead_letters::Selector {
            all: self.all,
            subscription: self.subscription,
            ids: self.id,
            rows: Vec::new(),
            since: self.window.since,
            until: self.window.until,
        }
    }
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print JSON, for scripts.
    #[arg(long)]
    json: bool,
    /// Refresh every two seconds until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// The configuration file.
    #[arg(long, short, env = "WALHOOK_CONFIG", default_value = "walhook.toml")]
    config: PathBuf,
}

#[derive(clap::Args)]
struct ListenArgs {
    /// The port on 127.0.0.1 (0 picks a free one; the first line says
    /// which). Default: the subscription's URL's port with --config, else 8080.
    #[arg(long, short)]
    port: Option<u16>,
    /// The subscription's `whsec_…` secret (or `env:NAME`): signatures are
    /// checked and a bad one is answered 401. Default: the subscription's
    /// secret with --config, else $WALHOOK_LISTEN_SECRET.
    #[arg(long)]
    secret: Option<String>,
    /// Stand in for a subscription of this config file: listen on its URL's
    /// port and check signatures with its secret.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Which subscription of --config (needed when it has several).
    #[arg(long, requires = "config")]
    subscription: Option<String>,
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    // Printed from the command line's own definition: no runtime, no logs.
    // Made in memory first: clap_complete panics when its writer fails.
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "walhook", &mut script);
            return write_stdout(&script);
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            if let Err(error) = clap_mangen::Man::new(Cli::command()).render(&mut page) {
                eprintln!("error: making the manual page: {error}");
                return ExitCode::from(1);
            }
            return write_stdout(&page);
        }
        _ => {}
    }
    init_logging(cli.log_format);
    // One TLS provider for both PostgreSQL connections and HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // The daemon's worker threads (default: one per core).
    if matches!(cli.command, Command::Run(_))
        && let Some(threads) = std::env::var("WALHOOK_WORKER_THREADS")
            .ok()
            .and_then(|threads| threads.parse::<usize>().ok())
            .filter(|threads| *threads > 0)
    {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        match cli.command {
            // On a worker thread, not the thread that blocks on the runtime:
            // the reader then wakes delivery lanes through the worker's own
            // queue instead of waking another thread for each hand-off.
            Command::Run(args) => {
                let config = args.config.clone();
                match tokio::spawn(async move { commands::run(&config).await }).await {
                    Ok(outcome) => finish(outcome),
                    Err(error) => {
                        eprintln!("error: the daemon task failed: {error}");
                        ExitCode::from(1)
                    }
                }
            }
            Command::Setup(args) => finish(commands::setup(&args.config).await),
            Command::Demo => finish(commands::demo::run().await),
            Command::Sql(args) => {
                print!("{}", commands::sql_text(args.least_privilege));
                ExitCode::SUCCESS
            }
            Command::Status(args) => {
                finish(commands::status::run(&args.config.config, args.json, args.watch).await)
            }
            // 0 when ready to run, 1 when the report lists something to fix.
            Command::Check(args) => match commands::check::run(&args.config).await {
                Ok(report) => ExitCode::from(report.exit_code()),
                Err(error) => finish(Err(error)),
            },
            Command::Listen(args) => finish(
                commands::listen::run(commands::listen::ListenOptions {
                    port: args.port,
                    secret: args.secret,
                    config: args.config,
                    subscription: args.subscription,
                })
                .await,
            ),
            Command::DeadLetters(command) => finish(dead_letters(command).await),
            Command::Pause(args) => finish(
                commands::backlog::set_paused(&args.config.config, &args.subscription, true).await,
            ),
            Command::Resume(args) => finish(
                commands::backlog::set_paused(&args.config.config, &args.subscription, false).await,
            ),
            Command::Backlog(BacklogCommand::Purge {
                config,
                subscription,
                older_than,
            }) => finish(commands::backlog::purge(&config.config, &subscription, older_than).await),
            Command::Backfill(args) => finish(backfill(args).await),
            Command::SendTest(args) => finish(
                commands::send_test::run(
                    &args.config.config,
                    commands::send_test::Options {
                        subscription: args.subscription,
                        table: args.table,
                        kind: match args.kind {
                            TestKind::Insert => walhook::event::EventKind::Insert,
                            TestKind::Update => walhook::event::EventKind::Update,
                            TestKind::Delete => walhook::event::EventKind::Delete,
                        },
                        from_row: args.from_row,
                        json: args.json,
                    },
                )
                .await,
            ),
            // Handled before the runtime starts.
            Command::Completions { .. } | Command::Man => ExitCode::SUCCESS,
        }
    })
}

async fn dead_letters(command: DeadLettersCommand) -> Result<(), walhook::commands::CommandError> {
    use commands::dead_letters::{Selector, list, purge, replay, show};
    match command {
        DeadLettersCommand::List {
            config,
            subscription,
            window,
            json,
        } => {
            let selector = Selector {
                subscription,
                since: window.since,
                until: window.until,
                ..Selector::default()
            };
            list(&config.config, &selector, json).await
        }
        DeadLettersCommand::Replay {
            config,
            select,
            trust_unsealed,
            dry_run,
        } => replay(&config.config, &select.selector(), trust_unsealed, dry_run).await,
        DeadLettersCommand::Purge {
            config,
            select,
            dry_run,
            yes,
        } => purge(&config.config, &select.selector(), dry_run, yes).await,
        DeadLettersCommand::Show { config, id } => show(&config.config, &id).await,
    }
}

async fn backfill(args: BackfillArgs) -> Result<(), walhook::commands::CommandError> {
    use commands::backfill::{Request, cancel, list, request};
    let config = &args.config.config;
    if args.list {
        return list(config, args.json).await;
    }
    if let Some(id) = args.cancel {
        return cancel(config, id).await;
    }
    let Some(subscription) = args.subscription else {
        return Err(walhook::commands::CommandError::Usage(
            "name the subscription to backfill (or use --list or --cancel ID)".to_owned(),
        ));
    };
    request(
        config,
        Request {
            subscription,
            tables: args.table,
            condition: args.condition,
            chunk_rows: args.chunk_rows,
            detach: args.detach,
        },
    )
    .await
}

/// Writes `bytes` to stdout; a closed stdout ends quietly with 141, as for
/// the other commands.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(141),
        Err(error) => {
            eprintln!("error: writing to stdout: {error}");
            ExitCode::from(1)
        }
    }
}

/// The exit code of a command's outcome, printing its error.
fn finish(outcome: Result<(), walhook::commands::CommandError>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code() as u8)
        }
    }
}

/// Libraries whose debug logs hold statements with their parameters (row
/// values, payloads) or whole requests: kept at `info` unless the filter
/// names them, so `WALHOOK_LOG=debug` shows walhook's own detail only.
const CHATTY_TARGETS: &[&str] = &[
    "tokio_postgres",
    "postgres_protocol",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "axum",
];

/// `walhook status --json | head -1`: once the reader of stdout is gone,
/// Rust's `println!` panics on the broken pipe (it ignores SIGPIPE). That
/// is the end of the output, not a failure: exit as a program killed by
/// SIGPIPE would (141), without a panic message. Any other panic reports
/// as usual.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let given = std::env::var("WALHOOK_LOG").ok();
    let (wanted, problem) = match given.as_deref().map(log_filter) {
        None => ("info".to_owned(), None),
        Some(Ok(filter)) => (filter, None),
        Some(Err(problem)) => ("info".to_owned(), Some(problem)),
    };
    let mut filter = tracing_subscriber::EnvFilter::new(&wanted);
    for target in CHATTY_TARGETS {
        if !wanted.contains(target)
            && let Ok(directive) = format!("{target}=info").parse()
        {
            filter = filter.add_directive(directive);
        }
    }
    // Colours only for a person at a terminal, not for the journal or a file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some(problem) = problem {
        tracing::warn!(
            "WALHOOK_LOG {problem}; logging at info instead (e.g. WALHOOK_LOG=debug or WALHOOK_LOG=info,walhook::deliver=debug)"
        );
    }
}

/// The levels a `WALHOOK_LOG` directive may name.
const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// `WALHOOK_LOG` checked: a filter tracing accepts, in which a word alone
/// is a level or a module walhook logs from. (tracing would read `warning`
/// as a module name, enable nothing else, and print no log at all.)
fn log_filter(text: &str) -> Result<String, String> {
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(text) {
        return Err(format!("= {text:?} is not a log filter ({error})"));
    }
    for directive in text.split(',').map(str::trim) {
        let bare = !directive.contains(['=', '[', ':']);
        let known = LEVELS
            .iter()
            .any(|level| directive.eq_ignore_ascii_case(level))
            || directive.parse::<u8>().is_ok_and(|number| number <= 5)
            || directive == "walhook"
            || CHATTY_TARGETS.contains(&directive);
        if bare && !directive.is_empty() && !known {
            return Err(format!(
                "= {text:?}: `{directive}` is neither a level ({}) nor a module walhook logs from",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn a_log_filter_names_levels_and_modules() {
        for good in [
            "info",
            "debug",
            "WARN",
            "info,walhook::deliver=debug",
            "walhook=trace",
            "reqwest",
        ] {
            assert_eq!(log_filter(good).as_deref(), Ok(good), "{good}");
        }
        let typo = log_filter("warning").unwrap_err();
        assert!(typo.contains("`warning` is neither a level"), "{typo}");
        let bad = log_filter("walhook=loud").unwrap_err();
        assert!(bad.contains("is not a log filter"), "{bad}");
    }
}
