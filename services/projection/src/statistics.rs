//! Public flows (DOMAIN.md, "Public statistics"): carats, stones and
//! declared value by country of mining, country of destination and
//! quarter; the share of the mass in custody whose origin is untraced, only
//! claimed, or verified; the late-record rate. Counted entry by entry as
//! the projection applies them, from the state *before* each entry (an
//! export counts the lot as it leaves), so that anyone holding the entries
//! (a backup) recomputes the same figures: `custody statistics --backup`.
//!
//! Nothing names a lot, a party or a price of its own: each figure sums at
//! least [`MIN_ACTORS`] different exporters (or, for the rates, signers);
//! a cell drawn from fewer is merged into a coarser one (any destination,
//! then any country of mining, then all time), and what is still too thin
//! is withheld. Refusals are not entries, so they are not here (the
//! ledger's metrics count them by code).

use std::collections::{BTreeMap, BTreeSet};

use chrono::Datelike as _;
use custody_proto::event::{Body, Event, LotState};
use num_traits::ToPrimitive as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::origin::Source;
use crate::view::State;

/// Fewest different actors a published figure may be drawn from.
pub const MIN_ACTORS: usize = 3;

/// Shares are counted in parts of 10^8 (exact enough for carats to the
/// hundredth on any lot under a million carats).
const PARTS: u128 = 100_000_000;

/// One cell of the flows: mass (hundredths of a carat × [`PARTS`]),
/// stones, value (cents × [`PARTS`]) and who exported them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub mass: u128,
    pub stones: u64,
    pub value: u128,
    pub exporters: BTreeSet<String>,
}

impl Cell {
    fn absorb(&mut self, other: &Cell) {
        self.mass += other.mass;
        self.stones += other.stones;
        self.value += other.value;
        self.exporters.extend(other.exporters.iter().cloned());
    }
}

/// The flows counted so far. Derived from the entries: not in the state's
/// digest, kept in snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flows {
    /// `mined_in|to|quarter` → its cell.
    pub cells: BTreeMap<String, Cell>,
    /// Events about lots, and those of them recorded late.
    pub events: u64,
    pub late: u64,
    /// Who signed events about lots.
    pub signers: BTreeSet<String>,
}

/// `2024-Q3`.
fn quarter(date: chrono::NaiveDate) -> String {
    format!("{}-Q{}", date.year(), date.month0() / 3 + 1)
}

impl Flows {
    /// Counts `event` (recorded late or not), against `state` as it was
    /// before the event.
    pub fn count(&mut self, state: &State, event: &Event, late: bool) {
        if matches!(event.body, Body::ActorRegistered { .. } | Body::ActorRevoked { .. }) {
            return;
        }
        self.events += 1;
        self.late += u64::from(late);
        let signer = event.actor.to_string();
        if !self.signers.contains(&signer) {
            self.signers.insert(signer.clone());
        }
        let Body::Exported { lots, to_country, certificate, .. } = &event.body else { return };
        let when = quarter(event.occurred_at.as_datetime().date_naive());
        let shipped: Vec<_> = lots.iter().filter_map(|l| state.lots.get(l.as_str())).collect();
        let total: u128 = shipped.iter().map(|l| u128::from(l.carats.hundredths())).sum();
        for lot in shipped {
            let hundredths = u128::from(lot.carats.hundredths());
            for (source, share) in lot.composition.by_source() {
                let parts = (share * num_rational::BigRational::from_integer(PARTS.into())).floor().to_integer().to_u128().unwrap_or(0);
                let cell = self.cells.entry(format!("{}|{to_country}|{when}", source.label())).or_default();
                cell.mass += hundredths * parts;
                cell.value += (u128::from(certificate.value_usd.cents()) * hundredths * parts).checked_div(total).unwrap_or(0);
                cell.stones += u64::from(lot.state == LotState::Polished);
                cell.exporters.insert(signer.clone());
            }
        }
    }

    /// The published figures, as of `state`'s checkpoint.
    pub fn answer(&self, state: &State) -> Value {
        let as_of = state.checkpoint.map(|(seq, hash)| json!({"seq": seq, "hash": hash.to_hex()}));
        // Merge each thin cell into a coarser one, level by level.
        let mut levels: Vec<BTreeMap<String, Cell>> = vec![self.cells.clone()];
        let coarser: [fn(&[&str]) -> String; 3] = [|k| format!("{}|*|{}", k[0], k[2]), |k| format!("*|*|{}", k[2]), |_| "*|*|*".to_owned()];
        let mut shown: BTreeMap<String, Cell> = BTreeMap::new();
        for coarsen in coarser {
            let mut next: BTreeMap<String, Cell> = BTreeMap::new();
            for (key, cell) in levels.pop().unwrap_or_default() {
                if cell.exporters.len() >= MIN_ACTORS {
                    shown.entry(key).or_default().absorb(&cell);
                } else {
                    let parts: Vec<&str> = key.split('|').collect();
                    next.entry(coarsen(&parts)).or_default().absorb(&cell);
                }
            }
            levels.push(next);
        }
        let mut withheld = Cell::default();
        for (key, cell) in levels.pop().unwrap_or_default() {
            if cell.exporters.len() >= MIN_ACTORS {
                shown.entry(key).or_default().absorb(&cell);
            } else {
                withheld.absorb(&cell);
            }
        }
        let carats = |mass: u128| custody_proto::units::show_hundredths(((mass + PARTS / 2) / PARTS) as u64);
        let usd = |value: u128| custody_proto::units::show_hundredths(((value + PARTS / 2) / PARTS) as u64);
        let flows: Vec<Value> = shown
            .iter()
            .map(|(key, c)| {
                let k: Vec<&str> = key.split('|').collect();
                json!({"mined_in": k[0], "to": k[1], "quarter": k[2], "carats": carats(c.mass), "stones": c.stones, "value_usd": usd(c.value)})
            })
            .collect();
        json!({
            "as_of": as_of,
            "minimum_actors": MIN_ACTORS,
            "flows": flows,
            // Some flows were too thin to publish even pooled.
            "withheld": withheld.mass > 0 || withheld.stones > 0,
            "in_custody": in_custody(state),
            "late_record_rate": if self.signers.len() >= MIN_ACTORS { Value::from(ratio(u128::from(self.late), u128::from(self.events))) } else { Value::Null },
        })
    }
}

/// `n / d` to four decimals (`"0.0000"` when `d` is 0).
fn ratio(n: u128, d: u128) -> String {
    let tt = (n * 10_000 + d / 2).checked_div(d).unwrap_or(0);
    format!("{}.{:04}", tt / 10_000, tt % 10_000)
}

/// The mass held now (lots not consumed): the share whose origin nobody
/// knows, the share only claimed (declared stock), the share a
/// verification node found conforming. Withheld below [`MIN_ACTORS`]
/// holders.
fn in_custody(state: &State) -> Value {
    let (mut total, mut unknown, mut claimed, mut verified) = (0u128, 0u128, 0u128, 0u128);
    let mut holders = BTreeSet::new();
    for lot in state.lots.values().filter(|l| !l.consumed) {
        let h = u128::from(lot.carats.hundredths());
        holders.insert(lot.holder.clone());
        total += h * PARTS;
        for (part, portion) in lot.composition.parts() {
            let parts = (&portion.share * num_rational::BigRational::from_integer(PARTS.into())).floor().to_integer().to_u128().unwrap_or(0);
            if part.source == Source::Unknown {
                unknown += h * parts;
            } else if !part.traced {
                claimed += h * parts;
            }
        }
        if lot.verified.is_some() {
            verified += h * PARTS;
        }
    }
    if holders.len() < MIN_ACTORS {
        return Value::Null;
    }
    json!({
        "carats": custody_proto::units::show_hundredths(((total + PARTS / 2) / PARTS) as u64),
        "untraced_share": ratio(unknown, total),
        "claimed_share": ratio(claimed, total),
        "verified_share": ratio(verified, total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(carats: u128, exporters: &[&str]) -> Cell {
        Cell { mass: carats * 100 * PARTS, stones: 1, value: 0, exporters: exporters.iter().map(|e| e.to_string()).collect() }
    }

    /// A thin cell is pooled into a coarser one (any destination, then any
    /// country, then all time) until it sums three exporters, else it is
    /// withheld; what is shown and withheld together is everything.
    #[test]
    fn thin_cells_are_pooled_then_withheld_and_nothing_is_lost() {
        let mut flows = Flows::default();
        flows.cells.insert("BW|AE|2024-Q3".into(), cell(100, &["a", "b", "c"]));
        flows.cells.insert("RU|AE|2024-Q3".into(), cell(10, &["d", "e"]));
        flows.cells.insert("RU|IN|2024-Q3".into(), cell(5, &["f"]));
        flows.cells.insert("CA|BE|2024-Q3".into(), cell(7, &["g"]));
        flows.cells.insert("AO|BE|2024-Q4".into(), cell(3, &["h"]));
        let answer = flows.answer(&State::default());
        let shown: Vec<(String, String, String, String)> = answer["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["mined_in"].as_str().unwrap().into(),
                    f["to"].as_str().unwrap().into(),
                    f["quarter"].as_str().unwrap().into(),
                    f["carats"].as_str().unwrap().into(),
                )
            })
            .collect();
        let row = |m: &str, t: &str, q: &str, c: &str| (m.to_owned(), t.to_owned(), q.to_owned(), c.to_owned());
        assert_eq!(
            shown,
            [row("BW", "AE", "2024-Q3", "100.00"), row("RU", "*", "2024-Q3", "15.00")],
            "RU pooled over its destinations (3 exporters); CA alone and AO alone stay withheld"
        );
        assert_eq!(answer["withheld"], true);
        // Two more Canadian exporters (to the US): Canada's pool over its
        // destinations reaches three and is shown; AO alone stays withheld.
        flows.cells.insert("CA|US|2024-Q3".into(), cell(2, &["i", "j"]));
        let answer = flows.answer(&State::default());
        let ca = answer["flows"].as_array().unwrap().iter().find(|f| f["mined_in"] == "CA").cloned().unwrap_or_default();
        assert_eq!((ca["to"].as_str(), ca["quarter"].as_str(), ca["carats"].as_str()), (Some("*"), Some("2024-Q3"), Some("9.00")), "{answer}");
        assert_eq!(answer["withheld"], true, "AO alone: {answer}");
    }
}
