//! Properties over random valid event sequences (proptest). Each sequence is
//! signed and chained like real entries, accepted by the ledger's write
//! model and applied by the projection. Then: carats are conserved by split
//! and merge, processing never adds carats, every lot's shares sum to exactly
//! one, and replay is deterministic.

use custody_ledger::model::Model;
use custody_projection::view::origin;
use custody_projection::view::State;
use custody_proto::{Code, Entry, Event, Timestamp};
use nkeys::KeyPair;
use proptest::prelude::*;
use serde_json::{json, Value};

/// What the generator asks for; turned into valid events against the
/// current lots.
#[derive(Debug, Clone)]
enum Op {
    /// A miner (RU, BW or CA) mines and ships to the trader.
    Mine { country: usize, hundredths: u64 },
    /// The trader splits a lot into parts with these weights.
    Split { pick: usize, weights: Vec<u64> },
    /// The trader merges two to four lots.
    Merge { picks: Vec<usize> },
    /// The trader ships a lot to the cutter, who cuts it at this yield.
    Cut { pick: usize, yield_pct: u64, stones: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 100..100_000u64).prop_map(|(country, hundredths)| Op::Mine { country, hundredths }),
        2 => (any::<usize>(), prop::collection::vec(1..100u64, 2..6)).prop_map(|(pick, weights)| Op::Split { pick, weights }),
        2 => prop::collection::vec(any::<usize>(), 2..5).prop_map(|picks| Op::Merge { picks }),
        1 => (any::<usize>(), 1..=100u64, 1..6usize).prop_map(|(pick, yield_pct, stones)| Op::Cut { pick, yield_pct, stones }),
    ]
}

struct World {
    authority: KeyPair,
    miners: Vec<KeyPair>,
    trader: KeyPair,
    cutter: KeyPair,
    entries: Vec<Entry>,
    model: Model,
    /// The trader's live rough lots and their hundredths.
    live: Vec<(String, u64)>,
    mined: u64,
    lost: u64,
    n: u64,
}

fn ct(h: u64) -> String {
    format!("{}.{:02}", h / 100, h % 100)
}

impl World {
    fn new() -> World {
        let authority = KeyPair::new_user();
        let model = Model::new(authority.public_key().parse().unwrap());
        let mut w = World {
            miners: (0..3).map(|_| KeyPair::new_user()).collect(),
            trader: KeyPair::new_user(),
            cutter: KeyPair::new_user(),
            authority,
            entries: Vec::new(),
            model,
            live: Vec::new(),
            mined: 0,
            lost: 0,
            n: 0,
        };
        let regs: Vec<(String, &str, &str)> = w
            .miners
            .iter()
            .zip(["RU", "BW", "CA"])
            .map(|(k, c)| (k.public_key(), "miner", c))
            .chain([(w.trader.public_key(), "trader", "AE"), (w.cutter.public_key(), "manufacturer", "IN")])
            .collect();
        for (key, role, country) in regs {
            let a = KeyPair::from_seed(&w.authority.seed().unwrap()).unwrap();
            w.push(&a, "actor.registered", json!({"subject": key, "name": role, "roles": [role], "country": country}));
        }
        w
    }

    /// Signs, checks with the ledger's rules (must pass), chains.
    fn push(&mut self, key: &KeyPair, kind: &str, fields: Value) {
        self.n += 1;
        let mut e = json!({"id": format!("p{}", self.n), "kind": kind, "actor": key.public_key(), "occurred_at": "2024-09-02T08:00:00Z"});
        e.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        let payload = e.to_string();
        let event = Event::parse(payload.as_bytes(), Timestamp::now()).unwrap();
        self.model.check(&event).unwrap_or_else(|r| panic!("the generator made an invalid event {e}: {r}"));
        self.model.apply(&event);
        let head = self.entries.last().map(|x: &Entry| (x.seq, x.hash));
        let env = custody_proto::envelope::sign(key, payload.as_bytes()).unwrap();
        self.entries.push(Entry::next(head, "2024-09-02T09:00:00Z".parse().unwrap(), env));
    }

    fn lot(&mut self) -> String {
        self.n += 1;
        format!("L{}", self.n)
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Mine { country, hundredths } => {
                let (lot, miner) = (self.lot(), KeyPair::from_seed(&self.miners[*country].seed().unwrap()).unwrap());
                let c = ["RU", "BW", "CA"][*country];
                self.push(&miner, "mined", json!({"lot": lot, "carats": ct(*hundredths), "country": c}));
                let cert = format!("{c}-{}", self.n);
                self.push(
                    &miner,
                    "exported",
                    json!({"lots": [lot], "to": self.trader.public_key(), "to_country": "AE", "certificate": {"number": cert, "value_usd": "1.00"}}),
                );
                let t = KeyPair::from_seed(&self.trader.seed().unwrap()).unwrap();
                self.push(&t, "imported", json!({"certificate": cert}));
                self.live.push((lot, *hundredths));
                self.mined += hundredths;
            }
            Op::Split { pick, weights } if !self.live.is_empty() => {
                let (lot, total) = self.live.remove(pick % self.live.len());
                let sum: u64 = weights.iter().sum();
                let mut parts: Vec<u64> = weights.iter().map(|w| total * w / sum).filter(|p| *p > 0).collect();
                let assigned: u64 = parts.iter().sum();
                if parts.is_empty() {
                    parts.push(0)
                }
                parts[0] += total - assigned;
                let outs: Vec<(String, u64)> = parts.iter().map(|p| (self.lot(), *p)).collect();
                let t = KeyPair::from_seed(&self.trader.seed().unwrap()).unwrap();
                let into: Vec<Value> = outs.iter().map(|(l, h)| json!({"lot": l, "carats": ct(*h)})).collect();
                self.push(&t, "split", json!({"lot": lot, "into": into}));
                self.live.extend(outs);
            }
            Op::Merge { picks } if self.live.len() >= 2 => {
                let mut taken = Vec::new();
                for p in picks {
                    if self.live.is_empty() {
                        break;
                    }
                    taken.push(self.live.remove(p % self.live.len()));
                }
                if taken.len() < 2 {
                    self.live.extend(taken);
                    return;
                }
                let total: u64 = taken.iter().map(|x| x.1).sum();
                let into = self.lot();
                let t = KeyPair::from_seed(&self.trader.seed().unwrap()).unwrap();
                let lots: Vec<&String> = taken.iter().map(|x| &x.0).collect();
                self.push(&t, "merged", json!({"lots": lots, "into": {"lot": into, "carats": ct(total)}}));
                self.live.push((into, total));
            }
            Op::Cut { pick, yield_pct, stones } if !self.live.is_empty() => {
                let (lot, total) = self.live.remove(pick % self.live.len());
                let t = KeyPair::from_seed(&self.trader.seed().unwrap()).unwrap();
                let cert = format!("AE-{}", self.n);
                self.push(
                    &t,
                    "exported",
                    json!({"lots": [lot], "to": self.cutter.public_key(), "to_country": "IN", "certificate": {"number": cert, "value_usd": "1.00"}}),
                );
                let c = KeyPair::from_seed(&self.cutter.seed().unwrap()).unwrap();
                self.push(&c, "imported", json!({"certificate": cert}));
                let out = (total * yield_pct / 100).max(*stones as u64).min(total);
                let each = out / *stones as u64;
                let mut sizes = vec![each; *stones];
                sizes[0] += out - each * *stones as u64;
                let into: Vec<Value> = sizes.iter().filter(|s| **s > 0).map(|s| json!({"lot": self.lot(), "carats": ct(*s)})).collect();
                let made: u64 = sizes.iter().sum();
                self.push(&c, "processed", json!({"lot": lot, "process": "cutting_polishing", "country": "IN", "into": into}));
                self.lost += total - made;
            }
            _ => {}
        }
    }
}

fn replay(entries: &[Entry]) -> State {
    let mut s = State::default();
    for e in entries {
        assert!(s.apply(e).unwrap(), "entry {} applied", e.seq);
    }
    s
}

/// [`replay`] onto the projection's store with the smallest cache,
/// checkpoints written whenever it asks, and the store closed and opened
/// again from its checkpoint halfway.
fn replay_stored(entries: &[Entry]) -> (tempfile::TempDir, custody_projection::store::Store, State) {
    use custody_projection::store::{Budget, Store};
    let dir = tempfile::tempdir().unwrap();
    let budget = Budget { cache_mb: 0 };
    let mut store = Store::open(dir.path(), budget).unwrap();
    let mut s = store.load().unwrap();
    for (i, e) in entries.iter().enumerate() {
        assert!(s.apply(e).unwrap(), "entry {} applied", e.seq);
        if s.wants_checkpoint(Default::default()) || i == entries.len() / 2 {
            let written = store.save(&s).unwrap();
            s.saved(&written);
        }
        if i == entries.len() / 2 {
            drop(s);
            drop(store);
            store = Store::open(dir.path(), budget).unwrap();
            s = store.load().unwrap();
        }
        assert!(s.failure().is_none());
    }
    (dir, store, s)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn custody_invariants_hold_for_random_histories(ops in prop::collection::vec(op(), 1..40)) {
        let mut w = World::new();
        for op in &ops {
            w.run(op);
        }
        let state = replay(&w.entries);

        // Conservation: what is live plus what cutting took off is what was mined.
        let live: u64 = state.lots.values().filter(|l| !l.consumed).map(|l| l.carats.hundredths()).sum();
        prop_assert_eq!(live + w.lost, w.mined);
        // Processing never adds carats.
        for y in state.yields.values() {
            for (_, _, input, output) in &y.steps {
                prop_assert!(output <= input);
            }
        }
        // Shares sum to exactly one, exactly and as shown.
        for lot in state.lots.values() {
            let exact: num_rational::BigRational = lot.composition.by_source().values().sum();
            prop_assert_eq!(exact, num_rational::BigRational::from_integer(1.into()), "lot {}", lot.lot);
            let rounded = lot.composition.rounded();
            // Every source with mass is shown, a trace as "<0.0001".
            prop_assert_eq!(rounded.len(), lot.composition.by_source().len(), "lot {}", lot.lot);
            let shown: u32 =
                rounded.iter().filter(|(_, s)| s != custody_projection::origin::TOO_SMALL).map(|(_, s)| s.replace('.', "").parse::<u32>().unwrap()).sum();
            prop_assert_eq!(shown, 10_000, "lot {}", lot.lot);
        }
        // Replay is deterministic.
        let again = replay(&w.entries);
        prop_assert_eq!(custody_projection::service::digest(&again), custody_projection::service::digest(&state));
        prop_assert!(again == state);
        // On disk behind the smallest cache (checkpoints as it fills, the
        // store closed and opened again halfway), the same state and the
        // same answers as all in memory.
        let (_dir, _store, stored) = replay_stored(&w.entries);
        prop_assert_eq!(custody_projection::service::digest(&stored), custody_projection::service::digest(&state));
        for (id, lot) in state.lots.iter() {
            let there = stored.lots.get(&id);
            prop_assert!(there.is_some(), "lot {} is in the store", id);
            let there = there.unwrap();
            prop_assert_eq!(origin(&stored.answerable(&there)), origin(&state.answerable(&lot)), "lot {}", id);
        }
        prop_assert!(stored == state);
    }

    #[test]
    fn a_split_that_does_not_add_up_is_refused(hundredths in 200..100_000u64, delta in prop_oneof![-100i64..0, 1..100i64]) {
        let mut w = World::new();
        w.run(&Op::Mine { country: 0, hundredths });
        let (lot, total) = w.live[0].clone();
        let a = total / 2;
        let b = (total - a) as i64 + delta;
        prop_assume!(b > 0);
        let t = KeyPair::from_seed(&w.trader.seed().unwrap()).unwrap();
        let payload = json!({"id": "bad", "kind": "split", "actor": t.public_key(), "occurred_at": "2024-09-02T08:00:00Z",
            "lot": lot, "into": [{"lot": "Z1", "carats": ct(a)}, {"lot": "Z2", "carats": ct(b as u64)}]});
        let event = Event::parse(payload.to_string().as_bytes(), Timestamp::now()).unwrap();
        prop_assert_eq!(w.model.check(&event).unwrap_err().code, Code::CaratsMismatch);
    }
}

/// Merkle proofs at many tree sizes: every inclusion and consistency proof
/// the tree gives verifies against its roots; a proof with one hash bent,
/// checked against the wrong root, or for another entry does not.
mod merkle_proofs {
    use custody_proto::merkle::{verify_consistency, verify_inclusion, Tree, TreeHash};
    use custody_proto::Hash;
    use proptest::prelude::*;

    fn entry(i: u64) -> Hash {
        let mut h = [0x5a; 32];
        h[..8].copy_from_slice(&i.to_le_bytes());
        Hash(h)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

        #[test]
        fn proofs_verify_and_forgeries_do_not(size in 1u64..3000, a in any::<u64>(), b in any::<u64>(), bend in any::<u64>()) {
            let mut t = Tree::new();
            for i in 0..size {
                t.push(&entry(i));
            }
            let root = t.root();
            let seq = 1 + a % size;
            let path = t.inclusion(seq, size).unwrap();
            prop_assert!(verify_inclusion(TreeHash::Sha256, seq, size, &entry(seq - 1), &path, &root).is_ok());
            prop_assert!(verify_inclusion(TreeHash::Sha256, seq, size, &entry(seq), &path, &root).is_err(), "another entry");
            prop_assert!(verify_inclusion(TreeHash::Sha256, seq, size, &entry(seq - 1), &path, &entry(size + 7)).is_err(), "the wrong root");
            if !path.is_empty() {
                let mut bent = path.clone();
                let k = (bend as usize) % bent.len();
                bent[k].0[(bend >> 32) as usize % 32] ^= 1;
                prop_assert!(verify_inclusion(TreeHash::Sha256, seq, size, &entry(seq - 1), &bent, &root).is_err(), "bent at {}", k);
            }

            let from = 1 + b % size;
            let old = t.root_at(from).unwrap();
            let proof = t.consistency(from, size).unwrap();
            prop_assert!(verify_consistency(TreeHash::Sha256, from, size, &old, &root, &proof).is_ok());
            if from < size {
                // A history rewritten at one entry before `from`.
                let mut other = Tree::new();
                let changed = bend % from;
                for i in 0..from {
                    other.push(&if i == changed { entry(u64::MAX - i) } else { entry(i) });
                }
                prop_assert!(verify_consistency(TreeHash::Sha256, from, size, &other.root(), &root, &proof).is_err(), "rewritten at {}", changed + 1);
                if !proof.is_empty() {
                    let mut bent = proof.clone();
                    let k = (bend as usize) % bent.len();
                    bent[k].0[0] ^= 0x80;
                    prop_assert!(verify_consistency(TreeHash::Sha256, from, size, &old, &root, &bent).is_err());
                }
            }
        }
    }
}

/// The lot map: built entry by entry (with its root taken at random points
/// in between, as checkpoints do) it equals the map rebuilt from scratch
/// from the same heads; every multi-subject proof, of subjects present and
/// absent, verifies against the root a checkpoint signs and gives the heads
/// the map holds; a proof does not verify against another root.
mod lot_map {
    use custody_proto::checkpoint::Checkpoint;
    use custody_proto::lotmap::{LotMap, Subject};
    use custody_proto::Hash;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

        #[test]
        fn incremental_equals_rebuilt_and_every_proof_verifies_against_the_signed_root(
            touches in prop::collection::vec((0usize..40, any::<u8>(), any::<bool>()), 1..120),
            asked in prop::collection::vec(0usize..60, 1..20),
        ) {
            let subject = |i: usize| if i.is_multiple_of(3) { Subject::Actor(format!("U{i}")) } else { Subject::Lot(format!("L{i}")) };
            let mut live = LotMap::new();
            for (n, (i, b, checkpoint)) in touches.iter().enumerate() {
                live.touch(&subject(*i).key(), n as u64 + 1, &Hash([*b; 32]));
                if *checkpoint {
                    live.root();
                }
            }
            let mut rebuilt = LotMap::new();
            for i in 0..40 {
                if let Some(h) = live.get(&subject(i).key()) {
                    rebuilt.put(subject(i).key(), *h);
                }
            }
            let root = live.root();
            prop_assert_eq!(root, rebuilt.root());
            let ledger = nkeys::KeyPair::new_server();
            let signed = Checkpoint::sign(&ledger, "custody.test/ledger", touches.len() as u64, &Hash([1; 32]), Some(&root), "2026-12-02T00:00:00Z".parse().unwrap()).unwrap();
            let signed_root = signed.map_root_hash().unwrap().unwrap();
            let mut subjects: Vec<Subject> = asked.iter().map(|i| subject(*i)).collect();
            subjects.sort_by_key(|s| s.key().0);
            subjects.dedup();
            let proof = live.prove(&subjects);
            let heads = proof.verify(&signed_root).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for s in &subjects {
                prop_assert_eq!(heads.get(&s.key()).copied().flatten(), live.get(&s.key()).copied(), "{}", s);
            }
            prop_assert!(proof.verify(&Hash([9; 32])).is_err(), "another root");
        }
    }
}
