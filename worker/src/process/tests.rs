use std::collections::BTreeMap;

use proptest::prelude::{Just, Strategy, prop_assert_eq, prop_oneof};
use serde_json::{Value, json};
use weft_crds::ProcessDefinitionSpec;
use weft_crds::keygroup::{KeyGroupRange, even_assignment, key_group};

use super::*;

const MIN: i64 = 60_000;
const T0: i64 = 1_800_000_000_000;

/// apply → review (1h SLA) → issue → activate, and reject as an early end.
fn definition() -> ProcessDefinitionSpec {
    serde_json::from_value(json!({
        "steps": [
            {"name": "apply", "match": "request.path == '/apply'"},
            {"name": "review", "match": "request.path == '/review'", "sla": "1h"},
            {"name": "issue", "match": "request.path == '/issue'"},
            {"name": "activate", "match": "request.path == '/activate'", "final": true},
            {"name": "reject", "match": "request.path == '/reject'", "final": true},
        ],
        "instanceKey": {"fields": ["/request/app"]},
        "dimensions": [{"name": "channel", "field": "/tracking/channel"}],
        "outcomes": [{"name": "approved", "match": "request.path == '/review' && response.decision == 'approved'"}],
        "metricsWindow": "1m",
    }))
    .unwrap()
}

/// An engine whose windows and ended instances are kept a day: long enough for every
/// action of these logs, in any order.
fn engine(key_groups: u16, owned: KeyGroupRange) -> ProcessEngine {
    let plan = ProcessPlan::compile("cards", &definition()).unwrap();
    ProcessEngine::new(vec![plan], key_groups, owned, 24 * 60 * MIN)
}

fn action(tn: &str, app: &str, path: &str, minute: i64, channel: &str, decision: &str) -> String {
    let t = T0 + minute * MIN;
    json!({
        "trackingNumber": tn,
        "keyGroup": 0,
        "firstEventTime": t,
        "request": {"eventTime": t, "path": path, "app": app},
        "response": {"eventTime": t + 20, "status": 200, "decision": decision},
        "tracking": {"eventTime": t - 5, "channel": channel},
    })
    .to_string()
}

#[derive(Default)]
struct Recorded {
    metrics: Vec<Value>,
    alerts: Vec<Value>,
}

impl ProcessOutput for Recorded {
    fn metric(&mut self, record: &[u8]) {
        self.metrics.push(serde_json::from_slice(record).unwrap());
    }
    fn alert(&mut self, record: &[u8]) {
        self.alerts.push(serde_json::from_slice(record).unwrap());
    }
}

/// What a metric record holds, by qualifier: a step record's steps, an outcome record's
/// outcomes …; `("", count)` for a kind without qualifiers.
fn members(m: &Value) -> Vec<(String, Value)> {
    for field in ["steps", "outcomes", "returns", "variants", "slaBreaches"] {
        if let Some(values) = m[field].as_object() {
            return values.iter().map(|(q, v)| (q.clone(), v.clone())).collect();
        }
    }
    vec![(String::new(), m["count"].clone())]
}

/// A step's counters by name: its four and its exits per next step (`to:<step>`).
fn step_counters(step: &Value) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = ["entered", "wip", "left", "started"]
        .iter()
        .map(|f| (f.to_string(), step[*f].as_i64().unwrap()))
        .collect();
    if let Some(to) = step["to"].as_object() {
        for (next, edge) in to {
            out.push((format!("to:{next}"), edge["count"].as_i64().unwrap()));
        }
    }
    out
}

impl Recorded {
    /// The last value of every metric id (a re-emitted record replaces the earlier one).
    fn latest(&self) -> BTreeMap<String, Value> {
        self.metrics
            .iter()
            .map(|m| (m["id"].as_str().unwrap().to_string(), m.clone()))
            .collect()
    }

    /// Sums of the latest counts by metric and qualifier, over windows, key groups and
    /// dimension values (`outcome:approved`, `return:review->apply`); a step's counters as
    /// `entered:<step>`, `wip:<step>`, `left:<step>`, `transition:<step>:<next>` and
    /// `started`.
    fn sums(&self) -> BTreeMap<String, i64> {
        let mut sums = BTreeMap::new();
        for m in self.latest().values() {
            let kind = m["metric"].as_str().unwrap();
            for (qualifier, values) in members(m) {
                if kind != "step" {
                    let name = match qualifier.as_str() {
                        "" => kind.to_string(),
                        q => format!("{kind}:{q}"),
                    };
                    *sums.entry(name).or_default() += values.as_i64().unwrap();
                    continue;
                }
                for (field, n) in step_counters(&values) {
                    let name = match field.as_str() {
                        "started" => field,
                        // An exit to the next step is a transition.
                        _ => match field.strip_prefix("to:") {
                            Some(next) => format!("transition:{qualifier}:{next}"),
                            None => format!("{field}:{qualifier}"),
                        },
                    };
                    *sums.entry(name).or_default() += n;
                }
            }
        }
        sums.retain(|_, v| *v != 0);
        sums
    }
}

/// A hand-built log: every number below is worked out by hand from these actions.
fn hand_log() -> Vec<String> {
    vec![
        // A (web): apply 0, review 10 (approved), issue 65 (left review after 55 min, within
        // its 1 h SLA), activate 80: completed.
        action("a1", "A", "/apply", 0, "web", ""),
        // B (branch): apply 5, review 20 (returned), apply 30 (a return), review 40, then
        // nothing: its second review breaches the SLA at 100.
        action("b1", "B", "/apply", 5, "branch", ""),
        // C (web): apply 6, reject 16: completed early, jumping over three steps.
        action("c1", "C", "/apply", 6, "web", ""),
        action("a2", "A", "/review", 10, "web", "approved"),
        action("c2", "C", "/reject", 16, "web", ""),
        action("b2", "B", "/review", 20, "branch", "returned"),
        action("b3", "B", "/apply", 30, "branch", ""),
        action("b4", "B", "/review", 40, "branch", ""),
        // A duplicate (same tracking number) changes nothing.
        action("a2", "A", "/review", 10, "web", "approved"),
        action("a3", "A", "/issue", 65, "web", ""),
        action("a4", "A", "/activate", 80, "web", ""),
        // An action no step matches.
        action("x1", "A", "/status", 81, "web", ""),
        // D (mobile) starts at 200; its time carries the key group past B's SLA deadline.
        action("d1", "D", "/apply", 200, "mobile", ""),
    ]
}

#[test]
fn every_metric_of_a_hand_built_log() {
    let mut e = engine(1, KeyGroupRange { start: 0, end: 1 });
    let mut out = Recorded::default();
    for a in hand_log() {
        e.apply(&a, &mut out).unwrap();
    }
    e.finish(&mut out);
    let t = &e.processes[0].totals();
    assert_eq!(t.actions, 13);
    assert_eq!(t.unmatched, 1);
    assert_eq!(t.duplicates, 1);
    assert_eq!((t.started, t.completed, t.abandoned), (4, 2, 0));
    let map = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    assert_eq!(
        t.entered,
        map(&[
            ("apply", 5),
            ("review", 3),
            ("issue", 1),
            ("activate", 1),
            ("reject", 1)
        ])
    );
    // In progress: D in apply, B in review.
    assert_eq!(t.wip, map(&[("apply", 1), ("review", 1)]));
    assert_eq!(t.returns, map(&[("review->apply", 1)]));
    assert_eq!(t.outcomes, map(&[("approved", 1)]));
    assert_eq!(
        t.variants,
        map(&[("apply>review>issue>activate", 1), ("apply>reject", 1)])
    );
    assert_eq!(t.skipped_steps, 1, "C jumped from apply to reject");
    assert_eq!(t.sla_breaches, map(&[("review", 1)]));

    // apply: A 10 min, B 15 and 10 min, C 10 min.
    let apply = &t.durations["apply"];
    assert_eq!((apply.count, apply.sum_ms), (4, 45 * MIN));
    assert!((apply.quantile(0.5).unwrap() - 600.0).abs() <= 6.0);
    assert!((apply.quantile(1.0).unwrap() - 900.0).abs() <= 9.0);
    // review: A 55 min, B 10 min (B's second review has not ended).
    let review = &t.durations["review"];
    assert_eq!((review.count, review.sum_ms), (2, 65 * MIN));
    assert_eq!(t.durations["issue"].sum_ms, 15 * MIN);

    // One alert, at the breach (B entered review at 40, SLA 1 h), not at the end of input.
    assert_eq!(out.alerts.len(), 1, "{:?}", out.alerts);
    let alert = &out.alerts[0];
    assert_eq!(alert["instance"], "B");
    assert_eq!(alert["step"], "review");
    assert_eq!(alert["since"], T0 + 40 * MIN);
    assert_eq!(alert["breachedAt"], T0 + 100 * MIN);
    assert_eq!(alert["dimensions"]["channel"], "branch");

    // The windows hold the same numbers as the totals.
    let sums = out.sums();
    let expect = [
        ("started", 4),
        ("completed", 2),
        ("entered:apply", 5),
        ("entered:review", 3),
        ("left:apply", 4),
        ("left:review", 2),
        ("transition:review:apply", 1),
        ("return:review->apply", 1),
        ("outcome:approved", 1),
        ("slaBreach:review", 1),
        ("skippedSteps", 1),
        ("variant:apply>reject", 1),
        ("wip:apply", 1),
        ("wip:review", 1),
    ];
    for (name, n) in expect {
        assert_eq!(sums.get(name), Some(&n), "{name} in {sums:?}");
    }
    // Two step records whole: A's start, and A leaving review for issue after 55 minutes
    // (B's second review at 40 is in another window): one record, both steps.
    let latest = out.latest();
    let step_record = |start: i64, steps: Value| {
        json!({
            "id": format!("cards/step/{start}/0/web"), "process": "cards", "metric": "step",
            "windowStart": start, "windowEnd": start + MIN, "keyGroup": 0,
            "dimensions": {"channel": "web"},
            "steps": steps,
        })
    };
    assert_eq!(
        latest[&format!("cards/step/{T0}/0/web")],
        step_record(
            T0,
            json!({"apply": {"entered": 1, "wip": 1, "left": 0, "started": 1, "sumSeconds": 0.0}})
        )
    );
    let at_65 = T0 + 65 * MIN;
    let review = &latest[&format!("cards/step/{at_65}/0/web")]["steps"]["review"];
    let review_exit = json!({
        "entered": 0, "wip": -1, "left": 1, "started": 0, "sumSeconds": 3300.0,
        // The quantiles and the sketch, checked below.
        "p50Seconds": review["p50Seconds"], "p90Seconds": review["p90Seconds"],
        "p99Seconds": review["p99Seconds"], "sketch": review["sketch"],
        // The edge out of review.
        "to": {"issue": {"count": 1, "sumSeconds": 3300.0}},
    });
    assert_eq!(
        latest[&format!("cards/step/{at_65}/0/web")],
        step_record(
            at_65,
            json!({
                "issue": {"entered": 1, "wip": 1, "left": 0, "started": 0, "sumSeconds": 0.0},
                "review": review_exit,
            })
        )
    );
    assert_eq!(review["sketch"]["count"], 1);
    let p50 = review["p50Seconds"].as_f64().unwrap();
    assert!(
        (p50 - 3300.0).abs() / 3300.0 < 0.02,
        "p50 {p50} within the sketch's error"
    );
    // The other kinds with qualifiers hold their values by qualifier too.
    let of_kind =
        |kind: &str| -> Vec<&Value> { latest.values().filter(|m| m["metric"] == kind).collect() };
    let breaches = of_kind("slaBreach");
    assert_eq!(breaches.len(), 1, "{breaches:?}");
    assert_eq!(breaches[0]["slaBreaches"], json!({"review": 1}));
    assert_eq!(breaches[0]["dimensions"], json!({"channel": "branch"}));
    let returns = of_kind("return");
    assert_eq!(returns.len(), 1, "{returns:?}");
    assert_eq!(returns[0]["returns"], json!({"review->apply": 1}));
    assert_eq!(returns[0]["windowStart"], T0 + 30 * MIN);
}

/// A late change to a window closed before waits for the next checkpoint, where all such
/// changes to one record go out as one; the close of a later window does not emit it.
#[test]
fn late_changes_to_closed_windows_wait_for_the_checkpoint() {
    let mut e = engine(1, KeyGroupRange { start: 0, end: 1 });
    let mut out = Recorded::default();
    // Window 0 closes when time reaches minute 2, window 1 at minute 3.
    e.apply(&action("a1", "A", "/apply", 0, "web", ""), &mut out)
        .unwrap();
    e.apply(&action("b1", "B", "/apply", 1, "web", ""), &mut out)
        .unwrap();
    e.apply(&action("f1", "F", "/apply", 2, "web", ""), &mut out)
        .unwrap();
    let window_0 = |m: &Value| m["windowStart"] == json!(T0) && m["metric"] == "step";
    assert_eq!(out.metrics.iter().filter(|m| window_0(m)).count(), 1);
    // Two late actions change window 0's step record; then window 1 closes.
    e.apply(&action("c1", "C", "/apply", 0, "web", ""), &mut out)
        .unwrap();
    e.apply(&action("d1", "D", "/apply", 0, "web", ""), &mut out)
        .unwrap();
    e.apply(&action("e1", "E", "/apply", 3, "web", ""), &mut out)
        .unwrap();
    assert!(
        out.metrics
            .iter()
            .any(|m| m["windowStart"] == json!(T0 + MIN))
    );
    assert_eq!(out.metrics.iter().filter(|m| window_0(m)).count(), 1);
    // The checkpoint emits it once, with both.
    e.emit_updates(&mut out);
    let emitted: Vec<&Value> = out.metrics.iter().filter(|m| window_0(m)).collect();
    assert_eq!(emitted.len(), 2);
    assert_eq!(emitted[1]["steps"]["apply"]["entered"], 3);
}

#[test]
fn actions_out_of_event_time_order_give_the_same_results() {
    let log = hand_log();
    let run = |order: &[usize]| {
        let mut e = engine(1, KeyGroupRange { start: 0, end: 1 });
        let mut out = Recorded::default();
        for i in order {
            e.apply(&log[*i], &mut out).unwrap();
        }
        e.finish(&mut out);
        let mut totals = e.processes[0].totals();
        // SLA alerts depend on when time passes the deadline, which the order changes.
        totals.sla_breaches.clear();
        let mut sums = out.sums();
        sums.remove("slaBreach:review");
        (totals, sums)
    };
    let in_order: Vec<usize> = (0..log.len()).collect();
    // A's activate and issue before its review, B's return before its first review.
    let shuffled = vec![0, 1, 2, 10, 9, 4, 7, 6, 3, 5, 8, 11, 12];
    assert_eq!(run(&in_order), run(&shuffled));
}

#[test]
fn restored_state_continues_exactly() {
    let log = hand_log();
    let owned = KeyGroupRange { start: 0, end: 4 };
    let mut whole = engine(4, owned);
    let mut want = Recorded::default();
    for a in &log {
        whole.apply(a, &mut want).unwrap();
    }
    whole.finish(&mut want);

    // The windows are rebuilt from the instances: at every point of the log.
    for split in 1..log.len() {
        let mut first = engine(4, owned);
        let mut got = Recorded::default();
        for a in &log[..split] {
            first.apply(a, &mut got).unwrap();
        }
        // A checkpoint follows the emission of late updates.
        first.emit_updates(&mut got);
        let meta = first.meta();
        let watermarks = first.watermarks().to_vec();
        let changes = first.checkpoint_changes();
        let stored = |c: Vec<(Vec<u8>, Option<Vec<u8>>)>| -> Vec<(Vec<u8>, Vec<u8>)> {
            c.into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect()
        };
        let mut second = engine(4, owned);
        second
            .restore(meta, &watermarks, stored(changes.instances))
            .unwrap();
        for a in &log[split..] {
            second.apply(a, &mut got).unwrap();
        }
        second.finish(&mut got);
        assert_eq!(
            second.processes[0].totals(),
            whole.processes[0].totals(),
            "split {split}"
        );
        assert_eq!(got.latest(), want.latest(), "split {split}");
        assert_eq!(got.alerts, want.alerts, "split {split}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Partial aggregates of any split of the key groups over engines add up to what one
    /// engine owning them all reports.
    #[test]
    fn partials_over_any_split_of_key_groups_sum_to_the_whole(
        steps in proptest::collection::vec((0u8..12, 0u8..6, 0i64..400, 0u8..3), 1..80),
        splits in 1u32..6,
    ) {
        const PATHS: [&str; 6] = ["/apply", "/review", "/issue", "/activate", "/reject", "/other"];
        const CHANNELS: [&str; 3] = ["web", "branch", "mobile"];
        let key_groups = 16u16;
        let log: Vec<String> = steps
            .iter()
            .enumerate()
            .map(|(i, (app, path, minute, channel))| {
                action(
                    &format!("t{i}"),
                    &format!("app-{app}"),
                    PATHS[usize::from(*path)],
                    *minute,
                    CHANNELS[usize::from(*channel)],
                    if i % 3 == 0 { "approved" } else { "" },
                )
            })
            .collect();

        let mut single = engine(key_groups, KeyGroupRange { start: 0, end: key_groups });
        let mut whole = Recorded::default();
        for a in &log {
            single.apply(a, &mut whole).unwrap();
        }
        single.finish(&mut whole);

        let ranges = even_assignment(splits, key_groups);
        let mut engines: Vec<ProcessEngine> = ranges.iter().map(|r| engine(key_groups, *r)).collect();
        let mut parts = Recorded::default();
        for (i, a) in log.iter().enumerate() {
            let app = format!("app-{}", steps[i].0);
            let kg = key_group(app.as_bytes(), key_groups);
            let e = engines.iter_mut().find(|e| e.owned.contains(kg)).unwrap();
            e.apply(a, &mut parts).unwrap();
        }
        for e in &mut engines {
            e.finish(&mut parts);
        }
        // Per metric, window and dimensions, summed over key groups.
        let by_window = |r: &Recorded| {
            let mut sums: BTreeMap<String, i64> = BTreeMap::new();
            for m in r.latest().values() {
                for (qualifier, values) in members(m) {
                    let counters = match m["metric"] == "step" {
                        true => step_counters(&values),
                        false => vec![("count".to_string(), values.as_i64().unwrap())],
                    };
                    for (field, n) in counters {
                        let key = format!(
                            "{}|{qualifier}|{}|{}|{field}",
                            m["metric"], m["windowStart"], m["dimensions"]
                        );
                        *sums.entry(key).or_default() += n;
                    }
                }
            }
            sums.retain(|_, v| *v != 0);
            sums
        };
        proptest::prop_assert_eq!(by_window(&parts), by_window(&whole));
        let total = |es: &[&ProcessEngine]| es.iter().map(|e| e.processes[0].counts().metrics.get(&Metric::Started).copied().unwrap_or(0)).sum::<i64>();
        proptest::prop_assert_eq!(total(&engines.iter().collect::<Vec<_>>()), total(&[&single]));
    }
}

#[test]
fn dimensions_beyond_max_values_are_other() {
    let mut spec = definition();
    spec.dimensions[0].max_values = 2;
    let plan = ProcessPlan::compile("cards", &spec).unwrap();
    let mut e = ProcessEngine::new(vec![plan], 1, KeyGroupRange { start: 0, end: 1 }, MIN);
    let mut out = Recorded::default();
    for (i, channel) in ["web", "branch", "mobile", "atm", "web"].iter().enumerate() {
        let a = action(
            &format!("t{i}"),
            &format!("I{i}"),
            "/apply",
            i as i64,
            channel,
            "",
        );
        e.apply(&a, &mut out).unwrap();
    }
    e.finish(&mut out);
    let mut channels: BTreeMap<String, i64> = BTreeMap::new();
    for m in out.latest().values().filter(|m| m["metric"] == "step") {
        for (_, step) in members(m) {
            *channels
                .entry(m["dimensions"]["channel"].as_str().unwrap().to_string())
                .or_default() += step["started"].as_i64().unwrap();
        }
    }
    let want: BTreeMap<String, i64> = [("web", 2), ("branch", 1), ("other", 2)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(channels, want);
}

#[test]
fn invalid_predicates_name_the_field() {
    let mut spec = definition();
    spec.steps[2].match_ = "request.path ==".into();
    let err = ProcessPlan::compile("cards", &spec).err().unwrap();
    assert!(err.starts_with("spec.steps[2].match: invalid CEL"), "{err}");
}

#[test]
fn an_instance_without_actions_for_instance_timeout_is_abandoned() {
    let mut spec = definition();
    spec.instance_timeout = "1h".parse().unwrap();
    let plan = ProcessPlan::compile("cards", &spec).unwrap();
    let mut e = ProcessEngine::new(vec![plan], 1, KeyGroupRange { start: 0, end: 1 }, MIN);
    let mut out = Recorded::default();
    for a in [
        action("e1", "E", "/apply", 0, "web", ""),
        action("e2", "E", "/review", 30, "web", ""),
        // F's actions move time on: E's last action was at 30, so it is abandoned at 90.
        action("f1", "F", "/apply", 80, "web", ""),
        action("f2", "F", "/review", 100, "web", ""),
        // Too late for E: it ended at 90.
        action("e3", "E", "/issue", 95, "web", ""),
    ] {
        e.apply(&a, &mut out).unwrap();
    }
    e.finish(&mut out);
    let t = e.processes[0].totals();
    assert_eq!((t.started, t.completed, t.abandoned), (2, 0, 1));
    assert_eq!(t.after_end, 1);
    assert_eq!(t.variants.get("apply>review"), Some(&1));
    // Only F is still in a step.
    assert_eq!(t.wip.values().sum::<i64>(), 1);
    let abandoned = out
        .latest()
        .into_values()
        .find(|m| m["metric"] == "abandoned")
        .unwrap();
    assert_eq!(abandoned["windowStart"], T0 + 90 * MIN);
}

/// The hand log's definition without its `issue` step, `reject` listed before `activate`.
fn definition_without_issue() -> ProcessDefinitionSpec {
    let mut spec = definition();
    spec.steps.retain(|s| s.name != "issue");
    spec.steps.swap(2, 3);
    spec
}

/// Runs `log[..split]` under `first`, reconfigures to `then`, runs the rest.
fn run_reconfigured(
    first: &ProcessDefinitionSpec,
    then: &ProcessDefinitionSpec,
    split: usize,
) -> (ProcessEngine, Recorded, reconfigure::Reconfigured) {
    let log = hand_log();
    let owned = KeyGroupRange { start: 0, end: 4 };
    let plan = |spec| ProcessPlan::compile("cards", spec).unwrap();
    let mut e = ProcessEngine::new(vec![plan(first)], 4, owned, 24 * 60 * MIN);
    let mut out = Recorded::default();
    for a in &log[..split] {
        e.apply(a, &mut out).unwrap();
    }
    let report = e.reconfigure(vec![plan(then)]);
    for a in &log[split..] {
        e.apply(a, &mut out).unwrap();
    }
    e.finish(&mut out);
    (e, out, report)
}

#[test]
fn reconfiguring_with_the_same_definition_changes_nothing() {
    let (whole, want, _) = run_reconfigured(&definition(), &definition(), 0);
    for split in [3, 7, 11] {
        let (e, got, report) = run_reconfigured(&definition(), &definition(), split);
        assert_eq!(report.kept, vec!["cards".to_string()]);
        assert_eq!((report.dropped_actions, report.dropped_aggregates), (0, 0));
        assert_eq!(
            e.processes[0].totals(),
            whole.processes[0].totals(),
            "split {split}"
        );
        assert_eq!(got.latest(), want.latest(), "split {split}");
        assert_eq!(got.alerts, want.alerts, "split {split}");
    }
}

#[test]
fn a_changed_definition_keeps_its_instances_and_maps_metrics_by_step_name() {
    let changed = definition_without_issue();
    // Under the new definition from the start: `issue` actions match nothing.
    let (fresh, fresh_out, _) = run_reconfigured(&changed, &changed, 0);
    let want = fresh.processes[0].totals();
    assert_eq!(want.unmatched, 2, "x1 and a3");

    // Changed before any `issue` action: exactly the same results.
    let (e, out, report) = run_reconfigured(&definition(), &changed, 7);
    assert_eq!(report.dropped_actions, 0);
    assert_eq!(e.processes[0].totals(), want);
    assert_eq!(out.sums(), fresh_out.sums());

    // Changed after A's `issue` action: it is dropped from A's history, and every metric
    // that counts (A is still completed, its review still ends when it was left) agrees.
    let (e, out, report) = run_reconfigured(&definition(), &changed, 11);
    // A's review now ends at `activate` (80), and its exit to `issue` at 65, emitted before
    // the change, is taken back: the edge to the removed step goes with it.
    let kg = key_group(b"A", 4);
    let latest = out.latest();
    let steps =
        |minute: i64| &latest[&format!("cards/step/{}/{kg}/web", T0 + minute * MIN)]["steps"];
    assert_eq!(
        steps(65).get("review"),
        None,
        "nothing left of review at 65"
    );
    assert_eq!(
        steps(80)["review"]["to"],
        json!({"activate": {"count": 1, "sumSeconds": 70.0 * 60.0}})
    );
    assert_eq!(report.dropped_actions, 1);
    assert!(report.dropped_aggregates > 0, "issue's aggregates");
    let mut got = e.processes[0].totals();
    assert_eq!(got.unmatched, 1, "a3 was matched before the change");
    got.unmatched = want.unmatched;
    // A left review within its SLA under the old definition (at `issue`); an alert is an
    // event at the moment of the breach, not recomputed when the history changes.
    assert!(got.sla_breaches.is_empty());
    let mut want = want;
    want.sla_breaches.clear();
    assert_eq!(got, want);
}

#[test]
fn definitions_are_added_and_removed_by_name() {
    let log = hand_log();
    let owned = KeyGroupRange { start: 0, end: 1 };
    let plan = |name| ProcessPlan::compile(name, &definition()).unwrap();
    let mut e = ProcessEngine::new(vec![plan("old")], 1, owned, 24 * 60 * MIN);
    let mut out = Recorded::default();
    for a in &log {
        e.apply(a, &mut out).unwrap();
    }
    let report = e.reconfigure(vec![plan("new")]);
    assert_eq!(report.added, vec!["new".to_string()]);
    assert_eq!(report.removed, vec!["old".to_string()]);
    assert_eq!(e.processes[0].totals().started, 0);
    // The next checkpoint replaces the stored state whole.
    assert!(e.checkpoint_changes().rewrite);
    assert!(!e.checkpoint_changes().rewrite);
}

/// Action records that classify in different ways.
fn varied_records() -> [String; 3] {
    [
        action("T-1", "A-1", "/review", 3, "web", "approved"),
        // No step matches, no dimension value, an escaped key.
        action("T-2", "A-\\\"2", "/other", 4, "", ""),
        // No instance key, no time, no tracking number.
        json!({"request": {"path": "/apply"}}).to_string(),
    ]
}

#[test]
fn a_classification_reads_back_as_it_was_written() {
    let plan = ProcessPlan::compile("cards", &definition()).unwrap();
    let records = varied_records();
    let (mut batch, mut short) = (ClassifiedBatch::default(), ClassifiedBatch::default());
    let mut expected = Vec::new();
    for (p, record) in records.iter().enumerate() {
        let classified = plan.classify(record).unwrap();
        classified.encode(p as u16, &mut batch);
        classified.encode(p as u16, &mut short);
        expected.push((p as u16, classified));
    }
    let read: Vec<_> = batch.decode().collect();
    assert_eq!(read.len(), expected.len());
    for (read, (p, c)) in read.iter().zip(&expected) {
        assert_eq!(read.as_ref().map(|(q, r)| (*q, r)), Some((*p, c)));
    }
    assert!(expected[1].1.step.is_none() && expected[2].1.time.is_none());
    // Cut short: what comes before reads back, then one `None` and nothing after it.
    short.cut_short();
    let read: Vec<_> = short.decode().collect();
    assert_eq!(read.len(), expected.len());
    for (read, (p, c)) in read.iter().zip(&expected[..expected.len() - 1]) {
        assert_eq!(read.as_ref().map(|(q, r)| (*q, r)), Some((*p, c)));
    }
    assert!(read.last().is_some_and(Option::is_none), "cut short");
}

#[test]
fn an_action_classified_only_where_its_instance_lives_is_classified_as_always_there() {
    let plan = ProcessPlan::compile("cards", &definition()).unwrap();
    for record in &varied_records() {
        let whole = plan.classify(record).unwrap();
        let mut asked = None;
        let here = plan.classify_if(record, None, |key| {
            asked = Some(key.map(String::from));
            true
        });
        assert_eq!(here.unwrap().unwrap(), whole, "{record}");
        assert_eq!(asked, Some(whole.instance.as_deref().map(String::from)));
        let elsewhere = plan.classify_if(record, None, |_| false).unwrap();
        assert_eq!(elsewhere.unwrap_err(), whole.instance, "{record}");
    }
    assert!(plan.classify_if("not json", None, |_| true).is_err());
}

#[test]
fn an_action_s_instance_key_group_is_the_one_the_stage_refuses_when_not_owned() {
    let plan = ProcessPlan::compile("cards", &definition()).unwrap();
    let placed = action("T-1", "A-1", "/review", 3, "web", "approved");
    let kg = plan.classify(&placed).unwrap().instance_key_group(120);
    assert_eq!(kg, Some(key_group(b"A-1", 120)));
    let unmatched = action("T-2", "A-2", "/other", 4, "", "");
    assert_eq!(
        plan.classify(&unmatched).unwrap().instance_key_group(120),
        None
    );
    let keyless = json!({"request": {"path": "/apply"}}).to_string();
    assert_eq!(
        plan.classify(&keyless).unwrap().instance_key_group(120),
        None
    );
    // An engine that owns every key group but that one refuses the action, naming it, and
    // only counts the other two.
    let kg = kg.unwrap();
    let owned = if kg == 0 {
        KeyGroupRange { start: 1, end: 120 }
    } else {
        KeyGroupRange { start: 0, end: kg }
    };
    let mut e = engine(120, owned);
    let mut out = Recorded::default();
    assert!(matches!(e.apply(&placed, &mut out), Err(ProcessError::NotOwned(k)) if k == kg));
    e.apply(&unmatched, &mut out).unwrap();
    e.apply(&keyless, &mut out).unwrap();
}

/// Many instances through every step, with duplicates and some actions late: more actions
/// than [`LOOKAHEAD`], so that look-ups run ahead over several groups.
fn busy_log() -> Vec<String> {
    let paths = ["/apply", "/review", "/issue", "/activate"];
    let mut log = Vec::new();
    for minute in 0..40 {
        for app in 0..10 {
            let step = (minute + app) % 4;
            let tn = format!("t{minute}-{app}");
            let app = format!("A{}", (minute / 4) * 10 + app);
            let copies = if minute % 7 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                log.push(action(
                    &tn,
                    &app,
                    paths[step as usize],
                    minute,
                    "web",
                    "approved",
                ));
            }
        }
    }
    // Some late: moved a dozen places on.
    for i in (0..log.len() - 12).step_by(9) {
        log.swap(i, i + 12);
    }
    log
}

/// `log` classified for the engine's one definition, as the stage's thread receives it.
fn classified<'a>(
    plan: &'a ProcessPlan,
    log: &'a [String],
) -> impl Iterator<Item = Result<(usize, Classified<'a>), ProcessError>> {
    log.iter().map(|a| {
        plan.classify(a)
            .map(|c| (0, c))
            .map_err(ProcessError::BadAction)
    })
}

#[test]
fn actions_applied_many_at_a_time_give_what_one_at_a_time_gives() {
    let log = busy_log();
    assert!(log.len() > 4 * LOOKAHEAD);
    let mut one = engine(4, KeyGroupRange { start: 0, end: 4 });
    let mut one_out = Recorded::default();
    for a in &log {
        one.apply(a, &mut one_out).unwrap();
    }
    one.finish(&mut one_out);

    let mut many = engine(4, KeyGroupRange { start: 0, end: 4 });
    let mut many_out = Recorded::default();
    let plan = ProcessPlan::compile("cards", &definition()).unwrap();
    many.apply_many(classified(&plan, &log), &mut many_out)
        .unwrap();
    many.finish(&mut many_out);

    assert_eq!(many_out.metrics, one_out.metrics);
    assert_eq!(many.processes[0].totals(), one.processes[0].totals());
    let totals = one.processes[0].totals();
    assert!(totals.completed > 0 && totals.duplicates > 0, "{totals:?}");
}

#[test]
fn applying_many_stops_at_the_first_error_after_the_actions_before_it() {
    let plan = ProcessPlan::compile("cards", &definition()).unwrap();
    let key_group_of = |a: &String| plan.classify(a).unwrap().instance_key_group(8).unwrap();
    // Key groups 0..4 owned; one action of another in the middle of a look-ahead group,
    // after a few of them.
    let owned = KeyGroupRange { start: 0, end: 4 };
    let (mut log, others): (Vec<String>, Vec<String>) = busy_log()
        .into_iter()
        .partition(|a| owned.contains(key_group_of(a)));
    let first_refused = 3 * LOOKAHEAD + 5;
    assert!(log.len() > first_refused + LOOKAHEAD);
    log.insert(first_refused, others[0].clone());
    let mut e = engine(8, owned);
    let mut out = Recorded::default();
    let result = e.apply_many(classified(&plan, &log), &mut out);
    let refused = key_group_of(&others[0]);
    assert!(
        matches!(result, Err(ProcessError::NotOwned(k)) if k == refused),
        "{result:?}"
    );
    // The actions before it, and it (counted, then refused); none after it.
    assert_eq!(e.processes[0].counts.actions, first_refused as u64 + 1);
}

/// Definitions that read an action every way a pointer can: the credit-card-like one, one
/// reading the record's head, part times and a field inside a projected object, and one
/// naming a whole part (read by scanning the record).
fn reading_definitions() -> Vec<ProcessPlan> {
    let head = serde_json::from_value(json!({
        "steps": [
            {"name": "early", "match": "firstEventTime < 1763798400000 && keyGroup == 7"},
            {"name": "late", "match": "request.eventTime > response.eventTime"},
            {"name": "nested", "match": "request.body.kind == 'x' || trackingNumber == 'T\"1'"},
        ],
        "instanceKey": {"fields": ["/trackingNumber"]},
        "dimensions": [
            {"name": "completed", "field": "/completedEventTime"},
            {"name": "expired", "field": "/expiredAt"},
            {"name": "tracked", "field": "/tracking/eventTime"},
        ],
        "outcomes": [{"name": "empty", "match": "request.app == ''"}],
        "metricsWindow": "1m",
    }))
    .unwrap();
    let whole = serde_json::from_value(json!({
        "steps": [{"name": "any", "match": "has(request.app)"}],
        "instanceKey": {"fields": ["/request/app"]},
        "dimensions": [{"name": "missing", "field": "/missing"}, {"name": "part", "field": "/response"}],
        "metricsWindow": "1m",
    }))
    .unwrap();
    [definition(), head, whole]
        .iter()
        .map(|spec| ProcessPlan::compile("cards", spec).unwrap())
        .collect()
}

fn arbitrary_part() -> impl Strategy<Value = Option<crate::join::PartState>> {
    let value = prop_oneof![
        Just(json!("/review")),
        Just(json!("")),
        Just(json!("a\"b\\c")),
        (0i64..3).prop_map(|n| json!(n)),
        Just(json!({"kind": "x", "n": [1, {"kind": "y"}]})),
        Just(json!(null)),
    ];
    let name = prop_oneof![
        Just("path"),
        Just("app"),
        Just("decision"),
        Just("channel"),
        Just("body"),
        Just("eventTime")
    ];
    proptest::option::of((
        T0 - 5_000..T0 + 5_000,
        proptest::collection::vec((name, value), 0..5),
    ))
    .prop_map(|part| {
        part.map(|(event_time, members)| crate::join::PartState {
            event_time,
            fields: members
                .iter()
                .map(|(n, v)| format!("{}:{v}", json!(n)))
                .collect::<Vec<_>>()
                .join(",")
                .into(),
        })
    })
}

proptest::proptest! {
    /// Reading a record through the layout it was written with finds what scanning it does,
    /// whatever parts and fields it has (repeated names, `eventTime` among the fields,
    /// objects, escapes).
    #[test]
    fn a_written_record_classifies_through_its_layout_as_by_a_scan(
        parts in [arbitrary_part(), arbitrary_part(), arbitrary_part()],
        complete in proptest::bool::ANY,
        tracking_number in prop_oneof![Just("T\"1"), Just("T-2")],
    ) {
        let pending = crate::join::Pending { deadline: T0 + 3_600_000, parts };
        let (mut buf, mut layout) = (Vec::new(), Default::default());
        match complete {
            true => crate::join::record::write_action(&mut buf, &mut layout, 7, tracking_number, &pending.view(), T0),
            false => crate::join::record::write_incomplete(&mut buf, &mut layout, 7, tracking_number, &pending.view(), 0b110),
        }
        let record = std::str::from_utf8(&buf).unwrap().trim_end();
        let plans = reading_definitions();
        prop_assert_eq!(plans.iter().map(|p| p.reads_layouts()).collect::<Vec<_>>(), vec![true, true, false]);
        // The same plans expecting the members in the order `arbitrary_part` draws names
        // from: read in order where they are, scanned where they are not.
        let written = ["path", "app", "decision", "channel", "body", "eventTime"]
            .map(|n| (n, format!("{}:", json!(n))));
        let written: Vec<(&str, &str)> = written.iter().map(|(n, p)| (*n, p.as_str())).collect();
        let ordered = reading_definitions().into_iter().map(|mut plan| {
            plan.expect_written(&written);
            plan
        });
        for plan in plans.into_iter().chain(ordered) {
            let scanned = plan.classify(record).unwrap();
            prop_assert_eq!(&plan.classify_written(record, &layout).unwrap(), &scanned, "{}", record);
            let routed = plan.classify_if(record, Some(&layout), |_| true).unwrap().unwrap();
            prop_assert_eq!(&routed, &scanned);
        }
    }
}

/// A dimension's values keep their ids whether they are found by comparison (the first few)
/// or through the map; past `maxValues` new values are `other`.
#[test]
fn dimension_values_keep_their_ids_however_they_are_found() {
    let mut names = Names::new(1);
    let max_values = 12;
    let first: Vec<u32> = (0..20)
        .map(|i| names.dimension_id(0, Some(&format!("v{i}")), max_values))
        .collect();
    let other = names.dimension_id(0, None, max_values);
    assert_eq!(&first[..12], &(0..12).collect::<Vec<u32>>()[..]);
    assert!(first[12..].iter().all(|id| *id == other), "{first:?}");
    for (i, id) in first.iter().enumerate() {
        assert_eq!(
            names.dimension_id(0, Some(&format!("v{i}")), max_values),
            *id
        );
    }
}
