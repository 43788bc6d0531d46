//! A mergeable quantile sketch for step durations (DDSketch's logarithmic buckets): every
//! quantile it reports is within 1% of a true value, and two sketches merge by adding bucket
//! counts, so partial aggregates of any split of key groups and windows add up exactly.
//! Values can also be taken out again (a late action that changes an instance's history
//! retracts the durations it had contributed), so counts are signed and the sum is kept in
//! whole milliseconds, which adds and subtracts without rounding.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

/// Relative accuracy of the quantiles.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Durations below this (seconds) count in the zero bucket.
const MIN_SECONDS: f64 = 1e-3;

/// A sketch's buckets.
pub type Buckets = SmallVec<[(i32, i64); 2]>;

/// `gamma().ln()`, which a value's bucket divides by: a constant, not two logarithms per value
/// (a test checks it is the same double).
const LN_GAMMA: f64 = 0.020_000_666_706_669_435;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    pub count: i64,
    /// Sum of the values in milliseconds, for the mean.
    pub sum_ms: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub zero: i64,
    /// (bucket index, count), sorted by index, no zero counts; bucket `i` holds values in
    /// `(γ^(i-1), γ^i]` seconds. A vector, not a map, with room for two in place: most
    /// sketches of a window hold one or two buckets, and the millions of them held for the
    /// retention then cost no allocation of their own. Serialized as a map from index to
    /// count.
    #[serde(with = "as_map")]
    pub buckets: Buckets,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Sketch {
    pub fn add(&mut self, millis: i64) {
        self.add_weighted(millis, 1);
    }

    /// Adds a value `weight` times (negative: takes it out again).
    pub fn add_weighted(&mut self, millis: i64, weight: i64) {
        let millis = millis.max(0);
        self.count += weight;
        self.sum_ms += millis * weight;
        let seconds = millis as f64 / 1000.0;
        if seconds < MIN_SECONDS {
            self.zero += weight;
        } else {
            let index = (seconds.ln() / LN_GAMMA).ceil() as i32;
            self.add_to_bucket(index, weight);
        }
    }

    fn add_to_bucket(&mut self, index: i32, n: i64) {
        match self.buckets.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => {
                self.buckets[at].1 += n;
                if self.buckets[at].1 == 0 {
                    self.buckets.remove(at);
                }
            }
            Err(at) if n != 0 => self.buckets.insert(at, (index, n)),
            Err(_) => {}
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.count += other.count;
        self.sum_ms += other.sum_ms;
        self.zero += other.zero;
        for (i, n) in &other.buckets {
            self.add_to_bucket(*i, *n);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.buckets.is_empty() && self.zero == 0
    }

    /// Mean in seconds.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms as f64 / 1000.0 / self.count as f64)
    }

    /// The `q` quantile (0..=1) in seconds, within [`RELATIVE_ACCURACY`] of a value of the
    /// input.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.quantile_bucket(q)
            .map(|bucket| bucket.map_or(0.0, bucket_value))
    }

    /// The bucket of the `q` quantile: `Some(None)` for the zero bucket, `None` for an
    /// empty sketch. Its value is [`bucket_value`] (a function of the bucket alone, so a
    /// writer may keep its text).
    pub fn quantile_bucket(&self, q: f64) -> Option<Option<i32>> {
        if self.count <= 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as i64;
        if rank < self.zero {
            return Some(None);
        }
        let mut seen = self.zero;
        for (i, n) in &self.buckets {
            seen += n;
            if seen > rank {
                return Some(Some(*i));
            }
        }
        None
    }
}

/// The value (seconds) a bucket reports: the middle of its range in relative terms.
pub fn bucket_value(index: i32) -> f64 {
    let g = gamma();
    2.0 * g.powi(index) / (g + 1.0)
}

/// Buckets as a JSON map from index to count, as they were when they were a map.
mod as_map {
    use super::*;

    pub fn serialize<S: Serializer>(buckets: &[(i32, i64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(buckets.iter().map(|(i, n)| (i, n)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Buckets, D::Error> {
        let map = BTreeMap::<i32, i64>::deserialize(d)?;
        Ok(map.into_iter().filter(|(_, n)| *n != 0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_relative_accuracy() {
        let values: Vec<f64> = (1..=10_000).map(|i| f64::from(i) * 0.37).collect();
        let mut sketch = Sketch::default();
        values.iter().for_each(|v| sketch.add((*v * 1000.0) as i64));
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            let exact = values[(q * (values.len() - 1) as f64).floor() as usize];
            let got = sketch.quantile(q).unwrap();
            assert!(
                (got - exact).abs() <= exact * RELATIVE_ACCURACY * 1.0001,
                "q{q}: {got} vs {exact}"
            );
        }
        assert!((sketch.mean().unwrap() - 1850.185).abs() < 1e-3);
    }

    #[test]
    fn the_bucket_divisor_is_the_logarithm_of_gamma() {
        assert_eq!(LN_GAMMA.to_bits(), gamma().ln().to_bits());
    }

    #[test]
    fn taking_values_out_restores_the_sketch() {
        let mut a = Sketch::default();
        [5, 70_000, 1_200].iter().for_each(|v| a.add(*v));
        let before = a.clone();
        a.add(33_000);
        a.add(0);
        a.add_weighted(33_000, -1);
        a.add_weighted(0, -1);
        assert_eq!(a, before);
    }

    proptest::proptest! {
        #[test]
        fn merging_equals_adding_everything_to_one(
            values in proptest::collection::vec(0i64..10_000_000_000, 0..200),
            split in 0usize..200,
        ) {
            let mut whole = Sketch::default();
            values.iter().for_each(|v| whole.add(*v));
            let (a, b) = values.split_at(split.min(values.len()));
            let mut left = Sketch::default();
            a.iter().for_each(|v| left.add(*v));
            let mut right = Sketch::default();
            b.iter().for_each(|v| right.add(*v));
            left.merge(&right);
            proptest::prop_assert_eq!(&left.buckets, &whole.buckets);
            proptest::prop_assert_eq!(left.count, whole.count);
            proptest::prop_assert_eq!(left.quantile(0.9), whole.quantile(0.9));
        }
    }
}
