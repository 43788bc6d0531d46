//! JSON Pointers (RFC 6901) naming where a value lives in a message or in a joined action.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-empty RFC 6901 pointer: one or more `/segment`, where `~` only appears as `~0`
/// (a literal `~`) or `~1` (a literal `/`).
pub const POINTER_PATTERN: &str = r"^(/([^~/]|~[01])*)+$";

/// A validated JSON Pointer with at least one segment, e.g. `/http/headers/x-trace-id`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JsonPointer {
    text: String,
    segments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON Pointer {pointer:?}: {reason}")]
pub struct PointerError {
    pub pointer: String,
    pub reason: &'static str,
}

impl JsonPointer {
    /// The unescaped reference tokens, in order.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Builds a pointer from unescaped segments, escaping `~` and `/`.
    pub fn from_segments<I, S>(segments: I) -> Option<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let segments: Vec<String> = segments
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .collect();
        if segments.is_empty() {
            return None;
        }
        let mut text = String::new();
        for segment in &segments {
            text.push('/');
            text.push_str(&segment.replace('~', "~0").replace('/', "~1"));
        }
        Some(JsonPointer { text, segments })
    }

    /// Looks the pointer up in a parsed JSON value (arrays by decimal index).
    pub fn resolve<'v>(&self, value: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        self.segments
            .iter()
            .try_fold(value, |current, segment| match current {
                serde_json::Value::Object(map) => map.get(segment),
                serde_json::Value::Array(items) => {
                    segment.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                _ => None,
            })
    }
}

impl FromStr for JsonPointer {
    type Err = PointerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| PointerError {
            pointer: s.to_string(),
            reason,
        };
        let Some(rest) = s.strip_prefix('/') else {
            return Err(fail(
                "must start with '/' (an empty pointer would name the whole message)",
            ));
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            let mut segment = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => segment.push('~'),
                        Some('1') => segment.push('/'),
                        _ => return Err(fail("'~' must be followed by 0 or 1")),
                    }
                } else {
                    segment.push(c);
                }
            }
            segments.push(segment);
        }
        Ok(JsonPointer {
            text: s.to_string(),
            segments,
        })
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for JsonPointer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for JsonPointer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for JsonPointer {
    fn schema_name() -> Cow<'static, str> {
        "JsonPointer".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": POINTER_PATTERN,
            "maxLength": 256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_unescapes_segments() {
        let p: JsonPointer = "/a~1b/c~0d/0".parse().unwrap();
        assert_eq!(p.segments(), ["a/b", "c~d", "0"]);
        assert_eq!(p.to_string(), "/a~1b/c~0d/0");
        assert_eq!(JsonPointer::from_segments(["a/b", "c~d", "0"]).unwrap(), p);
    }

    #[test]
    fn refuses_invalid_pointers() {
        for bad in ["", "a/b", "/a~2", "/a~"] {
            assert!(bad.parse::<JsonPointer>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolves_objects_and_arrays() {
        let v = json!({"http": {"items": [{"id": "x"}], "a/b": 1}});
        let p: JsonPointer = "/http/items/0/id".parse().unwrap();
        assert_eq!(p.resolve(&v), Some(&json!("x")));
        let p: JsonPointer = "/http/a~1b".parse().unwrap();
        assert_eq!(p.resolve(&v), Some(&json!(1)));
        let p: JsonPointer = "/http/missing".parse().unwrap();
        assert_eq!(p.resolve(&v), None);
    }
}
