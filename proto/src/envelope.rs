//! DSSE envelopes: pre-authentication encoding, signing with an nkey, and
//! opening a submission into something whose signature can be checked, one
//! at a time or in batches.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature as EdSignature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ids::{truncate, ActorKey};
use crate::rejection::{Code, Rejection};

/// The only payload type the ledger accepts.
pub const PAYLOAD_TYPE: &str = "application/vnd.custody.event+json";
/// Largest envelope, in bytes, the ledger accepts. Keeps every entry small
/// enough to stay inline in storage and in one NATS message.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// The DSSE envelope as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 (standard, padded) of the event JSON.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// The signer's user nkey (`U...`).
    pub keyid: String,
    /// Base64 of the ed25519 signature over the PAE.
    pub sig: String,
}

/// DSSE pre-authentication encoding:
/// `"DSSEv1" SP len(type) SP type SP len(payload) SP payload`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out
}

#[derive(Debug, thiserror::Error)]
#[error("cannot sign with this key: {0}")]
pub struct SignError(String);

/// Signs an event payload with an actor's key and returns the envelope JSON.
pub fn sign(key: &nkeys::KeyPair, payload: &[u8]) -> Result<Vec<u8>, SignError> {
    let sig = key.sign(&pae(PAYLOAD_TYPE, payload)).map_err(|e| SignError(e.to_string()))?;
    let env = Envelope {
        payload_type: PAYLOAD_TYPE.to_owned(),
        payload: B64.encode(payload),
        signatures: vec![EnvelopeSignature { keyid: key.public_key(), sig: B64.encode(sig) }],
    };
    serde_json::to_vec(&env).map_err(|e| SignError(e.to_string()))
}

/// Decompressed public keys by their bytes, each with whether it is weak
/// (of small order, which batch verification would accept). Decompressing
/// a point costs about as much as a third of a verification; actors are
/// few and sign many events, so a verifier keeps one of these and pays it
/// once per key.
#[derive(Default)]
pub struct KeyCache(HashMap<[u8; 32], (VerifyingKey, bool)>);

impl KeyCache {
    fn key(&mut self, raw: [u8; 32]) -> Result<(VerifyingKey, bool), Rejection> {
        if let Some(k) = self.0.get(&raw) {
            return Ok(*k);
        }
        let k = VerifyingKey::from_bytes(&raw).map_err(|_| Rejection::new(Code::BadSignature, "keyid is not a valid ed25519 point"))?;
        if self.0.len() >= 100_000 {
            self.0.clear(); // bounded: a flood of fresh keys cannot grow it
        }
        let known = (k, k.is_weak());
        self.0.insert(raw, known);
        Ok(known)
    }
}

/// A submission whose envelope is well formed, with its signature not yet
/// checked. `raw` is the exact bytes received: they are what the ledger stores.
#[derive(Debug, Clone)]
pub struct Opened {
    pub raw: Vec<u8>,
    pub payload: Vec<u8>,
    pub signer: ActorKey,
    key: VerifyingKey,
    /// The key is of small order: batch verification would accept what
    /// strict verification refuses.
    weak: bool,
    sig: EdSignature,
}

impl Opened {
    /// Checks the envelope's shape; not its signature.
    pub fn open(raw: Vec<u8>) -> Result<Opened, Rejection> {
        Opened::open_with(raw, &mut KeyCache::default())
    }

    /// [`Opened::open`], reusing decompressed keys.
    pub fn open_with(raw: Vec<u8>, keys: &mut KeyCache) -> Result<Opened, Rejection> {
        if raw.len() > MAX_ENVELOPE_BYTES {
            return Err(Rejection::new(Code::EnvelopeTooLarge, format!("envelope is {} bytes; at most {MAX_ENVELOPE_BYTES}", raw.len())));
        }
        let env: Envelope = serde_json::from_slice(&raw).map_err(|e| Rejection::new(Code::MalformedEnvelope, format!("not a DSSE envelope: {e}")))?;
        if env.payload_type != PAYLOAD_TYPE {
            return Err(Rejection::new(Code::WrongPayloadType, format!("payloadType is {:?}; expected {PAYLOAD_TYPE:?}", truncate(&env.payload_type))));
        }
        let [s] = env.signatures.as_slice() else {
            return Err(Rejection::new(
                Code::UnsupportedSignatures,
                format!("an event carries exactly one signature, its actor's; found {}", env.signatures.len()),
            ));
        };
        let signer: ActorKey = s.keyid.parse().map_err(|e| Rejection::new(Code::BadSignature, format!("keyid: {e}")))?;
        let payload = B64.decode(&env.payload).map_err(|e| Rejection::new(Code::MalformedEnvelope, format!("payload is not base64: {e}")))?;
        let sig_bytes = B64.decode(&s.sig).map_err(|e| Rejection::new(Code::BadSignature, format!("sig is not base64: {e}")))?;
        let sig = EdSignature::from_slice(&sig_bytes).map_err(|_| Rejection::new(Code::BadSignature, "sig is not a 64-byte ed25519 signature"))?;
        let (key, weak) = keys.key(signer.raw())?;
        Ok(Opened { raw, payload, signer, key, weak, sig })
    }

    /// The payload of an envelope already in the ledger, without the
    /// signature work: for followers that trust the chain (projections).
    /// Reads the payload in place and skips the rest (the ledger checked
    /// the whole envelope when it admitted it): a replay opens every one.
    pub fn payload_of(raw: &[u8]) -> Result<Vec<u8>, Rejection> {
        #[derive(Deserialize)]
        struct PayloadOnly<'a> {
            #[serde(borrow)]
            payload: std::borrow::Cow<'a, str>,
        }
        let env: PayloadOnly = serde_json::from_slice(raw).map_err(|e| Rejection::new(Code::MalformedEnvelope, format!("not a DSSE envelope: {e}")))?;
        B64.decode(env.payload.as_bytes()).map_err(|e| Rejection::new(Code::MalformedEnvelope, format!("payload is not base64: {e}")))
    }

    /// Verifies this one signature.
    pub fn verify(&self) -> Result<(), Rejection> {
        self.key.verify_strict(&pae(PAYLOAD_TYPE, &self.payload), &self.sig).map_err(|_| bad_signature(&self.signer))
    }

    /// Verifies many signatures; one result per item, in order, on every
    /// core: the items are cut into one batch per core (of at least
    /// [`MIN_PER_THREAD`]), each verified on a thread of its own. A start, a
    /// standby's catching up, a recovery and an audit verify whole
    /// histories this way.
    pub fn verify_all(items: &[Opened]) -> Vec<Result<(), Rejection>> {
        Opened::verify_all_on(items, cores())
    }

    /// [`Opened::verify_all`] on at most `threads` threads.
    pub fn verify_all_on(items: &[Opened], threads: usize) -> Vec<Result<(), Rejection>> {
        let threads = threads.min(items.len() / MIN_PER_THREAD).max(1);
        if threads == 1 {
            return Opened::verify_batch(items);
        }
        let per = items.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = items.chunks(per).map(|part| s.spawn(move || Opened::verify_batch(part))).collect();
            // A verifier that panicked is a bug, not an input: passed on.
            parts.into_iter().flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    }

    /// One batch: a batch that verifies as a whole costs about half of
    /// one-by-one; a batch with a bad signature in it falls back to
    /// one-by-one to find it.
    fn verify_batch(items: &[Opened]) -> Vec<Result<(), Rejection>> {
        let messages: Vec<Vec<u8>> = items.iter().map(|o| pae(PAYLOAD_TYPE, &o.payload)).collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let sigs: Vec<EdSignature> = items.iter().map(|o| o.sig).collect();
        let keys: Vec<VerifyingKey> = items.iter().map(|o| o.key).collect();
        // Batch verification accepts what strict verification may refuse
        // (small-order keys): a batch with a weak key in it is verified
        // one by one.
        if !items.is_empty() && items.iter().all(|o| !o.weak) && ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok() {
            return items.iter().map(|_| Ok(())).collect();
        }
        items.iter().map(Opened::verify).collect()
    }
}

/// Fewest signatures worth a thread of their own (a thread costs tens of
/// microseconds; a signature about 30).
pub const MIN_PER_THREAD: usize = 256;

/// The cores this process may use.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

fn bad_signature(signer: &ActorKey) -> Rejection {
    Rejection::new(Code::BadSignature, format!("signature does not verify for keyid {signer}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_many_threads_every_verdict_is_where_its_item_is() {
        let kp = nkeys::KeyPair::new_user();
        let good = |i: usize| Opened::open(sign(&kp, format!("{{\"n\":{i}}}").as_bytes()).unwrap()).unwrap();
        let mut items: Vec<Opened> = (0..4 * MIN_PER_THREAD + 7).map(good).collect();
        // Two forged ones, in different threads' parts.
        for at in [5, 3 * MIN_PER_THREAD + 1] {
            items[at].payload = b"{\"n\":-1}".to_vec();
        }
        for threads in [1, 2, 3, 4, 16] {
            let verdicts = Opened::verify_all_on(&items, threads);
            assert_eq!(verdicts.len(), items.len());
            let bad: Vec<usize> = verdicts.iter().enumerate().filter(|(_, v)| v.is_err()).map(|(i, _)| i).collect();
            assert_eq!(bad, [5, 3 * MIN_PER_THREAD + 1], "on {threads} threads");
        }
    }

    #[test]
    fn a_small_order_key_is_refused_even_where_batch_verification_passes() {
        // The identity point as a key, and a "signature" with R = B and
        // s = 1: [s]B = R + [k]A holds for every message, so batch
        // verification (which accepts small-order keys) passes it; strict
        // verification refuses it. One of these in a batch must not pass.
        let identity = {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        };
        let (key, weak) = KeyCache::default().key(identity).unwrap();
        assert!(weak, "the identity point is of small order");
        let mut sig = [0x66u8; 64];
        sig[0] = 0x58; // the base point, compressed
        sig[32..].copy_from_slice(&{
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        });
        let sig = EdSignature::from_bytes(&sig);
        let payload = br#"{"id":"forged"}"#.to_vec();
        let message = pae(PAYLOAD_TYPE, &payload);
        assert!(ed25519_dalek::verify_batch(&[message.as_slice()], &[sig], &[key]).is_ok(), "batch verification alone passes it");
        let kp = nkeys::KeyPair::new_user();
        let good = Opened::open(sign(&kp, b"{\"n\":1}").unwrap()).unwrap();
        let forged = Opened { raw: Vec::new(), payload, signer: kp.public_key().parse().unwrap(), key, weak, sig };
        let verdicts = Opened::verify_all(&[good.clone(), forged, good]);
        assert!(verdicts[0].is_ok() && verdicts[2].is_ok());
        assert_eq!(verdicts[1].as_ref().unwrap_err().code, Code::BadSignature);
    }

    #[test]
    fn pae_matches_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(pae("http://example.com/HelloWorld", b"hello world"), b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec());
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let kp = nkeys::KeyPair::new_user();
        let env = sign(&kp, br#"{"id":"x"}"#).unwrap();
        let opened = Opened::open(env.clone()).unwrap();
        assert_eq!(opened.signer.as_str(), kp.public_key());
        opened.verify().unwrap();
        let mut e: Envelope = serde_json::from_slice(&env).unwrap();
        e.payload = B64.encode(br#"{"id":"y"}"#);
        let forged = Opened::open(serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(forged.verify().unwrap_err().code, Code::BadSignature);
        let results = Opened::verify_all(&[opened.clone(), forged, opened]);
        assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
    }

    #[test]
    fn shape_errors() {
        let kp = nkeys::KeyPair::new_user();
        let env: Envelope = serde_json::from_slice(&sign(&kp, b"{}").unwrap()).unwrap();
        let with = |f: &dyn Fn(&mut Envelope)| {
            let mut e = env.clone();
            f(&mut e);
            Opened::open(serde_json::to_vec(&e).unwrap()).map(|_| ()).unwrap_err().code
        };
        assert_eq!(with(&|e| e.payload_type = "application/json".into()), Code::WrongPayloadType);
        assert_eq!(with(&|e| e.signatures.clear()), Code::UnsupportedSignatures);
        assert_eq!(with(&|e| e.payload = "***".into()), Code::MalformedEnvelope);
        assert_eq!(with(&|e| e.signatures[0].keyid = "Ubogus".into()), Code::BadSignature);
        assert_eq!(Opened::open(b"not json".to_vec()).unwrap_err().code, Code::MalformedEnvelope);
        assert_eq!(Opened::open(vec![b' '; MAX_ENVELOPE_BYTES + 1]).unwrap_err().code, Code::EnvelopeTooLarge);
    }
}
