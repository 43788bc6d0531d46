//! Dedupe markers in memory, one table per key group.
//!
//! A marker is what is left of a tracking number once its action was emitted, until the
//! dedupe horizon: at steady state almost all of the join's state (two hours of actions
//! against the seconds most of them are pending). So a marker is 24 bytes in an open hash
//! table: a 128-bit fingerprint of its state key, and its expiry with outcome and parts
//! packed in. It has no timer: a marker past its expiry counts as absent, and the table
//! sweeps expired ones out as the watermark moves on.
//!
//! A fingerprint stands for the key: two keys with the same one would make a new tracking
//! number look like a duplicate. With xxh3's 128 bits and a hundred million markers, the
//! chance per message is about 3·10⁻³¹.
//!
//! In RocksDB a marker is the same 24 bytes ([`Marker::encode`]): a checkpoint stores the
//! markers made since the last one as one *run* per key group, and markers that leave memory
//! are stored one by one, keyed by key group and fingerprint, for lookups.

use hashbrown::HashTable;

use super::{Done, Outcome};

/// A state key's 128-bit fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint([u64; 2]);

impl Fingerprint {
    pub fn of(key: &[u8]) -> Fingerprint {
        let h = xxhash_rust::xxh3::xxh3_128(key);
        Fingerprint([h as u64, (h >> 64) as u64])
    }

    /// The table's hash: half the fingerprint, already uniform.
    fn hash(self) -> u64 {
        self.0[0]
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.0[0].to_be_bytes());
        b[8..].copy_from_slice(&self.0[1].to_be_bytes());
        b
    }
}

/// Expiry, outcome and parts in one word: expiry << 4 | expired outcome << 3 | parts.
/// Expiries are clamped to ±2^59 ms (eighteen million years), which no watermark but the
/// end of input (`i64::MAX`) reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed(i64);

const UNTIL_LIMIT: i64 = i64::MAX >> 4;

impl Packed {
    fn new(done: &Done) -> Packed {
        let until = done.until.clamp(-UNTIL_LIMIT, UNTIL_LIMIT);
        let expired = i64::from(done.outcome == Outcome::Expired);
        Packed(until << 4 | expired << 3 | i64::from(done.parts & 0b111))
    }

    fn until(self) -> i64 {
        self.0 >> 4
    }

    fn done(self) -> Done {
        Done {
            until: self.until(),
            outcome: if self.0 & 0b1000 != 0 {
                Outcome::Expired
            } else {
                Outcome::Completed
            },
            parts: (self.0 & 0b111) as u8,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    fingerprint: Fingerprint,
    packed: Packed,
}

/// Bytes of an encoded marker.
pub const ENCODED_MARKER: usize = 24;

impl Marker {
    pub fn new(fingerprint: Fingerprint, done: &Done) -> Marker {
        Marker {
            fingerprint,
            packed: Packed::new(done),
        }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn until(&self) -> i64 {
        self.packed.until()
    }

    pub fn done(&self) -> Done {
        self.packed.done()
    }

    /// Fingerprint (16 bytes) then expiry, outcome and parts (8), big-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fingerprint.to_bytes());
        out.extend_from_slice(&self.packed.0.to_be_bytes());
    }

    /// The markers encoded back to back in `bytes`; `None` if its length is not a multiple.
    pub fn decode_all(bytes: &[u8]) -> Option<impl Iterator<Item = Marker> + '_> {
        if !bytes.len().is_multiple_of(ENCODED_MARKER) {
            return None;
        }
        Some(bytes.chunks_exact(ENCODED_MARKER).map(|c| {
            let word = |i: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&c[i * 8..(i + 1) * 8]);
                w
            };
            Marker {
                fingerprint: Fingerprint([
                    u64::from_be_bytes(word(0)),
                    u64::from_be_bytes(word(1)),
                ]),
                packed: Packed(i64::from_be_bytes(word(2))),
            }
        }))
    }
}

/// Memory one marker costs the hot tier: its bucket and control byte, with the spare
/// capacity of a table that grows by doubling.
pub const MARKER_BYTES: usize = (std::mem::size_of::<Marker>() + 1) * 3 / 2;

/// The markers of one key group.
pub struct MarkerTable {
    table: HashTable<Marker>,
    /// The next sweep is due when the watermark reaches this.
    next_sweep: i64,
}

impl Default for MarkerTable {
    fn default() -> MarkerTable {
        MarkerTable {
            table: HashTable::new(),
            next_sweep: i64::MIN,
        }
    }
}

impl MarkerTable {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The live marker of a key: one whose expiry the watermark has not passed (a timer at
    /// the expiry would not have fired).
    pub fn get(&self, fingerprint: Fingerprint, watermark: i64) -> Option<Done> {
        self.table
            .find(fingerprint.hash(), |m| m.fingerprint == fingerprint)
            .map(|m| m.packed)
            .filter(|p| p.until() >= watermark)
            .map(Packed::done)
    }

    /// Sets a key's marker; whether the table grew (an expired marker of the key may still be
    /// there).
    pub fn insert(&mut self, fingerprint: Fingerprint, done: &Done) -> bool {
        self.insert_marker(Marker::new(fingerprint, done))
    }

    pub fn insert_marker(&mut self, marker: Marker) -> bool {
        let Marker {
            fingerprint,
            packed,
        } = marker;
        match self.table.entry(
            fingerprint.hash(),
            |m| m.fingerprint == fingerprint,
            |m| m.fingerprint.hash(),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                o.get_mut().packed = packed;
                false
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Marker {
                    fingerprint,
                    packed,
                });
                true
            }
        }
    }

    /// Drops the expired markers when a sweep is due (every `interval` of the watermark, so
    /// an expired marker stays at most that long); how many went.
    pub fn sweep(&mut self, watermark: i64, interval: i64) -> usize {
        if watermark < self.next_sweep {
            return 0;
        }
        self.next_sweep = watermark.saturating_add(interval);
        let before = self.table.len();
        self.table.retain(|m| m.packed.until() >= watermark);
        if self.table.is_empty() {
            // A key group that went quiet gives its memory back.
            self.table = HashTable::new();
        }
        before - self.table.len()
    }

    /// Empties the table; its markers that are live at `watermark`.
    pub fn take_live(&mut self, watermark: i64) -> Vec<Marker> {
        let table = std::mem::take(&mut self.table);
        table
            .into_iter()
            .filter(|m| m.until() >= watermark)
            .collect()
    }

    /// Empties the table.
    pub fn clear(&mut self) {
        self.table = HashTable::new();
    }
}

/// Bits of a cold-marker filter per marker: with [`FILTER_PROBES`] probes, about one key in a
/// hundred that has no cold marker is looked up anyway.
const FILTER_BITS_PER_MARKER: usize = 10;
const FILTER_PROBES: u64 = 7;

/// Which fingerprints may be among a key group's cold markers (markers that left memory and
/// are stored one by one). Without it, every tracking number of the key group that is not in
/// memory would cost a RocksDB lookup until the last cold marker expires: the whole dedupe
/// horizon after an eviction. A Bloom filter per batch of markers that left together, at
/// about a twentieth of their memory, kept until every marker of the batch has expired. It
/// never says no to a cold marker that is still live; a false yes only costs the lookup.
#[derive(Debug, Default)]
pub struct ColdMarkers {
    /// (latest expiry of the batch's markers, filter bits), oldest first.
    batches: std::collections::VecDeque<(i64, Box<[u64]>)>,
}

impl ColdMarkers {
    /// Bit positions of a fingerprint in a filter of `words` words (a power of two): double
    /// hashing on the half of the fingerprint the marker table does not hash by.
    fn positions(fingerprint: Fingerprint, words: usize) -> impl Iterator<Item = u64> {
        let mask = (words as u64 * 64) - 1;
        let (a, b) = (fingerprint.0[1], fingerprint.0[0].rotate_left(32) | 1);
        (0..FILTER_PROBES).map(move |i| a.wrapping_add(i.wrapping_mul(b)) & mask)
    }

    /// Adds a batch of markers that leave memory; the bytes its filter takes.
    pub fn add(&mut self, markers: &[Marker]) -> usize {
        let Some(latest) = markers.iter().map(Marker::until).max() else {
            return 0;
        };
        let words = (markers.len() * FILTER_BITS_PER_MARKER)
            .div_ceil(64)
            .next_power_of_two();
        let mut bits = vec![0u64; words].into_boxed_slice();
        for m in markers {
            for p in Self::positions(m.fingerprint, words) {
                bits[(p / 64) as usize] |= 1 << (p % 64);
            }
        }
        self.batches.push_back((latest, bits));
        words * 8
    }

    /// Whether a live cold marker may have this fingerprint.
    pub fn may_contain(&self, fingerprint: Fingerprint, watermark: i64) -> bool {
        self.batches.iter().any(|(latest, bits)| {
            *latest >= watermark
                && Self::positions(fingerprint, bits.len())
                    .all(|p| bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
        })
    }

    /// Drops the filters whose markers have all expired; the bytes freed.
    pub fn expire(&mut self, watermark: i64) -> usize {
        let mut freed = 0;
        self.batches.retain(|(latest, bits)| {
            let live = *latest >= watermark;
            if !live {
                freed += bits.len() * 8;
            }
            live
        });
        freed
    }

    pub fn bytes(&self) -> usize {
        self.batches.iter().map(|(_, bits)| bits.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn done(until: i64, outcome: Outcome, parts: u8) -> Done {
        Done {
            until,
            outcome,
            parts,
        }
    }

    #[test]
    fn a_marker_reads_back_as_written_until_it_expires() {
        let a = Fingerprint::of(b"\0\x07tn-a");
        let b = Fingerprint::of(b"\0\x07tn-b");
        for d in [
            done(1_763_800_000_000, Outcome::Completed, 0b111),
            done(-5, Outcome::Expired, 0b010),
        ] {
            let mut table = MarkerTable::default();
            assert!(table.insert(a, &d));
            assert_eq!(table.get(a, d.until), Some(d), "live up to its expiry");
            assert_eq!(table.get(a, d.until + 1), None, "gone after it");
            assert_eq!(table.get(b, i64::MIN), None);
            assert_eq!(table.sweep(d.until + 1, 1000), 1);
            assert_eq!(table.len(), 0);
        }
        // Beyond the packed range: expires only at the end of input.
        let mut table = MarkerTable::default();
        assert!(table.insert(a, &done(i64::MAX / 4, Outcome::Completed, 1)));
        assert!(table.get(a, 1 << 58).is_some());
        assert_eq!(table.get(a, i64::MAX), None);
    }

    #[test]
    fn sweeps_wait_for_their_interval_and_keep_live_markers() {
        let mut table = MarkerTable::default();
        for i in 0..100i64 {
            let fp = Fingerprint::of(&i.to_be_bytes());
            table.insert(fp, &done(i * 10, Outcome::Completed, 0b111));
        }
        assert_eq!(table.sweep(500, 300), 50);
        assert_eq!(table.sweep(700, 300), 0, "not due before 800");
        assert_eq!(table.sweep(800, 300), 30);
        assert_eq!(table.len(), 20);
        let live = table.take_live(900);
        assert_eq!(live.len(), 10);
        assert_eq!(table.len(), 0);
        // Encoded back to back and read back.
        let mut bytes = Vec::new();
        live.iter().for_each(|m| m.encode(&mut bytes));
        assert_eq!(bytes.len(), 10 * ENCODED_MARKER);
        let decoded: Vec<Marker> = Marker::decode_all(&bytes).unwrap().collect();
        assert_eq!(decoded, live);
        assert!(Marker::decode_all(&bytes[1..]).is_none());
    }

    #[test]
    fn a_marker_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Marker>(), 24);
    }

    #[test]
    fn cold_marker_filters_know_every_live_marker_and_few_others() {
        let mut cold = ColdMarkers::default();
        let marker = |i: u32, until: i64| {
            Marker::new(
                Fingerprint::of(format!("key-{i}").as_bytes()),
                &done(until, Outcome::Completed, 0b111),
            )
        };
        let first: Vec<Marker> = (0..10_000)
            .map(|i| marker(i, 100 + i64::from(i % 7)))
            .collect();
        let second: Vec<Marker> = (10_000..20_000).map(|i| marker(i, 500)).collect();
        let bytes = cold.add(&first) + cold.add(&second);
        assert_eq!(cold.bytes(), bytes);
        assert!(
            bytes < 20_000 * 3,
            "{bytes} bytes: well under the 24 of a marker each"
        );
        for m in first.iter().chain(&second) {
            assert!(cold.may_contain(m.fingerprint(), 0), "no false no");
        }
        let others = (20_000..120_000)
            .filter(|i| cold.may_contain(marker(*i, 0).fingerprint(), 0))
            .count();
        assert!(others < 2_000, "{others} false yeses in 100,000");

        // The first batch has expired at 107: its markers are not asked about any more.
        assert!(!cold.may_contain(first[0].fingerprint(), 107));
        assert!(cold.may_contain(second[0].fingerprint(), 107));
        assert!(cold.expire(107) > 0);
        assert!(cold.may_contain(second[0].fingerprint(), 500));
        assert!(cold.expire(501) > 0);
        assert_eq!(
            (cold.bytes(), cold.may_contain(second[0].fingerprint(), 0)),
            (0, false)
        );
        assert_eq!(cold.add(&[]), 0);
    }
}
