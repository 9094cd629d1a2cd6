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
//!                                  deliver    HTTP, ordering lanes, retries, signing, dead letters
//!                                    │ acks
//!                                    ▼
//!                                  checkpoint resolved frontier ──▶ confirmed LSN to the walsender
//! ```
//!
//! Beside the stream: `tables` resolves the rules' tables in the catalog
//! (oids, partitions, replica identity), `publication` says what the
//! publication must hold, `setup` makes it so, and `watch` follows renamed,
//! dropped and re-created tables while the daemon runs.
//!
//! Guarantees: at-least-once (the confirmed LSN never passes a change some
//! matching subscription has neither received with a 2xx nor stored as a dead
//! letter), stable ids for duplicates, per-key order, and a slot that keeps
//! moving past unrelated traffic. See `docs/` and the README.

pub mod admin;
pub mod app;
pub mod catalog;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod decode;
pub mod deliver;
pub mod event;
pub mod filter;
pub mod health;
pub mod lsn;
pub mod oid;
pub mod pgconn;
pub mod pgoutput;
pub mod pgtemp;
pub mod pgtime;
pub mod pipeline;
pub mod retry;
pub mod rules;
pub mod setup;
pub mod source;
pub mod status;
pub mod store;
pub mod tables;
pub mod telemetry;
pub mod value;
pub mod watch;
pub mod webhook;
