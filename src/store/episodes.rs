//! Replay's memory of the sled index: the episode ids of each request looked up so far.
//!
//! sled has one page cache for all trees. A replay that cycles through a large cassette
//! reads a different interaction on every request, and those pages push the index's
//! out of the cache, so each lookup paged an index node back in and decoded it: 15% of
//! replay's CPU at 100,000 interactions, three times the cost of the lookup itself at
//! 1,000. The ids of a request are a few bytes, so once read they are kept here.
//!
//! Requests are told apart by the cursors' 128-bit key (see `CursorKey`): two requests
//! sharing one is as unlikely as a collision of a 128-bit cryptographic hash.
//!
//! The sled index stays the truth. Every write to a cassette's index forgets the
//! cassette here, after the write; a lookup that read sled while a write was under way
//! does not keep what it read (see [`EpisodeCache::put`]).

use std::collections::HashMap;
use std::sync::Mutex;

use super::CursorKey;

/// Requests remembered at most. A table holds 7/8 of its slots (24 bytes each) before it
/// doubles, so this many fit a table of 2^18 slots: ~6.5 MiB when one cassette holds
/// them all. Past it, lookups of requests not yet remembered read sled's index as
/// before.
pub(super) const LIMIT: usize = (1 << 18) / 8 * 7;

/// An interaction id as sled keys it (big-endian).
pub(super) type Id = [u8; 8];

pub(super) struct EpisodeCache {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Moves on every forget, so a read of sled that overlapped a write is not kept.
    generation: u64,
    entries: usize,
    per_cassette: HashMap<String, Cassette>,
}

/// One cassette's requests. Most have a single episode, kept as its id right in the
/// table; the others point into `several`.
#[derive(Default)]
struct Cassette {
    ids: HashMap<CursorKey, u64>,
    several: Vec<Box<[Id]>>,
}

/// Marks a table value as an index into [`Cassette::several`]. sled's ids count up
/// from 0 and never come near it; an id that did would go through `several` too.
const SEVERAL: u64 = 1 << 63;

impl Cassette {
    fn get(&self, key: &CursorKey) -> Option<Vec<Id>> {
        let value = *self.ids.get(key)?;
        if value & SEVERAL == 0 {
            return Some(vec![value.to_be_bytes()]);
        }
        let at = usize::try_from(value & !SEVERAL).ok()?;
        self.several.get(at).map(|ids| ids.to_vec())
    }

    /// False when `key` was there already (left as it was).
    fn insert(&mut self, key: CursorKey, ids: &[Id]) -> bool {
        if ids.is_empty() || self.ids.contains_key(&key) {
            return false;
        }
        let value = match ids {
            [id] if u64::from_be_bytes(*id) & SEVERAL == 0 => u64::from_be_bytes(*id),
            _ => {
                self.several.push(ids.into());
                SEVERAL | (self.several.len() - 1) as u64
            }
        };
        self.ids.insert(key, value);
        true
    }
}

impl EpisodeCache {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remembered ids of a request, or the generation to hand to [`Self::put`]
    /// after reading them from sled.
    pub(super) fn get(&self, cassette: &str, key: CursorKey) -> Result<Vec<Id>, u64> {
        let state = self.state();
        match state.per_cassette.get(cassette).and_then(|c| c.get(&key)) {
            Some(ids) => Ok(ids),
            None => Err(state.generation),
        }
    }

    /// Remembers ids read from sled, unless the cassette was written since `generation`
    /// was handed out (the read may predate the write) or the cache is full. A request
    /// without recordings is not remembered: that is a miss, already the slow path.
    pub(super) fn put(&self, generation: u64, cassette: &str, key: CursorKey, ids: &[Id]) {
        let mut state = self.state();
        if ids.is_empty() || state.generation != generation {
            return;
        }
        if state.entries >= LIMIT {
            return;
        }
        if !state.per_cassette.contains_key(cassette) {
            state
                .per_cassette
                .insert(cassette.to_owned(), Cassette::default());
        }
        let added = state
            .per_cassette
            .get_mut(cassette)
            .is_some_and(|c| c.insert(key, ids));
        if added {
            state.entries += 1;
        }
    }

    /// The generation to hand to [`Self::put_all`] before reading sled's index.
    pub(super) fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Remembers many requests' ids under one lock, as [`Self::put`] does each: the
    /// count of requests newly remembered and whether there is room for more. `None`
    /// when the cassette was written since `generation` (nothing is kept then).
    pub(super) fn put_all(
        &self,
        generation: u64,
        cassette: &str,
        entries: &[(CursorKey, Vec<Id>)],
    ) -> Option<(usize, bool)> {
        let mut state = self.state();
        if state.generation != generation {
            return None;
        }
        if !state.per_cassette.contains_key(cassette) {
            state
                .per_cassette
                .insert(cassette.to_owned(), Cassette::default());
        }
        let room = LIMIT.saturating_sub(state.entries);
        let per_cassette = state.per_cassette.get_mut(cassette)?;
        let mut added = 0;
        for (key, ids) in entries {
            if added == room {
                break;
            }
            if per_cassette.insert(*key, ids) {
                added += 1;
            }
        }
        state.entries += added;
        Some((added, state.entries < LIMIT))
    }

    /// Drops what is remembered of `cassette`. Call it after each write to its index.
    pub(super) fn forget(&self, cassette: &str) {
        let mut state = self.state();
        state.generation = state.generation.wrapping_add(1);
        if let Some(removed) = state.per_cassette.remove(cassette) {
            state.entries -= removed.ids.len();
        }
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.state().entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_the_cassette_is_written() {
        let cache = EpisodeCache::new();
        let generation = cache.get("c", [1, 2]).expect_err("nothing remembered yet");
        cache.put(generation, "c", [1, 2], &[[0, 0, 0, 0, 0, 0, 0, 7]]);
        cache.put(generation, "c", [3, 4], &[[1; 8], [2; 8]]);
        cache.put(generation, "d", [1, 2], &[[9; 8]]);
        // An id with the top bit set cannot sit in the table as itself.
        cache.put(generation, "d", [5, 5], &[[0xff; 8]]);
        assert_eq!(cache.get("d", [5, 5]), Ok(vec![[0xff; 8]]));
        cache.forget("d");
        let generation = cache.get("d", [1, 2]).expect_err("forgotten");
        cache.put(generation, "d", [1, 2], &[[9; 8]]);
        assert_eq!(cache.get("c", [1, 2]), Ok(vec![[0, 0, 0, 0, 0, 0, 0, 7]]));
        assert_eq!(cache.get("c", [3, 4]), Ok(vec![[1; 8], [2; 8]]));
        assert_eq!(cache.entries(), 3);
        cache.forget("c");
        assert!(cache.get("c", [1, 2]).is_err());
        assert_eq!(
            cache.get("d", [1, 2]),
            Ok(vec![[9; 8]]),
            "other cassettes stay"
        );
        assert_eq!(cache.entries(), 1);
    }

    #[test]
    fn a_read_that_overlapped_a_write_is_not_kept() {
        let cache = EpisodeCache::new();
        let before_write = cache.get("c", [1, 2]).expect_err("empty");
        cache.forget("c");
        cache.put(before_write, "c", [1, 2], &[[1; 8]]);
        assert!(cache.get("c", [1, 2]).is_err());
        let after_write = cache.get("c", [1, 2]).expect_err("still empty");
        cache.put(after_write, "c", [1, 2], &[[1; 8]]);
        assert_eq!(cache.get("c", [1, 2]), Ok(vec![[1; 8]]));
    }

    #[test]
    fn many_at_once_keep_to_the_generation_and_the_limit() {
        let cache = EpisodeCache::new();
        let generation = cache.generation();
        let entries = vec![([1, 0], vec![[1; 8]]), ([2, 0], vec![[2; 8], [3; 8]])];
        assert_eq!(cache.put_all(generation, "c", &entries), Some((2, true)));
        assert_eq!(
            cache.put_all(generation, "c", &entries),
            Some((0, true)),
            "kept once"
        );
        assert_eq!(cache.get("c", [2, 0]), Ok(vec![[2; 8], [3; 8]]));
        cache.forget("d");
        assert_eq!(
            cache.put_all(generation, "c", &entries),
            None,
            "written since"
        );
        let many: Vec<_> = (0..LIMIT as u64 + 10)
            .map(|n| ([n, 9], vec![[1; 8]]))
            .collect();
        assert_eq!(
            cache.put_all(cache.generation(), "c", &many),
            Some((LIMIT - 2, false)),
            "full"
        );
        assert_eq!(cache.entries(), LIMIT);
    }

    #[test]
    fn misses_are_not_kept_and_the_limit_holds() {
        let cache = EpisodeCache::new();
        let generation = cache.get("c", [0, 0]).expect_err("empty");
        cache.put(generation, "c", [0, 0], &[]);
        assert_eq!(cache.entries(), 0);
        for n in 0..(LIMIT as u64 + 10) {
            cache.put(generation, "c", [n, 0], &[[1; 8]]);
        }
        assert_eq!(cache.entries(), LIMIT);
        assert!(cache.get("c", [LIMIT as u64 + 5, 0]).is_err());
        assert!(cache.get("c", [5, 0]).is_ok());
    }
}
