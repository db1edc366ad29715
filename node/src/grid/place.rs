//! Placing and removing slices, adding, draining and removing blocks.

use std::collections::BTreeSet;

use crate::types::{ServerId, SliceId, SliceSpec};

use super::{
    tag_list, tag_set, Block, BlockState, Change, DrainReport, Event, Grid, GridError, Move,
    PlaceOutcome, Slice,
};

impl Grid {
    /// Place a slice: best fit among active blocks carrying its tags, preferring a block with
    /// no replica of its group. Nothing changes (and the version stays) when the answer is
    /// [`PlaceOutcome::NeedsBlock`].
    pub fn place(&mut self, spec: SliceSpec) -> Result<Change<PlaceOutcome>, GridError> {
        if self.state.slices.contains_key(&spec.id) {
            return Err(GridError::DuplicateSlice(spec.id));
        }
        match self.find_block(&spec, None) {
            Some((block, spread)) => {
                let events = vec![Event::Added {
                    block: block.clone(),
                    slice: spec.id.clone(),
                }];
                self.attach(spec, &block);
                self.state.version += 1;
                Ok(Change {
                    result: PlaceOutcome::Placed { block, spread },
                    events,
                })
            }
            None => {
                let (size, tags) = self.new_block_for(&spec)?;
                Ok(Change {
                    result: PlaceOutcome::NeedsBlock {
                        size,
                        tags: tags.clone(),
                    },
                    events: vec![Event::Create { size, tags }],
                })
            }
        }
    }

    /// The block a new block for this slice would be, or why there can be none.
    fn new_block_for(&self, spec: &SliceSpec) -> Result<(u64, Vec<String>), GridError> {
        let opts = &self.state.options;
        let existing = self
            .state
            .blocks
            .values()
            .any(|b| b.size >= spec.memory && b.has_tags(&spec.tags));
        let creatable = spec.memory <= opts.max_block_size;
        let at_max = self.state.blocks.len() >= opts.max;
        if !existing && (!creatable || at_max) {
            return Err(GridError::NeverFits {
                slice: spec.id.clone(),
                memory: spec.memory,
                tags: tag_list(&spec.tags),
                max_block_size: opts.max_block_size,
                max: opts.max,
            });
        }
        if at_max {
            return Err(GridError::Full {
                slice: spec.id.clone(),
                memory: spec.memory,
                tags: tag_list(&spec.tags),
                max: opts.max,
            });
        }
        if !creatable {
            return Err(GridError::NoRoom {
                slice: spec.id.clone(),
                memory: spec.memory,
                tags: tag_list(&spec.tags),
                max_block_size: opts.max_block_size,
            });
        }
        Ok((spec.memory.max(opts.block_size), spec.tags.clone()))
    }

    /// Best fit for a slice, `exclude` aside. `(block, spread)`.
    pub(super) fn find_block(
        &self,
        spec: &SliceSpec,
        exclude: Option<&ServerId>,
    ) -> Option<(ServerId, bool)> {
        let group = if spec.group.is_empty() {
            None
        } else {
            self.groups.get(&spec.group)
        };
        let found = self.index.best_fit(spec.memory, &spec.tags, |b| {
            exclude == Some(b) || group.is_some_and(|g| g.contains_key(b))
        });
        match (found, exclude) {
            // The excluded block is only ever the fallback when nothing else fits.
            (Some((b, false)), Some(x)) if &b == x => None,
            (f, _) => f,
        }
    }

    /// Remove a slice from its block. With autosize on, a block left empty above `min` is
    /// handed back (`destroy`); a draining block left empty always is.
    pub fn remove_slice(&mut self, id: &SliceId) -> Result<Change<SliceSpec>, GridError> {
        let block = match self.state.slices.get(id) {
            Some(s) => s.block.clone(),
            None => return Err(GridError::UnknownSlice(id.clone())),
        };
        let spec = self.detach(id);
        let mut events = vec![Event::Removed {
            block: block.clone(),
            slice: id.clone(),
        }];
        self.maybe_destroy(&block, &mut events);
        self.state.version += 1;
        Ok(Change {
            result: spec,
            events,
        })
    }

    /// Emit `destroy` for an empty block that is draining, or that autosize may give back.
    pub(super) fn maybe_destroy(&mut self, id: &ServerId, events: &mut Vec<Event>) {
        let Some(block) = self.state.blocks.get(id) else {
            return;
        };
        if !block.slices.is_empty() {
            return;
        }
        let give_back = match block.state {
            BlockState::Draining => true,
            BlockState::Active => {
                // The index holds exactly the active blocks.
                self.state.options.autosize && self.index.len() > self.state.options.min
            }
        };
        if give_back {
            self.set_state(id, BlockState::Draining);
            events.push(Event::Destroy { block: id.clone() });
        }
    }

    /// Add a block (a server) of `size` bytes carrying `tags`.
    pub fn add_block(
        &mut self,
        id: ServerId,
        size: u64,
        tags: &[String],
    ) -> Result<Change<()>, GridError> {
        if self.state.blocks.contains_key(&id) {
            return Err(GridError::DuplicateBlock(id));
        }
        if size == 0 {
            return Err(GridError::ZeroSizeBlock(id));
        }
        if self.state.blocks.len() >= self.state.options.max {
            return Err(GridError::TooManyBlocks {
                block: id,
                max: self.state.options.max,
            });
        }
        let block = Block {
            id: id.clone(),
            size,
            used: 0,
            tags: tag_set(tags),
            state: BlockState::Active,
            slices: BTreeSet::new(),
        };
        self.index.insert(&block.tags, block.free(), &id);
        self.state.blocks.insert(id, block);
        self.state.version += 1;
        Ok(Change {
            result: (),
            events: Vec::new(),
        })
    }

    /// Drain a block: nothing new lands on it, and its unpinned slices move to other blocks
    /// where they fit (largest first; a replica joins another of its group only when no other
    /// block has room). Slices with no room stay and are reported; draining again retries
    /// them. An empty drained block is handed back (`destroy`).
    pub fn drain_block(&mut self, id: &ServerId) -> Result<Change<DrainReport>, GridError> {
        let Some(block) = self.state.blocks.get(id) else {
            return Err(GridError::UnknownBlock(id.clone()));
        };
        let before = self.state.version;
        let was_active = block.state == BlockState::Active;
        let mut report = DrainReport::default();
        let mut todo: Vec<(u64, SliceId)> = Vec::new();
        for s in &block.slices {
            let slice = &self.state.slices[s];
            if slice.spec.pinned {
                report.pinned.push(s.clone());
            } else {
                todo.push((slice.spec.memory, s.clone()));
            }
        }
        todo.sort_by(|a, b| b.cmp(a));
        if was_active {
            self.set_state(id, BlockState::Draining);
        }
        let mut events = Vec::new();
        for (_, s) in todo {
            let spec = &self.state.slices[&s].spec;
            match self.find_block(spec, Some(id)) {
                Some((to, _)) => {
                    self.move_slice(&s, &to);
                    events.push(Event::Added {
                        block: to.clone(),
                        slice: s.clone(),
                    });
                    events.push(Event::Removed {
                        block: id.clone(),
                        slice: s.clone(),
                    });
                    report.moved.push(Move {
                        slice: s,
                        from: id.clone(),
                        to,
                    });
                }
                None => report.stuck.push(s),
            }
        }
        // A drained block left empty is (again) handed back; that alone changes nothing.
        self.maybe_destroy(id, &mut events);
        if was_active || !report.moved.is_empty() {
            self.state.version = before + 1;
        }
        Ok(Change {
            result: report,
            events,
        })
    }

    /// Make a draining block take slices again.
    pub fn activate_block(&mut self, id: &ServerId) -> Result<Change<()>, GridError> {
        let Some(block) = self.state.blocks.get(id) else {
            return Err(GridError::UnknownBlock(id.clone()));
        };
        if block.state == BlockState::Draining {
            self.set_state(id, BlockState::Active);
            self.state.version += 1;
        }
        Ok(Change {
            result: (),
            events: Vec::new(),
        })
    }

    /// Remove a block (its server is gone or destroyed). Slices still on it are removed too
    /// (`removed` events) and returned, to be placed again.
    pub fn remove_block(&mut self, id: &ServerId) -> Result<Change<Vec<SliceSpec>>, GridError> {
        let Some(block) = self.state.blocks.get(id) else {
            return Err(GridError::UnknownBlock(id.clone()));
        };
        let ids: Vec<SliceId> = block.slices.iter().cloned().collect();
        let mut orphans = Vec::with_capacity(ids.len());
        let mut events = Vec::with_capacity(ids.len());
        for s in ids {
            orphans.push(self.detach(&s));
            events.push(Event::Removed {
                block: id.clone(),
                slice: s,
            });
        }
        self.set_state(id, BlockState::Draining);
        self.state.blocks.remove(id);
        self.state.version += 1;
        Ok(Change {
            result: orphans,
            events,
        })
    }

    /// Put a slice on a block that has room (no version change, no events).
    pub(super) fn attach(&mut self, spec: SliceSpec, to: &ServerId) {
        let block = self
            .state
            .blocks
            .get_mut(to)
            .expect("attach to a known block");
        debug_assert!(block.free() >= spec.memory);
        if block.state == BlockState::Active {
            self.index.remove(&block.tags, block.free(), to);
        }
        block.used += spec.memory;
        block.slices.insert(spec.id.clone());
        if block.state == BlockState::Active {
            self.index.insert(&block.tags, block.free(), to);
        }
        *self
            .groups
            .entry(spec.group.clone())
            .or_default()
            .entry(to.clone())
            .or_default() += 1;
        self.state.slices.insert(
            spec.id.clone(),
            Slice {
                spec,
                block: to.clone(),
            },
        );
    }

    /// Take a slice off its block (no version change, no events).
    pub(super) fn detach(&mut self, id: &SliceId) -> SliceSpec {
        let slice = self.state.slices.remove(id).expect("detach a known slice");
        let block = self
            .state
            .blocks
            .get_mut(&slice.block)
            .expect("a slice's block exists");
        if block.state == BlockState::Active {
            self.index.remove(&block.tags, block.free(), &slice.block);
        }
        block.used -= slice.spec.memory;
        block.slices.remove(id);
        if block.state == BlockState::Active {
            self.index.insert(&block.tags, block.free(), &slice.block);
        }
        if let Some(g) = self.groups.get_mut(&slice.spec.group) {
            if let Some(n) = g.get_mut(&slice.block) {
                *n -= 1;
                if *n == 0 {
                    g.remove(&slice.block);
                }
            }
            if g.is_empty() {
                self.groups.remove(&slice.spec.group);
            }
        }
        slice.spec
    }

    /// Move a slice to another block that has room (no version change, no events).
    pub(super) fn move_slice(&mut self, id: &SliceId, to: &ServerId) {
        let spec = self.detach(id);
        self.attach(spec, to);
    }

    /// Set a block's state, keeping the index in step (no version change).
    pub(super) fn set_state(&mut self, id: &ServerId, state: BlockState) {
        let block = self.state.blocks.get_mut(id).expect("a known block");
        if block.state == state {
            return;
        }
        match state {
            BlockState::Active => self.index.insert(&block.tags, block.free(), id),
            BlockState::Draining => self.index.remove(&block.tags, block.free(), id),
        }
        block.state = state;
    }
}
