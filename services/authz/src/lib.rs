//! Who may say what on NATS. The registry of actors lives on the ledger
//! (`actor.registered`, `actor.revoked`); this service follows the committed
//! stream, renders nats-server's `accounts` block from it (the ledger alone
//! in the account that holds the streams; one nkey user per actor and per
//! service, each with its own subjects) and asks the
//! server to reload. A newly registered actor can connect as soon as the
//! reload is done; a revoked one is disconnected by it.
//!
//! # Layout
//! - [`registry`]: actors and their roles, from entries (pure).
//! - [`render`]: the permissions of each role, as NATS config text (pure).
//! - [`service`]: following the stream, writing the file, reloading.
//!
//! *Invariant: knows no custody rule, only who is registered with which
//! roles; it never writes to NATS.*

pub mod registry;
pub mod render;
pub mod service;

pub use registry::Registry;
pub use render::{render, ActorsLimits, Services};
pub use service::{run, Config};
