//! A ProcessDefinition compiled for the stage, and the classification of one action: its
//! step, instance key, time, outcomes and dimension values.

use std::borrow::Cow;

use weft_crds::ProcessDefinitionSpec;

use super::predicate::{Fields, Predicate};
use crate::sources::scan::PointerSet;
use crate::sources::text_of;

/// One step of a compiled definition.
pub struct StepPlan {
    pub name: String,
    pub predicate: Predicate,
    pub sla: Option<i64>,
    pub is_final: bool,
}

/// A ProcessDefinition compiled for the stage.
pub struct ProcessPlan {
    pub name: String,
    pointers: PointerSet,
    first_time: usize,
    tracking_number: usize,
    pub steps: Vec<StepPlan>,
    pub outcomes: Vec<(String, Predicate)>,
    instance_key: Vec<usize>,
    /// Only the instance-key fields: routing an action needs nothing else.
    instance_key_pointers: PointerSet,
    pub dimensions: Vec<DimensionPlan>,
    pub instance_timeout: i64,
    pub window: i64,
}

pub struct DimensionPlan {
    pub name: String,
    slot: usize,
    pub max_values: usize,
}

fn ms(d: weft_crds::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl ProcessPlan {
    /// Compiles a definition; an error names the field (`spec.steps[2].match: ...`).
    pub fn compile(name: &str, spec: &ProcessDefinitionSpec) -> Result<ProcessPlan, String> {
        let mut pointers = PointerSet::default();
        let first_time = pointers.add(&["firstEventTime"]);
        let tracking_number = pointers.add(&["trackingNumber"]);
        let last = spec.steps.len().saturating_sub(1);
        let steps = spec
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(StepPlan {
                    name: s.name.clone(),
                    predicate: Predicate::compile(&s.match_, &mut pointers)
                        .map_err(|e| format!("spec.steps[{i}].match: {e}"))?,
                    sla: s.sla.map(ms),
                    is_final: s.r#final || i == last,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let outcomes = spec
            .outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| {
                Ok((
                    o.name.clone(),
                    Predicate::compile(&o.match_, &mut pointers)
                        .map_err(|e| format!("spec.outcomes[{i}].match: {e}"))?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let instance_key = spec
            .instance_key
            .fields
            .iter()
            .map(|p| pointers.add(p.segments()))
            .collect();
        let mut instance_key_pointers = PointerSet::default();
        for p in &spec.instance_key.fields {
            instance_key_pointers.add(p.segments());
        }
        let dimensions = spec
            .dimensions
            .iter()
            .map(|d| DimensionPlan {
                name: d.name.clone(),
                slot: pointers.add(d.field.segments()),
                max_values: d.max_values as usize,
            })
            .collect();
        Ok(ProcessPlan {
            name: name.to_string(),
            pointers,
            first_time,
            tracking_number,
            steps,
            outcomes,
            instance_key,
            instance_key_pointers,
            dimensions,
            instance_timeout: ms(spec.instance_timeout),
            window: ms(spec.metrics_window).max(1),
        })
    }
}

/// What one action is, for a definition. Text is borrowed from the action record where it
/// needs no unescaping.
#[derive(Debug, PartialEq, Eq)]
pub struct Classified<'a> {
    pub step: Option<usize>,
    pub instance: Option<Cow<'a, str>>,
    pub time: Option<i64>,
    pub tracking_number: Option<Cow<'a, str>>,
    pub outcomes: u64,
    pub dimensions: Vec<Option<Cow<'a, str>>>,
}

impl ProcessPlan {
    /// The instance key of an action record alone (the first of the key fields that is
    /// there): what routing an action to its instance's key group needs, without the
    /// predicates. `None` for a record that is not JSON or has no key.
    pub fn instance_key<'a>(&self, action: &'a str) -> Option<Cow<'a, str>> {
        const STACK: usize = 8;
        let n = self.instance_key_pointers.len();
        let mut stack: [Option<&'a str>; STACK] = [None; STACK];
        let mut heap: Vec<Option<&'a str>>;
        let values: &mut [Option<&'a str>] = if n <= STACK {
            &mut stack[..n]
        } else {
            heap = vec![None; n];
            &mut heap
        };
        self.instance_key_pointers.scan(action, values).ok()?;
        values
            .iter()
            .flatten()
            .find(|v| **v != "null")
            .map(|v| text_of(v))
            .filter(|k| !k.is_empty())
    }

    /// Reads an action record (JSON) and evaluates the predicates. `Err` for a record that is
    /// not JSON.
    pub fn classify<'a>(&self, action: &'a str) -> Result<Classified<'a>, String> {
        const STACK: usize = 32;
        let mut stack: [Option<&'a str>; STACK] = [None; STACK];
        let mut heap: Vec<Option<&'a str>>;
        let values: &mut [Option<&'a str>] = if self.pointers.len() <= STACK {
            &mut stack[..self.pointers.len()]
        } else {
            heap = vec![None; self.pointers.len()];
            &mut heap
        };
        self.pointers
            .scan(action, values)
            .map_err(|e| format!("action is not JSON: {e}"))?;
        let values: &[Option<&'a str>] = values;
        let fields = Fields { values, action };
        let get = |slot: usize| values.get(slot).copied().flatten().filter(|v| *v != "null");
        let step = self.steps.iter().position(|s| s.predicate.matches(&fields));
        let outcomes = self
            .outcomes
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| p.matches(&fields))
            .fold(0u64, |m, (i, _)| m | (1 << i.min(63)));
        Ok(Classified {
            step,
            instance: self
                .instance_key
                .iter()
                .find_map(|s| get(*s))
                .map(text_of)
                .filter(|k| !k.is_empty()),
            time: get(self.first_time).and_then(|v| v.parse().ok()),
            tracking_number: get(self.tracking_number).map(text_of),
            outcomes,
            dimensions: self
                .dimensions
                .iter()
                .map(|d| get(d.slot).map(text_of))
                .collect(),
        })
    }
}
