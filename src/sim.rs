//! A simulated world shaped like the real one, for demos and tests: mines in
//! the ten largest producing countries by KP 2022 carats, trading hubs that
//! mix and split, cutting centres (about 90 % in India) at 40–50 % yields,
//! importers in the US, the EU and the UK, and some old stock declared with
//! unknown origin. Seeded: the same seed gives the same actors (keys
//! included), events and ids, so running it twice changes nothing.

use nkeys::KeyPair;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// KP 2022 rough production, million carats, by mining country.
pub const PRODUCTION: [(&str, f64); 10] =
    [("RU", 41.9), ("BW", 24.8), ("CA", 16.3), ("CD", 9.9), ("ZA", 9.7), ("AO", 8.8), ("ZW", 4.5), ("NA", 2.1), ("LS", 0.7), ("SL", 0.7)];
const HUBS: [&str; 3] = ["BE", "AE", "IL"];
const IMPORTERS: [&str; 3] = ["US", "DE", "GB"];
/// Cutting centres and how often a parcel goes to each.
const CUTTERS: [(&str, f64); 3] = [("IN", 0.90), ("TH", 0.05), ("CN", 0.05)];
/// Share of Botswana's rough that goes straight to a cutter, unmixed.
const DIRECT_SHARE: u64 = 20;

/// Days from 2024-09-15 over which the rounds spread: the last round's
/// last event (13 days after its start) stays before 2026-05-20, in the
/// past of any ledger's clock, at any number of rounds.
const WINDOW_DAYS: u32 = 600;

/// The day a round starts: every 3 days, closer together when that would
/// run past [`WINDOW_DAYS`].
fn round_day(r: u32, rounds: u32) -> u32 {
    if rounds.saturating_mul(3) <= WINDOW_DAYS {
        r * 3
    } else {
        (u64::from(r) * u64::from(WINDOW_DAYS) / u64::from(rounds)) as u32
    }
}

/// How big a world.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub seed: u64,
    /// Rounds of mine → hub → cutter → importer; each about 120 stones.
    pub rounds: u32,
}

/// One actor of the world: its key, role and country.
pub struct Actor {
    pub key: KeyPair,
    pub role: &'static str,
    pub country: &'static str,
}

/// The events to submit, in order, with their signers.
pub struct World {
    pub actors: Vec<Actor>,
    /// (index into `actors`, event payload).
    pub events: Vec<(usize, Value)>,
    /// Stone ids worth looking at: clean, prohibited under us-2024, undetermined.
    pub clean: String,
    pub prohibited: String,
    pub undetermined: String,
}

struct Build {
    rng: ChaCha8Rng,
    seed: u64,
    n: u64,
    actors: Vec<Actor>,
    events: Vec<(usize, Value)>,
}

impl Build {
    fn actor(&mut self, role: &'static str, country: &'static str) -> usize {
        let mut raw = [0u8; 32];
        self.rng.fill_bytes(&mut raw);
        let key = KeyPair::new_from_raw(nkeys::KeyPairType::User, raw).unwrap_or_else(|_| KeyPair::new_user());
        self.actors.push(Actor { key, role, country });
        self.actors.len() - 1
    }

    fn ev(&mut self, who: usize, kind: &str, day: u32, fields: Value) {
        self.n += 1;
        let date = chrono::NaiveDate::from_ymd_opt(2024, 9, 15).unwrap_or_default() + chrono::Days::new(u64::from(day));
        let mut e = json!({"id": format!("sim{}-{}", self.seed, self.n), "kind": kind, "actor": self.actors[who].key.public_key(),
            "occurred_at": format!("{date}T08:00:00Z")});
        if let (Some(o), Value::Object(f)) = (e.as_object_mut(), fields) {
            o.extend(f);
        }
        self.events.push((who, e));
    }

    /// Export then import: `lots` move from `from` to `to`.
    fn ship(&mut self, from: usize, to: usize, lots: &[String], day: u32) {
        let number = format!("{}-SIM{}-{}", self.actors[from].country, self.seed, self.n + 1);
        let (to_key, to_country) = (self.actors[to].key.public_key(), self.actors[to].country);
        let value = format!("{}.00", self.rng.random_range(1_000..100_000));
        self.ev(from, "exported", day, json!({"lots": lots, "to": to_key, "to_country": to_country, "certificate": {"number": number, "value_usd": value}}));
        self.ev(to, "imported", day + 2, json!({"certificate": number}));
    }

    /// Splits `total` hundredths into `parts` positive parts that sum exactly.
    fn parts(&mut self, total: u64, parts: usize) -> Vec<u64> {
        let parts = parts.clamp(1, total.max(1) as usize);
        let weights: Vec<u64> = (0..parts).map(|_| self.rng.random_range(50..150)).collect();
        let sum: u64 = weights.iter().sum();
        let mut out: Vec<u64> = weights.iter().map(|w| (total * w / sum).max(1)).collect();
        let assigned: u64 = out.iter().sum();
        if assigned <= total {
            out[0] += total - assigned;
        } else {
            let mut excess = assigned - total;
            for x in out.iter_mut() {
                let take = excess.min(*x - 1);
                *x -= take;
                excess -= take;
            }
        }
        out
    }

    /// Cuts `lot` into stones at a 40–50 % yield and ships them to importers.
    fn cut_and_sell(&mut self, cutter: usize, lot: &str, hundredths: u64, importers: &[usize], tag: &str, day: u32) -> Vec<(String, u64)> {
        let yield_pct = self.rng.random_range(40..=50);
        let polished = (hundredths * yield_pct / 100).max(1);
        let count = ((polished / 60) as usize).clamp(1, 12);
        let sizes = self.parts(polished, count);
        let stones: Vec<(String, u64)> = sizes.iter().enumerate().map(|(i, c)| (format!("{tag}-S{i}"), *c)).collect();
        let country = self.actors[cutter].country;
        let into: Vec<Value> = stones.iter().map(|(l, c)| json!({"lot": l, "carats": ct(*c)})).collect();
        self.ev(cutter, "processed", day, json!({"lot": lot, "process": "cutting_polishing", "country": country, "into": into}));
        let to = importers[self.rng.random_range(0..importers.len())];
        let ids: Vec<String> = stones.iter().map(|s| s.0.clone()).collect();
        self.ship(cutter, to, &ids, day + 3);
        stones
    }
}

fn ct(hundredths: u64) -> String {
    custody_proto::units::show_hundredths(hundredths)
}

/// Builds the world's events for `size`; nothing is sent.
pub fn world(authority: &KeyPair, size: Size) -> World {
    let mut b = Build { rng: ChaCha8Rng::seed_from_u64(size.seed), seed: size.seed, n: 0, actors: Vec::new(), events: Vec::new() };
    let miners: Vec<usize> = PRODUCTION.iter().map(|(c, _)| b.actor("miner", c)).collect();
    let hubs: Vec<usize> = HUBS.iter().map(|c| b.actor("trader", c)).collect();
    let cutters: Vec<usize> = CUTTERS.iter().map(|(c, _)| b.actor("manufacturer", c)).collect();
    let importers: Vec<usize> = IMPORTERS.iter().map(|c| b.actor("trader", c)).collect();
    let auth = b.actors.len();
    b.actors.push(Actor {
        key: KeyPair::from_seed(&authority.seed().unwrap_or_default()).unwrap_or_else(|_| KeyPair::new_user()),
        role: "authority",
        country: "",
    });
    for i in 0..auth {
        let (key, role, country) = (b.actors[i].key.public_key(), b.actors[i].role, b.actors[i].country);
        b.ev(auth, "actor.registered", 0, json!({"subject": key, "name": format!("sim {role} {country}"), "roles": [role], "country": country}));
    }
    let s = size.seed;
    let mut clean = String::new();
    let mut prohibited = String::new();
    for r in 0..size.rounds {
        let day = round_day(r, size.rounds);
        // Mine: one lot per country, 1 ct per million carats of production.
        let mut at_hub: Vec<Vec<(String, u64)>> = vec![Vec::new(); hubs.len()];
        // The hub that received Russian rough this round.
        let mut ru_hub = None;
        for (m, (country, mct)) in miners.iter().zip(PRODUCTION) {
            let h = (mct * 100.0).round() as u64;
            let lot = format!("SIM{s}-{country}-{r}");
            b.ev(*m, "mined", day, json!({"lot": lot, "carats": ct(h), "country": country}));
            let hub = b.rng.random_range(0..hubs.len());
            if country == "BW" {
                // Part of Botswana's rough goes straight to India, unmixed.
                let direct = h * DIRECT_SHARE / 100;
                let (to_hub, straight) = (format!("{lot}-h"), format!("{lot}-d"));
                b.ev(*m, "split", day, json!({"lot": lot, "into": [{"lot": to_hub, "carats": ct(h - direct)}, {"lot": straight, "carats": ct(direct)}]}));
                b.ship(*m, hubs[hub], std::slice::from_ref(&to_hub), day + 1);
                at_hub[hub].push((to_hub, h - direct));
                b.ship(*m, cutters[0], std::slice::from_ref(&straight), day + 1);
                let stones = b.cut_and_sell(cutters[0], &straight, direct, &importers, &format!("SIM{s}-BWD-{r}"), day + 5);
                if clean.is_empty() {
                    clean = stones.iter().max_by_key(|x| x.1).map(|x| x.0.clone()).unwrap_or_default();
                }
            } else {
                if country == "RU" {
                    ru_hub = Some(hub);
                }
                b.ship(*m, hubs[hub], std::slice::from_ref(&lot), day + 1);
                at_hub[hub].push((lot, h));
            }
        }
        // Hubs mix what they received, split it into parcels, send them to cutters.
        for (hi, lots) in at_hub.into_iter().enumerate() {
            if lots.is_empty() {
                continue;
            }
            let hub = hubs[hi];
            let (mixed, total) = if lots.len() == 1 {
                lots[0].clone()
            } else {
                let total: u64 = lots.iter().map(|l| l.1).sum();
                let into = format!("SIM{s}-{}-mix-{r}", HUBS[hi]);
                let ids: Vec<&String> = lots.iter().map(|l| &l.0).collect();
                b.ev(hub, "merged", day + 4, json!({"lots": ids, "into": {"lot": into, "carats": ct(total)}}));
                (into, total)
            };
            let count = ((total / 400) as usize).clamp(1, 30);
            let sizes = b.parts(total, count);
            let parcels: Vec<(String, u64)> = sizes.iter().enumerate().map(|(i, c)| (format!("{mixed}-p{i}"), *c)).collect();
            if parcels.len() > 1 {
                let into: Vec<Value> = parcels.iter().map(|(l, c)| json!({"lot": l, "carats": ct(*c)})).collect();
                b.ev(hub, "split", day + 5, json!({"lot": mixed, "into": into}));
            }
            let parcels = if parcels.len() > 1 { parcels } else { vec![(mixed, total)] };
            for (i, (parcel, hundredths)) in parcels.into_iter().enumerate() {
                let roll: f64 = b.rng.random_range(0.0..1.0);
                let c = if roll < CUTTERS[0].1 {
                    0
                } else if roll < CUTTERS[0].1 + CUTTERS[1].1 {
                    1
                } else {
                    2
                };
                b.ship(hub, cutters[c], std::slice::from_ref(&parcel), day + 6);
                let stones = b.cut_and_sell(cutters[c], &parcel, hundredths, &importers, &format!("SIM{s}-{}-{r}-{i}", HUBS[hi]), day + 10);
                if prohibited.is_empty() && ru_hub == Some(hi) {
                    if let Some(big) = stones.iter().find(|x| x.1 >= 50) {
                        prohibited = big.0.clone();
                    }
                }
            }
        }
    }
    // Old stock that entered custody from outside the ledger.
    let undetermined = format!("SIM{s}-OLD-1");
    b.ev(
        importers[0],
        "declared",
        1,
        json!({"lot": undetermined, "carats": "1.20", "state": "polished", "origin": "unknown", "evidence": "pre-ledger inventory"}),
    );
    b.ev(
        importers[1],
        "declared",
        1,
        json!({"lot": format!("SIM{s}-OLD-2"), "carats": "0.90", "state": "polished",
        "origin": [{"country": "CA", "share": "1.0000"}], "evidence": "supplier statement"}),
    );
    World { actors: b.actors, events: b.events, clean, prohibited, undetermined }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_time_stays_in_the_past_at_any_size() {
        let authority = KeyPair::new_user();
        for rounds in [1, 10, 200, 300] {
            let last = world(&authority, Size { seed: 1, rounds }).events.iter().filter_map(|e| e.1["occurred_at"].as_str().map(str::to_owned)).max();
            assert!(last.as_deref() < Some("2026-06-01"), "{rounds} rounds: {last:?}");
        }
        for rounds in [200, 201, 300, 5_000, 4_000_000_000] {
            assert!(round_day(rounds - 1, rounds) < WINDOW_DAYS, "{rounds} rounds");
        }
        // Small worlds keep their three days a round.
        assert_eq!((round_day(1, 10), round_day(9, 10)), (3, 27));
    }
}
