//! The packing-under-churn experiment of issue 4, shared by `tests/grid_churn.rs` and
//! `benches/grid.rs`: blocks of one size (8 GB), slices uniform 128 MB–2 GB in groups of 3;
//! place 5,000, remove a random 40 %, place 2,000 more; then autosize rounds until one moves
//! nothing, the grid acting on its own events (create -> add a block, destroy -> remove it).

use quarry_node::grid::{first_fit_decreasing, Event, Grid, GridOptions, PlaceOutcome};
use quarry_node::types::{ServerId, SliceId, SliceSpec};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub const BLOCK: u64 = 8 << 30;
pub const SLICE_MIN: u64 = 128 << 20;
pub const SLICE_MAX: u64 = 2 << 30;
/// Moves per autosize round.
pub const ROUND_MOVES: usize = 1_000;

/// The figures of one run.
#[derive(Debug, Clone, Copy)]
pub struct Churn {
    pub before: usize,
    pub after: usize,
    pub lower_bound: usize,
    pub ffd: usize,
    pub moved: usize,
    pub live: usize,
}

/// Act on a change's events the way the leader would: add a block for `create` is done by the
/// placing loop; `destroy` removes the block.
fn act(grid: &mut Grid, events: &[Event]) {
    for e in events {
        if let Event::Destroy { block } = e {
            let orphans = grid
                .remove_block(block)
                .expect("destroy names a known block");
            assert!(orphans.result.is_empty(), "destroy on a block with slices");
        }
    }
}

/// Place a slice, adding blocks when the grid asks for one.
pub fn place(grid: &mut Grid, spec: SliceSpec, next_block: &mut usize) {
    loop {
        let change = grid
            .place(spec.clone())
            .expect("placement succeeds below max");
        match change.result {
            PlaceOutcome::Placed { .. } => {
                act(grid, &change.events);
                return;
            }
            PlaceOutcome::NeedsBlock { size, tags } => {
                *next_block += 1;
                grid.add_block(ServerId(format!("b{:05}", *next_block)), size, &tags)
                    .expect("add a block below max");
            }
        }
    }
}

pub fn spec(i: usize, memory: u64) -> SliceSpec {
    SliceSpec {
        id: SliceId(format!("s{i:06}")),
        memory,
        tags: Vec::new(),
        group: format!("g{}", i / 3),
        pinned: false,
    }
}

/// The grid after the churn, before autosize.
pub fn churned(seed: u64) -> Grid {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut grid = Grid::new(GridOptions {
        min: 1,
        max: 1_000_000,
        autosize: true,
        block_size: BLOCK,
        max_block_size: BLOCK,
    });
    let mut next_block = 0;
    let mut live: Vec<SliceId> = Vec::new();
    for i in 0..5_000 {
        let s = spec(i, rng.random_range(SLICE_MIN..=SLICE_MAX));
        live.push(s.id.clone());
        place(&mut grid, s, &mut next_block);
    }
    live.shuffle(&mut rng);
    for id in live.drain(..2_000) {
        let change = grid.remove_slice(&id).expect("remove a live slice");
        act(&mut grid, &change.events);
    }
    for i in 5_000..7_000 {
        let s = spec(i, rng.random_range(SLICE_MIN..=SLICE_MAX));
        place(&mut grid, s, &mut next_block);
    }
    grid
}

/// The whole experiment for one seed, `round_moves` moves per autosize round.
pub fn run(seed: u64, round_moves: usize) -> Churn {
    let mut grid = churned(seed);
    let sizes: Vec<u64> = grid.slices().values().map(|s| s.spec.memory).collect();
    let total: u64 = sizes.iter().sum();
    let before = grid.blocks_in_use();
    let mut moved = 0;
    loop {
        let change = grid.autosize(round_moves);
        assert!(
            change.result.len() <= round_moves,
            "a round over its budget"
        );
        grid.check()
            .expect("invariants hold after an autosize round");
        act(&mut grid, &change.events);
        moved += change.result.len();
        if change.events.is_empty() {
            break;
        }
    }
    grid.check().expect("invariants hold after autosize");
    Churn {
        before,
        after: grid.blocks_in_use(),
        lower_bound: total.div_ceil(BLOCK) as usize,
        ffd: first_fit_decreasing(&sizes, BLOCK),
        moved,
        live: sizes.len(),
    }
}
