//! The custody ledger service: takes DSSE envelopes from NATS, enforces
//! custody, appends accepted events to a blake3 hash chain on disk, answers
//! each sender only once its entry is durable, and publishes committed
//! entries in order.
//!
//! # Layout
//! - [`subjects`]: the NATS subjects and streams.
//! - [`store`]: durable entries (the only sled user).
//! - [`model`]: the write model and custody rules (pure).
//! - [`ledger`]: open/replay, admit a batch, commit it.
//! - [`notary`]: the Merkle tree, the ledger's key, checkpoints and proofs.
//! - [`service`]: the NATS pipeline around it.
//! - [`crashpoint`]: exact crash places for tests (`CUSTODY_CRASH`).
//! - [`clock`]: the system clock, or a test clock (`--test-clock-file`).
//! - [`auditor`]: the independent auditor (`custody audit`).
//! - [`connect`]: connecting to NATS as an nkey user.
//! - [`keyfile`]: nkey seed files (the ledger's key, actors' keys).
//! - [`follow`], [`audit`]: reading and checking the committed stream (or a
//!   stopped store) from seq 1.

pub mod audit;
pub mod auditor;
pub mod clock;
pub mod connect;
pub mod crashpoint;
pub mod follow;
pub mod keyfile;
pub mod ledger;
pub mod model;
pub mod notary;
pub mod recover;
pub mod service;
pub mod store;
pub mod subjects;

pub use ledger::{Ledger, OpenError};
pub use service::{run, Config};
pub use store::{Store, StoreError};
