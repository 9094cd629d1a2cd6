//! Integration tests: walhook against a real throw-away PostgreSQL and real
//! HTTP receivers. One binary, one cluster for all of it
//! (`support::cluster`), one database per test; one module per capability,
//! sharing `support`'s config builder, receiver and waits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin;
mod backfill;
mod backfill_commands;
mod backlog;
mod backlog_commands;
mod backlog_edges;
mod batching;
mod check;
mod cli;
mod completions;
mod connections;
mod contract;
mod dead_letter_answers;
mod dead_letters;
mod decoding_messages;
mod delivery;
mod destinations;
mod environment;
mod examples;
mod failover_slots;
mod faults;
mod filters;
mod hostile;
mod least_privilege;
mod lifecycle;
mod listen;
mod logs;
mod payloads;
mod receiver_tls;
mod reload;
mod row_seals;
mod schema_changes;
mod send_test;
mod slot_progress;
mod source;
mod status;
mod value_fidelity;
mod values;
