//! Validated names: event ids, lot ids, actor keys, countries and times.
//! Once one of these exists it is valid; the rest of the code never re-checks.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

use crate::rejection::{tagged, Code};

/// Longest id the contract allows, for events and lots alike.
pub const MAX_ID_LEN: usize = 64;

/// Ids are ASCII so that no look-alike or control character can make two
/// different ids print the same: letters, digits and `- _ . : /`, starting
/// with a letter or digit.
fn check_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(format!("id must be 1 to {MAX_ID_LEN} characters, got {}", s.chars().count()));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/');
    if let Some(c) = s.chars().find(|&c| !ok_char(c)) {
        return Err(format!("id {:?} contains {:?}; allowed are ASCII letters, digits and - _ . : /", s.escape_debug().to_string(), c));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("id {s:?} must start with a letter or digit"));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                check_id(s).map(|()| $name(s.to_owned()))
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(|e| de::Error::custom(tagged(Code::InvalidId, e)))
            }
        }
    };
}

id_type!(
    /// The producer-chosen event id: the idempotency key.
    EventId
);
id_type!(
    /// A lot or stone id: unique forever once created.
    LotId
);

/// An actor's public key: a NATS user nkey (`U...`). Parsing checks the
/// text (base32, checksum, user prefix) but not that the bytes are a curve
/// point: that costs a point decompression, paid once per signer by the
/// verifier's key cache, and for a new actor by `actor.registered`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorKey {
    /// The nkey text, as written.
    text: String,
    /// The ed25519 public key bytes it encodes.
    raw: [u8; 32],
}

impl ActorKey {
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// The raw ed25519 public key behind the nkey text.
    pub fn raw(&self) -> [u8; 32] {
        self.raw
    }
    /// Whether the key is a valid ed25519 point that could ever sign.
    pub fn is_valid_point(&self) -> bool {
        ed25519_dalek::VerifyingKey::from_bytes(&self.raw).is_ok_and(|k| !k.is_weak())
    }
}

impl std::str::FromStr for ActorKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match nkeys::from_public_key(s) {
            Ok((prefix, raw)) if nkeys::KeyPairType::from(prefix) == nkeys::KeyPairType::User => Ok(ActorKey { text: s.to_owned(), raw }),
            Ok(_) => Err(format!("{s:?} is an nkey but not a user key (U...)")),
            Err(_) => Err(format!("{:?} is not a user nkey (U...)", truncate(s))),
        }
    }
}

impl fmt::Display for ActorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for ActorKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ActorKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(|e| de::Error::custom(tagged(Code::InvalidId, e)))
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Country([u8; 2]);

impl Country {
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl std::str::FromStr for Country {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let known = s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()) && isocountry::CountryCode::for_alpha2(s).is_ok();
        if !known {
            return Err(format!("{:?} is not an ISO 3166-1 alpha-2 country code", truncate(s)));
        }
        let b = s.as_bytes();
        Ok(Country([b[0], b[1]]))
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Country {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(|e| de::Error::custom(tagged(Code::InvalidCountry, e)))
    }
}

/// An instant in UTC, written RFC 3339 with `Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(Utc::now())
    }
    pub fn from_datetime(t: DateTime<Utc>) -> Timestamp {
        Timestamp(t)
    }
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }
    pub fn to_rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

impl std::str::FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = DateTime::parse_from_rfc3339(s).map_err(|e| format!("{:?} is not an RFC 3339 time: {e}", truncate(s)))?;
        if t.offset().local_minus_utc() != 0 {
            return Err(format!("{s:?} is not in UTC; write it with Z"));
        }
        Ok(Timestamp(t.with_timezone(&Utc)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(|e| de::Error::custom(tagged(Code::InvalidTime, e)))
    }
}

/// Keeps hostile input out of error messages: at most 70 characters of it.
pub fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(70).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["L1", "S1", "lot-2024/0001", "a.b:c_d"] {
            assert!(ok.parse::<LotId>().is_ok(), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in ["", "-L1", "L 1", "L1\n", "L\u{0}1", "Lоt", "L\u{200b}1", long.as_str()] {
            assert!(bad.parse::<LotId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn countries() {
        assert_eq!("RU".parse::<Country>().unwrap().as_str(), "RU");
        for bad in ["ru", "XX", "RUS", "", "R"] {
            assert!(bad.parse::<Country>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_must_be_utc() {
        assert!("2024-09-02T10:00:00Z".parse::<Timestamp>().is_ok());
        assert!("2024-09-02T10:00:00+00:00".parse::<Timestamp>().is_ok());
        assert!("2024-09-02T10:00:00+02:00".parse::<Timestamp>().is_err());
        assert!("2024-09-02".parse::<Timestamp>().is_err());
    }

    #[test]
    fn actor_keys() {
        let user = nkeys::KeyPair::new_user().public_key();
        assert!(user.parse::<ActorKey>().is_ok());
        let account = nkeys::KeyPair::new_account().public_key();
        assert!(account.parse::<ActorKey>().is_err());
        assert!("Unot-a-key".parse::<ActorKey>().is_err());
    }
}
