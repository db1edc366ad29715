//! The grid: the notes' `slicegrid`, the allocation of slices (containers) onto blocks
//! (servers).
//!
//! ```text
//!          -----    -----
//!          |___|    |   |
//! -----    |###|    |___|
//! |___|    |###|    |###|
//! |###|    |###|    |###|
//! -----    -----    -----
//! ```
//!
//! A block is a server: an id, a size (memory in bytes), what its slices use, the tags it
//! carries and a state (active, or draining: nothing new lands on it). A slice is a container's
//! memory reservation ([`SliceSpec`]): an id, a size, the tags its block must carry, a group
//! (the replicas of one node, spread over blocks where room allows) and `pinned` (a service's
//! slice: consolidation and drains never move it).
//!
//! The Raft leader owns the grid, so it is a *deterministic* library: no I/O, no clock, no
//! randomness, no iteration over hash maps; the same operations in the same order give the same
//! grid on every server, and [`Grid`] serializes (serde) so its state can be replicated and
//! snapshotted. Every operation that changes the grid increments [`Grid::version`] once and
//! returns the notes' events as values ([`Event`]: `added`, `removed`, `create`, `destroy`) for
//! the caller to act on; the grid itself never calls out.
//!
//! # Operations
//!
//! - [`Grid::place`]: best fit (the active block with the least free memory that still holds
//!   the slice and carries its tags), preferring blocks that hold no replica of the slice's
//!   group. When nothing fits and the grid is below `max` blocks the answer is
//!   [`PlaceOutcome::NeedsBlock`] with a `create` event (the caller adds a server, then
//!   [`Grid::add_block`] and places again); at `max`, or when no block could ever hold the
//!   slice, a [`GridError`] says so.
//! - [`Grid::remove_slice`], [`Grid::add_block`], [`Grid::drain_block`] (moves the block's
//!   unpinned slices elsewhere), [`Grid::activate_block`], [`Grid::remove_block`] (its slices,
//!   if any, come back to be placed again).
//! - [`Grid::autosize`]: one consolidation round, at most N moves, emptying whole blocks so
//!   they can be destroyed above `min`: first block by block into the others' free room, then,
//!   when that empties nothing, by swaps that gather the little room best fit leaves behind
//!   (`autosize.rs`, `repack.rs`).
//! - [`Grid::dry_run`] (the notes' "virtual grid") and [`Grid::picture`].
//!
//! # Invariants ([`Grid::check`] verifies them; the property tests run it after every step)
//!
//! - No block is over capacity: `used <= size`, and `used` is the sum of its slices' sizes.
//! - Every slice sits on exactly one block, which carries all of the slice's tags.
//! - A `destroy` event is only ever emitted for an empty block, which is then draining: nothing
//!   is placed on it again until [`Grid::activate_block`].
//! - The free-space index holds exactly the active blocks, keyed by `(free, id)` within the
//!   blocks' tag set, so one placement costs O(log blocks) (plus one step per block already
//!   holding a replica of the slice's group, which spread skips).
//!
//! # Left out
//!
//! Only memory is scheduled (no CPU, disk or ports: host ports are chosen by the leader after
//! placement). There is no pending-creation bookkeeping: while the caller creates a server,
//! further placements that do not fit ask for further blocks; the caller deduplicates. Autosize
//! never moves pinned slices and never puts two replicas of one group on a block, so a grid of
//! services or of wide groups may stay loose.

mod autosize;
mod block;
mod picture;
mod place;
mod repack;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::{ServerId, SliceId, SliceSpec};

pub use autosize::{first_fit_decreasing, Move};
pub use block::{Block, BlockState};
pub use picture::{human_bytes, DryPlacement, DryRun, PICTURE_MAX_BLOCKS};

use block::FreeIndex;

/// The options of a grid (the notes' `min`, `max`, `autosize`, plus the sizes of the blocks it
/// asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridOptions {
    /// The fewest blocks the grid keeps: autosize never destroys below it.
    pub min: usize,
    /// The most blocks the grid may hold: at `max`, a slice that does not fit is an error.
    pub max: usize,
    /// Consolidate: [`Grid::autosize`] moves slices to empty whole blocks, and a block left
    /// empty above `min` is handed back (`destroy`).
    pub autosize: bool,
    /// The size of the block the grid asks for (`create`) when a slice does not fit; a larger
    /// slice asks for a block of its own size.
    pub block_size: u64,
    /// The largest block that can be created: a slice larger than this and than every block
    /// can never be placed.
    pub max_block_size: u64,
}

impl Default for GridOptions {
    fn default() -> Self {
        GridOptions {
            min: 1,
            max: 10,
            autosize: false,
            block_size: 8 << 30,
            max_block_size: 8 << 30,
        }
    }
}

/// What the grid tells its owner to do (the notes' events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// A slice was placed on a block: run its container there.
    Added {
        /// The block.
        block: ServerId,
        /// The slice.
        slice: SliceId,
    },
    /// A slice left a block: stop its container there.
    Removed {
        /// The block.
        block: ServerId,
        /// The slice.
        slice: SliceId,
    },
    /// The grid is full: create a block (server) of this size with these tags.
    Create {
        /// Memory in bytes.
        size: u64,
        /// The tags it must carry.
        tags: Vec<String>,
    },
    /// This block is empty and draining: destroy its server, then [`Grid::remove_block`].
    Destroy {
        /// The block.
        block: ServerId,
    },
}

/// What went wrong; the message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GridError {
    /// The slice id is already placed.
    #[error("slice {0} is already on the grid; remove it first or use a new slice id")]
    DuplicateSlice(SliceId),
    /// The slice id is not placed.
    #[error("slice {0} is not on the grid")]
    UnknownSlice(SliceId),
    /// The block id is already in the grid.
    #[error("block {0} is already in the grid")]
    DuplicateBlock(ServerId),
    /// The block id is not in the grid.
    #[error("block {0} is not in the grid")]
    UnknownBlock(ServerId),
    /// A block of zero bytes was offered.
    #[error("block {0} has a size of 0 bytes; a block needs memory")]
    ZeroSizeBlock(ServerId),
    /// Adding the block would exceed `max`.
    #[error("the grid already holds its maximum of {max} blocks; raise max to add block {block}")]
    TooManyBlocks {
        /// The block refused.
        block: ServerId,
        /// The limit.
        max: usize,
    },
    /// Nothing fits and the grid is at `max` blocks.
    #[error(
        "the grid is full: slice {slice} needs {memory} bytes (tags [{tags}]) and no block has \
         that much free; the grid is at its maximum of {max} blocks: raise max, free memory or \
         shrink the slice"
    )]
    Full {
        /// The slice.
        slice: SliceId,
        /// Its size.
        memory: u64,
        /// Its tags, comma-separated.
        tags: String,
        /// The limit.
        max: usize,
    },
    /// No block, even empty, could hold the slice, and none that could may be created.
    #[error(
        "slice {slice} needs {memory} bytes (tags [{tags}]) but no block with those tags is that \
         large, and none can be created (largest creatable block {max_block_size} bytes, at most \
         {max} blocks): shrink the slice or add a larger block"
    )]
    NeverFits {
        /// The slice.
        slice: SliceId,
        /// Its size.
        memory: u64,
        /// Its tags, comma-separated.
        tags: String,
        /// The largest block that may be created.
        max_block_size: u64,
        /// The most blocks.
        max: usize,
    },
    /// Only existing blocks are large enough for the slice, and none has the room now.
    #[error(
        "slice {slice} needs {memory} bytes (tags [{tags}]): only existing blocks are that large \
         (the largest creatable is {max_block_size} bytes) and none has the room free; free \
         memory on them or shrink the slice"
    )]
    NoRoom {
        /// The slice.
        slice: SliceId,
        /// Its size.
        memory: u64,
        /// Its tags, comma-separated.
        tags: String,
        /// The largest block that may be created.
        max_block_size: u64,
    },
    /// A deserialized state breaks an invariant.
    #[error("corrupt grid state: {0}")]
    Corrupt(String),
}

/// The result of an operation, with the events the caller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<T> {
    /// What the operation answers.
    pub result: T,
    /// What the caller must do, in order.
    pub events: Vec<Event>,
}

/// Where a placement went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlaceOutcome {
    /// On this block. `spread` is false when it had to join another replica of its group.
    Placed {
        /// The block.
        block: ServerId,
        /// Whether the block held no other replica of the group.
        spread: bool,
    },
    /// Nothing fits: a new block of `size` with `tags` is needed (the event is `create`); the
    /// grid is unchanged.
    NeedsBlock {
        /// Memory in bytes.
        size: u64,
        /// Tags the block must carry.
        tags: Vec<String>,
    },
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DrainReport {
    /// The slices moved off the block.
    pub moved: Vec<Move>,
    /// Unpinned slices that found no room elsewhere (they stay until there is room).
    pub stuck: Vec<SliceId>,
    /// Pinned slices, which a drain never moves.
    pub pinned: Vec<SliceId>,
}

/// A placed slice: its spec and its block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// What the slice is.
    pub spec: SliceSpec,
    /// Where it sits.
    pub block: ServerId,
}

/// The replicated part of the grid: what serializes. The indexes are rebuilt from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridState {
    /// The options.
    pub options: GridOptions,
    /// Incremented by every change.
    pub version: u64,
    /// The blocks, by id.
    pub blocks: BTreeMap<ServerId, Block>,
    /// The slices, by id.
    pub slices: BTreeMap<SliceId, Slice>,
}

/// The grid: blocks, slices, and the indexes that make placement O(log blocks).
#[derive(Debug, Clone)]
pub struct Grid {
    state: GridState,
    /// Active blocks by `(free, id)`, per tag set.
    index: FreeIndex,
    /// group -> block -> replicas of the group on it. Derived.
    groups: BTreeMap<String, BTreeMap<ServerId, u32>>,
}

impl PartialEq for Grid {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
    }
}

impl Eq for Grid {}

impl Serialize for Grid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.state.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Grid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let state = GridState::deserialize(deserializer)?;
        Grid::from_state(state).map_err(serde::de::Error::custom)
    }
}

impl Grid {
    /// An empty grid.
    pub fn new(options: GridOptions) -> Self {
        Grid {
            state: GridState {
                options,
                version: 0,
                blocks: BTreeMap::new(),
                slices: BTreeMap::new(),
            },
            index: FreeIndex::default(),
            groups: BTreeMap::new(),
        }
    }

    /// A grid from a replicated state, its invariants checked and its indexes rebuilt.
    pub fn from_state(state: GridState) -> Result<Self, GridError> {
        let mut grid = Grid {
            state,
            index: FreeIndex::default(),
            groups: BTreeMap::new(),
        };
        for block in grid.state.blocks.values() {
            if block.used > block.size {
                return Err(GridError::Corrupt(format!(
                    "block {} over capacity: {} > {}",
                    block.id, block.used, block.size
                )));
            }
            if block.state == BlockState::Active {
                grid.index.insert(&block.tags, block.free(), &block.id);
            }
        }
        for slice in grid.state.slices.values() {
            *grid
                .groups
                .entry(slice.spec.group.clone())
                .or_default()
                .entry(slice.block.clone())
                .or_default() += 1;
        }
        grid.check().map_err(GridError::Corrupt)?;
        Ok(grid)
    }

    /// The replicated state.
    pub fn state(&self) -> &GridState {
        &self.state
    }

    /// The options.
    pub fn options(&self) -> &GridOptions {
        &self.state.options
    }

    /// Change the options (a change: the version grows). Nothing moves until the next
    /// operation.
    pub fn set_options(&mut self, options: GridOptions) {
        if self.state.options != options {
            self.state.options = options;
            self.state.version += 1;
        }
    }

    /// The version: incremented by every change.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// The blocks, by id.
    pub fn blocks(&self) -> &BTreeMap<ServerId, Block> {
        &self.state.blocks
    }

    /// A block.
    pub fn block(&self, id: &ServerId) -> Option<&Block> {
        self.state.blocks.get(id)
    }

    /// The placed slices, by id.
    pub fn slices(&self) -> &BTreeMap<SliceId, Slice> {
        &self.state.slices
    }

    /// The block a slice sits on.
    pub fn block_of(&self, slice: &SliceId) -> Option<&ServerId> {
        self.state.slices.get(slice).map(|s| &s.block)
    }

    /// Blocks that hold at least one slice.
    pub fn blocks_in_use(&self) -> usize {
        self.state
            .blocks
            .values()
            .filter(|b| !b.slices.is_empty())
            .count()
    }

    /// Blocks that take new slices.
    pub fn active_blocks(&self) -> usize {
        self.state
            .blocks
            .values()
            .filter(|b| b.state == BlockState::Active)
            .count()
    }

    /// Verify every invariant (see the module docs); the error names the first one broken.
    pub fn check(&self) -> Result<(), String> {
        let st = &self.state;
        let mut active = 0usize;
        for (id, block) in &st.blocks {
            if &block.id != id {
                return Err(format!("block keyed {id} has id {}", block.id));
            }
            if block.size == 0 {
                return Err(format!("block {id} has size 0"));
            }
            let mut used = 0u64;
            for s in &block.slices {
                let slice = st
                    .slices
                    .get(s)
                    .ok_or_else(|| format!("block {id} lists unknown slice {s}"))?;
                if &slice.block != id {
                    return Err(format!(
                        "slice {s} listed on {id} but sits on {}",
                        slice.block
                    ));
                }
                used += slice.spec.memory;
            }
            if used != block.used {
                return Err(format!(
                    "block {id} records used {} but holds {used}",
                    block.used
                ));
            }
            if block.used > block.size {
                return Err(format!(
                    "block {id} over capacity: {} > {}",
                    block.used, block.size
                ));
            }
            let indexed = self.index.contains(&block.tags, block.free(), id);
            match block.state {
                BlockState::Active => {
                    active += 1;
                    if !indexed {
                        return Err(format!("active block {id} missing from the index"));
                    }
                }
                BlockState::Draining if indexed => {
                    return Err(format!("draining block {id} is in the index"));
                }
                BlockState::Draining => {}
            }
        }
        if self.index.len() != active {
            return Err(format!(
                "index holds {} blocks, {active} are active",
                self.index.len()
            ));
        }
        let mut groups: BTreeMap<&str, BTreeMap<&ServerId, u32>> = BTreeMap::new();
        for (id, slice) in &st.slices {
            if &slice.spec.id != id {
                return Err(format!("slice keyed {id} has id {}", slice.spec.id));
            }
            let block = st
                .blocks
                .get(&slice.block)
                .ok_or_else(|| format!("slice {id} sits on unknown block {}", slice.block))?;
            if !block.slices.contains(id) {
                return Err(format!("slice {id} not listed on its block {}", block.id));
            }
            if let Some(t) = slice.spec.tags.iter().find(|t| !block.tags.contains(*t)) {
                return Err(format!(
                    "slice {id} needs tag {t}, block {} lacks it",
                    block.id
                ));
            }
            *groups
                .entry(&slice.spec.group)
                .or_default()
                .entry(&slice.block)
                .or_default() += 1;
        }
        let listed: usize = st.blocks.values().map(|b| b.slices.len()).sum();
        if listed != st.slices.len() {
            return Err(format!(
                "blocks list {listed} slices, the grid holds {}",
                st.slices.len()
            ));
        }
        let derived: BTreeMap<&str, BTreeMap<&ServerId, u32>> = self
            .groups
            .iter()
            .map(|(g, m)| (g.as_str(), m.iter().map(|(b, n)| (b, *n)).collect()))
            .collect();
        if derived != groups {
            return Err("group index out of step with the slices".to_owned());
        }
        Ok(())
    }
}

/// Tags as one comma-separated string, for messages.
fn tag_list(tags: &[String]) -> String {
    tags.join(",")
}

/// A tag set from a list.
fn tag_set(tags: &[String]) -> BTreeSet<String> {
    tags.iter().cloned().collect()
}
