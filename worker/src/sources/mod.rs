//! Sources: turning one raw message into what the join needs, reading only the fields the
//! pipeline uses (one pass over the message for all of them, no DOM), and refusing what
//! cannot be used with a reason.

pub mod event_time;
pub mod files;

use std::borrow::Cow;
use std::fmt;

use sonic_rs::{JsonValueTrait, LazyValue, PointerTree};
use weft_crds::Part;
use weft_crds::join_pipeline::{EventTimeFormat, FilterOperator, SourceSpec};

/// Why a message went to the dead-letter output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterReason {
    NotJson,
    Oversized,
    NoTrackingNumber,
    NoEventTime,
    BadEventTime,
    ImplausibleEventTime,
    FutureEventTime,
    NoDiscriminator,
    UnknownDiscriminator,
    /// Arrived after its action was already emitted as incomplete, or later than the lateness
    /// bound behind the watermark.
    Late,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::NotJson => "not-json",
            DeadLetterReason::Oversized => "oversized",
            DeadLetterReason::NoTrackingNumber => "no-tracking-number",
            DeadLetterReason::NoEventTime => "no-event-time",
            DeadLetterReason::BadEventTime => "bad-event-time",
            DeadLetterReason::ImplausibleEventTime => "implausible-event-time",
            DeadLetterReason::FutureEventTime => "future-event-time",
            DeadLetterReason::NoDiscriminator => "no-discriminator",
            DeadLetterReason::UnknownDiscriminator => "unknown-discriminator",
            DeadLetterReason::Late => "late",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: DeadLetterReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// What the join needs from one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub part: Part,
    pub tracking_number: Cow<'a, str>,
    /// Epoch milliseconds.
    pub event_time: i64,
    /// The projected fields as the members of a JSON object, without braces:
    /// `"path":"/cc/apply","status":200` (empty when nothing is projected).
    pub fields: String,
}

/// The outcome of reading one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Extracted<'a> {
    Message(Message<'a>),
    /// Dropped by the source's filter (not an error).
    Filtered,
}

struct FieldPlan {
    /// Pre-escaped `"name":`.
    name_prefix: String,
    value: usize,
    parts: u8,
}

struct FilterPlan {
    value: usize,
    operator: FilterOperator,
    values: Vec<String>,
}

/// A source compiled for reading: every pointer it needs, in one tree for a single pass.
pub struct SourcePlan {
    pub name: String,
    tree: PointerTree,
    tracking_number: usize,
    event_time: usize,
    event_time_format: EventTimeFormat,
    discriminator: Option<(usize, Vec<(String, Part)>)>,
    single_part: Option<Part>,
    filters: Vec<FilterPlan>,
    fields: Vec<FieldPlan>,
    keep_payload: bool,
    max_message_bytes: usize,
}

fn part_bit(part: Part) -> u8 {
    1 << (part as u8)
}

impl SourcePlan {
    pub fn new(spec: &SourceSpec) -> SourcePlan {
        let mut pointers: Vec<Vec<String>> = Vec::new();
        let mut index_of = |pointer: &weft_crds::JsonPointer| -> usize {
            let segments = pointer.segments().to_vec();
            if let Some(i) = pointers.iter().position(|p| *p == segments) {
                i
            } else {
                pointers.push(segments);
                pointers.len() - 1
            }
        };
        let tracking_number = index_of(&spec.tracking_number);
        let event_time = index_of(&spec.event_time.pointer);
        let discriminator = spec.discriminator.as_ref().map(|d| {
            (
                index_of(&d.pointer),
                d.values.iter().map(|(v, p)| (v.clone(), *p)).collect(),
            )
        });
        let filters = spec
            .filter
            .iter()
            .map(|f| FilterPlan {
                value: index_of(&f.pointer),
                operator: f.operator,
                values: f.values.clone(),
            })
            .collect();
        let fields = spec
            .fields
            .iter()
            .map(|f| FieldPlan {
                name_prefix: format!("{}:", serde_json::Value::String(f.name.clone())),
                value: index_of(&f.pointer),
                parts: if f.parts.is_empty() {
                    0b111
                } else {
                    f.parts.iter().fold(0, |m, p| m | part_bit(*p))
                },
            })
            .collect();
        let mut tree = PointerTree::new();
        for pointer in &pointers {
            tree.add_path(pointer.iter().map(String::as_str));
        }
        SourcePlan {
            name: spec.name.clone(),
            tree,
            tracking_number,
            event_time,
            event_time_format: spec.event_time.format,
            discriminator,
            single_part: spec.part,
            filters,
            fields,
            keep_payload: spec.keep_payload,
            max_message_bytes: spec.max_message_bytes as usize,
        }
    }

    /// Reads one message. Never panics on input: whatever is wrong becomes a [`Rejection`].
    pub fn extract<'a>(&self, raw: &'a [u8]) -> Result<Extracted<'a>, Rejection> {
        if raw.len() > self.max_message_bytes {
            return Err(Rejection::new(
                DeadLetterReason::Oversized,
                format!(
                    "{} bytes, more than maxMessageBytes {}",
                    raw.len(),
                    self.max_message_bytes
                ),
            ));
        }
        let text = std::str::from_utf8(raw)
            .map_err(|e| Rejection::new(DeadLetterReason::NotJson, format!("not UTF-8: {e}")))?;
        let trimmed = text.trim_start();
        if !trimmed.starts_with('{') {
            return Err(Rejection::new(
                DeadLetterReason::NotJson,
                "not a JSON object",
            ));
        }
        let values = sonic_rs::get_many(text, &self.tree)
            .map_err(|e| Rejection::new(DeadLetterReason::NotJson, format!("invalid JSON: {e}")))?;
        // get_many stops once every wanted pointer is found; the rest must still be valid JSON
        // for the message to count as JSON at all.
        if !is_complete_json(text) {
            return Err(Rejection::new(DeadLetterReason::NotJson, "invalid JSON"));
        }
        let value = |i: usize| {
            values
                .get(i)
                .and_then(Option::as_ref)
                .filter(|v| !is_null(v))
        };

        for filter in &self.filters {
            let found = value(filter.value);
            let pass = match filter.operator {
                FilterOperator::Exists => found.is_some(),
                FilterOperator::DoesNotExist => found.is_none(),
                FilterOperator::In => {
                    found.is_some_and(|v| filter.values.iter().any(|x| *x == text_of(v)))
                }
                FilterOperator::NotIn => {
                    found.is_none_or(|v| !filter.values.iter().any(|x| *x == text_of(v)))
                }
            };
            if !pass {
                return Ok(Extracted::Filtered);
            }
        }

        let part = match (&self.single_part, &self.discriminator) {
            (Some(part), _) => *part,
            (None, Some((at, map))) => {
                let v = value(*at).ok_or_else(|| {
                    Rejection::new(
                        DeadLetterReason::NoDiscriminator,
                        "discriminator field missing",
                    )
                })?;
                let key = text_of(v);
                map.iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, p)| *p)
                    .ok_or_else(|| {
                        Rejection::new(
                            DeadLetterReason::UnknownDiscriminator,
                            format!("discriminator value {key:?} maps to no part"),
                        )
                    })?
            }
            (None, None) => {
                return Err(Rejection::new(
                    DeadLetterReason::NoDiscriminator,
                    "source has neither part nor discriminator",
                ));
            }
        };

        let tracking_number = match value(self.tracking_number) {
            Some(v) => match v.get_type() {
                sonic_rs::JsonType::String | sonic_rs::JsonType::Number => text_of(v),
                _ => {
                    return Err(Rejection::new(
                        DeadLetterReason::NoTrackingNumber,
                        "tracking number is not a string or number",
                    ));
                }
            },
            None => {
                return Err(Rejection::new(
                    DeadLetterReason::NoTrackingNumber,
                    "tracking number missing",
                ));
            }
        };
        if tracking_number.is_empty() {
            return Err(Rejection::new(
                DeadLetterReason::NoTrackingNumber,
                "tracking number is empty",
            ));
        }

        let raw_time = value(self.event_time)
            .ok_or_else(|| Rejection::new(DeadLetterReason::NoEventTime, "event time missing"))?;
        let event_time = event_time::parse(raw_time.as_raw_str(), self.event_time_format)
            .ok_or_else(|| {
                Rejection::new(
                    DeadLetterReason::BadEventTime,
                    format!(
                        "{} is not a {:?} time",
                        raw_time.as_raw_str(),
                        self.event_time_format
                    ),
                )
            })?;
        if !(event_time::PLAUSIBLE_FROM_MS..event_time::PLAUSIBLE_UNTIL_MS).contains(&event_time) {
            return Err(Rejection::new(
                DeadLetterReason::ImplausibleEventTime,
                format!("{event_time} ms is outside 2000-01-01..2200-01-01"),
            ));
        }

        let mut fields = String::new();
        let bit = part_bit(part);
        for field in &self.fields {
            if field.parts & bit == 0 {
                continue;
            }
            if let Some(v) = value(field.value) {
                if !fields.is_empty() {
                    fields.push(',');
                }
                fields.push_str(&field.name_prefix);
                fields.push_str(v.as_raw_str());
            }
        }
        if self.keep_payload {
            let inner = trimmed
                .trim_end()
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .unwrap_or_default()
                .trim();
            if !inner.is_empty() {
                if !fields.is_empty() {
                    fields.push(',');
                }
                fields.push_str(inner);
            }
        }
        Ok(Extracted::Message(Message {
            part,
            tracking_number,
            event_time,
            fields,
        }))
    }
}

fn is_null(v: &LazyValue<'_>) -> bool {
    v.as_raw_str() == "null"
}

/// A value as text for comparisons and keys: a string's content, or the raw JSON otherwise.
fn text_of<'a>(v: &LazyValue<'a>) -> Cow<'a, str> {
    if v.is_str() {
        match v.as_raw_cow() {
            Cow::Borrowed(raw) if !raw.contains('\\') => Cow::Borrowed(&raw[1..raw.len() - 1]),
            _ => Cow::Owned(v.as_str().unwrap_or_default().to_string()),
        }
    } else {
        v.as_raw_cow()
    }
}

/// Whether the text is one complete, valid JSON value (validated without building a DOM).
fn is_complete_json(text: &str) -> bool {
    sonic_rs::from_str::<serde::de::IgnoredAny>(text).is_ok()
}
