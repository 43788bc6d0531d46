//! The process stage's low-cardinality totals in the Prometheus text format: per definition
//! and step (never per dimension value, which belongs in the windowed metric records).
//! Local mode writes them to `metrics.prom` at the end of a run (a node-exporter textfile);
//! the worker serves the same registry on `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Totals;

type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    // prometheus-client ends the help text with its own period.
    registry.register(name, help.trim_end_matches('.'), family.clone());
    family
}

fn gauge(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(name, help.trim_end_matches('.'), family.clone());
    family
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Registers the totals of each definition (name, totals, step names in order).
pub fn register(registry: &mut Registry, processes: &[(String, Totals, Vec<String>)]) {
    let started = counter(
        registry,
        "weft_process_instances_started",
        "Process instances started.",
    );
    let completed = counter(
        registry,
        "weft_process_instances_completed",
        "Process instances that reached a final step.",
    );
    let abandoned = counter(
        registry,
        "weft_process_instances_abandoned",
        "Process instances abandoned after instanceTimeout without actions.",
    );
    let in_progress = gauge(
        registry,
        "weft_process_instances_in_progress",
        "Process instances in a step now (WIP).",
    );
    let entered = counter(
        registry,
        "weft_process_step_entries",
        "Entries into a step.",
    );
    let duration = gauge(
        registry,
        "weft_process_step_duration_seconds",
        "Time in a step before leaving it, by quantile (from a mergeable sketch, 1% relative accuracy).",
    );
    let returns = counter(
        registry,
        "weft_process_returns",
        "Moves back to an earlier step.",
    );
    let outcomes = counter(
        registry,
        "weft_process_outcomes",
        "Instances with an outcome.",
    );
    let breaches = counter(
        registry,
        "weft_process_sla_breaches",
        "SLA breaches (an instance stayed in a step longer than its sla).",
    );
    let unmatched = counter(
        registry,
        "weft_process_unmatched_actions",
        "Joined actions that matched no step.",
    );
    for (name, t, steps) in processes {
        let process = || vec![("process", name.clone())];
        let with = |k: &'static str, v: &str| {
            let mut l = process();
            l.push((k, v.to_string()));
            l
        };
        started.get_or_create(&process()).inc_by(count(t.started));
        completed
            .get_or_create(&process())
            .inc_by(count(t.completed));
        abandoned
            .get_or_create(&process())
            .inc_by(count(t.abandoned));
        unmatched.get_or_create(&process()).inc_by(t.unmatched);
        for step in steps {
            let wip = t.wip.get(step).copied().unwrap_or(0);
            in_progress
                .get_or_create(&with("step", step))
                .set(wip as f64);
            let n = t.entered.get(step).copied().unwrap_or(0);
            entered.get_or_create(&with("step", step)).inc_by(count(n));
            if let Some(sketch) = t.durations.get(step) {
                for (label, q) in [("0.5", 0.5), ("0.9", 0.9), ("0.99", 0.99)] {
                    if let Some(v) = sketch.quantile(q) {
                        let mut l = with("step", step);
                        l.push(("quantile", label.to_string()));
                        duration.get_or_create(&l).set(v);
                    }
                }
            }
        }
        for (pair, n) in &t.returns {
            let (from, to) = pair.split_once("->").unwrap_or((pair, ""));
            let mut l = with("from", from);
            l.push(("to", to.to_string()));
            returns.get_or_create(&l).inc_by(count(*n));
        }
        for (outcome, n) in &t.outcomes {
            outcomes
                .get_or_create(&with("outcome", outcome))
                .inc_by(count(*n));
        }
        for (step, n) in &t.sla_breaches {
            breaches
                .get_or_create(&with("step", step))
                .inc_by(count(*n));
        }
    }
}

/// The totals as Prometheus text, the same text for the same totals: each family's samples
/// sorted (prometheus-client keeps a family's label sets in a hash map, so its own order
/// changes from one process to the next, and two runs' `metrics.prom` would not compare).
pub fn render(processes: &[(String, Totals, Vec<String>)]) -> String {
    let mut registry = Registry::default();
    register(&mut registry, processes);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    let mut out = String::with_capacity(text.len());
    let mut samples: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            samples.sort_unstable();
            samples.drain(..).for_each(|s| {
                out.push_str(s);
                out.push('\n');
            });
            out.push_str(line);
            out.push('\n');
        } else {
            samples.push(line);
        }
    }
    samples.sort_unstable();
    samples.into_iter().for_each(|s| {
        out.push_str(s);
        out.push('\n');
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_render_with_process_and_step_labels() {
        let mut t = Totals {
            started: 3,
            completed: 1,
            unmatched: 2,
            ..Totals::default()
        };
        t.wip.insert("review".into(), 2);
        t.entered.insert("review".into(), 4);
        t.returns.insert("review->apply".into(), 1);
        let mut sketch = super::super::sketch::Sketch::default();
        sketch.add(90_000);
        t.durations.insert("review".into(), sketch);
        let text = render(&[("cards".into(), t, vec!["apply".into(), "review".into()])]);
        for line in [
            r#"weft_process_instances_started_total{process="cards"} 3"#,
            r#"weft_process_instances_in_progress{process="cards",step="review"} 2.0"#,
            r#"weft_process_instances_in_progress{process="cards",step="apply"} 0.0"#,
            r#"weft_process_step_entries_total{process="cards",step="review"} 4"#,
            r#"weft_process_returns_total{process="cards",from="review",to="apply"} 1"#,
            r#"weft_process_unmatched_actions_total{process="cards"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        let p50 = text
            .lines()
            .find(|l| {
                l.starts_with(
                    r#"weft_process_step_duration_seconds{process="cards",step="review",quantile="0.5"}"#,
                )
            })
            .unwrap();
        let v: f64 = p50.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((v - 90.0).abs() < 0.9, "{p50}");
        assert!(!text.contains(".."), "help text ends with one period");
    }

    #[test]
    fn the_same_totals_render_the_same_text_with_each_familys_samples_sorted() {
        let mut t = Totals::default();
        let steps: Vec<String> = ["apply", "review", "issue", "make", "deliver", "activate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (i, step) in steps.iter().enumerate() {
            t.wip.insert(step.clone(), i as i64);
            t.entered.insert(step.clone(), 10 * i as i64);
        }
        let processes = [("cards".to_string(), t, steps)];
        let first = render(&processes);
        for _ in 0..5 {
            assert_eq!(render(&processes), first);
        }
        let wip: Vec<&str> = first
            .lines()
            .filter(|l| l.starts_with("weft_process_instances_in_progress{"))
            .collect();
        assert_eq!(wip.len(), 6);
        assert!(wip.is_sorted(), "{wip:?}");
        assert!(first.ends_with("# EOF\n"), "{first}");
    }
}
