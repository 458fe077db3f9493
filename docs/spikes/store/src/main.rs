//! A scratch measurement, not part of the workspace: what one lot record costs
//! in sled and in fjall (an LSM tree), written in batches of 10,000, read back
//! at random, and a tenth rewritten (the dirty records of a checkpoint), with a
//! 512 MB cache each. See docs/BENCHMARKS.md, "Choosing the projection's on-disk store".
//! Run: `cargo run --release -- 3000000 sled` and `... fjall`, each alone
//! under `/usr/bin/time -v` for its peak.

use std::time::Instant;

/// One store under test: write a batch of (key, value), read a key, make
/// everything written durable.
trait Store {
    fn write(&mut self, batch: Vec<(Vec<u8>, Vec<u8>)>);
    fn get(&self, key: &[u8]) -> bool;
    fn persist(&mut self);
}

struct Sled(sled::Db);

impl Store for Sled {
    fn write(&mut self, batch: Vec<(Vec<u8>, Vec<u8>)>) {
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            b.insert(k, v);
        }
        self.0.apply_batch(b).unwrap();
    }
    fn get(&self, key: &[u8]) -> bool {
        self.0.get(key).unwrap().is_some()
    }
    fn persist(&mut self) {
        self.0.flush().unwrap();
    }
}

struct Fjall(fjall::Keyspace, fjall::PartitionHandle);

impl Store for Fjall {
    fn write(&mut self, batch: Vec<(Vec<u8>, Vec<u8>)>) {
        let mut b = self.0.batch();
        for (k, v) in batch {
            b.insert(&self.1, k, v);
        }
        b.commit().unwrap();
    }
    fn get(&self, key: &[u8]) -> bool {
        self.1.get(key).unwrap().is_some()
    }
    fn persist(&mut self) {
        self.0.persist(fjall::PersistMode::SyncAll).unwrap();
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("S{:08}-{:x}", i, (i * 2654435761) % 1000003).into_bytes()
}

/// Inserts `n` records in batches of 10,000, reads 200,000 at random,
/// rewrites a tenth in one batch; prints µs per record for each.
fn measure(name: &str, n: usize, store: &mut dyn Store) {
    let val = vec![7u8; 300];
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        store.write(chunk.iter().map(|&i| (key(i), val.clone())).collect());
    }
    store.persist();
    let w = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let found = (0..200_000usize).filter(|j| store.get(&key((j * 7919) % n))).count();
    let r = t.elapsed().as_secs_f64();
    let t = Instant::now();
    store.write((0..n / 10).map(|j| (key((j * 13) % n), val.clone())).collect());
    store.persist();
    let u = t.elapsed().as_secs_f64();
    println!(
        "{name}: insert {:.2} us/rec, get {:.2} us, update {:.2} us/rec, found {found}",
        w * 1e6 / n as f64,
        r * 1e6 / 200_000.0,
        u * 1e6 / (n / 10) as f64
    );
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let only = std::env::args().nth(2).unwrap_or_default();
    if only != "fjall" {
        let _ = std::fs::remove_dir_all("target/spike-sled");
        let db = sled::Config::new().path("target/spike-sled").cache_capacity(512 << 20).open().unwrap();
        measure("sled", n, &mut Sled(db));
    }
    if only != "sled" {
        let _ = std::fs::remove_dir_all("target/spike-fjall");
        let ks = fjall::Config::new("target/spike-fjall").cache_size(512 << 20).open().unwrap();
        let part = ks.open_partition("lots", fjall::PartitionCreateOptions::default()).unwrap();
        measure("fjall", n, &mut Fjall(ks, part));
    }
}
