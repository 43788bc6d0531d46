use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use proptest::prelude::*;

use super::*;

const L: i64 = 3_600_000;
const T0: i64 = 1_763_800_000_000;

fn config(key_groups: u16) -> JoinConfig {
    JoinConfig {
        lateness: L,
        dedupe: 2 * L,
        max_future_skew: 4 * L,
        required: 0b111,
        key_groups,
    }
}

#[derive(Default)]
struct Recorded {
    complete: Vec<(String, u8)>,
    incomplete: Vec<(String, u8)>,
}

impl JoinOutput for Recorded {
    fn action(&mut self, _: u16, tn: &str, parts: &Parts<'_>, _: i64) {
        self.complete.push((tn.to_string(), parts.mask()));
    }
    fn incomplete(&mut self, _: u16, tn: &str, _: &Parts<'_>, missing: u8) {
        self.incomplete.push((tn.to_string(), missing));
    }
}

fn msg(tn: &str, part: Part, t: i64) -> Message<'static> {
    Message {
        part,
        tracking_number: tn.to_string().into(),
        event_time: t,
        fields: match part {
            Part::Request => r#""p":"request""#,
            Part::Response => r#""p":"response""#,
            Part::Tracking => r#""p":"tracking""#,
        },
    }
}

/// A cold tier in memory, with the same contract as the RocksDB one.
#[derive(Default)]
struct MemCold {
    entries: Mutex<BTreeMap<Vec<u8>, Entry>>,
    timers: Mutex<BTreeSet<(u16, i64, Vec<u8>)>>,
    runs: Mutex<BTreeMap<(u16, u64), Vec<Marker>>>,
    points: Mutex<BTreeMap<(u16, Fingerprint), Done>>,
    /// Calls of `get_marker`.
    marker_lookups: std::sync::atomic::AtomicUsize,
}

impl MemCold {
    fn apply(&self, changes: JoinChanges) {
        let mut entries = self.entries.lock().unwrap();
        let mut timers = self.timers.lock().unwrap();
        let mut runs = self.runs.lock().unwrap();
        for (kg, markers) in changes.marker_runs {
            runs.insert((kg, changes.run), markers);
        }
        for run in changes.expired_runs {
            runs.remove(&run);
        }
        self.store_markers(&changes.marker_points).unwrap();
        for change in changes.changes {
            match change {
                Change::Put {
                    key,
                    entry,
                    old_deadline,
                } => {
                    let (kg, _) = split_key(&key);
                    if let Some(old) = old_deadline {
                        timers.remove(&(kg, old, key.to_vec()));
                    }
                    // Like RocksDB: markers have no timer.
                    if let Entry::Pending(pending) = &entry {
                        timers.insert((kg, pending.deadline, key.to_vec()));
                    }
                    entries.insert(key.to_vec(), entry);
                }
                Change::Delete { key, deadline } => {
                    let (kg, _) = split_key(&key);
                    timers.remove(&(kg, deadline, key.to_vec()));
                    entries.remove(&key.to_vec());
                }
            }
        }
    }
}

impl ColdStore for MemCold {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>, StateError> {
        Ok(self.entries.lock().unwrap().get(key).cloned())
    }
    fn due(&self, kg: u16, from: i64, before: i64) -> Result<Vec<ColdTimer>, StateError> {
        let timers = self.timers.lock().unwrap();
        let entries = self.entries.lock().unwrap();
        Ok(timers
            .iter()
            .filter(|(g, d, _)| *g == kg && *d >= from && *d < before)
            .map(|(_, d, k)| ColdTimer {
                deadline: *d,
                key: k.clone(),
                marker: matches!(entries.get(k), Some(Entry::Done(_))),
            })
            .collect())
    }
    fn next_deadline(&self, kg: u16, from: i64) -> Result<Option<i64>, StateError> {
        Ok(self
            .timers
            .lock()
            .unwrap()
            .iter()
            .filter(|(g, d, _)| *g == kg && *d >= from)
            .map(|(_, d, _)| *d)
            .min())
    }
    fn get_marker(&self, kg: u16, fingerprint: Fingerprint) -> Result<Option<Done>, StateError> {
        self.marker_lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self.points.lock().unwrap().get(&(kg, fingerprint)).copied())
    }
    fn for_each_marker_run(
        &self,
        f: &mut dyn FnMut(u16, u64, &[Marker]),
    ) -> Result<(), StateError> {
        for ((kg, run), markers) in self.runs.lock().unwrap().iter() {
            f(*kg, *run, markers);
        }
        Ok(())
    }
    fn store_markers(&self, markers: &[(u16, Vec<Marker>)]) -> Result<(), StateError> {
        let mut points = self.points.lock().unwrap();
        for (kg, markers) in markers {
            for m in markers {
                points.insert((*kg, m.fingerprint()), m.done());
            }
        }
        Ok(())
    }
    fn for_each_entry(&self, f: &mut dyn FnMut(&[u8], StoredKind)) -> Result<(), StateError> {
        for (key, entry) in self.entries.lock().unwrap().iter() {
            let kind = match entry {
                Entry::Pending(_) => StoredKind::Pending,
                Entry::Done(done) => StoredKind::Marker(*done),
            };
            f(key, kind);
        }
        Ok(())
    }
}

fn all(key_groups: u16) -> JoinEngine {
    JoinEngine::new(
        config(key_groups),
        KeyGroupRange {
            start: 0,
            end: key_groups,
        },
    )
}

#[test]
fn a_triple_completes_once_in_any_order_and_leaves_only_a_marker() {
    let mut engine = all(120);
    let mut out = Recorded::default();
    for part in [Part::Tracking, Part::Request, Part::Response] {
        engine
            .process(msg("tn-1", part, T0), &NoCold, &mut out)
            .unwrap();
    }
    assert_eq!(out.complete, [("tn-1".to_string(), 0b111)]);
    assert_eq!(engine.hot_pending(), 0);
    assert_eq!(engine.hot_entries(), 1, "a dedupe marker remains");
    assert_eq!(engine.stats.complete, 1);
}

#[test]
fn duplicates_before_and_after_completion_are_dropped_and_counted() {
    let mut engine = all(120);
    let mut out = Recorded::default();
    engine
        .process(msg("tn-1", Part::Request, T0), &NoCold, &mut out)
        .unwrap();
    engine
        .process(msg("tn-1", Part::Request, T0 + 5), &NoCold, &mut out)
        .unwrap();
    engine
        .process(msg("tn-1", Part::Response, T0 + 10), &NoCold, &mut out)
        .unwrap();
    engine
        .process(msg("tn-1", Part::Tracking, T0 + 20), &NoCold, &mut out)
        .unwrap();
    engine
        .process(msg("tn-1", Part::Tracking, T0 + L / 2), &NoCold, &mut out)
        .unwrap();
    engine.finish(&NoCold, &mut out).unwrap();
    assert_eq!(out.complete.len(), 1);
    assert!(
        out.incomplete.is_empty(),
        "a duplicate after completion must not open a new entry"
    );
    assert_eq!(engine.stats.duplicates, 2);
}

#[test]
fn lateness_expires_an_entry_as_incomplete_and_a_straggler_is_late() {
    let mut engine = all(1);
    let mut out = Recorded::default();
    engine
        .process(msg("a", Part::Request, T0), &NoCold, &mut out)
        .unwrap();
    engine
        .process(msg("a", Part::Response, T0 + 1), &NoCold, &mut out)
        .unwrap();
    // Time moves on in the same key group: the bound passes.
    engine
        .process(msg("b", Part::Request, T0 + L + 1), &NoCold, &mut out)
        .unwrap();
    assert_eq!(
        out.incomplete,
        [("a".to_string(), part_bit(Part::Tracking))]
    );
    let late = engine
        .process(msg("a", Part::Tracking, T0 + L + 2), &NoCold, &mut out)
        .unwrap_err();
    assert!(
        matches!(late, JoinError::Rejected(ref r) if r.reason == DeadLetterReason::Late),
        "{late}"
    );
    // A part more than the lateness behind the watermark opens nothing.
    let stale = engine
        .process(msg("c", Part::Request, T0 - 1), &NoCold, &mut out)
        .unwrap_err();
    assert!(matches!(stale, JoinError::Rejected(ref r) if r.reason == DeadLetterReason::Late));
}

#[test]
fn a_timestamp_far_ahead_of_the_watermark_is_refused_without_moving_time() {
    let mut engine = all(1);
    let mut out = Recorded::default();
    engine
        .process(msg("a", Part::Request, T0), &NoCold, &mut out)
        .unwrap();
    let err = engine
        .process(msg("b", Part::Request, T0 + 10 * L), &NoCold, &mut out)
        .unwrap_err();
    assert!(
        matches!(err, JoinError::Rejected(ref r) if r.reason == DeadLetterReason::FutureEventTime)
    );
    assert_eq!(
        engine.watermarks()[0],
        T0,
        "the refused message did not move time"
    );
    assert!(out.incomplete.is_empty());
}

/// A key group that got nothing for longer than the future skew takes up the time its
/// worker's other key groups reached: its next messages are not refused as "in the future"
/// (it would never move again), and its old pending entry expires. A clock far ahead of
/// everything is still refused, for a key group's first message too.
#[test]
fn a_key_group_quiet_for_longer_than_the_skew_catches_up() {
    let mut engine = all(64);
    let kg = |tn: &str| key_group(tn.as_bytes(), 64);
    let quiet = "q-1";
    let busy: Vec<String> = (0..200)
        .map(|i| format!("b-{i}"))
        .filter(|tn| kg(tn) != kg(quiet))
        .collect();
    let mut out = Recorded::default();
    engine
        .process(msg(quiet, Part::Request, T0), &NoCold, &mut out)
        .unwrap();
    // The others move on by ten times the skew, a step at a time.
    let step = L / 2;
    let mut t = T0;
    for tn in busy.iter().take(80) {
        t += step;
        engine
            .process(msg(tn, Part::Request, t), &NoCold, &mut out)
            .unwrap();
    }
    assert!(t - T0 > 4 * 4 * L, "the others are far ahead: {}", t - T0);
    let same_group = (2..)
        .map(|i| format!("q-{i}"))
        .find(|tn| kg(tn) == kg(quiet))
        .unwrap();
    let before = out.incomplete.len();
    engine
        .process(msg(&same_group, Part::Request, t), &NoCold, &mut out)
        .unwrap_or_else(|e| panic!("the quiet key group's message was refused: {e:?}"));
    assert_eq!(engine.watermarks()[usize::from(kg(quiet))], t);
    assert!(
        out.incomplete[before..].contains(&(quiet.to_string(), 0b110)),
        "its old entry expired: {:?}",
        &out.incomplete[before..]
    );
    let far = engine
        .process(msg("z-1", Part::Request, t + 5 * L), &NoCold, &mut out)
        .unwrap_err();
    assert!(
        matches!(far, JoinError::Rejected(ref r) if r.reason == DeadLetterReason::FutureEventTime)
    );
}

#[test]
fn markers_are_dropped_after_the_dedupe_horizon() {
    let mut engine = all(1);
    let mut out = Recorded::default();
    for part in Part::ALL {
        engine
            .process(msg("a", part, T0), &NoCold, &mut out)
            .unwrap();
    }
    for step in 1..=10 {
        engine
            .process(
                msg(&format!("x{step}"), Part::Request, T0 + step * L / 4),
                &NoCold,
                &mut out,
            )
            .unwrap();
    }
    let a = Fingerprint::of(&state_key(0, "a"));
    assert_eq!(
        engine.markers[0].get(a, i64::MIN),
        None,
        "the marker for a is swept out after 2h"
    );
}

#[test]
fn optional_parts_ride_along_but_never_hold_an_action_back() {
    let mut cfg = config(120);
    cfg.required = part_bit(Part::Request) | part_bit(Part::Response);
    let mut engine = JoinEngine::new(cfg, KeyGroupRange { start: 0, end: 120 });
    let mut out = Recorded::default();
    engine
        .process(msg("a", Part::Tracking, T0), &NoCold, &mut out)
        .unwrap();
    engine
        .process(msg("a", Part::Request, T0), &NoCold, &mut out)
        .unwrap();
    engine
        .process(msg("a", Part::Response, T0), &NoCold, &mut out)
        .unwrap();
    engine
        .process(msg("b", Part::Request, T0), &NoCold, &mut out)
        .unwrap();
    engine
        .process(msg("b", Part::Response, T0), &NoCold, &mut out)
        .unwrap();
    let late = engine.process(msg("b", Part::Tracking, T0), &NoCold, &mut out);
    assert!(matches!(late, Err(JoinError::Rejected(ref r)) if r.reason == DeadLetterReason::Late));
    assert_eq!(
        out.complete,
        [("a".to_string(), 0b111), ("b".to_string(), 0b011)]
    );
}

#[test]
fn evicted_entries_resolve_from_the_cold_tier() {
    let cold = MemCold::default();
    let mut engine = all(4);
    let mut out = Recorded::default();
    engine
        .process(msg("a", Part::Request, T0), &cold, &mut out)
        .unwrap();
    engine
        .process(msg("b", Part::Request, T0), &cold, &mut out)
        .unwrap();
    cold.apply(engine.checkpoint_changes(Evict::Everything { max: usize::MAX }));
    assert_eq!(engine.hot_entries(), 0);
    assert_eq!(engine.hot_bytes(), 0);
    engine
        .process(msg("a", Part::Response, T0 + 1), &cold, &mut out)
        .unwrap();
    engine
        .process(msg("a", Part::Tracking, T0 + 2), &cold, &mut out)
        .unwrap();
    assert_eq!(out.complete, [("a".to_string(), 0b111)]);
    engine.finish(&cold, &mut out).unwrap();
    assert_eq!(out.incomplete, [("b".to_string(), 0b110)]);
    assert_eq!(engine.stats.actions_persisted, 2);
}

/// `n` tracking numbers `<prefix>-<i>`, each completed with all three parts at `T0`.
fn completed_at_t0(
    engine: &mut JoinEngine,
    cold: &MemCold,
    out: &mut Recorded,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for tn in &names {
        for part in Part::ALL {
            engine.process(msg(tn, part, T0), cold, out).unwrap();
        }
    }
    names
}

#[test]
fn evicted_markers_cost_a_lookup_for_their_own_keys_only() {
    let cold = MemCold::default();
    let mut engine = all(4);
    let mut out = Recorded::default();
    let old = completed_at_t0(&mut engine, &cold, &mut out, "old", 2_000);
    cold.apply(engine.checkpoint_changes(Evict::Markers { max: usize::MAX }));
    assert_eq!(engine.hot_markers(), 0, "every marker left memory");
    let lookups = || {
        cold.marker_lookups
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // New tracking numbers: almost none is looked up in the store.
    for i in 0..2_000 {
        let tn = format!("new-{i}");
        engine
            .process(msg(&tn, Part::Request, T0 + 1), &cold, &mut out)
            .unwrap();
    }
    assert!(lookups() < 100, "{} lookups for 2,000 new keys", lookups());
    // Every evicted one is, and is a duplicate.
    let before = lookups();
    for tn in &old {
        engine
            .process(msg(tn, Part::Response, T0 + 2), &cold, &mut out)
            .unwrap();
    }
    assert_eq!(lookups() - before, old.len());
    assert_eq!(engine.stats.duplicates, old.len() as u64);
    assert_eq!(engine.hot_pending(), 2_000, "only the new ones are pending");
}

/// One tracking number's messages in a generated scenario.
#[derive(Clone, Debug)]
struct Case {
    parts: u8,
    dup: u8,
    base: i64,
}

fn scenario() -> impl Strategy<Value = (Vec<Case>, Vec<u32>, Vec<usize>)> {
    let case = (1u8..8, 0u8..8, 0i64..(L / 2)).prop_map(|(parts, dup, base)| Case {
        parts,
        dup: dup & parts,
        base,
    });
    prop::collection::vec(case, 1..60).prop_flat_map(|cases| {
        let n: usize = cases
            .iter()
            .map(|c| (c.parts.count_ones() + c.dup.count_ones()) as usize)
            .sum();
        (
            Just(cases),
            prop::collection::vec(any::<u32>(), n),
            prop::collection::vec(0usize..400, 0..4),
        )
    })
}

/// Every message of the scenario, in an arrival order given by `order` keys; event times
/// all within half the lateness, so no part ever arrives beyond the bound.
fn messages(cases: &[Case], order: &[u32]) -> Vec<Message<'static>> {
    let mut all = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for part in Part::ALL {
            let bit = part_bit(part);
            let copies = u8::from(case.parts & bit != 0) + u8::from(case.dup & bit != 0);
            for c in 0..copies {
                all.push(msg(
                    &format!("tn-{i}"),
                    part,
                    T0 + case.base + i64::from(c) * 1000 + part as i64 * 7,
                ));
            }
        }
    }
    let mut keyed: Vec<(u32, usize, Message<'static>)> = all
        .into_iter()
        .enumerate()
        .map(|(i, m)| (order[i], i, m))
        .collect();
    keyed.sort_by_key(|(k, i, _)| (*k, *i));
    keyed.into_iter().map(|(_, _, m)| m).collect()
}

type Results = (BTreeSet<(String, u8)>, BTreeSet<(String, u8)>, u64);

/// Runs the messages through engines owning `splits` of the key groups, checkpointing (with
/// eviction to a cold tier) after the message indexes in `evict_at`.
fn run(msgs: &[Message<'static>], key_groups: u16, splits: u32, evict_at: &[usize]) -> Results {
    let ranges = weft_crds::keygroup::even_assignment(splits, key_groups);
    let mut engines: Vec<(JoinEngine, MemCold)> = ranges
        .iter()
        .map(|r| {
            // Half the scenarios past the stored-keys limit: every cold key group asks the store.
            let engine = JoinEngine::new(config(key_groups), *r);
            let engine = if evict_at.len() % 2 == 1 {
                engine.with_stored_keys_limit(1)
            } else {
                engine
            };
            (engine, MemCold::default())
        })
        .collect();
    let mut out = Recorded::default();
    for (i, m) in msgs.iter().enumerate() {
        let kg = key_group(m.tracking_number.as_bytes(), key_groups);
        let (engine, cold) = engines
            .iter_mut()
            .find(|(e, _)| e.owned.contains(kg))
            .unwrap();
        engine.process(m.clone(), cold, &mut out).unwrap();
        if let Some(n) = evict_at.iter().position(|at| *at == i) {
            // Alternately markers only and everything.
            let evict = if n % 2 == 0 {
                Evict::Markers { max: usize::MAX }
            } else {
                Evict::Everything { max: 3 + n }
            };
            for (engine, cold) in &mut engines {
                cold.apply(engine.checkpoint_changes(evict));
            }
        }
    }
    let mut duplicates = 0;
    for (engine, cold) in &mut engines {
        engine.finish(cold, &mut out).unwrap();
        duplicates += engine.stats.duplicates;
        cold.apply(engine.checkpoint_changes(Evict::Nothing));
        assert_eq!(
            (engine.hot_entries(), engine.hot_bytes()),
            (0, 0),
            "all state released at the end"
        );
        // Markers stored one by one are left for compaction to drop.
        assert!(
            cold.entries.lock().unwrap().is_empty()
                && cold.timers.lock().unwrap().is_empty()
                && cold.runs.lock().unwrap().is_empty(),
            "cold tier emptied"
        );
    }
    let complete: BTreeSet<_> = out.complete.iter().cloned().collect();
    let incomplete: BTreeSet<_> = out.incomplete.iter().cloned().collect();
    assert_eq!(
        complete.len(),
        out.complete.len(),
        "an action was emitted twice"
    );
    assert_eq!(
        incomplete.len(),
        out.incomplete.len(),
        "an incomplete was emitted twice"
    );
    (complete, incomplete, duplicates)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn each_tracking_number_resolves_exactly_once((cases, order, evict_at) in scenario()) {
        let msgs = messages(&cases, &order);
        let (complete, incomplete, duplicates) = run(&msgs, 120, 1, &[]);
        let expected_dups: u64 = cases.iter().map(|c| u64::from(c.dup.count_ones())).sum();
        prop_assert_eq!(duplicates, expected_dups);
        for (i, case) in cases.iter().enumerate() {
            let tn = format!("tn-{i}");
            if case.parts == 0b111 {
                prop_assert!(complete.contains(&(tn.clone(), 0b111)), "{} should be complete", tn);
            } else {
                prop_assert!(incomplete.contains(&(tn.clone(), 0b111 & !case.parts)), "{} should miss {:b}", tn, !case.parts & 7);
            }
        }
        prop_assert_eq!(complete.len() + incomplete.len(), cases.len());

        // The same input split over key groups, workers and checkpoints gives the same result.
        let baseline = (complete, incomplete, duplicates);
        prop_assert_eq!(&run(&msgs, 7, 1, &[]), &baseline);
        prop_assert_eq!(&run(&msgs, 120, 3, &[]), &baseline);
        prop_assert_eq!(&run(&msgs, 120, 2, &evict_at), &baseline);
    }
}

#[test]
fn hot_state_stays_compact() {
    // The memory per tracking number that the hot tier's budget counts on.
    assert_eq!(std::mem::size_of::<StateKey>(), 24);
    // The pending entry in place (see `Entry`): a hot-map bucket of two cache lines.
    assert_eq!(std::mem::size_of::<(StateKey, Slot)>(), 128);
    assert_eq!(std::mem::size_of::<Timer>(), 32);
    assert_eq!(MARKER_BYTES, 37);
}

#[test]
fn a_stale_stored_timer_does_not_bring_back_an_older_version_at_the_end() {
    // A stored entry whose deadline moved earlier (a part with an earlier time came) still has
    // its old timer in the store until the next checkpoint; resolving it at the end of input
    // must not let that timer read the old version back as a second action.
    let cold = MemCold::default();
    let mut engine = all(4);
    let mut out = Recorded::default();
    engine
        .process(msg("a", Part::Response, T0 + 600), &cold, &mut out)
        .unwrap();
    cold.apply(engine.checkpoint_changes(Evict::Everything { max: usize::MAX }));
    engine
        .process(msg("a", Part::Request, T0), &cold, &mut out)
        .unwrap();
    engine.finish_and_forget_store(&cold, &mut out).unwrap();
    assert_eq!(out.incomplete, [("a".to_string(), 0b100)]);
    assert!(out.complete.is_empty());
}

#[test]
fn restored_markers_are_in_memory_or_found_in_the_store() {
    let cold = MemCold::default();
    let mut first = all(4);
    let mut out = Recorded::default();
    let names = completed_at_t0(&mut first, &cold, &mut out, "tn", 20);
    cold.apply(first.checkpoint_changes(Evict::Nothing));
    let watermarks = first.watermarks().to_vec();
    // Room for every marker, and for none: the second keeps them in the store, one by one.
    for (budget, in_memory) in [(1 << 20, 20), (0, 0)] {
        let mut second = all(4);
        second
            .restore(&watermarks, first.stats.clone(), &cold, budget)
            .unwrap();
        assert_eq!(second.hot_markers(), in_memory);
        let mut out = Recorded::default();
        for tn in &names {
            second
                .process(msg(tn, Part::Request, T0 + 1), &cold, &mut out)
                .unwrap();
        }
        assert_eq!(second.stats.duplicates, 20, "budget {budget}");
        assert_eq!(second.hot_pending(), 0, "no tracking number started again");
        second.finish(&cold, &mut out).unwrap();
        assert!(out.complete.is_empty() && out.incomplete.is_empty());
    }
}

#[test]
fn markers_stored_by_an_earlier_version_are_restored_and_expire() {
    // Earlier versions stored a marker under its key with the pending entries, and a timer
    // row marked as a marker's.
    for budget in [1 << 20, 0] {
        let cold = MemCold::default();
        let key = state_key(key_group(b"a", 4), "a");
        let (kg, _) = split_key(&key);
        let until = T0 + 2 * L;
        cold.entries.lock().unwrap().insert(
            key.to_vec(),
            Entry::Done(Done {
                until,
                outcome: Outcome::Completed,
                parts: 0b111,
            }),
        );
        cold.timers
            .lock()
            .unwrap()
            .insert((kg, until, key.to_vec()));
        let mut engine = all(4);
        let mut watermarks = vec![i64::MIN; 4];
        watermarks[usize::from(kg)] = T0;
        engine
            .restore(&watermarks, JoinStats::default(), &cold, budget)
            .unwrap();
        let mut out = Recorded::default();
        engine
            .process(msg("a", Part::Response, T0 + 1), &cold, &mut out)
            .unwrap();
        assert_eq!(engine.stats.duplicates, 1, "budget {budget}");
        assert_eq!(engine.hot_pending(), 0);
        // Past its expiry its timer fires and the checkpoint deletes it.
        let same_group = (0..)
            .map(|i| format!("b{i}"))
            .find(|tn| key_group(tn.as_bytes(), 4) == kg)
            .unwrap();
        engine
            .process(msg(&same_group, Part::Request, until + 1), &cold, &mut out)
            .unwrap();
        cold.apply(engine.checkpoint_changes(Evict::Nothing));
        assert!(!cold.entries.lock().unwrap().contains_key(&key.to_vec()));
        assert!(
            cold.timers
                .lock()
                .unwrap()
                .iter()
                .all(|(_, _, k)| *k != key.to_vec())
        );
    }
}
