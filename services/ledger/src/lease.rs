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
    kv: kv::Store,
    /// This replica's name, written into the key.
    pub holder: String,
    pub ttl: Duration,
}

impl Lease {
    /// The lease bucket, created if absent.
    pub async fn open(js: &jetstream::Context, holder: String, ttl: Duration, replicas: usize) -> Result<Lease, LedgerError> {
        let kv = match js.get_key_value(BUCKET).await {
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
        };
        Ok(Lease { kv, holder, ttl })
    }

    /// Takes the lease if nobody holds it, or if it still names this
    /// replica (it restarted within the ttl: no other process can hold this
    /// replica's store); its revision then.
    pub async fn try_acquire(&self) -> Option<u64> {
        match self.kv.create(KEY, self.holder.clone().into()).await {
            Ok(rev) => Some(rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match self.kv.entry(KEY).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put && e.value.as_ref() == self.holder.as_bytes() => {
                    self.kv.update(KEY, self.holder.clone().into(), e.revision).await.ok()
                }
                _ => None,
            },
            Err(e) => {
                tracing::debug!(error = %e, "cannot reach the writer lease");
                None
            }
        }
    }

    /// Who holds the lease now, if anyone.
    pub async fn holder(&self) -> Option<String> {
        match self.kv.entry(KEY).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => Some(String::from_utf8_lossy(&e.value).into_owned()),
            _ => None,
        }
    }

    /// Renews the lease taken at `revision` until it is lost: another
    /// replica took it, or no renewal succeeded for a whole `ttl` (after
    /// which another may have). Returns then, saying why.
    pub async fn hold(&self, mut revision: u64) -> String {
        let every = self.ttl / 4;
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let attempt = Instant::now();
            match tokio::time::timeout(self.ttl / 2, self.kv.update(KEY, self.holder.clone().into(), revision)).await {
                Ok(Ok(rev)) => {
                    revision = rev;
                    renewed = attempt;
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return "another ledger took the writer lease".into(),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the writer lease"),
                Err(_) => tracing::warn!("renewing the writer lease timed out"),
            }
            if renewed.elapsed() >= self.ttl {
                return format!("the writer lease was not renewed for {:?} and may have passed to another ledger", self.ttl);
            }
        }
    }

    /// Gives the lease up (on a clean stop), so a standby takes over at
    /// once instead of after the ttl.
    pub async fn release(&self) {
        // Compare-and-delete on the revision read: never another holder's
        // lease taken between the read and the delete.
        if let Ok(Some(entry)) = self.kv.entry(KEY).await {
            if entry.value.as_ref() == self.holder.as_bytes() {
                let _ = self.kv.delete_expect_revision(KEY, Some(entry.revision)).await;
            }
        }
    }
}
