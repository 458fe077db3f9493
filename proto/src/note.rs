//! The transparency-log ecosystem's formats (C2SP): keys as signed-note
//! verifier keys, note signature lines, and witness cosignatures
//! (`cosignature/v1`). Parsing a whole note is `signed_note`'s (Cloudflare's
//! port of Go's `sumdb/note`); what is here is the small part that names
//! custody's keys in those formats.
//!
//! Every custody key is an ed25519 nkey. In a note it is named and
//! identified as C2SP says: the key ID is `SHA-256(name ‖ "\n" ‖ type ‖
//! public key)[:4]`, with type `0x01` for a log's (the ledger's) signature
//! and `0x04` for a witness's cosignature, and the verifier key reads
//! `name+<key ID, hex>+<base64(type ‖ public key)>`.

use base64::Engine as _;
use ed25519_dalek::Verifier as _;

use crate::entry::Hash;

/// Signature type of a plain Ed25519 note signature (the log's).
pub const ED25519: u8 = 0x01;
/// Signature type of an Ed25519 `cosignature/v1` (a witness's).
pub const COSIGNATURE_V1: u8 = 0x04;
/// The em dash and space that open a signature line.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteKeyError {
    #[error("{0:?} is not a key: give NAME=KEY with an nkey (N…, U…) or a C2SP verifier key name+id+base64")]
    Malformed(String),
    #[error("{0:?} is not a valid note key name (non-empty, no spaces, no '+')")]
    BadName(String),
    #[error("the key id in {0:?} does not match its name and key")]
    WrongId(String),
    #[error("the verifier key {vkey:?} is of type {found:#04x}, not {wanted:#04x}")]
    WrongType { vkey: String, found: u8, wanted: u8 },
}

/// A named public key as C2SP notes know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteKey {
    pub name: String,
    /// [`ED25519`] or [`COSIGNATURE_V1`].
    pub kind: u8,
    pub public: [u8; 32],
}

impl NoteKey {
    /// A key named `name` whose public half is the nkey `nkey`.
    pub fn from_nkey(name: &str, kind: u8, nkey: &str) -> Result<NoteKey, NoteKeyError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(NoteKeyError::BadName(name.to_owned()));
        }
        let (_, public) = nkeys::from_public_key(nkey).map_err(|_| NoteKeyError::Malformed(nkey.to_owned()))?;
        Ok(NoteKey { name: name.to_owned(), kind, public })
    }

    /// Parses `NAME=NKEY` or a verifier key `name+id+base64(type ‖ key)`
    /// of type `kind`.
    pub fn parse(text: &str, kind: u8) -> Result<NoteKey, NoteKeyError> {
        if let Some((name, nkey)) = text.split_once('=').filter(|(_, k)| !k.contains('+')) {
            return NoteKey::from_nkey(name, kind, nkey);
        }
        let bad = || NoteKeyError::Malformed(text.to_owned());
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
        if !signed_note::is_key_name_valid(name) {
            return Err(NoteKeyError::BadName(name.to_owned()));
        }
        let raw = base64::engine::general_purpose::STANDARD.decode(key).map_err(|_| bad())?;
        let (&found, public) = raw.split_first().ok_or_else(bad)?;
        let public: [u8; 32] = public.try_into().map_err(|_| bad())?;
        if found != kind {
            return Err(NoteKeyError::WrongType { vkey: text.to_owned(), found, wanted: kind });
        }
        let k = NoteKey { name: name.to_owned(), kind, public };
        if id.len() != 8 || u32::from_str_radix(id, 16).ok() != Some(k.id()) {
            return Err(NoteKeyError::WrongId(text.to_owned()));
        }
        Ok(k)
    }

    /// `SHA-256(name ‖ "\n" ‖ type ‖ key)[:4]`, as a big-endian number.
    pub fn id(&self) -> u32 {
        let mut typed = Vec::with_capacity(33);
        typed.push(self.kind);
        typed.extend_from_slice(&self.public);
        signed_note::key_id(&self.name, &typed)
    }

    /// The verifier key, `name+id+base64(type ‖ key)`.
    pub fn vkey(&self) -> String {
        let mut typed = vec![self.kind];
        typed.extend_from_slice(&self.public);
        format!("{}+{:08x}+{}", self.name, self.id(), base64::engine::general_purpose::STANDARD.encode(typed))
    }

    /// Whether `signature` is this key's ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let (Ok(key), Ok(sig)) = (ed25519_dalek::VerifyingKey::from_bytes(&self.public), ed25519_dalek::Signature::from_slice(signature)) else {
            return false;
        };
        key.verify(message, &sig).is_ok()
    }

    /// A note signature line `— name base64(id ‖ blob)\n`.
    pub fn line(&self, blob: &[u8]) -> String {
        let mut raw = self.id().to_be_bytes().to_vec();
        raw.extend_from_slice(blob);
        format!("{SIGNATURE_PREFIX}{} {}\n", self.name, base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// What a witness signs: `cosignature/v1\ntime <secs>\n` and the
/// checkpoint's text.
pub fn cosigned_message(time: u64, checkpoint_text: &str) -> String {
    format!("cosignature/v1\ntime {time}\n{checkpoint_text}")
}

/// One signature line of a note, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub name: String,
    pub id: u32,
    /// What follows the key id: a signature, or a time and a signature.
    pub blob: Vec<u8>,
}

impl Line {
    /// Reads one signature line (`— name base64(id ‖ blob)`).
    pub fn parse(line: &str) -> Option<Line> {
        let sig = signed_note::Signature::from_bytes(line.as_bytes()).ok()?;
        Some(Line { name: sig.name().to_owned(), id: sig.id(), blob: sig.signature().to_vec() })
    }
}

/// A note split into its text and signature lines, syntax checked by
/// `signed_note` (at most 100 lines, one blank line before them, no
/// control characters).
pub fn split(note: &str) -> Option<(String, Vec<Line>)> {
    let parsed = signed_note::Note::from_bytes(note.as_bytes()).ok()?;
    let text = String::from_utf8(parsed.text().to_vec()).ok()?;
    let rest = note.strip_prefix(&text)?.strip_prefix('\n')?;
    let mut lines = Vec::new();
    for line in rest.lines() {
        lines.push(Line::parse(line)?);
    }
    Some((text, lines))
}

/// Most hashes an `add-checkpoint` consistency proof may have (log2 of
/// any real tree, twice).
const MAX_PROOF: usize = 128;

/// A tlog-witness `add-checkpoint` request: `old <size>`, the consistency proof's
/// hashes (base64, one per line), a blank line, the checkpoint note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old: u64,
    pub proof: Vec<Hash>,
    pub note: String,
}

impl AddCheckpoint {
    pub fn parse(body: &str) -> Result<AddCheckpoint, String> {
        let bad = |why: &str| why.to_owned();
        let (head, note) = body.split_once("\n\n").ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines.next().and_then(|l| l.strip_prefix("old ")).ok_or_else(|| bad("the first line is not \"old <size>\""))?;
        if old.len() > 1 && old.starts_with('0') {
            return Err(bad("the old size has a leading zero"));
        }
        let old: u64 = old.parse().map_err(|_| bad("the old size is not a number"))?;
        let mut proof = Vec::new();
        for l in lines {
            if proof.len() == MAX_PROOF {
                return Err(bad("too many proof hashes"));
            }
            let raw = base64::engine::general_purpose::STANDARD.decode(l).map_err(|_| bad("a proof line is not base64"))?;
            proof.push(Hash(raw.try_into().map_err(|_| bad("a proof hash is not 32 bytes"))?));
        }
        Ok(AddCheckpoint { old, proof, note: note.to_owned() })
    }

    /// The request's text, as a log sends it.
    pub fn to_text(&self) -> String {
        let mut out = format!("old {}\n", self.old);
        for h in &self.proof {
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(h.0));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.note);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_from_its_verifier_key_and_from_name_and_nkey() {
        let kp = nkeys::KeyPair::new_server();
        let k = NoteKey::from_nkey("witness.example/w1", COSIGNATURE_V1, &kp.public_key()).unwrap();
        assert_eq!(NoteKey::parse(&k.vkey(), COSIGNATURE_V1).unwrap(), k);
        assert_eq!(NoteKey::parse(&format!("witness.example/w1={}", kp.public_key()), COSIGNATURE_V1).unwrap(), k);
        assert!(matches!(NoteKey::parse(&k.vkey(), ED25519), Err(NoteKeyError::WrongType { .. })));
        let renamed = k.vkey().replacen("w1", "w2", 1);
        assert!(matches!(NoteKey::parse(&renamed, COSIGNATURE_V1), Err(NoteKeyError::WrongId(_))));
        assert!(NoteKey::parse("nonsense", ED25519).is_err());
        assert!(matches!(NoteKey::from_nkey("a b", ED25519, &kp.public_key()), Err(NoteKeyError::BadName(_))));
    }

    /// The example key and note of C2SP signed-note (and Go's sumdb/note).
    #[test]
    fn the_specification_example_verifies() {
        let k = NoteKey::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", ED25519).unwrap();
        let note = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let (text, lines) = split(note).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].name.as_str(), lines[0].id), ("PeterNeumann", k.id()));
        assert!(k.verifies(text.as_bytes(), &lines[0].blob));
        assert!(!k.verifies(b"another text\n", &lines[0].blob));
    }
}
