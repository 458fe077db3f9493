//! The writer's decisions, without I/O: what to publish, when an outcome
//! is unknown and what the stream's answer means, when a batch may be
//! answered, and when to step down. [`crate::service`] runs it on NATS;
//! [`crate::simulator`] runs the same code against a simulated stream
//! under faults, on a simulated clock.
//!
//! The writer admits batches (decided by the model against its head),
//! publishes their entries as atomic batches that expect the stream to end
//! where each starts, and hands a batch on (to be made durable and
//! answered) only once the stream holds its entries. A batch that is
//! refusals only is fenced by no append: it is handed on only after a read
//! barrier (Raft's ReadIndex) finds the stream still ending where it was
//! decided, or going on with this writer's own next entry. An ack that is
//! not the expected one is resolved by reading the stream back, never by
//! guessing; another writer's entry, a fence with none of ours, or a
//! stream that stays unreadable for [`PATIENCE`] steps the writer down.

use std::collections::VecDeque;
use std::time::Duration;

use custody_proto::{Entry, Hash};

/// Entries as the writer sees them: a place on the chain and a hash.
pub trait Chained: Clone {
    fn seq(&self) -> u64;
    fn hash(&self) -> Hash;
}

impl Chained for Entry {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn hash(&self) -> Hash {
        self.hash
    }
}

/// Largest number of entries in one atomic batch.
pub use custody_wire::atomic::MAX_ATOMIC;

/// Atomic batches awaiting their ack at once: one. A batch sent before the
/// one ahead of it is acked could land on another writer's entries: the
/// stream's fence compares the expected last *sequence*, not the hash
/// there, so if the batch ahead is refused because another writer
/// appended, and that writer's entries end exactly where the batch ahead
/// would have, the next batch is stored on top of them and the chain on
/// the stream breaks for good. The simulator found it (seed 20 of the
/// first runs, kept as a test). With one batch in flight, a batch's
/// expected last entry is always one the stream acked to this writer.
/// Measured: 2, 4 or 8 batches in flight gained nothing beyond the noise
/// (docs/BENCHMARKS.md); batches grow with the load instead.
pub const WINDOW: usize = 1;

/// Admitted entries waiting to be sent, in atomic batches, before the
/// writer stops admitting more.
const UNSENT: usize = 4;

/// How long a read barrier or a read-back may go unanswered before the
/// writer steps down rather than answer unconfirmed or wait forever (a
/// deleted stream, a lost stream leader): a standby, or this replica again
/// after catching up, takes over cleanly.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// How long to wait before asking the stream again.
pub const RETRY: Duration = Duration::from_millis(250);

/// A batch admitted by the model: its entries (maybe none) and what
/// answers it (`A`: the outcomes and where they go).
pub struct Batch<E, A> {
    /// The model's head when it decided the batch: what its refusals were
    /// decided against.
    pub decided_at: u64,
    pub entries: Vec<E>,
    pub answers: A,
}

/// What the stream said to one atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Stored; its last entry at this sequence.
    Stored(u64),
    /// Refused: the stream did not end where the batch expected (nothing
    /// of it was stored).
    WrongLast,
    /// No ack, or another error: the outcome is unknown.
    Unknown(String),
}

/// What a read-back found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadBack {
    /// The first `n` of the entries asked about are on the stream.
    Held(usize),
    /// Another writer's entry stands at `seq`.
    Foreign { seq: u64, what: String },
    /// The stream did not answer.
    Unreadable(String),
}

/// What a read barrier found: the stream's last sequence and the hash of
/// the entry after the one the batch was decided at, when there is one.
pub type BarrierRead = Result<(u64, Option<Hash>), String>;

/// What the writer asks of its runner.
pub enum Step<E, A> {
    /// Publish these consecutive entries as one atomic batch expecting the
    /// stream to end just before the first; report with [`Writer::acked`]
    /// and this generation.
    Send { generation: u64, entries: Vec<E> },
    /// After `after`, read the stream over these entries (how many of them
    /// it holds, in order); report with [`Writer::read_back`].
    ReadBack { after: Duration, entries: Vec<E> },
    /// After `after`, read the stream's end and the entry after
    /// `decided_at`; report with [`Writer::barrier`].
    Barrier { after: Duration, decided_at: u64 },
    /// On the stream (or, for refusals, confirmed): make it durable, then
    /// answer.
    HandOn(Batch<E, A>),
    /// This replica may no longer write.
    StepDown(String),
}

/// Something the writer is waiting for before it may go on.
enum Wait {
    ReadBack { wrong_last: bool, since: Duration },
    Barrier { decided_at: u64, since: Duration },
}

/// Switches that take one of the writer's safeguards away, so that a test
/// can show the simulator finds the bug each one prevents. Never set
/// outside those tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flaws {
    /// Refusals leave without a read barrier.
    pub no_barrier: bool,
    /// A read-back that stays unreadable is tried forever.
    pub endless_read_back: bool,
    /// Eight atomic batches in flight instead of one.
    pub pipelined: bool,
}

/// The active writer.
pub struct Writer<E, A> {
    /// The stream holds every entry up to here.
    committed: u64,
    pending: VecDeque<Batch<E, A>>,
    /// Acks of an older generation (before a read-back) are stale.
    generation: u64,
    /// The batches sent in this generation, in order: last seq and ack.
    in_flight: VecDeque<(u64, Option<Ack>)>,
    /// Admitted, not yet sent: each at most [`MAX_ATOMIC`] entries.
    unsent: VecDeque<Vec<E>>,
    window: usize,
    waiting: Option<Wait>,
    flaws: Flaws,
}

impl<E: Chained, A> Writer<E, A> {
    /// A writer whose stream and store both end at `committed`.
    pub fn new(committed: u64) -> Writer<E, A> {
        Writer {
            committed,
            pending: VecDeque::new(),
            generation: 0,
            in_flight: VecDeque::new(),
            unsent: VecDeque::new(),
            window: WINDOW,
            waiting: None,
            flaws: Flaws::default(),
        }
    }

    pub fn with_flaws(mut self, flaws: Flaws) -> Writer<E, A> {
        self.flaws = flaws;
        if flaws.pipelined {
            self.window = 8;
        }
        self
    }

    /// May another batch be admitted now (nothing being resolved, the
    /// window not full)?
    pub fn ready(&self) -> bool {
        self.waiting.is_none() && self.unsent.len() < UNSENT
    }

    /// Everything admitted is handed on.
    pub fn idle(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// A batch the model admitted: its entries go out at once.
    pub fn admitted(&mut self, now: Duration, batch: Batch<E, A>) -> Vec<Step<E, A>> {
        let mut steps = Vec::new();
        for chunk in batch.entries.chunks(MAX_ATOMIC) {
            self.unsent.push_back(chunk.to_vec());
        }
        self.pending.push_back(batch);
        self.send(&mut steps);
        self.hand_on(now, &mut steps);
        steps
    }

    /// Sends what waits, while the window allows.
    fn send(&mut self, steps: &mut Vec<Step<E, A>>) {
        while self.waiting.is_none() && self.in_flight.len() < self.window {
            let Some(entries) = self.unsent.pop_front() else { return };
            if let Some(last) = entries.last() {
                self.in_flight.push_back((last.seq(), None));
                steps.push(Step::Send { generation: self.generation, entries });
            }
        }
    }

    /// The stream's answer to the batch of `generation` ending at `last`;
    /// acks may come in any order, twice, or long after.
    pub fn acked(&mut self, now: Duration, generation: u64, last: u64, ack: Ack) -> Vec<Step<E, A>> {
        let mut steps = Vec::new();
        if generation != self.generation || matches!(self.waiting, Some(Wait::ReadBack { .. })) {
            return steps;
        }
        if let Some(slot) = self.in_flight.iter_mut().find(|(l, a)| *l == last && a.is_none()) {
            slot.1 = Some(ack);
        }
        while let Some((last, Some(ack))) = self.in_flight.front().cloned() {
            self.in_flight.pop_front();
            match ack {
                Ack::Stored(seq) if seq == last => self.committed = self.committed.max(last),
                other => {
                    // Unknown: read the stream back. Acks still coming for
                    // this generation are stale from now on.
                    self.generation += 1;
                    self.in_flight.clear();
                    self.unsent.clear();
                    self.waiting = Some(Wait::ReadBack { wrong_last: other == Ack::WrongLast, since: now });
                    steps.push(Step::ReadBack { after: Duration::ZERO, entries: self.unconfirmed() });
                    return steps;
                }
            }
        }
        self.send(&mut steps);
        self.hand_on(now, &mut steps);
        steps
    }

    /// Admitted entries the stream is not known to hold.
    fn unconfirmed(&self) -> Vec<E> {
        self.pending.iter().flat_map(|b| b.entries.iter()).filter(|e| e.seq() > self.committed).cloned().collect()
    }

    /// What a read-back found.
    pub fn read_back(&mut self, now: Duration, found: ReadBack) -> Vec<Step<E, A>> {
        let mut steps = Vec::new();
        let Some(Wait::ReadBack { wrong_last, since }) = self.waiting else { return steps };
        let ours = self.unconfirmed();
        match found {
            ReadBack::Foreign { seq, what } => steps.push(Step::StepDown(format!("entry {seq} on the committed stream ({what}) is another writer's"))),
            ReadBack::Unreadable(why) if self.flaws.endless_read_back || now.saturating_sub(since) < PATIENCE => {
                let _ = why;
                steps.push(Step::ReadBack { after: RETRY, entries: ours });
            }
            ReadBack::Unreadable(why) => steps.push(Step::StepDown(format!("cannot read the committed stream back for {PATIENCE:?} ({why})"))),
            ReadBack::Held(0) if wrong_last => {
                steps.push(Step::StepDown(format!("the committed stream does not end at this ledger's head {}", self.committed)))
            }
            ReadBack::Held(held) => {
                if let Some(last) = held.checked_sub(1).and_then(|i| ours.get(i)) {
                    self.committed = last.seq();
                }
                self.waiting = None;
                for chunk in ours.get(held..).unwrap_or_default().chunks(MAX_ATOMIC) {
                    self.unsent.push_back(chunk.to_vec());
                }
                self.send(&mut steps);
                self.hand_on(now, &mut steps);
            }
        }
        steps
    }

    /// What a read barrier found.
    pub fn barrier(&mut self, now: Duration, read: BarrierRead) -> Vec<Step<E, A>> {
        let mut steps = Vec::new();
        let Some(Wait::Barrier { decided_at, since }) = self.waiting else { return steps };
        let stale = |why: String| Step::StepDown(format!("{why}: refusals decided on an older state are not sent"));
        let unreadable = match read {
            Ok((last, _)) if last == decided_at => None,
            Ok((last, _)) if last < decided_at => {
                steps.push(stale(format!("the committed stream ends at {last}, before entry {decided_at}")));
                return steps;
            }
            Ok((_, Some(theirs))) => {
                let ours = self.pending.iter().flat_map(|b| &b.entries).find(|e| e.seq() == decided_at + 1).map(Chained::hash);
                if ours != Some(theirs) {
                    steps.push(stale(format!("entry {} on the committed stream is another writer's", decided_at + 1)));
                    return steps;
                }
                None
            }
            Ok((_, None)) => Some(format!("entry {} is not readable yet", decided_at + 1)),
            Err(e) => Some(e),
        };
        match unreadable {
            None => {
                self.waiting = None;
                if let Some(front) = self.pending.pop_front() {
                    steps.push(Step::HandOn(front));
                }
                self.hand_on(now, &mut steps);
            }
            Some(why) if now.saturating_sub(since) >= PATIENCE => steps.push(stale(format!("cannot confirm the committed stream's end ({why})"))),
            Some(_) => steps.push(Step::Barrier { after: RETRY, decided_at }),
        }
        steps
    }

    /// Hands on every batch at the front whose entries the stream holds; a
    /// batch of refusals only follows those before it (a repeated event's
    /// receipt may name one of them), after a read barrier.
    fn hand_on(&mut self, now: Duration, steps: &mut Vec<Step<E, A>>) {
        while self.waiting.is_none() {
            let Some(front) = self.pending.front() else { return };
            match front.entries.last() {
                Some(e) if e.seq() > self.committed => return,
                None if !self.flaws.no_barrier => {
                    let decided_at = front.decided_at;
                    self.waiting = Some(Wait::Barrier { decided_at, since: now });
                    steps.push(Step::Barrier { after: Duration::ZERO, decided_at });
                    return;
                }
                _ => {}
            }
            if let Some(front) = self.pending.pop_front() {
                steps.push(Step::HandOn(front));
            }
        }
    }
}

/// What a replica that has just taken the lease does once it has followed
/// the stream to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOver {
    /// The stream and the store end at the same entry: write.
    Write,
    /// The stream lost entries the store holds (deleted and recreated,
    /// or a tail lost with its servers): put them back, then write.
    Refill { from: u64 },
    /// The store may lack entries that were receipted: do not refill from
    /// it; step down and let a replica with a fuller store take over.
    Wait(String),
}

/// Decides a takeover: the stream ends at `stream_last`, the store at
/// `store_head` (after following the stream, so never before it); the
/// newest signed checkpoint covers `checkpointed` entries, and the other
/// replicas that answered hold stores up to `others`. A refill puts back
/// what the store holds, so it must come from a store holding every entry
/// ever receipted: none answering holds more, and it reaches the newest
/// checkpoint. (The writer that saw the stream vanish holds every
/// receipted entry; while it lives and answers, it is the one that
/// refills.)
pub fn take_over(stream_last: u64, store_head: u64, checkpointed: u64, others: u64) -> TakeOver {
    if stream_last >= store_head && stream_last >= others {
        TakeOver::Write
    } else if store_head < checkpointed.max(others) {
        TakeOver::Wait(format!(
            "the committed stream ends at {stream_last} and this store at {store_head}, while another replica's reaches {others} and the newest checkpoint {checkpointed}: this store may lack receipted entries, so it does not refill the stream"
        ))
    } else if stream_last >= store_head {
        TakeOver::Write
    } else {
        TakeOver::Refill { from: stream_last + 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug)]
    struct E(u64);
    impl Chained for E {
        fn seq(&self) -> u64 {
            self.0
        }
        fn hash(&self) -> Hash {
            Hash([self.0 as u8; 32])
        }
    }

    fn batch(decided_at: u64, n: u64) -> Batch<E, &'static str> {
        Batch { decided_at, entries: (decided_at + 1..=decided_at + n).map(E).collect(), answers: "" }
    }

    fn handed(steps: &[Step<E, &'static str>]) -> Vec<u64> {
        steps.iter().filter_map(|s| if let Step::HandOn(b) = s { Some(b.decided_at) } else { None }).collect()
    }

    #[test]
    fn a_batch_is_sent_only_once_the_one_before_it_is_acked_and_handed_on_in_order() {
        let mut w: Writer<E, &str> = Writer::new(0);
        let first = w.admitted(Duration::ZERO, batch(0, 2));
        assert!(matches!(first.as_slice(), [Step::Send { .. }]));
        let second = w.admitted(Duration::ZERO, batch(2, 1));
        assert!(second.is_empty(), "the second batch waits for the first's ack");
        // A stale ack of the second (a duplicate, or from before) changes nothing.
        assert!(handed(&w.acked(Duration::ZERO, 0, 3, Ack::Stored(3))).is_empty());
        let steps = w.acked(Duration::ZERO, 0, 2, Ack::Stored(2));
        assert_eq!(handed(&steps), vec![0]);
        assert!(steps.iter().any(|s| matches!(s, Step::Send { entries, .. } if entries[0].0 == 3)));
        assert_eq!(handed(&w.acked(Duration::ZERO, 0, 3, Ack::Stored(3))), vec![2]);
        assert_eq!(w.committed(), 3);
    }

    #[test]
    fn refusals_wait_for_a_barrier_that_finds_the_stream_where_they_were_decided() {
        let mut w: Writer<E, &str> = Writer::new(5);
        let steps = w.admitted(Duration::ZERO, Batch { decided_at: 5, entries: vec![], answers: "" });
        assert!(matches!(steps.as_slice(), [Step::Barrier { decided_at: 5, .. }]));
        // Another writer appended entry 6: step down, answer nothing.
        let steps = w.barrier(Duration::ZERO, Ok((6, Some(Hash([9; 32])))));
        assert!(matches!(steps.as_slice(), [Step::StepDown(_)]), "a refusal decided on a stale state left");
    }

    #[test]
    fn an_unreadable_stream_steps_the_writer_down_after_its_patience() {
        let mut w: Writer<E, &str> = Writer::new(0);
        w.admitted(Duration::ZERO, batch(0, 1));
        let steps = w.acked(Duration::ZERO, 0, 1, Ack::Unknown("timeout".into()));
        assert!(matches!(steps.as_slice(), [Step::ReadBack { .. }]));
        let steps = w.read_back(Duration::from_secs(1), ReadBack::Unreadable("no stream".into()));
        assert!(matches!(steps.as_slice(), [Step::ReadBack { .. }]));
        let steps = w.read_back(PATIENCE, ReadBack::Unreadable("no stream".into()));
        assert!(matches!(steps.as_slice(), [Step::StepDown(_)]));
    }

    #[test]
    fn only_a_store_that_holds_every_receipted_entry_refills_the_stream() {
        assert_eq!(take_over(10, 10, 8, 10), TakeOver::Write);
        assert_eq!(take_over(0, 10, 8, 9), TakeOver::Refill { from: 1 });
        assert!(matches!(take_over(0, 10, 8, 12), TakeOver::Wait(_)), "another replica holds more");
        assert!(matches!(take_over(0, 10, 11, 0), TakeOver::Wait(_)), "the newest checkpoint covers more");
    }
}
