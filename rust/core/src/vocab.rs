//! String interning for user and item ids.
//!
//! Ids are stored back to back in one buffer (compact even for tens of millions of ids) and
//! numbered in order of first appearance, which makes numbering deterministic for a given
//! input order without sorting.

use hashbrown::HashTable;
use std::hash::BuildHasher;

type Hasher = hashbrown::DefaultHashBuilder;

#[derive(Clone, Default)]
pub struct Vocab {
    bytes: String,
    ends: Vec<u64>,
    table: HashTable<u32>,
    hasher: Hasher,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocab").field("len", &self.len()).finish()
    }
}

impl PartialEq for Vocab {
    fn eq(&self, other: &Self) -> bool {
        self.ends == other.ends && self.bytes == other.bytes
    }
}

impl Vocab {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(ids: usize, bytes: usize) -> Self {
        Vocab {
            bytes: String::with_capacity(bytes),
            ends: Vec::with_capacity(ids),
            table: HashTable::with_capacity(ids),
            hasher: Hasher::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The id string of index `i` (panics when out of range, like slice indexing).
    pub fn get(&self, i: u32) -> &str {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    pub fn try_get(&self, i: u32) -> Option<&str> {
        ((i as usize) < self.len()).then(|| self.get(i))
    }

    pub fn index_of(&self, key: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.table.find(hash, |&id| self.get(id) == key).copied()
    }

    /// Returns the index of `key`, adding it at the end if it is new.
    pub fn intern(&mut self, key: &str) -> u32 {
        let hash = self.hasher.hash_one(key);
        if let Some(&id) = self.table.find(hash, |&id| get_in(&self.bytes, &self.ends, id) == key) {
            return id;
        }
        let id = u32::try_from(self.ends.len()).expect("more than 2^32 distinct ids");
        self.bytes.push_str(key);
        self.ends.push(self.bytes.len() as u64);
        let (bytes, ends, hasher) = (&self.bytes, &self.ends, &self.hasher);
        self.table
            .insert_unique(hash, id, |&other| hasher.hash_one(get_in(bytes, ends, other)));
        id
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len() as u32).map(move |i| self.get(i))
    }

    /// A new vocabulary holding `keep[0], keep[1], ...` in that order (used to renumber ids
    /// densely after filtering).
    pub fn subset(&self, keep: &[u32]) -> Vocab {
        let mut out = Vocab::with_capacity(keep.len(), keep.len() * 16);
        for &i in keep {
            out.intern(self.get(i));
        }
        out
    }

    /// A stable hash of every id string (independent of numbering and process).
    pub fn stable_hashes(&self) -> Vec<u64> {
        self.iter().map(|s| crate::rng::stable_hash(s.as_bytes())).collect()
    }

    /// Each id's position in ascending byte order of the id strings (as C's `strcmp` orders
    /// them). trec_eval breaks score ties by id, so these are the keys of the `trec` tie policy.
    pub fn order_keys(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.get(a).as_bytes().cmp(self.get(b).as_bytes()));
        let mut keys = vec![0u32; self.len()];
        for (position, &i) in order.iter().enumerate() {
            keys[i as usize] = position as u32;
        }
        keys
    }
}

#[inline]
fn get_in<'a>(bytes: &'a str, ends: &[u64], i: u32) -> &'a str {
    let i = i as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &bytes[start..ends[i] as usize]
}

impl<'a> FromIterator<&'a str> for Vocab {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut v = Vocab::new();
        for s in iter {
            v.intern(s);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_in_first_appearance_order() {
        let mut v = Vocab::new();
        assert_eq!(v.intern("b"), 0);
        assert_eq!(v.intern("a"), 1);
        assert_eq!(v.intern("b"), 0);
        assert_eq!(v.len(), 2);
        assert_eq!(v.get(1), "a");
        assert_eq!(v.index_of("a"), Some(1));
        assert_eq!(v.index_of("zz"), None);
        assert_eq!(v.iter().collect::<Vec<_>>(), ["b", "a"]);
    }

    #[test]
    fn survives_growth() {
        let mut v = Vocab::new();
        for i in 0..50_000 {
            assert_eq!(v.intern(&format!("id{i}")), i);
        }
        for i in (0..50_000).step_by(997) {
            assert_eq!(v.index_of(&format!("id{i}")), Some(i));
        }
    }

    #[test]
    fn subset_renumbers() {
        let v: Vocab = ["x", "y", "z"].into_iter().collect();
        let s = v.subset(&[2, 0]);
        assert_eq!(s.iter().collect::<Vec<_>>(), ["z", "x"]);
        assert_eq!(v.stable_hashes()[2], s.stable_hashes()[0]);
    }

    #[test]
    fn order_keys_follow_byte_order() {
        let v: Vocab = ["B0b", "B0a", "a", "B0"].into_iter().collect();
        // Byte order: "B0" < "B0a" < "B0b" < "a" (uppercase before lowercase, prefix first).
        assert_eq!(v.order_keys(), vec![2, 1, 3, 0]);
    }
}
