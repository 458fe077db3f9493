//! Crash points, for tests that must kill a process at an exact place
//! rather than at a random moment: with `CUSTODY_CRASH=name:N` in its
//! environment, the process aborts (as `kill -9` would end it: no
//! destructors, no flush) the Nth time it reaches the point `name`.
//! Without the variable a point costs one atomic load.
//!
//! Points: `projection.apply` (after each entry applied in memory, before
//! its chunk is saved), `projection.snapshot.writing` and
//! `projection.snapshot.saved`; in the ledger's write path,
//! `ledger.committed` (the stream acked a group of entries, the store has
//! not synced them), `ledger.synced` (the store synced them, no outcome has
//! left) and `ledger.following` (a replica, standby or catching up before
//! it writes, has put one batch of the stream's entries in its store);
//! saving the ledger's write model, `ledger.model.writing` (its contents
//! in the temporary file, not its checksum) and `ledger.model.saved` (the
//! file renamed into place).
//!
//! Fail points, for what cannot be made to fail from outside (root writes
//! anywhere): with `CUSTODY_FAIL=name:N`, the first N visits of the point
//! `name` report an I/O error instead of doing their work. Point:
//! `projection.checkpoint` (a checkpoint of the projection's store).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn point(var: &str) -> Option<(String, u64)> {
    let v = std::env::var(var).ok()?;
    let (name, n) = v.rsplit_once(':')?;
    Some((name.to_owned(), n.parse().ok()?))
}

fn armed() -> Option<&'static (String, u64)> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    ARMED.get_or_init(|| point("CUSTODY_CRASH")).as_ref()
}

/// An I/O error if this is one of the first N visits of the armed fail
/// point (`CUSTODY_FAIL=name:N`).
pub fn failure(name: &str) -> Option<std::io::Error> {
    static FAILING: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static VISITS: AtomicU64 = AtomicU64::new(0);
    let (failing, n) = FAILING.get_or_init(|| point("CUSTODY_FAIL")).as_ref()?;
    (failing == name && VISITS.fetch_add(1, Ordering::Relaxed) < *n).then(|| std::io::Error::other(format!("fail point {name}")))
}

/// Aborts the process if this is the armed point's Nth visit.
pub fn reached(name: &str) {
    static VISITS: AtomicU64 = AtomicU64::new(0);
    if let Some((armed, n)) = armed() {
        if armed == name && VISITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("custody: crash point {name} reached ({n}); aborting");
            std::process::abort();
        }
    }
}
