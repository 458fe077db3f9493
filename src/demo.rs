//! The demo supply chain: DOMAIN.md's public worked example, as the events
//! each actor signs. `custody up` submits it on an empty ledger, set in
//! time ([`set_in_time`]): dated in the week before it is submitted, so
//! that every step is recorded on time, but one ([`Cast::late_record`]).

use std::path::Path;

use nkeys::KeyPair;
use serde_json::{json, Value};

use crate::keys;

/// The actors of the worked example.
pub struct Cast {
    pub authority: KeyPair,
    /// Miner A, Russia.
    pub miner_ru: KeyPair,
    /// Miner B, Botswana.
    pub miner_bw: KeyPair,
    /// Trader T, United Arab Emirates.
    pub trader_ae: KeyPair,
    /// Cutter C, India.
    pub cutter_in: KeyPair,
    /// Importer U, United States.
    pub importer_us: KeyPair,
    /// A verification node in Belgium, like the Antwerp Diamond Office.
    pub verifier_be: KeyPair,
}

impl Cast {
    /// Loads the cast's keys from `dir`, creating the missing ones.
    pub fn load_or_create(authority: KeyPair, dir: &Path) -> anyhow::Result<Cast> {
        let k = |name: &str| keys::load_or_create(&dir.join(format!("{name}.nk")));
        Ok(Cast {
            authority,
            miner_ru: k("miner-ru")?,
            miner_bw: k("miner-bw")?,
            trader_ae: k("trader-ae")?,
            cutter_in: k("cutter-in")?,
            importer_us: k("importer-us")?,
            verifier_be: k("verifier-be")?,
        })
    }

    /// Every event of the worked example, in order, with its signer.
    pub fn worked_example(&self) -> Vec<(&KeyPair, Value)> {
        let (a, b, t, c, u) = (&self.miner_ru, &self.miner_bw, &self.trader_ae, &self.cutter_in, &self.importer_us);
        let pk = |k: &KeyPair| k.public_key();
        let ev = |k: &KeyPair, id: &str, at: &str, kind: &str, fields: Value| {
            let mut v = json!({"id": id, "kind": kind, "actor": pk(k), "occurred_at": at});
            if let (Some(obj), Value::Object(f)) = (v.as_object_mut(), fields) {
                obj.extend(f);
            }
            v
        };
        let register = |id: &str, who: &KeyPair, name: &str, role: &str, country: &str| {
            ev(&self.authority, id, "2024-01-01T00:00:00Z", "actor.registered", json!({"subject": pk(who), "name": name, "roles": [role], "country": country}))
        };
        vec![
            (&self.authority, register("demo-reg-a", a, "Miner A", "miner", "RU")),
            (&self.authority, register("demo-reg-b", b, "Miner B", "miner", "BW")),
            (&self.authority, register("demo-reg-t", t, "Trader T", "trader", "AE")),
            (&self.authority, register("demo-reg-c", c, "Cutter C", "manufacturer", "IN")),
            (&self.authority, register("demo-reg-u", u, "Importer U", "trader", "US")),
            (a, ev(a, "demo-mined-l1", "2024-09-02T08:00:00Z", "mined", json!({"lot": "L1", "carats": "1000.00", "country": "RU", "mine": "Mine A1"}))),
            (b, ev(b, "demo-mined-l2", "2024-09-02T09:00:00Z", "mined", json!({"lot": "L2", "carats": "1500.00", "country": "BW"}))),
            (
                a,
                ev(
                    a,
                    "demo-export-l1",
                    "2024-09-10T10:00:00Z",
                    "exported",
                    json!({"lots": ["L1"], "to": pk(t), "to_country": "AE", "certificate": {"number": "RU-2024-0001", "value_usd": "2500000.00"}}),
                ),
            ),
            (
                b,
                ev(
                    b,
                    "demo-export-l2",
                    "2024-09-10T11:00:00Z",
                    "exported",
                    json!({"lots": ["L2"], "to": pk(t), "to_country": "AE", "certificate": {"number": "BW-2024-0001", "value_usd": "4100000.00"}}),
                ),
            ),
            (t, ev(t, "demo-import-l1", "2024-09-12T08:00:00Z", "imported", json!({"certificate": "RU-2024-0001"}))),
            (t, ev(t, "demo-import-l2", "2024-09-12T09:00:00Z", "imported", json!({"certificate": "BW-2024-0001"}))),
            (t, ev(t, "demo-merge-l3", "2024-09-15T08:00:00Z", "merged", json!({"lots": ["L1", "L2"], "into": {"lot": "L3", "carats": "2500.00"}}))),
            (
                t,
                ev(
                    t,
                    "demo-split-l3",
                    "2024-09-16T08:00:00Z",
                    "split",
                    json!({"lot": "L3", "into": [{"lot": "L4", "carats": "100.00"}, {"lot": "L5", "carats": "2400.00"}]}),
                ),
            ),
            (
                t,
                ev(
                    t,
                    "demo-export-l4",
                    "2024-09-20T08:00:00Z",
                    "exported",
                    json!({"lots": ["L4"], "to": pk(c), "to_country": "IN", "certificate": {"number": "AE-2024-0042", "value_usd": "300000.00"}}),
                ),
            ),
            (c, ev(c, "demo-import-l4", "2024-09-25T08:00:00Z", "imported", json!({"certificate": "AE-2024-0042"}))),
            (
                c,
                ev(
                    c,
                    "demo-cut-l4",
                    "2024-10-10T08:00:00Z",
                    "processed",
                    json!({"lot": "L4", "process": "cutting_polishing", "country": "IN", "into": [{"lot": "S1", "carats": "0.72"}, {"lot": "S2", "carats": "1.10"}, {"lot": "S3", "carats": "0.30"}]}),
                ),
            ),
            (
                c,
                ev(
                    c,
                    "demo-export-stones",
                    "2024-11-01T08:00:00Z",
                    "exported",
                    json!({"lots": ["S1", "S2", "S3"], "to": pk(u), "to_country": "US", "certificate": {"number": "IN-2024-7781", "value_usd": "9800.00"}}),
                ),
            ),
            (u, ev(u, "demo-import-stones", "2024-11-05T08:00:00Z", "imported", json!({"certificate": "IN-2024-7781"}))),
        ]
    }

    /// Beyond the worked example: a verification node is registered and
    /// inspects trader T's remaining rough, `L5`, naming its report by hash.
    pub fn inspection(&self) -> Vec<(&KeyPair, Value)> {
        let v = &self.verifier_be;
        let report = blake3::hash(b"demo verification report ADO-2024-0005").to_hex().to_string();
        vec![
            (
                &self.authority,
                json!({"id": "demo-reg-v", "kind": "actor.registered", "actor": self.authority.public_key(), "occurred_at": "2024-01-01T00:00:00Z",
                       "subject": v.public_key(), "name": "Antwerp Diamond Office", "roles": ["verifier"], "country": "BE"}),
            ),
            (
                v,
                json!({"id": "demo-verify-l5", "kind": "verified", "actor": v.public_key(), "occurred_at": "2024-09-18T08:00:00Z",
                       "lots": ["L5"], "carats": "2400.00", "verification": "ADO-2024-0005", "finding": "conforms",
                       "evidence": [{"type": "verification_report", "blake3": report, "reference": "ADO-2024-0005"}]}),
            ),
        ]
    }

    /// A deliberate late record: miner B records, at `now`, a lot `L6` it
    /// mined a month before. The page marks the step "late record": the
    /// ledger vouches for when it heard of it, not for when it happened.
    pub fn late_record(&self, now: chrono::DateTime<chrono::Utc>) -> (&KeyPair, Value) {
        let b = &self.miner_bw;
        let at = (now - chrono::Duration::days(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        (
            b,
            json!({"id": "demo-mined-l6-late", "kind": "mined", "actor": b.public_key(), "occurred_at": at,
                   "lot": "L6", "carats": "40.00", "country": "BW", "mine": "Mine B2"}),
        )
    }

    /// The worked example's second split of `L3`, which must be refused.
    pub fn second_split(&self) -> (&KeyPair, Value) {
        let t = &self.trader_ae;
        (
            t,
            json!({"id": "demo-split-l3-again", "kind": "split", "actor": t.public_key(), "occurred_at": "2024-09-17T08:00:00Z",
                   "lot": "L3", "into": [{"lot": "L6", "carats": "2500.00"}]}),
        )
    }
}

/// How long before its submission the demo's story begins: under
/// [`custody_proto::event::LATE_RECORD_DAYS`], so no step is a late record.
pub const STORY_DAYS: i64 = 6;

/// Sets a story in time: the same events, in the same order of time,
/// dated in the [`STORY_DAYS`] before `now`. Registrations come first (at
/// the start); every other event keeps its place between the story's first
/// and last, scaled onto the rest of the window, which ends ten minutes
/// before `now` (inside any ledger's allowed clock skew). The worked
/// example's verdicts stay what DOMAIN.md says on any later date: every
/// event moves after 2024-09-01, so the Russian rough still leaves Russia
/// after the US threshold date and nothing becomes grandfathered.
pub fn set_in_time<K>(events: &mut [(K, Value)], now: chrono::DateTime<chrono::Utc>) {
    use chrono::{DateTime, Duration, Utc};
    let start = now - Duration::days(STORY_DAYS);
    let (first, end) = (start + Duration::hours(1), now - Duration::minutes(10));
    let at = |e: &Value| e["occurred_at"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc));
    let registration = |e: &Value| e["kind"].as_str().is_some_and(|k| k.starts_with("actor."));
    let story: Vec<DateTime<Utc>> = events.iter().filter(|(_, e)| !registration(e)).filter_map(|(_, e)| at(e)).collect();
    let (Some(min), Some(max)) = (story.iter().min().copied(), story.iter().max().copied()) else { return };
    let span = (max - min).num_seconds().max(1);
    let room = (end - first).num_seconds();
    for (_, e) in events.iter_mut() {
        let Some(t) = at(e) else { continue };
        let moved = if registration(e) { start } else { first + Duration::seconds((t - min).num_seconds() * room / span) };
        e["occurred_at"] = Value::from(moved.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_story_set_in_time_keeps_its_order_and_is_recorded_on_time() {
        let cast = Cast::load_or_create(KeyPair::new_user(), tempfile::tempdir().unwrap().path()).unwrap();
        let mut events = cast.worked_example();
        events.extend(cast.inspection());
        let before: Vec<String> = events.iter().map(|(_, e)| e["occurred_at"].as_str().unwrap().to_owned()).collect();
        let now = "2026-12-02T12:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        set_in_time(&mut events, now);
        let after: Vec<String> = events.iter().map(|(_, e)| e["occurred_at"].as_str().unwrap().to_owned()).collect();
        for i in 0..before.len() {
            for j in 0..before.len() {
                if before[i] < before[j] {
                    assert!(after[i] <= after[j], "{} moved after {}", events[i].1["id"], events[j].1["id"]);
                }
            }
        }
        let late = now - chrono::Duration::days(custody_proto::event::LATE_RECORD_DAYS);
        for (_, e) in &events {
            let t: chrono::DateTime<chrono::Utc> = e["occurred_at"].as_str().unwrap().parse().unwrap();
            assert!(t > late && t < now, "{e}");
        }
        assert_eq!(events.iter().find(|(_, e)| e["id"] == "demo-mined-l1").unwrap().1["occurred_at"], "2026-11-26T13:00:00Z");
        assert_eq!(events.iter().find(|(_, e)| e["id"] == "demo-import-stones").unwrap().1["occurred_at"], "2026-12-02T11:50:00Z");
    }
}
