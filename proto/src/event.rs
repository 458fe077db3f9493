//! Event payloads: every kind of DOMAIN.md, with its fields, and the
//! structural checks that need no ledger state (lists, lengths, sums of
//! declared shares). Custody rules that need state live in the ledger.

use serde::{de, Deserialize, Deserializer, Serialize};
use std::collections::HashSet;

use crate::ids::{truncate, ActorKey, Country, EventId, LotId, Timestamp};
use crate::rejection::{Code, Rejection};
use crate::units::{Carats, Share, Usd};

/// Most lots one event may name (inputs or outputs): a parcel of a thousand
/// lots is already more than any real split.
pub const MAX_LOTS_PER_EVENT: usize = 1_000;
/// Longest free text (names, reasons, evidence), in characters.
pub const MAX_TEXT: usize = 1_000;
/// How far in the future an `occurred_at` may lie: clocks drift, but an
/// event cannot be recorded before it happened.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
/// The earliest `occurred_at` accepted: the first South African finds.
/// Nothing in custody is older; history from before the ledger enters as
/// `declared` stock.
pub const EARLIEST_DATE: &str = "1870-01-01T00:00:00Z";
/// An event whose `occurred_at` lies more than this before its
/// `recorded_at` is a *late record*: its date counts as claimed, not
/// vouched for by the ledger.
pub const LATE_RECORD_DAYS: i64 = 7;

/// One custody event as an actor claims it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Producer-chosen, unique: the idempotency key.
    pub id: EventId,
    /// The acting organisation; must be the key that signed.
    pub actor: ActorKey,
    /// When the actor says it happened (the ledger adds `recorded_at`).
    pub occurred_at: Timestamp,
    /// Documents that back the event, by hash (the ledger never holds the
    /// documents); on `declared`, a free-text note is also accepted, as
    /// before evidence had a shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// What happened, by kind.
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Authority,
    Miner,
    Trader,
    Manufacturer,
    Regulator,
    /// A verification node (a G7 node such as the Antwerp Diamond Office):
    /// inspects shipments and attests what it found (`verified`).
    Verifier,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Authority => "authority",
            Role::Miner => "miner",
            Role::Trader => "trader",
            Role::Manufacturer => "manufacturer",
            Role::Regulator => "regulator",
            Role::Verifier => "verifier",
        }
    }
}

/// Rough until cut and polished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LotState {
    Rough,
    Polished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Process {
    Sorting,
    Planning,
    Sawing,
    Cleaving,
    Bruting,
    CuttingPolishing,
}

impl Process {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Process::Sorting => "sorting",
            Process::Planning => "planning",
            Process::Sawing => "sawing",
            Process::Cleaving => "cleaving",
            Process::Bruting => "bruting",
            Process::CuttingPolishing => "cutting_polishing",
        }
    }

    /// Cutting and polishing is the substantial transformation: its outputs
    /// are polished.
    pub fn output_state(self) -> LotState {
        match self {
            Process::CuttingPolishing => LotState::Polished,
            _ => LotState::Rough,
        }
    }
}

/// A new lot and its mass, as an output of split, merge or processing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Portion {
    pub lot: LotId,
    pub carats: Carats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// KP certificate number, prefixed with the exporting country's code.
    pub number: String,
    pub value_usd: Usd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountryShare {
    pub country: Country,
    pub share: Share,
}

/// The origin a `declared` lot claims: shares by country, or unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum DeclaredOrigin {
    Claimed(Vec<CountryShare>),
    #[serde(serialize_with = "unknown_str")]
    Unknown,
}

fn unknown_str<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("unknown")
}

impl<'de> Deserialize<'de> for DeclaredOrigin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Text(String),
            Shares(Vec<serde_json::Value>),
        }
        match Wire::deserialize(d).map_err(|_| de::Error::custom("origin must be \"unknown\" or a list of {country, share}"))? {
            Wire::Text(t) if t == "unknown" => Ok(DeclaredOrigin::Unknown),
            Wire::Text(t) => Err(de::Error::custom(format!("origin {:?} must be \"unknown\" or a list", truncate(&t)))),
            Wire::Shares(v) => {
                v.into_iter().map(|x| serde_json::from_value(x).map_err(de::Error::custom)).collect::<Result<_, _>>().map(DeclaredOrigin::Claimed)
            }
        }
    }
}

/// The kinds of DOMAIN.md and their fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum Body {
    #[serde(rename = "actor.registered")]
    ActorRegistered { subject: ActorKey, name: String, roles: Vec<Role>, country: Country },
    /// The authority withdraws an actor: its key may no longer sign or
    /// connect. What it holds stays on the ledger, frozen.
    #[serde(rename = "actor.revoked")]
    ActorRevoked { subject: ActorKey, reason: String },
    #[serde(rename = "mined")]
    Mined {
        lot: LotId,
        carats: Carats,
        country: Country,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mine: Option<String>,
    },
    #[serde(rename = "split")]
    Split { lot: LotId, into: Vec<Portion> },
    #[serde(rename = "merged")]
    Merged { lots: Vec<LotId>, into: Portion },
    #[serde(rename = "transferred")]
    Transferred { lots: Vec<LotId>, to: ActorKey },
    #[serde(rename = "exported")]
    Exported { lots: Vec<LotId>, to: ActorKey, to_country: Country, certificate: Certificate },
    #[serde(rename = "imported")]
    Imported {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lots: Option<Vec<LotId>>,
    },
    #[serde(rename = "processed")]
    Processed { lot: LotId, process: Process, country: Country, into: Vec<Portion> },
    #[serde(rename = "declared")]
    Declared { lot: LotId, carats: Carats, state: LotState, origin: DeclaredOrigin },
    #[serde(rename = "flagged")]
    Flagged { lot: LotId, reason: String },
    /// A verification node attests that it inspected a shipment (by its
    /// KP certificate number, or by lots) and weighed it.
    #[serde(rename = "verified")]
    Verified {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lots: Option<Vec<LotId>>,
        /// What the node weighed, all named lots together.
        carats: Carats,
        /// The node's own number for this verification; unique.
        verification: String,
        finding: Finding,
        /// Why it does not conform (required then).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// What a verification node found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    Conforms,
    DoesNotConform,
}

/// The kinds of document evidence may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentType {
    KpCertificate,
    Invoice,
    TransportDocument,
    LabReport,
    Scan,
    Declaration,
    VerificationReport,
}

/// One document, by its hash: `sha256` or `blake3` (64 lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(rename = "type")]
    pub kind: DocumentType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// The document's own number or name (an invoice number, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Most documents one event may name.
pub const MAX_DOCUMENTS: usize = 32;

/// What an event's `evidence` holds: documents by hash, or (on `declared`
/// only, its meaning in DOMAIN.md) a free-text note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Evidence {
    Documents(Vec<Document>),
    Note(String),
}

impl<'de> Deserialize<'de> for Evidence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(note) => Ok(Evidence::Note(note)),
            v @ serde_json::Value::Array(_) => serde_json::from_value(v).map(Evidence::Documents).map_err(|e| de::Error::custom(format!("evidence: {e}"))),
            _ => Err(de::Error::custom("evidence must be a list of documents {type, sha256 or blake3, reference}")),
        }
    }
}

impl Evidence {
    /// The documents, if any (a note names none).
    pub fn documents(&self) -> &[Document] {
        match self {
            Evidence::Documents(d) => d,
            Evidence::Note(_) => &[],
        }
    }
}

impl Body {
    /// Every kind's wire name.
    pub const KINDS: [&'static str; 12] = [
        "actor.registered",
        "actor.revoked",
        "mined",
        "split",
        "merged",
        "transferred",
        "exported",
        "imported",
        "processed",
        "declared",
        "flagged",
        "verified",
    ];

    /// The wire name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::ActorRegistered { .. } => "actor.registered",
            Body::ActorRevoked { .. } => "actor.revoked",
            Body::Mined { .. } => "mined",
            Body::Split { .. } => "split",
            Body::Merged { .. } => "merged",
            Body::Transferred { .. } => "transferred",
            Body::Exported { .. } => "exported",
            Body::Imported { .. } => "imported",
            Body::Processed { .. } => "processed",
            Body::Declared { .. } => "declared",
            Body::Flagged { .. } => "flagged",
            Body::Verified { .. } => "verified",
        }
    }

    /// Roles of which the signer needs at least one to emit this kind.
    pub fn allowed_roles(&self) -> &'static [Role] {
        use Role::*;
        match self {
            Body::ActorRegistered { .. } | Body::ActorRevoked { .. } => &[Authority],
            Body::Mined { .. } => &[Miner],
            Body::Split { .. } | Body::Merged { .. } | Body::Transferred { .. } | Body::Exported { .. } | Body::Imported { .. } => {
                &[Miner, Trader, Manufacturer]
            }
            Body::Processed { .. } => &[Manufacturer],
            Body::Declared { .. } => &[Trader, Manufacturer],
            Body::Flagged { .. } => &[Regulator],
            Body::Verified { .. } => &[Verifier],
        }
    }
}

impl Event {
    /// Parses and checks a new submission's payload: types, the structural
    /// rules that need no ledger state, and `occurred_at` against `now`.
    pub fn parse(payload: &[u8], now: Timestamp) -> Result<Event, Rejection> {
        let event = Event::admissible(payload)?;
        event.check_time(now)?;
        Ok(event)
    }

    /// Parses a new submission's payload and checks every rule that needs
    /// neither ledger state nor a clock. The ledger checks the time
    /// ([`Event::check_time`]) with the same clock reading it records.
    pub fn admissible(payload: &[u8]) -> Result<Event, Rejection> {
        unique_keys(payload)?;
        let event = Event::decode(payload)?;
        event.check_fields()?;
        Ok(event)
    }

    /// Reads a committed entry's payload: types only. History is never
    /// judged again: an entry the ledger admitted stays readable whatever
    /// rules a later version adds, so replay (ledger start, projections,
    /// `verify`, the auditor) applies its effect and judges nothing.
    pub fn decode(payload: &[u8]) -> Result<Event, Rejection> {
        Rejection::parse_json(payload, Code::MalformedEvent)
    }

    /// Best effort: the `id` of a payload that may not parse as an event,
    /// so that a rejection can still name what it refused.
    pub fn sniff_id(payload: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct IdOnly {
            id: String,
        }
        serde_json::from_slice::<IdOnly>(payload).ok().map(|x| truncate(&x.id))
    }

    /// Whether this event, recorded at `recorded_at`, is a late record
    /// (DOMAIN.md, "Dates the ledger can vouch for").
    pub fn is_late(&self, recorded_at: Timestamp) -> bool {
        recorded_at.as_datetime() - self.occurred_at.as_datetime() > chrono::TimeDelta::days(LATE_RECORD_DAYS)
    }

    /// `occurred_at` is neither before [`EARLIEST_DATE`] nor more than
    /// [`MAX_CLOCK_SKEW_SECS`] after `now`.
    pub fn check_time(&self, now: Timestamp) -> Result<(), Rejection> {
        let earliest: Timestamp = EARLIEST_DATE.parse().map_err(|e: String| Rejection::new(Code::InvalidTime, e))?;
        if self.occurred_at < earliest {
            return Err(Rejection::new(Code::InvalidTime, format!("occurred_at {} is before 1870-01-01; older stock enters as declared", self.occurred_at)));
        }
        let skew = self.occurred_at.as_datetime() - now.as_datetime();
        if skew.num_seconds() > MAX_CLOCK_SKEW_SECS {
            return Err(Rejection::new(Code::InvalidTime, format!("occurred_at {} is in the future (now {now})", self.occurred_at)));
        }
        Ok(())
    }

    fn check_fields(&self) -> Result<(), Rejection> {
        match &self.evidence {
            Some(Evidence::Note(note)) if matches!(self.body, Body::Declared { .. }) => text("evidence", note, false)?,
            Some(Evidence::Note(_)) => {
                return Err(field("evidence is a list of documents, each {type, sha256 or blake3, reference}; a free-text note is only for declared"))
            }
            Some(Evidence::Documents(docs)) => documents(docs)?,
            None => {}
        }
        match &self.body {
            Body::ActorRegistered { subject, name, roles, .. } => {
                if !subject.is_valid_point() {
                    return Err(Rejection::new(Code::InvalidId, format!("subject {subject} is not a usable ed25519 key")));
                }
                text("name", name, true)?;
                if roles.is_empty() {
                    return Err(field("roles must name at least one role"));
                }
                distinct("roles", roles.iter())?;
            }
            Body::Mined { mine, .. } => {
                if let Some(m) = mine {
                    text("mine", m, true)?;
                }
            }
            Body::Split { lot, into } | Body::Processed { lot, into, .. } => {
                list("into", into)?;
                distinct("into", std::iter::once(lot).chain(into.iter().map(|p| &p.lot)))?;
            }
            Body::Merged { lots, into } => {
                list("lots", lots)?;
                if lots.len() < 2 {
                    return Err(field("a merge takes at least two lots"));
                }
                distinct("lots", lots.iter().chain(std::iter::once(&into.lot)))?;
            }
            Body::Transferred { lots, .. } => {
                list("lots", lots)?;
                distinct("lots", lots.iter())?;
            }
            Body::Exported { lots, certificate, .. } => {
                list("lots", lots)?;
                distinct("lots", lots.iter())?;
                certificate_number(&certificate.number)?;
            }
            Body::Imported { certificate, lots } => match (certificate, lots) {
                (Some(c), None) => certificate_number(c)?,
                (None, Some(l)) => {
                    list("lots", l)?;
                    distinct("lots", l.iter())?;
                }
                _ => return Err(field("imported names either a certificate or lots, not both or neither")),
            },
            Body::Declared { origin, .. } => {
                if let DeclaredOrigin::Claimed(shares) = origin {
                    list("origin", shares)?;
                    distinct("origin", shares.iter().map(|s| s.country))?;
                    let sum: u32 = shares.iter().map(|s| s.share.ten_thousandths()).sum();
                    if sum != Share::WHOLE || shares.iter().any(|s| s.share.ten_thousandths() == 0) {
                        return Err(field("declared origin shares must be positive and sum to exactly 1.0000"));
                    }
                }
            }
            Body::Flagged { reason, .. } | Body::ActorRevoked { reason, .. } => text("reason", reason, false)?,
            Body::Verified { certificate, lots, verification, finding, reason, .. } => {
                match (certificate, lots) {
                    (Some(c), None) => certificate_number(c)?,
                    (None, Some(l)) => {
                        list("lots", l)?;
                        distinct("lots", l.iter())?;
                    }
                    _ => return Err(field("verified names either a certificate or lots, not both or neither")),
                }
                verification.parse::<LotId>().map_err(|e| field(format!("verification number: {e}")))?;
                match (finding, reason) {
                    (Finding::DoesNotConform, None) => return Err(field("a does_not_conform finding needs a reason")),
                    (_, Some(r)) => text("reason", r, true)?,
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Refuses a payload in which any object, at any depth, names a key twice.
/// JSON readers disagree on which of two equal keys wins, so the signed
/// bytes must not leave it open: `{"country":"RU",...,"country":"BW"}`
/// reads as Russian to one verifier and Botswanan to another.
fn unique_keys(payload: &[u8]) -> Result<(), Rejection> {
    struct Unique;
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
            d.deserialize_any(UniqueVisitor)
        }
    }
    struct UniqueVisitor;
    impl<'de> de::Visitor<'de> for UniqueVisitor {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(de::Error::custom(format!("key {:?} appears twice in one object", truncate(&key))));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
    serde_json::from_slice::<Unique>(payload).map(|_| ()).map_err(|e| Rejection::new(Code::MalformedEvent, e.to_string()))
}

fn field(message: impl Into<String>) -> Rejection {
    Rejection::new(Code::InvalidField, message)
}

fn list<T>(name: &str, items: &[T]) -> Result<(), Rejection> {
    if items.is_empty() {
        return Err(field(format!("{name} must not be empty")));
    }
    if items.len() > MAX_LOTS_PER_EVENT {
        return Err(field(format!("{name} has {} entries; at most {MAX_LOTS_PER_EVENT}", items.len())));
    }
    Ok(())
}

fn distinct<T: Eq + std::hash::Hash + std::fmt::Debug>(name: &str, items: impl Iterator<Item = T>) -> Result<(), Rejection> {
    let mut seen = HashSet::new();
    for item in items {
        if let Some(dup) = seen.replace(item) {
            return Err(field(format!("{name}: {dup:?} appears twice")));
        }
    }
    Ok(())
}

/// Free text: bounded, no control characters; names must not be blank.
fn text(name: &str, value: &str, not_blank: bool) -> Result<(), Rejection> {
    if value.chars().count() > MAX_TEXT {
        return Err(field(format!("{name} is longer than {MAX_TEXT} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(field(format!("{name} contains control characters")));
    }
    if not_blank && value.trim().is_empty() {
        return Err(field(format!("{name} must not be blank")));
    }
    Ok(())
}

/// Documents: bounded, each with exactly one well-formed hash.
fn documents(docs: &[Document]) -> Result<(), Rejection> {
    if docs.is_empty() || docs.len() > MAX_DOCUMENTS {
        return Err(field(format!("evidence names 1 to {MAX_DOCUMENTS} documents; this names {}", docs.len())));
    }
    distinct("evidence", docs.iter())?;
    for d in docs {
        let hash = match (&d.sha256, &d.blake3) {
            (Some(h), None) | (None, Some(h)) => h,
            _ => return Err(field("each evidence document gives exactly one hash: sha256 or blake3")),
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(field(format!("evidence hash {:?} is not 64 lowercase hex digits", truncate(hash))));
        }
        if let Some(r) = &d.reference {
            text("reference", r, true)?;
        }
    }
    Ok(())
}

/// KP certificate numbers follow the id rules, and start `CC-`.
fn certificate_number(n: &str) -> Result<(), Rejection> {
    n.parse::<LotId>().map_err(|e| field(format!("certificate number: {e}")))?;
    if n.len() < 4 || n.as_bytes()[2] != b'-' {
        return Err(Rejection::new(
            Code::CertificateCountry,
            format!("certificate number {:?} must start with the exporting country's code, as in RU-2024-0001", truncate(n)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn key() -> String {
        nkeys::KeyPair::new_user().public_key()
    }

    fn mined(carats: &str) -> String {
        format!(r#"{{"id":"e1","kind":"mined","actor":"{}","occurred_at":"2024-09-02T00:00:00Z","lot":"L1","carats":"{carats}","country":"RU"}}"#, key())
    }

    #[test]
    fn parses_worked_example_shapes() {
        let e = Event::parse(mined("1000.00").as_bytes(), now()).unwrap();
        assert_eq!(e.body.kind(), "mined");
        let round = serde_json::to_string(&e).unwrap();
        assert_eq!(Event::parse(round.as_bytes(), now()).unwrap(), e);
    }

    #[test]
    fn codes_from_types() {
        let cases = [
            (mined("1.001"), Code::InvalidCarats),
            (mined("1e3"), Code::InvalidCarats),
            (mined("0"), Code::InvalidCarats),
            (mined("1").replace("\"RU\"", "\"XX\""), Code::InvalidCountry),
            (mined("1").replace("\"L1\"", "\"L 1\""), Code::InvalidId),
            (mined("1").replace("2024-09-02T00:00:00Z", "yesterday"), Code::InvalidTime),
            (mined("1").replace("2024-09-02T00:00:00Z", "2027-01-01T00:00:00Z"), Code::InvalidTime),
            (mined("1").replace("2024-09-02T00:00:00Z", "1869-12-31T23:59:59Z"), Code::InvalidTime),
            (mined("1").replace("2024-09-02T00:00:00Z", "0001-01-01T00:00:00Z"), Code::InvalidTime),
            (mined("1").replace("\"mined\"", "\"stolen\""), Code::MalformedEvent),
            (mined("1").replace("\"country\"", "\"mine\":\"x\",\"extra\":1,\"country\""), Code::MalformedEvent),
            (mined("1").replace("\"lot\":\"L1\"", "\"lot\":\"L1\",\"lot\":\"L2\""), Code::MalformedEvent),
            (mined("1").replace("\"id\":\"e1\"", "\"id\":\"e1\",\"id\":\"e2\""), Code::MalformedEvent),
            (mined("1").replace("\"lot\":\"L1\"", "\"lot\":\"L1\",\"\\u006cot\":\"L2\""), Code::MalformedEvent),
            ("{".to_owned(), Code::MalformedEvent),
        ];
        for (payload, code) in cases {
            let got = Event::parse(payload.as_bytes(), now()).map(|_| ()).unwrap_err();
            assert_eq!(got.code, code, "{payload}: {got}");
        }
    }

    #[test]
    fn structural_rules() {
        let k = key();
        let base = format!(r#""id":"e","actor":"{k}","occurred_at":"2024-01-01T00:00:00Z""#);
        let cases = [
            (format!(r#"{{{base},"kind":"split","lot":"L1","into":[]}}"#), Code::InvalidField),
            (format!(r#"{{{base},"kind":"split","lot":"L1","into":[{{"lot":"L1","carats":"1"}}]}}"#), Code::InvalidField),
            (format!(r#"{{{base},"kind":"merged","lots":["A"],"into":{{"lot":"B","carats":"1"}}}}"#), Code::InvalidField),
            (format!(r#"{{{base},"kind":"imported"}}"#), Code::InvalidField),
            (
                format!(r#"{{{base},"kind":"exported","lots":["A"],"to":"{k}","to_country":"AE","certificate":{{"number":"2024-1","value_usd":"1"}}}}"#),
                Code::CertificateCountry,
            ),
            (
                format!(r#"{{{base},"kind":"declared","lot":"D","carats":"1","state":"rough","origin":[{{"country":"RU","share":"0.5000"}}]}}"#),
                Code::InvalidField,
            ),
            (format!(r#"{{{base},"kind":"declared","lot":"D","carats":"1","state":"rough","origin":"somewhere"}}"#), Code::MalformedEvent),
            // The last key would win in serde_json: 100 % BW, where a
            // first-wins reader of the signed bytes sees a Russian claim.
            (
                format!(r#"{{{base},"kind":"declared","lot":"D","carats":"1","state":"rough","origin":[{{"country":"RU","share":"1.0000","country":"BW"}}]}}"#),
                Code::MalformedEvent,
            ),
            (
                format!(
                    r#"{{{base},"kind":"exported","lots":["A"],"to":"{k}","to_country":"AE","certificate":{{"number":"AE-1","value_usd":"1","number":"AE-2"}}}}"#
                ),
                Code::MalformedEvent,
            ),
        ];
        for (payload, code) in cases {
            let got = Event::parse(payload.as_bytes(), now()).map(|_| ()).unwrap_err();
            assert_eq!(got.code, code, "{payload}: {got}");
        }
        let ok = format!(r#"{{{base},"kind":"declared","lot":"D","carats":"1","state":"rough","origin":"unknown"}}"#);
        assert!(matches!(Event::parse(ok.as_bytes(), now()).unwrap().body, Body::Declared { origin: DeclaredOrigin::Unknown, .. }));
    }
}
