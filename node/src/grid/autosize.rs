//! `autosize`: consolidation rounds that empty whole blocks, and the offline First Fit
//! Decreasing count it is measured against.
//!
//! A round takes the active blocks that hold no pinned slice, least used first, and tries to
//! empty each in turn: its slices, largest first, go to the best fit among the *other* active
//! blocks that hold no replica of the slice's group. If one slice finds no such block the
//! block's moves are undone and the next block is tried, so every move made belongs to a block
//! that ends empty; an emptied block is draining and handed back (`destroy`). A round stops at
//! `min` active blocks and never makes more than its budget of moves (a block whose slices
//! would not fit in the remaining budget is skipped). Moves never overfill a block (best fit
//! only offers blocks with the room) and never put two replicas of a group together.

use serde::{Deserialize, Serialize};

use crate::types::{ServerId, SliceId};

use super::{BlockState, Change, Event, Grid};

/// One slice moved from one block to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The slice.
    pub slice: SliceId,
    /// The block it left.
    pub from: ServerId,
    /// The block it went to.
    pub to: ServerId,
}

impl Grid {
    /// One consolidation round of at most `max_moves` moves (nothing when the `autosize` option
    /// is off). The events list, for each move, `added` on the new block before `removed` on
    /// the old (start the new container first), then `destroy` for each emptied block.
    pub fn autosize(&mut self, max_moves: usize) -> Change<Vec<Move>> {
        let mut moves: Vec<Move> = Vec::new();
        let mut events = Vec::new();
        if !self.state.options.autosize {
            return Change {
                result: moves,
                events,
            };
        }
        let min = self.state.options.min;
        let mut candidates: Vec<(u64, ServerId)> = self
            .state
            .blocks
            .values()
            .filter(|b| b.state == BlockState::Active)
            .filter(|b| b.slices.iter().all(|s| !self.state.slices[s].spec.pinned))
            .map(|b| (b.used, b.id.clone()))
            .collect();
        candidates.sort();
        let mut active = self.active_blocks();
        for (_, id) in candidates {
            if active <= min {
                break;
            }
            let block = &self.state.blocks[&id];
            if block.state != BlockState::Active {
                continue;
            }
            if block.slices.len() > max_moves - moves.len() {
                continue;
            }
            let mut todo: Vec<(u64, SliceId)> = block
                .slices
                .iter()
                .map(|s| (self.state.slices[s].spec.memory, s.clone()))
                .collect();
            todo.sort_by(|a, b| b.cmp(a));
            self.set_state(&id, BlockState::Draining);
            let mut done: Vec<(SliceId, ServerId)> = Vec::with_capacity(todo.len());
            let mut emptied = true;
            for (_, s) in todo {
                match self.find_block(&self.state.slices[&s].spec, None) {
                    Some((to, true)) => {
                        self.move_slice(&s, &to);
                        done.push((s, to));
                    }
                    _ => {
                        emptied = false;
                        break;
                    }
                }
            }
            if !emptied {
                for (s, _) in done.into_iter().rev() {
                    self.move_slice(&s, &id);
                }
                self.set_state(&id, BlockState::Active);
                continue;
            }
            for (slice, to) in done {
                events.push(Event::Added {
                    block: to.clone(),
                    slice: slice.clone(),
                });
                events.push(Event::Removed {
                    block: id.clone(),
                    slice: slice.clone(),
                });
                moves.push(Move {
                    slice,
                    from: id.clone(),
                    to,
                });
            }
            events.push(Event::Destroy { block: id });
            active -= 1;
        }
        if !events.is_empty() {
            self.state.version += 1;
        }
        Change {
            result: moves,
            events,
        }
    }
}

/// How many blocks of `block_size` offline First Fit Decreasing needs for these sizes (each
/// size at most `block_size`): the yardstick autosize is measured against.
pub fn first_fit_decreasing(sizes: &[u64], block_size: u64) -> usize {
    let mut sorted = sizes.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut free: Vec<u64> = Vec::new();
    for size in sorted {
        match free.iter_mut().find(|f| **f >= size) {
            Some(f) => *f -= size,
            None => free.push(block_size - size.min(block_size)),
        }
    }
    free.len()
}
