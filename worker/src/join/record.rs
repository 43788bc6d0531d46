//! The JSON records the join emits. Written by hand into a reused buffer: the projected
//! fields are already JSON text, so an action is a few copies, not a serialization.

use weft_crds::Part;

use super::{Pending, part_bit};

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

fn push_head(buf: &mut Vec<u8>, key_group: u16, tracking_number: &str, pending: &Pending) {
    buf.extend_from_slice(b"{\"trackingNumber\":");
    push_json_string(buf, tracking_number);
    buf.extend_from_slice(b",\"keyGroup\":");
    push_i64(buf, i64::from(key_group));
    buf.extend_from_slice(b",\"firstEventTime\":");
    push_i64(buf, pending.first_event_time());
}

fn push_parts(buf: &mut Vec<u8>, pending: &Pending) {
    for part in Part::ALL {
        if let Some(state) = &pending.parts[part as usize] {
            buf.extend_from_slice(b",\"");
            buf.extend_from_slice(part.as_str().as_bytes());
            buf.extend_from_slice(b"\":{\"eventTime\":");
            push_i64(buf, state.event_time);
            if !state.fields.is_empty() {
                buf.push(b',');
                buf.extend_from_slice(state.fields.as_bytes());
            }
            buf.push(b'}');
        }
    }
}

/// `{"trackingNumber":..,"keyGroup":..,"firstEventTime":..,"completedEventTime":..,
/// "request":{"eventTime":..,<fields>},"response":{..},"tracking":{..}}` and a newline.
/// The tracking number is the record's idempotent key: the same input always gives the same bytes.
pub fn write_action(
    buf: &mut Vec<u8>,
    key_group: u16,
    tracking_number: &str,
    pending: &Pending,
    completed_at: i64,
) {
    push_head(buf, key_group, tracking_number, pending);
    buf.extend_from_slice(b",\"completedEventTime\":");
    push_i64(buf, completed_at);
    push_parts(buf, pending);
    buf.extend_from_slice(b"}\n");
}

/// Like an action, with `"missing":[..]` naming the required parts that never came and
/// `"expiredAt"` (the event time the lateness bound passed) instead of the completion time.
pub fn write_incomplete(
    buf: &mut Vec<u8>,
    key_group: u16,
    tracking_number: &str,
    pending: &Pending,
    missing: u8,
) {
    push_head(buf, key_group, tracking_number, pending);
    buf.extend_from_slice(b",\"expiredAt\":");
    push_i64(buf, pending.deadline);
    buf.extend_from_slice(b",\"missing\":[");
    let mut first = true;
    for part in Part::ALL {
        if missing & part_bit(part) != 0 {
            if !first {
                buf.push(b',');
            }
            first = false;
            buf.push(b'"');
            buf.extend_from_slice(part.as_str().as_bytes());
            buf.push(b'"');
        }
    }
    buf.push(b']');
    push_parts(buf, pending);
    buf.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::PartState;

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
        write_incomplete(&mut buf, 7, "tn\"1", &pending, part_bit(Part::Response));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["trackingNumber"], "tn\"1");
        assert_eq!(v["firstEventTime"], 90);
        assert_eq!(v["missing"], serde_json::json!(["response"]));
        assert_eq!(v["request"]["path"], "/cc/apply");
        assert_eq!(v["tracking"]["eventTime"], 90);
        assert!(v.get("response").is_none());

        buf.clear();
        write_action(&mut buf, 7, "a\u{1}b", &pending, 100);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["trackingNumber"], "a\u{1}b");
        assert_eq!(v["completedEventTime"], 100);
    }
}
