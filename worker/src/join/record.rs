//! The JSON records the join emits. Written by hand into a reused buffer: the projected
//! fields are already JSON text, so an action is a few copies, not a serialization.

use std::ops::Range;

use weft_crds::Part;

use super::{Parts, part_bit};

/// Where a written record's values lie in the buffer: what classifying the action for the
/// process stage reads, found as the record is written instead of scanning it again (that
/// scan was an eighth of a local run's instructions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordLayout {
    /// The top-level members before the parts (see [`RecordLayout::head`]).
    head: [(&'static str, Range<usize>); 5],
    head_len: usize,
    /// For each part present (in [`Part::ALL`] order): the range of its `eventTime` value and
    /// of its projected fields (members without braces).
    pub parts: [Option<(Range<usize>, Range<usize>)>; 3],
}

impl RecordLayout {
    /// The top-level members before the parts: names and value ranges, in the record's order.
    pub fn head(&self) -> &[(&'static str, Range<usize>)] {
        &self.head[..self.head_len]
    }

    /// Every name the head of a record can have (an action's or an incomplete one's).
    pub const HEAD_NAMES: [&'static str; 6] = [
        "trackingNumber",
        "keyGroup",
        "firstEventTime",
        "completedEventTime",
        "expiredAt",
        "missing",
    ];

    fn add_head(&mut self, name: &'static str, value: Range<usize>) {
        if let Some(entry) = self.head.get_mut(self.head_len) {
            *entry = (name, value);
            self.head_len += 1;
        }
    }
}

/// Appends `"name":` (in `name_prefix`) and the value `write` appends; records where the
/// value lies.
fn member(
    buf: &mut Vec<u8>,
    layout: &mut RecordLayout,
    name_prefix: &[u8],
    name: &'static str,
    write: impl FnOnce(&mut Vec<u8>),
) {
    buf.extend_from_slice(name_prefix);
    let start = buf.len();
    write(buf);
    layout.add_head(name, start..buf.len());
}

/// Appends a JSON string literal.
pub fn push_json_string(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    push_json_escaped(buf, s);
    buf.push(b'"');
}

/// Appends the content of a JSON string literal (escaped, without quotes).
pub fn push_json_escaped(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Most strings need no escaping: one check the compiler vectorizes, then one copy.
    if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => buf.extend_from_slice(e),
            None => buf.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

fn push_i64(buf: &mut Vec<u8>, n: i64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes the head and starts `layout` afresh.
fn push_head(
    buf: &mut Vec<u8>,
    layout: &mut RecordLayout,
    key_group: u16,
    tracking_number: &str,
    parts: &Parts<'_>,
) {
    layout.head_len = 0;
    layout.parts = Default::default();
    let l = layout;
    member(buf, l, b"{\"trackingNumber\":", "trackingNumber", |b| {
        push_json_string(b, tracking_number)
    });
    member(buf, l, b",\"keyGroup\":", "keyGroup", |b| {
        push_i64(b, i64::from(key_group))
    });
    member(buf, l, b",\"firstEventTime\":", "firstEventTime", |b| {
        push_i64(b, parts.first_event_time())
    });
}

fn push_parts(buf: &mut Vec<u8>, parts: &Parts<'_>, layout: &mut RecordLayout) {
    for part in Part::ALL {
        if let Some(state) = &parts.parts[part as usize] {
            buf.extend_from_slice(b",\"");
            buf.extend_from_slice(part.as_str().as_bytes());
            buf.extend_from_slice(b"\":{\"eventTime\":");
            let time = buf.len();
            push_i64(buf, state.event_time);
            let time = time..buf.len();
            if !state.fields.is_empty() {
                buf.push(b',');
            }
            let fields = buf.len();
            buf.extend_from_slice(state.fields.as_bytes());
            layout.parts[part as usize] = Some((time, fields..buf.len()));
            buf.push(b'}');
        }
    }
}

/// `{"trackingNumber":..,"keyGroup":..,"firstEventTime":..,"completedEventTime":..,
/// "request":{"eventTime":..,<fields>},"response":{..},"tracking":{..}}` and a newline.
/// The tracking number is the record's idempotent key: the same input always gives the same bytes.
pub fn write_action(
    buf: &mut Vec<u8>,
    layout: &mut RecordLayout,
    key_group: u16,
    tracking_number: &str,
    parts: &Parts<'_>,
    completed_at: i64,
) {
    push_head(buf, layout, key_group, tracking_number, parts);
    member(
        buf,
        layout,
        b",\"completedEventTime\":",
        "completedEventTime",
        |b| push_i64(b, completed_at),
    );
    push_parts(buf, parts, layout);
    buf.extend_from_slice(b"}\n");
}

/// Like an action, with `"missing":[..]` naming the required parts that never came and
/// `"expiredAt"` (the event time the lateness bound passed) instead of the completion time.
pub fn write_incomplete(
    buf: &mut Vec<u8>,
    layout: &mut RecordLayout,
    key_group: u16,
    tracking_number: &str,
    parts: &Parts<'_>,
    missing: u8,
) {
    push_head(buf, layout, key_group, tracking_number, parts);
    member(buf, layout, b",\"expiredAt\":", "expiredAt", |b| {
        push_i64(b, parts.deadline)
    });
    member(buf, layout, b",\"missing\":", "missing", |b| {
        b.push(b'[');
        let mut first = true;
        for part in Part::ALL {
            if missing & part_bit(part) != 0 {
                if !first {
                    b.push(b',');
                }
                first = false;
                b.push(b'"');
                b.extend_from_slice(part.as_str().as_bytes());
                b.push(b'"');
            }
        }
        b.push(b']');
    });
    push_parts(buf, parts, layout);
    buf.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::{PartState, Pending};

    #[test]
    fn records_are_valid_json_with_every_part() {
        let pending = Pending {
            deadline: 3_600_100,
            parts: [
                Some(PartState {
                    event_time: 100,
                    fields: r#""path":"/cc/apply""#.into(),
                }),
                None,
                Some(PartState {
                    event_time: 90,
                    fields: "".into(),
                }),
            ],
        };
        let mut buf = Vec::new();
        let mut layout = RecordLayout::default();
        write_incomplete(
            &mut buf,
            &mut layout,
            7,
            "tn\"1",
            &pending.view(),
            part_bit(Part::Response),
        );
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_layout(&buf, &layout, &v);
        assert_eq!(v["trackingNumber"], "tn\"1");
        assert_eq!(v["firstEventTime"], 90);
        assert_eq!(v["missing"], serde_json::json!(["response"]));
        assert_eq!(v["request"]["path"], "/cc/apply");
        assert_eq!(v["tracking"]["eventTime"], 90);
        assert!(v.get("response").is_none());

        buf.clear();
        write_action(&mut buf, &mut layout, 7, "a\u{1}b", &pending.view(), 100);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_layout(&buf, &layout, &v);
        assert_eq!(v["trackingNumber"], "a\u{1}b");
        assert_eq!(v["completedEventTime"], 100);
    }

    /// Every range of the layout holds what the record has under that name.
    fn assert_layout(buf: &[u8], layout: &RecordLayout, record: &serde_json::Value) {
        let parse = |range: &std::ops::Range<usize>| -> serde_json::Value {
            serde_json::from_slice(&buf[range.clone()]).unwrap()
        };
        let object = record.as_object().unwrap();
        let head = layout.head();
        assert_eq!(
            head.len(),
            object.len() - layout.parts.iter().flatten().count()
        );
        for (name, range) in head {
            assert_eq!(parse(range), record[*name], "{name}");
        }
        for part in Part::ALL {
            let Some((time, fields)) = &layout.parts[part as usize] else {
                assert!(record.get(part.as_str()).is_none());
                continue;
            };
            let mut expected = record[part.as_str()].clone();
            assert_eq!(parse(time), expected["eventTime"]);
            expected.as_object_mut().unwrap().remove("eventTime");
            let members = std::str::from_utf8(&buf[fields.clone()]).unwrap();
            let fields: serde_json::Value =
                serde_json::from_str(&format!("{{{members}}}")).unwrap();
            assert_eq!(fields, expected, "{}", part.as_str());
        }
    }
}
