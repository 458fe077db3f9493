//! Checking the ledger from outside: `custody verify`, the gateway's
//! `/v1/ledger/verify`, the independent auditor (`custody audit`) and the
//! verified history `custody ledger recover` rebuilds a store from.
//!
//! *Invariant: reads the ledger only as anyone may, through the committed
//! and checkpoints streams; it cannot read the ledger's store or memory.*
//! The compiler enforces it: this crate does not depend on
//! `custody-ledger` (nor on sled).
//!
//! # Layout
//! - [`verify`]: every hash, link, signature and event, and unique ids.
//! - [`auditor`]: the auditor, which also rebuilds the Merkle tree and
//!   holds the ledger to every checkpoint it signed.
//! - [`recover`]: the verified history, handed to whoever rebuilds a store.

pub mod auditor;
pub mod recover;
pub mod verify;
