//! The JSON records of the process stage.
//!
//! A metric record is one partial aggregate: `id` is its idempotent key (definition, metric,
//! its step/transition/outcome/variant, window start, key group, dimension values), so a
//! re-emitted window overwrites itself in a compacted topic or an upsert table, and the sum
//! of `count` (or the merge of `sketch`) over key groups is the total for the window. A step
//! record has `entered`, `wip`, `left` and `started` instead of `count`.

use crate::join::record::{push_json_escaped, push_json_string};

use rustc_hash::FxHashMap;

use super::instance::Visit;
use super::sketch::{Sketch, bucket_value};
use super::{Aggregate, AggregateKey, Instance, Metric, Names, ProcessPlan, ProcessState};

fn push_i64(buf: &mut Vec<u8>, n: i64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_f64(buf: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        buf.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
    } else {
        buf.extend_from_slice(b"null");
    }
}

/// Milliseconds as seconds, the very text `push_f64(ms as f64 / 1000.0)` writes (the
/// shortest decimal that reads back as that double) without formatting a float: below
/// 10¹² ms (31 years) that decimal is the exact one, trailing zeros dropped, because
/// doubles there are far closer together than 0.001.
fn push_seconds(buf: &mut Vec<u8>, ms: i64) {
    let abs = ms.unsigned_abs();
    if abs >= 1_000_000_000_000 {
        return push_f64(buf, ms as f64 / 1000.0);
    }
    if ms < 0 {
        buf.push(b'-');
    }
    buf.extend_from_slice(itoa::Buffer::new().format(abs / 1000).as_bytes());
    buf.push(b'.');
    let fraction = abs % 1000;
    let digits = [
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ];
    let len = match fraction {
        f if f % 100 == 0 => 1,
        f if f % 10 == 0 => 2,
        _ => 3,
    };
    buf.extend_from_slice(&digits[..len]);
}

fn step_name(plan: &ProcessPlan, step: u16) -> &str {
    plan.steps
        .get(usize::from(step))
        .map_or("?", |s| s.name.as_str())
}

/// The metric's name and its qualifier fields (`"step":..`, `"from":..,"to":..`).
fn describe<'s>(
    plan: &'s ProcessPlan,
    variant: &'s str,
    metric: &Metric,
) -> (&'static str, [(&'static str, &'s str); 2]) {
    const NONE: (&str, &str) = ("", "");
    let step = |s: &u16| step_name(plan, *s);
    match metric {
        Metric::Step(s) => ("step", [("step", step(s)), NONE]),
        Metric::Started => ("started", [NONE, NONE]),
        Metric::Completed => ("completed", [NONE, NONE]),
        Metric::Abandoned => ("abandoned", [NONE, NONE]),
        Metric::SkippedSteps => ("skippedSteps", [NONE, NONE]),
        Metric::Wip(s) => ("wip", [("step", step(s)), NONE]),
        Metric::Entered(s) => ("entered", [("step", step(s)), NONE]),
        Metric::Duration(s) => ("stepDuration", [("step", step(s)), NONE]),
        Metric::SlaBreach(s) => ("slaBreach", [("step", step(s)), NONE]),
        Metric::Transition(a, b) => ("transition", [("from", step(a)), ("to", step(b))]),
        Metric::Return(a, b) => ("return", [("from", step(a)), ("to", step(b))]),
        Metric::Outcome(o) => (
            "outcome",
            [
                (
                    "outcome",
                    plan.outcomes
                        .get(usize::from(*o))
                        .map_or("?", |(n, _)| n.as_str()),
                ),
                NONE,
            ],
        ),
        Metric::Variant(_) => ("variant", [("variant", variant), NONE]),
    }
}

/// `{"<dimension>":"<value>",...}`
fn push_dimensions(buf: &mut Vec<u8>, plan: &ProcessPlan, values: &[&str]) {
    buf.push(b'{');
    for (d, value) in values.iter().enumerate() {
        if d > 0 {
            buf.push(b',');
        }
        let name = plan.dimensions.get(d).map_or("?", |p| p.name.as_str());
        push_json_string(buf, name);
        buf.push(b':');
        push_json_string(buf, value);
    }
    buf.push(b'}');
}

/// The parts of a metric record that depend on the metric alone.
#[derive(Clone, Debug)]
struct MetricText {
    /// `{"id":"<definition>/<metric>[/<qualifier>...]/`
    id: Box<[u8]>,
    /// `,"process":..,"metric":..[,<qualifier fields>],"windowStart":`
    fields: Box<[u8]>,
    values: Values,
}

/// The value fields a metric's records carry.
#[derive(Clone, Copy, Debug)]
enum Values {
    Count,
    /// A step's counters, and the sum of the durations of its exits.
    Step,
}

/// The parts of a metric record that depend on the dimension combination alone.
#[derive(Clone, Debug)]
struct ComboText {
    /// `[/<value>,<value>...]"` (ends the id)
    id: Box<[u8]>,
    /// `,"dimensions":{...}`
    dimensions: Box<[u8]>,
}

/// The parts of a metric record that depend on the window and key group alone: a window
/// emits all its records at once, so they are rendered once for the lot.
#[derive(Clone, Debug, Default)]
struct WindowText {
    /// (key group, window start, window size) rendered.
    of: Option<(u16, i64, i64)>,
    /// `<window start>/<key group>`
    id: Vec<u8>,
    /// `<window start>,"windowEnd":<end>,"keyGroup":<key group>`
    fields: Vec<u8>,
}

/// Metric records are mostly the same few strings: rendered once per metric, per dimension
/// combination (when it is interned) and per window, copied per record.
#[derive(Clone, Debug, Default)]
pub struct RecordTexts {
    metrics: FxHashMap<Metric, MetricText>,
    /// The text of each sketch bucket's value, as reported quantiles use it.
    bucket_values: FxHashMap<i32, Box<[u8]>>,
    combos: Vec<ComboText>,
    window: WindowText,
}

/// The text of a metric, rendered on first use.
fn metric_text<'t>(
    metrics: &'t mut FxHashMap<Metric, MetricText>,
    plan: &ProcessPlan,
    variants: &[String],
    metric: &Metric,
) -> &'t MetricText {
    metrics.entry(*metric).or_insert_with(|| {
        let variant = match metric {
            Metric::Variant(v) => variants.get(*v as usize).map_or("?", String::as_str),
            _ => "",
        };
        let (name, qualifiers) = describe(plan, variant, metric);
        let qualifiers = qualifiers.iter().filter(|(k, _)| !k.is_empty());
        let mut id = b"{\"id\":\"".to_vec();
        push_json_escaped(&mut id, &plan.name);
        id.push(b'/');
        id.extend_from_slice(name.as_bytes());
        for (_, v) in qualifiers.clone() {
            id.push(b'/');
            push_json_escaped(&mut id, v);
        }
        id.push(b'/');
        let mut fields = b",\"process\":".to_vec();
        push_json_string(&mut fields, &plan.name);
        fields.extend_from_slice(b",\"metric\":\"");
        fields.extend_from_slice(name.as_bytes());
        fields.push(b'"');
        for (k, v) in qualifiers {
            fields.extend_from_slice(b",\"");
            fields.extend_from_slice(k.as_bytes());
            fields.extend_from_slice(b"\":");
            push_json_string(&mut fields, v);
        }
        fields.extend_from_slice(b",\"windowStart\":");
        MetricText {
            id: id.into(),
            fields: fields.into(),
            values: match metric {
                Metric::Step(_) => Values::Step,
                _ => Values::Count,
            },
        }
    })
}

impl RecordTexts {
    /// Renders the texts of combinations `self.combos.len()..` of `names`.
    pub fn add_combos(&mut self, plan: &ProcessPlan, names: &Names) {
        for id in self.combos.len()..names.combos.values.len() {
            let values: Vec<&str> = names
                .combo(id as u32)
                .iter()
                .enumerate()
                .map(|(d, v)| names.dimension_value(d, *v))
                .collect();
            let mut text = Vec::new();
            for (d, v) in values.iter().enumerate() {
                text.push(if d == 0 { b'/' } else { b',' });
                push_json_escaped(&mut text, v);
            }
            text.push(b'"');
            let mut dimensions = b",\"dimensions\":".to_vec();
            push_dimensions(&mut dimensions, plan, &values);
            self.combos.push(ComboText {
                id: text.into(),
                dimensions: dimensions.into(),
            });
        }
    }
}

/// One partial aggregate, and a newline. The id is
/// `<definition>/<metric>[/<qualifier>...]/<window start>/<key group>[/<dimension values>]`.
pub fn write_metric(
    buf: &mut Vec<u8>,
    texts: &mut RecordTexts,
    plan: &ProcessPlan,
    names: &Names,
    (kg, window_start, metric, combo): AggregateKey,
    agg: &Aggregate,
) {
    texts.add_combos(plan, names);
    let window = &mut texts.window;
    if window.of != Some((kg, window_start, plan.window)) {
        window.of = Some((kg, window_start, plan.window));
        window.id.clear();
        push_i64(&mut window.id, window_start);
        window.id.push(b'/');
        push_i64(&mut window.id, i64::from(kg));
        window.fields.clear();
        push_i64(&mut window.fields, window_start);
        window.fields.extend_from_slice(b",\"windowEnd\":");
        push_i64(&mut window.fields, window_start + plan.window);
        window.fields.extend_from_slice(b",\"keyGroup\":");
        push_i64(&mut window.fields, i64::from(kg));
    }
    let metric_text = metric_text(&mut texts.metrics, plan, &names.variants.values, &metric);
    buf.extend_from_slice(&metric_text.id);
    buf.extend_from_slice(&texts.window.id);
    let combo_text = texts.combos.get(combo as usize);
    buf.extend_from_slice(combo_text.map_or(&b"\""[..], |c| &c.id));
    buf.extend_from_slice(&metric_text.fields);
    buf.extend_from_slice(&texts.window.fields);
    buf.extend_from_slice(combo_text.map_or(&b",\"dimensions\":{}"[..], |c| &c.dimensions));
    match metric_text.values {
        Values::Count => {
            buf.extend_from_slice(b",\"count\":");
            push_i64(buf, agg.count());
        }
        Values::Step => {
            for (field, n) in [
                &b",\"entered\":"[..],
                b",\"wip\":",
                b",\"left\":",
                b",\"started\":",
            ]
            .into_iter()
            .zip(agg.counts)
            {
                buf.extend_from_slice(field);
                push_i64(buf, n);
            }
            buf.extend_from_slice(b",\"sumSeconds\":");
            push_seconds(buf, agg.sum_ms());
        }
    }
    if let Some(exits) = &agg.exits {
        let sketch = &exits.sketch;
        for (field, q) in [
            (&b",\"p50Seconds\":"[..], 0.5),
            (b",\"p90Seconds\":", 0.9),
            (b",\"p99Seconds\":", 0.99),
        ] {
            if let Some(bucket) = sketch.quantile_bucket(q) {
                buf.extend_from_slice(field);
                match bucket {
                    None => push_f64(buf, 0.0),
                    Some(i) => {
                        buf.extend_from_slice(texts.bucket_values.entry(i).or_insert_with(|| {
                            let mut text = Vec::new();
                            push_f64(&mut text, bucket_value(i));
                            text.into()
                        }))
                    }
                }
            }
        }
        buf.extend_from_slice(b",\"sketch\":");
        push_sketch(buf, sketch);
        // The edges out of the step: `"to":{"<next step>":{"count":..,"sumSeconds":..}}`.
        buf.extend_from_slice(b",\"to\":{");
        for (n, (to, count, sum_ms)) in exits.to.iter().enumerate() {
            if n > 0 {
                buf.push(b',');
            }
            push_json_string(buf, step_name(plan, *to));
            buf.extend_from_slice(b":{\"count\":");
            push_i64(buf, *count);
            buf.extend_from_slice(b",\"sumSeconds\":");
            push_seconds(buf, *sum_ms);
            buf.push(b'}');
        }
        buf.push(b'}');
    }
    buf.extend_from_slice(b"}\n");
}

/// A sketch as its serde form (`{"count":..,"sum_ms":..[,"zero":..],"buckets":{..}}`),
/// without serde's per-record allocations.
fn push_sketch(buf: &mut Vec<u8>, sketch: &Sketch) {
    buf.extend_from_slice(b"{\"count\":");
    push_i64(buf, sketch.count);
    buf.extend_from_slice(b",\"sum_ms\":");
    push_i64(buf, sketch.sum_ms);
    if sketch.zero != 0 {
        buf.extend_from_slice(b",\"zero\":");
        push_i64(buf, sketch.zero);
    }
    buf.extend_from_slice(b",\"buckets\":{");
    for (n, (index, count)) in sketch.buckets.iter().enumerate() {
        if n > 0 {
            buf.push(b',');
        }
        buf.push(b'"');
        push_i64(buf, i64::from(*index));
        buf.extend_from_slice(b"\":");
        push_i64(buf, *count);
    }
    buf.extend_from_slice(b"}}");
}

/// An SLA breach, and a newline.
pub fn write_alert(
    buf: &mut Vec<u8>,
    state: &ProcessState,
    instance: &Instance,
    visit: &Visit,
    breached_at: i64,
    sla: i64,
) {
    let step = step_name(&state.plan, visit.step);
    let id = format!(
        "{}/sla/{}/{step}/{}",
        state.plan.name, instance.key, visit.entered
    );
    buf.extend_from_slice(b"{\"id\":");
    push_json_string(buf, &id);
    buf.extend_from_slice(b",\"process\":");
    push_json_string(buf, &state.plan.name);
    buf.extend_from_slice(b",\"alert\":\"slaBreach\",\"instance\":");
    push_json_string(buf, &instance.key);
    buf.extend_from_slice(b",\"step\":");
    push_json_string(buf, step);
    buf.extend_from_slice(b",\"since\":");
    push_i64(buf, visit.entered);
    buf.extend_from_slice(b",\"breachedAt\":");
    push_i64(buf, breached_at);
    buf.extend_from_slice(b",\"slaSeconds\":");
    push_i64(buf, sla / 1000);
    buf.extend_from_slice(b",\"keyGroup\":");
    push_i64(buf, i64::from(instance.key_group));
    buf.extend_from_slice(b",\"dimensions\":");
    let values: Vec<&str> = (instance.dimensions.iter().enumerate())
        .map(|(d, v)| state.names.dimension_value(d, *v))
        .collect();
    push_dimensions(buf, &state.plan, &values);
    buf.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both_ways(ms: i64) -> (String, String) {
        let (mut fast, mut float) = (Vec::new(), Vec::new());
        push_seconds(&mut fast, ms);
        push_f64(&mut float, ms as f64 / 1000.0);
        (
            String::from_utf8(fast).unwrap(),
            String::from_utf8(float).unwrap(),
        )
    }

    #[test]
    fn seconds_are_written_as_the_float_formatter_writes_them() {
        for ms in [
            0,
            1,
            -1,
            10,
            100,
            999,
            1000,
            1001,
            1010,
            1100,
            -1500,
            86_400_000,
            999_999_999_999,
            1_000_000_000_000,
            -1_000_000_000_001,
            i64::MAX,
            i64::MIN,
        ] {
            let (fast, float) = both_ways(ms);
            assert_eq!(fast, float, "{ms} ms");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_milliseconds_are_written_as_the_float_formatter_writes_them(
            ms in proptest::prop_oneof![-100_000_000i64..100_000_000, proptest::num::i64::ANY],
        ) {
            let (fast, float) = both_ways(ms);
            proptest::prop_assert_eq!(fast, float);
        }
    }

    #[test]
    fn a_sketch_is_written_as_serde_writes_it() {
        let mut sketch = Sketch::default();
        assert_eq!(
            {
                let mut buf = Vec::new();
                push_sketch(&mut buf, &sketch);
                buf
            },
            serde_json::to_vec(&sketch).unwrap()
        );
        [0, 0, 1_500, 90_000, 90_000, 3_600_000]
            .iter()
            .for_each(|v| sketch.add(*v));
        sketch.add_weighted(1_500, -1);
        let mut buf = Vec::new();
        push_sketch(&mut buf, &sketch);
        assert_eq!(buf, serde_json::to_vec(&sketch).unwrap());
        let back: Sketch = serde_json::from_slice(&buf).unwrap();
        assert_eq!(back, sketch);
    }
}
