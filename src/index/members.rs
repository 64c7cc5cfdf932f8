//! The members behind one key of a reverse index, and the two operations
//! every part keeps its reverse maps with.

use std::collections::{BTreeSet, HashMap};

/// Most keys have exactly one member (a hostname, a backend's routes), and a
/// BTreeSet would allocate a node of eleven slots for it: at 10,000
/// XBackends that was most of the index.
#[derive(Debug, PartialEq, Eq)]
pub enum Members<V> {
    One(V),
    Many(BTreeSet<V>),
}

/// Adds `value` under `key`.
pub fn insert_into<K: std::hash::Hash + Eq, V: Ord>(map: &mut HashMap<K, Members<V>>, key: K, value: V) {
    match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(mut members) => members.get_mut().insert(value),
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(Members::One(value));
        }
    }
}

/// Removes `value` and drops the entry once empty, so deleted objects leave nothing behind.
pub fn remove_from<K: std::hash::Hash + Eq, V: Ord>(map: &mut HashMap<K, Members<V>>, key: &K, value: &V) {
    if let Some(members) = map.get_mut(key)
        && members.remove(value)
    {
        map.remove(key);
    }
}

/// The members of `key`, as a set (empty when none).
pub fn members_of<K, Q, V>(map: &HashMap<K, Members<V>>, key: &Q) -> BTreeSet<V>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
    V: Ord + Clone,
{
    map.get(key).map(Members::to_set).unwrap_or_default()
}

impl<V: Ord> Members<V> {
    fn insert(&mut self, value: V) {
        match self {
            Members::One(one) if *one == value => {}
            Members::One(_) => {
                let Members::One(one) = std::mem::replace(self, Members::Many(BTreeSet::new())) else { unreachable!() };
                *self = Members::Many(BTreeSet::from([one, value]));
            }
            Members::Many(set) => {
                set.insert(value);
            }
        }
    }

    /// Returns true when nothing is left.
    fn remove(&mut self, value: &V) -> bool {
        match self {
            Members::One(one) => one == value,
            Members::Many(set) => {
                set.remove(value);
                match set.len() {
                    0 => true,
                    1 => {
                        *self = Members::One(set.pop_first().expect("one member"));
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    pub fn iter(&self) -> MembersIter<'_, V> {
        let (one, many) = match self {
            Members::One(one) => (Some(one), None),
            Members::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    pub fn to_set(&self) -> BTreeSet<V>
    where
        V: Clone,
    {
        self.iter().cloned().collect()
    }
}

pub type MembersIter<'a, V> = std::iter::Chain<
    std::option::IntoIter<&'a V>,
    std::iter::Flatten<std::option::IntoIter<std::collections::btree_set::Iter<'a, V>>>,
>;

impl<'a, V: Ord> IntoIterator for &'a Members<V> {
    type Item = &'a V;
    type IntoIter = MembersIter<'a, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A reverse map rebuilt from scratch, for the property tests: every part
/// checks that the one it keeps by hand equals it.
#[cfg(test)]
pub fn rebuilt<K: std::hash::Hash + Eq, V: Ord>(pairs: impl IntoIterator<Item = (K, V)>) -> HashMap<K, Members<V>> {
    let mut map = HashMap::new();
    for (key, value) in pairs {
        insert_into(&mut map, key, value);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_grow_and_shrink_back_to_one() {
        let mut map: HashMap<&str, Members<u32>> = HashMap::new();
        insert_into(&mut map, "k", 1);
        insert_into(&mut map, "k", 1);
        assert!(matches!(map["k"], Members::One(1)), "a duplicate adds nothing");
        insert_into(&mut map, "k", 3);
        insert_into(&mut map, "k", 2);
        assert_eq!(map["k"].to_set(), BTreeSet::from([1, 2, 3]));
        assert_eq!((&map["k"]).into_iter().copied().collect::<Vec<_>>(), [1, 2, 3], "in order");
        remove_from(&mut map, &"k", &1);
        remove_from(&mut map, &"k", &9);
        remove_from(&mut map, &"k", &3);
        assert!(matches!(map["k"], Members::One(2)), "back to one slot");
        remove_from(&mut map, &"k", &5);
        assert!(map.contains_key("k"), "removing a non-member keeps the entry");
        remove_from(&mut map, &"k", &2);
        assert!(map.is_empty(), "the last member takes the entry with it");
    }
}
