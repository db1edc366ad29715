//! Autosize's second phase: empty blocks whose slices do not fit the others' free room as it
//! lies, by swapping.
//!
//! After churn, best fit leaves most blocks with a little dead room: less than any slice, so
//! no slice can be moved into it and phase one stops, yet together it is worth several blocks.
//! Phase two takes the least used blocks (the pool: as many as the others' free room could
//! hold in all) and queues their slices. Then, in passes:
//!
//! 1. each queued slice, largest first, goes by best fit into free room where it fits;
//! 2. for each other block, most free room first, the best swap: one of its unpinned slices
//!    `x` out to the queue, one queued slice `y` in, with `x < y <= x + free`, so the block
//!    absorbs `y - x` of its dead room and the queue shrinks by as much.
//!
//! What is left in the queue goes back into pool blocks (a slice's own block first). Pool
//! blocks left empty are handed back; if none is, every slice goes back where it was. A
//! slice counts as moved when it ends on another block than it started on; the slices touched
//! never exceed the round's budget, so neither do the moves. Spread holds throughout: a slice
//! never joins a block holding another replica of its group.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{ServerId, SliceId, SliceSpec};

use super::autosize::Round;
use super::{BlockState, Grid};

/// Passes of fills and swaps in one repack.
const PASSES: usize = 6;
/// Queued slices tried per candidate `x` of a swap.
const TRIES: usize = 8;
/// Blocks with at most this many movable slices also try swapping out pairs.
const PAIR_LIMIT: usize = 12;

impl Grid {
    pub(super) fn repack(&mut self, round: &mut Round) {
        let min = self.state.options.min;
        // The pool: least used first, while the rest's free room could still take them all.
        let mut free_others: u64 = self
            .state
            .blocks
            .values()
            .filter(|b| b.state == BlockState::Active)
            .map(|b| b.free())
            .sum();
        let mut pool: Vec<ServerId> = Vec::new();
        let mut content = 0u64;
        let mut items = 0usize;
        for (used, id) in self.candidates() {
            let block = &self.state.blocks[&id];
            let free_after = free_others - block.free();
            if round.active < min + pool.len() + 1
                || content + used > free_after
                || items + block.slices.len() > round.budget / 2
            {
                break;
            }
            free_others = free_after;
            content += used;
            items += block.slices.len();
            pool.push(id);
        }
        if pool.is_empty() {
            return;
        }
        let mut homes: BTreeMap<SliceId, ServerId> = BTreeMap::new();
        let mut queue: BTreeSet<(u64, SliceId)> = BTreeSet::new();
        let mut specs: BTreeMap<SliceId, SliceSpec> = BTreeMap::new();
        for id in &pool {
            self.set_state(id, BlockState::Draining);
            let slices: Vec<SliceId> = self.state.blocks[id].slices.iter().cloned().collect();
            for s in slices {
                let spec = self.detach(&s);
                homes.insert(s.clone(), id.clone());
                queue.insert((spec.memory, s.clone()));
                specs.insert(s, spec);
            }
        }
        for _ in 0..PASSES {
            let mut progressed = self.fill(&mut queue, &mut specs);
            if queue.is_empty() {
                break;
            }
            let mut targets: Vec<(u64, ServerId)> = self
                .state
                .blocks
                .values()
                .filter(|b| b.state == BlockState::Active && b.free() > 0)
                .map(|b| (b.free(), b.id.clone()))
                .collect();
            targets.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            for (_, b) in targets {
                if queue.is_empty() || homes.len() + 2 > round.budget {
                    break;
                }
                if let Some((xs, ys)) = self.best_swap(&b, &queue, &specs) {
                    for x in xs {
                        let xspec = self.detach(&x);
                        homes.entry(x.clone()).or_insert_with(|| b.clone());
                        queue.insert((xspec.memory, x.clone()));
                        specs.insert(x, xspec);
                    }
                    for y in ys {
                        let yspec = specs.remove(&y).expect("a queued slice has its spec");
                        queue.remove(&(yspec.memory, y));
                        self.attach(yspec, &b);
                    }
                    progressed = true;
                }
            }
            if !progressed {
                // Stuck with slices no free room holds: gather room on one block.
                let need = queue.first().map(|q| q.0).unwrap_or(0);
                if !self.gather(need, &mut homes, round.budget) {
                    break;
                }
            }
        }
        // The rest back into pool blocks, largest first.
        let mut failed = false;
        while let Some((_, s)) = queue.pop_last() {
            let spec = specs.remove(&s).expect("a queued slice has its spec");
            let home = &homes[&s];
            let to = if pool.contains(home) && self.fits_open(home, &spec) {
                Some(home.clone())
            } else {
                match self.find_block(&spec, None) {
                    Some((to, true)) => Some(to),
                    _ => self.open_pool_block(&spec, home, &pool),
                }
            };
            match to {
                Some(to) => self.attach(spec, &to),
                None => {
                    failed = true;
                    specs.insert(s.clone(), spec);
                    break;
                }
            }
        }
        let emptied: Vec<ServerId> = pool
            .iter()
            .filter(|id| self.state.blocks[*id].state == BlockState::Draining)
            .cloned()
            .collect();
        if failed || emptied.is_empty() {
            self.undo_repack(&homes, specs, &pool);
            return;
        }
        for (slice, from) in homes {
            let to = self.state.slices[&slice].block.clone();
            if to != from {
                round.record(slice, from, to);
            }
        }
        for id in emptied {
            round.destroyed.push(id);
            round.active -= 1;
        }
    }

    /// Queued slices, largest first, into free room by best fit (spread only). Whether any
    /// moved.
    fn fill(
        &mut self,
        queue: &mut BTreeSet<(u64, SliceId)>,
        specs: &mut BTreeMap<SliceId, SliceSpec>,
    ) -> bool {
        let mut moved = false;
        let order: Vec<(u64, SliceId)> = queue.iter().rev().cloned().collect();
        for key in order {
            if let Some((to, true)) = self.find_block(&specs[&key.1], None) {
                queue.remove(&key);
                let spec = specs.remove(&key.1).expect("a queued slice has its spec");
                self.attach(spec, &to);
                moved = true;
            }
        }
        moved
    }

    /// The swap that fills most of block `b`'s free room: one or two of its unpinned slices
    /// out, one or two queued slices in, growing the block's use by at most its free room.
    fn best_swap(
        &self,
        b: &ServerId,
        queue: &BTreeSet<(u64, SliceId)>,
        specs: &BTreeMap<SliceId, SliceSpec>,
    ) -> Option<(Vec<SliceId>, Vec<SliceId>)> {
        let block = &self.state.blocks[b];
        let free = block.free();
        let movable: Vec<&SliceSpec> = block
            .slices
            .iter()
            .map(|s| &self.state.slices[s].spec)
            .filter(|s| !s.pinned)
            .collect();
        let mut outs: Vec<Vec<&SliceSpec>> = movable.iter().map(|x| vec![*x]).collect();
        if movable.len() <= PAIR_LIMIT {
            for (i, x1) in movable.iter().enumerate() {
                for x2 in &movable[i + 1..] {
                    outs.push(vec![*x1, *x2]);
                }
            }
        }
        let mut best: Option<(u64, Vec<SliceId>, Vec<SliceId>)> = None;
        for out in outs {
            let sx: u64 = out.iter().map(|x| x.memory).sum();
            let ok = |y: &SliceSpec| block.has_tags(&y.tags) && self.may_join(y, b, &out);
            // One in: the largest y in (sx, sx + free].
            let single = queue
                .range(..below(sx + free))
                .rev()
                .take_while(|(m, _)| *m > sx)
                .take(TRIES)
                .find(|(_, y)| ok(&specs[y]));
            if let Some((m, y)) = single {
                let gain = m - sx;
                if best.as_ref().is_none_or(|(g, _, _)| gain > *g) {
                    best = Some((
                        gain,
                        out.iter().map(|x| x.id.clone()).collect(),
                        vec![y.clone()],
                    ));
                }
            }
            if best.as_ref().is_some_and(|(g, _, _)| *g == free) {
                break;
            }
            // Two in: y1 + y2 in (sx, sx + free].
            for (m1, y1) in queue.range(..(sx, SliceId(String::new()))) {
                let s1 = &specs[y1];
                if !ok(s1) {
                    continue;
                }
                let lo = sx - m1;
                let hi = sx + free - m1;
                let second = queue
                    .range(..below(hi))
                    .rev()
                    .take_while(|(m, _)| *m > lo)
                    .take(TRIES)
                    .filter(|(m2, y2)| (*m2, y2) > (*m1, y1))
                    .find(|(_, y2)| {
                        let s2 = &specs[y2];
                        ok(s2) && (s2.group.is_empty() || s2.group != s1.group)
                    });
                if let Some((m2, y2)) = second {
                    let gain = m1 + m2 - sx;
                    if best.as_ref().is_none_or(|(g, _, _)| gain > *g) {
                        best = Some((
                            gain,
                            out.iter().map(|x| x.id.clone()).collect(),
                            vec![y1.clone(), y2.clone()],
                        ));
                    }
                }
            }
        }
        best.map(|(_, x, y)| (x, y))
    }

    /// Grow the free room of the block with the most until it reaches `need`, by swaps with
    /// the others: its slice `x` for their smaller `z`, with `x - z` at most their free room,
    /// so free room flows to it. Whether it got there.
    fn gather(
        &mut self,
        need: u64,
        homes: &mut BTreeMap<SliceId, ServerId>,
        budget: usize,
    ) -> bool {
        let target = self
            .state
            .blocks
            .values()
            .filter(|b| b.state == BlockState::Active)
            .max_by(|a, b| a.free().cmp(&b.free()).then_with(|| b.id.cmp(&a.id)))
            .map(|b| b.id.clone());
        let Some(t) = target else {
            return false;
        };
        let donors: Vec<ServerId> = {
            let mut d: Vec<(u64, ServerId)> = self
                .state
                .blocks
                .values()
                .filter(|b| b.state == BlockState::Active && b.free() > 0 && b.id != t)
                .map(|b| (b.free(), b.id.clone()))
                .collect();
            d.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            d.into_iter().map(|(_, id)| id).collect()
        };
        for d in donors {
            if self.state.blocks[&t].free() >= need {
                return true;
            }
            if homes.len() + 2 > budget {
                return false;
            }
            let gfree = self.state.blocks[&d].free();
            let mut best: Option<(u64, SliceId, SliceId)> = None;
            for x in &self.state.blocks[&t].slices {
                let xs = &self.state.slices[x].spec;
                if xs.pinned || !self.state.blocks[&d].has_tags(&xs.tags) {
                    continue;
                }
                for z in &self.state.blocks[&d].slices {
                    let zs = &self.state.slices[z].spec;
                    if zs.pinned || zs.memory >= xs.memory || xs.memory - zs.memory > gfree {
                        continue;
                    }
                    let gain = xs.memory - zs.memory;
                    if best.as_ref().is_some_and(|(g, _, _)| *g >= gain) {
                        continue;
                    }
                    if self.state.blocks[&t].has_tags(&zs.tags)
                        && self.may_join(xs, &d, &[zs])
                        && self.may_join(zs, &t, &[xs])
                        && (xs.group.is_empty() || xs.group != zs.group)
                    {
                        best = Some((gain, x.clone(), z.clone()));
                    }
                }
            }
            if let Some((_, x, z)) = best {
                let xs = self.detach(&x);
                let zs = self.detach(&z);
                homes.entry(x).or_insert_with(|| t.clone());
                homes.entry(z).or_insert_with(|| d.clone());
                self.attach(xs, &d);
                self.attach(zs, &t);
            }
        }
        self.state.blocks[&t].free() >= need
    }

    /// Whether `y` may join block `b` once `out` has left it: no other replica of its group.
    fn may_join(&self, y: &SliceSpec, b: &ServerId, out: &[&SliceSpec]) -> bool {
        if y.group.is_empty() {
            return true;
        }
        let there = self
            .groups
            .get(&y.group)
            .and_then(|g| g.get(b))
            .copied()
            .unwrap_or(0);
        let leaving = out.iter().filter(|x| x.group == y.group).count() as u32;
        there <= leaving
    }

    /// Whether an active block has room for the slice, its tags, and no replica of its group.
    fn fits_open(&self, id: &ServerId, spec: &SliceSpec) -> bool {
        let b = &self.state.blocks[id];
        b.state == BlockState::Active
            && b.free() >= spec.memory
            && b.has_tags(&spec.tags)
            && (spec.group.is_empty()
                || !self
                    .groups
                    .get(&spec.group)
                    .is_some_and(|g| g.contains_key(id)))
    }

    /// A pool block for a slice that fits nowhere else: its own home if that is a pool block
    /// still closed, else the closed pool block of the most room; reopened (active) first.
    fn open_pool_block(
        &mut self,
        spec: &SliceSpec,
        home: &ServerId,
        pool: &[ServerId],
    ) -> Option<ServerId> {
        let closed = |grid: &Grid, id: &ServerId| {
            let b = &grid.state.blocks[id];
            b.state == BlockState::Draining && b.free() >= spec.memory && b.has_tags(&spec.tags)
        };
        let pick = if pool.contains(home) && closed(self, home) {
            Some(home.clone())
        } else {
            pool.iter()
                .filter(|id| closed(self, id))
                .max_by_key(|id| (self.state.blocks[*id].free(), std::cmp::Reverse(*id)))
                .cloned()
        };
        if let Some(id) = &pick {
            self.set_state(id, BlockState::Active);
        }
        pick
    }

    /// Put every touched slice back where it was and reopen the pool.
    fn undo_repack(
        &mut self,
        homes: &BTreeMap<SliceId, ServerId>,
        mut loose: BTreeMap<SliceId, SliceSpec>,
        pool: &[ServerId],
    ) {
        for s in homes.keys() {
            if self.state.slices.contains_key(s) {
                let spec = self.detach(s);
                loose.insert(s.clone(), spec);
            }
        }
        for (s, home) in homes {
            let spec = loose.remove(s).expect("every touched slice is loose");
            self.attach(spec, home);
        }
        for id in pool {
            self.set_state(id, BlockState::Active);
        }
    }
}

/// The queue key just above every slice of `memory` bytes or less.
fn below(memory: u64) -> (u64, SliceId) {
    (memory.saturating_add(1), SliceId(String::new()))
}
