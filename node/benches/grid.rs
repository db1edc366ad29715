//! The grid benchmark (issue 4): placements per second on one core, and packing under churn.
//!
//! - 10,000 slices into 1,000 blocks, and 100,000 slices into 10,000 blocks: blocks of 16 GB,
//!   slices uniform 128 MB–2 GB (about two thirds full), groups of 3 spread over blocks. Only
//!   the placements are timed (specs are made beforehand); the best of a few runs counts.
//! - The churn experiment of `tests/grid_churn.rs` over 20 seeds: blocks in use before and
//!   after autosize over the lower bound, autosize over First Fit Decreasing, slices moved.
//!
//! `QUARRY_BENCH=quick` runs each placement figure once. The last line is one JSON object.

#[path = "../tests/grid_support/churn.rs"]
mod churn;

use std::hint::black_box;
use std::time::Instant;

use quarry_node::grid::{Grid, GridOptions, PlaceOutcome};
use quarry_node::types::{ServerId, SliceSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOCK: u64 = 16 << 30;

/// Placements per second of `slices` slices into `blocks` blocks, best of `runs`; and how
/// many placements had to put a replica next to another of its group.
fn placements_per_s(blocks: usize, slices: usize, runs: usize) -> (f64, usize) {
    let mut best = 0.0f64;
    let mut joined = 0;
    for run in 0..runs {
        let mut rng = StdRng::seed_from_u64(run as u64);
        let mut grid = Grid::new(GridOptions {
            min: 1,
            max: blocks,
            autosize: false,
            block_size: BLOCK,
            max_block_size: BLOCK,
        });
        for b in 0..blocks {
            grid.add_block(ServerId(format!("b{b:05}")), BLOCK, &[])
                .expect("add a block");
        }
        let specs: Vec<SliceSpec> = (0..slices)
            .map(|i| churn::spec(i, rng.random_range(churn::SLICE_MIN..=churn::SLICE_MAX)))
            .collect();
        joined = 0;
        let start = Instant::now();
        for spec in specs {
            let change = grid.place(spec).expect("room for every slice");
            match change.result {
                PlaceOutcome::Placed { spread, .. } => joined += usize::from(!spread),
                PlaceOutcome::NeedsBlock { .. } => panic!("the grid ran out of room"),
            }
            black_box(&change.events);
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(grid.slices().len(), slices);
        best = best.max(slices as f64 / secs);
    }
    (best, joined)
}

fn main() {
    let quick = std::env::var("QUARRY_BENCH").is_ok_and(|v| v == "quick");
    let runs = if quick { 1 } else { 5 };
    let (p1k, joined) = placements_per_s(1_000, 10_000, runs);
    println!("placements: {p1k:.0}/s (10,000 slices into 1,000 blocks; {joined} not spread)");
    let (p10k, joined) = placements_per_s(10_000, 100_000, runs);
    println!("placements: {p10k:.0}/s (100,000 slices into 10,000 blocks; {joined} not spread)");

    let seeds = 20;
    let (mut before, mut after, mut vs_ffd, mut moved) = (0.0, 0.0, 0.0, 0.0);
    let (mut worst_vs_ffd, mut worst_moved) = (0.0f64, 0.0f64);
    for seed in 0..seeds {
        let r = churn::run(seed, churn::ROUND_MOVES);
        let lb = r.lower_bound as f64;
        let m = r.moved as f64 / r.live as f64;
        let f = r.after as f64 / r.ffd as f64;
        println!(
            "churn seed {seed}: in use {} -> {} (bound {}, FFD {}), moved {} of {}",
            r.before, r.after, r.lower_bound, r.ffd, r.moved, r.live
        );
        before += r.before as f64 / lb;
        after += r.after as f64 / lb;
        vs_ffd += f;
        moved += m;
        worst_vs_ffd = worst_vs_ffd.max(f);
        worst_moved = worst_moved.max(m);
    }
    let n = seeds as f64;
    println!(
        "{{\"placements_per_s_1k\":{p1k:.0},\"placements_per_s_10k\":{p10k:.0},\
         \"packing_ratio\":{:.4},\"packing_ratio_autosize\":{:.4},\"autosize_vs_ffd\":{:.4},\
         \"autosize_vs_ffd_max\":{worst_vs_ffd:.4},\"autosize_moved_fraction\":{:.4},\
         \"autosize_moved_fraction_max\":{worst_moved:.4},\"quick\":{quick}}}",
        before / n,
        after / n,
        vs_ffd / n,
        moved / n
    );
}
