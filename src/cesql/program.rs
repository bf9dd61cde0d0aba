//! A compiled CESQL filter: what a Trigger holds.
//!
//! Most filters are boolean combinations of attribute tests (`LIKE`, `IN`,
//! `=`/`!=` against string literals, `EXISTS`). Those are compiled into a
//! small tree of [`Test`]s that test the event's strings directly; everything
//! else runs on the interpreter in [`eval`]. Both give the same answer: a
//! test treats a missing attribute as the spec's evaluation error, and an
//! error anywhere in what was evaluated means no match, while `AND`/`OR`
//! short-circuit exactly as the interpreter does.
//!
//! Why an enum and not boxed closures: one `match` per node lets the compiler
//! inline the leaf tests into the chain loop instead of making an indirect
//! call per term. Strings are compared with [`same_text`], inlined word
//! loads, because a call to `memcmp` per attribute name and literal was a
//! quarter of what a filter cost.

use std::fmt;

use super::ast::{BinaryOp, Expr, LikePart, UnaryOp, Value};
use super::eval;
use crate::cloudevent::{AttributeType, Event};

/// Why the compiled tests stopped short of an answer.
enum Stop {
    /// A missing attribute: the spec's evaluation error, so no match.
    Missing,
    /// A Boolean or Integer attribute where the spec casts a string literal
    /// to the attribute's type (`IN`, `'TRUE' = flag`): the interpreter
    /// answers, since text comparison would not.
    Typed,
}

/// An attribute a test reads, by the name the expression gave.
#[derive(Debug)]
struct Attribute {
    name: Box<str>,
}

impl Attribute {
    fn new(name: &str) -> Self {
        Attribute { name: name.into() }
    }

    /// A plain loop with [`same_text`], both inlined into the test: the
    /// library's `find` plus `==` ended up as two calls (one of them to
    /// `memcmp`) per attribute looked at.
    #[inline(always)]
    fn get<'e>(&self, event: &'e Event) -> Option<(&'e str, AttributeType)> {
        let name = self.name.as_bytes();
        for (n, v, ty) in event.attributes_with_types() {
            if same_text(n.as_bytes(), name) {
                return Some((v, ty));
            }
        }
        None
    }

    #[inline(always)]
    fn value<'e>(&self, event: &'e Event) -> Result<&'e str, Stop> {
        self.get(event).map(|(v, _)| v).ok_or(Stop::Missing)
    }

    /// The value, for a test that compares it with string literals cast to
    /// the attribute's type: only a String attribute can be tested as text.
    #[inline(always)]
    fn string_value<'e>(&self, event: &'e Event) -> Result<&'e str, Stop> {
        match self.get(event) {
            Some((value, AttributeType::String)) => Ok(value),
            Some(_) => Err(Stop::Typed),
            None => Err(Stop::Missing),
        }
    }
}

/// The compiled form of a boolean expression over attribute tests.
#[derive(Debug)]
enum Test {
    Constant(bool),
    Exists(Attribute),
    /// `LIKE 'abc%'` (`negated` for `NOT LIKE`).
    Prefix {
        attribute: Attribute,
        prefix: Box<str>,
        negated: bool,
    },
    /// `LIKE '%abc'`.
    Suffix {
        attribute: Attribute,
        suffix: Box<str>,
        negated: bool,
    },
    /// Any other `LIKE` pattern.
    Like {
        attribute: Attribute,
        pattern: Vec<LikePart>,
        negated: bool,
    },
    /// `IN` a list of string literals.
    In {
        attribute: Attribute,
        strings: Vec<Box<str>>,
        negated: bool,
    },
    /// `=` (`equal`) or `!=` against a string literal; `literal_left` when
    /// the literal is the left operand, which `=` casts to the attribute's
    /// type.
    Equals {
        attribute: Attribute,
        literal: Box<str>,
        equal: bool,
        literal_left: bool,
    },
    All(Vec<Test>),
    Any(Vec<Test>),
    Xor(Box<Test>, Box<Test>),
    Not(Box<Test>),
}

impl Test {
    /// Leaves are tested here, inlined into the caller's loop; combinators
    /// go through [`Test::combine`] (a recursive call cannot be inlined).
    #[inline(always)]
    fn run(&self, event: &Event) -> Result<bool, Stop> {
        Ok(match self {
            Test::Constant(b) => *b,
            Test::Exists(attribute) => attribute.get(event).is_some(),
            Test::Prefix {
                attribute,
                prefix,
                negated,
            } => {
                let value = attribute.value(event)?.as_bytes();
                let head = value.get(..prefix.len()).unwrap_or_default();
                same_text(head, prefix.as_bytes()) != *negated
            }
            Test::Suffix {
                attribute,
                suffix,
                negated,
            } => {
                let value = attribute.value(event)?.as_bytes();
                let tail = value
                    .len()
                    .checked_sub(suffix.len())
                    .map_or(&[][..], |start| &value[start..]);
                same_text(tail, suffix.as_bytes()) != *negated
            }
            Test::Like {
                attribute,
                pattern,
                negated,
            } => eval::like(attribute.value(event)?, pattern) != *negated,
            Test::In {
                attribute,
                strings,
                negated,
            } => {
                let value = attribute.string_value(event)?.as_bytes();
                strings.iter().any(|s| same_text(s.as_bytes(), value)) != *negated
            }
            Test::Equals {
                attribute,
                literal,
                equal,
                literal_left,
            } => {
                let value = if *literal_left {
                    attribute.string_value(event)?
                } else {
                    attribute.value(event)?
                };
                same_text(value.as_bytes(), literal.as_bytes()) == *equal
            }
            Test::All(_) | Test::Any(_) | Test::Xor(..) | Test::Not(_) => self.combine(event)?,
        })
    }

    #[inline(never)]
    fn combine(&self, event: &Event) -> Result<bool, Stop> {
        Ok(match self {
            // Stop where the interpreter's short-circuit would.
            Test::All(terms) => {
                for term in terms {
                    if !term.run(event)? {
                        return Ok(false);
                    }
                }
                true
            }
            Test::Any(terms) => {
                for term in terms {
                    if term.run(event)? {
                        return Ok(true);
                    }
                }
                false
            }
            Test::Xor(left, right) => {
                // Both sides are evaluated, as in the interpreter.
                let (a, b) = (left.run(event), right.run(event));
                a? != b?
            }
            Test::Not(inner) => !inner.run(event)?,
            leaf => leaf.run(event)?,
        })
    }
}

/// Byte equality without a call to `memcmp` for the short strings filters
/// compare (attribute names are at most 20 characters; most values in `IN`
/// lists and prefixes are short): two overlapping loads of 4 or 8 bytes cover
/// 4 to 16 bytes, a loop anything shorter. Longer strings use the library.
#[inline(always)]
fn same_text(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// The 4 bytes at `at` (the caller guarantees they exist).
#[inline(always)]
fn half(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_ne_bytes(buf)
}

/// The 8 bytes at `at` (the caller guarantees they exist).
#[inline(always)]
fn word(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_ne_bytes(buf)
}

/// A parsed expression, with its fast form when it has one.
pub struct Program {
    expr: Expr,
    fast: Option<Test>,
}

impl Program {
    pub fn new(expr: Expr) -> Self {
        let fast = compile(&expr);
        Program { expr, fast }
    }

    #[cfg(test)]
    pub(crate) fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether the compiled tests (not the interpreter) test events.
    #[cfg(test)]
    pub(crate) fn is_compiled(&self) -> bool {
        self.fast.is_some()
    }

    /// The filter's answer: true only when the result is true and nothing
    /// failed. `on_error` sees the interpreter's error, for reporting (the
    /// fast path reports a missing attribute as `missingAttribute`).
    pub(crate) fn matches(
        &self,
        event: &Event,
        on_error: impl FnOnce(eval::ErrorKind, &str),
    ) -> bool {
        if let Some(fast) = &self.fast {
            match fast.run(event) {
                Ok(result) => return result,
                Err(Stop::Missing) => {
                    on_error(eval::ErrorKind::MissingAttribute, "missing attribute");
                    return false;
                }
                Err(Stop::Typed) => {}
            }
        }
        let evaluation = eval::evaluate(&self.expr, event);
        if let Some(error) = &evaluation.error {
            on_error(error.kind, &error.message);
            return false;
        }
        match evaluation.value {
            Value::Boolean(b) => b,
            // A non-Boolean result is cast to Boolean, which `matches` does.
            _ => eval::matches(&self.expr, event),
        }
    }
}

impl PartialEq for Program {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl Eq for Program {}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Program")
            .field("expr", &self.expr)
            .field("compiled", &self.fast.is_some())
            .finish()
    }
}

/// The compiled test for `expr`, if every part of it has one.
fn compile(expr: &Expr) -> Option<Test> {
    match expr {
        Expr::Literal(Value::Boolean(b)) => Some(Test::Constant(*b)),
        Expr::Exists(name) => Some(Test::Exists(Attribute::new(name))),
        Expr::Like {
            value,
            pattern,
            negated,
        } => {
            let Expr::Attribute(name) = value.as_ref() else {
                return None;
            };
            let (attribute, negated) = (Attribute::new(name), *negated);
            // The common shapes as plain string tests.
            Some(match pattern.as_slice() {
                [LikePart::Literal(prefix), LikePart::AnyRun] => Test::Prefix {
                    attribute,
                    prefix: prefix.as_str().into(),
                    negated,
                },
                [LikePart::AnyRun, LikePart::Literal(suffix)] => Test::Suffix {
                    attribute,
                    suffix: suffix.as_str().into(),
                    negated,
                },
                _ => Test::Like {
                    attribute,
                    pattern: pattern.clone(),
                    negated,
                },
            })
        }
        Expr::In {
            value,
            list,
            negated,
        } => {
            let Expr::Attribute(name) = value.as_ref() else {
                return None;
            };
            // Only string literals: other types would need the spec's casts.
            let strings = list
                .iter()
                .map(|item| match item {
                    Expr::Literal(Value::String(s)) => Some(Box::<str>::from(s.as_ref())),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Test::In {
                attribute: Attribute::new(name),
                strings,
                negated: *negated,
            })
        }
        Expr::Binary(op @ (BinaryOp::Equal | BinaryOp::NotEqual), left, right) => {
            let (name, literal, literal_left) = match (left.as_ref(), right.as_ref()) {
                (Expr::Attribute(n), Expr::Literal(Value::String(s))) => (n, s, false),
                (Expr::Literal(Value::String(s)), Expr::Attribute(n)) => (n, s, true),
                _ => return None,
            };
            Some(Test::Equals {
                attribute: Attribute::new(name),
                literal: Box::<str>::from(literal.as_ref()),
                equal: *op == BinaryOp::Equal,
                literal_left,
            })
        }
        // A chain of ANDs (or of ORs) becomes one loop over its terms, in
        // order, stopping where the interpreter's short-circuit would.
        Expr::Binary(op @ (BinaryOp::And | BinaryOp::Or), _, _) => {
            let mut terms = Vec::new();
            collect_chain(expr, *op, &mut terms);
            let terms = terms
                .into_iter()
                .map(compile)
                .collect::<Option<Vec<Test>>>()?;
            Some(if *op == BinaryOp::And {
                Test::All(terms)
            } else {
                Test::Any(terms)
            })
        }
        Expr::Binary(BinaryOp::Xor, left, right) => Some(Test::Xor(
            Box::new(compile(left)?),
            Box::new(compile(right)?),
        )),
        Expr::Unary(UnaryOp::Not, operand) => Some(Test::Not(Box::new(compile(operand)?))),
        _ => None,
    }
}

/// The terms of a chain of one operator, left to right: `a AND b AND c`
/// (grouped either way) gives `[a, b, c]`. AND and OR are associative, and
/// short-circuiting left to right over the flat list evaluates the same terms
/// as the nested form does.
fn collect_chain<'e>(expr: &'e Expr, op: BinaryOp, terms: &mut Vec<&'e Expr>) {
    match expr {
        Expr::Binary(o, left, right) if *o == op => {
            collect_chain(left, op, terms);
            collect_chain(right, op, terms);
        }
        other => terms.push(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cesql::parser::parse;

    fn event(extra: &[(&str, &str)]) -> Event {
        let mut attributes: Vec<(String, String)> = [
            ("specversion", "1.0"),
            ("id", "1"),
            ("source", "a"),
            ("type", "com.example.order"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        attributes.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Event::new(attributes, None).expect("valid")
    }

    /// The compiled closures and the interpreter agree on every expression
    /// and event here, errors included.
    #[test]
    fn compiled_filters_agree_with_the_interpreter() {
        let expressions = [
            "type LIKE 'com.example.%' AND source IN ('a','b') AND EXISTS subject",
            "type LIKE '%order' OR subject = 'x'",
            "subject = 'x' OR type LIKE '%order'",
            "NOT (subject != 'x') XOR source = 'a'",
            "type NOT LIKE 'c_m.%' AND source NOT IN ('b')",
            "'a' = source AND TRUE",
            "missing = 'x' OR TRUE",
            "TRUE OR missing = 'x'",
            "FALSE AND missing = 'x'",
            "type LIKE 'com%ex%order'",
        ];
        let events = [
            event(&[]),
            event(&[("subject", "x")]),
            event(&[("subject", "y"), ("missing", "x")]),
        ];
        for text in expressions {
            let program = Program::new(parse(text).expect(text));
            assert!(program.is_compiled(), "{text} should compile");
            for e in &events {
                let interpreted = eval::matches(program.expr(), e);
                assert_eq!(
                    program.matches(e, |_, _| {}),
                    interpreted,
                    "{text} on {e:?}"
                );
            }
        }
    }

    #[test]
    fn same_text_agrees_with_equality_at_every_length() {
        let text = "com.example.order.created.v1-and-more";
        for n in 0..text.len() {
            let a = &text.as_bytes()[..n];
            assert!(same_text(a, a), "{n}");
            for i in 0..n {
                let mut b = a.to_vec();
                b[i] ^= 1;
                assert!(!same_text(a, &b), "length {n}, byte {i}");
            }
            assert!(!same_text(a, &text.as_bytes()[..n + 1]), "{n}");
        }
    }

    #[test]
    fn other_expressions_use_the_interpreter() {
        for text in [
            "sequence > 3",
            "LENGTH(type) = 17",
            "source IN (1, 2)",
            "sequence = 5",
        ] {
            assert!(
                !Program::new(parse(text).expect(text)).is_compiled(),
                "{text}"
            );
        }
        let program = Program::new(parse("LENGTH(type) = 17").expect("parses"));
        assert!(program.matches(&event(&[]), |_, _| {}));
    }
}
