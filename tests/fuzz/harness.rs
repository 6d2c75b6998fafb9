//! The fuzz driver: a counting global allocator that bounds every single allocation made while a
//! parser runs, a seeded loop over `arbtest` cases with a per-target execution count, and
//! byte-level mutations of seed inputs.
//!
//! Bound: while a parser reads an input of `n` bytes, no single allocation may exceed
//! `64 × n + 1 MiB` (the 64 covers a `Vec` of 32-byte values grown by doubling; the MiB covers
//! fixed tables such as a tokenizer's regexes).

use arbtest::arbitrary::{Result as ArbResult, Unstructured};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes one allocation may take per input byte.
pub const BYTES_PER_INPUT_BYTE: usize = 64;
/// Bytes one allocation may take whatever the input.
pub const FIXED_ALLOWANCE: usize = 1 << 20;
/// Above this, an over-bound request is not even attempted: the process stops with a message.
const ABORT_ABOVE: usize = 1 << 30;
/// Executions per target when `UNLEARN_FUZZ_ITERS` is not set (keeps the file under a minute).
pub const DEFAULT_ITERS: u64 = 10_000;

thread_local! {
    /// The bound for the running case (0: not bounded).
    static LIMIT: Cell<usize> = const { Cell::new(0) };
    /// The largest single request made while bounded.
    static PEAK: Cell<usize> = const { Cell::new(0) };
    /// The running case's seed, for the abort message.
    static SEED: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, with the largest request of a bounded section recorded.
pub struct BoundedAlloc;

impl BoundedAlloc {
    fn note(size: usize) {
        let limit = LIMIT.with(Cell::get);
        if limit == 0 {
            return;
        }
        PEAK.with(|p| p.set(p.get().max(size)));
        if size > limit && size > ABORT_ABOVE {
            abort_message(size, limit, SEED.with(Cell::get));
        }
    }
}

/// Write the failing request, bound and seed to stderr without allocating, then abort.
fn abort_message(size: usize, limit: usize, seed: u64) -> ! {
    let mut buf = [0u8; 160];
    let mut at = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if at < buf.len() {
                buf[at] = b;
                at += 1;
            }
        }
    };
    let num = |put: &mut dyn FnMut(&[u8]), mut v: u64, base: u64| {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b"0123456789abcdef"[(v % base) as usize];
            v /= base;
            if v == 0 {
                break;
            }
        }
        put(&d[i..]);
    };
    put(b"\nfuzz: one allocation of ");
    num(&mut put, size as u64, 10);
    put(b" bytes exceeds the bound ");
    num(&mut put, limit as u64, 10);
    put(b"; seed 0x");
    num(&mut put, seed, 16);
    put(b"\n");
    // SAFETY: writing a stack buffer to the standard error descriptor.
    unsafe { libc::write(2, buf.as_ptr().cast(), at) };
    std::process::abort()
}

// SAFETY: every call is forwarded to `System` unchanged; only sizes are recorded.
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

/// Run `f` (a parser reading `input_len` bytes) with every single allocation bounded; panics
/// (failing the case, with its seed printed) when one exceeded the bound.
pub fn bounded<T>(input_len: usize, f: impl FnOnce() -> T) -> T {
    let limit = input_len
        .saturating_mul(BYTES_PER_INPUT_BYTE)
        .saturating_add(FIXED_ALLOWANCE);
    PEAK.with(|p| p.set(0));
    LIMIT.with(|l| l.set(limit));
    let out = f();
    LIMIT.with(|l| l.set(0));
    let peak = PEAK.with(Cell::get);
    assert!(
        peak <= limit,
        "one allocation of {peak} bytes for an input of {input_len} bytes (bound {limit})"
    );
    out
}

/// What a target's cases came to.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub rejected: AtomicU64,
}

impl Tally {
    /// Count one parse result.
    pub fn add<T, E>(&self, r: &Result<T, E>) {
        let c = if r.is_ok() { &self.ok } else { &self.rejected };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Executions per target: `UNLEARN_FUZZ_ITERS`, else [`DEFAULT_ITERS`].
fn iterations() -> u64 {
    match std::env::var("UNLEARN_FUZZ_ITERS") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            panic!("UNLEARN_FUZZ_ITERS={v:?}: expected a whole number of executions")
        }),
        Err(_) => DEFAULT_ITERS,
    }
}

/// A case seed for arbtest: a hash of the target and iteration in the high half, the size of
/// the case's random input (cycling from 16 to `max_size` bytes) in the low half.
fn case_seed(target: &str, i: u64, max_size: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.bytes().chain(i.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let span = max_size.saturating_sub(16).max(1) as u64;
    let size = 16 + (h >> 7) % span;
    (h & 0xffff_ffff_0000_0000) | size
}

/// Run a target: `UNLEARN_FUZZ_ITERS` cases (or only `UNLEARN_FUZZ_SEED`, a seed printed by a
/// failure), each with random bytes of up to `max_size`; prints the executions done.
pub fn fuzz(
    target: &str,
    max_size: u32,
    tally: &Tally,
    mut case: impl FnMut(&mut Unstructured) -> ArbResult<()>,
) {
    let start = std::time::Instant::now();
    let seeds: Vec<u64> = match std::env::var("UNLEARN_FUZZ_SEED") {
        Ok(s) => vec![u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("UNLEARN_FUZZ_SEED={s:?}: expected a hex seed"))],
        Err(_) => Vec::new(),
    };
    let n = if seeds.is_empty() { iterations() } else { 1 };
    for i in 0..n {
        let seed = seeds
            .first()
            .copied()
            .unwrap_or_else(|| case_seed(target, i, max_size));
        SEED.with(|s| s.set(seed));
        // A generator that runs out of choices makes a degenerate case, not a failure.
        arbtest::arbtest(|u| {
            let _ = case(u);
            Ok(())
        })
        .seed(seed)
        .run();
    }
    eprintln!(
        "fuzz {target}: {n} executions in {:.1} s, 0 crashes ({} parsed, {} rejected with an error)",
        start.elapsed().as_secs_f64(),
        tally.ok.load(Ordering::Relaxed),
        tally.rejected.load(Ordering::Relaxed),
    );
}

/// Values that break length and count fields.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 60,
    u64::MAX,
];

/// Up to eight random edits of `seed`: bit flips, byte sets, interesting 1/2/4/8-byte
/// little-endian integers, truncation, deleted, duplicated or inserted ranges.
pub fn mutate(u: &mut Unstructured, seed: &[u8]) -> ArbResult<Vec<u8>> {
    let mut b = seed.to_vec();
    for _ in 0..u.int_in_range(0..=8)? {
        let at = if b.is_empty() {
            0
        } else {
            u.choose_index(b.len())?
        };
        match u.int_in_range(0..=6)? {
            0 if !b.is_empty() => b[at] ^= 1 << u.int_in_range(0..=7)?,
            1 if !b.is_empty() => b[at] = u.arbitrary()?,
            2 => {
                let v = *u.choose(&INTERESTING)?;
                let width = *u.choose(&[1usize, 2, 4, 8])?;
                let bytes = v.to_le_bytes();
                for (k, &x) in bytes[..width].iter().enumerate() {
                    if let Some(slot) = b.get_mut(at + k) {
                        *slot = x;
                    }
                }
            }
            3 => b.truncate(at),
            4 => {
                let end = (at + u.int_in_range(1..=64)?).min(b.len());
                b.drain(at..end);
            }
            5 => {
                let end = (at + u.int_in_range(1..=64)?).min(b.len());
                let copy = b[at..end].to_vec();
                let to = u.int_in_range(0..=b.len())?;
                b.splice(to..to, copy);
            }
            _ => {
                let extra: Vec<u8> = (0..u.int_in_range(1..=16)?)
                    .map(|_| u.arbitrary())
                    .collect::<ArbResult<_>>()?;
                b.splice(at..at, extra);
            }
        }
    }
    Ok(b)
}

/// Either a mutation of one of `seeds` or raw random bytes (one case in eight).
pub fn seeded_or_raw(u: &mut Unstructured, seeds: &[Vec<u8>]) -> ArbResult<Vec<u8>> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let seed = u.choose(seeds)?;
    mutate(u, seed)
}
