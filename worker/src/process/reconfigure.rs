//! Changed ProcessDefinitions applied to a running stage, without losing its state.
//!
//! Definitions are matched by name. A new one starts empty; a removed one's state goes. A
//! changed one keeps its instances and aggregates, mapped by the names of steps, outcomes and
//! dimensions: a renamed or removed step's actions and metrics go (counted), a dimension new
//! to the definition reads `other` for what came before. Each instance then contributes what
//! the new definition makes of its history, through the same take-back-and-add as a late
//! action, so aggregates stay the sum of their instances. Predicates apply to new actions
//! only: an instance keeps the steps its past actions were matched to (the raw actions are
//! not kept to match them again).

use rustc_hash::FxHashMap;

use super::instance::{Applied, Contribution, DimensionIds, Instance};
use super::plan::ProcessPlan;
use super::{Metric, NO_STEP, ProcessEngine, ProcessState};
use crate::time::MaybeTime;

/// What a reconfiguration did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reconfigured {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Definitions that kept their state (changed or not).
    pub kept: Vec<String>,
    /// Actions of instances whose step no longer exists.
    pub dropped_actions: u64,
    /// Aggregates of metrics that no longer exist (a removed step or outcome).
    pub dropped_aggregates: u64,
}

impl ProcessEngine {
    /// Replaces the definitions (see the module documentation). Every instance and aggregate
    /// is written again at the next checkpoint, which rewrites the stage's state whole: a
    /// definition's position, part of the state keys, may have changed.
    pub fn reconfigure(&mut self, plans: Vec<ProcessPlan>) -> Reconfigured {
        let mut old: Vec<Option<ProcessState>> = self.processes.drain(..).map(Some).collect();
        let mut report = Reconfigured::default();
        for plan in plans {
            let found = old
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.plan.name == plan.name))
                .and_then(|i| old[i].take());
            let state = match found {
                None => {
                    report.added.push(plan.name.clone());
                    ProcessState::new(plan, self.owned)
                }
                Some(previous) => {
                    report.kept.push(plan.name.clone());
                    self.migrate(previous, plan, &mut report)
                }
            };
            self.processes.push(state);
        }
        report.removed = old.into_iter().flatten().map(|s| s.plan.name).collect();
        self.rewrite = true;
        report
    }

    fn migrate(
        &self,
        mut old: ProcessState,
        plan: ProcessPlan,
        report: &mut Reconfigured,
    ) -> ProcessState {
        let by_name = |names: Vec<&str>, new: Vec<&str>| -> Vec<Option<u16>> {
            names
                .iter()
                .map(|n| new.iter().position(|m| m == n).map(|i| i as u16))
                .collect()
        };
        let steps = by_name(
            old.plan.steps.iter().map(|s| s.name.as_str()).collect(),
            plan.steps.iter().map(|s| s.name.as_str()).collect(),
        );
        let outcomes = by_name(
            old.plan.outcomes.iter().map(|o| o.0.as_str()).collect(),
            plan.outcomes.iter().map(|o| o.0.as_str()).collect(),
        );
        // For each new dimension, the old one of the same name.
        let dimensions: Vec<Option<usize>> = plan
            .dimensions
            .iter()
            .map(|d| old.plan.dimensions.iter().position(|o| o.name == d.name))
            .collect();
        let step = |s: u16| steps.get(usize::from(s)).copied().flatten();
        let metric = |m: Metric| -> Option<Metric> {
            Some(match m {
                Metric::Step(s) => Metric::Step(step(s)?),
                Metric::Wip(s) => Metric::Wip(step(s)?),
                Metric::Entered(s) => Metric::Entered(step(s)?),
                Metric::Duration(s) => Metric::Duration(step(s)?),
                Metric::SlaBreach(s) => Metric::SlaBreach(step(s)?),
                Metric::Transition(a, b) => Metric::Transition(step(a)?, step(b)?),
                Metric::Return(a, b) => Metric::Return(step(a)?, step(b)?),
                Metric::Outcome(o) => {
                    Metric::Outcome(outcomes.get(usize::from(o)).copied().flatten()?)
                }
                other => other,
            })
        };

        // What each instance contributed under the old definition, in the new terms.
        let mut instances: Vec<(Instance, Vec<Contribution>)> = Vec::new();
        for instance in old.instances.take_all() {
            let contributed = old
                .contributions(&instance)
                .into_iter()
                .filter_map(|(m, t, exit, tally)| {
                    // An exit to a removed step still counts, without its edge.
                    let exit = exit.map(|(ms, to)| (ms, step(to).unwrap_or(NO_STEP)));
                    Some((metric(m)?, t, exit, tally))
                })
                .collect();
            instances.push((instance, contributed));
        }

        let old_aggregates = old.windows.drain();
        old.settle_step_totals();
        let old_metrics = std::mem::take(&mut old.counts.metrics);
        let old = old;
        let mut new = ProcessState::new(plan, self.owned);
        // Variant ids stay valid: the table is copied whole (sequences are step names).
        new.names.variants = old.names.variants.clone();
        new.closed_before = old.closed_before.clone();
        let mut combos: FxHashMap<u32, u32> = FxHashMap::default();
        let mut combo = |new: &mut ProcessState, id: u32| -> u32 {
            if let Some(c) = combos.get(&id) {
                return *c;
            }
            let values: Vec<Option<String>> = dimensions
                .iter()
                .map(|d| {
                    let d = (*d)?;
                    let value = old.names.combo(id).get(d)?;
                    Some(old.names.dimension_value(d, *value).to_string())
                })
                .collect();
            let ids: Vec<u32> = values
                .iter()
                .enumerate()
                .map(|(d, v)| new.dimension_id(d, v.as_deref()))
                .collect();
            let c = new.names.combos.id(&ids);
            combos.insert(id, c);
            c
        };

        // Aggregates, merged where two old ones map to one new one.
        for ((kg, start, m, c), agg) in old_aggregates {
            let Some(m) = metric(m) else {
                report.dropped_aggregates += 1;
                continue;
            };
            let key = (kg, start, m, combo(&mut new, c));
            let mut agg = agg;
            if let Some(exits) = &mut agg.exits {
                // Edges to the next steps in the new terms (the same step twice is impossible:
                // steps map one to one), without those to removed steps.
                exits.to = exits
                    .to
                    .iter()
                    .filter_map(|(to, n, ms)| Some((step(*to)?, *n, *ms)))
                    .collect();
                exits.to.sort_unstable_by_key(|e| e.0);
            }
            new.windows.put(key, agg);
        }

        // Totals.
        new.counts.actions = old.counts.actions;
        new.counts.unmatched = old.counts.unmatched;
        new.counts.no_instance_key = old.counts.no_instance_key;
        new.counts.duplicates = old.counts.duplicates;
        new.counts.after_end = old.counts.after_end;
        new.counts.over_limit = old.counts.over_limit;
        new.counts.late_metric_updates = old.counts.late_metric_updates;
        for (m, n) in old_metrics {
            if let Some(m) = metric(m) {
                *new.counts.metrics.entry(m).or_default() += n;
            }
        }
        for (s, sketch) in old.counts.durations.iter().enumerate() {
            if let Some(target) =
                step(s as u16).and_then(|t| new.counts.durations.get_mut(usize::from(t)))
            {
                target.merge(sketch);
            }
        }

        // Instances: the history in the new terms, and the difference it makes.
        for (mut instance, contributed) in instances {
            let old_combo = combo(&mut new, instance.combo);
            let before = instance.actions.len();
            instance.actions = instance
                .actions
                .into_iter()
                .filter_map(|a| {
                    Some(Applied {
                        step: step(a.step)?,
                        outcomes: remap_bits(a.outcomes, &outcomes),
                        ..a
                    })
                })
                .collect();
            instance.actions.sort_unstable();
            instance.breaches = instance
                .breaches
                .iter()
                .copied()
                .filter_map(|(s, deadline)| Some((step(s)?, deadline)))
                .collect();
            report.dropped_actions += (before - instance.actions.len()) as u64;
            instance.combo = old_combo;
            instance.dimensions = DimensionIds::from_slice(new.names.combo(old_combo));
            instance.armed_sla = MaybeTime::NONE;
            instance.armed_timeout = MaybeTime::NONE;
            let kg = instance.key_group;
            let idx = usize::from(kg.wrapping_sub(self.owned.start));
            let wm = self.watermarks.get(idx).copied().unwrap_or(i64::MIN);
            let now = new.contributions(&instance);
            new.replace(
                kg,
                wm,
                self.lateness,
                Some((old_combo, contributed)),
                instance.combo,
                now,
            );
            // Listed whether it stays or goes (a rewrite replaces the stored state whole).
            instance.unsaved = false;
            new.mark_unsaved(&mut instance);
            if instance.actions.is_empty() {
                continue;
            }
            new.insert_instance(idx, instance, self.lateness);
        }
        new
    }
}

/// Outcome bits moved to their new positions; bits of removed outcomes dropped.
fn remap_bits(bits: u64, map: &[Option<u16>]) -> u64 {
    map.iter()
        .enumerate()
        .filter(|(old, _)| bits & (1 << old) != 0)
        .filter_map(|(_, new)| *new)
        .fold(0, |acc, new| acc | (1 << new))
}
