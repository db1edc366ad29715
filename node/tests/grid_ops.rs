//! The grid's operations one by one: placement rules, errors, drains, autosize, the picture
//! and the dry run.

use quarry_node::grid::{
    BlockState, DryPlacement, Event, Grid, GridError, GridOptions, GridState, PlaceOutcome,
};
use quarry_node::types::{ServerId, SliceId, SliceSpec};

const MB: u64 = 1 << 20;
const GB: u64 = 1 << 30;

fn opts(max: usize, autosize: bool) -> GridOptions {
    GridOptions {
        min: 1,
        max,
        autosize,
        block_size: 8 * GB,
        max_block_size: 16 * GB,
    }
}

fn slice(id: &str, memory: u64, group: &str) -> SliceSpec {
    SliceSpec {
        id: SliceId(id.to_owned()),
        memory,
        tags: Vec::new(),
        group: group.to_owned(),
        pinned: false,
    }
}

fn sid(s: &str) -> ServerId {
    ServerId(s.to_owned())
}

fn placed_on(grid: &mut Grid, spec: SliceSpec) -> (ServerId, bool) {
    match grid.place(spec).expect("placement").result {
        PlaceOutcome::Placed { block, spread } => (block, spread),
        other => panic!("expected a placement, got {other:?}"),
    }
}

/// Blocks `a`, `b`, `c` of 8 GB with 6, 7 and 4 GB used (by fillers of their own groups).
fn three_blocks() -> Grid {
    let mut grid = Grid::new(opts(10, false));
    for (b, used) in [("a", 6), ("b", 7), ("c", 4)] {
        grid.add_block(sid(b), 8 * GB, &[]).expect("add");
        let spec = slice(&format!("fill-{b}"), used * GB, &format!("fill-{b}"));
        let change = grid.place(spec).expect("fill");
        assert!(matches!(change.result, PlaceOutcome::Placed { .. }));
    }
    // The fillers went best fit; put them where the test wants them.
    for (b, used) in [("a", 6), ("b", 7), ("c", 4)] {
        assert_eq!(
            grid.block(&sid(b)).expect("block").used,
            used * GB,
            "block {b}"
        );
    }
    grid
}

#[test]
fn placement_is_best_fit_the_tightest_block_that_holds_the_slice() {
    let mut grid = three_blocks();
    let (block, spread) = placed_on(&mut grid, slice("x", 900 * MB, "x"));
    assert_eq!((block, spread), (sid("b"), true));
    let (block, _) = placed_on(&mut grid, slice("y", 1536 * MB, "y"));
    assert_eq!(block, sid("a"));
}

#[test]
fn replicas_of_a_group_spread_over_blocks_where_room_allows() {
    let mut grid = three_blocks();
    let mut blocks = Vec::new();
    for r in 0..3 {
        let (block, spread) = placed_on(&mut grid, slice(&format!("web.{r}"), 512 * MB, "web"));
        assert!(spread, "replica {r} joined another");
        blocks.push(block);
    }
    blocks.sort();
    assert_eq!(blocks, vec![sid("a"), sid("b"), sid("c")]);
    // A fourth replica has to share a block: it goes best fit and says so.
    let (_, spread) = placed_on(&mut grid, slice("web.3", 512 * MB, "web"));
    assert!(!spread);
}

#[test]
fn a_slice_only_lands_on_a_block_with_its_tags() {
    let mut grid = Grid::new(opts(10, false));
    grid.add_block(sid("plain"), 8 * GB, &[]).expect("add");
    grid.add_block(sid("fast"), 16 * GB, &["ssd".to_owned()])
        .expect("add");
    let mut spec = slice("db", GB, "db");
    spec.tags = vec!["ssd".to_owned()];
    assert_eq!(placed_on(&mut grid, spec).0, sid("fast"));
    // Untagged slices may use tagged blocks; best fit picks the tighter untagged one here.
    assert_eq!(
        placed_on(&mut grid, slice("app", GB, "app")).0,
        sid("plain")
    );
}

#[test]
fn a_full_grid_asks_for_a_block_below_max_and_refuses_at_max() {
    let mut grid = Grid::new(opts(1, false));
    let change = grid.place(slice("a", GB, "a")).expect("below max");
    assert_eq!(
        change.result,
        PlaceOutcome::NeedsBlock {
            size: 8 * GB,
            tags: vec![]
        }
    );
    assert_eq!(
        change.events,
        vec![Event::Create {
            size: 8 * GB,
            tags: vec![]
        }]
    );
    assert_eq!(grid.version(), 0, "asking for a block changes nothing");
    grid.add_block(sid("b1"), 8 * GB, &[]).expect("add");
    placed_on(&mut grid, slice("a", 7 * GB, "a"));
    let err = grid.place(slice("b", 2 * GB, "b")).expect_err("at max");
    assert!(matches!(err, GridError::Full { max: 1, .. }), "{err}");
    assert!(err.to_string().contains("raise max"), "{err}");
    let err = grid
        .place(slice("huge", 20 * GB, "h"))
        .expect_err("never fits");
    assert!(matches!(err, GridError::NeverFits { .. }), "{err}");
    let err = grid.place(slice("a", GB, "a")).expect_err("duplicate");
    assert_eq!(err, GridError::DuplicateSlice(SliceId("a".to_owned())));
    let err = grid.add_block(sid("b2"), 8 * GB, &[]).expect_err("at max");
    assert!(matches!(err, GridError::TooManyBlocks { .. }));
}

#[test]
fn a_slice_larger_than_the_block_size_asks_for_a_block_its_size() {
    let mut grid = Grid::new(opts(4, false));
    let change = grid.place(slice("big", 12 * GB, "big")).expect("creatable");
    assert!(matches!(
        change.result,
        PlaceOutcome::NeedsBlock { size, .. } if size == 12 * GB
    ));
}

#[test]
fn removing_the_last_slice_hands_the_block_back_only_with_autosize_above_min() {
    let mut grid = Grid::new(opts(10, true));
    grid.add_block(sid("a"), 8 * GB, &[]).expect("add");
    grid.add_block(sid("b"), 8 * GB, &[]).expect("add");
    placed_on(&mut grid, slice("s1", 7 * GB, "s1"));
    let (on, _) = placed_on(&mut grid, slice("s2", 7 * GB, "s2"));
    let change = grid
        .remove_slice(&SliceId("s2".to_owned()))
        .expect("remove");
    assert_eq!(
        change.events,
        vec![
            Event::Removed {
                block: on.clone(),
                slice: SliceId("s2".to_owned())
            },
            Event::Destroy { block: on.clone() }
        ]
    );
    assert_eq!(grid.block(&on).expect("block").state, BlockState::Draining);
    // At min (1 active block), the last block is kept.
    let change = grid
        .remove_slice(&SliceId("s1".to_owned()))
        .expect("remove");
    assert_eq!(change.events.len(), 1, "{:?}", change.events);
}

#[test]
fn a_drain_moves_unpinned_slices_keeps_pinned_ones_and_takes_nothing_new() {
    let mut grid = Grid::new(opts(10, false));
    for b in ["a", "b"] {
        grid.add_block(sid(b), 8 * GB, &[]).expect("add");
    }
    let (first, _) = placed_on(&mut grid, slice("w", 2 * GB, "w"));
    let mut pinned = slice("db", 2 * GB, "db");
    pinned.pinned = true;
    assert_eq!(placed_on(&mut grid, pinned).0, first);
    let other = if first == sid("a") {
        sid("b")
    } else {
        sid("a")
    };
    let change = grid.drain_block(&first).expect("drain");
    assert_eq!(change.result.moved.len(), 1);
    assert_eq!(change.result.moved[0].to, other);
    assert_eq!(change.result.pinned, vec![SliceId("db".to_owned())]);
    assert!(
        !change
            .events
            .iter()
            .any(|e| matches!(e, Event::Destroy { .. })),
        "a block still holding a pinned slice is not handed back"
    );
    assert_eq!(placed_on(&mut grid, slice("n", GB, "n")).0, other);
    // Removing the pinned slice empties the draining block: destroy.
    let change = grid
        .remove_slice(&SliceId("db".to_owned()))
        .expect("remove");
    assert!(change.events.contains(&Event::Destroy { block: first }));
}

#[test]
fn removing_a_block_returns_its_slices_to_be_placed_again() {
    let mut grid = Grid::new(opts(10, false));
    grid.add_block(sid("a"), 8 * GB, &[]).expect("add");
    placed_on(&mut grid, slice("s1", GB, "s"));
    placed_on(&mut grid, slice("s2", GB, "t"));
    let change = grid.remove_block(&sid("a")).expect("remove");
    let ids: Vec<_> = change.result.iter().map(|s| s.id.0.as_str()).collect();
    assert_eq!(ids, vec!["s1", "s2"]);
    assert_eq!(change.events.len(), 2);
    assert!(grid.slices().is_empty());
    grid.check().expect("invariants");
}

#[test]
fn autosize_empties_whole_blocks_above_min_without_moving_pinned_slices() {
    let mut grid = Grid::new(opts(10, false));
    for b in ["a", "b", "c"] {
        grid.add_block(sid(b), 8 * GB, &[]).expect("add");
    }
    // 5 GB then 2 GB on each block (best fit fills them in turn), then the 5 GB ones of a
    // and b leave: a and b hold 2 GB each, c 7 GB.
    for i in 0..3 {
        placed_on(
            &mut grid,
            slice(&format!("big{i}"), 5 * GB, &format!("big{i}")),
        );
    }
    for i in 0..3 {
        placed_on(
            &mut grid,
            slice(&format!("small{i}"), 2 * GB, &format!("small{i}")),
        );
    }
    for i in 0..2 {
        grid.remove_slice(&SliceId(format!("big{i}")))
            .expect("remove");
    }
    let mut pinned = slice("svc", GB, "svc");
    pinned.pinned = true;
    let (pinned_on, _) = placed_on(&mut grid, pinned);
    assert_eq!(pinned_on, sid("c"), "best fit: c has exactly 1 GB free");
    let mut o = *grid.options();
    o.autosize = true;
    grid.set_options(o);
    let before = grid.blocks_in_use();
    let change = grid.autosize(10);
    assert!(!change.result.is_empty(), "nothing moved");
    assert!(change.result.iter().all(|m| m.slice.0 != "svc"));
    assert_eq!(grid.block_of(&SliceId("svc".to_owned())), Some(&pinned_on));
    let destroyed: Vec<_> = change
        .events
        .iter()
        .filter(|e| matches!(e, Event::Destroy { .. }))
        .collect();
    assert!(!destroyed.is_empty());
    assert_eq!(grid.blocks_in_use(), before - destroyed.len());
    grid.check().expect("invariants");
    // Autosize off: nothing.
    let mut off = grid.clone();
    let mut o = *off.options();
    o.autosize = false;
    off.set_options(o);
    assert!(off.autosize(10).events.is_empty());
}

#[test]
fn autosize_keeps_replicas_of_a_group_apart() {
    let mut grid = Grid::new(opts(10, true));
    for b in ["a", "b"] {
        grid.add_block(sid(b), 8 * GB, &[]).expect("add");
    }
    placed_on(&mut grid, slice("r0", GB, "web"));
    placed_on(&mut grid, slice("r1", GB, "web"));
    let change = grid.autosize(10);
    assert!(change.result.is_empty(), "{:?}", change.result);
    assert_ne!(
        grid.block_of(&SliceId("r0".to_owned())),
        grid.block_of(&SliceId("r1".to_owned()))
    );
}

#[test]
fn the_picture_fits_80_columns_up_to_20_blocks_and_summarises_beyond() {
    for n in [1usize, 3, 8, 9, 20, 21, 500] {
        let mut grid = Grid::new(opts(1000, false));
        for b in 0..n {
            let size = if b % 3 == 0 { 16 * GB } else { 8 * GB };
            grid.add_block(
                ServerId(format!("server-{b:03}-with-a-rather-long-name")),
                size,
                &[],
            )
            .expect("add");
        }
        for i in 0..n * 3 {
            let _ = grid.place(slice(&format!("s{i}"), (i as u64 % 5 + 1) * GB, "g"));
        }
        let picture = grid.picture();
        for line in picture.lines() {
            assert!(
                line.chars().count() <= 80,
                "{n} blocks: {line:?} is too wide"
            );
        }
        if n <= 20 {
            assert!(picture.contains("###"), "{n} blocks:\n{picture}");
            assert!(picture.lines().count() > n, "a legend line per block");
        } else {
            assert!(picture.contains("blocks by fill"), "{n} blocks:\n{picture}");
            assert!(picture.lines().count() < 20);
        }
    }
}

#[test]
fn the_dry_run_shows_where_a_plan_would_go_and_leaves_the_grid_alone() {
    let mut grid = Grid::new(opts(10, false));
    grid.add_block(sid("a"), 8 * GB, &[]).expect("add");
    placed_on(&mut grid, slice("old", 6 * GB, "old"));
    let before = grid.clone();
    let plan = vec![
        slice("web.0", GB, "web"),
        slice("web.1", 2 * GB, "web"),
        slice("huge", 40 * GB, "huge"),
    ];
    let dry = grid.dry_run(&plan);
    assert_eq!(grid, before, "the grid itself is untouched");
    assert_eq!(
        dry.placements[0].1,
        DryPlacement::Block {
            block: sid("a"),
            spread: true
        }
    );
    assert!(matches!(
        &dry.placements[1].1,
        DryPlacement::NewBlock { size, .. } if *size == 8 * GB
    ));
    assert!(matches!(
        dry.placements[2].1,
        DryPlacement::Error(GridError::NeverFits { .. })
    ));
    assert_eq!(dry.new_blocks, 1);
    let text = dry.to_string();
    assert!(
        text.contains("web.1 -> new-1 (a new block of 8G)"),
        "{text}"
    );
    assert!(text.contains("huge -> nowhere"), "{text}");
    dry.grid
        .check()
        .expect("the virtual grid keeps the invariants");
}

#[test]
fn a_corrupt_state_is_refused_on_load() {
    let mut grid = Grid::new(opts(10, false));
    grid.add_block(sid("a"), 8 * GB, &[]).expect("add");
    placed_on(&mut grid, slice("s", 2 * GB, "s"));
    let mut state: GridState = grid.state().clone();
    state.blocks.get_mut(&sid("a")).expect("block").size = GB;
    let json = serde_json::to_string(&state).expect("serialize");
    let err = serde_json::from_str::<Grid>(&json).expect_err("over capacity");
    assert!(err.to_string().contains("over capacity"), "{err}");
    let ok: Grid = serde_json::from_str(&serde_json::to_string(&grid).expect("ser")).expect("de");
    assert_eq!(ok, grid);
}
