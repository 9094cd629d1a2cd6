//! `cargo bench --bench walhook [-- OPTIONS]`: walhook's throughput, CPU per
//! row, peak memory and commit-to-arrival latency on a throw-away
//! PostgreSQL, beside `pg_recvlogical` as the ceiling (`harness.rs` says
//! how). A tool for the people working on walhook, not part of the product
//! CLI. Figures print as a table and are written as JSON; nothing here fails
//! because something is slow.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

mod harness;

/// Measure throughput, CPU, memory and latency against pg_recvlogical.
#[derive(Parser)]
#[command(name = "walhook-bench")]
struct BenchArgs {
    /// Passed by `cargo bench` to every bench target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Backlog rows.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Rows per transaction in the backlog.
    #[arg(long, default_value_t = 100)]
    rows_per_transaction: u64,
    /// Live-mode commit rates (rows/s), comma-separated; 0 skips live mode.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    live_rates: Vec<u64>,
    /// Seconds per live rate.
    #[arg(long, default_value_t = 5)]
    live_seconds: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench.json")]
    json: PathBuf,
    /// Run only the backlog scenarios whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Run everything this many times and print each figure's median (this
    /// kind of machine varies by ±20% from run to run).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Seconds of live load (20 rows/s) while one of two endpoints is down;
    /// 0 skips the isolation scenario.
    #[arg(long, default_value_t = 30)]
    isolation_seconds: u64,
    /// Rows of the burst the isolation scenario starts with.
    #[arg(long, default_value_t = 12_000)]
    isolation_burst: u64,
    /// Existing rows the backfill scenario backfills; 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    backfill_rows: u64,
    /// Rows per backfill chunk.
    #[arg(long, default_value_t = 5_000)]
    backfill_chunk: i32,
}

impl BenchArgs {
    fn into_options(self) -> harness::BenchOptions {
        harness::BenchOptions {
            rows: self.rows,
            rows_per_transaction: self.rows_per_transaction.max(1),
            live_rates: self
                .live_rates
                .into_iter()
                .filter(|rate| *rate > 0)
                .collect(),
            live_seconds: self.live_seconds,
            json_path: self.json,
            only: self.only,
            repeat: self.repeat.max(1),
            isolation_seconds: self.isolation_seconds,
            isolation_burst: self.isolation_burst.max(1),
            backfill_rows: self.backfill_rows,
            backfill_chunk: self.backfill_chunk.clamp(1, 100_000),
        }
    }
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
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
    match runtime.block_on(harness::run(args.into_options())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}
