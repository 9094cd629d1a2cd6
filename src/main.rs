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
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// The configuration file.
    #[arg(long, short, env = "WALHOOK_CONFIG", default_value = "walhook.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // One TLS provider for both PostgreSQL connections and HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => commands::run(&args.config).await,
            Command::Setup(args) => commands::setup(&args.config).await,
            Command::Demo => commands::demo::run().await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code() as u8)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WALHOOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
