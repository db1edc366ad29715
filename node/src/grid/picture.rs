//! The plain-text picture of the grid, and the dry run (the notes' "virtual grid").
//!
//! Up to 20 blocks the picture draws each block as a column (taller for larger blocks, `###`
//! for used memory) with a legend line per block, within 80 columns; beyond 20 it summarises:
//! totals and a histogram of how full the blocks are.

use std::fmt::{self, Write as _};

use crate::types::{ServerId, SliceId, SliceSpec};

use super::{BlockState, Grid, GridError, PlaceOutcome};

/// Blocks drawn as columns at most; beyond, a summary.
pub const PICTURE_MAX_BLOCKS: usize = 20;
/// The picture's width limit.
const WIDTH: usize = 80;
/// Rows of the tallest column.
const HEIGHT: u64 = 8;

/// Bytes for people: `512M`, `1.5G`, `8G`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            let whole = bytes / scale;
            let tenth = (bytes % scale) * 10 / scale;
            return if tenth == 0 || whole >= 100 {
                format!("{whole}{unit}")
            } else {
                format!("{whole}.{tenth}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

fn percent(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        0
    } else {
        (part as u128 * 100 / whole as u128) as u64
    }
}

impl Grid {
    /// The grid as text: columns up to 20 blocks, a summary beyond. Every line fits 80
    /// columns (block ids are shortened in the legend when they would not).
    pub fn picture(&self) -> String {
        let blocks: Vec<_> = self.state.blocks.values().collect();
        let size: u64 = blocks.iter().map(|b| b.size).sum();
        let used: u64 = blocks.iter().map(|b| b.used).sum();
        let draining = blocks
            .iter()
            .filter(|b| b.state == BlockState::Draining)
            .count();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "grid v{}: {} blocks ({} draining), {} slices, used {} of {} ({}%)",
            self.state.version,
            blocks.len(),
            draining,
            self.state.slices.len(),
            human_bytes(used),
            human_bytes(size),
            percent(used, size)
        );
        if blocks.is_empty() {
            out.push_str("(no blocks)\n");
            return out;
        }
        if blocks.len() > PICTURE_MAX_BLOCKS {
            self.summary(&mut out);
            return out;
        }
        // Up to 8 blocks in the notes' style (|###|, 9 columns each); up to 20 narrow (4 each).
        let wide = blocks.len() <= 8;
        let (w, gap) = if wide { (5, 4) } else { (3, 1) };
        let largest = blocks.iter().map(|b| b.size).max().unwrap_or(1);
        let heights: Vec<(u64, u64)> = blocks
            .iter()
            .map(|b| {
                let h = ((b.size as u128 * HEIGHT as u128).div_ceil(largest as u128) as u64)
                    .clamp(1, HEIGHT);
                let mut u = (b.used as u128 * h as u128 / b.size as u128) as u64;
                if b.used > 0 && u == 0 {
                    u = 1;
                }
                (h, u)
            })
            .collect();
        // Row 0 is the cap of the tallest column; row HEIGHT is the lowest cell.
        for row in 0..=HEIGHT {
            let mut line = String::new();
            for (i, &(h, u)) in heights.iter().enumerate() {
                if i > 0 {
                    line.push_str(&" ".repeat(gap));
                }
                let top = HEIGHT - h; // the cap's row
                let cell = if row < top {
                    " ".repeat(w)
                } else if row == top {
                    if wide { "-----" } else { "___" }.to_owned()
                } else if HEIGHT - row < u {
                    if wide { "|###|" } else { "###" }.to_owned()
                } else if wide {
                    "|   |".to_owned()
                } else {
                    "...".to_owned()
                };
                line.push_str(&cell);
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let mut base = String::new();
        let mut labels = String::new();
        for i in 0..blocks.len() {
            if i > 0 {
                base.push_str(&" ".repeat(gap));
                labels.push_str(&" ".repeat(gap));
            }
            base.push_str(&"-".repeat(w));
            labels.push_str(&format!("{:^w$}", i + 1));
        }
        out.push_str(&base);
        out.push('\n');
        out.push_str(labels.trim_end());
        out.push('\n');
        let id_width = blocks
            .iter()
            .map(|b| b.id.0.chars().count())
            .max()
            .unwrap_or(0);
        for (i, b) in blocks.iter().enumerate() {
            let tail = format!(
                " {:>5} used {:>5} free {:>5} {:>4} slices{}",
                human_bytes(b.size),
                human_bytes(b.used),
                human_bytes(b.free()),
                b.slices.len(),
                if b.state == BlockState::Draining {
                    " draining"
                } else {
                    ""
                }
            );
            let room = WIDTH.saturating_sub(3 + tail.len()).max(4).min(id_width);
            let id = shorten(&b.id.0, room);
            let _ = writeln!(out, "{:>2} {id:<room$}{tail}", i + 1);
        }
        out
    }

    fn summary(&self, out: &mut String) {
        // Blocks by how full they are, in tenths.
        let mut buckets = [0usize; 11];
        for b in self.state.blocks.values() {
            buckets[(percent(b.used, b.size) / 10) as usize] += 1;
        }
        let most = buckets.iter().copied().max().unwrap_or(1).max(1);
        let bar_room = WIDTH - 20;
        let _ = writeln!(out, "blocks by fill:");
        for (i, n) in buckets.iter().enumerate() {
            let label = if i == 10 {
                "     100%".to_owned()
            } else {
                format!("{:>3}-{:>3}%", i * 10, i * 10 + 9)
            };
            let bar = "#".repeat((n * bar_room).div_ceil(most));
            let _ = writeln!(out, "{label} {n:>7} {bar}");
        }
        let empty = self
            .state
            .blocks
            .values()
            .filter(|b| b.slices.is_empty())
            .count();
        let _ = writeln!(
            out,
            "{empty} blocks empty; `grid` shows up to 20 blocks as columns"
        );
    }

    /// Place `specs` in order on a copy of the grid (the notes' "virtual grid") and report
    /// where each would go. Where a new block would be needed, a virtual block (`new-1`, ...)
    /// of the size asked for is added to the copy. The grid itself is untouched.
    pub fn dry_run(&self, specs: &[SliceSpec]) -> DryRun {
        let mut grid = self.clone();
        let mut placements = Vec::with_capacity(specs.len());
        let mut new_blocks = 0usize;
        for spec in specs {
            let placed = match grid.place(spec.clone()) {
                Ok(change) => match change.result {
                    PlaceOutcome::Placed { block, spread } => DryPlacement::Block { block, spread },
                    PlaceOutcome::NeedsBlock { size, tags } => {
                        let mut n = new_blocks + 1;
                        let mut id = ServerId(format!("new-{n}"));
                        while grid.state.blocks.contains_key(&id) {
                            n += 1;
                            id = ServerId(format!("new-{n}"));
                        }
                        let added = grid.add_block(id.clone(), size, &tags);
                        let placed = added.and_then(|_| grid.place(spec.clone()));
                        match placed {
                            Ok(_) => {
                                new_blocks += 1;
                                DryPlacement::NewBlock { block: id, size }
                            }
                            Err(e) => DryPlacement::Error(e),
                        }
                    }
                },
                Err(e) => DryPlacement::Error(e),
            };
            placements.push((spec.id.clone(), placed));
        }
        DryRun {
            placements,
            new_blocks,
            grid,
        }
    }
}

/// Cut a string to `room` characters, marking the cut with `~`.
fn shorten(s: &str, room: usize) -> String {
    if s.chars().count() <= room {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(room - 1).collect();
        cut.push('~');
        cut
    }
}

/// Where a slice of a dry run would go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryPlacement {
    /// On an existing block.
    Block {
        /// The block.
        block: ServerId,
        /// False when it would join another replica of its group.
        spread: bool,
    },
    /// On a block that would have to be created.
    NewBlock {
        /// The virtual block's name in the copy.
        block: ServerId,
        /// Its size.
        size: u64,
    },
    /// Nowhere.
    Error(GridError),
}

/// The result of a dry run: each slice's placement and the virtual grid after them all.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// Each slice, in the order given, with where it would go.
    pub placements: Vec<(SliceId, DryPlacement)>,
    /// Blocks that would have to be created.
    pub new_blocks: usize,
    /// The virtual grid.
    pub grid: Grid,
}

impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (slice, placed) in &self.placements {
            match placed {
                DryPlacement::Block { block, spread } => writeln!(
                    f,
                    "{slice} -> {block}{}",
                    if *spread {
                        ""
                    } else {
                        " (shares the block with a replica)"
                    }
                )?,
                DryPlacement::NewBlock { block, size } => writeln!(
                    f,
                    "{slice} -> {block} (a new block of {})",
                    human_bytes(*size)
                )?,
                DryPlacement::Error(e) => writeln!(f, "{slice} -> nowhere: {e}")?,
            }
        }
        if self.new_blocks > 0 {
            writeln!(f, "{} new block(s) needed", self.new_blocks)?;
        }
        f.write_str(&self.grid.picture())
    }
}
