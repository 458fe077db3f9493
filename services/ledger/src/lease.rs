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
    /// Why this replica may not write, when its clock is off.
    clock_fault: std::sync::Arc<std::sync::Mutex<Option<String>>>,
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
        Ok(Lease { kv: std::sync::Arc::new(std::sync::Mutex::new(kv)), clock: None, clock_fault: Default::default(), js: js.clone(), replicas, holder, ttl })
    }

    /// Checks this replica's clock against the servers' at every take and
    /// renewal: off by more than `skew`, it does not write.
    pub fn with_clock(mut self, clock: crate::clock::Clock, skew: Duration) -> Lease {
        self.clock = Some((clock, skew));
        self
    }

    /// Why this replica's clock keeps it from writing, if it does.
    pub fn clock_fault(&self) -> Option<String> {
        self.clock_fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// After a write to the lease at `before`..`after` (this replica's
    /// clock): the server stamped it at `created`. The clock is off by
    /// more than the allowed skew when `created` falls that far outside
    /// the interval. Remembers and returns why.
    async fn clock_is_off(&self, kv: &kv::Store, before: custody_proto::Timestamp) -> Option<String> {
        let (clock, skew) = self.clock.as_ref()?;
        let entry = kv.entry(KEY).await.ok()??;
        let after = clock.now();
        let created = chrono::DateTime::from_timestamp(entry.created.unix_timestamp(), entry.created.nanosecond())?;
        let skew = chrono::Duration::from_std(*skew).ok()?;
        let fault = if created + skew < before.as_datetime() {
            Some(format!("this replica's clock is {} s ahead of the NATS servers'", (before.as_datetime() - created).num_seconds()))
        } else if created > after.as_datetime() + skew {
            Some(format!("this replica's clock is {} s behind the NATS servers'", (created - after.as_datetime()).num_seconds()))
        } else {
            None
        }
        .map(|off| format!("{off}, more than the {} s allowed (--max-clock-skew): it would record entries at a wrong time, so it does not write; set its clock right (NTP)", skew.num_seconds()));
        *self.clock_fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = fault.clone();
        fault
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
