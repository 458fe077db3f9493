//! The custody projection: follows the ledger's committed stream and answers
//! regulators. Where were a stone's carats mined, what is its customs origin,
//! and may it enter a market on a date under a rule set?
//!
//! # Layout
//! - [`certificate`]: what a lot's answer rests on, and the offline check
//!   of an origin certificate (pure).
//! - [`origin`]: exact mine-origin compositions (pure).
//! - [`rules`]: rule sets as TOML data and the verdict engine (pure).
//! - [`view`]: the state, applying entries, and the answers (pure).
//! - [`store`]: the projection's own sled store (the only sled user).
//! - [`service`]: the stream consumer and the NATS queries.

pub mod certificate;
pub mod origin;
pub mod rules;
pub mod service;
pub mod statistics;
pub mod store;
pub mod view;

pub use service::{rebuild, run, Config};
