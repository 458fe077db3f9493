//! A scratch measurement, not part of the workspace: what one lot record costs
//! in sled and in fjall (an LSM tree), written in batches of 10,000, read back
//! at random, and a tenth rewritten (the dirty records of a checkpoint), with a
//! 512 MB cache each. See docs/BENCHMARKS.md, "Choosing the projection's store".
//! Run: `cargo run --release -- 3000000 sled` and `... fjall`, each alone
//! under `/usr/bin/time -v` for its peak.

use std::time::Instant;
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let only = std::env::args().nth(2).unwrap_or_default();
    let val = vec![7u8; 300];
    let key = |i: usize| format!("S{:08}-{:x}", i, (i * 2654435761) % 1000003).into_bytes();
    if only != "fjall" {
        let _ = std::fs::remove_dir_all("target/spike-sled");
        let db = sled::Config::new().path("target/spike-sled").cache_capacity(512 << 20).open().unwrap();
        let t = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            let mut b = sled::Batch::default();
            for &i in chunk {
                b.insert(key(i), val.clone());
            }
            db.apply_batch(b).unwrap();
        }
        db.flush().unwrap();
        let w = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut found = 0;
        for j in 0..200_000usize {
            let i = (j * 7919) % n;
            if db.get(key(i)).unwrap().is_some() {
                found += 1;
            }
        }
        let r = t.elapsed().as_secs_f64();
        // rewrite 10% (dirty lots at a checkpoint)
        let t = Instant::now();
        let mut b = sled::Batch::default();
        for j in 0..n / 10 {
            b.insert(key((j * 13) % n), val.clone());
        }
        db.apply_batch(b).unwrap();
        db.flush().unwrap();
        let u = t.elapsed().as_secs_f64();
        println!(
            "sled : insert {:.2} us/rec, get {:.2} us, update {:.2} us/rec, found {found}",
            w * 1e6 / n as f64,
            r * 1e6 / 200_000.0,
            u * 1e6 / (n / 10) as f64
        );
        drop(db);
    }
    if only != "sled" {
        let _ = std::fs::remove_dir_all("target/spike-fjall");
        let ks = fjall::Config::new("target/spike-fjall").cache_size(512 << 20).open().unwrap();
        let part = ks.open_partition("lots", fjall::PartitionCreateOptions::default()).unwrap();
        let t = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            let mut b = ks.batch();
            for &i in chunk {
                b.insert(&part, key(i), val.clone());
            }
            b.commit().unwrap();
        }
        ks.persist(fjall::PersistMode::SyncAll).unwrap();
        let w = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut found = 0;
        for j in 0..200_000usize {
            let i = (j * 7919) % n;
            if part.get(key(i)).unwrap().is_some() {
                found += 1;
            }
        }
        let r = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut b = ks.batch();
        for j in 0..n / 10 {
            b.insert(&part, key((j * 13) % n), val.clone());
        }
        b.commit().unwrap();
        ks.persist(fjall::PersistMode::SyncAll).unwrap();
        let u = t.elapsed().as_secs_f64();
        println!(
            "fjall: insert {:.2} us/rec, get {:.2} us, update {:.2} us/rec, found {found}",
            w * 1e6 / n as f64,
            r * 1e6 / 200_000.0,
            u * 1e6 / (n / 10) as f64
        );
    }
}
