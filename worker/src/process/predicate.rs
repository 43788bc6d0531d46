//! Step and outcome predicates: CEL over a joined action (`request.path == '/cc/apply' &&
//! response.status == 200`).
//!
//! The predicates business users write are comparisons of fields with literals joined by
//! `&&`, `||` and `!`. That subset is compiled into a small tree evaluated directly on the
//! raw JSON values the scanner found, with no per-action allocation: `==` `!=` `<` `<=` `>`
//! `>=`, `in [literals]`, `has(a.b)`, `startsWith` `endsWith` `contains`, literals, and bare
//! boolean fields. Any other CEL (arithmetic, macros, conditionals, functions) is compiled by
//! `cel-interpreter` and runs on a map built from the action, about 30× slower
//! (docs/benchmarks.md), so the fast subset is what definitions should use.
//!
//! Semantics follow CEL: a field that is missing, or a comparison of different types, is an
//! error; `&&`/`||` absorb errors when the other side decides (`false && error` is false);
//! a predicate whose result is an error or not a boolean does not match.

use std::borrow::Cow;
use std::sync::Arc;

use cel_parser::ast::operators;
use cel_parser::ast::{Expr, IdedExpr};
use rustc_hash::FxHashMap;

use crate::sources::scan::{PointerSet, same_bytes};
use crate::sources::{has_backslash, text_of};

/// A literal of the subset.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compare {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StrTest {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Clone, Debug)]
enum Operand {
    Field(usize),
    Literal(Literal),
}

#[derive(Clone, Debug)]
enum Node {
    Const(bool),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Compare(Compare, Operand, Operand),
    /// `field == literal` (`equal`) or `!=`, for a string or a small integer literal: most
    /// comparisons are decided on the raw JSON text (see [`text_decides`]).
    Equals {
        slot: usize,
        equal: bool,
        literal: Literal,
        /// The string's content, or the integer's decimal text.
        text: Box<str>,
    },
    In(Operand, Vec<Literal>),
    Has(usize),
    Str(StrTest, Operand, Operand),
    Bool(usize),
    /// Outside the subset: the whole predicate runs in cel-interpreter.
    Interpreted(Arc<cel_interpreter::Program>),
}

/// A compiled predicate.
#[derive(Clone, Debug)]
pub struct Predicate {
    node: Node,
    pub source: String,
}

/// A value as the subset sees it.
#[derive(Debug, PartialEq)]
enum Value<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Bool(bool),
    Null,
    /// An object or array: only `has` and equality-as-error apply.
    Composite,
}

fn value_of(raw: &str) -> Value<'_> {
    match raw.as_bytes().first() {
        Some(b'"') => Value::Str(text_of(raw)),
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'n') => Value::Null,
        Some(b'-' | b'0'..=b'9') => number_of(raw).map_or(Value::Composite, Value::Num),
        _ => Value::Composite,
    }
}

/// A JSON number's value: an integer through the integer parse, much cheaper than the
/// float parse a predicate would otherwise run each time it reads the field (the conversion
/// rounds as the float parse does).
fn number_of(raw: &str) -> Option<f64> {
    match raw.parse::<i64>() {
        Ok(0) if raw.starts_with('-') => Some(-0.0),
        Ok(n) => Some(n as f64),
        Err(_) => raw.parse().ok(),
    }
}

fn literal_value(l: &Literal) -> Value<'_> {
    match l {
        Literal::Str(s) => Value::Str(Cow::Borrowed(s)),
        Literal::Num(n) => Value::Num(*n),
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Null => Value::Null,
    }
}

/// Everything a predicate may read from an action: the raw JSON of each field it names, and
/// the whole action for interpreted predicates.
pub struct Fields<'a> {
    pub values: &'a [Option<&'a str>],
    pub action: &'a str,
}

impl Predicate {
    /// Compiles `source`, registering the fields it reads in `pointers`.
    pub fn compile(source: &str, pointers: &mut PointerSet) -> Result<Predicate, String> {
        let source_owned = source.to_string();
        let parsed = weft_crds::cel::guarded(move || {
            cel_parser::Parser::default()
                .parse(&source_owned)
                .map_err(|errors| match errors.errors.first() {
                    Some(e) => format!("invalid CEL at {}:{}: {}", e.pos.0, e.pos.1, e.msg),
                    None => "invalid CEL".to_string(),
                })
        })
        .map_err(|e| e.to_string())??;
        let node = match subset(&parsed, pointers) {
            Some(node) => node,
            None => {
                let source_owned = source.to_string();
                let program = weft_crds::cel::guarded(move || {
                    cel_interpreter::Program::compile(&source_owned).map_err(|e| e.to_string())
                })
                .map_err(|e| e.to_string())??;
                Node::Interpreted(Arc::new(program))
            }
        };
        Ok(Predicate {
            node,
            source: source.to_string(),
        })
    }

    /// Whether the predicate runs in the compiled subset (not the interpreter).
    pub fn is_compiled(&self) -> bool {
        !matches!(self.node, Node::Interpreted(_))
    }

    pub fn matches(&self, fields: &Fields<'_>) -> bool {
        eval(&self.node, fields) == Some(true)
    }
}

/// `request.path` → [request, path]
fn chain(expr: &IdedExpr) -> Option<Vec<String>> {
    match &expr.expr {
        Expr::Ident(name) => Some(vec![name.clone()]),
        Expr::Select(select) if !select.test => {
            let mut path = chain(&select.operand)?;
            path.push(select.field.clone());
            Some(path)
        }
        _ => None,
    }
}

fn literal(expr: &IdedExpr) -> Option<Literal> {
    use cel_parser::reference::Val;
    match &expr.expr {
        Expr::Literal(Val::String(s)) => Some(Literal::Str(s.clone())),
        Expr::Literal(Val::Int(i)) => Some(Literal::Num(*i as f64)),
        Expr::Literal(Val::UInt(u)) => Some(Literal::Num(*u as f64)),
        Expr::Literal(Val::Double(d)) => Some(Literal::Num(*d)),
        Expr::Literal(Val::Boolean(b)) => Some(Literal::Bool(*b)),
        Expr::Literal(Val::Null) => Some(Literal::Null),
        _ => None,
    }
}

fn operand(expr: &IdedExpr, pointers: &mut PointerSet) -> Option<Operand> {
    if let Some(l) = literal(expr) {
        return Some(Operand::Literal(l));
    }
    let path = chain(expr)?;
    // A bare identifier other than a field chain (e.g. a type name) is not in the subset.
    (path.len() >= 2 || path[0] == "trackingNumber").then(|| Operand::Field(pointers.add(&path)))
}

/// The subset compilation, or `None` when the expression needs the interpreter.
fn subset(expr: &IdedExpr, pointers: &mut PointerSet) -> Option<Node> {
    if let Some(Literal::Bool(b)) = literal(expr) {
        return Some(Node::Const(b));
    }
    if let Some(Operand::Field(slot)) = operand(expr, pointers) {
        return Some(Node::Bool(slot));
    }
    if let Expr::Select(select) = &expr.expr
        && select.test
    {
        let mut path = chain(&select.operand)?;
        path.push(select.field.clone());
        return Some(Node::Has(pointers.add(&path)));
    }
    let Expr::Call(call) = &expr.expr else {
        return None;
    };
    let args = &call.args;
    let compare = match call.func_name.as_str() {
        operators::EQUALS => Some(Compare::Eq),
        operators::NOT_EQUALS => Some(Compare::Ne),
        operators::LESS => Some(Compare::Lt),
        operators::LESS_EQUALS => Some(Compare::Le),
        operators::GREATER => Some(Compare::Gt),
        operators::GREATER_EQUALS => Some(Compare::Ge),
        _ => None,
    };
    if let Some(op) = compare {
        let [a, b] = args.as_slice() else { return None };
        let (a, b) = (operand(a, pointers)?, operand(b, pointers)?);
        return Some(equals(op, &a, &b).unwrap_or(Node::Compare(op, a, b)));
    }
    match call.func_name.as_str() {
        operators::LOGICAL_AND | operators::LOGICAL_OR => {
            let nodes = args
                .iter()
                .map(|a| subset(a, pointers))
                .collect::<Option<Vec<_>>>()?;
            Some(if call.func_name == operators::LOGICAL_AND {
                Node::And(nodes)
            } else {
                Node::Or(nodes)
            })
        }
        operators::LOGICAL_NOT => {
            let [a] = args.as_slice() else { return None };
            Some(Node::Not(Box::new(subset(a, pointers)?)))
        }
        operators::IN => {
            let [a, b] = args.as_slice() else { return None };
            let Expr::List(list) = &b.expr else {
                return None;
            };
            let items = list
                .elements
                .iter()
                .map(literal)
                .collect::<Option<Vec<_>>>()?;
            Some(Node::In(operand(a, pointers)?, items))
        }
        "startsWith" | "endsWith" | "contains" => {
            let target = call.target.as_deref()?;
            let [arg] = args.as_slice() else { return None };
            let test = match call.func_name.as_str() {
                "startsWith" => StrTest::StartsWith,
                "endsWith" => StrTest::EndsWith,
                _ => StrTest::Contains,
            };
            Some(Node::Str(
                test,
                operand(target, pointers)?,
                operand(arg, pointers)?,
            ))
        }
        _ => None,
    }
}

/// [`Node::Equals`] for `==`/`!=` between a field and a string or an integer literal
/// (exact in a double: at most 15 digits).
fn equals(op: Compare, a: &Operand, b: &Operand) -> Option<Node> {
    let equal = match op {
        Compare::Eq => true,
        Compare::Ne => false,
        _ => return None,
    };
    let (slot, literal) = match (a, b) {
        (Operand::Field(slot), Operand::Literal(l))
        | (Operand::Literal(l), Operand::Field(slot)) => (*slot, l),
        _ => return None,
    };
    let text = match literal {
        Literal::Str(s) => s.clone(),
        Literal::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
        _ => return None,
    };
    Some(Node::Equals {
        slot,
        equal,
        literal: literal.clone(),
        text: text.into(),
    })
}

/// Whether the raw JSON value `raw` equals the literal whose text is `text`, when its text
/// decides it; `None` when only its value can (escapes, other number forms, other types).
///
/// A string: an escape takes more bytes than what it stands for, so a string holding one is
/// longer than its value. Content shorter than the literal, or as long and different, is
/// another string; as long and the same is the same string, unless the literal has a
/// backslash. An integer of at most 15 digits, without a sign or with `-` before a non-zero
/// digit, is another value when its text differs.
fn text_decides(raw: &str, literal: &Literal, text: &str) -> Option<bool> {
    match literal {
        Literal::Str(_) => {
            let content = raw.strip_prefix('"')?.strip_suffix('"')?;
            // Short texts: compared inline, not through `memcmp`.
            match content.len().cmp(&text.len()) {
                std::cmp::Ordering::Less => Some(false),
                std::cmp::Ordering::Equal if !same_bytes(content.as_bytes(), text.as_bytes()) => {
                    Some(false)
                }
                std::cmp::Ordering::Equal => (!has_backslash(text)).then_some(true),
                std::cmp::Ordering::Greater => (!has_backslash(content)).then_some(false),
            }
        }
        _ => {
            if same_bytes(raw.as_bytes(), text.as_bytes()) {
                return Some(true);
            }
            let digits = raw.strip_prefix('-').unwrap_or(raw);
            let plain = !digits.is_empty()
                && digits.len() <= 15
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !raw.starts_with("-0");
            plain.then_some(false)
        }
    }
}

fn resolve<'a>(operand: &'a Operand, fields: &Fields<'a>) -> Option<Value<'a>> {
    match operand {
        Operand::Field(slot) => fields.values.get(*slot).copied().flatten().map(value_of),
        Operand::Literal(l) => Some(literal_value(l)),
    }
}

fn compare(op: Compare, a: &Value<'_>, b: &Value<'_>) -> Option<bool> {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match (a, b) {
        (Value::Str(x), Value::Str(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (Value::Num(x), Value::Num(y)) => x.partial_cmp(y),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        // CEL: equality across types is false (heterogeneous equality), ordering is an error.
        _ => None,
    };
    match (op, ordering) {
        (Compare::Eq, o) => Some(o == Some(Ordering::Equal)),
        (Compare::Ne, o) => Some(o != Some(Ordering::Equal)),
        (_, None) => None,
        (Compare::Lt, Some(o)) => Some(o.is_lt()),
        (Compare::Le, Some(o)) => Some(o.is_le()),
        (Compare::Gt, Some(o)) => Some(o.is_gt()),
        (Compare::Ge, Some(o)) => Some(o.is_ge()),
    }
}

fn eval(node: &Node, fields: &Fields<'_>) -> Option<bool> {
    match node {
        Node::Const(b) => Some(*b),
        Node::And(nodes) => {
            let mut error = false;
            for n in nodes {
                match eval(n, fields) {
                    Some(false) => return Some(false),
                    None => error = true,
                    Some(true) => {}
                }
            }
            (!error).then_some(true)
        }
        Node::Or(nodes) => {
            let mut error = false;
            for n in nodes {
                match eval(n, fields) {
                    Some(true) => return Some(true),
                    None => error = true,
                    Some(false) => {}
                }
            }
            (!error).then_some(false)
        }
        Node::Not(n) => eval(n, fields).map(|b| !b),
        Node::Compare(op, a, b) => compare(*op, &resolve(a, fields)?, &resolve(b, fields)?),
        Node::Equals {
            slot,
            equal,
            literal,
            text,
        } => {
            let raw = fields.values.get(*slot).copied().flatten()?;
            let same = match text_decides(raw, literal, text) {
                Some(same) => same,
                None => compare(Compare::Eq, &value_of(raw), &literal_value(literal))?,
            };
            Some(same == *equal)
        }
        Node::In(a, items) => {
            let v = resolve(a, fields)?;
            Some(
                items
                    .iter()
                    .any(|l| compare(Compare::Eq, &v, &literal_value(l)) == Some(true)),
            )
        }
        Node::Has(slot) => Some(fields.values.get(*slot).copied().flatten().is_some()),
        Node::Str(test, a, b) => match (resolve(a, fields)?, resolve(b, fields)?) {
            (Value::Str(x), Value::Str(y)) => Some(match test {
                StrTest::StartsWith => x.starts_with(y.as_ref()),
                StrTest::EndsWith => x.ends_with(y.as_ref()),
                StrTest::Contains => x.contains(y.as_ref()),
            }),
            _ => None,
        },
        Node::Bool(slot) => match resolve(&Operand::Field(*slot), fields)? {
            Value::Bool(b) => Some(b),
            _ => None,
        },
        Node::Interpreted(program) => interpret(program, fields.action),
    }
}

/// Which of a list of predicates an action can match, told by one field most of them
/// require to equal a string (`request.path == '/cc/review' && ...`): one lookup of that
/// field instead of evaluating every predicate (a definition's steps and outcomes were over
/// a quarter of classifying an action for the process stage). The predicates it names are evaluated
/// as before, so it only ever leaves out predicates that cannot be true.
#[derive(Clone, Debug)]
pub struct PredicateIndex {
    len: usize,
    key: Option<IndexKey>,
}

/// The field an index looks at, for the first 64 predicates.
#[derive(Clone, Debug)]
struct IndexKey {
    slot: usize,
    /// Per string, the predicates that require the field to be it; a few strings, so
    /// compared in turn, not hashed.
    keyed: Vec<(Box<str>, u64)>,
    /// The predicates that require no one string of the field.
    unkeyed: u64,
}

impl PredicateIndex {
    /// Indexes `predicates` on the field the most of them require to equal a string; none
    /// when no field is required by two.
    pub fn new<'p>(predicates: impl IntoIterator<Item = &'p Predicate>) -> PredicateIndex {
        let required: Vec<Vec<(usize, &str)>> = predicates
            .into_iter()
            .map(|p| {
                let mut pairs = Vec::new();
                required_strings(&p.node, &mut pairs);
                pairs
            })
            .collect();
        let indexed = &required[..required.len().min(64)];
        let mut uses: FxHashMap<usize, usize> = FxHashMap::default();
        for pairs in indexed {
            let mut slots: Vec<usize> = pairs.iter().map(|(slot, _)| *slot).collect();
            slots.sort_unstable();
            slots.dedup();
            for slot in slots {
                *uses.entry(slot).or_default() += 1;
            }
        }
        let best = uses
            .into_iter()
            .filter(|(_, n)| *n >= 2)
            .max_by_key(|(slot, n)| (*n, std::cmp::Reverse(*slot)));
        let key = best.map(|(slot, _)| {
            let mut keyed: Vec<(Box<str>, u64)> = Vec::new();
            let mut unkeyed = 0u64;
            for (i, pairs) in indexed.iter().enumerate() {
                let strings: Vec<&str> = pairs
                    .iter()
                    .filter(|(s, _)| *s == slot)
                    .map(|(_, text)| *text)
                    .collect();
                match strings.as_slice() {
                    [] => unkeyed |= 1 << i,
                    // Two different strings required of one field: never true, so never a
                    // candidate.
                    [first, rest @ ..] if rest.iter().any(|t| t != first) => {}
                    // A string with a backslash is written with an escape: such predicates
                    // are candidates only when the field's text has one (then all are).
                    [first, ..] if has_backslash(first) => {}
                    [first, ..] => match keyed.iter_mut().find(|(t, _)| &**t == *first) {
                        Some((_, bits)) => *bits |= 1 << i,
                        None => keyed.push((Box::from(*first), 1 << i)),
                    },
                }
            }
            IndexKey {
                slot,
                keyed,
                unkeyed,
            }
        });
        PredicateIndex {
            len: required.len(),
            key,
        }
    }

    /// The predicates (by position, in order) that may be true for `fields`; the others
    /// are not.
    pub fn candidates(&self, fields: &Fields<'_>) -> Candidates {
        let first = self.len.min(64);
        let all = if first == 64 {
            u64::MAX
        } else {
            (1u64 << first) - 1
        };
        let bits = match &self.key {
            None => all,
            Some(key) => match fields.values.get(key.slot).copied().flatten() {
                Some(raw) => match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                    Some(content) => key.unkeyed | key.keyed_by(content, all),
                    // Not a string: no `== 'string'` is true of it.
                    None => key.unkeyed,
                },
                // Missing: `==` is an error, which no conjunction turns true.
                None => key.unkeyed,
            },
        };
        Candidates {
            bits,
            beyond: first..self.len,
        }
    }
}

impl IndexKey {
    /// The keyed predicates a string with JSON content `content` can be true for: those
    /// keyed by that very text (keys have no backslash, so the text is the value); for a
    /// text with an escape, whose value is not its text, all of them (`all`).
    fn keyed_by(&self, content: &str, all: u64) -> u64 {
        let same = |t: &str| same_bytes(t.as_bytes(), content.as_bytes());
        match self.keyed.iter().find(|(t, _)| same(t)) {
            Some((_, bits)) => *bits,
            None if has_backslash(content) => all,
            None => 0,
        }
    }
}

/// Positions of predicates, ascending (see [`PredicateIndex::candidates`]).
pub struct Candidates {
    bits: u64,
    /// Predicates past the first 64: always candidates.
    beyond: std::ops::Range<usize>,
}

impl Iterator for Candidates {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.bits != 0 {
            let i = self.bits.trailing_zeros() as usize;
            self.bits &= self.bits - 1;
            return Some(i);
        }
        self.beyond.next()
    }
}

/// The `field == 'string'` a node is true only under: itself, or any conjunct's.
fn required_strings<'n>(node: &'n Node, out: &mut Vec<(usize, &'n str)>) {
    match node {
        Node::Equals {
            slot,
            equal: true,
            literal: Literal::Str(s),
            ..
        } => out.push((*slot, s)),
        Node::And(nodes) => nodes.iter().for_each(|n| required_strings(n, out)),
        _ => {}
    }
}

/// Runs an interpreted predicate on the action's parts and tracking number as variables.
fn interpret(program: &cel_interpreter::Program, action: &str) -> Option<bool> {
    let json: serde_json::Value = serde_json::from_str(action).ok()?;
    let mut context = cel_interpreter::Context::default();
    for name in ["request", "response", "tracking", "trackingNumber"] {
        if let Some(v) = json.get(name) {
            context.add_variable_from_value(name, to_cel(v));
        }
    }
    match program.execute(&context) {
        Ok(cel_interpreter::Value::Bool(b)) => Some(b),
        _ => None,
    }
}

/// JSON to a CEL value; integers are `int` (CEL's JSON mapping would make every number a
/// double, and serde's would make positive ones `uint`, so `status + 1` would not type).
fn to_cel(v: &serde_json::Value) -> cel_interpreter::Value {
    use cel_interpreter::Value as Cel;
    match v {
        serde_json::Value::Null => Cel::Null,
        serde_json::Value::Bool(b) => Cel::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cel::Int(i),
            (None, Some(u)) => Cel::UInt(u),
            _ => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Cel::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        serde_json::Value::Object(members) => Cel::from(
            members
                .iter()
                .map(|(k, v)| (k.clone(), to_cel(v)))
                .collect::<std::collections::HashMap<String, Cel>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTION: &str = r#"{"trackingNumber":"t-1","request":{"eventTime":5,"path":"/cc/apply","amount":1200.5,"vip":true,"q":"a\"b"},"response":{"eventTime":6,"status":200,"decision":"approved"}}"#;

    fn check(source: &str) -> (bool, bool) {
        let mut pointers = PointerSet::default();
        let p = Predicate::compile(source, &mut pointers).unwrap();
        let mut values = vec![None; pointers.len()];
        pointers.scan(ACTION, &mut values).unwrap();
        (
            p.matches(&Fields {
                values: &values,
                action: ACTION,
            }),
            p.is_compiled(),
        )
    }

    /// `field == literal` decided on the raw text gives what comparing values gives, for
    /// strings with and without escapes and numbers in every form.
    #[test]
    fn equality_decided_on_the_text_agrees_with_the_values() {
        let raws = [
            r#""/cc/apply""#,
            r#""/cc/review""#,
            r#""\/cc\/apply""#,
            r#""\u002fcc/apply""#,
            r#""a\"b""#,
            r#""a\\b""#,
            r#""""#,
            r#""é""#,
            r#""\u00e9""#,
            "200",
            "201",
            "-200",
            "200.0",
            "2e2",
            "0",
            "-0",
            "1234567890123456789",
            "true",
            "null",
            r#"{"a":1}"#,
            "[200]",
        ];
        let literals = [
            Literal::Str("/cc/apply".into()),
            Literal::Str("/cc/review".into()),
            Literal::Str("a\"b".into()),
            Literal::Str("a\\b".into()),
            Literal::Str(String::new()),
            Literal::Str("é".into()),
            Literal::Str("200".into()),
            Literal::Num(200.0),
            Literal::Num(-200.0),
            Literal::Num(0.0),
            Literal::Num(-0.0),
            Literal::Num(200.5),
            Literal::Num(1234567890123456789.0),
        ];
        let mut decided = 0;
        for raw in raws {
            let values = [Some(raw)];
            let fields = Fields {
                values: &values,
                action: "",
            };
            for literal in &literals {
                for op in [Compare::Eq, Compare::Ne] {
                    let (field, lit) = (Operand::Field(0), Operand::Literal(literal.clone()));
                    let general = eval(&Node::Compare(op, field.clone(), lit.clone()), &fields);
                    if let Some(node) = equals(op, &field, &lit) {
                        assert_eq!(eval(&node, &fields), general, "{raw} {op:?} {literal:?}");
                        if let Node::Equals { literal, text, .. } = &node {
                            decided += usize::from(text_decides(raw, literal, text).is_some());
                        }
                    }
                }
            }
        }
        assert!(decided > 0);
        // The usual cases are decided on the text alone.
        let path = Literal::Str("/cc/apply".into());
        assert_eq!(
            text_decides(r#""/cc/apply""#, &path, "/cc/apply"),
            Some(true)
        );
        assert_eq!(
            text_decides(r#""/cc/issue""#, &path, "/cc/apply"),
            Some(false)
        );
        assert_eq!(
            text_decides(r#""/cc/review""#, &path, "/cc/apply"),
            Some(false)
        );
        assert_eq!(
            text_decides(r#""/cc/make""#, &path, "/cc/apply"),
            Some(false)
        );
        let status = Literal::Num(200.0);
        assert_eq!(text_decides("200", &status, "200"), Some(true));
        assert_eq!(text_decides("500", &status, "200"), Some(false));
    }

    #[test]
    fn the_subset_follows_cel() {
        for (source, expected) in [
            (
                "request.path == '/cc/apply' && response.status == 200",
                true,
            ),
            (
                "request.path == '/cc/apply' && response.status == 500",
                false,
            ),
            (
                "request.path != '/cc/apply' || response.status >= 200",
                true,
            ),
            ("!(response.decision == 'returned')", true),
            ("response.decision in ['approved', 'rejected']", true),
            ("response.decision in ['returned']", false),
            ("request.amount > 1000 && request.amount <= 1200.5", true),
            ("request.vip", true),
            ("!request.vip", false),
            ("has(request.path) && !has(tracking.channel)", true),
            (
                "request.path.startsWith('/cc/') && request.path.endsWith('apply')",
                true,
            ),
            ("request.path.contains('xx')", false),
            ("request.q == 'a\"b'", true),
            ("trackingNumber == 't-1'", true),
            // A missing field is an error: no match, unless the other side of ||/&& decides.
            ("tracking.channel == 'web'", false),
            ("tracking.channel != 'web'", false),
            ("tracking.channel == 'web' || response.status == 200", true),
            ("response.status == 200 || tracking.channel == 'web'", true),
            ("tracking.channel == 'web' && response.status == 500", false),
            ("!(tracking.channel == 'web')", false),
            // Different types: equality is false, ordering is an error.
            ("response.status == '200'", false),
            ("response.status != '200'", true),
            ("response.status < '300'", false),
            ("true", true),
        ] {
            let (matched, compiled) = check(source);
            assert_eq!(matched, expected, "{source}");
            assert!(compiled, "{source} should be in the subset");
        }
    }

    #[test]
    fn other_cel_runs_in_the_interpreter() {
        for (source, expected) in [
            ("response.status + 1 == 201", true),
            ("size(request.path) == 9", true),
            ("response.status == 200 ? request.vip : false", true),
            ("request.path.matches('^/cc/a.*$')", true),
            ("tracking.channel == 'web'", false),
        ] {
            let (matched, _) = check(source);
            assert_eq!(matched, expected, "{source}");
        }
        assert!(!check("response.status + 1 == 201").1);
    }

    #[test]
    fn invalid_cel_is_an_error_not_a_panic() {
        let mut pointers = PointerSet::default();
        assert!(Predicate::compile("request.path ==", &mut pointers).is_err());
        assert!(Predicate::compile("request.path == 'x", &mut pointers).is_err());
    }

    #[test]
    fn numbers_read_without_a_float_parse_have_the_parsed_value() {
        for raw in [
            "0",
            "-0",
            "7",
            "200",
            "-15",
            "999999999999999",
            "-999999999999999",
            "1000000000000000",
            "9007199254740993",
            "1.5",
            "-2e3",
            "1E+2",
            "0.1",
        ] {
            let (fast, parsed) = (number_of(raw), raw.parse::<f64>().ok());
            assert_eq!(fast.map(f64::to_bits), parsed.map(f64::to_bits), "{raw}");
        }
    }

    /// Predicates an index is built over: keyed on `request.path` (the field most of them
    /// require to equal a string), and others it must always hand out.
    const INDEXED: [&str; 10] = [
        "request.path == '/a' && response.status == 200",
        "request.path == '/b' && response.status == 200",
        "response.decision == 'ok' && request.path == '/b'",
        "request.path == '/a' || request.path == '/c'",
        "request.path == '/a' && request.path == '/b'",
        "response.status == 200",
        r"request.path == 'x\\y'",
        "!(request.path == '/a')",
        "request.path == '/c'",
        "has(request.path) && request.path.startsWith('/')",
    ];

    /// Raw JSON a field may hold (`None`: missing).
    const PATHS: [Option<&str>; 10] = [
        Some(r#""/a""#),
        Some(r#""/b""#),
        Some(r#""/c""#),
        Some(r#""\/a""#),
        Some(r#""x\\y""#),
        Some(r#""/d""#),
        Some("200"),
        Some("null"),
        Some(r#"{"a":1}"#),
        None,
    ];

    fn compiled(sources: &[String]) -> (Vec<Predicate>, PointerSet) {
        let mut pointers = PointerSet::default();
        let predicates = sources
            .iter()
            .map(|s| Predicate::compile(s, &mut pointers).unwrap())
            .collect();
        (predicates, pointers)
    }

    /// Every predicate that is true of an action is among the index's candidates, in order,
    /// for strings, escaped strings, other types and missing fields; and the index does
    /// leave some out.
    #[test]
    fn an_index_hands_out_every_predicate_that_can_be_true() {
        let sources: Vec<String> = INDEXED.iter().map(|s| s.to_string()).collect();
        let (predicates, pointers) = compiled(&sources);
        let index = PredicateIndex::new(&predicates);
        let slot = |path: &[&str]| pointers.slot_of(path).unwrap();
        let (path, status, decision) = (
            slot(&["request", "path"]),
            slot(&["response", "status"]),
            slot(&["response", "decision"]),
        );
        let mut left_out = 0;
        for raw_path in PATHS {
            for raw_status in [Some("200"), Some("201"), None] {
                for raw_decision in [Some(r#""ok""#), Some(r#""no""#), None] {
                    let mut values = vec![None; pointers.len()];
                    values[path] = raw_path;
                    values[status] = raw_status;
                    values[decision] = raw_decision;
                    let fields = Fields {
                        values: &values,
                        action: "",
                    };
                    let candidates: Vec<usize> = index.candidates(&fields).collect();
                    assert!(candidates.is_sorted(), "{candidates:?}");
                    let true_ones: Vec<usize> = (0..predicates.len())
                        .filter(|i| predicates[*i].matches(&fields))
                        .collect();
                    let found: Vec<usize> = candidates
                        .iter()
                        .copied()
                        .filter(|i| predicates[*i].matches(&fields))
                        .collect();
                    assert_eq!(
                        found, true_ones,
                        "{raw_path:?} {raw_status:?} {raw_decision:?}"
                    );
                    left_out += predicates.len() - candidates.len();
                }
            }
        }
        assert!(left_out > 0);
    }

    /// Past 64 predicates the index keys the first 64 only and hands out the rest always.
    #[test]
    fn predicates_past_sixty_four_are_always_candidates() {
        let sources: Vec<String> = (0..70)
            .map(|i| format!("request.path == '/p{i}'"))
            .collect();
        let (predicates, pointers) = compiled(&sources);
        let index = PredicateIndex::new(&predicates);
        let slot = pointers.slot_of(&["request", "path"]).unwrap();
        for (raw, expected) in [
            (r#""/p3""#, vec![3, 64, 65, 66, 67, 68, 69]),
            (r#""/p66""#, vec![64, 65, 66, 67, 68, 69]),
        ] {
            let mut values = vec![None; pointers.len()];
            values[slot] = Some(raw);
            let fields = Fields {
                values: &values,
                action: "",
            };
            assert_eq!(index.candidates(&fields).collect::<Vec<_>>(), expected);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_integer_reads_as_its_parse(n in proptest::num::i64::ANY) {
            let raw = n.to_string();
            proptest::prop_assert_eq!(
                number_of(&raw).map(f64::to_bits),
                raw.parse::<f64>().ok().map(f64::to_bits)
            );
        }
    }
}
