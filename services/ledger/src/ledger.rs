//! The ledger core: the store plus the write model, and the one operation
//! that matters, admitting a batch of checked submissions into entries. It
//! knows nothing of NATS: the service feeds it and delivers its outcomes.

use custody_proto::{ChainError, Entry, Event, Hash, KeyCache, Linked, Opened, Outcome, Receipt, Refusal, Rejection, Timestamp};
use std::borrow::Borrow;
use std::path::Path;

use crate::model::Model;
use crate::store::{Store, StoreError};
use custody_proto::lotmap::LotMap;
use custody_proto::merkle::Tree;
use custody_proto::ActorKey;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("entry {seq} cannot be replayed: {why}")]
    Replay { seq: u64, why: String },
    #[error("this ledger was created with genesis authority {recorded}, not {given}")]
    AuthorityChanged { recorded: String, given: String },
}

/// A submission after its envelope was opened and its signature and payload
/// checked: either an event ready for custody rules, or a refusal.
pub type Checked = Result<(Opened, Event), (Option<String>, Rejection)>;

/// One submission as it arrived: its bytes and, when it came on a subject
/// that names an actor (`custody.submit.<key>`, `custody.inbox.<key>`),
/// that key. The signer must be that actor: NATS lets each actor publish
/// only on its own subjects, and this makes those subjects mean something.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub bytes: Vec<u8>,
    pub subject_key: Option<String>,
    /// Over its actor's quota ([`crate::quota`]): refused `rate_limited`,
    /// unread, with this wait.
    pub limited: Option<std::time::Duration>,
}

impl Submitted {
    /// Bytes that came on no actor's subject (tests, fuzzing, benches).
    pub fn bare(bytes: Vec<u8>) -> Submitted {
        Submitted { bytes, subject_key: None, limited: None }
    }
}

/// Opens envelopes, verifies their signatures as one batch and parses their
/// payloads. Stateless and clockless: safe to run off the writer's thread.
/// The time rules run in [`Ledger::admit`], against the reading that also
/// becomes `recorded_at`.
pub fn check_batch(batch: Vec<Submitted>, keys: &mut KeyCache) -> Vec<Checked> {
    type Raw = (Vec<u8>, Option<std::time::Duration>);
    let (raws, subject_keys): (Vec<Raw>, Vec<Option<String>>) = batch.into_iter().map(|s| ((s.bytes, s.limited), s.subject_key)).unzip();
    // Over its quota: refused before anything in it is read.
    let opened: Vec<Result<Opened, Rejection>> = raws
        .into_iter()
        .map(|(r, limited)| match limited {
            Some(wait) => Err(crate::quota::refusal(wait)),
            None => Opened::open_with(r, keys),
        })
        .collect();
    let ok: Vec<Opened> = opened.iter().filter_map(|o| o.as_ref().ok().cloned()).collect();
    let mut verdicts = Opened::verify_all(&ok).into_iter();
    opened
        .into_iter()
        .zip(subject_keys)
        .map(|(o, subject_key)| {
            let o = o.map_err(|r| (None, r))?;
            let verdict = verdicts.next().unwrap_or(Ok(()));
            // The id is read again only to name a refusal.
            let id = |o: &Opened| Event::sniff_id(&o.payload);
            verdict.map_err(|r| (id(&o), r))?;
            if let Some(k) = subject_key.filter(|k| k.as_str() != o.signer.as_str()) {
                let why =
                    format!("submitted on the subject of {} but signed by {}: submit on the signer's own subject", custody_proto::ids::truncate(&k), o.signer);
                return Err((id(&o), Rejection::new(custody_proto::Code::SubjectMismatch, why)));
            }
            let event = Event::admissible(&o.payload).map_err(|r| (id(&o), r))?;
            if event.actor != o.signer {
                let why = format!("actor {} is not the signer {}", event.actor, o.signer);
                return Err((Some(event.id.to_string()), Rejection::new(custody_proto::Code::SignerMismatch, why)));
            }
            Ok((o, event))
        })
        .collect()
}

/// What admitting a batch produced: entries to make durable, and one outcome
/// per submission, in order, to send only after they are.
pub struct Admitted {
    pub entries: Vec<Entry>,
    /// For each entry, the lot-map keys of what it acts on.
    pub subjects: Vec<Vec<Hash>>,
    pub outcomes: Vec<Outcome>,
}

/// Entries replayed per signature batch at open.
const REPLAY_CHUNK: usize = 1024;
/// Fewest entries a thread checking the chain takes at start: below
/// this, one thread does it all.
const MIN_CHAIN_PART: u64 = 65_536;

/// What one thread found checking a part of the chain.
#[derive(Default)]
struct ChainPart {
    /// The `prev_hash` of its first entry (none if the store had none).
    link: Option<Hash>,
    /// Its last entry checked.
    last: Option<(u64, Hash)>,
    /// The tree of its entries, built on its own core and appended to
    /// the previous parts' at the join.
    tree: Tree,
    /// Why it stopped before its end, if an entry after `last` is wrong.
    failed: Option<StoreError>,
}

impl ChainPart {
    fn failed(e: StoreError) -> ChainPart {
        ChainPart { failed: Some(e), ..ChainPart::default() }
    }
}

pub struct Ledger {
    store: Store,
    model: Model,
    head: Option<(u64, Hash)>,
    /// The Merkle tree over the replayed entries, until the service takes it.
    tree: Tree,
    /// The lot map after the replayed entries, taken with the tree.
    map: LotMap,
    /// Whether the lot map is kept (off only to measure its cost).
    lot_map: bool,
    /// The head entry's `recorded_at`.
    recorded: Option<Timestamp>,
    /// The verified-through mark of the saved write model this state
    /// stands on or last saved ([`crate::saved`]).
    mark: Option<(u64, Hash)>,
    /// Entries replayed (signatures verified, events applied) at open.
    replayed: u64,
    /// Whether the tree and map were taken by the service: the state can
    /// no longer be saved whole.
    taken: bool,
    /// The genesis authority, which a saved state must name.
    authority: ActorKey,
    /// Signers' keys, decompressed once, for replay.
    keys: KeyCache,
}

impl Ledger {
    /// Opens the store, checks the whole chain (hash, link, signature) and
    /// replays it into the write model. Refuses to start on any broken
    /// link, naming the seq. A committed entry is never judged again: its
    /// effect is applied whatever today's admission rules would say of it.
    pub fn open(dir: &Path, authority: &ActorKey) -> Result<Ledger, OpenError> {
        Ledger::load(Store::open(dir)?, authority)
    }

    /// [`Ledger::open`] of a store this process just closed: sled lets go
    /// of its file lock a moment after the last handle is dropped, so a
    /// held lock is waited on (5 s at most).
    pub fn reopen(dir: &Path, authority: &ActorKey) -> Result<Ledger, OpenError> {
        Ledger::load(Store::reopen(dir)?, authority)
    }

    /// [`Ledger::open`] on a store already open: after a writer steps
    /// down, its in-memory model (ahead of what committed) is rebuilt from
    /// what is durable.
    pub fn load(store: Store, authority: &ActorKey) -> Result<Ledger, OpenError> {
        match store.authority()? {
            Some(recorded) if recorded != authority.as_str() => return Err(OpenError::AuthorityChanged { recorded, given: authority.to_string() }),
            Some(_) => {}
            None => store.set_authority(authority.as_str())?,
        }
        let mut ledger = Ledger {
            store,
            model: Model::new(authority.clone()),
            head: None,
            tree: Tree::new(),
            map: LotMap::new(),
            lot_map: true,
            recorded: None,
            mark: None,
            replayed: 0,
            taken: false,
            authority: authority.clone(),
            keys: KeyCache::default(),
        };
        let store = ledger.store.clone();
        let started = std::time::Instant::now();
        match crate::saved::read(store.dir(), authority) {
            Ok(Some(saved)) => {
                ledger.resume(saved)?;
                tracing::info!(mark = ?ledger.mark.map(|m| m.0), ms = started.elapsed().as_millis() as u64, "saved write model read, hash chain checked up to its mark");
            }
            Ok(None) => {}
            Err(damage) => tracing::warn!(%damage, file = crate::saved::FILE, "the saved write model is not used: rebuilding the state from the store"),
        }
        let from = ledger.head.map_or(1, |h| h.0 + 1);
        let mut entries = store.entries_from(from).peekable();
        while entries.peek().is_some() {
            let chunk = entries.by_ref().take(REPLAY_CHUNK).collect::<Result<Vec<Entry>, StoreError>>()?;
            ledger.replay(&chunk, Entry::check_after)?;
            ledger.replayed += chunk.len() as u64;
        }
        drop(entries);
        if ledger.head != ledger.store.head()? {
            return Err(StoreError::Corrupt(format!("replay ended at {:?}, head record says {:?}", ledger.head, ledger.store.head()?)).into());
        }
        Ok(ledger)
    }

    /// Takes the saved state if the store's chain, checked entry by entry
    /// from seq 1 (hash and link, no signature), reaches exactly its mark:
    /// every entry up to it is then the one whose signature was verified
    /// before the state was saved. Otherwise leaves the ledger empty, for
    /// a full replay. A broken chain is refused as at any start.
    fn resume(&mut self, saved: crate::saved::Read) -> Result<(), OpenError> {
        let mark = (saved.seq, saved.hash);
        // The state decodes on one core while the chain is checked on another.
        let started = std::time::Instant::now();
        let (decoded, chain) = std::thread::scope(|s| {
            let decoding = s.spawn(move || {
                let mut decoded = saved.decode();
                tracing::debug!(ms = started.elapsed().as_millis() as u64, "saved write model decoded");
                // Whatever of the lot map is not hashed yet is hashed here,
                // beside the chain, not by a writer's first checkpoint once
                // it serves (the map locked meanwhile). A map saved with its
                // branch hashes has nothing left to hash.
                if let Ok(crate::saved::Saved { map: Some(map), .. }) = &mut decoded {
                    map.root();
                    tracing::debug!(ms = started.elapsed().as_millis() as u64, "saved lot map hashed");
                }
                decoded
            });
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) as u64;
            let chain = self.check_chain(mark.0, mark.0.div_ceil(MIN_CHAIN_PART).min(cores));
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "hash chain checked up to the saved write model's mark");
            (decoding.join(), chain)
        });
        let (head, tree) = chain?;
        let saved = match decoded {
            Ok(Ok(saved)) => saved,
            Ok(Err(damage)) => {
                tracing::warn!(%damage, file = crate::saved::FILE, "the saved write model is not used: rebuilding the state from the store");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!(file = crate::saved::FILE, "the saved write model could not be decoded: rebuilding the state from the store");
                return Ok(());
            }
        };
        if self.lot_map && saved.map.is_none() {
            tracing::warn!(file = crate::saved::FILE, "the saved write model has no lot map: rebuilding the state from the store");
            return Ok(());
        }
        if head != Some(mark) {
            tracing::warn!(
                mark = mark.0,
                store = ?head.map(|h| h.0),
                file = crate::saved::FILE,
                "the saved write model is of another history than the store: rebuilding the state from the store"
            );
            return Ok(());
        }
        self.model = saved.model;
        self.map = saved.map.unwrap_or_default();
        self.tree = tree;
        self.head = head;
        self.recorded = saved.recorded;
        self.mark = head;
        Ok(())
    }

    /// Checks hash and link of entries 1..=`upto` (fewer if the store
    /// ends before), and builds their tree. The range is cut into `parts`
    /// (one per core), each read from the store and hashed on its own thread:
    /// a part checks every entry's hash and its link to the entry before
    /// it, its first entry's link is checked against the previous part's
    /// last hash when the parts are joined, in order, so the first wrong
    /// entry is the one reported, as when checked on one thread.
    fn check_chain(&self, upto: u64, parts: u64) -> Result<(Option<(u64, Hash)>, Tree), OpenError> {
        let per = upto.div_ceil(parts.max(1)).max(1);
        let parts: Vec<(u64, u64)> = (0..upto.div_ceil(per)).map(|i| (1 + i * per, (i + 1).saturating_mul(per).min(upto))).collect();
        let checked: Vec<ChainPart> = std::thread::scope(|s| {
            let threads: Vec<_> = parts.iter().map(|&(first, last)| s.spawn(move || self.check_part(first, last))).collect();
            threads.into_iter().map(|t| t.join().unwrap_or_else(|_| ChainPart::failed(StoreError::Corrupt("a chain-checking thread failed".into())))).collect()
        });
        let mut head = None;
        let mut tree = Tree::new();
        for ((first, last), part) in parts.into_iter().zip(checked) {
            // The part's first entry links to where the previous one
            // ended: checked before what the part found after it.
            let expected = head.map_or(Hash::GENESIS, |(_, h)| h);
            match part.link {
                Some(link) if link != expected => return Err(StoreError::from(ChainError::BrokenLink { seq: first, expected, found: link }).into()),
                _ => {}
            }
            if let Some(e) = part.failed {
                return Err(e.into());
            }
            tree.append(part.tree);
            if part.last.is_some() {
                head = part.last;
            }
            // The store ends inside this part: nothing follows.
            if part.last.map(|l| l.0) != Some(last) {
                break;
            }
        }
        Ok((head, tree))
    }

    /// Entries `first..=last` (fewer if the store ends before): each
    /// one's hash, and its link to the one before it in the part.
    fn check_part(&self, first: u64, last: u64) -> ChainPart {
        let len = last.saturating_add(1).saturating_sub(first);
        let mut part = ChainPart { link: None, last: None, tree: Tree::new(), failed: None };
        for entry in self.store.entries_from(first).take(usize::try_from(len).unwrap_or(usize::MAX)) {
            let checked = entry.and_then(|entry| {
                let prev = match part.last {
                    Some(prev) => Some(prev),
                    // The first: its seq must be where the part begins;
                    // its link is checked when the parts are joined.
                    None if entry.seq != first => return Err(ChainError::OutOfOrder { seq: entry.seq, expected: first }.into()),
                    None => {
                        part.link = Some(entry.prev_hash);
                        (first > 1).then_some((first - 1, entry.prev_hash))
                    }
                };
                entry.check_after(prev)?;
                Ok(entry)
            });
            match checked {
                Ok(entry) => {
                    part.tree.push(&entry.hash);
                    part.last = Some((entry.seq, entry.hash));
                }
                Err(e) => {
                    part.failed = Some(e);
                    break;
                }
            }
        }
        part
    }

    /// Saves the state as the new verified-through mark, when it is
    /// whole (not taken by a writer) and moved since the last: what makes
    /// the next start fast. Only a state that is all durable may be
    /// saved: at open, on a standby, never on a writer ahead of its store.
    pub fn save(&mut self) -> Result<bool, custody_wire::files::FileError> {
        let Some(head) = self.head.filter(|h| !self.taken && self.mark != Some(*h)) else { return Ok(false) };
        let map = self.lot_map.then_some(&mut self.map);
        crate::saved::save(self.store.dir(), &self.authority, head, self.recorded, &self.model, map)?;
        self.mark = Some(head);
        Ok(true)
    }

    /// Entries replayed at open, after the saved write model's mark.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// The verified-through mark this state last stood on or saved.
    pub fn mark(&self) -> Option<(u64, Hash)> {
        self.mark
    }

    /// The digest of the whole state ([`crate::saved::digest`]).
    pub fn digest(&mut self) -> Hash {
        let map = self.lot_map.then_some(&mut self.map);
        crate::saved::digest(self.head, &self.model, map, &self.tree)
    }

    /// Applies committed entries that follow the head (each linked to the
    /// one before, every signature verified as one batch) to the write
    /// model and the tree. Nothing is judged again. The store is not
    /// written: see [`Ledger::follow`].
    /// `check` says how each entry's place is checked: its hash and link
    /// for one read from the store, its link alone for one the follower
    /// already hashed ([`Linked`]).
    fn replay<E: Borrow<Entry>>(&mut self, chunk: &[E], check: impl Fn(&E, Option<(u64, Hash)>) -> Result<(), ChainError>) -> Result<(), OpenError> {
        let mut head = self.head;
        let mut opened = Vec::with_capacity(chunk.len());
        for linked in chunk {
            check(linked, head).map_err(StoreError::from)?;
            let entry: &Entry = linked.borrow();
            opened.push(Opened::open_with(entry.envelope.clone(), &mut self.keys).map_err(|r| OpenError::Replay { seq: entry.seq, why: r.to_string() })?);
            head = Some((entry.seq, entry.hash));
        }
        // Signatures are verified as a batch: about half the cost.
        let verdicts = Opened::verify_all(&opened);
        let mut events = Vec::with_capacity(chunk.len());
        for ((entry, opened), verdict) in chunk.iter().map(E::borrow).zip(opened).zip(verdicts) {
            let replay_err = |why: String| OpenError::Replay { seq: entry.seq, why };
            verdict.map_err(|r| replay_err(r.to_string()))?;
            let event = Event::decode(&opened.payload).map_err(|r| replay_err(r.to_string()))?;
            events.push((event, blake3::hash(&opened.payload)));
        }
        // Only a chunk that checked whole touches the model.
        for (entry, (event, digest)) in chunk.iter().map(E::borrow).zip(events) {
            if self.lot_map {
                for key in self.model.subjects(&event) {
                    self.map.touch(&key, entry.seq, &entry.hash);
                }
            }
            self.model.apply(&event);
            self.model.remember(event.id.clone(), digest, entry);
            self.recorded = Some(entry.recorded_at);
            self.tree.push(&entry.hash);
        }
        self.head = head;
        Ok(())
    }

    /// Takes entries another writer committed on the stream: checks and
    /// applies them like a replay (their hashes already checked by the
    /// follower that linked them), then makes them durable in the store.
    /// How a standby follows the active writer, and how any ledger catches
    /// up with the stream before it writes.
    pub fn follow(&mut self, entries: &[Linked]) -> Result<(), OpenError> {
        self.replay(entries, Linked::check_follows)?;
        self.store.append(entries)?;
        Ok(())
    }

    pub fn head(&self) -> Option<(u64, Hash)> {
        self.head
    }

    /// The Merkle tree and the lot map over the entries replayed (left
    /// empty): what the notary signs from then on; `None` for the map when
    /// it is not kept.
    pub fn take_transparency(&mut self) -> (Tree, Option<LotMap>) {
        self.taken = true;
        (std::mem::take(&mut self.tree), self.lot_map.then(|| std::mem::take(&mut self.map)))
    }

    /// Keeps the lot map, or not (off only to measure what it costs: a
    /// ledger without it signs checkpoints without a map root).
    pub fn with_lot_map(mut self, on: bool) -> Ledger {
        self.lot_map = on;
        if !on {
            self.map = LotMap::new();
        }
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every actor's key and roles, as committed so far.
    pub fn roles(&self) -> impl Iterator<Item = (&str, &[custody_proto::Role])> {
        self.model.roles()
    }

    /// Applies the time and custody rules to each checked submission in
    /// order and builds entries for the accepted ones. `now` is the batch's
    /// one clock reading: every entry is recorded at it (or at the head's
    /// `recorded_at`, if the clock stepped back: it never goes backwards
    /// along the chain), and every `occurred_at` is judged against that
    /// same instant, so no admitted event can look "in the future" of its
    /// own entry. Nothing is durable yet: the caller must
    /// [`Ledger::commit`] before sending any outcome.
    pub fn admit(&mut self, batch: Vec<Checked>, now: Timestamp) -> Admitted {
        // What "the future" means is the clock's reading; what is recorded
        // never goes below the head's (a clock stepped back), so a head
        // recorded ahead (a writer whose clock ran fast) cannot let an
        // event dated beyond the allowed skew in.
        let clock = now;
        let now = self.recorded.map_or(now, |head| now.max(head));
        let mut entries = Vec::new();
        let mut subjects = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for item in batch {
            let (opened, event) = match item {
                Ok(x) => x,
                Err((id, r)) => {
                    outcomes.push(refusal(id, r));
                    continue;
                }
            };
            let span = tracing::debug_span!("envelope", id = %event.id, kind = event.body.kind());
            let _guard = span.enter();
            let digest = blake3::hash(&opened.payload);
            if let Some(seen) = self.model.replay(&event.id, &digest) {
                outcomes.push(seen.map_or_else(|r| refusal(Some(event.id.to_string()), r), Outcome::Receipt));
                continue;
            }
            if let Err(r) = event.check_time(clock).and_then(|()| self.model.check(&event)) {
                tracing::debug!(code = %r.code, "rejected");
                outcomes.push(refusal(Some(event.id.to_string()), r));
                continue;
            }
            subjects.push(if self.lot_map { self.model.subjects(&event) } else { Vec::new() });
            self.model.apply(&event);
            let entry = Entry::next(self.head, now, opened.raw);
            self.recorded = Some(now);
            self.head = Some((entry.seq, entry.hash));
            self.model.remember(event.id.clone(), digest, &entry);
            outcomes.push(Outcome::Receipt(receipt(&event, &entry)));
            entries.push(entry);
        }
        Admitted { entries, subjects, outcomes }
    }
}

fn receipt(event: &Event, entry: &Entry) -> Receipt {
    Receipt { id: event.id.to_string(), seq: entry.seq, hash: entry.hash, recorded_at: entry.recorded_at.to_rfc3339() }
}

/// The outcome that refuses a submission.
pub fn refusal(id: Option<String>, r: Rejection) -> Outcome {
    Outcome::Rejected(Refusal { id, code: r.code, message: r.message, retry_after_ms: r.retry_after_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nkeys::KeyPair;

    fn submitted(key: &KeyPair, payload: serde_json::Value) -> Submitted {
        Submitted::bare(custody_proto::envelope::sign(key, payload.to_string().as_bytes()).unwrap())
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    /// The check stage reads no clock: an event checked while the clock
    /// said 12:00 and admitted after it stepped back to 11:00 is judged
    /// against 11:00, the reading its entry would carry. Before, the two
    /// readings differed and such an entry was admitted, recorded at 11:00,
    /// and refused by the next replay: the ledger would not start.
    #[test]
    fn one_clock_reading_judges_and_records_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let authority = KeyPair::new_user();
        let miner = KeyPair::new_user();
        let authority_key: ActorKey = authority.public_key().parse().unwrap();
        let mut ledger = Ledger::open(dir.path(), &authority_key).unwrap();
        let mut keys = KeyCache::default();
        let register = serde_json::json!({"id": "reg", "kind": "actor.registered", "actor": authority.public_key(), "occurred_at": "2026-03-01T10:00:00Z",
            "subject": miner.public_key(), "name": "m", "roles": ["miner"], "country": "BW"});
        let admitted = ledger.admit(check_batch(vec![submitted(&authority, register)], &mut keys), at("2026-03-01T10:00:00Z"));
        ledger.store().append(&admitted.entries).unwrap();

        let mined = |id: &str, occurred: &str| serde_json::json!({"id": id, "kind": "mined", "actor": miner.public_key(), "occurred_at": occurred, "lot": id, "carats": "1.00", "country": "BW"});
        let checked =
            check_batch(vec![submitted(&miner, mined("ahead", "2026-03-01T12:04:00Z")), submitted(&miner, mined("fine", "2026-03-01T11:00:00Z"))], &mut keys);
        let admitted = ledger.admit(checked, at("2026-03-01T11:00:00Z"));
        let codes: Vec<&str> = admitted
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Receipt(_) => "receipt",
                Outcome::Rejected(r) => r.code.as_str(),
            })
            .collect();
        assert_eq!(codes, ["invalid_time", "receipt"]);
        ledger.store().append(&admitted.entries).unwrap();

        // Across a restart the clock steps back further: recorded_at holds.
        drop(ledger);
        let mut ledger = Ledger::reopen(dir.path(), &authority_key).expect("every committed entry replays");
        let admitted = ledger.admit(check_batch(vec![submitted(&miner, mined("later", "2026-02-01T00:00:00Z"))], &mut keys), at("2026-02-01T00:00:00Z"));
        assert_eq!(admitted.entries[0].recorded_at, at("2026-03-01T11:00:00Z"));
        ledger.store().append(&admitted.entries).unwrap();
        drop(ledger);
        Ledger::reopen(dir.path(), &authority_key).expect("every committed entry replays");
    }

    /// The chain checked in parts on several threads gives the head and
    /// tree of one thread's check, and the same first wrong entry: one
    /// inside a part, and one at a part's first entry (whose link is
    /// checked only when the parts are joined).
    #[test]
    fn the_chain_checked_in_parts_finds_what_one_thread_finds() {
        let dir = tempfile::tempdir().unwrap();
        let mut world = crate::synthetic::Synthetic::new(3);
        let mut ledger = Ledger::open(dir.path(), &world.authority_key()).unwrap();
        world.extend(&mut ledger, 40).unwrap();
        let (head, tree) = ledger.check_chain(40, 1).unwrap();
        assert_eq!(head.map(|h| h.0), Some(40));
        for parts in [2, 3, 7, 40, 64] {
            let (h, t) = ledger.check_chain(40, parts).unwrap();
            assert_eq!((h, t.root(), t.len()), (head, tree.root(), 40), "{parts} parts");
        }
        // A store that ends before the mark: the head is where it ends.
        let (short, _) = ledger.check_chain(60, 3).unwrap();
        assert_eq!(short, head);

        let entries: Vec<Entry> = ledger.store().entries_from(1).collect::<Result<_, _>>().unwrap();
        let first_wrong = |ledger: &Ledger, parts: u64| match ledger.check_chain(40, parts) {
            Err(OpenError::Store(StoreError::Chain(e))) => e.seq(),
            other => panic!("{parts} parts: {:?}", other.map(|(h, _)| h)),
        };
        // A changed envelope byte at entry 17 (inside a part, or the
        // first of one, by the number of parts).
        let mut changed = entries[16].clone();
        changed.envelope[10] ^= 1;
        ledger.store().append(&[changed]).unwrap();
        ledger.store().append(&entries[17..]).unwrap();
        for parts in [1, 2, 3, 4, 8] {
            assert_eq!(first_wrong(&ledger, parts), 17, "{parts} parts");
        }
        // Entry 21 rehashed over another link: it checks on its own, and
        // breaks only against entry 20 (the first of a part at 2 parts).
        ledger.store().append(&entries[16..]).unwrap();
        let mut relinked = entries[20].clone();
        relinked.prev_hash = Hash([7; 32]);
        relinked.hash = Entry::compute_hash(relinked.seq, &relinked.prev_hash, &relinked.recorded_at, &relinked.envelope);
        ledger.store().append(&[relinked]).unwrap();
        ledger.store().append(&entries[21..]).unwrap();
        for parts in [1, 2, 3, 4, 8] {
            assert_eq!(first_wrong(&ledger, parts), 21, "{parts} parts");
        }
    }
}
