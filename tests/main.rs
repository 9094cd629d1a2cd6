//! Integration tests: walhook against a real throw-away PostgreSQL and a real
//! HTTP receiver. One cluster for the whole binary, one database per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod cli;
mod delivery;
mod payloads;
mod slot_progress;
mod value_fidelity;
