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
//! [`MAX_REQUEST_SKEW_SECS`] of its time, and once: its header (which
//! holds its signature, over a time to the nanosecond) is its nonce, and
//! [`Replays`] remembers it for as long as it could be honoured.

use base64::Engine as _;

use crate::ids::Timestamp;

pub const REQUEST_HEADER: &str = "custody request v1";
/// How far a signed request's time may be from the gateway's clock.
pub const MAX_REQUEST_SKEW_SECS: i64 = 30;

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

/// Signed requests already honoured, each kept until it could no longer
/// be (its time plus [`MAX_REQUEST_SKEW_SECS`]), so that a captured
/// header cannot be sent again.
#[derive(Debug, Default)]
pub struct Replays {
    seen: std::collections::HashMap<String, i64>,
    /// When the expired are next swept out (as the map doubles).
    sweep_at: usize,
}

impl Replays {
    /// [`verify`], and refused if this header was honoured before.
    pub fn verify_once(&mut self, header: &str, method: &str, path: &str, now: Timestamp) -> Result<String, String> {
        let key = verify(header, method, path, now)?;
        let now_s = now.as_datetime().timestamp();
        if self.seen.len() >= self.sweep_at {
            self.seen.retain(|_, until| *until >= now_s);
            self.sweep_at = (self.seen.len() * 2).max(1_024);
        }
        // Valid until its own time plus the skew; never less than now plus it.
        let until = now_s + 2 * MAX_REQUEST_SKEW_SECS;
        if self.seen.insert(header.to_owned(), until).is_some() {
            return Err("this signed request was already used: sign each request anew".into());
        }
        Ok(key)
    }
}

/// What a person signs in with: the challenge the gateway issued, in the
/// text `custody session v1\n<challenge>\n`, signed (ed25519, standard
/// base64) by the actor's key in the browser, which never sends the key.
pub fn session_text(challenge: &str) -> String {
    format!("custody session v1\n{challenge}\n")
}

/// Whether `signature` is `key`'s over [`session_text`] of `challenge`.
pub fn verify_session(key: &str, challenge: &str, signature: &str) -> Result<(), String> {
    let sig = base64::engine::general_purpose::STANDARD.decode(signature).map_err(|_| "the signature is not base64")?;
    let public = nkeys::KeyPair::from_public_key(key).map_err(|_| "the key is not a public nkey")?;
    public.verify(session_text(challenge).as_bytes(), &sig).map_err(|_| "the signature does not verify".to_owned())
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

    #[test]
    fn a_signed_request_is_honoured_once_and_not_half_a_minute_off() {
        let k = nkeys::KeyPair::new_user();
        let now: Timestamp = "2026-12-02T00:00:00Z".parse().unwrap();
        let mut r = Replays::default();
        let h = sign(&k, "GET", "/v1/x", now).unwrap();
        assert_eq!(r.verify_once(&h, "GET", "/v1/x", now).unwrap(), k.public_key());
        assert!(r.verify_once(&h, "GET", "/v1/x", now).unwrap_err().contains("already used"));
        let ahead = sign(&k, "GET", "/v1/x", "2026-12-02T00:00:31Z".parse().unwrap()).unwrap();
        assert!(r.verify_once(&ahead, "GET", "/v1/x", now).is_err(), "31 s ahead");
        let near = sign(&k, "GET", "/v1/x", "2026-12-02T00:00:29Z".parse().unwrap()).unwrap();
        assert!(r.verify_once(&near, "GET", "/v1/x", now).is_ok());
    }
}
