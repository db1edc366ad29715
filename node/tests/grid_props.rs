//! Property tests of the grid (issue 4): after any sequence of operations no block is over
//! capacity, every slice sits on exactly one block, tags hold (all via `Grid::check`), the
//! events match the change, the version grows with every change and only then, and
//! serialization round-trips to an equal grid that goes on deciding exactly as the original.

use std::collections::BTreeMap;

use proptest::prelude::*;
use quarry_node::grid::{BlockState, Event, Grid, GridOptions, PlaceOutcome};
use quarry_node::types::{ServerId, SliceId, SliceSpec};

const GB: u64 = 1 << 30;
const TAGS: [&str; 2] = ["ssd", "gpu"];

#[derive(Debug, Clone)]
enum Op {
    AddBlock {
        id: u8,
        size: u64,
        tags: u8,
    },
    RemoveBlock {
        id: u8,
    },
    DrainBlock {
        id: u8,
    },
    ActivateBlock {
        id: u8,
    },
    Place {
        id: u8,
        memory: u64,
        tags: u8,
        group: u8,
        pinned: bool,
    },
    RemoveSlice {
        id: u8,
    },
    Autosize {
        moves: usize,
    },
    SetAutosize {
        on: bool,
        min: usize,
    },
}

fn tags(mask: u8) -> Vec<String> {
    TAGS.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| (*t).to_owned())
        .collect()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..8, 1u64..=16, 0u8..4).prop_map(|(id, g, tags)| Op::AddBlock {
            id,
            size: g * GB / 2,
            tags: tags & 1,
        }),
        1 => (0u8..8).prop_map(|id| Op::RemoveBlock { id }),
        1 => (0u8..8).prop_map(|id| Op::DrainBlock { id }),
        1 => (0u8..8).prop_map(|id| Op::ActivateBlock { id }),
        8 => (0u8..40, 1u64..=24, 0u8..8, 0u8..6, proptest::bool::weighted(0.2)).prop_map(
            |(id, m, tags, group, pinned)| Op::Place {
                id,
                memory: m * GB / 8,
                tags: if tags < 6 { 0 } else { tags - 5 },
                group,
                pinned,
            }
        ),
        4 => (0u8..40).prop_map(|id| Op::RemoveSlice { id }),
        1 => (0usize..6).prop_map(|moves| Op::Autosize { moves }),
        1 => (proptest::bool::ANY, 0usize..3).prop_map(|(on, min)| Op::SetAutosize { on, min }),
    ]
}

/// Apply one operation; the events it returned, and whether it answered NeedsBlock.
fn apply(grid: &mut Grid, op: &Op) -> (Vec<Event>, bool, Option<(SliceId, ServerId, bool)>) {
    match op {
        Op::AddBlock { id, size, tags: t } => grid
            .add_block(ServerId(format!("b{id}")), *size, &tags(*t))
            .map(|c| (c.events, false, None))
            .unwrap_or_default(),
        Op::RemoveBlock { id } => grid
            .remove_block(&ServerId(format!("b{id}")))
            .map(|c| (c.events, false, None))
            .unwrap_or_default(),
        Op::DrainBlock { id } => grid
            .drain_block(&ServerId(format!("b{id}")))
            .map(|c| (c.events, false, None))
            .unwrap_or_default(),
        Op::ActivateBlock { id } => grid
            .activate_block(&ServerId(format!("b{id}")))
            .map(|c| (c.events, false, None))
            .unwrap_or_default(),
        Op::Place {
            id,
            memory,
            tags: t,
            group,
            pinned,
        } => {
            let spec = SliceSpec {
                id: SliceId(format!("s{id}")),
                memory: *memory,
                tags: tags(*t),
                group: format!("g{group}"),
                pinned: *pinned,
            };
            match grid.place(spec) {
                Ok(c) => match c.result {
                    PlaceOutcome::Placed { block, spread } => (
                        c.events,
                        false,
                        Some((SliceId(format!("s{id}")), block, spread)),
                    ),
                    PlaceOutcome::NeedsBlock { .. } => (c.events, true, None),
                },
                Err(_) => Default::default(),
            }
        }
        Op::RemoveSlice { id } => grid
            .remove_slice(&SliceId(format!("s{id}")))
            .map(|c| (c.events, false, None))
            .unwrap_or_default(),
        Op::Autosize { moves } => {
            let c = grid.autosize(*moves);
            assert!(
                c.result.len() <= *moves,
                "autosize made more moves than its budget"
            );
            (c.events, false, None)
        }
        Op::SetAutosize { on, min } => {
            let mut o = *grid.options();
            o.autosize = *on;
            o.min = *min;
            grid.set_options(o);
            (Vec::new(), false, None)
        }
    }
}

fn where_is(grid: &Grid) -> BTreeMap<SliceId, ServerId> {
    grid.slices()
        .iter()
        .map(|(id, s)| (id.clone(), s.block.clone()))
        .collect()
}

fn options() -> GridOptions {
    GridOptions {
        min: 1,
        max: 6,
        autosize: true,
        block_size: 4 * GB,
        max_block_size: 8 * GB,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_operation_keeps_the_invariants_and_reports_its_change(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut grid = Grid::new(options());
        for op in &ops {
            let before = grid.clone();
            let old = where_is(&grid);
            let (events, needs_block, placed) = apply(&mut grid, op);
            if let Err(e) = grid.check() {
                panic!("after {op:?}: {e}");
            }
            // The events match the change: a slice that appeared or moved was `added` on its
            // new block, one that left or moved was `removed` from its old one.
            let new = where_is(&grid);
            let mut expected: Vec<Event> = Vec::new();
            for (s, b) in &new {
                if old.get(s) != Some(b) {
                    expected.push(Event::Added { block: b.clone(), slice: s.clone() });
                }
            }
            for (s, b) in &old {
                if new.get(s) != Some(b) {
                    expected.push(Event::Removed { block: b.clone(), slice: s.clone() });
                }
            }
            let mut got: Vec<Event> = events
                .iter()
                .filter(|e| matches!(e, Event::Added { .. } | Event::Removed { .. }))
                .cloned()
                .collect();
            let key = |e: &Event| format!("{e:?}");
            expected.sort_by_key(key);
            got.sort_by_key(key);
            prop_assert_eq!(&got, &expected, "events of {:?}", op);
            for e in &events {
                match e {
                    Event::Destroy { block } => {
                        let b = grid.block(block).expect("destroy names a block");
                        prop_assert!(b.slices.is_empty(), "destroy of a non-empty block");
                        prop_assert_eq!(b.state, BlockState::Draining);
                    }
                    Event::Create { .. } => prop_assert!(needs_block, "create without NeedsBlock"),
                    _ => {}
                }
            }
            if needs_block {
                let create = events.iter().any(|e| matches!(e, Event::Create { .. }));
                prop_assert!(create, "NeedsBlock without create");
            }
            // Autosize and drains never move pinned slices; autosize never puts two replicas
            // of a group on one block.
            if matches!(op, Op::Autosize { .. } | Op::DrainBlock { .. }) {
                for e in &events {
                    if let Event::Added { block, slice } = e {
                        let spec = &grid.slices()[slice].spec;
                        prop_assert!(!spec.pinned, "{:?} moved pinned {}", op, slice);
                        if matches!(op, Op::Autosize { .. }) {
                            let together = grid
                                .slices()
                                .values()
                                .filter(|o| &o.block == block && o.spec.group == spec.group)
                                .count();
                            prop_assert_eq!(together, 1, "autosize put {} with a replica", slice);
                        }
                    }
                }
            }
            // Spread: a placement that says it spread found no replica of its group there.
            if let Some((s, b, spread)) = &placed {
                let group = &grid.slices()[s].spec.group;
                let others = before
                    .slices()
                    .values()
                    .filter(|o| &o.block == b && &o.spec.group == group)
                    .count();
                prop_assert_eq!(*spread, others == 0, "spread flag of {}", s);
            }
            // The version grows with every change, by one, and only with a change.
            let changed = grid.state().blocks != before.state().blocks
                || grid.state().slices != before.state().slices
                || grid.state().options != before.state().options;
            if changed {
                prop_assert_eq!(grid.version(), before.version() + 1, "after {:?}", op);
            } else {
                prop_assert_eq!(grid.version(), before.version(), "no change yet {:?}", op);
            }
            // Serialization round-trips to an equal grid.
            let json = serde_json::to_string(&grid).expect("serialize");
            let back: Grid = serde_json::from_str(&json).expect("deserialize");
            prop_assert!(back == grid);
        }
    }

    #[test]
    fn a_restored_grid_decides_exactly_as_the_original(
        ops in proptest::collection::vec(op(), 2..80),
        cut in 0usize..80,
    ) {
        let cut = cut % ops.len();
        let mut original = Grid::new(options());
        for op in &ops[..cut] {
            apply(&mut original, op);
        }
        let json = serde_json::to_string(&original).expect("serialize");
        let mut restored: Grid = serde_json::from_str(&json).expect("deserialize");
        for op in &ops[cut..] {
            let a = apply(&mut original, op);
            let b = apply(&mut restored, op);
            prop_assert_eq!(a.0, b.0, "events of {:?}", op);
            prop_assert!(original == restored, "grids differ after {:?}", op);
        }
    }
}

/// A slice of a churn plan: size in 64 MB units, pinned.
type PlanSlice = (u64, bool);
/// A churned grid: slices placed, which of them are removed, more placed, the group size.
type ChurnPlan = (Vec<PlanSlice>, Vec<bool>, Vec<PlanSlice>, u8);

fn churn_plan() -> impl Strategy<Value = ChurnPlan> {
    let slice = (2u64..=32, proptest::bool::weighted(0.1));
    (
        proptest::collection::vec(slice.clone(), 40..160),
        proptest::collection::vec(proptest::bool::weighted(0.4), 160),
        proptest::collection::vec(slice, 0..60),
        1u8..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn autosize_rounds_keep_budget_spread_and_pins_and_never_grow_the_grid(
        (first, removed, second, group_size) in churn_plan(),
        budget in 1usize..40,
    ) {
        const UNIT: u64 = 64 << 20;
        let mut grid = Grid::new(GridOptions {
            min: 1,
            max: 10_000,
            autosize: false,
            block_size: 2 * GB,
            max_block_size: 2 * GB,
        });
        let mut next = 0usize;
        let mut n = 0usize;
        let mut place = |grid: &mut Grid, (units, pinned): (u64, bool)| {
            let spec = SliceSpec {
                id: SliceId(format!("s{n:04}")),
                memory: units * UNIT,
                tags: Vec::new(),
                group: format!("g{}", n / group_size as usize),
                pinned,
            };
            n += 1;
            loop {
                match grid.place(spec.clone()).expect("below max").result {
                    PlaceOutcome::Placed { .. } => return,
                    PlaceOutcome::NeedsBlock { size, tags } => {
                        next += 1;
                        grid.add_block(ServerId(format!("b{next:04}")), size, &tags)
                            .expect("add");
                    }
                }
            }
        };
        for s in &first {
            place(&mut grid, *s);
        }
        for (i, gone) in removed.iter().enumerate().take(first.len()) {
            if *gone {
                grid.remove_slice(&SliceId(format!("s{i:04}"))).expect("remove");
            }
        }
        for s in &second {
            place(&mut grid, *s);
        }
        let mut o = *grid.options();
        o.autosize = true;
        grid.set_options(o);
        for _ in 0..20 {
            let in_use = grid.blocks_in_use();
            let before = grid.clone();
            let change = grid.autosize(budget);
            if let Err(e) = grid.check() {
                panic!("after autosize: {e}");
            }
            prop_assert!(change.result.len() <= budget);
            prop_assert!(grid.blocks_in_use() <= in_use, "autosize grew the grid");
            for m in &change.result {
                let spec = &grid.slices()[&m.slice].spec;
                prop_assert!(!spec.pinned, "moved pinned {}", m.slice);
                prop_assert_eq!(before.block_of(&m.slice), Some(&m.from));
                prop_assert_eq!(grid.block_of(&m.slice), Some(&m.to));
                let together = grid
                    .slices()
                    .values()
                    .filter(|o| o.block == m.to && o.spec.group == spec.group)
                    .count();
                prop_assert_eq!(together, 1, "{} joined a replica", m.slice);
            }
            for e in &change.events {
                if let Event::Destroy { block } = e {
                    grid.remove_block(block).expect("remove a destroyed block");
                }
            }
            if change.events.is_empty() {
                prop_assert_eq!(grid.version(), before.version());
                break;
            }
        }
    }
}
