//! The write model's large tables (lots, event ids): records under
//! fixed-size keys, in two parts. What a saved model held is one run in
//! key order, read straight into a vector as it comes off the file (no
//! hashing, no table grown step by step, no slack: a 10 M-entry history
//! touched 1.7 times the memory in hash tables sized to a power of two),
//! searched by bisection and changed in place. What was added since is in
//! a hash map. Saving and digesting merge the two in key order.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A record's key: a blake3 digest of its id.
pub type Key = [u8; 32];

/// Entries reserved up front at most, whatever a saved model claims.
const MOST: usize = 1 << 27;

#[derive(Debug, Clone)]
pub struct Table<V> {
    /// The saved run, strictly in key order.
    run: Vec<(Key, V)>,
    /// Keys not in the run.
    added: HashMap<Key, V>,
}

impl<V> Default for Table<V> {
    fn default() -> Table<V> {
        Table { run: Vec::new(), added: HashMap::new() }
    }
}

impl<V> Table<V> {
    fn find(&self, key: &Key) -> Result<usize, usize> {
        self.run.binary_search_by(|(k, _)| k.cmp(key))
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
                Ok(Table { run, added: HashMap::new() })
            }
        }
        d.deserialize_map(Run(PhantomData))
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
