//! The JSON records of the process stage.
//!
//! A metric record holds the partial aggregates of one metric kind (`step`, `outcome` …) in
//! one window, key group and dimension combination: `id` is its idempotent key (definition,
//! kind, window start, key group, dimension values), so a re-emitted record overwrites itself
//! in a compacted topic or an upsert table, and the sum of each value (or the merge of each
//! `sketch`) over key groups is the total for the window. A kind with qualifiers holds its
//! values by qualifier: `"steps":{"<step>":{"entered":..,"wip":..,"left":..,"started":..}}`,
//! `"outcomes":{"<outcome>":<count>}`; one without, `"count"`.

use crate::join::record::{push_json_escaped, push_json_string};

use rustc_hash::FxHashMap;

use super::instance::Visit;
use super::sketch::{Sketch, bucket_value};
use super::windows::Cell;
use super::{Aggregate, Instance, Metric, Names, ProcessPlan, ProcessState};

/// Most numbers of a metric record are counts of -1, 0 or 1: one digit is written as is,
/// without formatting it and copying it out of a buffer.
fn push_i64(buf: &mut Vec<u8>, n: i64) {
    match u8::try_from(n.unsigned_abs()) {
        Ok(digit @ 0..=9) => {
            if n < 0 {
                buf.push(b'-');
            }
            buf.push(b'0' + digit);
        }
        _ => buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
    }
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
    // Below 10⁹ s: an i64.
    push_i64(buf, (abs / 1000) as i64);
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

/// A metric's kind as records name it, and the field holding its values by qualifier (none:
/// the kind has no qualifier and its record holds one `count`).
fn kind_names(metric: &Metric) -> (&'static str, Option<&'static str>) {
    match metric {
        Metric::Step(_) => ("step", Some("steps")),
        Metric::Started => ("started", None),
        Metric::Completed => ("completed", None),
        Metric::Abandoned => ("abandoned", None),
        Metric::SkippedSteps => ("skippedSteps", None),
        Metric::Wip(_) => ("wip", Some("steps")),
        Metric::Entered(_) => ("entered", Some("steps")),
        Metric::Duration(_) => ("stepDuration", Some("steps")),
        Metric::SlaBreach(_) => ("slaBreach", Some("slaBreaches")),
        Metric::Transition(..) => ("transition", Some("transitions")),
        Metric::Return(..) => ("return", Some("returns")),
        Metric::Outcome(_) => ("outcome", Some("outcomes")),
        Metric::Variant(_) => ("variant", Some("variants")),
    }
}

/// What tells a metric from the others of its kind, as the key of its value in the record:
/// its step, `<from>-><to>`, its outcome or its variant (`apply>review>...`).
fn qualifier(plan: &ProcessPlan, variants: &[String], metric: &Metric) -> String {
    match metric {
        Metric::Step(s)
        | Metric::Wip(s)
        | Metric::Entered(s)
        | Metric::Duration(s)
        | Metric::SlaBreach(s) => step_name(plan, *s).to_string(),
        Metric::Transition(a, b) | Metric::Return(a, b) => {
            format!("{}->{}", step_name(plan, *a), step_name(plan, *b))
        }
        Metric::Outcome(o) => plan
            .outcomes
            .get(usize::from(*o))
            .map_or("?", |(n, _)| n.as_str())
            .to_string(),
        Metric::Variant(v) => variants
            .get(*v as usize)
            .map_or("?", String::as_str)
            .to_string(),
        Metric::Started | Metric::Completed | Metric::Abandoned | Metric::SkippedSteps => {
            String::new()
        }
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
    /// `{"id":"<definition>/<kind>/` (the kind's: a record carries all metrics of a kind)
    id: Box<[u8]>,
    /// `,"process":..,"metric":"<kind>","windowStart":`
    fields: Box<[u8]>,
    /// `,"<values field>":{` for a kind with qualifiers, else empty.
    open_values: Box<[u8]>,
    /// `"<qualifier>":`, the key of its value (empty without a qualifier).
    member: Box<[u8]>,
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
        let (kind, values_field) = kind_names(metric);
        let mut id = b"{\"id\":\"".to_vec();
        push_json_escaped(&mut id, &plan.name);
        id.push(b'/');
        id.extend_from_slice(kind.as_bytes());
        id.push(b'/');
        let mut fields = b",\"process\":".to_vec();
        push_json_string(&mut fields, &plan.name);
        fields.extend_from_slice(b",\"metric\":\"");
        fields.extend_from_slice(kind.as_bytes());
        fields.extend_from_slice(b"\",\"windowStart\":");
        let (mut open_values, mut member) = (Vec::new(), Vec::new());
        if let Some(field) = values_field {
            open_values.extend_from_slice(b",\"");
            open_values.extend_from_slice(field.as_bytes());
            open_values.extend_from_slice(b"\":{");
            push_json_string(&mut member, &qualifier(plan, variants, metric));
            member.push(b':');
        }
        MetricText {
            id: id.into(),
            fields: fields.into(),
            open_values: open_values.into(),
            member: member.into(),
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

/// One metric record, and a newline: the aggregates of a [`Cell`] (one kind's). The id is
/// `<definition>/<kind>/<window start>/<key group>[/<dimension values>]`; a kind with
/// qualifiers holds its aggregates by qualifier (`"steps":{"apply":{..},"review":{..}}`,
/// `"outcomes":{"approved":1}`), none of them all zero; one without holds `"count"`.
pub fn write_metric(
    buf: &mut Vec<u8>,
    texts: &mut RecordTexts,
    plan: &ProcessPlan,
    names: &Names,
    cell: &Cell<'_>,
) {
    let Some(first) = cell.aggregates.first() else {
        return;
    };
    texts.add_combos(plan, names);
    let (kg, window_start) = (cell.key_group, cell.start);
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
    let variants = &names.variants.values;
    // The first metric's text has its kind's too.
    let kind = metric_text(&mut texts.metrics, plan, variants, &first.metric);
    buf.extend_from_slice(&kind.id);
    buf.extend_from_slice(&texts.window.id);
    let combo_text = texts.combos.get(first.combo as usize);
    buf.extend_from_slice(combo_text.map_or(&b"\""[..], |c| &c.id));
    buf.extend_from_slice(&kind.fields);
    buf.extend_from_slice(&texts.window.fields);
    buf.extend_from_slice(combo_text.map_or(&b",\"dimensions\":{}"[..], |c| &c.dimensions));
    if kind.open_values.is_empty() {
        buf.extend_from_slice(b",\"count\":");
        push_i64(buf, first.agg.count());
        buf.extend_from_slice(b"}\n");
        return;
    }
    buf.extend_from_slice(&kind.open_values);
    let mut members = 0;
    if !first.agg.is_zero() {
        push_member(buf, &mut texts.bucket_values, plan, kind, &first.agg);
        members += 1;
    }
    for entry in cell.aggregates[1..].iter().filter(|e| !e.agg.is_zero()) {
        if members > 0 {
            buf.push(b',');
        }
        members += 1;
        let text = metric_text(&mut texts.metrics, plan, variants, &entry.metric);
        push_member(buf, &mut texts.bucket_values, plan, text, &entry.agg);
    }
    buf.extend_from_slice(b"}}\n");
}

/// `"<qualifier>":<values>`
fn push_member(
    buf: &mut Vec<u8>,
    bucket_values: &mut FxHashMap<i32, Box<[u8]>>,
    plan: &ProcessPlan,
    text: &MetricText,
    agg: &Aggregate,
) {
    buf.extend_from_slice(&text.member);
    match text.values {
        Values::Count => push_i64(buf, agg.count()),
        Values::Step => push_step(buf, bucket_values, plan, agg),
    }
}

/// A step's values: `{"entered":..,"wip":..,"left":..,"started":..,"sumSeconds":..}`, with
/// its exits' quantiles, sketch and next steps (`"to"`) when it has any.
fn push_step(
    buf: &mut Vec<u8>,
    bucket_values: &mut FxHashMap<i32, Box<[u8]>>,
    plan: &ProcessPlan,
    agg: &Aggregate,
) {
    for (field, n) in [
        &b"{\"entered\":"[..],
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
                    Some(i) => buf.extend_from_slice(bucket_values.entry(i).or_insert_with(|| {
                        let mut text = Vec::new();
                        push_f64(&mut text, bucket_value(i));
                        text.into()
                    })),
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
    buf.push(b'}');
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
    fn integers_are_written_as_itoa_writes_them() {
        for n in (-12..=12).chain([99, -100, i64::MAX, i64::MIN]) {
            let mut buf = Vec::new();
            push_i64(&mut buf, n);
            assert_eq!(String::from_utf8(buf).unwrap(), n.to_string());
        }
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
