//! The custody ledger service: takes DSSE envelopes from NATS, enforces
//! custody, appends accepted events to a blake3 hash chain on disk, answers
//! each sender only once its entry is durable, and publishes committed
//! entries in order.
//!
//! # Layout
//! - [`store`]: durable entries (the only sled user).
//! - [`model`]: the write model and custody rules (pure).
//! - [`table`]: its large tables: a saved run in key order, and what was added since.
//! - [`ledger`]: open/replay, admit a batch, follow the stream.
//! - [`notary`]: the Merkle tree, the ledger's key, checkpoints and proofs.
//! - [`writer`]: the active writer's decisions, without I/O.
//! - [`service`]: the NATS pipeline around it.
//! - [`simulator`]: replicas under faults, deterministic by seed.
//! - [`clock`]: the system clock, or a test clock (`--test-clock-file`).
//! - [`recovery`]: an empty store in place of a damaged one (`ledger recover`).
//!
//! Subjects, connecting and following the streams are `custody-wire`'s;
//! checking the ledger from outside is `custody-audit`'s, which cannot
//! see this crate.

pub mod clock;
pub mod commit;
pub mod cosign;
pub mod lease;
pub mod ledger;
pub mod meters;
pub mod model;
pub mod notary;
pub mod quota;
pub mod recovery;
pub mod saved;
pub mod service;
pub mod simulator;
pub mod store;
pub mod synthetic;
pub mod table;
pub mod writer;

pub use ledger::{Ledger, OpenError};
pub use service::{run, Config};
pub use store::{Store, StoreError};
