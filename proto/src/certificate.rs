//! Origin certificates: an answer about one lot that carries its own
//! evidence. It holds the claims (origin, and the verdicts under named rule
//! sets on a date), the rule sets' text, every ledger entry of the lot's
//! history (the envelopes themselves), one signed checkpoint, and one
//! Merkle proof ([`crate::merkle::Tree::multi_inclusion`]) that every entry
//! is in the checkpoint's tree. Whoever holds the ledger's public key can
//! check it offline.
//!
//! This module checks what needs only cryptography: the checkpoint's
//! signature, the proof, each entry's hash and each envelope's signature
//! ([`check_evidence`]). Recomputing the answer from the entries is the
//! projection's pure code (`custody_projection::certificate`).

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::entry::{Entry, Hash};
use crate::envelope::{KeyCache, Opened};
use crate::ids::Timestamp;
use crate::lotmap::{MapProof, Shortfall};
use crate::merkle;
use std::collections::HashMap;

/// The `format` line of certificates that prove their history whole (a
/// lot-map proof of the lot, its ancestors and its signers).
pub const FORMAT: &str = "custody origin certificate v2";
/// The `format` line of certificates made before: still read, but they
/// cannot prove that nothing was left out.
pub const FORMAT_V1: &str = "custody origin certificate v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginCertificate {
    pub format: String,
    pub lot: String,
    /// The day the verdicts are for (YYYY-MM-DD).
    pub date: String,
    /// What the projection answered when the certificate was made.
    pub claims: Claims,
    /// The rule sets the verdicts are under, by name and full text.
    pub rules: Vec<RulesText>,
    pub checkpoint: Checkpoint,
    pub proof: Proof,
    /// Proofs, against the checkpoint's map root, of the history heads of
    /// the lot, each ancestor and each signer (one proof, or several when
    /// they are too many for one message): what shows that `entries` holds
    /// all of their history ([`crate::lotmap`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub map: Vec<MapProof>,
    /// Every entry the answer rests on, ascending by seq.
    pub entries: Vec<CertifiedEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The `origin` answer.
    pub origin: serde_json::Value,
    /// One `admissibility` answer per rule set, in [`OriginCertificate::rules`] order.
    pub admissibility: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesText {
    pub name: String,
    pub text: String,
}

/// A multi-inclusion proof of all the entries in a tree of `tree_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    pub tree_size: u64,
    /// Lowercase hex hashes, in the order [`merkle::verify_multi_inclusion`] uses them.
    pub hashes: Vec<String>,
}

/// One ledger entry: everything its chain hash covers. The envelope is the
/// exact text the ledger stored (envelopes are JSON, so UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifiedEntry {
    pub seq: u64,
    pub prev_hash: String,
    pub recorded_at: Timestamp,
    pub envelope: String,
}

impl CertifiedEntry {
    pub fn of(entry: &Entry) -> Result<CertifiedEntry, std::str::Utf8Error> {
        Ok(CertifiedEntry {
            seq: entry.seq,
            prev_hash: entry.prev_hash.to_hex(),
            recorded_at: entry.recorded_at,
            envelope: std::str::from_utf8(&entry.envelope)?.to_owned(),
        })
    }

    /// The entry it stands for, its hash recomputed; `None` when
    /// `prev_hash` is not a hash.
    pub fn entry(&self) -> Option<Entry> {
        let prev_hash = Hash::from_hex(&self.prev_hash)?;
        let envelope = self.envelope.as_bytes().to_vec();
        let hash = Entry::compute_hash(self.seq, &prev_hash, &self.recorded_at, &envelope);
        Some(Entry { seq: self.seq, prev_hash, recorded_at: self.recorded_at, envelope, hash })
    }
}

/// What a check of a certificate found wrong, by kind: each tampering is
/// told apart from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Not a certificate of a format this verifier reads.
    Format,
    /// The checkpoint is not signed by the ledger key the verifier trusts.
    CheckpointSignature,
    /// The checkpoint is not the one the proof was made for (an older or
    /// another checkpoint swapped in).
    CheckpointMismatch,
    /// The entries and the proof do not lead to the checkpoint's root: an
    /// entry or a proof hash was changed, or an entry is not in this ledger.
    Inclusion,
    /// An envelope's signature does not verify under its signer's key.
    EnvelopeSignature,
    /// An event whose signer no included registration admits: an entry
    /// from another ledger.
    ForeignEntry,
    /// The history is incomplete: something the lot's history acts on is
    /// not among the entries (an ancestor dropped).
    MissingAncestor,
    /// What the certificate claims differs from what its entries give.
    ClaimMismatch,
    /// A rule set's text is not the preset it names (or not the one the
    /// verifier insisted on), or its name imitates a preset's.
    RulesMismatch,
    /// An envelope signed by a key that is not its event's `actor`.
    KeyNotActor,
    /// A signer that was not registered when it signed, had been revoked
    /// by then, or whose roles do not allow what it signed.
    SignerNotAdmitted,
    /// A `mined` event whose country is not its miner's registered country.
    MinedCountry,
    /// The date asked about comes before the lot existed.
    DateBeforeLot,
    /// Entries about the lot, an ancestor or a signer are left out: the
    /// ledger's lot map holds more of their history than the certificate
    /// carries (a last export, a flag, a failed verification, a revocation).
    IncompleteHistory,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub check: Check,
    pub message: String,
}

impl Finding {
    pub fn new(check: Check, message: impl Into<String>) -> Finding {
        Finding { check, message: message.into() }
    }
}

/// Checks everything cryptographic against the ledger key `ledger_key` (an
/// `N...` nkey): the checkpoint's signature, that the proof is for its tree,
/// each entry's hash and the proof to the root, each envelope's signature.
/// Returns the entries (as the ledger holds them) and what was wrong.
pub fn check_evidence(cert: &OriginCertificate, ledger_key: &str) -> (Vec<Entry>, Vec<Finding>) {
    let mut findings = Vec::new();
    if cert.format != FORMAT && cert.format != FORMAT_V1 {
        findings.push(Finding::new(Check::Format, format!("format {:?} is not {FORMAT:?}", crate::ids::truncate(&cert.format))));
        return (Vec::new(), findings);
    }
    let root = match cert.checkpoint.verify(ledger_key) {
        Ok(root) => Some(root),
        Err(e) => {
            findings.push(Finding::new(Check::CheckpointSignature, e.to_string()));
            None
        }
    };
    if cert.proof.tree_size != cert.checkpoint.tree_size {
        findings.push(Finding::new(
            Check::CheckpointMismatch,
            format!(
                "the proof is for a tree of {} entries, the checkpoint signs a tree of {}: this is not the checkpoint the certificate was made against",
                cert.proof.tree_size, cert.checkpoint.tree_size
            ),
        ));
    }
    let mut entries = Vec::with_capacity(cert.entries.len());
    for e in &cert.entries {
        let Some(entry) = e.entry() else {
            findings.push(Finding::new(Check::Inclusion, format!("entry {}: prev_hash is not a 64-digit hex hash", e.seq)));
            continue;
        };
        if entries.last().is_some_and(|l: &Entry| l.seq >= e.seq) {
            findings.push(Finding::new(Check::Inclusion, format!("entry {} is out of order or appears twice", e.seq)));
            continue;
        }
        if e.seq == 0 || e.seq > cert.checkpoint.tree_size {
            let why = format!("entry {} is not in the checkpoint's tree of {} entries", e.seq, cert.checkpoint.tree_size);
            findings.push(Finding::new(Check::CheckpointMismatch, why));
            continue;
        }
        entries.push(entry);
    }
    if entries.is_empty() {
        findings.push(Finding::new(Check::MissingAncestor, "the certificate holds no entries"));
    }
    // Entries that follow each other must link, as on the ledger.
    for w in entries.windows(2) {
        if w[1].seq == w[0].seq + 1 && w[1].prev_hash != w[0].hash {
            findings.push(Finding::new(Check::Inclusion, format!("entry {} does not link to entry {}", w[1].seq, w[0].seq)));
        }
    }
    let hashes: Option<Vec<Hash>> = cert.proof.hashes.iter().map(|h| Hash::from_hex(h)).collect();
    match (root, hashes) {
        (_, None) => findings.push(Finding::new(Check::Inclusion, "a proof hash is not 64-digit hex")),
        (Some(root), Some(proof)) if cert.proof.tree_size == cert.checkpoint.tree_size && !entries.is_empty() => {
            let leaves: Vec<(u64, Hash)> = entries.iter().map(|e| (e.seq, e.hash)).collect();
            if let Err(e) = merkle::verify_multi_inclusion(cert.checkpoint.tree_hash(), cert.proof.tree_size, &leaves, &proof, &root) {
                let why = format!("the {} entries and the proof do not lead to the checkpoint's root ({e}): an entry or the proof was changed, or an entry is not from this ledger", leaves.len());
                findings.push(Finding::new(Check::Inclusion, why));
            }
        }
        _ => {}
    }
    let mut keys = KeyCache::default();
    let mut opened = Vec::with_capacity(entries.len());
    for e in &entries {
        match Opened::open_with(e.envelope.clone(), &mut keys) {
            Ok(o) => opened.push((e.seq, o)),
            Err(r) => findings.push(Finding::new(Check::EnvelopeSignature, format!("entry {}: {r}", e.seq))),
        }
    }
    let items: Vec<Opened> = opened.iter().map(|(_, o)| o.clone()).collect();
    for ((seq, _), result) in opened.iter().zip(Opened::verify_all(&items)) {
        if let Err(r) = result {
            findings.push(Finding::new(Check::EnvelopeSignature, format!("entry {seq}: {r}")));
        }
    }
    (entries, findings)
}

/// What happened to a certificate's subjects (the lot, its ancestors, its
/// signers) after its checkpoint, as a newer checkpoint's lot map tells:
/// `newest` and the certificate's checkpoint are both checked against
/// `ledger_key`, `consistency` must prove that the newer tree extends the
/// older, and `now` must prove every subject the certificate proves. Each
/// subject whose head moved is a [`Shortfall`] whose `held` is its head
/// now and `carried` its head then. The one check behind
/// `verify-certificate --online` and the page.
pub fn changes_since(
    cert: &OriginCertificate,
    ledger_key: &str,
    newest: &Checkpoint,
    consistency: &[Hash],
    now: &[MapProof],
) -> Result<Vec<Shortfall>, String> {
    let old_root = cert.checkpoint.verify(ledger_key).map_err(|e| format!("the certificate's checkpoint: {e}"))?;
    let new_root = newest.verify(ledger_key).map_err(|e| format!("the newest checkpoint: {e}"))?;
    let (from, to) = (cert.checkpoint.tree_size, newest.tree_size);
    if to < from {
        return Err(format!("the ledger now has {to} entries, fewer than the {from} the certificate stands on: another history"));
    }
    if cert.checkpoint.tree_hash() != newest.tree_hash() {
        return Err("the certificate was made before the ledger's checkpoints became C2SP notes over a SHA-256 tree, so no consistency proof joins them: ask for a new certificate".into());
    }
    if from > 0 {
        merkle::verify_consistency(newest.tree_hash(), from, to, &old_root, &new_root, consistency)
            .map_err(|e| format!("the newest checkpoint does not extend the certificate's ({e}): the ledger shows another history"))?;
    }
    let root = |c: &Checkpoint| c.map_root_hash().ok().flatten().ok_or_else(|| format!("the checkpoint of {} entries signs no lot map", c.tree_size));
    let (then_root, now_root) = (root(&cert.checkpoint)?, root(newest)?);
    let mut then = HashMap::new();
    for p in &cert.map {
        then.extend(p.verify(&then_root).map_err(|e| format!("the certificate's map proof: {e}"))?);
    }
    let mut heads = HashMap::new();
    for p in now {
        heads.extend(p.verify(&now_root).map_err(|e| format!("the newest map proof: {e}"))?);
    }
    let mut changed = Vec::new();
    for subject in cert.map.iter().flat_map(|p| &p.subjects) {
        let key = subject.key();
        let Some(held) = heads.get(&key) else { return Err(format!("the newest map proof leaves out {subject:?}")) };
        let carried = then.get(&key).copied().flatten();
        if *held != carried {
            changed.push(Shortfall { subject: subject.clone(), held: *held, carried });
        }
    }
    Ok(changed)
}

/// Seqs as inclusive ranges, for requests that name many entries.
pub fn ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(s) => last.1 = s,
            _ => out.push((s, s)),
        }
    }
    out
}
