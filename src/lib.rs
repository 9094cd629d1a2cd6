//! walhook turns committed row changes in PostgreSQL into signed HTTP
//! webhooks.
//!
//! ```text
//! Postgres walsender ──CopyBoth──▶ source     replication connection, keepalives, status
//!                                    │ XLogData frames
//!                                    ▼
//!                                  pgoutput   bytes → messages (pure)
//!                                  decode     relation + type cache → Change, values as to_jsonb
//!                                    │
//!                                    ▼
//!                                  rules      table + event + columns → routes
//!                                  event      payload bytes + stable id
//!                                    │ bounded lanes (backpressure)
//!                                    ▼
//!                                  deliver    HTTP, ordering lanes, retries, signing, dead letters,
//!                                    │ acks     per-subscription circuit breaker and backlog
//!                                    │          (walhook.backlog: spilled, drained in order)
//!                                    ▼
//!                                  checkpoint resolved frontier ──▶ confirmed LSN to the walsender
//! ```
//!
//! Data flows one way; only the checkpoint flows back. Below the stages sit
//! leaves that import nothing of walhook's or only each other: `lsn`, `oid`,
//! `pgtime`, `value` (rendering, `value::escape`, `value::compare`),
//! `event` (the change model and payload), `filter`, `webhook` (the Standard
//! Webhooks scheme), `destination` (which addresses `deny_private`
//! refuses), `config` (every value parsed once, TLS files read once),
//! `retry` (waits), `catalog` (type facts), `seal` (MACs of stored rows),
//! `mode` (a subscription's delivery mode),
//! `telemetry`, `health`. Beside the stream: `tables`
//! resolves the rules' tables in the catalog (oids, partitions, replica
//! identity), `store` holds all SQL about walhook's own state (its schema,
//! dead letters, backlogs, pause flags, the slot, the publication), `setup`
//! makes the database ready, `watch` follows renamed, dropped and re-created
//! tables while the daemon runs, and `control` applies `walhook pause` /
//! `resume` to a running daemon and records each subscription's mode, and
//! `reload` judges a configuration read again on SIGHUP. `app` owns the tasks; `commands` (the CLI) sit on top.
//!
//! Guarantees: at-least-once (the confirmed LSN never passes a change some
//! matching subscription has neither received with a 2xx nor stored as a dead
//! letter or in its backlog), stable ids for duplicates, per-key order, a
//! slot that keeps moving past unrelated traffic, and one endpoint's outage
//! holding back nothing but its own subscription. See `docs/` and the README.

// The public surface: what the binary runs, what an embedder configures
// and starts, and what a receiver needs to check a signature.
pub mod app;
pub mod commands;
pub mod config;
pub mod event;
pub mod filter;
pub mod lsn;
pub mod pgtemp;
pub mod webhook;

/// Declares modules that are private to the crate, except with the
/// `testing` feature (which the test targets turn on), where the
/// integration tests reach into them. Private by default means that what
/// the product does not use shows up as dead code.
macro_rules! internal {
    ($($name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "testing")]
            pub mod $name;
            #[cfg(not(feature = "testing"))]
            mod $name;
        )*
    };
}

internal!(
    admin,
    backfill,
    catalog,
    checkpoint,
    control,
    decode,
    deliver,
    destination,
    health,
    mode,
    oid,
    pgconn,
    pgoutput,
    pgtime,
    pipeline,
    reload,
    retry,
    rules,
    seal,
    setup,
    source,
    status,
    store,
    tables,
    telemetry,
    value,
    watch,
);
