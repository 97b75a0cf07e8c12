//! Keys and randomness: which key each request touches, encoded as etcd's
//! benchmark encodes it, so the two tools load the same key space.

/// A small, fast, seedable pseudo-random generator (SplitMix64).
///
/// Load generation needs speed and independence between clients, not
/// cryptographic quality, so this avoids a dependency. The chaos tester
/// (`crate::chaos`) uses it too, through `crate::bench::SplitMix64`.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator that starts from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), by multiply-and-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A float in `[0, 1)`, from the top 53 bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the key index of each request: in order, or uniformly at random.
#[derive(Debug, Clone)]
pub struct KeyChooser {
    key_space: u64,
    sequential: bool,
    rng: SplitMix64,
}

impl KeyChooser {
    /// A chooser over `key_space` keys (at least 1); `seed` drives the random choice.
    pub fn new(key_space: u64, sequential: bool, seed: u64) -> Self {
        KeyChooser {
            key_space: key_space.max(1),
            sequential,
            rng: SplitMix64::new(seed),
        }
    }

    /// The key index for the `request`-th request of the run (counted from 0).
    pub fn index(&mut self, request: u64) -> u64 {
        if self.sequential {
            request % self.key_space
        } else {
            self.rng.below(self.key_space)
        }
    }

    /// The number of keys this chooser picks from.
    pub fn key_space(&self) -> u64 {
        self.key_space
    }
}

/// Bytes that Go's `binary.PutVarint` writes for `index` (zigzag, then LEB128).
fn varint(index: u64) -> Vec<u8> {
    // Zigzag of a non-negative i64 is 2*x; indexes above i64::MAX do not occur
    // (the key space is a u64 but bounded far below that in practice).
    let mut v = index << 1;
    let mut out = Vec::with_capacity(10);
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// The smallest `--key-size` that can hold every key of a `key_space`-key space.
pub fn min_key_size(key_space: u64) -> usize {
    varint(key_space.saturating_sub(1)).len()
}

/// The key for `index`, as etcd's benchmark makes it: the zigzag varint of the
/// index at the front of `key_size` zero bytes (longer if it does not fit).
pub fn encode_key(index: u64, key_size: usize) -> Vec<u8> {
    let mut key = varint(index);
    if key.len() < key_size {
        key.resize(key_size, 0);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_etcd_benchmark_keys() {
        // Go: k := make([]byte, 8); binary.PutVarint(k, 0|1|64|300)
        assert_eq!(encode_key(0, 8), vec![0; 8]);
        assert_eq!(encode_key(1, 8), vec![2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_key(64, 8), vec![0x80, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_key(300, 4), vec![0xd8, 0x04, 0, 0]);
        // Too small a key size grows the key rather than truncate it.
        assert_eq!(encode_key(300, 1), vec![0xd8, 0x04]);
    }

    #[test]
    fn min_key_size_fits_the_largest_index() {
        assert_eq!(min_key_size(1), 1);
        assert_eq!(min_key_size(64), 1);
        assert_eq!(min_key_size(65), 2);
        assert_eq!(min_key_size(100_000), 3);
        for space in [1u64, 2, 63, 64, 65, 8192, 8193, 100_000] {
            assert_eq!(encode_key(space - 1, min_key_size(space)).len(), min_key_size(space));
        }
    }

    #[test]
    fn distinct_indexes_give_distinct_keys() {
        let keys: std::collections::HashSet<_> = (0..10_000).map(|i| encode_key(i, 8)).collect();
        assert_eq!(keys.len(), 10_000);
    }

    #[test]
    fn sequential_keys_wrap_around_the_key_space() {
        let mut chooser = KeyChooser::new(3, true, 42);
        let picked: Vec<u64> = (0..7).map(|i| chooser.index(i)).collect();
        assert_eq!(picked, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn random_keys_stay_in_the_key_space_and_cover_it() {
        let mut chooser = KeyChooser::new(10, false, 7);
        let mut seen = [0u32; 10];
        for i in 0..10_000 {
            let k = chooser.index(i);
            assert!(k < 10);
            seen[k as usize] += 1;
        }
        // Roughly uniform: each of 10 keys gets about 1000 of 10000 picks.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        let mut one = KeyChooser::new(1, false, 7);
        assert!((0..100).all(|i| one.index(i) == 0));
    }

    #[test]
    fn random_keys_differ_between_seeds() {
        let a: Vec<u64> = {
            let mut c = KeyChooser::new(1 << 40, false, 1);
            (0..8).map(|i| c.index(i)).collect()
        };
        let b: Vec<u64> = {
            let mut c = KeyChooser::new(1 << 40, false, 2);
            (0..8).map(|i| c.index(i)).collect()
        };
        assert_ne!(a, b);
    }

    #[test]
    fn unit_floats_are_in_range_and_spread() {
        let mut rng = SplitMix64::new(3);
        let xs: Vec<f64> = (0..10_000).map(|_| rng.unit_f64()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let below_half = xs.iter().filter(|&&x| x < 0.5).count();
        assert!((4_700..5_300).contains(&below_half), "{below_half}");
    }
}
