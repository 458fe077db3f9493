//! The ledger's clock: what `recorded_at` says, and what "the future" is for
//! an `occurred_at`. The system clock, unless the test switch
//! `custody ledger --test-clock-file FILE` is given: then the ledger reads
//! the time (RFC 3339) from FILE at each batch, and the system clock while
//! FILE is absent or unreadable. Tests set it to record events "on time" at
//! past dates (a grandfathered departure, the 7-day line of a late record)
//! and to step it back. A ledger serving a real trade never sets it; even
//! then `recorded_at` never goes backwards along the chain.

use std::path::PathBuf;

use custody_proto::Timestamp;

#[derive(Debug, Clone, Default)]
pub struct Clock {
    file: Option<PathBuf>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The test clock: the time written in `file` (test switch).
    pub fn from_file(file: PathBuf) -> Clock {
        Clock { file: Some(file) }
    }

    pub fn now(&self) -> Timestamp {
        self.file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).and_then(|t| t.trim().parse().ok()).unwrap_or_else(Timestamp::now)
    }
}
