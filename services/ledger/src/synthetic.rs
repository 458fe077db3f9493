//! Synthetic histories written straight into a ledger's store, without
//! NATS: what `custody bench start` and the start tests measure a start
//! against. Every entry goes through the ledger's own checks and
//! admission ([`check_batch`], [`Ledger::admit`]) and is made durable as a
//! writer's would be; only the stream is left out.

use custody_proto::{ActorKey, KeyCache, Outcome, Timestamp};
use nkeys::KeyPair;
use serde_json::json;

use crate::ledger::{check_batch, Ledger, Submitted};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("the ledger refused a synthetic event: {0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Entries admitted and appended at once.
const CHUNK: u64 = 10_000;

/// A genesis authority and miners that mine one lot per entry.
pub struct Synthetic {
    pub authority: KeyPair,
    miners: Vec<KeyPair>,
    /// The next lot's number.
    next: u64,
    keys: KeyCache,
}

impl Synthetic {
    pub fn new(miners: usize) -> Synthetic {
        Synthetic { authority: KeyPair::new_user(), miners: (0..miners.max(1)).map(|_| KeyPair::new_user()).collect(), next: 0, keys: KeyCache::default() }
    }

    pub fn authority_key(&self) -> ActorKey {
        self.authority.public_key().parse().unwrap_or_else(|_| unreachable!("nkeys makes valid user keys"))
    }

    /// Appends `n` entries (the miners' registrations first, on a new
    /// ledger), signing on every core.
    pub fn extend(&mut self, ledger: &mut Ledger, n: u64) -> Result<(), SyntheticError> {
        let now: Timestamp = "2026-12-01T00:00:00Z".parse().map_err(SyntheticError::Sign)?;
        let mut left = n;
        if ledger.head().is_none() {
            let registrations: Vec<(&KeyPair, serde_json::Value)> = self
                .miners
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let event = json!({"id": format!("syn-reg-{i}"), "kind": "actor.registered", "actor": self.authority.public_key(),
                        "occurred_at": "2026-11-01T00:00:00Z", "subject": m.public_key(), "name": format!("mine {i}"), "roles": ["miner"], "country": "BW"});
                    (&self.authority, event)
                })
                .collect();
            let take = u64::try_from(registrations.len()).unwrap_or(u64::MAX).min(left);
            commit(ledger, &mut self.keys, registrations.into_iter().take(take as usize).collect(), now)?;
            left -= take;
        }
        while left > 0 {
            let take = left.min(CHUNK);
            let events: Vec<(&KeyPair, serde_json::Value)> = (self.next..self.next + take)
                .map(|i| {
                    let miner = &self.miners[(i % self.miners.len() as u64) as usize];
                    let event = json!({"id": format!("syn-{i}"), "kind": "mined", "actor": miner.public_key(), "occurred_at": "2026-11-30T00:00:00Z",
                        "lot": format!("SYN-{i}"), "carats": "1.25", "country": "BW"});
                    (miner, event)
                })
                .collect();
            commit(ledger, &mut self.keys, events, now)?;
            self.next += take;
            left -= take;
        }
        Ok(())
    }
}

/// Signs `events` on every core and admits and appends them; any refusal
/// is an error (a synthetic history has none).
fn commit(ledger: &mut Ledger, keys: &mut KeyCache, events: Vec<(&KeyPair, serde_json::Value)>, now: Timestamp) -> Result<(), SyntheticError> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let per = events.len().div_ceil(cores).max(1);
    let signed: Vec<Result<Vec<u8>, String>> = std::thread::scope(|s| {
        let parts: Vec<_> = events
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(key, event)| custody_proto::envelope::sign(key, event.to_string().as_bytes()).map_err(|e| e.to_string()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().unwrap_or_else(|_| vec![Err("a signing thread failed".into())])).collect()
    });
    let submitted = signed.into_iter().map(|s| s.map(Submitted::bare)).collect::<Result<Vec<_>, String>>().map_err(SyntheticError::Sign)?;
    let admitted = ledger.admit(check_batch(submitted, keys), now);
    if let Some(Outcome::Rejected(r)) = admitted.outcomes.iter().find(|o| matches!(o, Outcome::Rejected(_))) {
        return Err(SyntheticError::Refused(format!("{}: {}", r.code, r.message)));
    }
    ledger.store().append(&admitted.entries)?;
    Ok(())
}
