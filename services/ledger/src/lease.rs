//! The writer lease: which of several ledger replicas takes submissions.
//! A key in a JetStream key-value bucket whose entries expire `ttl` after
//! they were written (the bucket's `max_age`). A replica holds the lease
//! while the key holds its name: it creates the key (only possible when
//! absent, expired or deleted) and renews it by compare-and-set on its
//! revision. When renewals stop (the process died, or hangs), the key
//! expires and a standby creates it.
//!
//! A lease is not a fence: a paused holder can wake up past its expiry
//! still believing it writes. What stops it is the committed stream's
//! expected last sequence (see [`crate::commit`]); the lease only keeps
//! two live replicas from both trying.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};

use crate::service::LedgerError;

/// The bucket and the key.
pub const BUCKET: &str = "CUSTODY_LEASE";
pub const KEY: &str = "writer";

/// The file of a replica's instance id, inside its data folder.
pub const INSTANCE_FILE: &str = "instance.id";

/// This data folder's random instance id, made on first use and kept: two
/// replicas with the same host and path (containers, one deploy layout)
/// or the same `--name` never hold the lease as one, while a replica
/// restarted on its own folder is still itself.
pub fn instance_id(dir: &std::path::Path) -> Result<String, custody_wire::files::FileError> {
    let path = dir.join(INSTANCE_FILE);
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id.to_owned());
        }
    }
    // Sixteen hex digits from the operating system's randomness (a new
    // key's seed, hashed).
    let seed = nkeys::KeyPair::new_user().seed().unwrap_or_default();
    let id = blake3::hash(seed.as_bytes()).to_hex()[..16].to_owned();
    custody_wire::files::write_whole(&path, format!("{id}\n").as_bytes(), custody_wire::files::Mode::Shared)?;
    Ok(id)
}

/// The name a replica writes into the lease: its readable name and its
/// instance id.
pub fn holder_name(name: &str, instance: &str) -> String {
    format!("{name}#{instance}")
}

/// A ledger replica's view of the lease.
#[derive(Clone)]
pub struct Lease {
    kv: std::sync::Arc<std::sync::Mutex<kv::Store>>,
    /// This replica's clock and how far it may be off the servers'; none:
    /// not checked (a test clock that lies on purpose).
    clock: Option<(crate::clock::Clock, Duration)>,
    /// What this replica knows of the servers' time, and why its clock
    /// keeps it from writing, if it does.
    server_time: ServerTime,
    js: jetstream::Context,
    replicas: usize,
    /// This replica's name, written into the key.
    pub holder: String,
    pub ttl: Duration,
}

impl Lease {
    /// The lease bucket, created if absent.
    pub async fn open(js: &jetstream::Context, holder: String, ttl: Duration, replicas: usize) -> Result<Lease, LedgerError> {
        let kv = Lease::bucket(js, ttl, replicas).await?;
        Ok(Lease { kv: std::sync::Arc::new(std::sync::Mutex::new(kv)), clock: None, server_time: ServerTime::default(), js: js.clone(), replicas, holder, ttl })
    }

    /// Checks this replica's clock against the servers' at every take and
    /// renewal: off by more than `skew`, it does not write.
    pub fn with_clock(mut self, clock: crate::clock::Clock, skew: Duration) -> Lease {
        self.server_time.skew = Some(skew);
        self.clock = Some((clock, skew));
        self
    }

    /// Why this replica's clock keeps it from writing, if it does.
    pub fn clock_fault(&self) -> Option<String> {
        self.server_time.fault()
    }

    /// The servers' time as this replica last learnt it, for the writer to
    /// judge each clock reading by (see [`ServerTime::judge`]).
    pub fn server_time(&self) -> ServerTime {
        self.server_time.clone()
    }

    /// After a write to the lease at `before`..`after` (this replica's
    /// clock): the server stamped it at `created`. The clock is off by
    /// more than the allowed skew when `created` falls that far outside
    /// the interval ([`off_at_write`]). Remembers and returns why; when it
    /// is not off, remembers the stamp as the servers' time.
    async fn clock_is_off(&self, kv: &kv::Store, before: custody_proto::Timestamp) -> Option<String> {
        let (clock, skew) = self.clock.as_ref()?;
        let entry = kv.entry(KEY).await.ok()??;
        let after = clock.now();
        let stamped = entry.created.unix_timestamp_nanos() / 1_000_000;
        let stamped = i64::try_from(stamped).ok()?;
        let off = off_at_write(before.as_datetime().timestamp_millis(), stamped, after.as_datetime().timestamp_millis(), millis(*skew));
        self.server_time.learnt(stamped, off, *skew)
    }

    /// The lease bucket, checked against `ttl`, or created.
    async fn bucket(js: &jetstream::Context, ttl: Duration, replicas: usize) -> Result<kv::Store, LedgerError> {
        Ok(match js.get_key_value(BUCKET).await {
            Ok(kv) => {
                // The bucket's entries expire as it was made: a replica
                // with another ttl would renew too late, or take too soon.
                let status = kv.status().await.map_err(|e| LedgerError::Nats { what: "read the writer lease bucket", why: e.to_string() })?;
                if status.max_age() != ttl {
                    return Err(LedgerError::Mismatch(format!(
                        "--lease-ttl {} s disagrees with the writer lease bucket's {} s, set by the replica that made it: give every replica the same ttl",
                        ttl.as_secs_f64(),
                        status.max_age().as_secs_f64()
                    )));
                }
                kv
            }
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.into(),
                    history: 1,
                    max_age: ttl,
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| LedgerError::Nats { what: "create the writer lease bucket", why: e.to_string() })?,
        })
    }

    fn kv(&self) -> kv::Store {
        self.kv.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// After a lease operation failed: the bucket again, made anew if it
    /// was deleted (otherwise no replica could ever write again).
    async fn reopen(&self) {
        match Lease::bucket(&self.js, self.ttl, self.replicas).await {
            Ok(kv) => *self.kv.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = kv,
            Err(e) => tracing::warn!(error = %e, "cannot reach the writer lease bucket"),
        }
    }

    /// Takes the lease if nobody holds it, or if it still names this
    /// replica (it restarted within the ttl: no other process can hold this
    /// replica's store); its revision then.
    pub async fn try_acquire(&self) -> Option<u64> {
        let kv = self.kv();
        let before = self.clock.as_ref().map(|(c, _)| c.now());
        let taken = match kv.create(KEY, self.holder.clone().into()).await {
            Ok(rev) => Some(rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match kv.entry(KEY).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put && e.value.as_ref() == self.holder.as_bytes() => {
                    kv.update(KEY, self.holder.clone().into(), e.revision).await.ok()
                }
                _ => None,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the writer lease; opening its bucket again");
                self.reopen().await;
                None
            }
        };
        // Taken: only by a replica whose clock agrees with the servers'.
        if let (Some(revision), Some(before)) = (taken, before) {
            if let Some(why) = self.clock_is_off(&kv, before).await {
                tracing::error!(%why, "not taking the writer lease");
                let _ = kv.delete_expect_revision(KEY, Some(revision)).await;
                return None;
            }
        }
        taken
    }

    /// Who holds the lease now, if anyone.
    pub async fn holder(&self) -> Option<String> {
        match self.kv().entry(KEY).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => Some(String::from_utf8_lossy(&e.value).into_owned()),
            _ => None,
        }
    }

    /// Renews the lease taken at `revision` until it is lost: another
    /// replica took it, or no renewal succeeded for a whole `ttl` (after
    /// which another may have). Returns then, saying why.
    pub async fn hold(&self, revision: u64) -> String {
        let started = Instant::now();
        let mut renewal = Renewal::new(self.ttl, revision, Duration::ZERO);
        loop {
            tokio::time::sleep(renewal.every()).await;
            let attempt = started.elapsed();
            let before = self.clock.as_ref().map(|(c, _)| c.now());
            let result = match tokio::time::timeout(self.ttl / 2, self.kv().update(KEY, self.holder.clone().into(), renewal.revision())).await {
                Ok(Ok(rev)) => {
                    if let Some(why) = match before {
                        Some(before) => self.clock_is_off(&self.kv(), before).await,
                        None => None,
                    } {
                        return why;
                    }
                    Ok(rev)
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(Renew::Taken),
                Ok(Err(e)) => Err(Renew::Failed(e.to_string())),
                Err(_) => Err(Renew::Failed("timed out".into())),
            };
            if let Some(why) = renewal.renewed(attempt, result, started.elapsed()) {
                return why;
            }
        }
    }

    /// Gives the lease up (on a clean stop), so a standby takes over at
    /// once instead of after the ttl.
    pub async fn release(&self) {
        // Compare-and-delete on the revision read: never another holder's
        // lease taken between the read and the delete.
        let kv = self.kv();
        if let Ok(Some(entry)) = kv.entry(KEY).await {
            if entry.value.as_ref() == self.holder.as_bytes() {
                let _ = kv.delete_expect_revision(KEY, Some(entry.revision)).await;
            }
        }
    }
}

/// How far a replica's clock is off the servers' time, beyond the skew
/// allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Off {
    /// Ahead by this many milliseconds.
    Ahead(i64),
    /// Behind by this many milliseconds.
    Behind(i64),
}

impl Off {
    /// What a person reads: by how much, and what it stops.
    pub fn explain(self, skew: Duration) -> String {
        let (by, way) = match self {
            Off::Ahead(ms) => (ms, "ahead of"),
            Off::Behind(ms) => (ms, "behind"),
        };
        format!(
            "this replica's clock is {} s {way} the NATS servers', more than the {} s allowed (--max-clock-skew): it would record entries at a wrong time, so it does not write; set its clock right (NTP)",
            by / 1_000,
            skew.as_secs()
        )
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A lease write sent at `before` and answered at `after` (this replica's
/// clock, Unix milliseconds) was stamped by the server at `stamped`: the
/// clock is off when the stamp falls more than `skew` outside the
/// interval.
pub fn off_at_write(before: i64, stamped: i64, after: i64, skew: i64) -> Option<Off> {
    if stamped.saturating_add(skew) < before {
        Some(Off::Ahead(before - stamped))
    } else if stamped > after.saturating_add(skew) {
        Some(Off::Behind(stamped - after))
    } else {
        None
    }
}

/// Between lease writes: a `reading` of this replica's clock against the
/// servers' last stamp plus the time passed since by the monotonic clock
/// (`elapsed`), which no step of the wall clock moves. A clock stepped
/// after the last renewal is caught here, before it dates an entry, not at
/// the next renewal.
pub fn off_at_reading(reading: i64, stamped: i64, elapsed: i64, skew: i64) -> Option<Off> {
    let expected = stamped.saturating_add(elapsed);
    if reading > expected.saturating_add(skew) {
        Some(Off::Ahead(reading - expected))
    } else if reading < expected.saturating_sub(skew) {
        Some(Off::Behind(expected - reading))
    } else {
        None
    }
}

/// The servers' time as a replica learnt it from its last lease write (the
/// stamp, and when on the monotonic clock), and why its clock keeps it from
/// writing, if it does. Shared by the lease and the writer.
#[derive(Clone, Default)]
pub struct ServerTime {
    skew: Option<Duration>,
    inner: std::sync::Arc<std::sync::Mutex<Known>>,
}

#[derive(Default)]
struct Known {
    stamp: Option<(i64, Instant)>,
    fault: Option<String>,
}

impl ServerTime {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fault(&self) -> Option<String> {
        self.known().fault.clone()
    }

    /// After a lease write stamped at `stamped`: remembers the stamp, or
    /// why the clock is off.
    fn learnt(&self, stamped: i64, off: Option<Off>, skew: Duration) -> Option<String> {
        let mut known = self.known();
        known.fault = off.map(|o| o.explain(skew));
        if off.is_none() {
            known.stamp = Some((stamped, Instant::now()));
        }
        known.fault.clone()
    }

    /// Judges the clock reading a batch is about to be recorded at: why it
    /// may not be (remembered for the health report), or none. Not checked
    /// without an allowed skew (a test clock) or before any stamp.
    pub fn judge(&self, reading: custody_proto::Timestamp) -> Option<String> {
        let skew = self.skew?;
        let mut known = self.known();
        let (stamped, at) = known.stamp?;
        let off = off_at_reading(reading.as_datetime().timestamp_millis(), stamped, millis(at.elapsed()), millis(skew))?;
        let why = off.explain(skew);
        known.fault = Some(why.clone());
        Some(why)
    }
}

/// Why a renewal did not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renew {
    /// The key holds another revision: someone else took the lease.
    Taken,
    /// No answer, or an error: try again while the ttl allows.
    Failed(String),
}

/// When a held lease is renewed and when it counts as lost, without I/O
/// (times are durations since any fixed instant, on this replica's
/// monotonic clock): used by [`Lease::hold`] and the simulator.
#[derive(Debug, Clone)]
pub struct Renewal {
    ttl: Duration,
    revision: u64,
    /// When the last renewal that took was sent.
    renewed: Duration,
}

impl Renewal {
    /// A lease taken at `revision`, at `now`.
    pub fn new(ttl: Duration, revision: u64, now: Duration) -> Renewal {
        Renewal { ttl, revision, renewed: now }
    }

    /// How often to renew: four times a ttl, so that one or two lost
    /// renewals do not lose the lease.
    pub fn every(&self) -> Duration {
        self.ttl / 4
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The outcome of the renewal sent at `attempt`, known at `now`; why
    /// the lease is lost, if it is.
    pub fn renewed(&mut self, attempt: Duration, result: Result<u64, Renew>, now: Duration) -> Option<String> {
        match result {
            Ok(revision) => {
                self.revision = revision;
                self.renewed = attempt;
            }
            Err(Renew::Taken) => return Some("another ledger took the writer lease".into()),
            Err(Renew::Failed(why)) => tracing::warn!(%why, "cannot renew the writer lease"),
        }
        self.lapsed(now)
    }

    /// Lost for want of renewal: it may have passed to another replica.
    pub fn lapsed(&self, now: Duration) -> Option<String> {
        (now.saturating_sub(self.renewed) >= self.ttl)
            .then(|| format!("the writer lease was not renewed for {:?} and may have passed to another ledger", self.ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    #[test]
    fn a_lease_write_stamped_outside_the_skew_says_which_way_the_clock_is_off() {
        // Sent at 10:00:00 and answered at 10:00:01 by this clock.
        let (before, after) = (10 * 60 * MINUTE, 10 * 60 * MINUTE + 1_000);
        assert_eq!(off_at_write(before, before + 500, after, MINUTE), None);
        assert_eq!(off_at_write(before, before - 2 * MINUTE, after, MINUTE), Some(Off::Ahead(2 * MINUTE)));
        assert_eq!(off_at_write(before, after + 3 * MINUTE, after, MINUTE), Some(Off::Behind(3 * MINUTE)));
        let said = Off::Ahead(2 * MINUTE).explain(Duration::from_secs(60));
        assert!(said.starts_with("this replica's clock is 120 s ahead of the NATS servers'") && said.contains("--max-clock-skew"), "{said}");
    }

    #[test]
    fn a_reading_is_judged_by_the_last_stamp_and_the_monotonic_time_since() {
        let stamped = 1_000 * MINUTE;
        // 30 s after the stamp, a clock that reads 30 s later is right.
        assert_eq!(off_at_reading(stamped + 30_000, stamped, 30_000, MINUTE), None);
        // Stepped a month ahead since: caught at once, not at the next renewal.
        let month = 30 * 24 * 60 * MINUTE;
        assert_eq!(off_at_reading(stamped + 30_000 + month, stamped, 30_000, MINUTE), Some(Off::Ahead(month)));
        // Stepped back two minutes.
        assert_eq!(off_at_reading(stamped + 30_000 - 2 * MINUTE, stamped, 30_000, MINUTE), Some(Off::Behind(2 * MINUTE)));
    }
}
