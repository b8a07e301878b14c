//! Progress lines, deterministic randomness and blocking calls: what every section uses.

use std::time::Instant;

pub static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
/// Set when the test bed goes away, so the watch tasks stop complaining.
pub static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

pub fn step(msg: &str) {
    println!("\n[{:6.1}s] ==> {msg}", elapsed());
}

pub fn progress(msg: &str) {
    println!("[{:6.1}s]     {msg}", elapsed());
}

/// Runs blocking work (process start and stop, kubectl) without stalling the watch tasks.
pub fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// splitmix64: deterministic, so two runs make the same changes.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}
