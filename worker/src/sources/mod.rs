//! Sources: turning one raw message into what the join needs, reading only the fields the
//! pipeline uses (one pass over the message for all of them, no DOM), and refusing what
//! cannot be used with a reason.

pub mod event_time;
pub mod files;
pub mod scan;

use std::borrow::Cow;
use std::fmt;

use weft_crds::Part;
use weft_crds::join_pipeline::{EventTimeFormat, FilterOperator, SourceSpec};

use scan::PointerSet;

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
    /// A record on an internal topic that Weft did not write (no or unknown Weft header).
    Foreign,
    /// A record on a partition whose key group this worker does not own: the upstream
    /// partitioning is not Kafka's default partitioner over the tracking number.
    WrongPartition,
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
            DeadLetterReason::Foreign => "foreign-record",
            DeadLetterReason::WrongPartition => "wrong-partition",
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
    /// `"path":"/cc/apply","status":200` (empty when nothing is projected). Written into the
    /// caller's buffer: the join copies them only when it keeps the part, and the part that
    /// completes an action (a third of them) is written out without an allocation.
    pub fields: &'a str,
}

/// The outcome of reading one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Extracted<'a> {
    Message(Message<'a>),
    /// Dropped by the source's filter (not an error).
    Filtered,
}

struct FieldPlan {
    name: String,
    /// Pre-escaped `"name":`.
    name_prefix: String,
    value: usize,
    parts: u8,
}

struct FilterPlan {
    value: usize,
    operator: FilterOperator,
    values: Vec<String>,
    /// `values` as JSON strings (quoted, escaped as serde_json writes them).
    quoted: Vec<String>,
}

/// The field that tells a source's parts apart, and the part each of its values means.
struct DiscriminatorPlan {
    value: usize,
    values: Vec<String>,
    quoted: Vec<String>,
    parts: Vec<Part>,
}

/// A string as JSON text: a raw value with these bytes is that string (see [`among`]).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Which of `texts` the raw JSON value `raw` is (compared as [`text_of`] reads it). A raw
/// string with the bytes of one's JSON text is that one, without unescaping; other raw
/// values (escaped differently, or another value) are unescaped and compared.
fn among(raw: &str, texts: &[String], quoted: &[String]) -> Option<usize> {
    let raw_bytes = raw.as_bytes();
    let found = quoted
        .iter()
        .position(|q| scan::same_bytes(q.as_bytes(), raw_bytes));
    found.or_else(|| {
        let value = text_of(raw);
        texts.iter().position(|t| *t == value)
    })
}

/// A source compiled for reading: every pointer it needs, in one set for a single pass.
pub struct SourcePlan {
    pub name: String,
    pointers: PointerSet,
    tracking_number: usize,
    event_time: usize,
    event_time_format: EventTimeFormat,
    discriminator: Option<DiscriminatorPlan>,
    single_part: Option<Part>,
    filters: Vec<FilterPlan>,
    fields: Vec<FieldPlan>,
    /// For each part (in [`Part::ALL`] order), the fields projected into it.
    fields_of: [Vec<usize>; 3],
    keep_payload: bool,
    max_message_bytes: usize,
}

fn part_bit(part: Part) -> u8 {
    1 << (part as u8)
}

/// Slots for a scan without a heap allocation in the usual case of few pointers.
const STACK_SLOTS: usize = 24;

impl SourcePlan {
    pub fn new(spec: &SourceSpec) -> SourcePlan {
        let mut pointers = PointerSet::default();
        let tracking_number = pointers.add(spec.tracking_number.segments());
        let event_time = pointers.add(spec.event_time.pointer.segments());
        let discriminator = spec.discriminator.as_ref().map(|d| DiscriminatorPlan {
            value: pointers.add(d.pointer.segments()),
            values: d.values.keys().cloned().collect(),
            quoted: d.values.keys().map(|v| quoted(v)).collect(),
            parts: d.values.values().copied().collect(),
        });
        let filters = spec
            .filter
            .iter()
            .map(|f| FilterPlan {
                value: pointers.add(f.pointer.segments()),
                operator: f.operator,
                values: f.values.clone(),
                quoted: f.values.iter().map(|v| quoted(v)).collect(),
            })
            .collect();
        let fields: Vec<FieldPlan> = spec
            .fields
            .iter()
            .map(|f| FieldPlan {
                name: f.name.clone(),
                name_prefix: format!("{}:", serde_json::Value::String(f.name.clone())),
                value: pointers.add(f.pointer.segments()),
                parts: if f.parts.is_empty() {
                    0b111
                } else {
                    f.parts.iter().fold(0, |m, p| m | part_bit(*p))
                },
            })
            .collect();
        SourcePlan {
            name: spec.name.clone(),
            pointers,
            tracking_number,
            event_time,
            event_time_format: spec.event_time.format,
            discriminator,
            single_part: spec.part,
            filters,
            fields_of: Part::ALL.map(|p| {
                (0..fields.len())
                    .filter(|&f| fields[f].parts & part_bit(p) != 0)
                    .collect()
            }),
            fields,
            keep_payload: spec.keep_payload,
            max_message_bytes: spec.max_message_bytes as usize,
        }
    }

    /// The members a part's projected fields are written as, in order (each one's name and
    /// `"name":` text; a message leaves out those it lacks). `None` for a part this source
    /// does not provide, or whose fields carry the whole payload too.
    pub fn written_members(&self, part: Part) -> Option<Vec<(&str, &str)>> {
        let provides = self.single_part == Some(part)
            || self
                .discriminator
                .as_ref()
                .is_some_and(|d| d.parts.contains(&part));
        (provides && !self.keep_payload).then(|| {
            self.fields_of[part as usize]
                .iter()
                .map(|&f| {
                    (
                        self.fields[f].name.as_str(),
                        self.fields[f].name_prefix.as_str(),
                    )
                })
                .collect()
        })
    }

    /// Reads one message, its projected fields written into `buf`. Never panics on input:
    /// whatever is wrong becomes a [`Rejection`].
    pub fn extract<'a>(
        &self,
        raw: &'a [u8],
        buf: &'a mut String,
    ) -> Result<Extracted<'a>, Rejection> {
        self.read(raw, Some(buf))
    }

    /// [`SourcePlan::extract`] without the projection (`fields` empty): the same checks and
    /// the same outcome, for the shuffle, which routes the raw message by its tracking number
    /// and time and had built, then dropped, the projected fields of every message.
    pub fn examine<'a>(&self, raw: &'a [u8]) -> Result<Extracted<'a>, Rejection> {
        self.read(raw, None)
    }

    /// Reads one message, projecting its fields into `project` if given.
    fn read<'a>(
        &self,
        raw: &'a [u8],
        project: Option<&'a mut String>,
    ) -> Result<Extracted<'a>, Rejection> {
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
        // A message starts with its brace, mostly: no trimming then.
        let trimmed = match text.starts_with('{') {
            true => text,
            false => text.trim_start(),
        };
        if !trimmed.starts_with('{') {
            return Err(Rejection::new(
                DeadLetterReason::NotJson,
                "not a JSON object",
            ));
        }
        let mut stack: [Option<&'a str>; STACK_SLOTS] = [None; STACK_SLOTS];
        let mut heap: Vec<Option<&'a str>>;
        let values: &mut [Option<&'a str>] = if self.pointers.len() <= STACK_SLOTS {
            &mut stack[..self.pointers.len()]
        } else {
            heap = vec![None; self.pointers.len()];
            &mut heap
        };
        self.pointers
            .scan(text, values)
            .map_err(|e| Rejection::new(DeadLetterReason::NotJson, format!("invalid JSON: {e}")))?;
        let value = |i: usize| match values.get(i).copied().flatten() {
            Some("null") | None => None,
            found => found,
        };

        for filter in &self.filters {
            let found = value(filter.value);
            let pass = match filter.operator {
                FilterOperator::Exists => found.is_some(),
                FilterOperator::DoesNotExist => found.is_none(),
                FilterOperator::In => {
                    found.is_some_and(|v| among(v, &filter.values, &filter.quoted).is_some())
                }
                FilterOperator::NotIn => {
                    found.is_none_or(|v| among(v, &filter.values, &filter.quoted).is_none())
                }
            };
            if !pass {
                return Ok(Extracted::Filtered);
            }
        }

        let part = match (&self.single_part, &self.discriminator) {
            (Some(part), _) => *part,
            (None, Some(d)) => {
                let v = value(d.value).ok_or_else(|| {
                    Rejection::new(
                        DeadLetterReason::NoDiscriminator,
                        "discriminator field missing",
                    )
                })?;
                match among(v, &d.values, &d.quoted) {
                    Some(i) => d.parts[i],
                    None => {
                        return Err(Rejection::new(
                            DeadLetterReason::UnknownDiscriminator,
                            format!("discriminator value {:?} maps to no part", text_of(v)),
                        ));
                    }
                }
            }
            (None, None) => {
                return Err(Rejection::new(
                    DeadLetterReason::NoDiscriminator,
                    "source has neither part nor discriminator",
                ));
            }
        };

        let tracking_number = match value(self.tracking_number) {
            // A string or a number: its first byte says which.
            Some(v) if matches!(v.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9')) => {
                text_of(v)
            }
            Some(_) => {
                return Err(Rejection::new(
                    DeadLetterReason::NoTrackingNumber,
                    "tracking number is not a string or number",
                ));
            }
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
        let event_time = event_time::parse(raw_time, self.event_time_format).ok_or_else(|| {
            Rejection::new(
                DeadLetterReason::BadEventTime,
                format!("{raw_time} is not a {:?} time", self.event_time_format),
            )
        })?;
        if !(event_time::PLAUSIBLE_FROM_MS..event_time::PLAUSIBLE_UNTIL_MS).contains(&event_time) {
            return Err(Rejection::new(
                DeadLetterReason::ImplausibleEventTime,
                format!("{event_time} ms is outside 2000-01-01..2200-01-01"),
            ));
        }

        let Some(fields) = project else {
            return Ok(Extracted::Message(Message {
                part,
                tracking_number,
                event_time,
                fields: "",
            }));
        };
        let payload = if self.keep_payload {
            trimmed
                .trim_end()
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .unwrap_or_default()
                .trim()
        } else {
            ""
        };
        fields.clear();
        for field in self.fields_of[part as usize]
            .iter()
            .map(|&f| &self.fields[f])
        {
            let Some(v) = value(field.value) else {
                continue;
            };
            if !fields.is_empty() {
                fields.push(',');
            }
            fields.push_str(&field.name_prefix);
            fields.push_str(v);
        }
        if !payload.is_empty() {
            if !fields.is_empty() {
                fields.push(',');
            }
            fields.push_str(payload);
        }
        Ok(Extracted::Message(Message {
            part,
            tracking_number,
            event_time,
            fields: fields.as_str(),
        }))
    }
}

/// Whether string content has a backslash (an escape). Eight bytes at a time (the last word
/// overlapping the one before), shorter strings byte by byte: the strings compared and keyed
/// on (tracking numbers, discriminator, dimension and literal values) are a few bytes long,
/// where a `memchr` call costs more.
pub(crate) fn has_backslash(content: &str) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // Some byte of `w` is a backslash: some byte of `x` is zero.
    let flagged = |w: [u8; 8]| {
        let x = u64::from_le_bytes(w) ^ (ONES * u64::from(b'\\'));
        x.wrapping_sub(ONES) & !x & HIGH != 0
    };
    let b = content.as_bytes();
    let Some(last) = b.len().checked_sub(8) else {
        return b.contains(&b'\\');
    };
    b.chunks_exact(8).any(|w| w.try_into().is_ok_and(flagged))
        || b[last..].try_into().is_ok_and(flagged)
}

/// A value as text for comparisons and keys: a string's content, or the raw JSON otherwise.
pub(crate) fn text_of(v: &str) -> Cow<'_, str> {
    match v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(content) if has_backslash(content) => {
            Cow::Owned(String::from_utf8_lossy(&scan::unescape(content.as_bytes())).into_owned())
        }
        Some(content) => Cow::Borrowed(content),
        None => Cow::Borrowed(v),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A backslash is found wherever it is, in strings of any length.
    #[test]
    fn a_backslash_is_found_anywhere() {
        for len in 0..40 {
            let plain: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            assert!(!has_backslash(&plain), "{plain}");
            for at in 0..len {
                let mut bytes = plain.clone().into_bytes();
                bytes[at] = b'\\';
                let text = String::from_utf8(bytes).unwrap();
                assert!(has_backslash(&text), "{text}");
            }
        }
        // Bytes one off a backslash, and multi-byte characters, are not one.
        assert!(!has_backslash("[]]]]]]]]]][[[[[é€"));
    }

    /// A filter's or discriminator's value is found whatever its escapes, as its unescaped
    /// text would find it.
    #[test]
    fn values_are_found_among_a_list_as_their_text_finds_them() {
        let texts: Vec<String> = ["REQ", "a\"b", "é", "12"].map(String::from).into();
        let quoted: Vec<String> = texts.iter().map(|t| quoted(t)).collect();
        for (raw, expected) in [
            (r#""REQ""#, Some(0)),
            (r#""R\u0045Q""#, Some(0)),
            (r#""a\"b""#, Some(1)),
            (r#""a\u0022b""#, Some(1)),
            (r#""é""#, Some(2)),
            (r#""\u00e9""#, Some(2)),
            (r#""12""#, Some(3)),
            ("12", Some(3)),
            (r#""RESP""#, None),
            ("null", None),
        ] {
            assert_eq!(among(raw, &texts, &quoted), expected, "{raw}");
            let by_text = texts.iter().position(|t| *t == text_of(raw));
            assert_eq!(expected, by_text, "{raw}");
        }
    }

    #[test]
    fn examining_a_message_gives_what_extracting_it_gives_but_the_projection() {
        let example = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/examples/credit-card"
        ));
        let resources = ["processdefinition.yaml", "joinpipeline.yaml"].map(|f| example.join(f));
        let (pipeline, _) = crate::local::load_pipeline(&resources, None).unwrap();
        let plan = SourcePlan::new(&pipeline.spec.sources[0]);
        let long = format!(
            r#"{{"logType":"REQ","traceId":"T1","ts":1763798400000,"env":"prod","pad":"{}"}}"#,
            "x".repeat(plan.max_message_bytes)
        );
        let lines = [
            r#"{"logType":"REQ","traceId":"T1","ts":1763798400000,"env":"prod","http":{"path":"/cc/apply"},"body":{"applicationNo":"A1","product":"gold","branchCode":"B1"}}"#,
            r#"{"logType":"RESP","traceId":"T\u00311","ts":1763798400100,"env":"prod","http":{"status":200},"body":{"applicationNo":"A1","decision":""}}"#,
            r#"{"logType":"TRK","traceId":12,"ts":1763798400200,"env":"prod","channel":"web","page":"cc-apply"}"#,
            r#"{"logType":"TRK","traceId":"T2","ts":1763798400200,"env":"uat"}"#,
            r#"{"logType":"REQ","ts":1763798400000,"env":"prod"}"#,
            r#"{"logType":"REQ","traceId":"T3","ts":"yesterday","env":"prod"}"#,
            r#"{"logType":"AUDIT","traceId":"T4","ts":1763798400000,"env":"prod"}"#,
            r#"{"logType":"REQ","traceId":"T5","ts":1763798400000,"env":"prod""#,
            "not json",
            long.as_str(),
        ];
        let mut projected = 0;
        for line in lines {
            let mut buf = String::new();
            let extracted = plan.extract(line.as_bytes(), &mut buf);
            let examined = plan.examine(line.as_bytes());
            let without_fields = match extracted {
                Ok(Extracted::Message(m)) => {
                    projected += usize::from(!m.fields.is_empty());
                    Ok(Extracted::Message(Message { fields: "", ..m }))
                }
                other => other,
            };
            assert_eq!(examined, without_fields, "{line}");
        }
        assert_eq!(
            projected, 3,
            "the three good messages have fields to project"
        );
    }
}
