//! Integration tests: walhook against a real throw-away PostgreSQL and a real
//! HTTP receiver. One cluster for the whole binary, one database per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin;
mod check;
mod cli;
mod contract;
mod dead_letters;
mod decoding_messages;
mod delivery;
mod failover_slots;
mod faults;
mod filters;
mod least_privilege;
mod lifecycle;
mod listen;
mod payloads;
mod schema_changes;
mod slot_progress;
mod status;
mod value_fidelity;
