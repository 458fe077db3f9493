//! The `custody` command line and the pieces it shares with the end-to-end
//! tests and benchmarks: a real `nats-server` child process, the submit
//! client, key files and the demo supply chain.
//!
//! # Layout
//! - [`backup`]: backups of a running ledger, and restoring one.
//! - [`natsd`]: start, restart and kill a nats-server on loopback.
//! - [`client`]: submit envelopes over request-reply, with retries.
//! - [`edge`]: a mine's edge: a leaf node with a durable outbox.
//! - [`link`]: a TCP relay on loopback that can be cut (tests, benches).
//! - [`ops`]: the ops listener: Prometheus metrics, `/healthz`, `/readyz`.
//! - [`keys`]: nkey seed files.
//! - [`demo`]: DOMAIN.md's worked example as signed events.
//! - [`filing`]: customs filings filled from an origin certificate.
//! - [`freshness`]: how current a certificate's evidence is (`--max-age`, `--online`).
//! - [`sim`]: a seeded simulated world shaped like KP 2022 production.
//! - `cmd/`: one file per command (in the binary).

pub mod backup;
pub mod client;
pub mod context;
pub mod demo;
pub mod edge;
pub mod filing;
pub mod freshness;
pub mod keys;
pub mod link;
pub mod natsd;
pub mod ops;
pub mod produce;
pub mod sim;
