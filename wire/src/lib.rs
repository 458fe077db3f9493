//! How custody talks over NATS, shared by every service and the command
//! line: the map of subjects and streams, connecting as an nkey user, the
//! one follower of the committed stream, the query requests and answer
//! codes, and the small files every party keeps (key files, written whole).
//!
//! *Invariant: knows no custody rule and no storage of any service.* It
//! depends on `custody-proto` only; the ledger, the projection, the
//! gateway, authz and the auditor depend on it, never the other way round.
//!
//! # Layout
//! - [`subjects`]: the NATS subjects and streams.
//! - [`connect`]: connecting to NATS as an nkey user.
//! - [`follow`]: reading the ledger's streams by direct get; the linked
//!   entry follower ([`follow::Reader::entries`]).
//! - [`query`]: query requests and the answer codes, with their meaning.
//! - [`fair`]: a fair queue per client for expensive answers.
//! - [`files`]: writing a file whole (temp, fsync, rename, fsync the
//!   folder), and nkey seed files.
//! - [`atomic`]: JetStream atomic batch publish, the ledger's commit.
//! - [`certify`]: assembling an origin certificate from the projection,
//!   the committed stream and the ledger's proof service.
//! - [`receipts`]: keeping the outcomes of durable submissions on a
//!   receipts stream, one consumer per actor (the ledger and the edge).
//! - [`health`]: each service's status (role, head or lag, leader,
//!   ready), answered over NATS and read by the ops listener.
//! - [`crashpoint`]: exact crash places for tests (`CUSTODY_CRASH`).
//! - [`table`]: any list as CSV.

pub mod atomic;
pub mod certify;
pub mod connect;
pub mod crashpoint;
pub mod fair;
pub mod files;
pub mod follow;
pub mod health;
pub mod query;
pub mod receipts;
pub mod subjects;
pub mod table;
