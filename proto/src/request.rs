//! Signed HTTP requests: how an actor shows the gateway who it is, so that
//! regulators and the parties to an event see its confidential fields
//! (`value_usd`, counterparties) and everyone else does not.
//!
//! Header: `Authorization: Custody <public key>:<time>:<signature>`, where
//! the signature (ed25519 by the key, standard base64) covers the text
//!
//! ```text
//! custody request v1
//! <METHOD>
//! <path and query, as sent>
//! <time, RFC 3339 UTC>
//! ```
//!
//! each line ending in `\n`. A request is honoured within
//! [`MAX_REQUEST_SKEW_SECS`] of its time.

use base64::Engine as _;

use crate::ids::Timestamp;

pub const REQUEST_HEADER: &str = "custody request v1";
/// How far a signed request's time may be from the gateway's clock.
pub const MAX_REQUEST_SKEW_SECS: i64 = 300;

fn text(method: &str, path: &str, time: &Timestamp) -> String {
    format!("{REQUEST_HEADER}\n{method}\n{path}\n{}\n", time.to_rfc3339())
}

/// The `Authorization` header value for a request by `key`.
pub fn sign(key: &nkeys::KeyPair, method: &str, path: &str, time: Timestamp) -> Result<String, String> {
    let sig = key.sign(text(method, path, &time).as_bytes()).map_err(|e| e.to_string())?;
    Ok(format!("Custody {}:{}:{}", key.public_key(), time.to_rfc3339(), base64::engine::general_purpose::STANDARD.encode(sig)))
}

/// The public key that signed this request, if the header is well formed,
/// fresh and its signature valid.
pub fn verify(header: &str, method: &str, path: &str, now: Timestamp) -> Result<String, String> {
    let rest = header.strip_prefix("Custody ").ok_or("the Authorization scheme is not Custody")?;
    let (key, rest) = rest.split_once(':').ok_or("expected Custody <key>:<time>:<signature>")?;
    let (time, sig) = rest.rsplit_once(':').ok_or("expected Custody <key>:<time>:<signature>")?;
    let time: Timestamp = time.parse().map_err(|e: String| format!("the request time: {e}"))?;
    let skew = (now.as_datetime() - time.as_datetime()).num_seconds().abs();
    if skew > MAX_REQUEST_SKEW_SECS {
        return Err(format!("the request was signed {skew} s away from now; at most {MAX_REQUEST_SKEW_SECS} s"));
    }
    let sig = base64::engine::general_purpose::STANDARD.decode(sig).map_err(|_| "the signature is not base64")?;
    let public = nkeys::KeyPair::from_public_key(key).map_err(|_| "the key is not a public nkey")?;
    public.verify(text(method, path, &time).as_bytes(), &sig).map_err(|_| "the signature does not verify")?;
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_for_its_path_and_time_only() {
        let k = nkeys::KeyPair::new_user();
        let t: Timestamp = "2026-11-27T00:00:00Z".parse().unwrap();
        let h = sign(&k, "GET", "/v1/ledger/entries/5", t).unwrap();
        assert_eq!(verify(&h, "GET", "/v1/ledger/entries/5", t).unwrap(), k.public_key());
        assert!(verify(&h, "GET", "/v1/ledger/entries/6", t).is_err(), "another path");
        let late: Timestamp = "2026-11-27T00:06:00Z".parse().unwrap();
        assert!(verify(&h, "GET", "/v1/ledger/entries/5", late).unwrap_err().contains("away from now"));
        let other = nkeys::KeyPair::new_user();
        let forged = h.replace(&k.public_key(), &other.public_key());
        assert!(verify(&forged, "GET", "/v1/ledger/entries/5", t).is_err(), "another key");
        assert!(verify("Bearer x", "GET", "/", t).is_err());
    }
}
