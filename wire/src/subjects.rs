//! NATS subjects and JetStream streams of the ledger: the map producers,
//! projections and auditors write clients against (see ARCHITECTURE.md).

/// The NATS account of the read-side services (projections, the gateway,
/// authz) in the accounts authz writes; the gateway in it is believed
/// when it names the client it asks for ([`crate::query::asker_of`]).
pub const SERVICES_ACCOUNT: &str = "SERVICES";

/// Request-reply submission: `custody.submit.<actor nkey>`; the reply is an
/// [`custody_proto::Outcome`].
pub const SUBMIT_PREFIX: &str = "custody.submit";
/// A request on a submission subject with this header (value
/// [`BATCH_NDJSON`]) is a batch: its body holds one envelope per line, each
/// exactly the bytes it would be alone, at most 1,000 of them; the reply is
/// a JSON array of outcomes, one per non-empty line, in order, each what
/// that envelope alone would have got.
pub const HDR_BATCH: &str = "Custody-Batch";
pub const BATCH_NDJSON: &str = "ndjson";
/// Most envelopes one batch request may carry: their outcomes, up to a few
/// hundred bytes each, must fit in one NATS reply.
pub const BATCH_MAX_ENVELOPES: usize = 1000;
/// Durable submission: publish on `custody.inbox.<actor nkey>` (stream
/// [`INBOX_STREAM`]); the outcome arrives on `custody.receipts.<actor nkey>`.
pub const INBOX_PREFIX: &str = "custody.inbox";
pub const INBOX_STREAM: &str = "CUSTODY_INBOX";
/// Durable consumer through which the ledger reads the inbox.
pub const INBOX_CONSUMER: &str = "ledger";
/// Outcomes of inbox submissions, by signer (`unattributed` when the
/// envelope could not be read).
pub const RECEIPTS_PREFIX: &str = "custody.receipts";
pub const RECEIPTS_STREAM: &str = "CUSTODY_RECEIPTS";
/// An edge's outbox (`custody edge`): what its actor submitted on
/// `custody.submit.<key>` or `custody.inbox.<key>` at the edge, durably
/// queued until the hub's ledger answered it. The hub never sees it.
pub const OUTBOX_STREAM: &str = "CUSTODY_OUTBOX";
/// Committed entries, in seq order; stream sequence = ledger seq.
pub const ENTRIES_SUBJECT: &str = "custody.ledger.entries";
pub const LEDGER_STREAM: &str = "CUSTODY_LEDGER";
/// Request-reply, answered by the writing ledger: a pull consumer of the
/// committed stream for the follower that asks (`{"from", "reader"}` →
/// `{"consumer"}`), named by its NATS user ([`follower_consumer`]); it
/// pulls from it on [`follower_next`]. See `follow.rs`.
pub const FOLLOW_SUBJECT: &str = "custody.ledger.follow";
/// A follower's consumer of the committed stream, by the name the ledger
/// gives it: `follow_<id>`, where `id` is the follower's NATS user.
pub fn follower_consumer(id: &str) -> String {
    format!("follow_{id}")
}
/// A standby ledger replica's own consumer of the committed stream:
/// `replica_<instance>`, out of reach of every follower's permissions.
pub fn replica_consumer(instance: &str) -> String {
    format!("replica_{instance}")
}
/// Where a follower pulls from its consumer (`$JS.API.CONSUMER.MSG.NEXT`).
pub fn follower_next(consumer: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{LEDGER_STREAM}.{consumer}")
}
/// Request-reply: the committed head, `{"seq", "hash"}`.
pub const HEAD_SUBJECT: &str = "custody.ledger.head";
/// Signed checkpoints, published periodically and whenever one is asked
/// for (stream [`CHECKPOINTS_STREAM`]): what auditors keep.
pub const CHECKPOINTS_SUBJECT: &str = "custody.ledger.checkpoints";
pub const CHECKPOINTS_STREAM: &str = "CUSTODY_CHECKPOINTS";
/// Request-reply, answered by the ledger: a fresh signed checkpoint
/// (`{}`), an inclusion proof (`{"seq", "tree_size"?}`), a consistency
/// proof (`{"from", "to"}`).
pub const CHECKPOINT_SUBJECT: &str = "custody.ledger.checkpoint";
pub const PROOF_SUBJECT: &str = "custody.ledger.proof";
pub const CONSISTENCY_SUBJECT: &str = "custody.ledger.consistency";
/// Queue group of ledger subscribers.
pub const QUEUE_GROUP: &str = "custody-ledger";

/// How each service says how it is (`custody status`):
/// `custody.status.<kind>`, one answer from every instance of that kind
/// (ledger, projection, gateway, authz at the hub; an edge on its own
/// server).
pub const STATUS_PREFIX: &str = "custody.status";
/// The kinds of service `custody status` asks.
pub const STATUS_KINDS: [&str; 5] = ["ledger", "projection", "gateway", "authz", "edge"];

/// Headers on each committed-stream message (its payload is the envelope).
pub use custody_proto::entry::{HDR_HASH, HDR_PREV, HDR_RECORDED_AT, HDR_SEQ};
/// Header on receipts: the event id, when known.
pub const HDR_EVENT_ID: &str = "Custody-Event-Id";

/// Queries the projection answers (request-reply, queue group
/// [`PROJECTION_GROUP`]); bodies are JSON.
pub const QUERY_ORIGIN: &str = "custody.query.origin";
pub const QUERY_ADMISSIBILITY: &str = "custody.query.admissibility";
pub const QUERY_GENEALOGY: &str = "custody.query.genealogy";
pub const QUERY_DIGEST: &str = "custody.query.digest";
/// `{"key"}` → `{"key","name","country","roles","revoked"}`: who an actor is.
pub const QUERY_ACTOR: &str = "custody.query.actor";
/// [`crate::query::CertificateQuery`] → the answers for an origin
/// certificate and the seqs of the entries they rest on (see
/// [`crate::certify`]).
pub const QUERY_CERTIFICATE: &str = "custody.query.certificate";
/// [`crate::query::VerifyCertificateQuery`] → a verification report,
/// computed from the certificate alone (never from the projection's state).
pub const QUERY_VERIFY_CERTIFICATE: &str = "custody.query.verify_certificate";
/// [`crate::query::SearchQuery`] → the lots a lot id or a number on a
/// paper names, and what each was cut or split into since.
pub const QUERY_SEARCH: &str = "custody.query.search";
/// `{}` → `{"presets": [{"name", "title", "rules": [{"id", "description", "from"}]}]}`:
/// the rule sets the projection ships, as their files word them.
pub const QUERY_RULES: &str = "custody.query.rules";
/// `{}` → the public flows (see `custody_projection::statistics`), as of
/// the projection's checkpoint.
pub const QUERY_STATISTICS: &str = "custody.query.statistics";
/// [`crate::query::LotsQuery`] → a page of lots, filtered; never who
/// holds them.
pub const QUERY_LOTS: &str = "custody.query.lots";
/// The lots one actor holds: `custody.holdings.<key>` with a
/// [`crate::query::LotsQuery`] body. Who holds what is a business secret,
/// so the holder is in the subject, where NATS permissions check it: an
/// actor may ask about its own key only; a regulator, the gateway and the
/// operator about anyone's.
pub const HOLDINGS_PREFIX: &str = "custody.holdings";
pub const PROJECTION_GROUP: &str = "custody-projection";

/// Where the lots `actor` holds are asked for.
pub fn holdings(actor: &str) -> String {
    format!("{HOLDINGS_PREFIX}.{actor}")
}

pub fn submit(actor: &str) -> String {
    format!("{SUBMIT_PREFIX}.{actor}")
}

/// The actor whose subject an envelope goes on: its first signature's key,
/// or `unattributed` for bytes that name none (the ledger refuses them
/// with their code, on whatever subject they come).
pub fn signer(raw: &[u8]) -> String {
    serde_json::from_slice::<custody_proto::Envelope>(raw)
        .ok()
        .and_then(|e| e.signatures.first().and_then(|s| s.keyid.parse::<custody_proto::ActorKey>().ok()))
        .map_or_else(|| "unattributed".to_owned(), |k| k.to_string())
}

pub fn inbox(actor: &str) -> String {
    format!("{INBOX_PREFIX}.{actor}")
}

pub fn receipts(actor: &str) -> String {
    format!("{RECEIPTS_PREFIX}.{actor}")
}
