//! An event time that may be absent, in 8 bytes.

/// A time in milliseconds, or none: an `Option<i64>` in 8 bytes instead of 16 (no real time
/// is `i64::MIN`, which stands for none). The join's hot-map slots and the process stage's
/// instances hold such times by the million, and an instance of at most 128 bytes is moved
/// with a few vector moves instead of a `memcpy` call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MaybeTime(i64);

impl MaybeTime {
    pub const NONE: MaybeTime = MaybeTime(i64::MIN);

    pub fn at(time: i64) -> MaybeTime {
        MaybeTime(time)
    }

    pub fn get(self) -> Option<i64> {
        (self.0 != i64::MIN).then_some(self.0)
    }

    pub fn is_none(self) -> bool {
        self.0 == i64::MIN
    }
}

impl Default for MaybeTime {
    fn default() -> MaybeTime {
        MaybeTime::NONE
    }
}

impl From<Option<i64>> for MaybeTime {
    fn from(time: Option<i64>) -> MaybeTime {
        time.map_or(MaybeTime::NONE, MaybeTime)
    }
}

impl std::fmt::Debug for MaybeTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::MaybeTime;

    #[test]
    fn a_time_reads_back_as_the_option_it_was_made_from() {
        for time in [
            None,
            Some(0),
            Some(-1),
            Some(1_763_798_400_000),
            Some(i64::MAX),
        ] {
            assert_eq!(MaybeTime::from(time).get(), time);
            assert_eq!(MaybeTime::from(time).is_none(), time.is_none());
        }
        assert_eq!(MaybeTime::default(), MaybeTime::NONE);
        assert_eq!(format!("{:?}", MaybeTime::at(5)), "Some(5)");
    }
}
