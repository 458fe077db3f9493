//! The custody contract, pure: what an event is, how it is signed, how the
//! ledger chains it. This crate knows nothing of NATS, sled or tokio; every
//! other crate and any producer's own code can rely on it alone.
//!
//! # Layout
//! - [`units`]: carats, dollars and shares as fixed-point integers.
//! - [`ids`]: validated event ids, lot ids, actor keys, countries, times.
//! - [`event`]: the event kinds and their stateless checks.
//! - [`envelope`]: DSSE, PAE, signing and (batch) verification.
//! - [`entry`]: ledger entries, the blake3 chain, receipts.
//! - [`certificate`]: origin certificates and their cryptographic checks.
//! - [`checkpoint`]: the ledger's signed statement of a tree size and root.
//! - [`merkle`]: the RFC 9162 tree over entries, inclusion and consistency proofs.
//! - [`lotmap`]: the verifiable index of every lot's and actor's history.
//! - [`request`]: signed HTTP requests (who is asking the gateway).
//! - [`rejection`]: the stable rejection codes.

pub mod certificate;
pub mod checkpoint;
pub mod entry;
pub mod envelope;
pub mod event;
pub mod ids;
pub mod lotmap;
pub mod merkle;
pub mod note;
pub mod rejection;
pub mod request;
pub mod units;

pub use checkpoint::Checkpoint;
pub use entry::{ChainError, Entry, Hash, Linked, Outcome, Receipt, Refusal};
pub use envelope::{Envelope, KeyCache, Opened, MAX_ENVELOPE_BYTES, PAYLOAD_TYPE};
pub use event::{Body, DeclaredOrigin, Document, DocumentType, Event, Evidence, Finding, LotState, Process, Role};
pub use ids::{ActorKey, Country, EventId, LotId, Timestamp};
pub use rejection::{Code, Rejection};
pub use units::{Carats, Share, Usd};
