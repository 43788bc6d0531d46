//! Status conditions whose `lastTransitionTime` changes only when their status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a reconcile decides it; [`merge`] adds the times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Decided {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Decided {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// The new conditions: each decided one, keeping the previous `lastTransitionTime` when its
/// status did not change; conditions not decided this time are kept as they were.
pub fn merge(
    previous: &[Condition],
    decided: &[Decided],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| !decided.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    for d in decided {
        let status = if d.status { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == d.type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        out.push(Condition {
            type_: d.type_.to_string(),
            status: status.to_string(),
            reason: d.reason.clone(),
            message: d.message.clone(),
            observed_generation: generation,
            last_transition_time: since,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let ready = |s| Decided::new("Ready", s, "R", "m");
        let first = merge(&[], &[ready(false)], Some(1), &at(100));
        assert_eq!(first[0].last_transition_time, at(100));
        let same = merge(
            &first,
            &[Decided::new("Ready", false, "Other", "x")],
            Some(2),
            &at(200),
        );
        assert_eq!(same[0].last_transition_time, at(100));
        assert_eq!(same[0].reason, "Other");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[ready(true)], Some(2), &at(300));
        assert_eq!(flipped[0].last_transition_time, at(300));
        let other = merge(
            &flipped,
            &[Decided::new("Degraded", false, "D", "")],
            Some(2),
            &at(400),
        );
        assert_eq!(other.len(), 2, "undecided conditions stay");
    }
}
