//! Origin certificates, the projection's half: which entries a lot's answer
//! rests on ([`history`]), and the offline check ([`verify`]) that
//! recomputes the answer from a certificate's entries alone, with the same
//! pure code the projection answers with ([`crate::view`], [`crate::rules`]).
//! The cryptographic half (checkpoint, proof, signatures) is
//! [`custody_proto::certificate`].

use std::collections::{BTreeSet, HashSet};

use chrono::NaiveDate;
use custody_proto::certificate::{check_evidence, Check, Claims, Finding, OriginCertificate};
use custody_proto::{Body, Event, Opened};
use serde::Serialize;

use crate::rules::{RuleSet, PRESETS};
use crate::view::{self, Lot, State};

/// The lot and every ancestor, by id.
fn lineage<'a>(state: &'a State, lot: &'a Lot) -> Vec<&'a Lot> {
    let mut seen = HashSet::new();
    let mut todo = vec![lot];
    let mut out = Vec::new();
    while let Some(l) = todo.pop() {
        if !seen.insert(l.lot.as_str()) {
            continue;
        }
        out.push(l);
        todo.extend(l.parents.iter().filter_map(|p| state.lots.get(p).map(|b| &**b)));
    }
    out
}

/// The seqs of every entry a lot's answer rests on: what made it and each
/// ancestor, and every step and flag on any of them. (The registrations of
/// their signers are added by whoever reads the entries.)
pub fn history(state: &State, lot: &Lot) -> Vec<u64> {
    let mut seqs = BTreeSet::new();
    for l in lineage(state, lot) {
        seqs.insert(l.created.seq);
        seqs.extend(l.path.iter().map(|s| s.seq));
        seqs.extend(l.transformations.iter().map(|s| s.seq));
        seqs.extend(l.own_flags.iter().map(|f| f.0));
    }
    seqs.into_iter().collect()
}

/// What a check of a certificate found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when nothing was found wrong: every entry is in the ledger
    /// under the checkpoint, signed by its actor, the history is complete,
    /// and the claims are what the entries give.
    pub valid: bool,
    pub lot: String,
    pub date: String,
    pub findings: Vec<Finding>,
    /// The answers recomputed from the certificate's entries alone.
    pub recomputed: Option<Claims>,
    pub checkpoint: CheckpointSeen,
    pub entries: usize,
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointSeen {
    pub tree_size: u64,
    pub root: String,
    pub time: String,
}

/// Checks a certificate with only the ledger's public key (`N...`), then
/// recomputes its answers from its entries alone. `insist`: rule sets the
/// verifier names itself (preset names or TOML); then the certificate's
/// verdicts under those names are recomputed with them, whatever text the
/// certificate carries.
pub fn verify(cert: &OriginCertificate, ledger_key: &str, insist: &[String]) -> Report {
    let (entries, mut findings) = check_evidence(cert, ledger_key);
    let mut state = State::default();
    let mut registered = HashSet::new();
    let mut signers = Vec::new();
    for e in &entries {
        if let Err(err) = state.apply_unlinked(e) {
            findings.push(Finding::new(Check::ClaimMismatch, format!("entry {} cannot be read: {err}", e.seq)));
            continue;
        }
        if let Some(event) = Opened::payload_of(&e.envelope).ok().and_then(|p| Event::decode(&p).ok()) {
            match &event.body {
                Body::ActorRegistered { subject, .. } => {
                    registered.insert(subject.to_string());
                }
                _ => signers.push((e.seq, event.actor.to_string())),
            }
        }
    }
    for (seq, signer) in signers {
        if !registered.contains(&signer) {
            let why = format!("entry {seq} is signed by {signer}, whom no registration in the certificate admits: it is not from this ledger's history");
            findings.push(Finding::new(Check::ForeignEntry, why));
        }
    }
    let recomputed = match state.lots.get(&cert.lot) {
        None => {
            let why = format!("no entry in the certificate makes lot {}: the entry that made it, or one of its ancestors, is missing", cert.lot);
            findings.push(Finding::new(Check::MissingAncestor, why));
            for gap in &state.gaps {
                findings.push(Finding::new(Check::MissingAncestor, format!("entry {} {}", gap.seq, gap.why)));
            }
            None
        }
        Some(lot) => {
            let ids: HashSet<&str> = lineage(&state, lot).iter().map(|l| l.lot.as_str()).collect();
            for gap in state.gaps.iter().filter(|g| g.lot.as_deref().is_none_or(|l| ids.contains(l))) {
                findings.push(Finding::new(Check::MissingAncestor, format!("entry {} {}: part of the lot's history is missing", gap.seq, gap.why)));
            }
            Some(recompute(cert, &state, lot, insist, &mut findings))
        }
    };
    let mut rules: Vec<String> = cert.rules.iter().map(|r| r.name.clone()).collect();
    rules.extend(insist.iter().filter(|i| !rules.contains(i)).cloned().collect::<Vec<_>>());
    Report {
        valid: findings.is_empty(),
        lot: cert.lot.clone(),
        date: cert.date.clone(),
        findings,
        recomputed,
        checkpoint: CheckpointSeen { tree_size: cert.checkpoint.tree_size, root: cert.checkpoint.root.clone(), time: cert.checkpoint.time.to_string() },
        entries: entries.len(),
        rules,
    }
}

fn recompute(cert: &OriginCertificate, state: &State, lot: &Lot, insist: &[String], findings: &mut Vec<Finding>) -> Claims {
    let lot = state.answerable(lot);
    let origin = view::origin(&lot);
    if origin != cert.claims.origin {
        findings
            .push(Finding::new(Check::ClaimMismatch, format!("the origin claimed differs from the entries' in {}", differing(&cert.claims.origin, &origin))));
    }
    let mut admissibility = Vec::new();
    let Ok(date) = NaiveDate::parse_from_str(&cert.date, "%Y-%m-%d") else {
        findings.push(Finding::new(Check::ClaimMismatch, format!("date {:?} is not YYYY-MM-DD", cert.date)));
        return Claims { origin, admissibility };
    };
    if cert.claims.admissibility.len() != cert.rules.len() {
        findings.push(Finding::new(Check::ClaimMismatch, "the certificate does not claim one verdict per rule set"));
    }
    for (i, r) in cert.rules.iter().enumerate() {
        if let Some((_, preset)) = PRESETS.iter().find(|(n, _)| *n == r.name) {
            if *preset != r.text {
                findings.push(Finding::new(Check::RulesMismatch, format!("rule set {} is not the {} preset this verifier ships", r.name, r.name)));
            }
        }
        let text = insist.iter().find(|n| **n == r.name || RuleSet::load(n).is_ok_and(|s| s.name == r.name)).cloned().unwrap_or_else(|| r.text.clone());
        let set = match RuleSet::load(&text) {
            Ok(set) => set,
            Err(e) => {
                findings.push(Finding::new(Check::RulesMismatch, format!("rule set {}: {e}", r.name)));
                continue;
            }
        };
        if set.name != r.name {
            findings.push(Finding::new(Check::RulesMismatch, format!("the rule set named {} in the certificate is {} by its text", r.name, set.name)));
        }
        let answer = view::admissibility(&lot, &set, date);
        if cert.claims.admissibility.get(i) != Some(&answer) {
            let claimed = cert.claims.admissibility.get(i).and_then(|a| a.get("verdict")).cloned().unwrap_or_default();
            findings.push(Finding::new(
                Check::ClaimMismatch,
                format!("under {} on {date} the certificate claims {claimed}, its entries give {}", r.name, answer["verdict"]),
            ));
        }
        admissibility.push(answer);
    }
    for n in insist {
        let name = RuleSet::load(n).map(|s| s.name).unwrap_or_else(|_| n.clone());
        if !cert.rules.iter().any(|r| r.name == name) {
            findings.push(Finding::new(Check::RulesMismatch, format!("the certificate has no verdict under {name}")));
        }
    }
    Claims { origin, admissibility }
}

/// The top-level fields in which two answers differ.
fn differing(a: &serde_json::Value, b: &serde_json::Value) -> String {
    let keys: BTreeSet<&String> = a.as_object().into_iter().chain(b.as_object()).flat_map(|o| o.keys()).collect();
    let diff: Vec<&str> = keys.into_iter().filter(|k| a.get(k.as_str()) != b.get(k.as_str())).map(String::as_str).collect();
    if diff.is_empty() {
        "its shape".to_owned()
    } else {
        diff.join(", ")
    }
}
