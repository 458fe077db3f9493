//! Why the ledger refused a submission: a stable machine-readable code and a
//! sentence for people. Codes are public contract; never rename one.

use std::fmt;

/// Every reason a submission can be refused. `as_str` is the wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Bytes are not a DSSE envelope (bad JSON, bad base64, missing fields).
    MalformedEnvelope,
    /// Envelope larger than the ledger accepts.
    EnvelopeTooLarge,
    /// `payloadType` is not `application/vnd.custody.event+json`.
    WrongPayloadType,
    /// Not exactly one signature.
    UnsupportedSignatures,
    /// The signature does not verify over the PAE of the payload.
    BadSignature,
    /// The payload is not a well-formed event of a known kind.
    MalformedEvent,
    /// An identifier (event id, lot id) breaks the id rules.
    InvalidId,
    /// A carats string breaks the unit rules.
    InvalidCarats,
    /// Not an ISO 3166-1 alpha-2 country.
    InvalidCountry,
    /// `occurred_at` is not RFC 3339 UTC, lies in the future, or before
    /// 1870-01-01.
    InvalidTime,
    /// Some other field is out of range (empty list, duplicates, too long).
    InvalidField,
    /// `actor` is not the key that signed.
    SignerMismatch,
    /// The same event id was already used for a different event.
    IdConflict,
    /// The signer is not a registered actor.
    UnknownActor,
    /// The signer's roles do not allow this kind of event.
    RoleNotAllowed,
    /// `actor.registered` for a key that is already registered.
    ActorExists,
    /// The event names a lot the ledger has never seen.
    UnknownLot,
    /// The lot was already consumed by a split, merge or processing.
    LotConsumed,
    /// The lot is in transit between an export and its import.
    LotInTransit,
    /// The signer does not hold the lot.
    NotHolder,
    /// A new lot id that already exists: lot ids are unique forever.
    LotExists,
    /// Output carats of a split or merge do not equal the input exactly.
    CaratsMismatch,
    /// Processing outputs weigh more than the input.
    CaratsCreated,
    /// Merge of rough with polished, or a rough-only rule broken.
    StateMismatch,
    /// A country named in the event is not the one the rules demand.
    WrongCountry,
    /// A KP certificate number already used.
    CertificateReused,
    /// A KP certificate not prefixed with the exporting country's code.
    CertificateCountry,
    /// `imported` names a certificate the ledger has not seen in transit.
    UnknownCertificate,
    /// `imported` by someone who is not the consignee.
    NotConsignee,
    /// Signed by an actor the authority has revoked, or revoking one twice.
    ActorRevoked,
    /// Submitted on another actor's subject (`custody.submit.<key>`): the
    /// signer must be the actor the subject names.
    SubjectMismatch,
    /// `occurred_at` is before the latest event of a lot the event acts on
    /// (exported before it was mined, say).
    PredatesLot,
}

impl Code {
    pub const ALL: [Code; 32] = [
        Code::MalformedEnvelope,
        Code::EnvelopeTooLarge,
        Code::WrongPayloadType,
        Code::UnsupportedSignatures,
        Code::BadSignature,
        Code::MalformedEvent,
        Code::InvalidId,
        Code::InvalidCarats,
        Code::InvalidCountry,
        Code::InvalidTime,
        Code::InvalidField,
        Code::SignerMismatch,
        Code::IdConflict,
        Code::UnknownActor,
        Code::RoleNotAllowed,
        Code::ActorExists,
        Code::UnknownLot,
        Code::LotConsumed,
        Code::LotInTransit,
        Code::NotHolder,
        Code::LotExists,
        Code::CaratsMismatch,
        Code::CaratsCreated,
        Code::StateMismatch,
        Code::WrongCountry,
        Code::CertificateReused,
        Code::CertificateCountry,
        Code::UnknownCertificate,
        Code::NotConsignee,
        Code::ActorRevoked,
        Code::SubjectMismatch,
        Code::PredatesLot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::MalformedEnvelope => "malformed_envelope",
            Code::EnvelopeTooLarge => "envelope_too_large",
            Code::WrongPayloadType => "wrong_payload_type",
            Code::UnsupportedSignatures => "unsupported_signatures",
            Code::BadSignature => "bad_signature",
            Code::MalformedEvent => "malformed_event",
            Code::InvalidId => "invalid_id",
            Code::InvalidCarats => "invalid_carats",
            Code::InvalidCountry => "invalid_country",
            Code::InvalidTime => "invalid_time",
            Code::InvalidField => "invalid_field",
            Code::SignerMismatch => "signer_mismatch",
            Code::IdConflict => "id_conflict",
            Code::UnknownActor => "unknown_actor",
            Code::RoleNotAllowed => "role_not_allowed",
            Code::ActorExists => "actor_exists",
            Code::UnknownLot => "unknown_lot",
            Code::LotConsumed => "lot_consumed",
            Code::LotInTransit => "lot_in_transit",
            Code::NotHolder => "not_holder",
            Code::LotExists => "lot_exists",
            Code::CaratsMismatch => "carats_mismatch",
            Code::CaratsCreated => "carats_created",
            Code::StateMismatch => "state_mismatch",
            Code::WrongCountry => "wrong_country",
            Code::CertificateReused => "certificate_reused",
            Code::CertificateCountry => "certificate_country",
            Code::UnknownCertificate => "unknown_certificate",
            Code::NotConsignee => "not_consignee",
            Code::ActorRevoked => "actor_revoked",
            Code::SubjectMismatch => "subject_mismatch",
            Code::PredatesLot => "predates_lot",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the code callers match on and the message people read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: Code,
    pub message: String,
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into() }
    }
}

/// Type-level validation inside serde can only return a string; it prefixes
/// the string with `[code]` so that [`Rejection::from_json`] can recover the
/// precise code instead of a generic `malformed_event`.
pub(crate) fn tagged(code: Code, message: impl fmt::Display) -> String {
    format!("[{code}] {message}")
}

impl Rejection {
    /// Maps a serde_json failure on a payload to a rejection, recovering the
    /// code a validated type tagged its message with.
    pub(crate) fn from_json(err: &serde_json::Error, fallback: Code) -> Rejection {
        let text = err.to_string();
        if let Some(rest) = text.strip_prefix('[') {
            if let Some((code, message)) = rest.split_once("] ") {
                if let Some(code) = Code::ALL.into_iter().find(|c| c.as_str() == code) {
                    return Rejection::new(code, message.to_owned());
                }
            }
        }
        Rejection::new(fallback, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(s.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'), "{s}");
        }
    }
}
