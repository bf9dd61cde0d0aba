//! A compiled CESQL filter: what a Trigger holds.
//!
//! Most filters are boolean combinations of attribute tests (`LIKE`, `IN`,
//! `=`/`!=` against string literals, `EXISTS`). Those are compiled into a
//! tree of closures that test the event's strings directly; everything else
//! runs on the interpreter in [`eval`]. Both give the same answer: the
//! closures treat a missing attribute as the spec's evaluation error, and an
//! error anywhere in what was evaluated means no match, while `AND`/`OR`
//! short-circuit exactly as the interpreter does.

use std::fmt;

use super::ast::{BinaryOp, Expr, LikePart, UnaryOp, Value};
use super::eval;
use crate::eventing::event::Event;

/// A missing attribute met while testing: the filter does not match.
struct Missing;

type Predicate = Box<dyn Fn(&Event) -> Result<bool, Missing> + Send + Sync>;

/// A parsed expression, with its fast form when it has one.
pub struct Program {
    expr: Expr,
    fast: Option<Predicate>,
}

impl Program {
    pub fn new(expr: Expr) -> Self {
        let fast = compile(&expr);
        Program { expr, fast }
    }

    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether the compiled closures (not the interpreter) test events.
    pub fn is_compiled(&self) -> bool {
        self.fast.is_some()
    }

    /// The filter's answer: true only when the result is true and nothing
    /// failed. `on_error` sees the interpreter's error, for reporting (the
    /// fast path reports a missing attribute as `missingAttribute`).
    pub fn matches(&self, event: &Event, on_error: impl FnOnce(eval::ErrorKind, &str)) -> bool {
        if let Some(fast) = &self.fast {
            return match fast(event) {
                Ok(result) => result,
                Err(Missing) => {
                    on_error(eval::ErrorKind::MissingAttribute, "missing attribute");
                    false
                }
            };
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

/// The closure for `expr`, if every part of it has one.
fn compile(expr: &Expr) -> Option<Predicate> {
    match expr {
        Expr::Literal(Value::Boolean(b)) => {
            let b = *b;
            Some(Box::new(move |_| Ok(b)))
        }
        Expr::Exists(name) => {
            let name = name.clone();
            Some(Box::new(move |e| Ok(e.attribute(&name).is_some())))
        }
        Expr::Like {
            value,
            pattern,
            negated,
        } => {
            let Expr::Attribute(name) = value.as_ref() else {
                return None;
            };
            let (name, negated) = (name.clone(), *negated);
            // The common shapes as plain string tests.
            match pattern.as_slice() {
                [LikePart::Literal(prefix), LikePart::AnyRun] => {
                    let prefix = prefix.clone();
                    Some(Box::new(move |e| {
                        let v = e.attribute(&name).ok_or(Missing)?;
                        Ok(v.starts_with(prefix.as_str()) != negated)
                    }))
                }
                [LikePart::AnyRun, LikePart::Literal(suffix)] => {
                    let suffix = suffix.clone();
                    Some(Box::new(move |e| {
                        let v = e.attribute(&name).ok_or(Missing)?;
                        Ok(v.ends_with(suffix.as_str()) != negated)
                    }))
                }
                _ => {
                    let pattern = pattern.clone();
                    Some(Box::new(move |e| {
                        let v = e.attribute(&name).ok_or(Missing)?;
                        Ok(eval::like(v, &pattern) != negated)
                    }))
                }
            }
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
                    Expr::Literal(Value::String(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            let (name, negated) = (name.clone(), *negated);
            Some(Box::new(move |e| {
                let v = e.attribute(&name).ok_or(Missing)?;
                Ok(strings.iter().any(|s| s.as_ref() == v) != negated)
            }))
        }
        Expr::Binary(op @ (BinaryOp::Equal | BinaryOp::NotEqual), left, right) => {
            let (name, literal) = match (left.as_ref(), right.as_ref()) {
                (Expr::Attribute(n), Expr::Literal(Value::String(s)))
                | (Expr::Literal(Value::String(s)), Expr::Attribute(n)) => (n.clone(), s.clone()),
                _ => return None,
            };
            let equal = *op == BinaryOp::Equal;
            Some(Box::new(move |e| {
                let v = e.attribute(&name).ok_or(Missing)?;
                Ok((v == literal.as_ref()) == equal)
            }))
        }
        // A chain of ANDs (or of ORs) becomes one loop over its terms, in
        // order, stopping where the interpreter's short-circuit would.
        Expr::Binary(op @ (BinaryOp::And | BinaryOp::Or), _, _) => {
            let mut terms = Vec::new();
            collect_chain(expr, *op, &mut terms);
            let terms = terms
                .into_iter()
                .map(compile)
                .collect::<Option<Vec<Predicate>>>()?;
            if *op == BinaryOp::And {
                Some(Box::new(move |e| {
                    for term in &terms {
                        if !term(e)? {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                }))
            } else {
                Some(Box::new(move |e| {
                    for term in &terms {
                        if term(e)? {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }))
            }
        }
        Expr::Binary(BinaryOp::Xor, left, right) => {
            let (l, r) = (compile(left)?, compile(right)?);
            Some(Box::new(move |e| {
                // Both sides are evaluated, as in the interpreter.
                let (a, b) = (l(e), r(e));
                Ok(a? != b?)
            }))
        }
        Expr::Unary(UnaryOp::Not, operand) => {
            let inner = compile(operand)?;
            Some(Box::new(move |e| Ok(!inner(e)?)))
        }
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
    use crate::eventing::cesql::parser::parse;

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
