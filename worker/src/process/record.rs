//! The JSON records of the process stage.
//!
//! A metric record is one partial aggregate: `id` is its idempotent key (definition, metric,
//! its step/transition/outcome/variant, window start, key group, dimension values), so a
//! re-emitted window overwrites itself in a compacted topic or an upsert table, and the sum
//! of `count` (or the merge of `sketch`) over key groups is the total for the window.

use crate::join::record::{push_json_escaped, push_json_string};

use super::instance::Visit;
use super::{Aggregate, Instance, Metric, ProcessState};

fn push_i64(buf: &mut Vec<u8>, n: i64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_f64(buf: &mut Vec<u8>, x: f64) {
    match serde_json::Number::from_f64(x) {
        Some(n) => buf.extend_from_slice(n.to_string().as_bytes()),
        None => buf.extend_from_slice(b"null"),
    }
}

fn step_name(state: &ProcessState, step: u16) -> &str {
    state
        .plan
        .steps
        .get(usize::from(step))
        .map_or("?", |s| s.name.as_str())
}

/// The metric's name and its qualifier fields (`"step":..`, `"from":..,"to":..`).
fn describe<'s>(
    state: &'s ProcessState,
    metric: &Metric,
) -> (&'static str, [(&'static str, &'s str); 2]) {
    const NONE: (&str, &str) = ("", "");
    let step = |s: &u16| step_name(state, *s);
    match metric {
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
                    state
                        .plan
                        .outcomes
                        .get(usize::from(*o))
                        .map_or("?", |(n, _)| n.as_str()),
                ),
                NONE,
            ],
        ),
        Metric::Variant(v) => ("variant", [("variant", state.variant(*v)), NONE]),
    }
}

fn push_dimensions(buf: &mut Vec<u8>, state: &ProcessState, dims: &[u32]) {
    buf.push(b'{');
    for (d, id) in dims.iter().enumerate() {
        if d > 0 {
            buf.push(b',');
        }
        let name = state
            .plan
            .dimensions
            .get(d)
            .map_or("?", |p| p.name.as_str());
        push_json_string(buf, name);
        buf.push(b':');
        push_json_string(buf, state.dimension_value(d, *id));
    }
    buf.push(b'}');
}

/// One partial aggregate, and a newline. The id is
/// `<definition>/<metric>[/<qualifier>...]/<window start>/<key group>[/<dimension values>]`.
pub fn write_metric(
    buf: &mut Vec<u8>,
    state: &ProcessState,
    kg: u16,
    window_start: i64,
    metric: &Metric,
    combo: u32,
    agg: &Aggregate,
) {
    let dims = state.combo(combo);
    let (name, qualifiers) = describe(state, metric);
    let qualifiers = qualifiers.iter().filter(|(k, _)| !k.is_empty());
    buf.extend_from_slice(b"{\"id\":\"");
    push_json_escaped(buf, &state.plan.name);
    buf.push(b'/');
    buf.extend_from_slice(name.as_bytes());
    for (_, v) in qualifiers.clone() {
        buf.push(b'/');
        push_json_escaped(buf, v);
    }
    buf.push(b'/');
    push_i64(buf, window_start);
    buf.push(b'/');
    push_i64(buf, i64::from(kg));
    for (d, v) in dims.iter().enumerate() {
        buf.push(if d == 0 { b'/' } else { b',' });
        push_json_escaped(buf, state.dimension_value(d, *v));
    }
    buf.extend_from_slice(b"\",\"process\":");
    push_json_string(buf, &state.plan.name);
    buf.extend_from_slice(b",\"metric\":\"");
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'"');
    for (k, v) in qualifiers {
        buf.extend_from_slice(b",\"");
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(b"\":");
        push_json_string(buf, v);
    }
    buf.extend_from_slice(b",\"windowStart\":");
    push_i64(buf, window_start);
    buf.extend_from_slice(b",\"windowEnd\":");
    push_i64(buf, window_start + state.plan.window);
    buf.extend_from_slice(b",\"keyGroup\":");
    push_i64(buf, i64::from(kg));
    buf.extend_from_slice(b",\"dimensions\":");
    push_dimensions(buf, state, dims);
    buf.extend_from_slice(b",\"count\":");
    push_i64(buf, agg.count);
    if matches!(metric, Metric::Duration(_) | Metric::Transition(..)) {
        buf.extend_from_slice(b",\"sumSeconds\":");
        push_f64(buf, agg.sum_ms as f64 / 1000.0);
    }
    if let Some(sketch) = &agg.sketch {
        for (field, q) in [
            ("p50Seconds", 0.5),
            ("p90Seconds", 0.9),
            ("p99Seconds", 0.99),
        ] {
            if let Some(v) = sketch.quantile(q) {
                buf.extend_from_slice(b",\"");
                buf.extend_from_slice(field.as_bytes());
                buf.extend_from_slice(b"\":");
                push_f64(buf, v);
            }
        }
        buf.extend_from_slice(b",\"sketch\":");
        match serde_json::to_vec(sketch) {
            Ok(json) => buf.extend_from_slice(&json),
            Err(_) => buf.extend_from_slice(b"null"),
        }
    }
    buf.extend_from_slice(b"}\n");
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
    let step = step_name(state, visit.step);
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
    push_dimensions(buf, state, &instance.dimensions);
    buf.extend_from_slice(b"}\n");
}
