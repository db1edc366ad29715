//! A linearizability checker for a history of reads and writes on independent registers
//! (Wing & Gong's search with Lowe's memoization, one key at a time: linearizability is
//! local, so a history is linearizable iff each key's sub-history is).
//!
//! An operation whose outcome the client does not know (a write that failed or timed out)
//! has no return time: it may take effect at any point after its call, or never.

use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write(u64),
    /// A completed read and the value it saw.
    Read(Option<u64>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub client: u64,
    pub key: u64,
    pub kind: OpKind,
    /// Logical time of the call.
    pub call: u64,
    /// Logical time of the return; `None` when the outcome is unknown.
    pub ret: Option<u64>,
}

/// Checks every key; on failure returns the key and its sub-history.
pub fn check(history: &[Op]) -> Result<(), String> {
    let mut by_key: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        if !check_register(&ops) {
            let mut lines: Vec<String> = ops.iter().map(|o| format!("  {o:?}")).collect();
            lines.sort();
            return Err(format!(
                "key {key} is not linearizable; its history:\n{}",
                lines.join("\n")
            ));
        }
    }
    Ok(())
}

fn check_register(ops: &[&Op]) -> bool {
    assert!(
        ops.len() <= 128,
        "too many operations on one key for the checker"
    );
    let ret = |o: &Op| o.ret.unwrap_or(u64::MAX);
    let must: u128 = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.ret.is_some())
        .fold(0, |m, (i, _)| m | (1u128 << i));
    let mut seen: HashSet<(u128, Option<u64>)> = HashSet::new();
    // Depth-first search over (linearized set, register value).
    let mut stack: Vec<(u128, Option<u64>)> = vec![(0, None)];
    while let Some((done, value)) = stack.pop() {
        if done & must == must {
            return true;
        }
        if !seen.insert((done, value)) {
            continue;
        }
        // An op may go next iff no pending op returned before it was called.
        let horizon = ops
            .iter()
            .enumerate()
            .filter(|(i, _)| done & (1 << i) == 0)
            .map(|(_, o)| ret(o))
            .min()
            .unwrap_or(u64::MAX);
        for (i, o) in ops.iter().enumerate() {
            if done & (1 << i) != 0 || o.call > horizon {
                continue;
            }
            match o.kind {
                OpKind::Write(v) => stack.push((done | (1 << i), Some(v))),
                OpKind::Read(r) if r == value => stack.push((done | (1 << i), value)),
                OpKind::Read(_) => {}
            }
        }
    }
    false
}
