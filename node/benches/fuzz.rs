//! The fuzz loop (issue 18): every decoder that reads bytes from outside, fed mutated inputs.
//!
//! cargo fuzz needs a nightly toolchain, which a fresh machine here does not have; this is the
//! same idea on stable, as a fixed-seed mutation loop: each target ([`targets::all`]) starts
//! from valid inputs and runs a fixed number of cases, each a seed (or a splice of two) put
//! through one to four mutations (bit flips, interesting bytes and lengths, inserted, removed,
//! repeated or truncated ranges; repeating a range nests a document deeper). The seed of the
//! random generator is the target's name, so a run is the same on every machine and a crash
//! found once is found again.
//!
//! A line per target: cases run, cases that got past the size and depth checks into the
//! decoder, and crashes (panics). A crashing input is written to
//! `node/fuzz/regressions/TARGET/crash-HASH`, where `node/tests/fuzz_regressions.rs` replays
//! it from then on, and the run fails. (An abort, such as a stack overflow, ends the run at
//! once, which fails it too.)
//!
//! `QUARRY_BENCH=quick` (CI) runs a tenth of the cases. The last line is one JSON object.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::time::Instant;

use targets::{Outcome, Target};

/// Cases per target in full mode.
const FULL_CASES: u64 = 200_000;

/// Per-target case budget: the slow ones (a temporary directory per case) run fewer.
fn cases(t: &Target, quick: bool) -> u64 {
    let base = match t.name {
        "source_tar" | "rpc_bulk" => FULL_CASES / 10,
        "quarry_yml" => FULL_CASES / 2,
        _ => FULL_CASES,
    };
    if quick {
        base / 10
    } else {
        base
    }
}

/// xorshift64*: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(name: &str) -> Rng {
        // FNV-1a of the name; never zero.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        Rng(h | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING_BYTES: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'[', b'{', b'-', b':', b'\n', b' '];
const INTERESTING_U32: &[u32] = &[
    0,
    1,
    0x7f,
    0x80,
    0xffff,
    0x1_0000,
    16 << 20,
    64 << 20,
    u32::MAX,
];

/// One mutation of `v` in place.
fn mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    match rng.below(9) {
        0 if !v.is_empty() => {
            let i = rng.below(v.len());
            v[i] ^= 1 << rng.below(8);
        }
        1 if !v.is_empty() => {
            let i = rng.below(v.len());
            v[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
        }
        2 => {
            let i = rng.below(v.len() + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            v.splice(i..i, bytes);
        }
        3 if !v.is_empty() => {
            let i = rng.below(v.len());
            let n = 1 + rng.below((v.len() - i).min(64));
            v.drain(i..i + n);
        }
        4 if !v.is_empty() => {
            // Repeat a range many times: deep nesting, long runs, many frames.
            let i = rng.below(v.len());
            let n = 1 + rng.below((v.len() - i).min(32));
            let times = 1 + rng.below(2000);
            let chunk = v[i..i + n].to_vec();
            let rep: Vec<u8> = chunk.iter().copied().cycle().take(n * times).collect();
            v.splice(i..i, rep);
        }
        5 if v.len() >= 4 => {
            let i = rng.below(v.len() - 3);
            let x = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
            let b = if rng.below(2) == 0 {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            };
            v[i..i + 4].copy_from_slice(&b);
        }
        6 if !v.is_empty() => {
            v.truncate(rng.below(v.len()));
        }
        7 => {
            // Splice: this input's head, another seed's tail.
            let other = &seeds[rng.below(seeds.len())];
            let i = rng.below(v.len() + 1);
            let j = rng.below(other.len() + 1);
            v.truncate(i);
            v.extend_from_slice(&other[j..]);
        }
        _ if !v.is_empty() => {
            let i = rng.below(v.len());
            v[i] = v[i].wrapping_add(1 + rng.below(3) as u8);
        }
        _ => v.push(rng.next() as u8),
    }
}

/// What one target's run found.
struct Report {
    name: &'static str,
    cases: u64,
    past_limits: u64,
    accepted: u64,
    crashes: u64,
    seconds: f64,
}

fn hex_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(bytes);
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn run(t: &Target, quick: bool) -> Report {
    let t0 = Instant::now();
    let seeds = (t.seeds)();
    assert!(!seeds.is_empty(), "{}: no seeds", t.name);
    let mut rng = Rng::new(t.name);
    let n = cases(t, quick);
    let (mut past, mut accepted, mut crashes) = (0, 0, 0);
    for case in 0..n {
        let mut input = seeds[rng.below(seeds.len())].clone();
        // Every seed once as it is, then mutants.
        if case >= seeds.len() as u64 {
            for _ in 0..1 + rng.below(4) {
                mutate(&mut rng, &mut input, &seeds);
            }
        }
        match std::panic::catch_unwind(|| (t.run)(&input)) {
            Ok(Outcome::Limited) => {}
            Ok(Outcome::Refused) => past += 1,
            Ok(Outcome::Accepted) => {
                past += 1;
                accepted += 1;
            }
            Err(_) => {
                crashes += 1;
                past += 1;
                let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("fuzz/regressions")
                    .join(t.name);
                let path = dir.join(format!("crash-{}", hex_hash(&input)));
                let kept =
                    std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &input));
                match kept {
                    Ok(()) => eprintln!("{}: a crash, kept in {}", t.name, path.display()),
                    Err(e) => eprintln!("{}: a crash, not kept ({e})", t.name),
                }
            }
        }
    }
    Report {
        name: t.name,
        cases: n,
        past_limits: past,
        accepted,
        crashes,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

fn main() {
    let quick = std::env::var("QUARRY_BENCH").is_ok_and(|v| v == "quick");
    // A panic is counted and its input kept: its message once, not a backtrace per case.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let mut reports = Vec::new();
    for t in targets::all() {
        let r = run(&t, quick);
        println!(
            "fuzz {:<16} cases {:>8}  past the limits {:>8}  accepted {:>7}  crashes {}  ({:.1} s)",
            r.name, r.cases, r.past_limits, r.accepted, r.crashes, r.seconds
        );
        reports.push(r);
    }
    let crashes: u64 = reports.iter().map(|r| r.crashes).sum();
    let fields: Vec<String> = reports
        .iter()
        .map(|r| {
            format!(
                "\"{}\":{{\"cases\":{},\"past_limits\":{},\"crashes\":{}}}",
                r.name, r.cases, r.past_limits, r.crashes
            )
        })
        .collect();
    println!(
        "{{\"targets\":{{{}}},\"crashes\":{crashes},\"quick\":{quick}}}",
        fields.join(",")
    );
    if crashes > 0 {
        eprintln!("{crashes} crashes: the inputs are kept under node/fuzz/regressions/");
        std::process::exit(1);
    }
}
