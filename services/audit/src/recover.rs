//! The verified history a damaged or lost ledger store is rebuilt from
//! (`custody ledger recover`): the committed stream from seq 1, every entry
//! re-verified (hash, link, signature, event, unique id) before it is
//! handed on. Writing it is the ledger's business; this module can neither
//! read nor write the ledger's store.

use custody_proto::Entry;
use custody_wire::follow::{FollowError, Reader};
use futures::StreamExt;

use crate::verify::{Bad, Checker, Unreadable};

/// Why the committed stream cannot be recovered from.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
    #[error("the committed stream fails verification at {0}; nothing to recover from")]
    Bad(Bad),
    /// The sink refused a batch.
    #[error(transparent)]
    Sink(E),
}

/// Hands the committed stream's entries, seq 1 to its current end, to
/// `sink` in verified batches; returns how many. Nothing reaches `sink`
/// before it is verified, signatures included.
pub async fn verified<E: std::error::Error + 'static>(reader: &Reader, mut sink: impl FnMut(&[Entry]) -> Result<(), E>) -> Result<u64, RecoverError<E>> {
    let last = reader.last_seq().await.map_err(Unreadable::from)?;
    let mut checker = Checker::new(Box::new(|_| {}));
    let mut batches = std::pin::pin!(reader.entries(None, Some(last)));
    while let Some(batch) = batches.next().await {
        let entries = match batch {
            Ok(entries) => entries,
            Err(FollowError::Read(e)) => return Err(Unreadable::from(e).into()),
            Err(FollowError::Broken { seq, why }) => return Err(RecoverError::Bad(Bad { seq, why })),
        };
        let entries: Vec<Entry> = entries.into_iter().map(custody_proto::Linked::into_entry).collect();
        for e in &entries {
            checker.push(e.clone()).map_err(RecoverError::Bad)?;
        }
        // Signatures are checked in batches: none is handed on unchecked.
        checker.head().map_err(RecoverError::Bad)?;
        sink(&entries).map_err(RecoverError::Sink)?;
    }
    checker.finish().map_err(RecoverError::Bad)?;
    Ok(last)
}
