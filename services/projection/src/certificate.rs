//! Origin certificates, the projection's half: which entries a lot's answer
//! rests on ([`history`]), and the offline check ([`verify`]) that
//! recomputes the answer from a certificate's entries alone, with the same
//! pure code the projection answers with ([`crate::view`], [`crate::rules`]).
//! The cryptographic half (checkpoint, proof, signatures) is
//! [`custody_proto::certificate`].

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::NaiveDate;
use custody_proto::certificate::{check_evidence, Check, Claims, Finding, OriginCertificate};
use custody_proto::lotmap::{LotMap, Recomputed, Subject};
use custody_proto::{Body, Country, Event, Opened, Role};
use serde::Serialize;

use crate::rules::{imitated_preset, is_preset, RuleSet, PRESETS};
use crate::view::{self, Lot, State};

/// The lot and every ancestor, by id.
fn lineage<'a>(state: &'a State, lot: &'a Lot) -> Vec<std::borrow::Cow<'a, Lot>> {
    let mut seen = HashSet::new();
    let mut todo = vec![std::borrow::Cow::Borrowed(lot)];
    let mut out = Vec::new();
    while let Some(l) = todo.pop() {
        if !seen.insert(l.lot.clone()) {
            continue;
        }
        todo.extend(l.parents.iter().filter_map(|p| state.lots.get(p)));
        out.push(l);
    }
    out
}

/// A lot's whole history: the seqs of every entry that acts on it or any
/// ancestor (what made each, every move, flag and verification), what the
/// lot map chains for each of them. (The registrations and revocations of
/// their signers are added by whoever reads the entries.)
pub fn history(state: &State, lot: &Lot) -> Vec<u64> {
    let mut seqs = BTreeSet::new();
    for l in lineage(state, lot) {
        seqs.insert(l.created.seq);
        seqs.extend(l.touched.iter().copied());
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
    /// The names of the rule sets the verdicts are under.
    pub rules: Vec<String>,
    /// What each rule set is: a preset (its exact name and text) or a
    /// regulator's own, which is shown by name and hash, never as a preset.
    pub rule_sets: Vec<RuleSetSeen>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointSeen {
    pub tree_size: u64,
    pub root: String,
    pub time: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleSetSeen {
    pub name: String,
    /// Exactly a preset this verifier ships, name and text.
    pub preset: bool,
    /// blake3 of the text the verdict was recomputed under.
    pub blake3: String,
}

impl RuleSetSeen {
    /// How a person is shown it: a preset by its name, anything else as a
    /// custom rule set with the start of its hash.
    pub fn describe(&self) -> String {
        if self.preset {
            self.name.clone()
        } else {
            format!("custom rule set {:?} (blake3 {})", self.name, &self.blake3[..16])
        }
    }
}

/// Checks a certificate with only the ledger's public key (`N...`), then
/// recomputes its answers from its entries alone. `insist`: rule sets the
/// verifier names itself (preset names or TOML); then the certificate's
/// verdicts under those names are recomputed with them, whatever text the
/// certificate carries.
pub fn verify(cert: &OriginCertificate, ledger_key: &str, insist: &[String]) -> Report {
    let (entries, mut findings) = check_evidence(cert, ledger_key);
    let mut state = State::default();
    let mut signed = Vec::with_capacity(entries.len());
    let mut carried = Recomputed::default();
    for e in &entries {
        if let Err(err) = state.apply_unlinked(e) {
            findings.push(Finding::new(Check::ClaimMismatch, format!("entry {} cannot be read: {err}", e.seq)));
            continue;
        }
        if let Some((key, event)) = Opened::open(e.envelope.clone()).ok().and_then(|o| Some((o.signer.to_string(), Event::decode(&o.payload).ok()?))) {
            carried.apply(e.seq, &e.hash, &event);
            signed.push((e.seq, key, event));
        }
    }
    findings.extend(admission(&signed));
    // Whole: the lot, every ancestor its entries name, and every signer.
    let lots = custody_proto::lotmap::lineage(&cert.lot, signed.iter().map(|(_, _, e)| e));
    let signers: BTreeSet<&str> = signed.iter().map(|(_, _, e)| e.actor.as_str()).collect();
    let subjects: Vec<Subject> = lots.into_iter().map(Subject::Lot).chain(signers.into_iter().map(|a| Subject::Actor(a.to_owned()))).collect();
    findings.extend(whole(cert, &carried.map, &subjects));
    let mut rule_sets = Vec::new();
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
            let ids: HashSet<String> = lineage(&state, &lot).into_iter().map(|l| l.lot.clone()).collect();
            for gap in state.gaps.iter().filter(|g| g.lot.as_ref().is_none_or(|l| ids.contains(l))) {
                findings.push(Finding::new(Check::MissingAncestor, format!("entry {} {}: part of the lot's history is missing", gap.seq, gap.why)));
            }
            Some(recompute(cert, &state, &lot, insist, &mut findings, &mut rule_sets))
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
        rule_sets,
    }
}

/// Whether the certificate carries the whole history of each subject up
/// to its checkpoint: the lot map the checkpoint signs holds each one's
/// head (the chain of every entry that acts on it, their count and the
/// last seq), and the heads recomputed from the certificate's entries
/// must be those. Anything left out (a last export, a flag, a failed
/// verification, a revocation) leaves a head short.
fn whole(cert: &OriginCertificate, carried: &LotMap, subjects: &[Subject]) -> Vec<Finding> {
    let incomplete = |why: String| vec![Finding::new(Check::IncompleteHistory, why)];
    if cert.map.is_empty() {
        return incomplete(
            "the certificate carries no lot-map proof, so nothing shows its history whole (it was made before certificates did): ask for a new one".into(),
        );
    }
    let root = match cert.checkpoint.map_root_hash() {
        Ok(Some(root)) => root,
        _ => return incomplete("its checkpoint signs no lot map, so nothing shows the history whole".into()),
    };
    let mut short = Vec::new();
    for proof in &cert.map {
        match custody_proto::lotmap::shortfalls(proof, &root, carried) {
            Ok(s) => short.extend(s),
            Err(e) => return incomplete(format!("the lot-map proof does not check out against the checkpoint's map root ({e})")),
        }
    }
    // What the entries show the answer rests on must be among what is proven.
    let proven: HashSet<&Subject> = cert.map.iter().flat_map(|p| &p.subjects).collect();
    let unproven = subjects
        .iter()
        .filter(|s| !proven.contains(s))
        .map(|s| Finding::new(Check::IncompleteHistory, format!("{s}: the answer rests on it, and the certificate does not prove its history whole")));
    let unproven: Vec<Finding> = unproven.collect();
    short
        .into_iter()
        .map(|s| {
            let what = &s.subject;
            let (held, have) = (s.held.map_or(0, |h| h.count), s.carried.map_or(0, |h| h.count));
            let why = if held > have {
                let (size, last) = (cert.checkpoint.tree_size, s.held.map_or(0, |h| h.last));
                format!("{what}: the ledger holds {held} entries about it up to its checkpoint of {size} entries (the last at entry {last}); the certificate carries {have}: {} missing", held - have)
            } else {
                format!("{what}: the entries carried about it are not the ledger's history of it (the ledger holds {held}, the certificate {have})")
            };
            Finding::new(Check::IncompleteHistory, why)
        })
        .chain(unproven)
        .collect()
}

/// Who a registration admitted, as the certificate's entries tell.
struct Admitted {
    registered: u64,
    roles: Vec<Role>,
    country: Country,
    revoked: Option<u64>,
}

/// What the ledger checked of each signer when it admitted an event, which
/// a forger holding only the ledger's key could get wrong: that the key
/// that signed is the event's actor, that the actor was registered (and not
/// yet revoked) when it signed and holds a role for what it signed, and
/// that a miner mines in its own country. `signed`: (seq, signing key,
/// event), ascending.
fn admission(signed: &[(u64, String, Event)]) -> Vec<Finding> {
    let mut actors: HashMap<&str, Admitted> = HashMap::new();
    for (seq, _, event) in signed {
        match &event.body {
            Body::ActorRegistered { subject, roles, country, .. } => {
                actors.entry(subject.as_str()).or_insert(Admitted { registered: *seq, roles: roles.clone(), country: *country, revoked: None });
            }
            Body::ActorRevoked { subject, .. } => {
                if let Some(a) = actors.get_mut(subject.as_str()) {
                    a.revoked = Some(a.revoked.map_or(*seq, |r| r.min(*seq)));
                }
            }
            _ => {}
        }
    }
    let mut findings = Vec::new();
    for (seq, key, event) in signed {
        let actor = event.actor.as_str();
        if key != actor {
            findings.push(Finding::new(Check::KeyNotActor, format!("entry {seq} is signed by {key} but names {actor} as its actor")));
        }
        let Some(a) = actors.get(actor) else {
            // The genesis authority is given to the ledger, never registered.
            if !matches!(event.body, Body::ActorRegistered { .. } | Body::ActorRevoked { .. }) {
                let why = format!("entry {seq} is signed by {actor}, whom no registration in the certificate admits: it is not from this ledger's history");
                findings.push(Finding::new(Check::ForeignEntry, why));
            }
            continue;
        };
        let kind = event.body.kind();
        if a.registered > *seq {
            let why = format!("entry {seq} ({kind}) is signed by {actor}, who was registered only later, at entry {}", a.registered);
            findings.push(Finding::new(Check::SignerNotAdmitted, why));
        }
        if let Some(r) = a.revoked.filter(|r| r < seq) {
            findings.push(Finding::new(Check::SignerNotAdmitted, format!("entry {seq} ({kind}) is signed by {actor}, revoked at entry {r}")));
        }
        if !event.body.allowed_roles().iter().any(|r| a.roles.contains(r)) {
            let roles: Vec<&str> = a.roles.iter().map(|r| r.as_str()).collect();
            let why = format!("entry {seq} is a {kind}, which {actor} (roles {}) may not sign", roles.join(", "));
            findings.push(Finding::new(Check::SignerNotAdmitted, why));
        }
        if let Body::Mined { country, lot, .. } = &event.body {
            if *country != a.country {
                let why = format!("entry {seq} says lot {lot} was mined in {country}, but its miner {actor} is registered in {}", a.country);
                findings.push(Finding::new(Check::MinedCountry, why));
            }
        }
    }
    findings
}

fn recompute(cert: &OriginCertificate, state: &State, lot: &Lot, insist: &[String], findings: &mut Vec<Finding>, seen: &mut Vec<RuleSetSeen>) -> Claims {
    let made = lot.created.date;
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
    if date < made {
        let why = format!("the verdicts are for {date}, before lot {} existed (it was made on {made}): they say nothing about it", lot.lot);
        findings.push(Finding::new(Check::DateBeforeLot, why));
    }
    if cert.claims.admissibility.len() != cert.rules.len() {
        findings.push(Finding::new(Check::ClaimMismatch, "the certificate does not claim one verdict per rule set"));
    }
    for (i, r) in cert.rules.iter().enumerate() {
        if let Some((_, preset)) = PRESETS.iter().find(|(n, _)| *n == r.name) {
            if *preset != r.text {
                findings.push(Finding::new(Check::RulesMismatch, format!("rule set {} is not the {} preset this verifier ships", r.name, r.name)));
            }
        }
        if let Some(preset) = imitated_preset(&r.name) {
            let why = format!("rule set {:?} is named like the preset {preset} but is not it: a rule set of one's own must not pass for a preset", r.name);
            findings.push(Finding::new(Check::RulesMismatch, why));
        }
        let text = insist.iter().find(|n| **n == r.name || RuleSet::load(n).is_ok_and(|s| s.name == r.name)).cloned().unwrap_or_else(|| r.text.clone());
        let text = PRESETS.iter().find(|(n, _)| *n == text).map_or(text, |(_, t)| (*t).to_owned());
        seen.push(RuleSetSeen { name: r.name.clone(), preset: is_preset(&r.name, &text), blake3: blake3::hash(text.as_bytes()).to_hex().to_string() });
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
