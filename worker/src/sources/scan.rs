//! A validating single-pass JSON scanner that finds the values of a fixed set of JSON
//! pointers without building anything: one walk over the message both checks that it is
//! valid JSON (RFC 8259) and records where each wanted value is, as a slice of the input.
//! Profiling showed that two passes (find, then validate) with a general-purpose parser cost
//! about a third of local mode's time.

/// Where a scan stopped, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct ScanError {
    pub at: usize,
    pub what: &'static str,
}

/// Whether two byte strings are equal, without a `memcmp` call for the short ones (member
/// names, `"name":` prefixes, discriminator values): two overlapping word compares. Those
/// calls were ~3% of local mode's instructions, ~28 each.
#[inline(always)]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..4 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..8 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        _ => a == b,
    }
}

/// Whether `text` starts with `prefix` (see [`same_bytes`]).
#[inline(always)]
pub(crate) fn starts_with_bytes(text: &[u8], prefix: &[u8]) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| same_bytes(head, prefix))
}

/// The `N` bytes of `s` at `at` (in range wherever [`same_bytes`] reads).
#[inline(always)]
fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
    s.get(at..at + N)
        .and_then(|w| w.try_into().ok())
        .unwrap_or([0; N])
}

/// Deeper nesting than this is refused (no recursion limit surprises on hostile input).
const MAX_DEPTH: usize = 128;

#[derive(Default)]
struct Node {
    /// Object member names (unescaped) or array indices in decimal, with their subtrees.
    children: Vec<(Box<[u8]>, Node)>,
    /// The slot of a pointer that ends here.
    slot: Option<usize>,
}

impl Node {
    #[inline(always)]
    fn child(&self, name: &[u8]) -> Option<&Node> {
        // Length and first byte first: most candidates differ there, and the rest are compared
        // without a call (a memcmp per candidate was 5% of local mode's time once).
        let first = name.first();
        self.children
            .iter()
            .find(|(n, _)| n.len() == name.len() && n.first() == first && same_bytes(n, name))
            .map(|(_, c)| c)
    }
}

/// A set of JSON pointers, each given a slot; [`PointerSet::scan`] fills the slots.
#[derive(Default)]
pub struct PointerSet {
    root: Node,
    len: usize,
}

impl PointerSet {
    /// Adds a pointer (as its unescaped segments) and returns its slot; the same pointer
    /// twice gets the same slot.
    pub fn add<S: AsRef<str>>(&mut self, segments: &[S]) -> usize {
        let mut node = &mut self.root;
        for segment in segments {
            let name = segment.as_ref().as_bytes();
            let at = match node.children.iter().position(|(n, _)| **n == *name) {
                Some(at) => at,
                None => {
                    node.children.push((name.into(), Node::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[at].1;
        }
        *node.slot.get_or_insert_with(|| {
            self.len += 1;
            self.len - 1
        })
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Validates `text` as one JSON value (surrounding whitespace allowed) and sets each
    /// slot to the raw text of its pointer's value (strings with their quotes), or `None`.
    /// When a member name repeats, the first occurrence wins.
    pub fn scan<'a>(&self, text: &'a str, slots: &mut [Option<&'a str>]) -> Result<(), ScanError> {
        slots.iter_mut().for_each(|s| *s = None);
        let mut scanner = Scanner::new(text);
        scanner.ws();
        let scanned = scanner.value(Some(&self.root), 0, slots).and_then(|()| {
            scanner.ws();
            if scanner.i == text.len() {
                Ok(())
            } else {
                Err(scanner.error("trailing characters"))
            }
        });
        scanner.outcome(scanned)
    }

    /// The slot of the pointer to `path`'s value itself, if one was added.
    pub fn slot_of(&self, path: &[&str]) -> Option<usize> {
        path.iter()
            .try_fold(&self.root, |node, name| node.child(name.as_bytes()))?
            .slot
    }

    /// Whether [`PointerSet::slot_of`] a top-level member among `scalars`, and
    /// [`PointerSet::scan_members`] of the objects among `objects`, find every pointer: none
    /// is the whole text, a whole object among `objects`, or inside one of `scalars`.
    pub fn served_by(&self, scalars: &[&str], objects: &[&str]) -> bool {
        self.root.slot.is_none()
            && self.root.children.iter().all(|(name, node)| {
                let is = |names: &[&str]| names.iter().any(|n| n.as_bytes() == &**name);
                match (is(scalars), is(objects)) {
                    (true, _) => node.children.is_empty(),
                    (false, true) => node.slot.is_none(),
                    // Nothing in the text has this name: its pointers stay unset.
                    (false, false) => true,
                }
            })
    }

    /// Scans `members`, the members of the top-level object `object` without its braces
    /// (`"a":1,"b":{..}`), and sets the slots of the pointers inside that object which are
    /// still unset, as [`PointerSet::scan`] of the whole text would. Validates `members`.
    pub fn scan_members<'a>(
        &self,
        object: &str,
        members: &'a str,
        slots: &mut [Option<&'a str>],
    ) -> Result<(), ScanError> {
        let Some(node) = self.root.child(object.as_bytes()) else {
            return Ok(());
        };
        let mut scanner = Scanner::new(members);
        scanner.ws();
        let mut scanned = Ok(());
        while scanned.is_ok() && scanner.i < members.len() {
            scanned = scanner.member(Some(node), 1, slots).and_then(|()| {
                scanner.ws();
                match scanner.peek() {
                    Some(b',') => {
                        scanner.i += 1;
                        scanner.ws();
                        match scanner.i < members.len() {
                            true => Ok(()),
                            false => Err(scanner.error("expected a member name")),
                        }
                    }
                    None => Ok(()),
                    Some(_) => Err(scanner.error("expected ','")),
                }
            });
        }
        scanner.outcome(scanned)
    }

    /// How [`PointerSet::scan_in_order`] reads object `object` when its members are written
    /// as `written` (each member's name and its `"name":` text, in order, any of them left
    /// out). `None` when a pointer goes inside one of those members' values: only a scan
    /// finds it.
    pub fn member_order(&self, object: &str, written: &[(&str, &str)]) -> Option<MemberOrder> {
        let Some(node) = self.root.child(object.as_bytes()) else {
            return Some(MemberOrder {
                wanted: false,
                members: Vec::new(),
            });
        };
        let members = written
            .iter()
            .map(|(name, prefix)| match node.child(name.as_bytes()) {
                Some(child) if !child.children.is_empty() => None,
                child => Some((prefix.as_bytes().into(), child.and_then(|c| c.slot))),
            })
            .collect::<Option<Vec<_>>>()?;
        Some(MemberOrder {
            wanted: true,
            members,
        })
    }

    /// [`PointerSet::scan_members`] of members probably written in `order`: a member where
    /// the order has it next is recognized by its `"name":` text and its value read without
    /// looking the name up; at anything else the members are scanned as by `scan_members`
    /// (the same slots, the same errors).
    pub fn scan_in_order<'a>(
        &self,
        object: &str,
        order: &MemberOrder,
        members: &'a str,
        slots: &mut [Option<&'a str>],
    ) -> Result<(), ScanError> {
        if !order.wanted {
            return Ok(());
        }
        let mut scanner = Scanner::new(members);
        let mut expected = order.members.iter();
        while scanner.i < members.len() {
            let rest = &scanner.b[scanner.i..];
            let Some((prefix, slot)) = expected.find(|(p, _)| starts_with_bytes(rest, p)) else {
                return self.scan_members(object, members, slots);
            };
            scanner.i += prefix.len();
            let start = scanner.i;
            // Depth as `scan_members` gives a member's value.
            if scanner.value(None, 2, slots).is_err() {
                return self.scan_members(object, members, slots);
            }
            if let Some(s) = slot.and_then(|slot| slots.get_mut(slot))
                && s.is_none()
            {
                *s = members.get(start..scanner.i);
            }
            match scanner.peek() {
                None => return Ok(()),
                Some(b',') if scanner.i + 1 < members.len() => scanner.i += 1,
                Some(_) => return self.scan_members(object, members, slots),
            }
        }
        Ok(())
    }
}

/// The members of one object as a writer puts them (see [`PointerSet::scan_in_order`]).
#[derive(Clone, Debug)]
pub struct MemberOrder {
    /// Whether any pointer goes into the object (if none, nothing in it is read).
    wanted: bool,
    /// Each member's `"name":` as written, and the slot of the pointer to its value.
    members: Vec<(Box<[u8]>, Option<usize>)>,
}

/// How many bytes at the start of `b` are plain string content: not a quote, a backslash or
/// a control character. Eight bytes at a time (the strings of log messages are short, but a
/// byte-at-a-time loop was a tenth of local mode's time).
#[inline(always)]
fn plain_prefix(b: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // The high bit of each byte of `w` that is zero; the lowest one flagged is exact (a
    // borrow only flags bytes above a zero byte).
    let zero_bytes = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let special = (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | zero_bytes(w ^ (ONES * u64::from(b'"')))
            | zero_bytes(w ^ (ONES * u64::from(b'\\')));
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(b.len() - i)
}

/// How many bytes at the start of `b` are ASCII digits, eight at a time: times are 13
/// digits, several per message.
fn digit_prefix(b: &[u8]) -> usize {
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        // Per byte c: (c | 0x80) - 0x30 has its high bit set when c >= 0x30, c + 0x46 has it
        // set when c > 0x39 (ASCII only: a byte with its own high bit set is flagged by `w`;
        // its carry only disturbs the bytes after it).
        let at_least_0 = (w | HIGH).wrapping_sub(u64::from_le_bytes([0x30; 8]));
        let above_9 = w.wrapping_add(u64::from_le_bytes([0x46; 8]));
        let other = (!at_least_0 | above_9 | w) & HIGH;
        if other != 0 {
            return i + (other.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len() - i)
}

struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    /// Why the scan failed, once it has (see [`Failed`]).
    failure: Option<ScanError>,
}

/// A failed scan, whose [`ScanError`] the scanner keeps: the scanning functions return
/// `Result<_, Failed>`, a result that fits a register (with the error in it, every value of
/// every message paid for passing 24 bytes back through memory).
struct Failed;

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Scanner<'a> {
        Scanner {
            s: text,
            b: text.as_bytes(),
            i: 0,
            failure: None,
        }
    }

    /// A scan's result as the caller sees it: the error kept when it failed.
    fn outcome(self, scanned: Result<(), Failed>) -> Result<(), ScanError> {
        scanned.map_err(|Failed| {
            self.failure.unwrap_or(ScanError {
                at: self.i,
                what: "invalid JSON",
            })
        })
    }

    #[cold]
    fn error(&mut self, what: &'static str) -> Failed {
        self.failure = Some(ScanError { at: self.i, what });
        Failed
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), Failed> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    /// One value; `node` is the pointer subtree wanted inside it (if any). Inlined where a
    /// member's value is read: most values are scalars, read without a call; only an object
    /// or an array goes through [`Scanner::container_value`].
    #[inline(always)]
    fn value(
        &mut self,
        node: Option<&Node>,
        depth: usize,
        slots: &mut [Option<&'a str>],
    ) -> Result<(), Failed> {
        let start = self.i;
        match self.peek() {
            Some(b'{' | b'[') => self.container_value(node, depth, slots)?,
            Some(b'"') => {
                self.string()?;
            }
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'n') => self.literal(b"null")?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return Err(self.error("expected a value")),
            None => return Err(self.error("unexpected end")),
        }
        if let Some(slot) = node.and_then(|n| n.slot)
            && let Some(s) = slots.get_mut(slot)
            && s.is_none()
        {
            // Values start and end at ASCII bytes, so these are always char boundaries.
            *s = self.s.get(start..self.i);
        }
        Ok(())
    }

    /// An object or array value (the slot of its pointer, if any, is set by the caller).
    #[inline(never)]
    fn container_value(
        &mut self,
        node: Option<&Node>,
        depth: usize,
        slots: &mut [Option<&'a str>],
    ) -> Result<(), Failed> {
        let wanted = node.filter(|n| !n.children.is_empty());
        match self.peek() {
            Some(b'{') => self.object(wanted, depth, slots),
            _ => self.array(wanted, depth, slots),
        }
    }

    /// An object or array: `element` reads each member or element (given its index), this
    /// reads the brackets and separators.
    fn container(
        &mut self,
        close: u8,
        depth: usize,
        mut element: impl FnMut(&mut Self, usize) -> Result<(), Failed>,
    ) -> Result<(), Failed> {
        if depth >= MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            element(self, index)?;
            index += 1;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ if close == b'}' => return Err(self.error("expected ',' or '}'")),
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn object(
        &mut self,
        node: Option<&Node>,
        depth: usize,
        slots: &mut [Option<&'a str>],
    ) -> Result<(), Failed> {
        self.container(b'}', depth, |sc, _| sc.member(node, depth, slots))
    }

    /// One `"name": value` of an object whose pointer subtree is `node`.
    #[inline(always)]
    fn member(
        &mut self,
        node: Option<&Node>,
        depth: usize,
        slots: &mut [Option<&'a str>],
    ) -> Result<(), Failed> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a member name"));
        }
        let (name, escaped) = self.string()?;
        let child = match node {
            Some(n) if escaped => n.child(&unescape(name)),
            Some(n) => n.child(name),
            None => None,
        };
        self.ws();
        self.expect(b':', "expected ':'")?;
        self.ws();
        self.value(child, depth + 1, slots)
    }

    fn array(
        &mut self,
        node: Option<&Node>,
        depth: usize,
        slots: &mut [Option<&'a str>],
    ) -> Result<(), Failed> {
        self.container(b']', depth, |sc, index| {
            let child = node.and_then(|n| n.child(itoa::Buffer::new().format(index).as_bytes()));
            sc.value(child, depth + 1, slots)
        })
    }

    /// A string starting at the opening quote; returns its content (still escaped) and
    /// whether it has escapes.
    #[inline(always)]
    fn string(&mut self) -> Result<(&'a [u8], bool), Failed> {
        // Inlined for the usual string, plain up to its closing quote: most of a message's
        // strings are names and short values, where a call and the escape loop's setup cost
        // more than reading them.
        let start = self.i + 1;
        let rest = self.b.get(start..).unwrap_or_default();
        let len = plain_prefix(rest);
        if rest.get(len) == Some(&b'"') {
            self.i = start + len + 1;
            return Ok((&rest[..len], false));
        }
        self.escaped_string()
    }

    /// [`Scanner::string`] for a string with escapes (or an error).
    #[inline(never)]
    fn escaped_string(&mut self) -> Result<(&'a [u8], bool), Failed> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i += plain_prefix(&self.b[self.i..]);
            let Some(c) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            match c {
                b'"' => {
                    let content = &self.b[start..self.i];
                    self.i += 1;
                    return Ok((content, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            let hex = self.b.get(self.i..self.i + 4);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.error("bad \\u escape"));
                            }
                            self.i += 4;
                        }
                        _ => return Err(self.error("bad escape")),
                    }
                }
                _ => return Err(self.error("control character in string")),
            }
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), Failed> {
        if starts_with_bytes(&self.b[self.i..], word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.error("bad literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let n = digit_prefix(self.b.get(self.i..).unwrap_or_default());
        self.i += n;
        n
    }

    fn number(&mut self) -> Result<(), Failed> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.error("bad number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("bad number"));
            }
        }
        Ok(())
    }
}

/// The content of a JSON string (between its quotes, already validated), unescaped. Lone
/// surrogates become U+FFFD.
pub fn unescape(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len());
    let mut i = 0;
    while i < content.len() {
        let c = content[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = content.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let simple = match e {
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            other => Some(other),
        };
        if let Some(s) = simple {
            out.push(s);
            continue;
        }
        let hex = |at: usize| -> Option<u32> {
            let h = content.get(at..at + 4)?;
            u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
        };
        let Some(first) = hex(i) else {
            break;
        };
        i += 4;
        let code = if (0xd800..0xdc00).contains(&first)
            && content.get(i..i + 2) == Some(b"\\u")
            && let Some(second) = hex(i + 2)
            && (0xdc00..0xe000).contains(&second)
        {
            i += 6;
            0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
        } else {
            first
        };
        let ch = char::from_u32(code).unwrap_or('\u{fffd}');
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pointers: &[&[&str]]) -> PointerSet {
        let mut set = PointerSet::default();
        for p in pointers {
            set.add(p);
        }
        set
    }

    fn scan<'a>(set: &PointerSet, text: &'a str) -> Result<Vec<Option<&'a str>>, ScanError> {
        let mut slots = vec![None; set.len()];
        set.scan(text, &mut slots)?;
        Ok(slots)
    }

    #[test]
    fn finds_nested_values_and_array_elements() {
        let s = set(&[&["a"], &["b", "c"], &["d", "1"], &["x"], &["a/b"], &["m~n"]]);
        let got = scan(
            &s,
            r#" {"a": "s\"q", "b": {"z": [1, {"c": 2}], "c": {"k": null}}, "d": [true, -1.5e3], "a/b": 7, "m~n": []} "#,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Some(r#""s\"q""#),
                Some(r#"{"k": null}"#),
                Some("-1.5e3"),
                None,
                Some("7"),
                Some("[]")
            ]
        );
    }

    #[test]
    fn escaped_member_names_match_and_first_occurrence_wins() {
        let s = set(&[&["ab"]]);
        assert_eq!(
            scan(&s, r#"{"a\u0062": 1, "ab": 2}"#).unwrap(),
            vec![Some("1")]
        );
    }

    #[test]
    fn agrees_with_serde_json_on_validity() {
        let s = set(&[&["a"]]);
        for text in [
            r#"{"a":1,"b":tru}"#,
            r#"{"a":1,"b":01}"#,
            r#"{"a":1,}"#,
            r#"{"a":1"#,
            r#"{"a":"x"} {}"#,
            r#"{"a":"\x"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a" 1}"#,
            r#"[1,]"#,
            "",
            r#"{"a":"\u12"}"#,
            r#"{"a":[1,2],"b":{"c":[{}]},"d":"\ud83d\ude00","e":0.5E-3,"f":false}"#,
            r#"  [ ]  "#,
            "\"x\"",
        ] {
            let ours = scan(&s, text).is_ok();
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(ours, serde, "{text:?}");
        }
    }

    #[test]
    fn members_scanned_alone_give_what_a_scan_of_their_object_gives() {
        let s = set(&[
            &["p", "a"],
            &["p", "b", "c"],
            &["p", "d"],
            &["p", "e", "1"],
            &["p", "eventTime"],
            &["q", "a"],
        ]);
        for members in [
            "",
            r#""a":"x","d":-1.5e3,"z":true"#,
            r#""a":"x\"y","b":{"c":[1,{"c":2}]},"b":{"c":3},"a":"second""#,
            r#""e":[null,{"k":"v"}],"d":false,"a":null"#,
            r#""eventTime":7,"a":"\u00e9""#,
            r#" "a" : "x" , "d" : 1 "#,
            r#""a\u0062":1,"a":2"#,
        ] {
            let mut alone = vec![None; s.len()];
            s.scan_members("p", members, &mut alone).unwrap();
            let whole = format!(r#"{{"p":{{{members}}}}}"#);
            assert_eq!(alone, scan(&s, &whole).unwrap(), "{members}");
        }
        let mut slots = vec![None; s.len()];
        for bad in [
            r#""a":1,"#,
            r#""a":"x"#,
            r#""a" 1"#,
            r#""a":{"#,
            r#""a":1 "b":2"#,
        ] {
            assert!(s.scan_members("p", bad, &mut slots).is_err(), "{bad}");
        }
    }

    /// Members read in a writer's order give what scanning them gives, whether they follow
    /// the order, leave members out, repeat one, add others, or are not valid JSON.
    #[test]
    fn members_read_in_order_give_what_a_scan_of_them_gives() {
        let s = set(&[&["p", "a"], &["p", "d"], &["p", "eventTime"], &["q", "a"]]);
        let written = [("a", r#""a":"#), ("z", r#""z":"#), ("d", r#""d":"#)];
        let order = s.member_order("p", &written).unwrap();
        for members in [
            "",
            r#""a":"x","z":true,"d":-1.5e3"#,
            r#""a":"x","d":{"k":[1,2]}"#,
            r#""d":1"#,
            r#""d":1,"a":"after""#,
            r#""a":"x","a":"again","d":2"#,
            r#""a":"x\"y","z":null,"d":3,"extra":{"a":4},"eventTime":5"#,
            r#""a" : "x","d":1"#,
            r#""a\u0061":1,"a":2"#,
        ] {
            let (mut in_order, mut scanned) = (vec![None; s.len()], vec![None; s.len()]);
            s.scan_in_order("p", &order, members, &mut in_order)
                .unwrap();
            s.scan_members("p", members, &mut scanned).unwrap();
            assert_eq!(in_order, scanned, "{members}");
        }
        for bad in [
            r#""a":1,"#,
            r#""a":"x"#,
            r#""a":{"#,
            r#""a":1 "d":2"#,
            r#""a":01"#,
        ] {
            let (mut in_order, mut scanned) = (vec![None; s.len()], vec![None; s.len()]);
            assert_eq!(
                s.scan_in_order("p", &order, bad, &mut in_order),
                s.scan_members("p", bad, &mut scanned),
                "{bad}"
            );
        }
        // Nothing of `r` is wanted; a pointer inside a member's value needs a scan.
        let none = s.member_order("r", &written).unwrap();
        let mut slots = vec![None; s.len()];
        assert_eq!(s.scan_in_order("r", &none, r#""a":1"#, &mut slots), Ok(()));
        let nested = set(&[&["p", "d", "k"]]);
        assert!(nested.member_order("p", &written).is_none());
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing() {
        let s = set(&[&["a"]]);
        let deep = "[".repeat(100_000);
        assert_eq!(scan(&s, &deep).unwrap_err().what, "nested too deeply");
    }

    #[test]
    fn unescapes_strings() {
        assert_eq!(
            unescape(br#"a\"b\\c\/\n\u00e9\ud83d\ude00\ud800x"#),
            "a\"b\\c/\né😀\u{fffd}x".as_bytes()
        );
    }

    proptest::proptest! {
        #[test]
        fn plain_prefix_stops_at_the_first_special_byte(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let naive = bytes
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(bytes.len());
            proptest::prop_assert_eq!(super::plain_prefix(&bytes), naive);
        }

        #[test]
        fn same_bytes_is_equality(
            a in proptest::collection::vec(0u8..3, 0..40),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
            equal_length in proptest::prelude::any::<bool>(),
        ) {
            // Mostly equal lengths, and strings that differ in one byte anywhere: where the
            // overlapping word compares could go wrong.
            let mut b = a.clone();
            if equal_length {
                if !b.is_empty() {
                    let at = flip.index(b.len());
                    b[at] = b[at].wrapping_add(u8::from(flip.index(2) == 0));
                }
            } else {
                b.push(0);
            }
            proptest::prop_assert_eq!(super::same_bytes(&a, &b), a == b);
            proptest::prop_assert_eq!(super::starts_with_bytes(&b, &a), b.starts_with(&a));
        }

        #[test]
        fn validity_matches_serde_json_on_mutated_json(
            seed in proptest::collection::vec(proptest::prelude::any::<(u8, u8)>(), 0..4),
        ) {
            let mut text = br#"{"a":[1,-2.5e+3,true,null],"b":{"c":"x\"y\u00e9"},"d":""}"#.to_vec();
            for (at, byte) in seed {
                let at = usize::from(at) % text.len();
                let alphabet = b" {}[]:,\"\\0123456789-+.eEtrufalsn";
                text[at] = alphabet[usize::from(byte) % alphabet.len()];
            }
            let s = set(&[&["a", "1"], &["b", "c"]]);
            let mut slots = vec![None; s.len()];
            let ours = s.scan(std::str::from_utf8(&text).unwrap(), &mut slots).is_ok();
            let serde = serde_json::from_slice::<serde::de::IgnoredAny>(&text).is_ok();
            proptest::prop_assert_eq!(ours, serde, "{}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn digit_prefix_counts_the_leading_ascii_digits_of_any_bytes() {
        for text in [
            &b""[..],
            b"7",
            b"1763798400000,",
            b"0123456789",
            b"12345678",
            b"123456789x",
            b"12/45",
            b"12:45",
            b"1\xff2",
            b"9\x80",
            b"\xba1",
            b"12345678\xc0\xff",
        ] {
            let want = text.iter().take_while(|c| c.is_ascii_digit()).count();
            assert_eq!(digit_prefix(text), want, "{text:?}");
        }
        // Every byte value, at every position of a word and after it.
        for c in 0..=255u8 {
            for at in 0..12 {
                let mut text = vec![b'5'; 12];
                text[at] = c;
                let want = if c.is_ascii_digit() { 12 } else { at };
                assert_eq!(digit_prefix(&text), want, "byte {c:#x} at {at}");
            }
        }
    }
}
