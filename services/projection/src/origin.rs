//! Where a lot's mass was mined, kept exactly: each part of the lot is a
//! share (an exact rational, never a float) keyed by its mining country (or
//! unknown) and by whether that origin is traced through the ledger or only
//! claimed by a `declared` event. Each part also remembers when its mass last
//! left its mining country, for grandfather rules. Pure: no I/O.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use custody_proto::Country;
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, ToPrimitive, Zero};
use serde::{Deserialize, Serialize};

/// A country of mining, or mass whose origin nobody knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Source {
    Mined(Country),
    Unknown,
}

impl Source {
    pub fn label(&self) -> String {
        match self {
            Source::Mined(c) => c.to_string(),
            Source::Unknown => "unknown".to_owned(),
        }
    }
}

/// One part of a lot's composition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Part {
    pub source: Source,
    /// False when the origin is only claimed (a `declared` lot).
    pub traced: bool,
}

/// When the mass of a part last left its mining country. `Left` sorts below
/// `NotLeft`, so the max over merged parts is the conservative answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Departure {
    Left(NaiveDate),
    NotLeft,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Portion {
    /// Exact share of the lot's mass, in (0, 1].
    #[serde(with = "ratio_text")]
    pub share: BigRational,
    pub departure: Departure,
    /// The departure rests on a late record (DOMAIN.md, "Dates the ledger
    /// can vouch for"): its date is only claimed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claimed: bool,
}

/// A lot's mine-origin composition; shares sum to exactly one. The parts
/// are kept sorted by [`Part`], in a vector sized to fit: most lots have
/// one or two, and a map's node would cost a kilobyte each.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Composition {
    #[serde(with = "parts_as_list")]
    parts: Vec<(Part, Portion)>,
}

/// Sorted by part, each part once, no spare capacity.
fn sorted(parts: BTreeMap<Part, Portion>) -> Vec<(Part, Portion)> {
    let mut v: Vec<(Part, Portion)> = parts.into_iter().collect();
    v.shrink_to_fit();
    v
}

impl Composition {
    /// All mass from one source.
    pub fn single(source: Source, traced: bool) -> Composition {
        Composition { parts: vec![(Part { source, traced }, Portion { share: BigRational::one(), departure: Departure::NotLeft, claimed: false })] }
    }

    /// Claimed shares (in ten-thousandths summing to 10,000), untraced.
    pub fn claimed(shares: &[(Country, u32)]) -> Composition {
        let parts: BTreeMap<Part, Portion> = shares
            .iter()
            .map(|(c, s)| {
                let share = BigRational::new(BigInt::from(*s), BigInt::from(10_000));
                (Part { source: Source::Mined(*c), traced: false }, Portion { share, departure: Departure::NotLeft, claimed: false })
            })
            .collect();
        Composition { parts: sorted(parts) }
    }

    /// Carat-weighted mix of several lots: `(composition, hundredths)`.
    pub fn mix<'a>(inputs: impl IntoIterator<Item = (&'a Composition, u64)>) -> Composition {
        let inputs: Vec<(&Composition, u64)> = inputs.into_iter().collect();
        let total: u64 = inputs.iter().map(|(_, c)| c).sum();
        let mut parts: BTreeMap<Part, Portion> = BTreeMap::new();
        if total == 0 {
            return Composition::default();
        }
        for (comp, carats) in inputs {
            let weight = BigRational::new(BigInt::from(carats), BigInt::from(total));
            for (part, p) in comp.parts.iter() {
                let add = &p.share * &weight;
                parts
                    .entry(*part)
                    .and_modify(|q| {
                        q.share = &q.share + &add;
                        q.departure = q.departure.max(p.departure);
                        q.claimed |= p.claimed;
                    })
                    .or_insert(Portion { share: add, departure: p.departure, claimed: p.claimed });
            }
        }
        Composition { parts: sorted(parts) }
    }

    /// The mass mined in `country` leaves it on `date`; `claimed` when the
    /// export that says so was recorded late.
    pub fn leave(&mut self, country: Country, date: NaiveDate, claimed: bool) {
        for (part, p) in self.parts.iter_mut() {
            if part.source == Source::Mined(country) {
                p.departure = Departure::Left(date);
                p.claimed = claimed;
            }
        }
    }

    /// A fact the ledger vouches for (a verification node inspecting the
    /// lot in `here`, recorded on time) shows that by `by` the mass mined
    /// elsewhere had left its country: a departure only claimed becomes
    /// vouched, at `by` at the latest. Never earlier than claimed, so it
    /// can only make a grandfathering stricter.
    pub fn vouch_departures(&mut self, here: Country, by: NaiveDate) {
        for (part, p) in self.parts.iter_mut() {
            match (part.source, p.departure) {
                (Source::Mined(c), Departure::Left(d)) if p.claimed && c != here => {
                    p.departure = Departure::Left(d.max(by));
                    p.claimed = false;
                }
                _ => {}
            }
        }
    }

    pub fn parts(&self) -> impl Iterator<Item = (&Part, &Portion)> {
        self.parts.iter().map(|(part, p)| (part, p))
    }

    /// Whether any of the mass is not traced through the ledger.
    pub fn has_untraced(&self) -> bool {
        self.parts.iter().any(|(p, _)| !p.traced)
    }

    /// Shares by source, traced and claimed together, exact.
    pub fn by_source(&self) -> BTreeMap<Source, BigRational> {
        let mut out: BTreeMap<Source, BigRational> = BTreeMap::new();
        for (part, p) in self.parts.iter() {
            let e = out.entry(part.source).or_insert_with(BigRational::zero);
            *e = &*e + &p.share;
        }
        out
    }

    /// `mine_origin` as DOMAIN.md shows it: four decimals by largest
    /// remainder, summing to exactly 1.0000, largest share first, then
    /// country.
    pub fn rounded(&self) -> Vec<(String, String)> {
        let exact: Vec<(String, BigRational)> = self.by_source().into_iter().map(|(s, r)| (s.label(), r)).collect();
        let scale = BigRational::from_integer(BigInt::from(10_000));
        let mut units: Vec<(String, i64, BigRational)> = exact
            .iter()
            .map(|(label, r)| {
                let scaled = r * &scale;
                let floor = scaled.floor();
                let rem = &scaled - &floor;
                (label.clone(), floor.to_integer().to_i64().unwrap_or(0), rem)
            })
            .collect();
        let assigned: i64 = units.iter().map(|u| u.1).sum();
        let mut order: Vec<usize> = (0..units.len()).collect();
        order.sort_by(|&a, &b| units[b].2.cmp(&units[a].2).then_with(|| units[a].0.cmp(&units[b].0)));
        for &i in order.iter().take((10_000 - assigned).max(0) as usize) {
            units[i].1 += 1;
        }
        units.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        // A share too small to show is never shown as nothing (DOMAIN.md):
        // a banned country's trace may be what decides a verdict.
        units.into_iter().map(|(l, v, _)| (l, if v == 0 { TOO_SMALL.to_owned() } else { format!("{}.{:04}", v / 10_000, v % 10_000) })).collect()
    }
}

/// How a share above zero and below 0.0001 is shown.
pub const TOO_SMALL: &str = "<0.0001";

mod ratio_text {
    use num_rational::BigRational;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &BigRational, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", r.numer(), r.denom()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BigRational, D::Error> {
        let s = String::deserialize(d)?;
        let (n, m) = s.split_once('/').ok_or_else(|| de::Error::custom("ratio"))?;
        Ok(BigRational::new(n.parse().map_err(de::Error::custom)?, m.parse().map_err(de::Error::custom)?))
    }
}

/// JSON maps need string keys; a list of pairs keeps `Part` structured.
mod parts_as_list {
    use super::{Part, Portion};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(m: &[(Part, Portion)], s: S) -> Result<S::Ok, S::Error> {
        m.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Part, Portion)>, D::Error> {
        Ok(super::sorted(Vec::<(Part, Portion)>::deserialize(d)?.into_iter().collect::<BTreeMap<_, _>>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Country {
        s.parse().unwrap()
    }

    #[test]
    fn worked_example_merge_is_forty_sixty() {
        let l1 = Composition::single(Source::Mined(c("RU")), true);
        let l2 = Composition::single(Source::Mined(c("BW")), true);
        let l3 = Composition::mix([(&l1, 100_000), (&l2, 150_000)]);
        assert_eq!(l3.rounded(), vec![("BW".into(), "0.6000".into()), ("RU".into(), "0.4000".into())]);
        let total: BigRational = l3.by_source().values().sum();
        assert_eq!(total, BigRational::one());
    }

    #[test]
    fn thirds_round_to_exactly_one() {
        let parts: Vec<Composition> = ["RU", "BW", "CA"].iter().map(|x| Composition::single(Source::Mined(c(x)), true)).collect();
        let mix = Composition::mix(parts.iter().map(|p| (p, 100)));
        let shown = mix.rounded();
        let sum: u32 = shown.iter().map(|(_, s)| s.replace('.', "").parse::<u32>().unwrap()).sum();
        assert_eq!(sum, 10_000);
        assert_eq!(shown[0], ("BW".into(), "0.3334".into()), "largest remainder, ties by country");
    }

    #[test]
    fn a_trace_too_small_to_show_is_shown_as_such() {
        let ru = Composition::single(Source::Mined(c("RU")), true);
        let bw = Composition::single(Source::Mined(c("BW")), true);
        // 1 hundredth of a carat in 1,000,000.00 carats.
        let mix = Composition::mix([(&ru, 1), (&bw, 100_000_000)]);
        assert_eq!(mix.rounded(), vec![("BW".into(), "1.0000".into()), ("RU".into(), TOO_SMALL.into())]);
    }

    #[test]
    fn departure_is_conservative_across_merges() {
        let mut a = Composition::single(Source::Mined(c("RU")), true);
        a.leave(c("RU"), NaiveDate::from_ymd_opt(2024, 2, 1).unwrap(), false);
        let b = Composition::single(Source::Mined(c("RU")), true);
        let m = Composition::mix([(&a, 1), (&b, 1)]);
        assert_eq!(m.parts().next().unwrap().1.departure, Departure::NotLeft);
    }

    #[test]
    fn serde_round_trip() {
        let a = Composition::mix([(&Composition::single(Source::Unknown, false), 3), (&Composition::single(Source::Mined(c("RU")), true), 7)]);
        let back: Composition = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(a, back);
    }
}
