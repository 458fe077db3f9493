//! Each actor's share of the ledger: a token bucket per actor key (the one
//! its submission subject names, which NATS lets only that actor publish
//! on), refilled at `rate` a second up to `burst`. A submission over it is
//! refused `rate_limited` with when to send again, before anything in it
//! is read: no signature checked, nothing written. One actor's flood thus
//! costs that actor, never the others (each has its own bucket), and the
//! genesis authority, which registers everyone, is never limited.
//!
//! Rates may differ by role (`--role-quota miner=50/5000`): an actor gets
//! the most generous of its roles' limits, or the default when none of its
//! roles has one of its own. The writer tells the quotas each actor's
//! roles as registrations commit ([`Quotas::set_roles`]).
//!
//! Pure: the caller passes the time, so tests drive the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use custody_proto::Role;

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

    /// `RATE/BURST`, as `--role-quota` takes it after `ROLE=`.
    pub fn parse(text: &str) -> Result<Limits, String> {
        let (rate, burst) = text.split_once('/').ok_or_else(|| format!("{text:?}: give RATE/BURST, as in 50/5000"))?;
        let rate: f64 = rate.trim().parse().map_err(|_| format!("{rate:?} is not a number of submissions a second"))?;
        let burst: f64 = burst.trim().parse().map_err(|_| format!("{burst:?} is not a number of submissions"))?;
        if !(rate > 0.0 && rate.is_finite() && burst >= 1.0 && burst.is_finite()) {
            return Err(format!("{text:?}: the rate must be above 0 and the burst at least 1"));
        }
        Ok(Limits { rate, burst })
    }
}

/// The limits of every actor: a default, and some roles' own.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    pub default: Limits,
    pub roles: Vec<(Role, Limits)>,
}

impl Rates {
    pub fn uniform(default: Limits) -> Rates {
        Rates { default, roles: Vec::new() }
    }

    /// The most generous limits among `roles`' own, else the default.
    fn of(&self, roles: &[Role]) -> Limits {
        self.roles.iter().filter(|(r, _)| roles.contains(r)).map(|(_, l)| *l).max_by(|a, b| a.rate.total_cmp(&b.rate)).unwrap_or(self.default)
    }
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
    rates: Rates,
    /// Never limited: the genesis authority.
    exempt: String,
    buckets: HashMap<String, Bucket>,
    /// Actors whose roles have limits other than the default.
    classes: HashMap<String, Limits>,
}

impl Quotas {
    pub fn new(rates: Rates, exempt: &str) -> Quotas {
        Quotas { rates, exempt: exempt.to_owned(), buckets: HashMap::new(), classes: HashMap::new() }
    }

    /// What `actor` may do (a registration committed, or the ledger opened).
    pub fn set_roles(&mut self, actor: &str, roles: &[Role]) {
        let limits = self.rates.of(roles);
        if limits == self.rates.default {
            self.classes.remove(actor);
        } else {
            self.classes.insert(actor.to_owned(), limits);
        }
    }

    fn limits(&self, actor: &str) -> Limits {
        self.classes.get(actor).copied().unwrap_or(self.rates.default)
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
        let Limits { rate, burst } = self.limits(actor);
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
        let (classes, default) = (&self.classes, self.rates.default);
        self.buckets.retain(|actor, b| {
            let Limits { rate, burst } = classes.get(actor).copied().unwrap_or(default);
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
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
        let mut q = Quotas::new(Rates::uniform(Limits { rate: 10.0, burst: 5.0 }), "UAUTHORITY");
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
        let mut q = Quotas::new(Rates::uniform(Limits { rate: 1.0, burst: 2.0 }), "UAUTHORITY");
        let t0 = Instant::now();
        for i in 0..TRACKED {
            q.take(&format!("U{i}"), t0).unwrap();
        }
        q.take("UNEW", t0 + Duration::from_secs(10)).unwrap();
        assert!(q.buckets.len() < 10, "{} kept", q.buckets.len());
    }

    #[test]
    fn a_role_with_its_own_limits_and_the_most_generous_of_several() {
        let slow = Limits { rate: 1.0, burst: 2.0 };
        let fast = Limits { rate: 100.0, burst: 50.0 };
        let rates = Rates { default: Limits { rate: 10.0, burst: 10.0 }, roles: vec![(Role::Miner, slow), (Role::Regulator, fast)] };
        let mut q = Quotas::new(rates, "UAUTHORITY");
        q.set_roles("UMINE", &[Role::Miner]);
        q.set_roles("UBOTH", &[Role::Miner, Role::Regulator]);
        q.set_roles("UTRADER", &[Role::Trader]);
        let t0 = Instant::now();
        let sent = |q: &mut Quotas, who: &str| (0..100).take_while(|_| q.take(who, t0).is_ok()).count();
        assert_eq!(sent(&mut q, "UMINE"), 2, "a miner's own burst");
        assert_eq!(sent(&mut q, "UBOTH"), 50, "the more generous of its roles");
        assert_eq!(sent(&mut q, "UTRADER"), 10, "a role without its own: the default");
        assert_eq!(sent(&mut q, "UNKNOWN"), 10);
        assert!(Limits::parse("50/5000").is_ok());
        for bad in ["50", "x/1", "0/10", "5/0", "inf/3"] {
            assert!(Limits::parse(bad).is_err(), "{bad}");
        }
    }
}
