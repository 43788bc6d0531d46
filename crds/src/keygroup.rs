//! Key groups: the fixed set of shards that state is split into (Flink's key groups,
//! RisingWave's vnodes). Shared by the worker (routing, state-key prefixes) and the operator
//! (assignments), so both compute exactly the same thing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default number of key groups: divisible by 1..=6, 8, 10, 12, 15, 20, 24, 30, 40, 60, so
/// most replica counts get equal shares.
pub const DEFAULT_KEY_GROUPS: u16 = 120;
/// Upper bound on key groups (as in Flink); state keys carry the group as a big-endian u16.
pub const MAX_KEY_GROUPS: u16 = 32_768;

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    // Java's int arithmetic: the length is truncated to 32 bits and everything wraps.
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() == 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The key group of a key: `(murmur2(key) & 0x7fffffff) % key_groups`, the partition Kafka's
/// default Java partitioner picks for the same key on a topic with `key_groups` partitions.
pub fn key_group(key: &[u8], key_groups: u16) -> u16 {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    // The remainder is below key_groups, so it fits in u16.
    (positive % u32::from(key_groups.max(1))) as u16
}

/// A contiguous, half-open range of key groups `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyGroupRange {
    /// First key group in the range.
    pub start: u16,
    /// One past the last key group in the range.
    pub end: u16,
}

impl KeyGroupRange {
    pub fn len(&self) -> u16 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, key_group: u16) -> bool {
        (self.start..self.end).contains(&key_group)
    }

    pub fn iter(&self) -> std::ops::Range<u16> {
        self.start..self.end
    }
}

impl std::fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            f.write_str("none")
        } else {
            write!(f, "{}-{}", self.start, self.end - 1)
        }
    }
}

/// The range worker `ordinal` of `replicas` owns when key groups are split evenly: contiguous,
/// in ordinal order, sizes differing by at most one. Scale-from-scratch assignments use it;
/// a worker without an explicit assignment derives its own from its pod ordinal.
pub fn even_range(ordinal: u32, replicas: u32, key_groups: u16) -> KeyGroupRange {
    if replicas == 0 || ordinal >= replicas {
        return KeyGroupRange { start: 0, end: 0 };
    }
    let kg = u64::from(key_groups);
    let bound = |i: u64| (i * kg / u64::from(replicas)) as u16;
    KeyGroupRange {
        start: bound(u64::from(ordinal)),
        end: bound(u64::from(ordinal) + 1),
    }
}

/// Every worker's range for an even split, in ordinal order.
pub fn even_assignment(replicas: u32, key_groups: u16) -> Vec<KeyGroupRange> {
    (0..replicas)
        .map(|i| even_range(i, replicas, key_groups))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn key_group_is_positive_murmur_modulo() {
        // (-973932308 & 0x7fffffff) = 1173551340; 1173551340 % 120 = 60.
        assert_eq!(key_group(b"21", 120), 60);
        for n in [1u16, 7, 120, MAX_KEY_GROUPS] {
            for key in ["", "a", "tn-000001", "🦀"] {
                assert!(key_group(key.as_bytes(), n) < n);
            }
        }
    }

    #[test]
    fn even_assignment_covers_every_group_once() {
        for key_groups in [1u16, 7, 120, 128] {
            for replicas in 1..=12u32 {
                let ranges = even_assignment(replicas, key_groups);
                let mut next = 0;
                for r in &ranges {
                    assert_eq!(r.start, next, "ranges are contiguous and ordered");
                    next = r.end;
                }
                assert_eq!(next, key_groups);
                let sizes: Vec<u16> = ranges.iter().map(KeyGroupRange::len).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "{sizes:?}");
            }
        }
        assert!(even_range(3, 3, 120).is_empty());
        assert_eq!(even_range(1, 3, 120), KeyGroupRange { start: 40, end: 80 });
    }
}
