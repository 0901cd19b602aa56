//! A tiny seeded pseudo-random generator (xorshift64*), so a seed alone reproduces a
//! schedule and the clients' choices without a dependency.

use std::time::Duration;

/// xorshift64* seeded through splitmix64 (so nearby seeds give unrelated streams and no
/// seed yields the all-zero state xorshift cannot leave).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`; equal seeds give equal streams.
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(z.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`; the modulo bias is irrelevant at these sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// An index into a collection of `len > 0` items.
    pub fn index(&mut self, len: usize) -> usize {
        let len = u64::try_from(len).expect("length fits u64");
        usize::try_from(self.below(len)).expect("index fits usize")
    }

    /// A duration in `[lo, hi]`, in whole milliseconds.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (millis(lo), millis(hi));
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    /// Picks one of `choices` with probability proportional to its weight.
    pub fn weighted<T: Copy>(&mut self, choices: &[(u64, T)]) -> T {
        let total: u64 = choices.iter().map(|(w, _)| w).sum();
        let mut roll = self.below(total);
        for &(weight, choice) in choices {
            if roll < weight {
                return choice;
            }
            roll -= weight;
        }
        unreachable!("roll below the total weight")
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).expect("duration fits u64 milliseconds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_seeds_give_equal_streams_and_ranges_hold() {
        let (mut a, mut b, mut c) = (Rng::new(7), Rng::new(7), Rng::new(8));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..100).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        let (lo, hi) = (Duration::from_millis(5), Duration::from_millis(9));
        for _ in 0..1000 {
            assert!(a.below(3) < 3);
            let d = a.duration(lo, hi);
            assert!(lo <= d && d <= hi, "{d:?}");
            assert_ne!(a.weighted(&[(0, 'x'), (1, 'y'), (2, 'z')]), 'x');
        }
    }
}
