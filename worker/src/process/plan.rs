//! A ProcessDefinition compiled for the stage, and the classification of one action: its
//! step, instance key, time, outcomes and dimension values.

use std::borrow::Cow;

use smallvec::SmallVec;
use weft_crds::keygroup::key_group;
use weft_crds::{Part, ProcessDefinitionSpec};

use super::instance::tracking_fingerprint;
use super::predicate::{Fields, Predicate, PredicateIndex};
use crate::join::record::RecordLayout;
use crate::sources::SourcePlan;
use crate::sources::event_time::parse_integer;
use crate::sources::scan::{MemberOrder, PointerSet};
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
    /// Which steps and outcomes (in that order) an action can match (see
    /// [`PredicateIndex`]).
    index: PredicateIndex,
    instance_key: Vec<usize>,
    pub dimensions: Vec<DimensionPlan>,
    pub instance_timeout: i64,
    pub window: i64,
    /// How a record the join has just written is read through its [`RecordLayout`]; `None`
    /// when a pointer needs the record scanned (one naming a whole part, say).
    layout: Option<LayoutSlots>,
    /// How each part's fields are written (see [`ProcessPlan::expect_members`]).
    orders: [Option<MemberOrder>; 3],
}

/// The slots of the pointers a [`RecordLayout`] finds directly.
struct LayoutSlots {
    /// Top-level members named by a pointer.
    head: Vec<(&'static str, usize)>,
    /// Each part's `eventTime`, in [`Part::ALL`](weft_crds::Part::ALL) order.
    part_times: [Option<usize>; 3],
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
        let dimensions = spec
            .dimensions
            .iter()
            .map(|d| DimensionPlan {
                name: d.name.clone(),
                slot: pointers.add(d.field.segments()),
                max_values: d.max_values as usize,
            })
            .collect();
        let parts = weft_crds::Part::ALL.map(|p| p.as_str());
        let layout = pointers
            .served_by(&RecordLayout::HEAD_NAMES, &parts)
            .then(|| LayoutSlots {
                head: RecordLayout::HEAD_NAMES
                    .into_iter()
                    .filter_map(|n| Some((n, pointers.slot_of(&[n])?)))
                    .collect(),
                part_times: parts.map(|p| pointers.slot_of(&[p, "eventTime"])),
            });
        Ok(ProcessPlan {
            name: name.to_string(),
            layout,
            orders: Default::default(),
            pointers,
            first_time,
            tracking_number,
            index: PredicateIndex::new(
                steps
                    .iter()
                    .map(|s| &s.predicate)
                    .chain(outcomes.iter().map(|(_, p)| p)),
            ),
            steps,
            outcomes,
            instance_key,
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
    /// The tracking number's fingerprint ([`tracking_fingerprint`]; 0 without one): all the
    /// stage needs of it, to know an action applied before.
    pub tracking: u64,
    pub outcomes: u64,
    /// In place for up to four dimensions: no allocation per action.
    pub dimensions: SmallVec<[Option<Cow<'a, str>>; 4]>,
}

impl Classified<'_> {
    /// The key group of the instance the stage applies this action to; `None` when it does
    /// not apply it (no step matched, or no instance key or time: it only counts it).
    pub fn instance_key_group(&self, key_groups: u16) -> Option<u16> {
        match (&self.step, &self.instance, &self.time) {
            (Some(_), Some(key), Some(_)) => Some(key_group(key.as_bytes(), key_groups)),
            _ => None,
        }
    }
}

impl ProcessPlan {
    /// Reads an action record (JSON) and evaluates the predicates. `Err` for a record that is
    /// not JSON.
    pub fn classify<'a>(&self, action: &'a str) -> Result<Classified<'a>, String> {
        self.scan(action, None, |values| {
            self.evaluate(action, values, self.instance_of(values))
        })
    }

    /// Reads the fields of the parts of a record just written (see
    /// [`ProcessPlan::classify_written`]) expecting the members in the order the first of
    /// `sources` that provides the part writes them: a member where expected is read without
    /// looking its name up (that lookup was half of reading the fields).
    pub fn expect_members(&mut self, sources: &[SourcePlan]) {
        self.expect_orders(|part| sources.iter().find_map(|s| s.written_members(part)));
    }

    /// [`ProcessPlan::expect_members`] with every part written as `written`.
    #[cfg(test)]
    pub(crate) fn expect_written(&mut self, written: &[(&str, &str)]) {
        self.expect_orders(|_| Some(written.to_vec()));
    }

    /// Each part's order from the members `written` says it is written with.
    fn expect_orders<'w>(&mut self, written: impl Fn(Part) -> Option<Vec<(&'w str, &'w str)>>) {
        for part in Part::ALL {
            self.orders[part as usize] = written(part)
                .and_then(|members| self.pointers.member_order(part.as_str(), &members));
        }
    }

    /// Whether [`ProcessPlan::classify_written`] reads through the layout (not by a scan).
    #[cfg(test)]
    pub(crate) fn reads_layouts(&self) -> bool {
        self.layout.is_some()
    }

    /// [`ProcessPlan::classify`] of a record the join has just written, read through its
    /// layout.
    pub fn classify_written<'a>(
        &self,
        action: &'a str,
        layout: &RecordLayout,
    ) -> Result<Classified<'a>, String> {
        self.scan(action, Some(layout), |values| {
            self.evaluate(action, values, self.instance_of(values))
        })
    }

    /// Reads an action record and evaluates the predicates only if `here` takes its instance
    /// key (`None`: it has none): `Ok(Err(key))` for an action routed to the worker that owns
    /// its instance, which classifies it there. `Err` for a record that is not JSON.
    pub fn classify_if<'a>(
        &self,
        action: &'a str,
        layout: Option<&RecordLayout>,
        here: impl FnOnce(Option<&str>) -> bool,
    ) -> Result<Result<Classified<'a>, Option<Cow<'a, str>>>, String> {
        self.scan(action, layout, |values| {
            let instance = self.instance_of(values);
            match here(instance.as_deref()) {
                true => Ok(self.evaluate(action, values, instance)),
                false => Err(instance),
            }
        })
    }

    /// Finds the fields this definition reads, in one scan (of the parts' fields only, with
    /// the `layout` of a record just written), and hands them to `then`.
    fn scan<'a, R>(
        &self,
        action: &'a str,
        layout: Option<&RecordLayout>,
        then: impl FnOnce(&[Option<&'a str>]) -> R,
    ) -> Result<R, String> {
        const STACK: usize = 32;
        let mut stack: [Option<&'a str>; STACK] = [None; STACK];
        let mut heap: Vec<Option<&'a str>>;
        let values: &mut [Option<&'a str>] = if self.pointers.len() <= STACK {
            &mut stack[..self.pointers.len()]
        } else {
            heap = vec![None; self.pointers.len()];
            &mut heap
        };
        let read = match (&self.layout, layout) {
            (Some(slots), Some(layout)) => self.read_written(slots, action, layout, values),
            _ => None,
        };
        if read.is_none() {
            self.pointers
                .scan(action, values)
                .map_err(|e| format!("action is not JSON: {e}"))?;
        }
        Ok(then(values))
    }

    /// Sets the slots from a written record's layout as a scan of the record would: members
    /// in the record's order, the first occurrence of a name winning. `None` if the layout
    /// does not fit the record (then it is scanned).
    fn read_written<'a>(
        &self,
        slots: &LayoutSlots,
        action: &'a str,
        layout: &RecordLayout,
        values: &mut [Option<&'a str>],
    ) -> Option<()> {
        values.iter_mut().for_each(|v| *v = None);
        for (name, range) in layout.head() {
            if let Some((_, slot)) = slots.head.iter().find(|(n, _)| n == name) {
                *values.get_mut(*slot)? = Some(action.get(range.clone())?);
            }
        }
        for (part, read) in weft_crds::Part::ALL.iter().zip(&layout.parts) {
            let Some((time, fields)) = read else {
                continue;
            };
            if let Some(slot) = slots.part_times[*part as usize] {
                *values.get_mut(slot)? = Some(action.get(time.clone())?);
            }
            let fields = action.get(fields.clone())?;
            match &self.orders[*part as usize] {
                Some(order) => self
                    .pointers
                    .scan_in_order(part.as_str(), order, fields, values),
                None => self.pointers.scan_members(part.as_str(), fields, values),
            }
            .ok()?;
        }
        Some(())
    }

    /// The instance key: the first of its fields present and not empty.
    fn instance_of<'a>(&self, values: &[Option<&'a str>]) -> Option<Cow<'a, str>> {
        self.instance_key
            .iter()
            .find_map(|s| present(values, *s))
            .map(text_of)
            .filter(|k| !k.is_empty())
    }

    /// The predicates evaluated over the fields found (the instance key found already).
    fn evaluate<'a>(
        &self,
        action: &'a str,
        values: &[Option<&'a str>],
        instance: Option<Cow<'a, str>>,
    ) -> Classified<'a> {
        let fields = Fields { values, action };
        let (mut step, mut outcomes) = (None, 0u64);
        let matches = |p: Option<&Predicate>| p.is_some_and(|p| p.matches(&fields));
        for i in self.index.candidates(&fields) {
            match i.checked_sub(self.steps.len()) {
                // The first step that matches.
                None if step.is_none() && matches(self.steps.get(i).map(|s| &s.predicate)) => {
                    step = Some(i);
                }
                None => {}
                Some(o) if matches(self.outcomes.get(o).map(|(_, p)| p)) => {
                    outcomes |= 1 << o.min(63);
                }
                Some(_) => {}
            }
        }
        Classified {
            step,
            instance,
            time: present(values, self.first_time).and_then(parse_integer),
            tracking: present(values, self.tracking_number)
                .map_or(0, |v| tracking_fingerprint(&text_of(v))),
            outcomes,
            dimensions: self
                .dimensions
                .iter()
                .map(|d| present(values, d.slot).map(text_of))
                .collect(),
        }
    }
}

/// A field's value, unless it is missing or `null`.
fn present<'a>(values: &[Option<&'a str>], slot: usize) -> Option<&'a str> {
    values.get(slot).copied().flatten().filter(|v| *v != "null")
}

/// `u32::MAX` as a length: no string.
const ABSENT: u32 = u32::MAX;

/// Classified actions on their way to the process stage (see [`Classified::encode`]): the
/// fixed-size fields and the texts' lengths in `bytes`, the texts back to back in `texts`,
/// so that reading them back checks no UTF-8 (a text's check was a tenth of decoding it).
#[derive(Debug, Default)]
pub struct ClassifiedBatch {
    bytes: Vec<u8>,
    texts: String,
}

impl ClassifiedBatch {
    pub fn with_capacity(bytes: usize) -> ClassifiedBatch {
        ClassifiedBatch {
            bytes: Vec::with_capacity(bytes),
            texts: String::with_capacity(bytes / 2),
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.texts.clear();
    }

    /// The classifications in the order they were encoded, each with its definition; `None`
    /// (and nothing after it) where the batch is cut short.
    pub fn decode(&self) -> impl Iterator<Item = Option<(u16, Classified<'_>)>> {
        let (mut bytes, mut texts) = (self.bytes.as_slice(), self.texts.as_str());
        let mut failed = false;
        std::iter::from_fn(move || {
            if bytes.is_empty() || failed {
                return None;
            }
            let read = decode_classified(&mut bytes, &mut texts);
            failed = read.is_none();
            Some(read)
        })
    }

    /// Drops the last byte of the fixed-size fields (a test of [`ClassifiedBatch::decode`]).
    #[cfg(test)]
    pub(crate) fn cut_short(&mut self) {
        self.bytes.pop();
    }

    fn put_text(&mut self, text: Option<&str>) {
        match text {
            Some(t) => {
                self.bytes
                    .extend_from_slice(&(t.len() as u32).to_le_bytes());
                self.texts.push_str(t);
            }
            None => self.bytes.extend_from_slice(&ABSENT.to_le_bytes()),
        }
    }
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
    *bytes = rest;
    Some(head)
}

fn take_u32(bytes: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?))
}

fn take_text<'a>(bytes: &mut &[u8], texts: &mut &'a str) -> Option<Option<Cow<'a, str>>> {
    match take_u32(bytes)? {
        ABSENT => Some(None),
        n => {
            let (text, rest) = texts.split_at_checked(n as usize)?;
            *texts = rest;
            Some(Some(Cow::Borrowed(text)))
        }
    }
}

impl Classified<'_> {
    /// Appends the classification for definition `p` in a compact binary form, which
    /// [`ClassifiedBatch::decode`] reads back borrowing its text: how the join's thread hands
    /// a classified action to the process stage's.
    pub fn encode(&self, p: u16, batch: &mut ClassifiedBatch) {
        let step = self.step.map_or(u16::MAX, |s| s as u16);
        // The fixed-size fields in one copy (one capacity check, not seven).
        let mut head = [0u8; HEAD];
        head[0..2].copy_from_slice(&p.to_le_bytes());
        head[2..4].copy_from_slice(&step.to_le_bytes());
        head[4] = u8::from(self.time.is_some());
        head[5..13].copy_from_slice(&self.time.unwrap_or(0).to_le_bytes());
        head[13..21].copy_from_slice(&self.outcomes.to_le_bytes());
        head[21..29].copy_from_slice(&self.tracking.to_le_bytes());
        head[29..33].copy_from_slice(&(self.dimensions.len() as u32).to_le_bytes());
        batch.bytes.extend_from_slice(&head);
        batch.put_text(self.instance.as_deref());
        for d in &self.dimensions {
            batch.put_text(d.as_deref());
        }
    }
}

/// Bytes of a classification's fixed-size fields (see [`Classified::encode`]).
const HEAD: usize = 33;

/// The first classification in `b` and `texts` (see [`Classified::encode`]) and its
/// definition, each taken off the front; `None` when they are cut short.
fn decode_classified<'a>(b: &mut &[u8], texts: &mut &'a str) -> Option<(u16, Classified<'a>)> {
    let head: &[u8; HEAD] = take(b, HEAD)?.try_into().ok()?;
    let u16_at = |i: usize| u16::from_le_bytes([head[i], head[i + 1]]);
    let u64_at = |i: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&head[i..i + 8]);
        u64::from_le_bytes(word)
    };
    let (p, step, has_time) = (u16_at(0), u16_at(2), head[4] != 0);
    let n = u32::from_le_bytes([head[29], head[30], head[31], head[32]]) as usize;
    let instance = take_text(b, texts)?;
    let mut dimensions = SmallVec::new();
    for _ in 0..n {
        dimensions.push(take_text(b, texts)?);
    }
    let classified = Classified {
        step: (step != u16::MAX).then_some(usize::from(step)),
        instance,
        time: has_time.then_some(u64_at(5) as i64),
        tracking: u64_at(21),
        outcomes: u64_at(13),
        dimensions,
    };
    Some((p, classified))
}
