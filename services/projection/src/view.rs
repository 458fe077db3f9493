//! The projection's state: every lot's materialized origin and history, kept
//! up to date entry by entry, so that a query costs the same for a stone with
//! one ancestor as for one with 100,000. Pure: entries in, answers out.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use std::borrow::Borrow;

use custody_proto::{
    ActorKey, Body, Carats, ChainError, Country, DeclaredOrigin, Document, Entry, Event, Evidence, Finding, Hash, Linked, LotId, LotState, Process, Role,
};
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::ToPrimitive;
use serde::{Deserialize, Serialize};

use crate::origin::{Composition, Source};
use crate::rules::{self, Facts, RuleSet};

/// Most steps kept in one lot's `transformations`, `path` and `warnings`:
/// beyond it the oldest are dropped and the answer says so. Keeps every
/// answer, and every apply, bounded whatever the fan-in.
pub const MAX_STEPS: usize = 64;
/// Yield above which cutting and polishing is implausible.
pub const MAX_CUTTING_YIELD_PCT: u64 = 60;
/// How far a verification node's weighing may differ from the ledger's
/// carats before the lot is warned about: 0.1 % (in thousandths), and
/// never less than one hundredth of a carat (a scale's last digit).
pub const WEIGHT_TOLERANCE_PERMILLE: u64 = 1;

/// How a step of a lot's history is vouched for: only by the actor who
/// signed it, also by documents it names by hash, or by a verification node
/// that inspected the goods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    #[default]
    Declared,
    Evidenced,
    Verified,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Vouched {
    pub by: Level,
    /// The documents the event names, by hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<Document>,
    /// The verification node's name and its verification number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
}

/// One ledger entry as a step of a lot's history, with its proof. Kept
/// compact (a raw hash, a static kind, a country and a date of a few
/// bytes each); it is shown exactly as the strings it once held.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Step {
    pub seq: u64,
    pub hash: Hash,
    pub kind: Kind,
    pub country: Country,
    pub date: NaiveDate,
    /// What happened, in words (e.g. "re-export AE -> IN").
    pub note: String,
    /// Recorded more than 7 days after the date it claims: the date is
    /// only claimed (DOMAIN.md, "Dates the ledger can vouch for").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late_record: bool,
    #[serde(default)]
    pub vouched: Vouching,
}

/// A step's [`Vouched`], boxed only when it says more than "declared by
/// its signer" (as most steps do: then it costs one word); shown exactly
/// as the `Vouched` it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vouching(Option<Box<Vouched>>);

impl Vouching {
    pub fn new(v: Vouched) -> Vouching {
        Vouching((v != Vouched::default()).then(|| Box::new(v)))
    }

    /// The documents it names, taken out.
    pub fn take_evidence(&mut self) -> Vec<Document> {
        self.0.as_mut().map(|v| std::mem::take(&mut v.evidence)).unwrap_or_default()
    }
}

impl Serialize for Vouching {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(v) => v.serialize(s),
            None => Vouched::default().serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Vouching {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Vouching, D::Error> {
        Vouched::deserialize(d).map(Vouching::new)
    }
}

/// An event kind by its wire name, one of [`Body::KINDS`]: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kind(pub &'static str);

impl PartialEq<&str> for Kind {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        let name = String::deserialize(d)?;
        Body::KINDS.iter().find(|k| **k == name).map(|k| Kind(k)).ok_or_else(|| serde::de::Error::custom(format!("{name:?} is not an event kind")))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lot {
    pub lot: String,
    pub state: LotState,
    pub carats: Carats,
    pub composition: Composition,
    /// Countries where parts were last cut and polished.
    pub transformed_in: BTreeSet<Country>,
    /// Some part is polished with no traced cutting (declared polished).
    pub customs_unknown: bool,
    /// Latest export date out of each country since the last cutting.
    pub exported_from: BTreeMap<Country, NaiveDate>,
    /// Countries in `exported_from` whose export date rests on a late
    /// record, so is only claimed.
    #[serde(default)]
    pub exported_claimed: BTreeSet<Country>,
    /// Part of it comes from declared stock whose exports before the
    /// declaration are not on the ledger, and it was not cut and polished
    /// since (a cut makes new goods, exported from where they were cut).
    #[serde(default)]
    pub exports_unknown: bool,
    /// Ever merged (with anything).
    pub merged: bool,
    /// Where it is held now.
    pub country: Country,
    pub holder: String,
    /// Consumed by a split, merge or processing.
    pub consumed: bool,
    pub transformations: Vec<Step>,
    pub path: Vec<Step>,
    /// Steps dropped from `path` or `transformations` beyond [`MAX_STEPS`].
    pub truncated: bool,
    pub warnings: BTreeSet<String>,
    pub flagged: bool,
    /// Flags a regulator put on this very lot: (seq, warning).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub own_flags: Vec<(u64, String)>,
    /// How many of the ledger's flags (in [`State::flags`] order) are
    /// already in `flagged` and `warnings`: a flag is recorded on its lot
    /// only, and a lot made later inherits its parents' flags; flags put
    /// on an ancestor after this lot was made are looked up when answering.
    #[serde(default)]
    pub flags_known: usize,
    /// Lots this one was made from, with the event that made it.
    pub parents: Vec<String>,
    pub children: Vec<String>,
    /// The entry that created it.
    pub created: Step,
    /// A verification node found all of its mass conforming: who, and the
    /// verification number (a merge is verified only if every input was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<String>,
    /// Every entry that acts on this very lot, in seq order: what the lot
    /// map chains for it ([`custody_proto::lotmap::subjects`]), so a
    /// certificate carries them all, however long its path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touched: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    pub name: String,
    /// The entry that registered it (0 in states saved before it was kept).
    #[serde(default)]
    pub registered: u64,
    pub country: Option<Country>,
    pub roles: Vec<Role>,
    /// Withdrawn by the authority (`actor.revoked`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// The entry that revoked it (0: not revoked, or revoked in a state
    /// saved before it was kept): a certificate carries it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revoked_at: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A shipment in transit under a certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shipment {
    pub lots: Vec<String>,
    pub consignee: String,
    pub to_country: Country,
}

/// Yields of one manufacturer's processing steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Yields {
    /// (seq, process, input hundredths, output hundredths).
    pub steps: Vec<(u64, Process, u64, u64)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ApplyError {
    #[error("entry {seq} does not follow {expected}: the projection applies entries strictly in order")]
    Gap { seq: u64, expected: u64 },
    #[error(transparent)]
    Chain(#[from] custody_proto::ChainError),
    #[error("entry {seq}: {why}")]
    Unreadable { seq: u64, why: String },
}

/// Something an entry refers to that the entries applied so far do not
/// hold: never on the committed stream (the ledger refused such events),
/// but what an incomplete certificate shows when replayed on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub seq: u64,
    /// The lot concerned; `None` when no lot of the history can be named
    /// (an import whose export is missing).
    pub lot: Option<String>,
    pub why: String,
}

/// Most gaps kept: enough to name what is missing.
const MAX_GAPS: usize = 1_000;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    pub checkpoint: Option<(u64, Hash)>,
    /// In memory, or on disk behind a bounded cache ([`crate::store`]).
    pub lots: crate::store::Lots,
    pub actors: BTreeMap<String, Actor>,
    pub shipments: BTreeMap<String, Shipment>,
    pub yields: BTreeMap<String, Yields>,
    /// Every flag, in ledger order: (seq, flagged lot, warning), as the
    /// lots' `own_flags` hold them; kept whole (flags are few).
    pub flags: Vec<(u64, String, String)>,
    /// References the applied entries could not resolve (see [`Gap`]).
    pub gaps: Vec<Gap>,
    /// The numbers on papers, as entries name them (an export's
    /// certificate, a document's reference, a verification number), folded
    /// by [`fold`]: the lots each entry named so, for search. Derived from
    /// the entries, so not in the digest; kept in the store.
    pub references: crate::store::References,
    /// The public flows counted so far (see [`crate::statistics`]): derived,
    /// so not in the digest; kept in snapshots.
    pub flows: crate::statistics::Flows,
}

/// A lot a number on a paper names: in which entry, and as what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    pub lot: String,
    pub seq: u64,
    /// What the number is, in words ("KP certificate", "invoice", ...).
    pub what: String,
}

/// Most lots one number is kept for (an invoice for a whole parcel names
/// many): the first ones, which search shows anyway.
pub const MAX_NAMED: usize = 1_000;

/// How a number is looked up: trimmed and in lower case, so that
/// "ae-2024-0042 " finds "AE-2024-0042".
pub fn fold(reference: &str) -> String {
    reference.trim().to_lowercase()
}

/// A document's type in words.
pub fn document_word(kind: custody_proto::event::DocumentType) -> &'static str {
    use custody_proto::event::DocumentType as D;
    match kind {
        D::KpCertificate => "KP certificate",
        D::Invoice => "invoice",
        D::TransportDocument => "transport document",
        D::LabReport => "lab report",
        D::Scan => "scan",
        D::Declaration => "declaration",
        D::VerificationReport => "verification report",
    }
}

/// An output of a split or processing: the parent's origin and history,
/// its own id, mass and creating step.
fn child_of(parent: &Lot, portion: &custody_proto::event::Portion, created: Step) -> Lot {
    let mut child = parent.clone();
    child.lot = portion.lot.to_string();
    child.carats = portion.carats;
    child.consumed = false;
    child.parents = vec![parent.lot.clone()];
    child.children = Vec::new();
    // Its own list of the entries that act on it, from the one that made it.
    child.touched = Vec::new();
    child.created = created;
    child
}

pub fn four_decimals(r: &BigRational) -> String {
    let scaled = (r * BigRational::from_integer(BigInt::from(10_000))).round().to_integer().to_i64().unwrap_or(0);
    if scaled == 0 && num_traits::Signed::is_positive(r) {
        return crate::origin::TOO_SMALL.to_owned();
    }
    format!("{}.{:04}", scaled / 10_000, scaled % 10_000)
}

fn push_capped(steps: &mut Vec<Step>, step: Step, truncated: &mut bool) {
    steps.push(step);
    if steps.len() > MAX_STEPS {
        steps.remove(0);
        *truncated = true;
    }
}

impl State {
    /// Applies the next committed entry. Entries at or before the checkpoint
    /// (a redelivery) change nothing; a gap or a broken link is an error.
    pub fn apply(&mut self, entry: &Entry) -> Result<bool, ApplyError> {
        self.apply_checked(entry, Entry::check_after)
    }

    /// [`State::apply`] for an entry the follower linked: only its link to
    /// the checkpoint is checked, its hash was (and is not computed again).
    pub fn apply_linked(&mut self, entry: &Linked) -> Result<bool, ApplyError> {
        self.apply_checked(entry, Linked::check_follows)
    }

    fn apply_checked<E: Borrow<Entry>>(&mut self, linked: &E, check: impl Fn(&E, Option<(u64, Hash)>) -> Result<(), ChainError>) -> Result<bool, ApplyError> {
        let entry: &Entry = linked.borrow();
        let next = self.checkpoint.map_or(1, |c| c.0 + 1);
        if entry.seq < next {
            return Ok(false);
        }
        if entry.seq > next {
            return Err(ApplyError::Gap { seq: entry.seq, expected: next });
        }
        check(linked, self.checkpoint)?;
        self.apply_unlinked(entry)?;
        self.checkpoint = Some((entry.seq, entry.hash));
        Ok(true)
    }

    /// Applies an entry whose place in the ledger is proven otherwise (a
    /// certificate's Merkle proof): neither its seq nor its link is checked
    /// against what was applied before, and the checkpoint does not move.
    /// What the entry refers to and is not here becomes a [`Gap`].
    pub fn apply_unlinked(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        let unreadable = |why: String| ApplyError::Unreadable { seq: entry.seq, why };
        let payload = custody_proto::Opened::payload_of(&entry.envelope).map_err(|r| unreadable(r.to_string()))?;
        let event = Event::decode(&payload).map_err(|r| unreadable(r.to_string()))?;
        let late = event.is_late(entry.recorded_at);
        let documents = event.evidence.as_ref().map(Evidence::documents).unwrap_or_default();
        let vouched = Vouching::new(if documents.is_empty() {
            Vouched::default()
        } else {
            Vouched { by: Level::Evidenced, evidence: documents.to_vec(), ..Vouched::default() }
        });
        let step = |kind: &'static str, country: Country, note: String| Step {
            seq: entry.seq,
            hash: entry.hash,
            kind: Kind(kind),
            country,
            date: event.occurred_at.as_datetime().date_naive(),
            note: if late { format!("{note} (late record: recorded {})", entry.recorded_at.as_datetime().date_naive()) } else { note },
            late_record: late,
            vouched: vouched.clone(),
        };
        let subjects = custody_proto::lotmap::subjects(&event, |c| self.shipments.get(c).map(|s| s.lots.clone()).unwrap_or_default());
        let lots: Vec<String> = subjects
            .into_iter()
            .filter_map(|s| match s {
                custody_proto::lotmap::Subject::Lot(l) => Some(l),
                custody_proto::lotmap::Subject::Actor(_) => None,
            })
            .collect();
        // The flows count an entry against the state before it.
        let mut flows = std::mem::take(&mut self.flows);
        flows.count(self, &event, late);
        self.flows = flows;
        self.apply_event(&event, entry.seq, late, &step);
        // A lot this entry made starts its list here: every lot is made
        // with none ([`State::new_lot`], [`child_of`]).
        for l in &lots {
            if let Some(lot) = self.lots.get_mut(l) {
                lot.touched.push(entry.seq);
            }
        }
        self.name_references(&event, entry.seq, lots.iter().map(String::as_str));
        Ok(())
    }

    /// Records the numbers `event` (entry `seq`) names for the lots it acts
    /// on: each document's reference, an export's certificate, a
    /// verification's number.
    fn name_references<'a>(&mut self, event: &Event, seq: u64, acted_on: impl Iterator<Item = &'a str>) {
        let documents = event.evidence.as_ref().map(Evidence::documents).unwrap_or_default();
        let names_any = documents.iter().any(|d| d.reference.is_some()) || matches!(event.body, Body::Exported { .. } | Body::Verified { .. });
        if !names_any {
            // Most entries name no number: their lots are not looked up.
            return;
        }
        let acted_on: Vec<&str> = acted_on.filter(|l| self.lots.contains_key(l)).collect();
        let mut names: Vec<(&str, &str, String)> = Vec::new();
        for d in documents {
            if let Some(r) = &d.reference {
                names.extend(acted_on.iter().map(|l| (r.as_str(), *l, document_word(d.kind).to_owned())));
            }
        }
        match &event.body {
            Body::Exported { certificate, .. } => {
                for l in &acted_on {
                    let rough = self.lots.get(l).is_some_and(|x| x.state == LotState::Rough);
                    let what = if rough { "KP certificate (export)" } else { "export declaration" };
                    names.push((certificate.number.as_str(), l, what.to_owned()));
                }
            }
            Body::Verified { verification, .. } => names.extend(acted_on.iter().map(|l| (verification.as_str(), *l, "verification".to_owned()))),
            _ => {}
        }
        for (reference, lot, what) in names {
            let Some(list) = self.references.get_or_default(&fold(reference)) else { continue };
            if list.len() < MAX_NAMED && !list.iter().any(|n| n.lot == lot && n.seq == seq && n.what == what) {
                list.push(Named { lot: lot.to_owned(), seq, what });
            }
        }
    }

    fn actor_country(&self, key: &ActorKey) -> Option<Country> {
        self.actors.get(key.as_str()).and_then(|a| a.country)
    }

    fn apply_event(&mut self, event: &Event, seq: u64, late: bool, step: &dyn Fn(&'static str, Country, String) -> Step) {
        let kind = event.body.kind();
        let signer = event.actor.to_string();
        let here = self.actor_country(&event.actor);
        let date = event.occurred_at.as_datetime().date_naive();
        match &event.body {
            Body::ActorRegistered { subject, name, roles, country } => {
                self.actors.insert(
                    subject.to_string(),
                    Actor { name: name.clone(), registered: seq, country: Some(*country), roles: roles.clone(), revoked: false, revoked_at: 0 },
                );
            }
            Body::ActorRevoked { subject, .. } => {
                if let Some(a) = self.actors.get_mut(subject.as_str()) {
                    a.revoked = true;
                    a.revoked_at = seq;
                }
            }
            Body::Mined { lot, carats, country, mine } => {
                let created = step(kind, *country, format!("mined in {country}{}", mine.as_ref().map(|m| format!(" at {m}")).unwrap_or_default()));
                let l = self.new_lot(lot, LotState::Rough, *carats, Composition::single(Source::Mined(*country), true), *country, &signer, created);
                self.put(l);
            }
            Body::Declared { lot, carats, state, origin } => {
                let evidence = match &event.evidence {
                    Some(Evidence::Note(n)) => Some(n.clone()),
                    Some(Evidence::Documents(d)) => Some(format!("{} document(s)", d.len())),
                    None => None,
                };
                let composition = match origin {
                    DeclaredOrigin::Unknown => Composition::single(Source::Unknown, false),
                    DeclaredOrigin::Claimed(shares) => Composition::claimed(&shares.iter().map(|s| (s.country, s.share.ten_thousandths())).collect::<Vec<_>>()),
                };
                // The ledger admits `declared` only from actors with a country.
                let Some(country) = here else { return };
                let note = format!("declared {state:?} stock, origin claimed not traced{}", evidence.as_ref().map(|e| format!(" ({e})")).unwrap_or_default());
                let mut l = self.new_lot(lot, *state, *carats, composition, country, &signer, step(kind, country, note));
                l.customs_unknown = *state == LotState::Polished;
                l.exports_unknown = true;
                l.warnings.insert(format!("{lot}: origin claimed by a declaration, not traced"));
                self.put(l);
            }
            Body::Split { lot, into } => {
                let Some(parent) = self.consume_held(seq, lot, &signer) else { return };
                for p in into {
                    let mut child = child_of(&parent, p, step(kind, parent.country, format!("split from {lot}")));
                    push_capped(&mut child.path, child.created.clone(), &mut child.truncated);
                    self.link(lot.as_str(), &child.lot);
                    self.put(child);
                }
            }
            Body::Processed { lot, process, country, into } => {
                let Some(parent) = self.consume_held(seq, lot, &signer) else { return };
                let out: u64 = into.iter().map(|p| p.carats.hundredths()).sum();
                let input = parent.carats.hundredths();
                let pct = (out * 100).checked_div(input).unwrap_or(0);
                let y = self.yields.entry(signer.clone()).or_default();
                y.steps.push((seq, *process, input, out));
                let s = step(kind, *country, format!("{} of {lot} in {country}, yield {pct}%", process.as_str()));
                for p in into {
                    let mut child = child_of(&parent, p, s.clone());
                    if *process == Process::CuttingPolishing {
                        child.state = LotState::Polished;
                        child.transformed_in = BTreeSet::from([*country]);
                        child.customs_unknown = false;
                        // New goods: where the rough was exported from no longer describes them.
                        child.exported_from.clear();
                        child.exported_claimed.clear();
                        child.exports_unknown = false;
                        if pct > MAX_CUTTING_YIELD_PCT {
                            child
                                .warnings
                                .insert(format!("implausible yield: {pct}% at cutting_polishing of {lot} (seq {}), above {MAX_CUTTING_YIELD_PCT}%", s.seq));
                        }
                    }
                    push_capped(&mut child.transformations, s.clone(), &mut child.truncated);
                    push_capped(&mut child.path, s.clone(), &mut child.truncated);
                    self.link(lot.as_str(), &child.lot);
                    self.put(child);
                }
            }
            Body::Merged { lots, into } => {
                let inputs: Vec<Lot> = lots.iter().filter_map(|l| self.consume_held(seq, l, &signer)).collect();
                if inputs.len() < lots.len() {
                    // A merge of what is not all here is no merge to answer about.
                    return;
                }
                let Some(first) = inputs.first() else { return };
                let composition = Composition::mix(inputs.iter().map(|l| (&l.composition, l.carats.hundredths())));
                let mut merged = self.new_lot(
                    &into.lot,
                    first.state,
                    into.carats,
                    composition,
                    first.country,
                    &signer,
                    step(kind, first.country, format!("merged from {}", lots.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(", "))),
                );
                merged.merged = true;
                let mut all_steps: BTreeSet<Step> = BTreeSet::new();
                for i in &inputs {
                    merged.transformed_in.extend(i.transformed_in.iter().copied());
                    merged.customs_unknown |= i.customs_unknown;
                    for (c, d) in &i.exported_from {
                        let e = merged.exported_from.entry(*c).or_insert(*d);
                        *e = (*e).max(*d);
                    }
                    merged.exported_claimed.extend(i.exported_claimed.iter().copied());
                    merged.exports_unknown |= i.exports_unknown;
                    merged.flags_known = merged.flags_known.min(i.flags_known);
                    merged.warnings.extend(i.warnings.iter().cloned());
                    merged.flagged |= i.flagged;
                    merged.truncated |= i.truncated;
                    merged.verified = match (merged.verified.take(), &i.verified) {
                        (_, None) => None,
                        (None, Some(v)) if merged.parents.is_empty() => Some(v.clone()),
                        (None, Some(_)) => None,
                        (Some(m), Some(v)) if m.split("; ").any(|x| x == v) => Some(m),
                        (Some(m), Some(v)) => Some(format!("{m}; {v}")),
                    };
                    all_steps.extend(i.transformations.iter().cloned());
                    merged.parents.push(i.lot.clone());
                }
                merged.transformations = all_steps.into_iter().collect();
                if merged.transformations.len() > MAX_STEPS {
                    let drop = merged.transformations.len() - MAX_STEPS;
                    merged.transformations.drain(..drop);
                    merged.truncated = true;
                }
                while merged.warnings.len() > MAX_STEPS {
                    merged.warnings.pop_first();
                    merged.truncated = true;
                }
                for l in lots {
                    self.link(l.as_str(), into.lot.as_str());
                }
                self.put(merged);
            }
            Body::Transferred { lots, to } => {
                for l in lots {
                    self.check_holder(seq, l, &signer);
                    if let Some(lot) = self.lots.get_mut(l.as_str()) {
                        lot.holder = to.to_string();
                        let s = step(kind, lot.country, format!("transferred within {}", lot.country));
                        push_capped(&mut lot.path, s, &mut lot.truncated);
                    }
                }
            }
            Body::Exported { lots, to, to_country, certificate } => {
                for l in lots {
                    self.check_holder(seq, l, &signer);
                    if let Some(lot) = self.lots.get_mut(l.as_str()) {
                        let from = lot.country;
                        let mined_here = lot.composition.parts().any(|(p, _)| p.source == Source::Mined(from));
                        let word = if mined_here { "export" } else { "re-export" };
                        let s = step(kind, from, format!("{word} {from} -> {to_country} under {}", certificate.number));
                        push_capped(&mut lot.path, s, &mut lot.truncated);
                        lot.composition.leave(from, date, late);
                        let e = lot.exported_from.entry(from).or_insert(date);
                        *e = (*e).max(date);
                        if late {
                            lot.exported_claimed.insert(from);
                        } else if *e == date {
                            lot.exported_claimed.remove(&from);
                        }
                    }
                }
                self.shipments.insert(
                    certificate.number.clone(),
                    Shipment { lots: lots.iter().map(|l| l.to_string()).collect(), consignee: to.to_string(), to_country: *to_country },
                );
            }
            Body::Imported { certificate, lots } => {
                let (named, to_country) = match (certificate, lots) {
                    (Some(c), _) => match self.shipments.get(c) {
                        Some(s) => (s.lots.clone(), Some(s.to_country)),
                        None => {
                            self.gap(seq, None, format!("imports under certificate {c}, whose export is not here"));
                            (Vec::new(), None)
                        }
                    },
                    (None, Some(l)) => (l.iter().map(|x| x.to_string()).collect(), here),
                    _ => (Vec::new(), None),
                };
                let country = to_country.or(here);
                for l in named {
                    if !self.lots.contains_key(&l) {
                        self.gap(seq, Some(l.clone()), format!("imports lot {l}, which no entry here made"));
                    }
                    if let (Some(lot), Some(country)) = (self.lots.get_mut(&l), country) {
                        lot.country = country;
                        lot.holder = signer.clone();
                        let s = step(kind, country, format!("imported into {country}"));
                        push_capped(&mut lot.path, s, &mut lot.truncated);
                    }
                }
            }
            // Recorded on the flagged lot alone, so a flag costs the same
            // however large the lot's genealogy: lots made later inherit it,
            // and answers about lots made before look it up ([`State::answerable`]).
            Body::Verified { certificate, lots, carats, verification, finding, reason } => {
                let named: Vec<String> = match (certificate, lots) {
                    (Some(c), _) => self.shipments.get(c).map(|s| s.lots.clone()).unwrap_or_else(|| {
                        self.gap(seq, None, format!("verifies certificate {c}, whose export is not here"));
                        Vec::new()
                    }),
                    (None, Some(l)) => l.iter().map(|x| x.to_string()).collect(),
                    _ => Vec::new(),
                };
                let node = self.actors.get(signer.as_str()).map_or_else(|| signer.clone(), |a| a.name.clone());
                let vouch = Vouched { by: Level::Verified, verifier: Some(node.clone()), verification: Some(verification.clone()), ..Vouched::default() };
                let held: u64 = named.iter().filter_map(|l| self.lots.get(l)).map(|l| l.carats.hundredths()).sum();
                let weighed = carats.hundredths();
                let tolerance = (held * WEIGHT_TOLERANCE_PERMILLE / 1000).max(1);
                let mismatch = (held.abs_diff(weighed) > tolerance).then(|| {
                    format!(
                        "weighed {carats} ct at verification {verification} by {node}; the ledger holds {} ct (tolerance {tolerance_ct} ct)",
                        custody_proto::units::show_hundredths(held),
                        tolerance_ct = custody_proto::units::show_hundredths(tolerance)
                    )
                });
                let what = match finding {
                    Finding::Conforms => "conforms".to_owned(),
                    Finding::DoesNotConform => format!("does not conform: {}", reason.as_deref().unwrap_or_default()),
                };
                for l in &named {
                    let Some(lot) = self.lots.get_mut(l) else {
                        self.gap(seq, Some(l.clone()), format!("verifies lot {l}, which no entry here made"));
                        continue;
                    };
                    let mut s = step(kind, lot.country, format!("verified by {node} ({verification}): {what}, {carats} ct weighed"));
                    s.vouched = Vouching::new(vouch.clone());
                    if *finding == Finding::Conforms {
                        // The shipment it inspected: the lot's latest crossing, else its making.
                        if let Some(crossing) = lot.path.iter_mut().rev().find(|p| p.kind == "exported" || p.kind == "imported") {
                            crossing.vouched = Vouching::new(Vouched { evidence: crossing.vouched.take_evidence(), ..vouch.clone() });
                        } else if let Some(first) = lot.path.first_mut() {
                            first.vouched = Vouching::new(Vouched { evidence: first.vouched.take_evidence(), ..vouch.clone() });
                        }
                        lot.verified = Some(format!("{node} {verification}"));
                        // On time, the inspection vouches that the goods
                        // were out of every other country by its date
                        // (DOMAIN.md: a late-recorded departure stays
                        // claimed unless another fact vouches for it).
                        if !late {
                            let here = lot.country;
                            lot.composition.vouch_departures(here, date);
                            for c in std::mem::take(&mut lot.exported_claimed) {
                                if c == here {
                                    lot.exported_claimed.insert(c);
                                } else if let Some(d) = lot.exported_from.get_mut(&c) {
                                    *d = (*d).max(date);
                                }
                            }
                        }
                    } else {
                        lot.verified = None;
                        lot.warnings
                            .insert(format!("{l}: verification {verification} by {node} found it does not conform: {}", reason.as_deref().unwrap_or_default()));
                    }
                    if let Some(m) = &mismatch {
                        lot.warnings.insert(format!("{l}: {m}"));
                    }
                    push_capped(&mut lot.path, s, &mut lot.truncated);
                }
            }
            Body::Flagged { lot, reason } => {
                if let Some(x) = self.lots.get_mut(lot.as_str()) {
                    let text = format!("{lot}: flagged by a regulator: {reason}");
                    x.flagged = true;
                    x.warnings.insert(text.clone());
                    x.own_flags.push((seq, text.clone()));
                    self.flags.push((seq, lot.to_string(), text));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // one lot's fields, named at each call
    fn new_lot(&self, lot: &LotId, state: LotState, carats: Carats, composition: Composition, country: Country, holder: &str, created: Step) -> Lot {
        Lot {
            lot: lot.to_string(),
            state,
            carats,
            composition,
            transformed_in: BTreeSet::new(),
            customs_unknown: false,
            exported_from: BTreeMap::new(),
            exported_claimed: BTreeSet::new(),
            exports_unknown: false,
            merged: false,
            country,
            holder: holder.to_owned(),
            consumed: false,
            transformations: Vec::new(),
            path: vec![created.clone()],
            truncated: false,
            warnings: BTreeSet::new(),
            flagged: false,
            own_flags: Vec::new(),
            flags_known: self.flags.len(),
            parents: Vec::new(),
            children: Vec::new(),
            created,
            verified: None,
            touched: Vec::new(),
        }
    }

    /// Enough of the tables' cached records are unsaved, besides those a
    /// checkpoint being written will save (`writing`), that a checkpoint
    /// should be written before more are changed ([`crate::store`]).
    pub fn wants_checkpoint(&self, writing: crate::store::Records) -> bool {
        self.lots.wants_checkpoint(writing.lots) || self.references.wants_checkpoint(writing.references)
    }

    /// Marks saved the records a checkpoint wrote, those not changed
    /// since it was taken.
    pub fn saved(&mut self, written: &crate::store::Checkpoint) {
        self.lots.saved(&written.lots);
        self.references.saved(&written.references);
    }

    /// Why the state could not be read from its store, if it could not.
    pub fn failure(&self) -> Option<&str> {
        self.lots.failure().or(self.references.failure())
    }

    /// A lot as answers see it: with the flags put on its ancestors after
    /// it was made. Costs nothing while no flag is newer than the lot; else
    /// one walk up its ancestry, pruned below the oldest flagged lot.
    pub fn answerable<'a>(&'a self, lot: &'a Lot) -> std::borrow::Cow<'a, Lot> {
        let newer = self.flags.get(lot.flags_known..).unwrap_or_default();
        let candidates: BTreeMap<&str, Vec<&str>> = newer.iter().filter(|(_, l, _)| *l != lot.lot).fold(BTreeMap::new(), |mut m, (_, l, text)| {
            m.entry(l.as_str()).or_insert_with(Vec::new).push(text.as_str());
            m
        });
        if candidates.is_empty() {
            return std::borrow::Cow::Borrowed(lot);
        }
        // An ancestor made before every candidate cannot descend from one.
        let oldest = candidates.keys().filter_map(|l| self.lots.get(l)).map(|l| l.created.seq).min().unwrap_or(0);
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = lot.parents.clone();
        let mut found = Vec::new();
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(l) = self.lots.get(&id) else { continue };
            if let Some(texts) = candidates.get(id.as_str()) {
                found.extend(texts.iter().copied());
            }
            if l.created.seq >= oldest {
                todo.extend(l.parents.iter().cloned());
            }
        }
        if found.is_empty() {
            return std::borrow::Cow::Borrowed(lot);
        }
        let mut answered = lot.clone();
        answered.flagged = true;
        answered.warnings.extend(found.into_iter().map(str::to_owned));
        while answered.warnings.len() > MAX_STEPS {
            answered.warnings.pop_first();
            answered.truncated = true;
        }
        std::borrow::Cow::Owned(answered)
    }

    fn gap(&mut self, seq: u64, lot: Option<String>, why: String) {
        if self.gaps.len() < MAX_GAPS {
            self.gaps.push(Gap { seq, lot, why });
        }
    }

    /// Notes a gap when `signer` acts on a lot it does not hold, or that
    /// is not here at all.
    fn check_holder(&mut self, seq: u64, lot: &LotId, signer: &str) {
        let why = match self.lots.get(lot.as_str()) {
            None => Some(absent(lot)),
            Some(l) => not_held(&l, lot, signer),
        };
        if let Some(why) = why {
            self.gap(seq, Some(lot.to_string()), why);
        }
    }

    /// Consumes a lot, noting a gap as [`State::check_holder`] does, in
    /// one lookup of the lot.
    fn consume_held(&mut self, seq: u64, lot: &LotId, signer: &str) -> Option<Lot> {
        let Some(l) = self.lots.get_mut(lot.as_str()) else {
            self.gap(seq, Some(lot.to_string()), absent(lot));
            return None;
        };
        let why = not_held(l, lot, signer);
        l.consumed = true;
        let consumed = l.clone();
        if let Some(why) = why {
            self.gap(seq, Some(lot.to_string()), why);
        }
        Some(consumed)
    }

    fn link(&mut self, parent: &str, child: &str) {
        if let Some(p) = self.lots.get_mut(parent) {
            p.children.push(child.to_owned());
        }
    }

    /// Adds a lot the entry made: its id is new (the ledger refuses one
    /// used before), so the store is not asked for it.
    fn put(&mut self, lot: Lot) {
        self.lots.create(lot.lot.clone(), lot);
    }
}

/// Why acting on `lot` is a gap: it is not here.
fn absent(lot: &LotId) -> String {
    format!("acts on lot {lot}, which no entry here made")
}

/// Why `signer` acting on `lot` (here `l`) is a gap, if it is: the lot
/// was consumed, or someone else holds it.
fn not_held(l: &Lot, lot: &LotId, signer: &str) -> Option<String> {
    if l.consumed {
        Some(format!("acts on lot {lot}, which was consumed"))
    } else if l.holder != signer {
        Some(format!("acts on lot {lot}, held by {} here, not by the signer {signer}", l.holder))
    } else {
        None
    }
}

/// DOMAIN.md's `origin` answer.
pub fn origin(lot: &Lot) -> serde_json::Value {
    let sources = lot.composition.by_source();
    let single = |s: &Source| s.label();
    let customs = if !lot.transformed_in.is_empty() {
        if lot.transformed_in.len() == 1 && !lot.customs_unknown {
            lot.transformed_in.iter().next().map(|c| c.to_string()).unwrap_or_default()
        } else {
            "mixed".to_owned()
        }
    } else if lot.customs_unknown {
        "unknown".to_owned()
    } else {
        match sources.keys().collect::<Vec<_>>().as_slice() {
            [one] => single(one),
            _ => "mixed".to_owned(),
        }
    };
    let kp = match sources.keys().collect::<Vec<_>>().as_slice() {
        [one] => single(one),
        _ => "mixed".to_owned(),
    };
    let model = if sources.len() > 1 {
        "mass_balance"
    } else if lot.merged {
        "segregated"
    } else {
        "identity_preserved"
    };
    let mine_origin: Vec<serde_json::Value> = lot.composition.rounded().into_iter().map(|(c, s)| serde_json::json!({"country": c, "share": s})).collect();
    serde_json::json!({
        "lot": lot.lot,
        "state": lot.state,
        "carats": lot.carats,
        "mine_origin": mine_origin,
        "customs_origin": customs,
        "kp_origin": kp,
        "custody_model": model,
        "traced": !lot.composition.has_untraced(),
        "transformations": lot.transformations,
        "path": lot.path,
        "warnings": lot.warnings,
        "truncated": lot.truncated,
    })
}

/// DOMAIN.md's `admissibility` answer.
pub fn admissibility(lot: &Lot, set: &RuleSet, date: NaiveDate) -> serde_json::Value {
    let facts = Facts {
        carats: lot.carats,
        state: lot.state,
        composition: &lot.composition,
        transformed_in: &lot.transformed_in,
        customs_unknown: lot.customs_unknown,
        exported_from: &lot.exported_from,
        exported_claimed: &lot.exported_claimed,
        exports_unknown: lot.exports_unknown,
        flagged: lot.flagged,
        verified: lot.verified.as_deref(),
    };
    let (verdict, reasons) = rules::evaluate(set, &facts, date);
    serde_json::json!({"lot": lot.lot, "rules": set.name, "date": date.to_string(), "verdict": verdict, "reasons": reasons})
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_proto::Timestamp;
    use nkeys::KeyPair;
    use serde_json::json;

    /// A projection fed signed entries, as the committed stream would.
    struct Feed {
        state: State,
        authority: KeyPair,
        n: u64,
    }

    impl Feed {
        fn new() -> Feed {
            Feed { state: State::default(), authority: KeyPair::new_user(), n: 0 }
        }

        /// Applies one event.
        fn apply(&mut self, key: &KeyPair, kind: &str, fields: serde_json::Value) {
            self.n += 1;
            let mut payload = json!({"id": format!("e{}", self.n), "kind": kind, "actor": key.public_key(), "occurred_at": "2024-11-01T10:00:00Z"});
            payload.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            let raw = custody_proto::envelope::sign(key, payload.to_string().as_bytes()).unwrap();
            let entry = Entry::next(self.state.checkpoint, "2024-11-01T11:00:00Z".parse::<Timestamp>().unwrap(), raw);
            assert!(self.state.apply(&entry).unwrap());
        }

        fn actor(&mut self, role: &str, country: &str) -> KeyPair {
            let k = KeyPair::new_user();
            let a = std::mem::replace(&mut self.authority, KeyPair::new_user());
            self.apply(&a, "actor.registered", json!({"subject": k.public_key(), "name": role, "roles": [role], "country": country}));
            self.authority = a;
            k
        }

        fn answer(&self, lot: &str) -> serde_json::Value {
            origin(&self.state.answerable(&self.state.lots.get(lot).unwrap()))
        }
    }

    #[test]
    fn a_flag_writes_one_lot_however_large_its_genealogy() {
        let mut f = Feed::new();
        let miner = f.actor("miner", "BW");
        let regulator = f.actor("regulator", "BE");
        f.apply(&miner, "mined", json!({"lot": "R", "carats": "1000.00", "country": "BW"}));
        let into: Vec<_> = (0..500).map(|i| json!({"lot": format!("R{i}"), "carats": "2.00"})).collect();
        f.apply(&miner, "split", json!({"lot": "R", "into": into}));
        f.apply(&miner, "split", json!({"lot": "R7", "into": [{"lot": "R7a", "carats": "1.00"}, {"lot": "R7b", "carats": "1.00"}]}));
        let before = f.state.lots.clone();
        f.apply(&regulator, "flagged", json!({"lot": "R", "reason": "licence withdrawn"}));
        let changed: Vec<String> = f.state.lots.iter().filter(|(k, v)| before.get(k).as_ref() != Some(v)).map(|(k, _)| k.into_owned()).collect();
        assert_eq!(changed, ["R"], "a flag rewrites only its lot");
        // Answers are what they were when a flag rewrote every descendant.
        for lot in ["R", "R0", "R499", "R7a"] {
            let a = f.answer(lot);
            assert!(a["warnings"].to_string().contains("R: flagged by a regulator: licence withdrawn"), "{lot}: {a}");
        }
        // Made after the flag, from a lot made before it.
        f.apply(&miner, "split", json!({"lot": "R8", "into": [{"lot": "R8a", "carats": "1.00"}, {"lot": "R8b", "carats": "1.00"}]}));
        assert!(f.answer("R8a")["warnings"].to_string().contains("licence withdrawn"));
        // Not a descendant.
        f.apply(&miner, "mined", json!({"lot": "S", "carats": "1.00", "country": "BW"}));
        assert!(!f.answer("S")["warnings"].to_string().contains("flagged"));
        // A flag on a descendant names only its own line.
        f.apply(&regulator, "flagged", json!({"lot": "R8b", "reason": "second look"}));
        assert!(f.answer("R8b")["warnings"].to_string().contains("second look"));
        assert!(!f.answer("R8a")["warnings"].to_string().contains("second look"));
        // Flags survive a checkpoint and a load from the store.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), crate::store::Budget { cache_mb: 8 }).unwrap();
        store.save(&f.state).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.flags, f.state.flags);
        assert_eq!(loaded, f.state);
        assert!(origin(&loaded.answerable(&loaded.lots.get("R8a").unwrap()))["warnings"].to_string().contains("licence withdrawn"));
    }

    /// The numbers on papers name the lots their entries acted on, however
    /// they are cased when asked: an export's certificate, a document's
    /// reference, a verification number.
    #[test]
    fn numbers_on_papers_name_the_lots_their_entries_acted_on() {
        let mut f = Feed::new();
        let (miner, trader, node) = (f.actor("miner", "RU"), f.actor("trader", "AE"), f.actor("verifier", "BE"));
        f.apply(&miner, "mined", json!({"lot": "R1", "carats": "10.00", "country": "RU"}));
        let invoice = json!([{"type": "invoice", "sha256": "ab".repeat(32), "reference": "Inv-0077"}]);
        f.apply(
            &miner,
            "exported",
            json!({"lots": ["R1"], "to": trader.public_key(), "to_country": "AE", "certificate": {"number": "RU-2024-0009", "value_usd": "1000.00"}, "evidence": invoice}),
        );
        let export = f.n;
        f.apply(&trader, "imported", json!({"certificate": "RU-2024-0009"}));
        f.apply(&node, "verified", json!({"certificate": "RU-2024-0009", "carats": "10.00", "verification": "ADO-1", "finding": "conforms"}));
        let named = |q: &str| f.state.references.get(&fold(q)).map(std::borrow::Cow::into_owned).unwrap_or_default();
        let what = |q: &str| named(q).iter().map(|n| (n.lot.clone(), n.what.clone())).collect::<Vec<_>>();
        assert_eq!(what(" ru-2024-0009 "), [("R1".to_owned(), "KP certificate (export)".to_owned())]);
        assert_eq!(what("INV-0077"), [("R1".to_owned(), "invoice".to_owned())]);
        assert_eq!(what("ado-1"), [("R1".to_owned(), "verification".to_owned())]);
        assert_eq!((named("RU-2024-0009")[0].seq, named("inv-0077")[0].seq), (export, export), "both named by the export's entry");
        assert_eq!(named("ado-1")[0].seq, export + 2, "the verification's own entry");
        assert!(what("RU-2024-0001").is_empty());
    }

    /// What apply makes of each kind, table-driven: (event, lot, field, value).
    #[test]
    fn apply_table() {
        let mut f = Feed::new();
        let ru = f.actor("miner", "RU");
        let bw = f.actor("miner", "BW");
        let ae = f.actor("trader", "AE");
        let cut = f.actor("manufacturer", "IN");
        let cert = |n: &str, v: &str| json!({"number": n, "value_usd": v});
        f.apply(&ru, "mined", json!({"lot": "L1", "carats": "1000.00", "country": "RU", "mine": "Mir"}));
        f.apply(&bw, "mined", json!({"lot": "L2", "carats": "1500.00", "country": "BW"}));
        f.apply(&ru, "exported", json!({"lots": ["L1"], "to": ae.public_key(), "to_country": "AE", "certificate": cert("RU-1", "10.00")}));
        f.apply(&bw, "exported", json!({"lots": ["L2"], "to": ae.public_key(), "to_country": "AE", "certificate": cert("BW-1", "10.00")}));
        f.apply(&ae, "imported", json!({"certificate": "RU-1"}));
        f.apply(&ae, "imported", json!({"certificate": "BW-1"}));
        f.apply(&ae, "merged", json!({"lots": ["L1", "L2"], "into": {"lot": "L3", "carats": "2500.00"}}));
        f.apply(&ae, "split", json!({"lot": "L3", "into": [{"lot": "L4", "carats": "100.00"}, {"lot": "L5", "carats": "2400.00"}]}));
        f.apply(&ae, "exported", json!({"lots": ["L4"], "to": cut.public_key(), "to_country": "IN", "certificate": cert("AE-1", "10.00")}));
        f.apply(&cut, "imported", json!({"certificate": "AE-1"}));
        f.apply(&cut, "processed", json!({"lot": "L4", "process": "cutting_polishing", "country": "IN", "into": [{"lot": "S1", "carats": "0.72"}]}));
        f.apply(&ae, "declared", json!({"lot": "D1", "carats": "3.00", "state": "polished", "origin": "unknown"}));
        let cases: &[(&str, &str, serde_json::Value)] = &[
            ("L1", "/customs_origin", json!("RU")),
            ("L1", "/path/0/note", json!("mined in RU at Mir")),
            ("L3", "/mine_origin", json!([{"country": "BW", "share": "0.6000"}, {"country": "RU", "share": "0.4000"}])),
            ("L3", "/custody_model", json!("mass_balance")),
            ("L3", "/kp_origin", json!("mixed")),
            ("L5", "/carats", json!("2400.00")),
            ("S1", "/state", json!("polished")),
            ("S1", "/customs_origin", json!("IN")),
            ("S1", "/transformations/0/country", json!("IN")),
            ("D1", "/traced", json!(false)),
            ("D1", "/customs_origin", json!("unknown")),
        ];
        for (lot, pointer, want) in cases {
            let a = f.answer(lot);
            assert_eq!(a.pointer(pointer), Some(want), "{lot}{pointer}: {a}");
        }
        assert!(f.state.lots.get("L1").unwrap().consumed && f.state.lots.get("L3").unwrap().consumed && !f.state.lots.get("L5").unwrap().consumed);
        assert_eq!(f.state.lots.get("S1").unwrap().holder, cut.public_key());
        // An entry again changes nothing; a gap is refused.
        let last = f.state.checkpoint;
        let stale = Entry { seq: 1, ..Entry::next(None, "2024-11-01T11:00:00Z".parse::<Timestamp>().unwrap(), b"{}".to_vec()) };
        assert_eq!(f.state.apply(&stale), Ok(false));
        let ahead = Entry::next(Some((last.unwrap().0 + 1, last.unwrap().1)), "2024-11-01T11:00:00Z".parse::<Timestamp>().unwrap(), b"{}".to_vec());
        assert!(matches!(f.state.apply(&ahead), Err(ApplyError::Gap { .. })));
    }

    /// The state digest of a fixed history (fixed keys, times and events,
    /// every kind, a late record, evidence, a verification, a flag) is the
    /// one the pre-compact layout gave (issue 14, computed at 24cf50c):
    /// the digest is over the logical state, whatever the layout.
    #[test]
    fn the_digest_of_a_fixed_history_is_unchanged_by_the_compact_layout() {
        let key = |i: u8| KeyPair::new_from_raw(nkeys::KeyPairType::User, [i; 32]).unwrap();
        let (auth, ru, bw, ae, cut, reg, node) = (key(1), key(2), key(3), key(4), key(5), key(6), key(7));
        let mut state = State::default();
        let mut n = 0;
        let mut apply = |state: &mut State, k: &KeyPair, kind: &str, at: &str, recorded: &str, fields: serde_json::Value| {
            n += 1;
            let mut payload = json!({"id": format!("g{n}"), "kind": kind, "actor": k.public_key(), "occurred_at": at});
            payload.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            let raw = custody_proto::envelope::sign(k, payload.to_string().as_bytes()).unwrap();
            let entry = Entry::next(state.checkpoint, recorded.parse::<Timestamp>().unwrap(), raw);
            assert!(state.apply(&entry).unwrap());
        };
        let (t, r) = ("2024-11-01T10:00:00Z", "2024-11-01T11:00:00Z");
        for (k, role, c) in [
            (&ru, "miner", "RU"),
            (&bw, "miner", "BW"),
            (&ae, "trader", "AE"),
            (&cut, "manufacturer", "IN"),
            (&reg, "regulator", "BE"),
            (&node, "verifier", "BE"),
        ] {
            apply(
                &mut state,
                &auth,
                "actor.registered",
                t,
                r,
                json!({"subject": k.public_key(), "name": format!("{role} {c}"), "roles": [role], "country": c}),
            );
        }
        let cert = |n: &str| json!({"number": n, "value_usd": "10.00"});
        let doc = json!([{"type": "invoice", "sha256": "ab".repeat(32), "reference": "INV-1"}]);
        apply(&mut state, &ru, "mined", t, r, json!({"lot": "L1", "carats": "1000.00", "country": "RU", "mine": "Mir"}));
        apply(&mut state, &bw, "mined", t, r, json!({"lot": "L2", "carats": "1500.00", "country": "BW", "evidence": doc}));
        // Recorded weeks after it claims: a late record.
        apply(
            &mut state,
            &ru,
            "exported",
            "2024-08-01T10:00:00Z",
            r,
            json!({"lots": ["L1"], "to": ae.public_key(), "to_country": "AE", "certificate": cert("RU-1")}),
        );
        apply(&mut state, &bw, "exported", t, r, json!({"lots": ["L2"], "to": ae.public_key(), "to_country": "AE", "certificate": cert("BW-1")}));
        apply(&mut state, &ae, "imported", t, r, json!({"certificate": "RU-1"}));
        apply(&mut state, &ae, "imported", t, r, json!({"certificate": "BW-1"}));
        apply(&mut state, &ae, "merged", t, r, json!({"lots": ["L1", "L2"], "into": {"lot": "L3", "carats": "2500.00"}}));
        apply(&mut state, &ae, "split", t, r, json!({"lot": "L3", "into": [{"lot": "L4", "carats": "100.00"}, {"lot": "L5", "carats": "2400.00"}]}));
        apply(&mut state, &ae, "exported", t, r, json!({"lots": ["L4"], "to": cut.public_key(), "to_country": "IN", "certificate": cert("AE-1")}));
        apply(&mut state, &node, "verified", t, r, json!({"certificate": "AE-1", "carats": "100.00", "verification": "V-1", "finding": "conforms"}));
        apply(&mut state, &cut, "imported", t, r, json!({"certificate": "AE-1"}));
        apply(
            &mut state,
            &cut,
            "processed",
            t,
            r,
            json!({"lot": "L4", "process": "cutting_polishing", "country": "IN", "into": [{"lot": "S1", "carats": "0.72"}, {"lot": "S2", "carats": "0.50"}]}),
        );
        apply(&mut state, &cut, "merged", t, r, json!({"lots": ["S1", "S2"], "into": {"lot": "S3", "carats": "1.22"}}));
        apply(&mut state, &ae, "transferred", t, r, json!({"lots": ["L5"], "to": ae.public_key()}));
        apply(&mut state, &ae, "declared", t, r, json!({"lot": "D1", "carats": "3.00", "state": "polished", "origin": "unknown", "evidence": "old stock"}));
        apply(
            &mut state,
            &node,
            "verified",
            t,
            r,
            json!({"lots": ["L5"], "carats": "2300.00", "verification": "V-2", "finding": "does_not_conform", "reason": "short"}),
        );
        apply(&mut state, &reg, "flagged", t, r, json!({"lot": "L3", "reason": "second look"}));
        apply(&mut state, &auth, "actor.revoked", t, r, json!({"subject": bw.public_key(), "reason": "licence withdrawn"}));
        assert!(state.lots.len() >= 9, "{:?}", state.lots);
        // Issue 24 keeps which entry revoked an actor and every entry that
        // acts on each lot (a certificate carries them): the logical
        // changes since 24cf50c. Without them the digest is the old one;
        // with them, the last.
        let mut old = state.clone();
        let bw_record = old.actors.get_mut(&bw.public_key()).unwrap();
        assert_eq!(bw_record.revoked_at, 24);
        bw_record.revoked_at = 0;
        assert_eq!(old.lots.get("L1").unwrap().touched, [7, 9, 11, 13], "mined, exported, imported, merged");
        assert_eq!(old.lots.get("L4").unwrap().touched, [14, 15, 16, 17, 18], "split off, exported, verified by certificate, imported, cut");
        let ids: Vec<String> = old.lots.iter().map(|(k, _)| k.into_owned()).collect();
        for id in ids {
            old.lots.get_mut(&id).unwrap().touched.clear();
        }
        assert_eq!(crate::service::digest(&old), "8d71321ddbcc81fbbc33e4eb4fb4fcfb8bf0012950777d78b88f5628fc9f6aae");
        assert_eq!(crate::service::digest(&state), "67c10f1e253e6deaa54f5eb6071a4a120b9057baafffe9b607edf9b461581e26");
    }
}
