//! The write model's large tables (lots, event ids): records under
//! fixed-size keys, in two parts. What a saved model held is one run in
//! key order, read straight into a vector as it comes off the file (no
//! hashing, no table grown step by step, no slack: a 10 M-entry history
//! touched 1.7 times the memory in hash tables sized to a power of two),
//! searched by bisection and changed in place. What was added since is in
//! a hash map. Saving and digesting merge the two in key order.
//!
//! Keys are digests, so they spread evenly: a directory of where each
//! range of leading bits begins in the run (about eight records a range,
//! 4 bytes each) narrows a search to a few neighbouring records, one or
//! two cache misses rather than a bisection's twenty-odd over gigabytes.
//! Ids someone grinds to share leading bits only lengthen their own
//! range, which is still searched by bisection.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A record's key: a blake3 digest of its id.
pub type Key = [u8; 32];

/// Entries reserved up front at most, whatever a saved model claims.
const MOST: usize = 1 << 27;
/// Records per range of the directory, about.
const PER_RANGE: usize = 8;

#[derive(Debug, Clone)]
pub struct Table<V> {
    /// The saved run, strictly in key order.
    run: Vec<(Key, V)>,
    /// `starts[r]`: the index in the run of the first key whose leading
    /// `bits` bits are `r` or more; one more at the end (the run's length).
    starts: Vec<u32>,
    bits: u32,
    /// Keys not in the run.
    added: HashMap<Key, V>,
}

impl<V> Default for Table<V> {
    fn default() -> Table<V> {
        Table { run: Vec::new(), starts: Vec::new(), bits: 0, added: HashMap::new() }
    }
}

/// A key's leading 64 bits.
fn lead(key: &Key) -> u64 {
    let mut first = [0; 8];
    first.copy_from_slice(&key[..8]);
    u64::from_be_bytes(first)
}

impl<V> Table<V> {
    /// A table of a run already in key order, with its directory.
    fn of_run(run: Vec<(Key, V)>) -> Table<V> {
        let ranges = (run.len() / PER_RANGE).max(1).next_power_of_two();
        let bits = ranges.trailing_zeros();
        let mut starts = Vec::with_capacity(ranges + 1);
        let mut i = 0;
        for r in 0..ranges as u64 {
            while run.get(i).is_some_and(|(k, _)| range_of(k, bits) < r) {
                i += 1;
            }
            starts.push(u32::try_from(i).unwrap_or(u32::MAX));
        }
        starts.push(u32::try_from(run.len()).unwrap_or(u32::MAX));
        Table { run, starts, bits, added: HashMap::new() }
    }

    fn find(&self, key: &Key) -> Result<usize, usize> {
        let r = range_of(key, self.bits) as usize;
        let (Some(&lo), Some(&hi)) = (self.starts.get(r), self.starts.get(r + 1)) else {
            return self.run.binary_search_by(|(k, _)| k.cmp(key));
        };
        let (lo, hi) = (lo as usize, hi as usize);
        match self.run.get(lo..hi) {
            Some(range) => range.binary_search_by(|(k, _)| k.cmp(key)).map(|i| lo + i).map_err(|i| lo + i),
            None => self.run.binary_search_by(|(k, _)| k.cmp(key)),
        }
    }

    pub fn get(&self, key: &Key) -> Option<&V> {
        match self.find(key) {
            Ok(i) => self.run.get(i).map(|(_, v)| v),
            Err(_) => self.added.get(key),
        }
    }

    pub fn get_mut(&mut self, key: &Key) -> Option<&mut V> {
        match self.find(key) {
            Ok(i) => self.run.get_mut(i).map(|(_, v)| v),
            Err(_) => self.added.get_mut(key),
        }
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: Key, value: V) {
        match self.find(&key) {
            Ok(i) => {
                if let Some(slot) = self.run.get_mut(i) {
                    slot.1 = value;
                }
            }
            Err(_) => {
                self.added.insert(key, value);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.run.len() + self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.run.iter().map(|(_, v)| v).chain(self.added.values())
    }

    /// Every record in key order: the run and the added keys merged.
    fn in_order(&self) -> impl Iterator<Item = (&Key, &V)> {
        let mut added: Vec<(&Key, &V)> = self.added.iter().collect();
        added.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut run = self.run.iter().map(|(k, v)| (k, v)).peekable();
        let mut added = added.into_iter().peekable();
        std::iter::from_fn(move || match (run.peek(), added.peek()) {
            (Some(r), Some(a)) if a.0 < r.0 => added.next(),
            (Some(_), _) => run.next(),
            (None, _) => added.next(),
        })
    }
}

/// Serialized as a map in key order: one table, one encoding.
impl<V: Serialize> Serialize for Table<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.in_order() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Read back as the run, refused unless strictly in key order (so that
/// bisection finds every record).
impl<'de, V: Deserialize<'de>> Deserialize<'de> for Table<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Table<V>, D::Error> {
        struct Run<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Run<V> {
            type Value = Table<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map in key order")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Table<V>, A::Error> {
                let mut run: Vec<(Key, V)> = Vec::with_capacity(a.size_hint().unwrap_or(0).min(MOST));
                while let Some((k, v)) = a.next_entry::<Key, V>()? {
                    if run.last().is_some_and(|(last, _)| *last >= k) {
                        return Err(serde::de::Error::custom("a table's keys are not in order"));
                    }
                    run.push((k, v));
                }
                if run.len() > u32::MAX as usize {
                    return Err(serde::de::Error::custom("a table of more than 4 billion records"));
                }
                Ok(Table::of_run(run))
            }
        }
        d.deserialize_map(Run(PhantomData))
    }
}

/// The range of the directory a key falls in: its leading `bits` bits.
fn range_of(key: &Key, bits: u32) -> u64 {
    if bits == 0 {
        0
    } else {
        lead(key) >> (64 - bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> Key {
        [i; 32]
    }

    /// A table read back from its encoding finds what it held, changes in
    /// place, takes new keys, and encodes as a table that was never
    /// saved would: the same records in key order.
    #[test]
    fn a_saved_run_and_added_keys_read_and_encode_as_one_table() {
        let mut fresh = Table::default();
        for i in [9, 3, 7, 1] {
            fresh.insert(key(i), u32::from(i));
        }
        let bytes = postcard::to_allocvec(&fresh).unwrap();
        let mut read: Table<u32> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((read.len(), read.get(&key(7)), read.get(&key(2))), (4, Some(&7), None));
        for t in [&mut fresh, &mut read] {
            t.insert(key(5), 5);
            t.insert(key(200), 200);
            *t.get_mut(&key(3)).unwrap() = 30;
            t.insert(key(9), 90);
        }
        assert_eq!(postcard::to_allocvec(&read).unwrap(), postcard::to_allocvec(&fresh).unwrap());
        let order: Vec<u8> = read.in_order().map(|(k, _)| k[0]).collect();
        assert_eq!(order, [1, 3, 5, 7, 9, 200]);
        assert_eq!(read.values().sum::<u32>(), 1 + 30 + 5 + 7 + 90 + 200);
        assert!(read.contains_key(&key(200)) && !read.contains_key(&key(4)));
    }

    /// Every key of a saved run is found through the directory, keys that
    /// are not there are not, and keys crowded into one range (as someone
    /// grinding ids to share leading bits would make) are found too.
    #[test]
    fn the_directory_finds_every_saved_key_and_no_other() {
        let digest = |i: u32| *blake3::hash(&i.to_be_bytes()).as_bytes();
        let mut fresh = Table::default();
        let mut keys = Vec::new();
        for i in 0..5_000 {
            keys.push(digest(i));
            fresh.insert(digest(i), i);
        }
        for i in 100_000..100_300 {
            let mut k = digest(i);
            k[..4].copy_from_slice(&[0x42; 4]);
            keys.push(k);
            fresh.insert(k, i);
        }
        let read: Table<u32> = postcard::from_bytes(&postcard::to_allocvec(&fresh).unwrap()).unwrap();
        assert_eq!((read.run.len(), read.added.len(), read.starts.len()), (5_300, 0, 1024 + 1));
        for k in &keys {
            assert!(read.get(k).is_some());
            assert_eq!(read.get(k), fresh.get(k));
        }
        for i in 1_000_000..1_002_000 {
            assert_eq!(read.get(&digest(i)), None);
        }
        assert_eq!((read.get(&[0; 32]), read.get(&[0xff; 32])), (None, None));
    }

    /// A saved table out of key order is refused, not searched wrongly.
    #[test]
    fn a_run_out_of_order_is_refused() {
        let pairs: Vec<(Key, u32)> = vec![(key(2), 2), (key(1), 1)];
        let bytes = postcard::to_allocvec(&pairs.into_iter().collect::<std::collections::BTreeMap<_, _>>()).unwrap();
        assert!(postcard::from_bytes::<Table<u32>>(&bytes).is_ok(), "a BTreeMap encodes in order");
        let mut unordered = Vec::new();
        unordered.push(2u8); // two entries
        for (k, v) in [(key(2), 2u8), (key(1), 1u8)] {
            unordered.extend_from_slice(&k);
            unordered.push(v);
        }
        assert!(postcard::from_bytes::<Table<u32>>(&unordered).is_err());
    }
}
