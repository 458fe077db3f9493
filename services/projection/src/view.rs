//! The projection's state: every lot's materialized origin and history, kept
//! up to date entry by entry, so that a query costs the same for a stone with
//! one ancestor as for one with 100,000. Pure: entries in, answers out.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use custody_proto::{ActorKey, Body, Carats, Country, DeclaredOrigin, Entry, Event, Hash, LotId, LotState, Process, Role};
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

/// One ledger entry as a step of a lot's history, with its proof.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Step {
    pub seq: u64,
    pub hash: String,
    pub kind: String,
    pub country: String,
    pub date: String,
    /// What happened, in words (e.g. "re-export AE -> IN").
    pub note: String,
    /// Recorded more than 7 days after the date it claims: the date is
    /// only claimed (DOMAIN.md, "Dates the ledger can vouch for").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late_record: bool,
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
    /// Lots this one was made from, with the event that made it.
    pub parents: Vec<String>,
    pub children: Vec<String>,
    /// The entry that created it.
    pub created: Step,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    pub name: String,
    pub country: Option<Country>,
    pub roles: Vec<Role>,
    /// Withdrawn by the authority (`actor.revoked`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
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

/// Which records an apply touched, for the store to write.
#[derive(Debug, Default)]
pub struct Dirty {
    pub lots: BTreeSet<String>,
    pub actors: BTreeSet<String>,
    pub shipments: BTreeSet<String>,
    pub yields: BTreeSet<String>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    pub checkpoint: Option<(u64, Hash)>,
    pub lots: BTreeMap<String, Lot>,
    pub actors: BTreeMap<String, Actor>,
    pub shipments: BTreeMap<String, Shipment>,
    pub yields: BTreeMap<String, Yields>,
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
    child.created = created;
    child
}

pub fn four_decimals(r: &BigRational) -> String {
    let scaled = (r * BigRational::from_integer(BigInt::from(10_000))).round().to_integer().to_i64().unwrap_or(0);
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
    pub fn apply(&mut self, entry: &Entry, dirty: &mut Dirty) -> Result<bool, ApplyError> {
        let next = self.checkpoint.map_or(1, |c| c.0 + 1);
        if entry.seq < next {
            return Ok(false);
        }
        if entry.seq > next {
            return Err(ApplyError::Gap { seq: entry.seq, expected: next });
        }
        entry.check_after(self.checkpoint)?;
        let unreadable = |why: String| ApplyError::Unreadable { seq: entry.seq, why };
        let payload = custody_proto::Opened::payload_of(&entry.envelope).map_err(|r| unreadable(r.to_string()))?;
        let event = Event::decode(&payload).map_err(|r| unreadable(r.to_string()))?;
        let late = event.is_late(entry.recorded_at);
        let step = |kind: &str, country: String, note: String| Step {
            seq: entry.seq,
            hash: entry.hash.to_hex(),
            kind: kind.to_owned(),
            country,
            date: event.occurred_at.as_datetime().date_naive().to_string(),
            note: if late { format!("{note} (late record: recorded {})", entry.recorded_at.as_datetime().date_naive()) } else { note },
            late_record: late,
        };
        self.apply_event(&event, entry.seq, late, &step, dirty);
        self.checkpoint = Some((entry.seq, entry.hash));
        Ok(true)
    }

    fn actor_country(&self, key: &ActorKey) -> Option<Country> {
        self.actors.get(key.as_str()).and_then(|a| a.country)
    }

    fn apply_event(&mut self, event: &Event, seq: u64, late: bool, step: &dyn Fn(&str, String, String) -> Step, dirty: &mut Dirty) {
        let kind = event.body.kind();
        let signer = event.actor.to_string();
        let here = self.actor_country(&event.actor);
        let date = event.occurred_at.as_datetime().date_naive();
        match &event.body {
            Body::ActorRegistered { subject, name, roles, country } => {
                self.actors.insert(subject.to_string(), Actor { name: name.clone(), country: Some(*country), roles: roles.clone(), revoked: false });
                dirty.actors.insert(subject.to_string());
            }
            Body::ActorRevoked { subject, .. } => {
                if let Some(a) = self.actors.get_mut(subject.as_str()) {
                    a.revoked = true;
                    dirty.actors.insert(subject.to_string());
                }
            }
            Body::Mined { lot, carats, country, mine } => {
                let created = step(kind, country.to_string(), format!("mined in {country}{}", mine.as_ref().map(|m| format!(" at {m}")).unwrap_or_default()));
                let l = self.new_lot(lot, LotState::Rough, *carats, Composition::single(Source::Mined(*country), true), *country, &signer, created);
                self.put(l, dirty);
            }
            Body::Declared { lot, carats, state, origin, evidence } => {
                let composition = match origin {
                    DeclaredOrigin::Unknown => Composition::single(Source::Unknown, false),
                    DeclaredOrigin::Claimed(shares) => Composition::claimed(&shares.iter().map(|s| (s.country, s.share.ten_thousandths())).collect::<Vec<_>>()),
                };
                // The ledger admits `declared` only from actors with a country.
                let Some(country) = here else { return };
                let note = format!("declared {state:?} stock, origin claimed not traced{}", evidence.as_ref().map(|e| format!(" ({e})")).unwrap_or_default());
                let mut l = self.new_lot(lot, *state, *carats, composition, country, &signer, step(kind, country.to_string(), note));
                l.customs_unknown = *state == LotState::Polished;
                l.warnings.insert(format!("{lot}: origin claimed by a declaration, not traced"));
                self.put(l, dirty);
            }
            Body::Split { lot, into } => {
                let Some(parent) = self.consume(lot, dirty) else { return };
                for p in into {
                    let mut child = child_of(&parent, p, step(kind, parent.country.to_string(), format!("split from {lot}")));
                    push_capped(&mut child.path, child.created.clone(), &mut child.truncated);
                    self.link(lot.as_str(), &child.lot);
                    self.put(child, dirty);
                }
            }
            Body::Processed { lot, process, country, into } => {
                let Some(parent) = self.consume(lot, dirty) else { return };
                let out: u64 = into.iter().map(|p| p.carats.hundredths()).sum();
                let input = parent.carats.hundredths();
                let pct = (out * 100).checked_div(input).unwrap_or(0);
                let y = self.yields.entry(signer.clone()).or_default();
                y.steps.push((seq, *process, input, out));
                dirty.yields.insert(signer.clone());
                let s = step(kind, country.to_string(), format!("{} of {lot} in {country}, yield {pct}%", process.as_str()));
                for p in into {
                    let mut child = child_of(&parent, p, s.clone());
                    if *process == Process::CuttingPolishing {
                        child.state = LotState::Polished;
                        child.transformed_in = BTreeSet::from([*country]);
                        child.customs_unknown = false;
                        // New goods: where the rough was exported from no longer describes them.
                        child.exported_from.clear();
                        child.exported_claimed.clear();
                        if pct > MAX_CUTTING_YIELD_PCT {
                            child
                                .warnings
                                .insert(format!("implausible yield: {pct}% at cutting_polishing of {lot} (seq {}), above {MAX_CUTTING_YIELD_PCT}%", s.seq));
                        }
                    }
                    push_capped(&mut child.transformations, s.clone(), &mut child.truncated);
                    push_capped(&mut child.path, s.clone(), &mut child.truncated);
                    self.link(lot.as_str(), &child.lot);
                    self.put(child, dirty);
                }
            }
            Body::Merged { lots, into } => {
                let inputs: Vec<Lot> = lots.iter().filter_map(|l| self.consume(l, dirty)).collect();
                let Some(first) = inputs.first() else { return };
                let composition = Composition::mix(inputs.iter().map(|l| (&l.composition, l.carats.hundredths())));
                let mut merged = self.new_lot(
                    &into.lot,
                    first.state,
                    into.carats,
                    composition,
                    first.country,
                    &signer,
                    step(kind, first.country.to_string(), format!("merged from {}", lots.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(", "))),
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
                    merged.warnings.extend(i.warnings.iter().cloned());
                    merged.flagged |= i.flagged;
                    merged.truncated |= i.truncated;
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
                self.put(merged, dirty);
            }
            Body::Transferred { lots, to } => {
                for l in lots {
                    if let Some(lot) = self.lots.get_mut(l.as_str()) {
                        lot.holder = to.to_string();
                        let s = step(kind, lot.country.to_string(), format!("transferred within {}", lot.country));
                        push_capped(&mut lot.path, s, &mut lot.truncated);
                        dirty.lots.insert(l.to_string());
                    }
                }
            }
            Body::Exported { lots, to, to_country, certificate } => {
                for l in lots {
                    if let Some(lot) = self.lots.get_mut(l.as_str()) {
                        let from = lot.country;
                        let mined_here = lot.composition.parts().any(|(p, _)| p.source == Source::Mined(from));
                        let word = if mined_here { "export" } else { "re-export" };
                        let s = step(kind, from.to_string(), format!("{word} {from} -> {to_country} under {}", certificate.number));
                        push_capped(&mut lot.path, s, &mut lot.truncated);
                        lot.composition.leave(from, date, late);
                        let e = lot.exported_from.entry(from).or_insert(date);
                        *e = (*e).max(date);
                        if late {
                            lot.exported_claimed.insert(from);
                        } else if *e == date {
                            lot.exported_claimed.remove(&from);
                        }
                        dirty.lots.insert(l.to_string());
                    }
                }
                self.shipments.insert(
                    certificate.number.clone(),
                    Shipment { lots: lots.iter().map(|l| l.to_string()).collect(), consignee: to.to_string(), to_country: *to_country },
                );
                dirty.shipments.insert(certificate.number.clone());
            }
            Body::Imported { certificate, lots } => {
                let (named, to_country) = match (certificate, lots) {
                    (Some(c), _) => match self.shipments.get(c) {
                        Some(s) => (s.lots.clone(), Some(s.to_country)),
                        None => (Vec::new(), None),
                    },
                    (None, Some(l)) => (l.iter().map(|x| x.to_string()).collect(), here),
                    _ => (Vec::new(), None),
                };
                let country = to_country.or(here);
                for l in named {
                    if let (Some(lot), Some(country)) = (self.lots.get_mut(&l), country) {
                        lot.country = country;
                        lot.holder = signer.clone();
                        let s = step(kind, country.to_string(), format!("imported into {country}"));
                        push_capped(&mut lot.path, s, &mut lot.truncated);
                        dirty.lots.insert(l);
                    }
                }
            }
            Body::Flagged { lot, reason } => {
                let text = format!("flagged by a regulator: {reason}");
                let mut todo = vec![lot.to_string()];
                // A flag reaches every descendant, now and (by inheritance) later.
                while let Some(l) = todo.pop() {
                    if let Some(x) = self.lots.get_mut(&l) {
                        x.flagged = true;
                        x.warnings.insert(format!("{lot}: {text}"));
                        todo.extend(x.children.iter().cloned());
                        dirty.lots.insert(l);
                    }
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
            merged: false,
            country,
            holder: holder.to_owned(),
            consumed: false,
            transformations: Vec::new(),
            path: vec![created.clone()],
            truncated: false,
            warnings: BTreeSet::new(),
            flagged: false,
            parents: Vec::new(),
            children: Vec::new(),
            created,
        }
    }

    fn consume(&mut self, lot: &LotId, dirty: &mut Dirty) -> Option<Lot> {
        let l = self.lots.get_mut(lot.as_str())?;
        l.consumed = true;
        dirty.lots.insert(lot.to_string());
        Some(l.clone())
    }

    fn link(&mut self, parent: &str, child: &str) {
        if let Some(p) = self.lots.get_mut(parent) {
            p.children.push(child.to_owned());
        }
    }

    fn put(&mut self, lot: Lot, dirty: &mut Dirty) {
        dirty.lots.insert(lot.lot.clone());
        self.lots.insert(lot.lot.clone(), lot);
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
        flagged: lot.flagged,
    };
    let (verdict, reasons) = rules::evaluate(set, &facts, date);
    serde_json::json!({"lot": lot.lot, "rules": set.name, "date": date.to_string(), "verdict": verdict, "reasons": reasons})
}
