//! A deterministic simulator of ledger replicas, in the manner of
//! FoundationDB's and TigerBeetle's: two or three replicas, each running
//! the real writer ([`crate::writer`]), the real lease renewal
//! ([`crate::lease::Renewal`]) and the real takeover rule
//! ([`crate::writer::take_over`]), against an in-memory committed stream
//! (atomic batches fenced by their expected last sequence), an in-memory
//! lease bucket (create, compare-and-set, expiry) and a simulated clock,
//! with producers that resend what timed out. One seed drives every
//! choice, so a failing seed replays exactly.
//!
//! The custody rules are reduced to what the protocol needs to be wrong
//! about: an actor is registered once, and an event about an actor that is
//! not registered is refused (`unknown_actor`). Producers only use actors
//! whose registration they hold a receipt for, so a refusal `unknown_actor`
//! of such an event is a false refusal.
//!
//! Faults: publishes lost on the way; acks lost (the outcome unknown),
//! delayed, duplicated and reordered; stream reads that fail; replicas
//! paused past their lease (their buffered requests, acks and timers then
//! run in a random order on waking); replicas killed between any two
//! steps (their store kept) and restarted; a replica's data folder wiped
//! (it comes back empty and catches up on the whole history, which starts
//! [`Options::history`] entries long); a replica's clock stepped far ahead
//! or behind, or within the skew allowed, and set right seconds later; the
//! lease bucket deleted; the committed stream deleted (while its writer
//! lives).
//!
//! After every step it checks the invariants ([`Violation`]): no two
//! entries at one seq; every receipted entry on the stream at its seq with
//! its hash; no event on the stream twice; every store a prefix of the
//! history; no false refusal; no entry recorded further ahead of the true
//! time than the skew allowed; no replica holding the writer lease (taking
//! it over, or writing) without renewing it; no replica taking a lease
//! another live one holds under the same name; no checkpoint signed with a
//! key other than the ledger's. At the end, after a calm period, that
//! every producer's request was answered (saying where it was last sent).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use custody_proto::Hash;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::lease::{self, Renew, Renewal};
use crate::writer::{self, Ack, BarrierRead, Batch, Chained, Flaws, ReadBack, Step, TakeOver};

/// How a run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub replicas: usize,
    pub producers: usize,
    /// Faults are injected during this long; then a calm period.
    pub faulty_for: Duration,
    pub calm_for: Duration,
    pub lease_ttl: Duration,
    /// Safeguards taken away, to show what finds their bugs.
    pub flaws: Flaws,
    /// The lease bucket is not made again after it was deleted.
    pub no_bucket_recreate: bool,
    /// A refill is made from any store, however far behind.
    pub refill_from_any_store: bool,
    /// Entries on the stream and in every store when the run starts.
    pub history: u64,
    /// How far a replica's clock may be off the servers' (`--max-clock-skew`).
    pub max_skew: Duration,
    /// Renewal starts only once a new writer has caught up (as before
    /// issue 26).
    pub renew_after_catch_up: bool,
    /// No clock is checked.
    pub no_clock_check: bool,
    /// Clocks are checked at lease writes only, not each batch's reading.
    pub clock_at_lease_only: bool,
    /// Replicas 0 and 1 write one name into the lease (one host and path,
    /// before the instance id).
    pub shared_lease_name: bool,
    /// A replica whose folder lost its ledger key makes a new one (before
    /// it refused to start without it).
    pub new_key_on_empty_folder: bool,
    /// Producers do not send a request again when it times out.
    pub no_resend: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            replicas: 3,
            producers: 3,
            faulty_for: Duration::from_secs(20),
            calm_for: Duration::from_secs(20),
            lease_ttl: Duration::from_secs(2),
            flaws: Flaws::default(),
            no_bucket_recreate: false,
            refill_from_any_store: false,
            history: 3_000,
            max_skew: Duration::from_secs(60),
            renew_after_catch_up: false,
            no_clock_check: false,
            clock_at_lease_only: false,
            shared_lease_name: false,
            new_key_on_empty_folder: false,
            no_resend: false,
        }
    }
}

/// An invariant broken, with the simulated time it broke at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at_ms: u64,
    pub what: String,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: u64,
    pub receipts: u64,
    pub refusals: u64,
    pub takeovers: u64,
    pub faults: u64,
    pub head: u64,
}

/// A producer's event: register an actor, or act as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Register(u32),
    Use(u32),
}

/// An entry of the simulated chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEntry {
    pub seq: u64,
    pub hash: Hash,
    pub prev: Hash,
    pub event: u64,
    pub op: Op,
    /// Its `recorded_at`: the writer's clock reading (ms since the run
    /// began), never below the head's.
    pub recorded_ms: i64,
}

impl Chained for SimEntry {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn hash(&self) -> Hash {
        self.hash
    }
}

fn chain(prev: Hash, seq: u64, event: u64, op: Op, recorded_ms: i64) -> SimEntry {
    let mut h = blake3::Hasher::new();
    h.update(&prev.0);
    h.update(&seq.to_le_bytes());
    h.update(&event.to_le_bytes());
    h.update(format!("{op:?}").as_bytes());
    h.update(&recorded_ms.to_le_bytes());
    SimEntry { seq, hash: Hash(*h.finalize().as_bytes()), prev, event, op, recorded_ms }
}

/// The history a run starts with: registrations of actors no producer
/// uses, under event ids no producer sends.
fn history(n: u64) -> Vec<SimEntry> {
    let mut entries: Vec<SimEntry> = Vec::with_capacity(n as usize);
    for seq in 1..=n {
        let prev = entries.last().map_or(Hash::GENESIS, |e| e.hash);
        entries.push(chain(prev, seq, (0xFFFF << 32) | seq, Op::Register(0xF000_0000 + seq as u32), 0));
    }
    entries
}

/// An outcome as a producer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Receipt { seq: u64, hash: Hash },
    Refused(&'static str),
}

/// A request as the writer holds it: who asked and what.
#[derive(Debug, Clone)]
struct Request {
    producer: usize,
    event: u64,
    op: Op,
}

/// The write model: the custody rules, reduced.
#[derive(Debug, Clone, Default)]
struct Model {
    head: u64,
    head_hash: Hash,
    head_recorded: i64,
    registered: BTreeSet<u32>,
    receipted: BTreeMap<u64, (u64, Hash)>,
}

impl Model {
    fn from_store(store: &[SimEntry]) -> Model {
        let mut m = Model::default();
        for e in store {
            m.apply(e);
        }
        m
    }

    fn apply(&mut self, e: &SimEntry) {
        if let Op::Register(a) = e.op {
            self.registered.insert(a);
        }
        self.receipted.insert(e.event, (e.seq, e.hash));
        self.head = e.seq;
        self.head_hash = e.hash;
        self.head_recorded = e.recorded_ms;
    }

    /// Admits `requests`, recording at the clock's `reading` (never below
    /// the head's).
    fn admit(&mut self, requests: Vec<Request>, reading: i64) -> (Vec<SimEntry>, Vec<(Request, Outcome)>) {
        let mut entries = Vec::new();
        let mut answers = Vec::new();
        for r in requests {
            if let Some(&(seq, hash)) = self.receipted.get(&r.event) {
                answers.push((r, Outcome::Receipt { seq, hash }));
                continue;
            }
            let refused = match r.op {
                Op::Register(a) if self.registered.contains(&a) => Some("actor_exists"),
                Op::Use(a) if !self.registered.contains(&a) => Some("unknown_actor"),
                _ => None,
            };
            if let Some(code) = refused {
                answers.push((r, Outcome::Refused(code)));
                continue;
            }
            let e = chain(self.head_hash, self.head + 1, r.event, r.op, reading.max(self.head_recorded));
            self.apply(&e);
            answers.push((r, Outcome::Receipt { seq: e.seq, hash: e.hash }));
            entries.push(e);
        }
        (entries, answers)
    }
}

type Answers = Vec<(Request, Outcome)>;

/// Where a replica is in its life.
enum Life {
    Down,
    Standby,
    /// Took the lease; following the stream to its end before writing.
    CatchingUp(Renewal),
    Writing(Box<writer::Writer<SimEntry, Answers>>, Renewal),
}

struct Replica {
    store: Vec<SimEntry>,
    model: Model,
    life: Life,
    /// Bumped at each step-down and crash: what was in flight for an
    /// earlier one is dropped.
    epoch: u64,
    /// Bumped at each crash: the process's timers.
    process: u64,
    paused_until: Option<u64>,
    deferred: Vec<Event>,
    /// Requests delivered to its subscription, not yet taken.
    mailbox: VecDeque<Request>,
    /// Leaves the lease to the others until then.
    giving_way_until: u64,
    next_renewal: u64,
    /// The durable stage runs in order: nothing is durable before this.
    durable_at: u64,
    /// Publishes on its connection arrive in order: none before this.
    publish_at: u64,
    /// How far its clock is off the true time, in ms.
    offset_ms: i64,
    /// The servers' time as its last lease write was stamped, and when
    /// (the simulated monotonic clock).
    stamp: Option<(i64, u64)>,
    /// When it last sent a renewal (or took the lease, or woke).
    renew_sent_at: u64,
    /// How much of its store the invariants have checked.
    store_checked: usize,
    /// The name it writes into the lease (its instance).
    name: usize,
    /// The key it signs checkpoints with: [`LEDGER_KEY`] unless its folder
    /// made another.
    key: u64,
}

/// The ledger's key, which verifiers trust.
const LEDGER_KEY: u64 = 1;

impl Replica {
    fn head(&self) -> u64 {
        self.store.last().map_or(0, |e| e.seq)
    }
    fn describe(&self) -> String {
        let life = match &self.life {
            Life::Down => "down",
            Life::Standby => "standby",
            Life::CatchingUp(_) => "catching-up",
            Life::Writing(..) => "writing",
        };
        format!("[{life}{} head {} mail {}]", if self.paused_until.is_some() { " paused" } else { "" }, self.head(), self.mailbox.len())
    }

    fn writing(&self) -> bool {
        matches!(self.life, Life::Writing(..))
    }

    /// Its clock's reading (ms since the run began) at true time `now`.
    fn reading(&self, now: u64) -> i64 {
        now as i64 + self.offset_ms
    }
}

/// The committed stream.
#[derive(Default)]
struct Stream {
    entries: Vec<SimEntry>,
    deleted: bool,
}

impl Stream {
    fn last(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.seq)
    }
}

/// The lease bucket's one key.
struct LeaseKey {
    holder: usize,
    /// The name written (the holder's, or one it shares).
    name: usize,
    revision: u64,
    written_ms: u64,
}

struct Lease {
    key: Option<LeaseKey>,
    deleted: bool,
    next_revision: u64,
    ttl_ms: u64,
}

impl Lease {
    fn live(&self, now: u64) -> Option<&LeaseKey> {
        self.key.as_ref().filter(|k| now < k.written_ms + self.ttl_ms)
    }
}

#[derive(Debug, Clone)]
enum Event {
    Tick {
        replica: usize,
        process: u64,
    },
    /// An atomic batch reaches the stream (or is lost on the way).
    Publish {
        replica: usize,
        epoch: u64,
        generation: u64,
        entries: Vec<SimEntry>,
        lost: bool,
    },
    Acked {
        replica: usize,
        epoch: u64,
        generation: u64,
        last: u64,
        ack: Ack,
    },
    ReadBack {
        replica: usize,
        epoch: u64,
        entries: Vec<SimEntry>,
    },
    Barrier {
        replica: usize,
        epoch: u64,
        decided_at: u64,
    },
    /// The durable stage: the store appends, then the answers leave.
    Durable {
        replica: usize,
        epoch: u64,
        entries: Vec<SimEntry>,
        answers: Vec<(usize, u64, Outcome, u64)>,
    },
    CaughtUp {
        replica: usize,
        epoch: u64,
    },
    /// The lease bucket's answer to a renewal sent at `attempt`.
    Renewed {
        replica: usize,
        epoch: u64,
        attempt: u64,
    },
    Deliver {
        replica: usize,
        epoch: u64,
        request: Request,
    },
    Answer {
        producer: usize,
        event: u64,
        outcome: Outcome,
        decided_at: u64,
    },
    ProducerActs {
        producer: usize,
    },
    ProducerTimeout {
        producer: usize,
        event: u64,
    },
    Wake {
        replica: usize,
    },
    Restart {
        replica: usize,
    },
    Checkpoint {
        replica: usize,
        process: u64,
    },
    /// Its clock set right again (NTP).
    ClockFixed {
        replica: usize,
    },
}

impl Event {
    fn replica(&self) -> Option<usize> {
        match self {
            // A publish is on its way to the stream: it arrives whatever
            // becomes of its sender.
            Event::Tick { replica, .. }
            | Event::Acked { replica, .. }
            | Event::ReadBack { replica, .. }
            | Event::Barrier { replica, .. }
            | Event::Durable { replica, .. }
            | Event::CaughtUp { replica, .. }
            | Event::Renewed { replica, .. }
            | Event::Deliver { replica, .. }
            | Event::Checkpoint { replica, .. } => Some(*replica),
            _ => None,
        }
    }
}

struct Producer {
    /// The request outstanding: event id, what, first sent.
    current: Option<(u64, Op, u64)>,
    next_event: u64,
    /// Actors this producer holds a registration receipt for.
    usable: Vec<u32>,
    next_actor: u32,
}

/// The simulated world.
pub struct World {
    opts: Options,
    rng: ChaCha8Rng,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    next_id: u64,
    replicas: Vec<Replica>,
    stream: Stream,
    lease: Lease,
    /// The newest checkpoint's tree size.
    checkpointed: u64,
    /// Every entry the stream ever held, by seq.
    ever: BTreeMap<u64, Hash>,
    /// Entries the stream lost when it was deleted that no store held yet
    /// (one may still arrive in a store, from an ack in flight).
    lost: BTreeMap<u64, Hash>,
    /// Every receipt a producer read: event → (seq, hash).
    receipts: BTreeMap<u64, (u64, Hash)>,
    /// Where each event was last sent: the replica, and whether it was
    /// paused then.
    sent_to: BTreeMap<u64, (usize, bool)>,
    /// What each event asked, and when it was first sent.
    asked: BTreeMap<u64, (Op, u64)>,
    producers: Vec<Producer>,
    report: Report,
    last_stream_deletion: Option<u64>,
    /// The stream was deleted and no writer has taken it over since.
    refill_due: bool,
    /// Print every step (`CUSTODY_SIM_TRACE=1`).
    trace: bool,
    /// The faults added since the first seeds were kept (wiped folders,
    /// stepped clocks) draw from their own generator.
    more_faults: ChaCha8Rng,
    /// How much of the stream the invariants have checked, and the events
    /// in that part.
    stream_checked: usize,
    stream_events: BTreeSet<u64>,
}

const TICK_MS: u64 = 250;
const ACK_TIMEOUT_MS: u64 = 2_000;
const PRODUCER_TIMEOUT_MS: u64 = 3_000;

impl World {
    pub fn new(seed: u64, opts: Options) -> World {
        let past = history(opts.history);
        let replicas = (0..opts.replicas)
            .map(|_| Replica {
                store: past.clone(),
                model: Model::from_store(&past),
                life: Life::Standby,
                epoch: 0,
                process: 0,
                paused_until: None,
                deferred: Vec::new(),
                mailbox: VecDeque::new(),
                giving_way_until: 0,
                next_renewal: 0,
                durable_at: 0,
                publish_at: 0,
                offset_ms: 0,
                name: 0,
                key: LEDGER_KEY,
                stamp: None,
                renew_sent_at: 0,
                store_checked: 0,
            })
            .collect();
        let producers = (0..opts.producers).map(|p| Producer { current: None, next_event: 0, usable: Vec::new(), next_actor: (p as u32) << 20 }).collect();
        let mut w = World {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_id: 0,
            replicas,
            stream: Stream { entries: past.clone(), deleted: false },
            lease: Lease { key: None, deleted: false, next_revision: 1, ttl_ms: opts.lease_ttl.as_millis() as u64 },
            checkpointed: opts.history,
            ever: past.iter().map(|e| (e.seq, e.hash)).collect(),
            lost: BTreeMap::new(),
            receipts: BTreeMap::new(),
            asked: BTreeMap::new(),
            sent_to: BTreeMap::new(),
            producers,
            report: Report::default(),
            last_stream_deletion: None,
            refill_due: false,
            trace: std::env::var_os("CUSTODY_SIM_TRACE").is_some(),
            more_faults: ChaCha8Rng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15),
            stream_checked: 0,
            stream_events: BTreeSet::new(),
            opts,
        };
        for r in 0..opts.replicas {
            w.replicas[r].name = if opts.shared_lease_name && r == 1 { 0 } else { r };
            let at = w.rng.random_range(0..TICK_MS);
            w.at(at, Event::Tick { replica: r, process: 0 });
            w.at(at + 1_000, Event::Checkpoint { replica: r, process: 0 });
        }
        for p in 0..opts.producers {
            let at = w.rng.random_range(0..200);
            w.at(at, Event::ProducerActs { producer: p });
        }
        w
    }

    fn at(&mut self, when: u64, e: Event) {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push(Reverse((when, id)));
        self.events.insert(id, e);
    }

    fn after(&mut self, delay: u64, e: Event) {
        self.at(self.now + delay, e);
    }

    /// A network delay, in ms: mostly short, sometimes long (reordering).
    fn delay(&mut self) -> u64 {
        if self.rng.random_bool(0.05) {
            self.rng.random_range(50..1_500)
        } else {
            self.rng.random_range(1..10)
        }
    }

    fn faulty(&self) -> bool {
        self.now < self.opts.faulty_for.as_millis() as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.faulty() && self.rng.random_bool(p)
    }

    fn elapsed(&self) -> Duration {
        Duration::from_millis(self.now)
    }

    /// Runs to the end; the first invariant broken, if any.
    pub fn run(mut self) -> Result<Report, Violation> {
        let end = (self.opts.faulty_for + self.opts.calm_for).as_millis() as u64;
        while let Some(Reverse((when, id))) = self.queue.pop() {
            if when > end {
                break;
            }
            self.now = when;
            let Some(event) = self.events.remove(&id) else { continue };
            self.report.steps += 1;
            if self.trace {
                let lives: Vec<String> = self.replicas.iter().map(Replica::describe).collect();
                eprintln!(
                    "{:>6} {event:?} | stream {}{} | {}",
                    self.now,
                    self.stream.last(),
                    if self.stream.deleted { " deleted" } else { "" },
                    lives.join(" ")
                );
            }
            self.inject();
            self.dispatch(event)?;
            self.check()?;
        }
        self.now = end;
        self.finish()
    }

    /// Now and then, a fault.
    fn inject(&mut self) {
        if !self.chance(0.004) {
            return;
        }
        self.report.faults += 1;
        let r = self.rng.random_range(0..self.replicas.len());
        let protected = self.protected();
        match self.rng.random_range(0..10) {
            0..=3 if !protected && self.replicas[r].paused_until.is_none() => {
                let until = self.now + self.rng.random_range(500..8_000);
                self.replicas[r].paused_until = Some(until);
                self.at(until, Event::Wake { replica: r });
            }
            4..=6 if !protected && !matches!(self.replicas[r].life, Life::Down) => {
                self.crash(r);
                let back = self.rng.random_range(200..5_000);
                self.after(back, Event::Restart { replica: r });
            }
            7 => {
                self.lease.deleted = true;
                self.lease.key = None;
            }
            // An operator deletes the stream under a settled cluster (all
            // up, one writer, no handover under way): a deletion during a
            // handover can lose a receipt the old writer gives for an ack
            // in flight, which no store the new writer can see holds yet.
            8 if self.replicas.iter().all(|x| x.paused_until.is_none() && matches!(x.life, Life::Standby | Life::Writing(..)))
                && self.replicas.iter().filter(|x| x.writing()).count() == 1 =>
            {
                self.stream.deleted = true;
                self.stream.entries.clear();
                self.stream_checked = 0;
                self.stream_events.clear();
                self.last_stream_deletion = Some(self.now);
                self.refill_due = true;
                // Entries that no store holds and no receipt names are lost
                // with the stream: another may take their place.
                // (An entry acked and on its way to a store is held again
                // when it arrives there, unless another took its seq.)
                let kept = self.replicas.iter().map(Replica::head).chain(self.receipts.values().map(|(seq, _)| *seq)).max().unwrap_or(0);
                let lost = self.ever.split_off(&(kept + 1));
                self.lost.extend(lost);
            }
            _ => {}
        }
        self.inject_more(r);
    }

    /// The refill is safe while the replica with the longest store answers
    /// (it holds every receipted entry): no pause, crash or wiped folder in
    /// the ten seconds after a deletion, nor until a writer has taken over
    /// the stream again. (Otherwise a shorter store refills it, and the
    /// receipts past it are lost: a limit RELIABILITY.md states.)
    fn protected(&self) -> bool {
        self.last_stream_deletion.is_some_and(|t| self.now < t + 10_000) || self.refill_due
    }

    /// The faults added later, from their own generator (so that the
    /// seeds kept for the first ones still find what they found).
    fn inject_more(&mut self, r: usize) {
        let protected = self.protected();
        match self.more_faults.random_range(0..6) {
            // A host's data folder lost (a disk replaced): the replica comes
            // back with an empty store (its key and lease name restored, as
            // README says) and catches up on the whole history.
            0 if !protected && !matches!(self.replicas[r].life, Life::Down) => {
                self.crash(r);
                let rep = &mut self.replicas[r];
                rep.store.clear();
                rep.model = Model::default();
                rep.store_checked = 0;
                if self.opts.new_key_on_empty_folder {
                    rep.key = LEDGER_KEY + 1 + self.report.faults;
                }
                let back = self.more_faults.random_range(200..5_000);
                self.after(back, Event::Restart { replica: r });
            }
            // A clock stepped (a bad time source, a restored VM): a month
            // either way, or by less than the skew allowed; set right again
            // within seconds.
            1 if self.replicas[r].offset_ms == 0 => {
                let month = 30 * 86_400_000;
                let skew = self.opts.max_skew.as_millis() as i64;
                self.replicas[r].offset_ms = match self.more_faults.random_range(0..4) {
                    0 => month,
                    1 => -month,
                    2 => self.more_faults.random_range(skew + 1..4 * skew),
                    _ => self.more_faults.random_range(-skew / 2..skew / 2),
                };
                let fixed = self.more_faults.random_range(1_000..10_000);
                self.after(fixed, Event::ClockFixed { replica: r });
            }
            _ => {}
        }
    }

    fn crash(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        rep.life = Life::Down;
        rep.epoch += 1;
        rep.process += 1;
        rep.paused_until = None;
        rep.deferred.clear();
        rep.mailbox.clear();
    }

    fn dispatch(&mut self, event: Event) -> Result<(), Violation> {
        if let Some(r) = event.replica() {
            if matches!(self.replicas[r].life, Life::Down) {
                return Ok(());
            }
            if self.replicas[r].paused_until.is_some() {
                self.replicas[r].deferred.push(event);
                return Ok(());
            }
        }
        match event {
            Event::Wake { replica } => {
                self.replicas[replica].paused_until = None;
                self.replicas[replica].renew_sent_at = self.now;
                let deferred = std::mem::take(&mut self.replicas[replica].deferred);
                // What piled up runs in any order, as it would on waking,
                // except within one queue: the durable stage's, the
                // subscription's, the timer's.
                let mut lanes: Vec<VecDeque<Event>> = Vec::new();
                let mut lane_of: BTreeMap<u8, usize> = BTreeMap::new();
                for e in deferred {
                    let kind = match e {
                        Event::Durable { .. } => Some(0),
                        Event::Deliver { .. } => Some(1),
                        Event::Tick { .. } => Some(2),
                        _ => None,
                    };
                    match kind.and_then(|k| lane_of.get(&k).copied()) {
                        Some(l) => lanes[l].push_back(e),
                        None => {
                            if let Some(k) = kind {
                                lane_of.insert(k, lanes.len());
                            }
                            lanes.push(VecDeque::from([e]));
                        }
                    }
                }
                let mut order = Vec::new();
                while !lanes.is_empty() {
                    let l = self.rng.random_range(0..lanes.len());
                    if let Some(e) = lanes[l].pop_front() {
                        order.push(e);
                    }
                    if lanes[l].is_empty() {
                        lanes.swap_remove(l);
                    }
                }
                for e in order {
                    self.dispatch(e)?;
                    self.check()?;
                }
            }
            Event::Restart { replica } => {
                let rep = &mut self.replicas[replica];
                if matches!(rep.life, Life::Down) {
                    rep.model = Model::from_store(&rep.store);
                    rep.life = Life::Standby;
                    let process = rep.process;
                    self.after(TICK_MS, Event::Tick { replica, process });
                    self.after(1_000, Event::Checkpoint { replica, process });
                }
            }
            Event::ClockFixed { replica } => self.replicas[replica].offset_ms = 0,
            Event::Tick { replica, process } => {
                if self.replicas[replica].process == process {
                    self.tick(replica)?;
                    self.after(TICK_MS, Event::Tick { replica, process });
                }
            }
            Event::Checkpoint { replica, process } => {
                if self.replicas[replica].process == process {
                    if self.replicas[replica].writing() {
                        // A checkpoint covers what is in the writer's store
                        // and on the stream, signed with the replica's key.
                        let head = self.replicas[replica].head().min(self.stream.last());
                        if self.replicas[replica].key != LEDGER_KEY {
                            return Err(Violation {
                                at_ms: self.now,
                                what: format!("replica {replica} signs the checkpoint at {head} with a key of its own, which no verifier trusts"),
                            });
                        }
                        self.checkpointed = self.checkpointed.max(head);
                    }
                    self.after(1_000, Event::Checkpoint { replica, process });
                }
            }
            Event::Publish { replica, epoch, generation, entries, lost } => {
                let last = entries.last().map_or(0, |e| e.seq);
                let first = entries.first().map_or(0, |e| e.seq);
                let ack = if lost || self.stream.deleted {
                    Ack::Unknown("no ack".into())
                } else if self.stream.last() + 1 != first {
                    Ack::WrongLast
                } else {
                    let skew = self.opts.max_skew.as_millis() as i64;
                    for e in &entries {
                        if e.recorded_ms > self.now as i64 + skew {
                            return Err(Violation {
                                at_ms: self.now,
                                what: format!(
                                    "replica {replica} records entry {} at {} s, {} s ahead of the true time (more than the {} s allowed)",
                                    e.seq,
                                    e.recorded_ms / 1_000,
                                    (e.recorded_ms - self.now as i64) / 1_000,
                                    skew / 1_000
                                ),
                            });
                        }
                        self.ever.entry(e.seq).or_insert(e.hash);
                    }
                    self.stream.entries.extend(entries);
                    Ack::Stored(last)
                };
                let lose_ack = self.chance(0.03);
                if matches!(ack, Ack::Unknown(_)) || lose_ack {
                    let wait = ACK_TIMEOUT_MS.saturating_sub(self.delay());
                    self.after(wait, Event::Acked { replica, epoch, generation, last, ack: Ack::Unknown("timed out".into()) });
                } else {
                    let d = self.delay();
                    self.after(d, Event::Acked { replica, epoch, generation, last, ack: ack.clone() });
                    if self.chance(0.03) {
                        let d = self.delay();
                        self.after(d, Event::Acked { replica, epoch, generation, last, ack });
                    }
                }
            }
            Event::Acked { replica, epoch, generation, last, ack } => {
                let now = self.elapsed();
                if let Some(steps) = self.with_writer(replica, epoch, |w| w.acked(now, generation, last, ack)) {
                    self.steps(replica, steps)?;
                }
            }
            Event::ReadBack { replica, epoch, entries } => {
                let found = self.read_back(&entries);
                let now = self.elapsed();
                if let Some(steps) = self.with_writer(replica, epoch, |w| w.read_back(now, found)) {
                    self.steps(replica, steps)?;
                }
            }
            Event::Barrier { replica, epoch, decided_at } => {
                let read: BarrierRead = if self.stream.deleted || self.chance(0.05) {
                    Err("no answer".into())
                } else {
                    Ok((self.stream.last(), self.stream.entries.iter().find(|e| e.seq == decided_at + 1).map(|e| e.hash)))
                };
                let now = self.elapsed();
                if let Some(steps) = self.with_writer(replica, epoch, |w| w.barrier(now, read)) {
                    self.steps(replica, steps)?;
                }
            }
            Event::Durable { replica, epoch, entries, answers } => {
                if self.replicas[replica].epoch != epoch {
                    return Ok(());
                }
                let rep = &mut self.replicas[replica];
                for e in entries {
                    if e.seq != rep.head() + 1 || e.prev != rep.store.last().map_or(Hash::GENESIS, |h| h.hash) {
                        return Err(Violation {
                            at_ms: self.now,
                            what: format!("replica {replica} hands on entry {} over a store ending at {}", e.seq, rep.head()),
                        });
                    }
                    // An ack that was in flight when the stream was deleted:
                    // its entry is held again, unless another took its seq.
                    if self.lost.get(&e.seq) == Some(&e.hash) {
                        self.lost.remove(&e.seq);
                        if self.ever.get(&e.seq).is_some_and(|h| *h != e.hash) {
                            return Err(Violation {
                                at_ms: self.now,
                                what: format!("replica {replica} makes entry {} durable after another took its seq", e.seq),
                            });
                        }
                        self.ever.insert(e.seq, e.hash);
                    }
                    rep.store.push(e);
                }
                for (producer, event, outcome, decided_at) in answers {
                    let d = self.delay();
                    self.after(d, Event::Answer { producer, event, outcome, decided_at });
                }
            }
            Event::Renewed { replica, epoch, attempt } => {
                if self.replicas[replica].epoch == epoch {
                    let result = self.renew(replica);
                    // A renewal stamped at a time its clock disagrees with:
                    // it stops writing (`Lease::hold`).
                    let clock_off = result.is_ok() && !self.clock_agrees(replica, attempt);
                    let now = self.now;
                    let rep = &mut self.replicas[replica];
                    let lost = match &mut rep.life {
                        Life::CatchingUp(renewal) | Life::Writing(_, renewal) => {
                            renewal.renewed(Duration::from_millis(attempt), result, Duration::from_millis(now)).is_some()
                        }
                        _ => false,
                    };
                    if lost || clock_off {
                        self.step_down(replica);
                    }
                }
            }
            Event::CaughtUp { replica, epoch } => {
                if self.replicas[replica].epoch == epoch && matches!(self.replicas[replica].life, Life::CatchingUp(_)) {
                    self.take_over(replica)?;
                }
            }
            Event::Deliver { replica, epoch, request } => {
                if self.replicas[replica].epoch == epoch && self.replicas[replica].writing() {
                    self.replicas[replica].mailbox.push_back(request);
                    self.pump(replica)?;
                }
            }
            Event::Answer { producer, event, outcome, decided_at } => self.answered(producer, event, outcome, decided_at)?,
            Event::ProducerActs { producer } => self.produce(producer),
            Event::ProducerTimeout { producer, event } => {
                if let Some((current, op, _)) = self.producers[producer].current.filter(|_| !self.opts.no_resend) {
                    if current == event {
                        self.send(producer, event, op);
                    }
                }
            }
        }
        Ok(())
    }

    fn with_writer<T>(&mut self, r: usize, epoch: u64, f: impl FnOnce(&mut writer::Writer<SimEntry, Answers>) -> T) -> Option<T> {
        let rep = &mut self.replicas[r];
        if rep.epoch != epoch {
            return None;
        }
        match &mut rep.life {
            Life::Writing(w, _) => Some(f(w)),
            _ => None,
        }
    }

    fn read_back(&mut self, ours: &[SimEntry]) -> ReadBack {
        if self.stream.deleted || self.chance(0.05) {
            return ReadBack::Unreadable("no answer".into());
        }
        let mut held = 0;
        for mine in ours {
            match self.stream.entries.get(mine.seq as usize - 1) {
                Some(theirs) if theirs.hash == mine.hash => held += 1,
                Some(theirs) => return ReadBack::Foreign { seq: theirs.seq, what: theirs.hash.to_hex() },
                None => break,
            }
        }
        ReadBack::Held(held)
    }

    /// Carries out what a writer asked.
    fn steps(&mut self, r: usize, steps: Vec<Step<SimEntry, Answers>>) -> Result<(), Violation> {
        let epoch = self.replicas[r].epoch;
        for step in steps {
            match step {
                Step::Send { generation, entries } => {
                    // One connection: publishes arrive in order (or are
                    // lost); their acks come back in any order.
                    let lost = self.chance(0.02);
                    let at = (self.now + self.delay()).max(self.replicas[r].publish_at);
                    self.replicas[r].publish_at = at;
                    self.at(at, Event::Publish { replica: r, epoch, generation, entries, lost });
                }
                Step::ReadBack { after, entries } => {
                    let d = after.as_millis() as u64 + self.delay();
                    self.after(d, Event::ReadBack { replica: r, epoch, entries });
                }
                Step::Barrier { after, decided_at } => {
                    let d = after.as_millis() as u64 + self.delay();
                    self.after(d, Event::Barrier { replica: r, epoch, decided_at });
                }
                Step::HandOn(batch) => {
                    let decided_at = batch.decided_at;
                    let answers = batch.answers.into_iter().map(|(q, o)| (q.producer, q.event, o, decided_at)).collect();
                    let at = (self.now + self.rng.random_range(1..5)).max(self.replicas[r].durable_at);
                    self.replicas[r].durable_at = at;
                    self.at(at, Event::Durable { replica: r, epoch, entries: batch.entries, answers });
                }
                Step::StepDown(_why) => {
                    self.step_down(r);
                    return Ok(());
                }
            }
        }
        self.pump(r)
    }

    fn step_down(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        rep.life = Life::Standby;
        rep.epoch += 1;
        rep.mailbox.clear();
        rep.model = Model::from_store(&rep.store);
    }

    /// A writer takes what its subscription holds, when it may.
    fn pump(&mut self, r: usize) -> Result<(), Violation> {
        let (now, skew) = (self.now, self.opts.max_skew.as_millis() as i64);
        let judged = !self.opts.no_clock_check && !self.opts.clock_at_lease_only;
        let rep = &mut self.replicas[r];
        let Life::Writing(w, _) = &rep.life else { return Ok(()) };
        if !w.ready() || rep.mailbox.is_empty() {
            return Ok(());
        }
        // One clock reading for the batch, judged against the servers'
        // last stamp and the time passed since (as `Writer::run` does).
        let reading = rep.reading(now);
        if judged && rep.stamp.and_then(|(stamped, at)| lease::off_at_reading(reading, stamped, (now - at) as i64, skew)).is_some() {
            self.step_down(r);
            return Ok(());
        }
        let requests: Vec<Request> = rep.mailbox.drain(..).collect();
        let decided_at = rep.model.head;
        let (entries, answers) = rep.model.admit(requests, reading);
        let Life::Writing(w, _) = &mut rep.life else { return Ok(()) };
        let steps = w.admitted(Duration::from_millis(now), Batch { decided_at, entries, answers });
        self.steps(r, steps)
    }

    fn tick(&mut self, r: usize) -> Result<(), Violation> {
        let now = self.now;
        let ttl = self.opts.lease_ttl;
        match &self.replicas[r].life {
            Life::Down => {}
            Life::Standby => {
                // A standby follows as fast as a new writer catches up: an
                // entry a millisecond.
                self.follow(r, TICK_MS as usize)?;
                if now < self.replicas[r].giving_way_until {
                    return Ok(());
                }
                if let Some(revision) = self.try_acquire(r)? {
                    self.report.takeovers += 1;
                    let rep = &mut self.replicas[r];
                    rep.renew_sent_at = now;
                    rep.life = Life::CatchingUp(Renewal::new(ttl, revision, Duration::from_millis(now)));
                    rep.next_renewal = now + (ttl / 4).as_millis() as u64;
                    // Following a long way takes time: a millisecond an entry.
                    let gap = self.stream.last().saturating_sub(rep.head());
                    let epoch = rep.epoch;
                    self.after(5 + gap, Event::CaughtUp { replica: r, epoch });
                }
            }
            // As before issue 26: the renewal began only once caught up.
            Life::CatchingUp(_) if self.opts.renew_after_catch_up => {}
            Life::CatchingUp(_) | Life::Writing(..) => {
                if now >= self.replicas[r].next_renewal {
                    self.replicas[r].renew_sent_at = now;
                    // A renewal is a round trip to the bucket, as in
                    // `Lease::hold`: the pipeline goes on meanwhile.
                    self.replicas[r].next_renewal = now + (ttl / 4).as_millis() as u64;
                    let epoch = self.replicas[r].epoch;
                    let d = self.delay();
                    self.after(d, Event::Renewed { replica: r, epoch, attempt: now });
                }
            }
        }
        Ok(())
    }

    /// Follows the stream into the store, at most `most` entries.
    fn follow(&mut self, r: usize, most: usize) -> Result<(), Violation> {
        if self.stream.deleted {
            return Ok(());
        }
        let rep = &mut self.replicas[r];
        let from = rep.head() as usize;
        for e in self.stream.entries.iter().skip(from).take(most) {
            if e.prev != rep.model.head_hash {
                return Err(Violation {
                    at_ms: self.now,
                    what: format!("replica {r}'s store is not a prefix of the stream: entry {} does not follow its head {}", e.seq, rep.head()),
                });
            }
            rep.store.push(e.clone());
            rep.model.apply(e);
        }
        Ok(())
    }

    /// Takes the lease if it is free or names this replica (as
    /// `Lease::try_acquire`: a replica restarted within the ttl takes its
    /// own lease back); its revision.
    fn try_acquire(&mut self, r: usize) -> Result<Option<u64>, Violation> {
        if self.lease.deleted {
            if self.opts.no_bucket_recreate {
                return Ok(None);
            }
            // The bucket is made again (as `Lease::try_acquire` does).
            self.lease.deleted = false;
        }
        let now = self.now;
        let held = self.lease.live(now).map(|k| (k.holder, k.name));
        if held.is_some_and(|(_, name)| name != self.replicas[r].name) {
            return Ok(None);
        }
        // The name is this replica's: no other live holder may be behind it.
        if let Some((o, _)) = held.filter(|&(o, _)| o != r) {
            if matches!(self.replicas[o].life, Life::CatchingUp(_) | Life::Writing(..)) {
                return Err(Violation {
                    at_ms: now,
                    what: format!("replica {r} takes the writer lease that replica {o} holds under the same name: two writers"),
                });
            }
        }
        // Taken only by a replica whose clock agrees with the server's stamp
        // of the write (`Lease::try_acquire`); it is given up at once if not.
        if !self.clock_agrees(r, now) {
            if held.is_some() {
                self.lease.key = None;
            }
            return Ok(None);
        }
        let revision = self.lease.next_revision;
        self.lease.next_revision += 1;
        self.lease.key = Some(LeaseKey { holder: r, name: self.replicas[r].name, revision, written_ms: now });
        Ok(Some(revision))
    }

    /// A lease write sent at `sent` (true time) was stamped now: whether
    /// replica `r`'s clock agrees ([`lease::off_at_write`]); if so it
    /// learns the stamp.
    fn clock_agrees(&mut self, r: usize, sent: u64) -> bool {
        if self.opts.no_clock_check {
            return true;
        }
        let rep = &mut self.replicas[r];
        let (before, after) = (rep.reading(sent), rep.reading(self.now));
        let off = lease::off_at_write(before, self.now as i64, after, self.opts.max_skew.as_millis() as i64);
        if off.is_none() {
            rep.stamp = Some((self.now as i64, self.now));
        }
        off.is_none()
    }

    fn renew(&mut self, r: usize) -> Result<u64, Renew> {
        if self.lease.deleted {
            return Err(Renew::Failed("no bucket".into()));
        }
        if self.chance(0.05) {
            return Err(Renew::Failed("timed out".into()));
        }
        let now = self.now;
        let expected = match &self.replicas[r].life {
            Life::CatchingUp(renewal) | Life::Writing(_, renewal) => renewal.revision(),
            _ => return Err(Renew::Taken),
        };
        match self.lease.live(now) {
            Some(k) if k.revision == expected => {
                let revision = self.lease.next_revision;
                self.lease.next_revision += 1;
                self.lease.key = Some(LeaseKey { holder: r, name: self.replicas[r].name, revision, written_ms: now });
                Ok(revision)
            }
            _ => Err(Renew::Taken),
        }
    }

    /// The takeover: follow the stream to its end, refill it if it lost
    /// entries and this store may, then write.
    fn take_over(&mut self, r: usize) -> Result<(), Violation> {
        self.stream.deleted = false;
        self.follow(r, usize::MAX)?;
        let rep = &self.replicas[r];
        // The other replicas that answer (up, not paused) say how far
        // their stores reach.
        let others = (0..self.replicas.len())
            .filter(|&o| o != r && !matches!(self.replicas[o].life, Life::Down) && self.replicas[o].paused_until.is_none())
            .map(|o| self.replicas[o].head())
            .max()
            .unwrap_or(0);
        let checkpointed = if self.opts.refill_from_any_store { 0 } else { self.checkpointed };
        let others = if self.opts.refill_from_any_store { 0 } else { others };
        match writer::take_over(self.stream.last(), rep.head(), checkpointed, others) {
            TakeOver::Write => {}
            TakeOver::Wait(_) => {
                // Gives the lease up (compare-and-delete) and leaves it to
                // the others for two ttls.
                if self.lease.key.as_ref().is_some_and(|k| k.holder == r) {
                    self.lease.key = None;
                }
                self.step_down(r);
                self.replicas[r].giving_way_until = self.now + 2 * self.lease.ttl_ms;
                return Ok(());
            }
            TakeOver::Refill { from } => {
                let last = self.stream.last();
                if last > 0 && self.stream.entries.last().map(|e| e.hash) != rep.store.get(last as usize - 1).map(|e| e.hash) {
                    return Err(Violation { at_ms: self.now, what: format!("replica {r} refills a stream whose entry {last} is not its own") });
                }
                let refill: Vec<SimEntry> = rep.store.iter().skip(from as usize - 1).cloned().collect();
                for e in &refill {
                    self.ever.entry(e.seq).or_insert(e.hash);
                }
                self.stream.entries.extend(refill);
            }
        }
        self.refill_due = false;
        let rep = &mut self.replicas[r];
        let Life::CatchingUp(renewal) = &rep.life else { return Ok(()) };
        let renewal = if self.opts.renew_after_catch_up {
            // The renewal began afresh once caught up, whatever had lapsed.
            Renewal::new(self.opts.lease_ttl, renewal.revision(), Duration::from_millis(self.now))
        } else {
            renewal.clone()
        };
        let head = rep.head();
        rep.life = Life::Writing(Box::new(writer::Writer::new(head).with_flaws(self.opts.flaws)), renewal);
        self.pump(r)
    }

    fn produce(&mut self, p: usize) {
        // New events stop a while into the calm: every one sent must be
        // answered by the end.
        if self.now > (self.opts.faulty_for + self.opts.calm_for / 4).as_millis() as u64 {
            return;
        }
        let producer = &mut self.producers[p];
        let event = ((p as u64) << 32) | producer.next_event;
        producer.next_event += 1;
        let roll = self.rng.random_range(0..100);
        let producer = &mut self.producers[p];
        let op = if producer.usable.is_empty() || roll < 25 {
            producer.next_actor += 1;
            Op::Register(producer.next_actor)
        } else if roll < 30 {
            // An actor nobody registers: a true refusal.
            Op::Use(u32::MAX - p as u32)
        } else if roll < 33 {
            // One already registered: a true refusal too.
            Op::Register(producer.usable[0])
        } else {
            let i = self.rng.random_range(0..self.producers[p].usable.len());
            Op::Use(self.producers[p].usable[i])
        };
        self.producers[p].current = Some((event, op, self.now));
        self.asked.insert(event, (op, self.now));
        self.send(p, event, op);
    }

    /// A core request to the queue group: one of the writers subscribed
    /// (paused ones too) gets it; none, and it is lost.
    fn send(&mut self, p: usize, event: u64, op: Op) {
        let writers: Vec<usize> = (0..self.replicas.len()).filter(|&r| self.replicas[r].writing()).collect();
        self.sent_to.remove(&event);
        if !writers.is_empty() {
            let r = writers[self.rng.random_range(0..writers.len())];
            self.sent_to.insert(event, (r, self.replicas[r].paused_until.is_some()));
            let epoch = self.replicas[r].epoch;
            let d = self.delay();
            let request = Request { producer: p, event, op };
            self.after(d, Event::Deliver { replica: r, epoch, request });
        }
        self.after(PRODUCER_TIMEOUT_MS, Event::ProducerTimeout { producer: p, event });
    }

    fn answered(&mut self, p: usize, event: u64, outcome: Outcome, decided_at: u64) -> Result<(), Violation> {
        let at_ms = self.now;
        let current = self.producers[p].current.is_some_and(|(e, ..)| e == event);
        let (op, sent) = self.asked.get(&event).copied().map_or((None, 0), |(op, sent)| (Some(op), sent));
        match &outcome {
            Outcome::Receipt { seq, hash } => {
                if let Some(&(s, h)) = self.receipts.get(&event) {
                    if (s, h) != (*seq, *hash) {
                        return Err(Violation { at_ms, what: format!("event {event:#x} receipted at seq {s} and at seq {seq}") });
                    }
                }
                self.receipts.insert(event, (*seq, *hash));
            }
            Outcome::Refused(code) => {
                // Producers only use actors they hold a receipt for.
                let known = self.producers[p].usable.clone();
                if let Some(Op::Use(a)) = op {
                    if known.contains(&a) {
                        return Err(Violation {
                            at_ms,
                            what: format!(
                                "false refusal {code} of event {event:#x}: actor {a} was registered before it was sent at {sent} ms (decided at seq {decided_at})"
                            ),
                        });
                    }
                }
            }
        }
        if !current {
            return Ok(());
        }
        match (&outcome, op) {
            (Outcome::Receipt { .. }, Some(Op::Register(a))) => self.producers[p].usable.push(a),
            (Outcome::Refused(_), _) => self.report.refusals += 1,
            _ => {}
        }
        if matches!(outcome, Outcome::Receipt { .. }) {
            self.report.receipts += 1;
        }
        self.producers[p].current = None;
        let think = self.rng.random_range(1..60);
        self.after(think, Event::ProducerActs { producer: p });
        Ok(())
    }

    /// The invariants, after every step. What was checked of the stream
    /// and the stores stays checked (both only grow, unless the stream is
    /// deleted or a folder wiped, which start their check over), so a step
    /// costs what it added.
    fn check(&mut self) -> Result<(), Violation> {
        let at_ms = self.now;
        let broke = |what: String| Err(Violation { at_ms, what });
        // No two entries at one seq, ever; the stream one chain.
        for (i, e) in self.stream.entries.iter().enumerate().skip(self.stream_checked) {
            if e.seq != i as u64 + 1 {
                return broke(format!("the stream holds entry {} at place {}", e.seq, i + 1));
            }
            if self.ever.get(&e.seq) != Some(&e.hash) {
                return broke(format!("two entries at seq {}: the stream now holds another", e.seq));
            }
            if !self.stream_events.insert(e.event) {
                return broke(format!("event {:#x} on the stream twice (again at seq {})", e.event, e.seq));
            }
        }
        self.stream_checked = self.stream.entries.len();
        // Every receipted entry on the stream at its seq, with its hash
        // (while the stream is there and long enough).
        for (event, (seq, hash)) in &self.receipts {
            if self.ever.get(seq) != Some(hash) {
                return broke(format!("event {event:#x} receipted at seq {seq}, which the stream never held with that hash"));
            }
            if let Some(e) = self.stream.entries.get(*seq as usize - 1) {
                if e.hash != *hash {
                    return broke(format!("receipted entry {seq} replaced on the stream"));
                }
            }
        }
        // Every store a prefix of the history.
        for (r, rep) in self.replicas.iter_mut().enumerate() {
            for e in rep.store.iter().skip(rep.store_checked) {
                if self.ever.get(&e.seq) != Some(&e.hash) {
                    return broke(format!("replica {r}'s store holds entry {} the stream never held", e.seq));
                }
            }
            rep.store_checked = rep.store.len();
        }
        // A holder of the lease renews it from the moment it took it, every
        // quarter ttl: one that goes longer (awake) lets it lapse under it.
        let ttl = self.lease.ttl_ms;
        for (r, rep) in self.replicas.iter().enumerate() {
            let holds = matches!(rep.life, Life::CatchingUp(_) | Life::Writing(..)) && rep.paused_until.is_none();
            if holds && self.now > rep.renew_sent_at + ttl / 2 + TICK_MS {
                let doing = if matches!(rep.life, Life::CatchingUp(_)) { "catching up" } else { "writing" };
                return broke(format!(
                    "replica {r} holds the writer lease ({doing}, head {}) and has not renewed it for {} ms (ttl {ttl} ms)",
                    rep.head(),
                    self.now - rep.renew_sent_at
                ));
            }
        }
        Ok(())
    }

    /// At the end, after the calm: nothing receipted missing from the
    /// stream, and every producer answered.
    fn finish(mut self) -> Result<Report, Violation> {
        let at_ms = self.now;
        for (event, (seq, _)) in &self.receipts {
            if self.stream.entries.len() < *seq as usize {
                return Err(Violation { at_ms, what: format!("event {event:#x} receipted at seq {seq}; the stream ends at {}", self.stream.last()) });
            }
        }
        for (p, producer) in self.producers.iter().enumerate() {
            if let Some((event, op, sent)) = producer.current {
                let went = match self.sent_to.get(&event) {
                    Some((r, true)) => format!("; last sent to replica {r}, paused then, which never took it"),
                    Some((r, false)) => format!("; last sent to replica {r}"),
                    None => "; no writer took requests when it was last sent".into(),
                };
                return Err(Violation { at_ms, what: format!("producer {p}'s event {event:#x} ({op:?}), sent at {sent} ms, never answered{went}") });
            }
        }
        self.report.head = self.stream.last();
        Ok(std::mem::take(&mut self.report))
    }
}

/// Runs one seed.
pub fn run(seed: u64, opts: Options) -> Result<Report, Violation> {
    World::new(seed, opts).run()
}

/// The first of `seeds` that breaks an invariant, with what broke.
pub fn first_failing(seeds: std::ops::Range<u64>, opts: Options) -> Option<(u64, Violation)> {
    seeds.into_iter().find_map(|s| run(s, opts).err().map(|v| (s, v)))
}
