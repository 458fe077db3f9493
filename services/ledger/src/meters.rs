//! The ledger's metrics, through the `metrics` facade: the command line
//! installs a Prometheus exporter (`--ops`); without one they cost next
//! to nothing. Every series carries `service`, the replica's name, so the
//! two replicas of one process stay apart. The head also goes to the
//! replica's [`Health`], which `custody status` reads.

use std::collections::{BTreeMap, BTreeSet};

use custody_proto::Outcome;
use custody_wire::health::{Health, Refused};
use metrics::{counter, gauge, histogram, Gauge, Histogram};

/// The series one ledger replica writes.
#[derive(Clone)]
pub struct Meters {
    health: Health,
    service: String,
    head: Gauge,
    writer: Gauge,
    /// Submissions the writer admitted at once.
    pub batch: Histogram,
    /// From sending an atomic batch to the committed stream's ack.
    pub commit: Histogram,
    /// Appending to the store, fsync included.
    pub store: Histogram,
    /// From a batch's first submission taken in to its outcomes sent.
    pub receipt: Histogram,
    /// Who met each refusal code: a few keys each, as many as publishing
    /// needs ([`Refused::ACTORS`]), so it stays small whatever is sent.
    refusers: std::sync::Arc<std::sync::Mutex<BTreeMap<&'static str, BTreeSet<String>>>>,
}

impl Meters {
    pub fn new(health: &Health) -> Meters {
        let service = health.name();
        // Refusals are counted from now on.
        health.update(|s| s.refused_since = Some(custody_proto::Timestamp::now().to_string()));
        let labels = [("service", service.clone())];
        Meters {
            health: health.clone(),
            service,
            head: gauge!("custody_ledger_head_seq", &labels),
            writer: gauge!("custody_ledger_writer", &labels),
            batch: histogram!("custody_ledger_batch_submissions", &labels),
            commit: histogram!("custody_ledger_commit_seconds", &labels),
            store: histogram!("custody_ledger_store_append_seconds", &labels),
            receipt: histogram!("custody_ledger_receipt_seconds", &labels),
            refusers: Default::default(),
        }
    }

    /// The store's last seq.
    pub fn head(&self, seq: u64) {
        self.head.set(seq as f64);
        self.health.update(|s| s.head = Some(seq));
    }

    /// 1 while this replica holds the writer lease.
    pub fn writer(&self, holds: bool) {
        self.writer.set(if holds { 1.0 } else { 0.0 });
    }

    /// Counts outcomes sent, each with the actor whose subject it came on:
    /// `custody_submissions_total{outcome, code}`, `outcome` `receipt`
    /// (code empty) or `refused` with the refusal's code; and refusals by
    /// code, with how many actors met each, in the replica's status (the
    /// public statistics' "refusals by code").
    pub fn outcomes<'a>(&self, outcomes: impl Iterator<Item = (Option<&'a str>, &'a Outcome)>) {
        let mut counts: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
        let mut refusers = self.refusers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (actor, o) in outcomes {
            let key = match o {
                Outcome::Receipt(_) => ("receipt", ""),
                Outcome::Rejected(r) => ("refused", r.code.as_str()),
            };
            *counts.entry(key).or_default() += 1;
            if let (Outcome::Rejected(r), Some(actor)) = (o, actor) {
                let seen = refusers.entry(r.code.as_str()).or_default();
                if seen.len() < usize::from(Refused::ACTORS) {
                    seen.insert(actor.to_owned());
                }
            }
        }
        let refused: Vec<(&'static str, u64, u8)> = counts
            .iter()
            .filter(|((outcome, _), _)| *outcome == "refused")
            .map(|((_, code), n)| (*code, *n, refusers.get(code).map_or(0, |s| s.len() as u8)))
            .collect();
        drop(refusers);
        if !refused.is_empty() {
            self.health.update(|s| {
                for (code, n, actors) in refused {
                    let tally = s.refused.entry(code.to_owned()).or_default();
                    tally.refusals += n;
                    tally.actors = actors;
                }
            });
        }
        for ((outcome, code), n) in counts {
            counter!("custody_submissions_total", "service" => self.service.clone(), "outcome" => outcome, "code" => code).increment(n);
        }
    }
}
