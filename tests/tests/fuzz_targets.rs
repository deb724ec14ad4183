//! The fuzz targets (`fuzz/src/lib.rs`) over their seeds and deterministic mutations of them:
//! the short, stable-toolchain run of every target that the test suite does on each change
//! (`scripts/fuzz.sh` runs the same targets under libFuzzer for millions of executions).
//!
//! An allocation larger than the input justifies is itself a finding: the targets' allocator
//! refuses any single allocation above `targets::LIMIT` made while a target runs, which aborts
//! the process with Rust's "memory allocation of N bytes failed".

// The targets' module wraps the system allocator (see there).
#![allow(unsafe_code)]

use std::path::Path;

#[path = "../../fuzz/src/lib.rs"]
mod targets;

/// A small deterministic generator (xorshift64*), so every run tries the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that break size arithmetic: zero, one, sign boundaries, powers of two, all ones.
const INTERESTING: [u64; 9] = [
    0,
    1,
    0x7F,
    0xFF,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    1 << 40,
    0x7FFF_FFFF_FFFF_FFFF,
    u64::MAX,
];

/// Numbers a JSON file could hold instead of a sensible size.
const NUMBERS: [&str; 8] = [
    "0",
    "-1",
    "1e308",
    "1099511627776",
    "18446744073709551615",
    "0.5",
    "-0",
    "3",
];

/// One mutation of `seed`: bit flips, interesting integers written over header fields, cuts,
/// duplicated or deleted chunks, and (in text) numbers replaced by hostile ones.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = INTERESTING[rng.below(INTERESTING.len())] as u8;
            }
            2 if len >= 8 => {
                // Header fields (counts, lengths, offsets) sit near the start: favour it.
                let i = if rng.below(2) == 0 {
                    rng.below(len.min(512) - 7)
                } else {
                    rng.below(len - 7)
                };
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let width = [4, 8][rng.below(2)];
                data[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            3 => data.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = data[a..b].to_vec();
                let at = rng.below(len);
                data.splice(at..at, chunk);
            }
            5 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                data.drain(a..b);
            }
            _ => {
                // A run of ASCII digits becomes a hostile number.
                let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
                if digits.is_empty() {
                    continue;
                }
                let start = digits[rng.below(digits.len())];
                let mut end = start;
                while end < len && (data[end].is_ascii_digit() || data[end] == b'.') {
                    end += 1;
                }
                let number = NUMBERS[rng.below(NUMBERS.len())].as_bytes().to_vec();
                data.splice(start..end, number);
            }
        }
    }
    data
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seeds of `target`: the committed ones in `fuzz/seeds/TARGET/` and the fixtures that
/// are real inputs of its kind.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let fixtures = cinder_tests::fixtures();
    let folders = [
        "gpt2-tiny",
        "llama-tiny",
        "gpt2-ml-tiny",
        "t5-tiny",
        "bert-tiny",
    ];
    let with_pick = |file: &str| -> Vec<Vec<u8>> {
        folders
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut seed = vec![i as u8];
                seed.extend(read(&fixtures.join(f).join(file)));
                seed
            })
            .collect()
    };
    let mut out = match target {
        "gguf" => vec![
            read(&fixtures.join("llama-tiny-f32.gguf")),
            read(&fixtures.join("llama-tiny-q4_0.gguf")),
        ],
        "safetensors" => with_pick("model.safetensors"),
        "config" => with_pick("config.json"),
        "tokenizer" => folders
            .iter()
            .map(|f| read(&fixtures.join(f).join("tokenizer.json")))
            .collect(),
        _ => Vec::new(),
    };
    let committed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    if let Ok(entries) = std::fs::read_dir(&committed) {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        out.extend(paths.iter().map(|p| read(p)));
    }
    out
}

/// The inputs libFuzzer found crashing `target`, kept after the fix (`fuzz/regressions/TARGET/`):
/// they must run without a crash, accepted or not.
fn regressions(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths.iter().map(|p| read(p)).collect()
}

/// Runs `target` over its regressions, its seeds and `mutations` mutations of them, guarded
/// against oversized allocations. Returns the number of executions.
fn exercise(name: &str, target: targets::Target, mutations: usize) -> usize {
    let fixed = regressions(name);
    for input in &fixed {
        targets::guarded(|| target(input));
    }
    let seeds = seeds(name);
    assert!(!seeds.is_empty(), "no seeds for the {name} target");
    // Every seed is a real input: it must go all the way through (loaded, then run), or the
    // mutations would only ever explore the first error path.
    for (i, seed) in seeds.iter().enumerate() {
        assert!(target(seed), "seed {i} of the {name} target was refused");
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    let inputs: Vec<Vec<u8>> = (0..mutations)
        .map(|i| mutate(&seeds[i % seeds.len()], &mut rng))
        .collect();
    let mut accepted = 0;
    for input in &inputs {
        accepted += usize::from(targets::guarded(|| target(input)));
    }
    eprintln!(
        "{name}: {accepted} of {} mutated inputs accepted",
        inputs.len()
    );
    fixed.len() + seeds.len() + inputs.len()
}

/// Mutations per target: about ten seconds in all on two cores.
fn budget(name: &str) -> usize {
    match name {
        // Each accepted input builds a model and decodes, or trains a step.
        "gguf" | "safetensors" | "config" | "run_folder" => 4000,
        _ => 20_000,
    }
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_their_mutations() {
    for (name, target) in targets::TARGETS {
        let started = std::time::Instant::now();
        let runs = exercise(name, target, budget(name));
        eprintln!(
            "{name}: {runs} executions in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}
