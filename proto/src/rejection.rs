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
    /// A verification number (a node's stamp on a shipment) already used.
    VerificationReused,
    /// A batch submission (`Custody-Batch: ndjson`) of more envelopes than
    /// the ledger takes in one request, or in an unknown batch format:
    /// nothing in it was looked at.
    BatchTooLarge,
    /// The actor sent more than its quota allows (a rate with a burst):
    /// nothing in the submission was looked at; send it again after
    /// `retry_after_ms`.
    RateLimited,
    /// A verification node inspecting goods it holds itself, or that are
    /// on their way to it: no one vouches for their own goods.
    SelfVerification,
}

impl Code {
    pub const ALL: [Code; 36] = [
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
        Code::VerificationReused,
        Code::BatchTooLarge,
        Code::RateLimited,
        Code::SelfVerification,
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
            Code::VerificationReused => "verification_reused",
            Code::BatchTooLarge => "batch_too_large",
            Code::RateLimited => "rate_limited",
            Code::SelfVerification => "self_verification",
        }
    }
}

impl std::str::FromStr for Code {
    type Err = String;
    fn from_str(s: &str) -> Result<Code, String> {
        Code::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| format!("{s:?} is not a rejection code"))
    }
}

/// On the wire: the snake_case name.
impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Code, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `code == "lot_consumed"`, for callers that hold the wire name.
impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
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
    /// When to send again (`rate_limited` only).
    pub retry_after_ms: Option<u64>,
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into(), retry_after_ms: None }
    }

    /// `rate_limited`: send again after `retry_after`.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX).max(1);
        Rejection { code: Code::RateLimited, message: message.into(), retry_after_ms: Some(ms) }
    }
}

thread_local! {
    /// The code of the validated type whose parse failed last on this
    /// thread, while [`Rejection::parse_json`] runs.
    static FAILED: std::cell::Cell<Option<Code>> = const { std::cell::Cell::new(None) };
}

/// Type-level validation inside serde can only return an error message;
/// a validated type also records its code here, so that
/// [`Rejection::parse_json`] can report the precise code (a value, never
/// read back out of the message) instead of a generic `malformed_event`.
pub(crate) fn tagged(code: Code, message: impl fmt::Display) -> String {
    FAILED.with(|f| f.set(Some(code)));
    message.to_string()
}

impl Rejection {
    /// Parses JSON into `T`; a failure is refused with the code of the
    /// validated type that failed, or `fallback` (bad JSON, a missing or
    /// unknown field, a wrong type).
    pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], fallback: Code) -> Result<T, Rejection> {
        FAILED.with(|f| f.set(None));
        let parsed = serde_json::from_slice(bytes);
        // Taken either way: a failure inside an alternative serde went on
        // to accept must not name the next parse's failure.
        let failed = FAILED.with(|f| f.take());
        parsed.map_err(|e| Rejection::new(failed.unwrap_or(fallback), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_failure_names_the_validated_type_that_failed() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[allow(dead_code)]
            carats: crate::Carats,
        }
        let bad = Rejection::parse_json::<T>(br#"{"carats": "1.001"}"#, Code::MalformedEvent).unwrap_err();
        assert_eq!(bad.code, Code::InvalidCarats);
        assert!(bad.message.contains("1.001") && !bad.message.starts_with('['), "{}", bad.message);
        // The next failure is judged on its own.
        let missing = Rejection::parse_json::<T>(br#"{}"#, Code::MalformedEvent).unwrap_err();
        assert_eq!(missing.code, Code::MalformedEvent);
        assert!(Rejection::parse_json::<T>(br#"{"carats": "1.00"}"#, Code::MalformedEvent).is_ok());
    }

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
