//! Each actor's share of the ledger: a token bucket per actor key (the one
//! its submission subject names, which NATS lets only that actor publish
//! on), refilled at `rate` a second up to `burst`. A submission over it is
//! refused `rate_limited` with when to send again, before anything in it
//! is read: no signature checked, nothing written. One actor's flood thus
//! costs that actor, never the others (each has its own bucket), and the
//! genesis authority, which registers everyone, is never limited.
//!
//! Pure: the caller passes the time, so tests drive the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// An actor's rate and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Submissions a second, sustained.
    pub rate: f64,
    /// Submissions at once after a quiet spell.
    pub burst: f64,
}

impl Limits {
    /// 200 a second, 20,000 at once: far above any mine's, trader's or
    /// cutter's pace (an edge's backlog after days offline drains in
    /// minutes), far below a flood's (5,500 a second was seen).
    pub const DEFAULT: Limits = Limits { rate: 200.0, burst: 20_000.0 };
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before idle (full) ones are dropped.
const TRACKED: usize = 100_000;

/// The buckets of every actor seen lately.
#[derive(Debug)]
pub struct Quotas {
    limits: Limits,
    /// Never limited: the genesis authority.
    exempt: String,
    buckets: HashMap<String, Bucket>,
}

impl Quotas {
    pub fn new(limits: Limits, exempt: &str) -> Quotas {
        Quotas { limits, exempt: exempt.to_owned(), buckets: HashMap::new() }
    }

    /// Takes one submission's token for `actor` at `now`, or says how
    /// long until one is there.
    pub fn take(&mut self, actor: &str, now: Instant) -> Result<(), Duration> {
        if actor == self.exempt {
            return Ok(());
        }
        if self.buckets.len() >= TRACKED && !self.buckets.contains_key(actor) {
            self.forget_idle(now);
        }
        let Limits { rate, burst } = self.limits;
        let b = self.buckets.entry(actor.to_owned()).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(((1.0 - b.tokens) / rate).max(0.001)))
        }
    }

    /// Drops the buckets that have refilled (a new one would be the same).
    fn forget_idle(&mut self, now: Instant) {
        let Limits { rate, burst } = self.limits;
        self.buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
    }
}

/// The refusal of a submission over its actor's quota, sent again after `wait`.
pub fn refusal(wait: Duration) -> custody_proto::Rejection {
    let message = format!("this actor sent more than its quota allows; send it again in {} ms", wait.as_millis().max(1));
    custody_proto::Rejection::rate_limited(message, wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_each_actor_apart() {
        let mut q = Quotas::new(Limits { rate: 10.0, burst: 5.0 }, "UAUTHORITY");
        let t0 = Instant::now();
        for _ in 0..5 {
            q.take("UA", t0).unwrap();
        }
        let wait = q.take("UA", t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        // Another actor is untouched by the first one's flood.
        q.take("UB", t0).unwrap();
        // A tenth of a second later, one more.
        q.take("UA", t0 + Duration::from_millis(100)).unwrap();
        assert!(q.take("UA", t0 + Duration::from_millis(100)).is_err());
        // The authority is never limited.
        for _ in 0..1_000 {
            q.take("UAUTHORITY", t0).unwrap();
        }
        // Never more than the burst, however long the quiet.
        let later = t0 + Duration::from_secs(3_600);
        for _ in 0..5 {
            q.take("UA", later).unwrap();
        }
        assert!(q.take("UA", later).is_err());
    }

    #[test]
    fn idle_buckets_are_forgotten_when_many_actors_were_seen() {
        let mut q = Quotas::new(Limits { rate: 1.0, burst: 2.0 }, "UAUTHORITY");
        let t0 = Instant::now();
        for i in 0..TRACKED {
            q.take(&format!("U{i}"), t0).unwrap();
        }
        q.take("UNEW", t0 + Duration::from_secs(10)).unwrap();
        assert!(q.buckets.len() < 10, "{} kept", q.buckets.len());
    }
}
