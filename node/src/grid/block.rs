//! Blocks and the free-space index that makes best fit O(log blocks).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::types::{ServerId, SliceId};

/// Whether a block takes new slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockState {
    /// Takes new slices.
    Active,
    /// Takes nothing new; its unpinned slices are moved off when there is room.
    Draining,
}

/// A block of the grid: one server's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The server.
    pub id: ServerId,
    /// Memory in bytes.
    pub size: u64,
    /// Memory its slices reserve, in bytes.
    pub used: u64,
    /// The tags it carries.
    pub tags: BTreeSet<String>,
    /// Active or draining.
    pub state: BlockState,
    /// The slices on it.
    pub slices: BTreeSet<SliceId>,
}

impl Block {
    /// Memory not reserved, in bytes.
    pub fn free(&self) -> u64 {
        self.size - self.used
    }

    /// Whether it carries every one of these tags.
    pub fn has_tags(&self, tags: &[String]) -> bool {
        tags.iter().all(|t| self.tags.contains(t))
    }
}

/// Active blocks ordered by `(free, id)`, one ordered set per distinct tag set. A slice needing
/// tags `T` looks in every class whose tag set contains `T` (tag sets are few), and within a
/// class the first entry at or above `(memory, "")` is its best fit.
#[derive(Debug, Clone, Default)]
pub(crate) struct FreeIndex {
    classes: BTreeMap<BTreeSet<String>, BTreeSet<(u64, ServerId)>>,
    len: usize,
}

impl FreeIndex {
    pub(crate) fn insert(&mut self, tags: &BTreeSet<String>, free: u64, id: &ServerId) {
        let class = match self.classes.get_mut(tags) {
            Some(c) => c,
            None => self.classes.entry(tags.clone()).or_default(),
        };
        if class.insert((free, id.clone())) {
            self.len += 1;
        }
    }

    pub(crate) fn remove(&mut self, tags: &BTreeSet<String>, free: u64, id: &ServerId) {
        if let Some(class) = self.classes.get_mut(tags) {
            // A tuple key with a borrowed id would need a wrapper type; the clone is one small
            // allocation per change.
            if class.remove(&(free, id.clone())) {
                self.len -= 1;
                if class.is_empty() {
                    self.classes.remove(tags);
                }
            }
        }
    }

    pub(crate) fn contains(&self, tags: &BTreeSet<String>, free: u64, id: &ServerId) -> bool {
        self.classes
            .get(tags)
            .is_some_and(|c| c.contains(&(free, id.clone())))
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The best fit for `memory` among blocks carrying `tags`: the `(free, id)`-least block
    /// with at least `memory` free. `avoid` says a block holds a replica of the group; the
    /// first block it does not reject wins, and the first block of all is the fallback.
    /// Returns `(block, spread)`.
    pub(crate) fn best_fit(
        &self,
        memory: u64,
        tags: &[String],
        avoid: impl Fn(&ServerId) -> bool,
    ) -> Option<(ServerId, bool)> {
        let mut spread: Option<&(u64, ServerId)> = None;
        let mut packed: Option<&(u64, ServerId)> = None;
        let floor = (memory, ServerId(String::new()));
        for (class_tags, class) in &self.classes {
            if !tags.iter().all(|t| class_tags.contains(t)) {
                continue;
            }
            let mut first = true;
            for entry in class.range((Bound::Included(&floor), Bound::Unbounded)) {
                if first {
                    first = false;
                    if packed.is_none_or(|p| entry < p) {
                        packed = Some(entry);
                    }
                }
                if spread.is_some_and(|s| entry >= s) {
                    break;
                }
                if !avoid(&entry.1) {
                    spread = Some(entry);
                    break;
                }
            }
        }
        match (spread, packed) {
            (Some(s), _) => Some((s.1.clone(), true)),
            (None, Some(p)) => Some((p.1.clone(), false)),
            (None, None) => None,
        }
    }
}
