//! Evaluation of a parsed CESQL expression against an event (cesql/spec.md §3).
//!
//! Every operator and function is total: an error never stops evaluation. The
//! failing sub-expression yields the zero value of its return type (`false`,
//! `0`, `""`) and the first error is kept and reported with the result.
//!
//! Strings are borrowed from the event and from the expression wherever
//! possible, so the common filters (attribute comparisons, LIKE, IN against
//! literals) allocate nothing per event.

use std::borrow::Cow;
use std::sync::Arc;

use super::ast::{BinaryOp, Expr, LikePart, UnaryOp, Value};
use crate::cloudevent::{AttributeValue, Event};

/// The spec's error types (§3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Math,
    Cast,
    MissingFunction,
    FunctionEvaluation,
    MissingAttribute,
}

impl ErrorKind {
    /// The name the CESQL conformance tests use for this kind.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingFunction => "missingFunction",
            ErrorKind::FunctionEvaluation => "functionEvaluation",
            ErrorKind::MissingAttribute => "missingAttribute",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EvalError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The result of evaluating an expression: always a value, plus the first
/// error raised while computing it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Evaluation {
    pub value: Value,
    pub error: Option<EvalError>,
}

/// Evaluates `expr` against `event`, in the spec's complete evaluation mode.
pub(crate) fn evaluate(expr: &Expr, event: &Event) -> Evaluation {
    let mut cx = Ctx::new(event);
    let value = match cx.eval(expr) {
        V::Bool(b) => Value::Boolean(b),
        V::Int(i) => Value::Integer(i),
        V::Str(s) => Value::String(Arc::from(s.as_ref())),
    };
    Evaluation {
        value,
        error: cx.error,
    }
}

/// Whether `event` passes the filter `expr`: the result, cast to Boolean, is
/// `true` and no error was raised anywhere in the evaluation.
pub(crate) fn matches(expr: &Expr, event: &Event) -> bool {
    let mut cx = Ctx::new(event);
    let value = cx.eval(expr);
    let result = cx.cast_bool(value);
    result && cx.error.is_none()
}

/// A value during evaluation; strings borrow from the event or the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
enum V<'a> {
    Bool(bool),
    Int(i32),
    Str(Cow<'a, str>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    Str,
}

impl Ty {
    /// The zero value of the type (§3.1).
    fn zero<'a>(self) -> V<'a> {
        match self {
            Ty::Bool => V::Bool(false),
            Ty::Int => V::Int(0),
            Ty::Str => V::Str(Cow::Borrowed("")),
        }
    }
}

struct Ctx<'a> {
    event: &'a Event,
    /// The first error raised, which is what is reported.
    error: Option<EvalError>,
    /// How many errors were raised so far: an operator compares it before
    /// and after evaluating its operands to learn whether one of them failed.
    raised: u32,
}

impl<'a> Ctx<'a> {
    fn new(event: &'a Event) -> Self {
        Ctx {
            event,
            error: None,
            raised: 0,
        }
    }

    /// Records an error; the message is only built when it will be kept.
    fn fail(&mut self, kind: ErrorKind, message: impl FnOnce() -> String) {
        self.raised += 1;
        if self.error.is_none() {
            self.error = Some(EvalError {
                kind,
                message: message(),
            });
        }
    }

    /// Evaluates an operand of an operator or an argument of a function:
    /// `None` when it, or anything inside it, raised an error. The spec makes
    /// the enclosing subexpression yield the zero value of its own return
    /// type then (§3.2 for a missing attribute, §3.3 for every error):
    /// `true AND (1 != 1 / 0)` is `false`, not a comparison against the
    /// division's zero value.
    fn operand(&mut self, expr: &'a Expr) -> Option<V<'a>> {
        let before = self.raised;
        let value = self.eval(expr);
        (self.raised == before).then_some(value)
    }

    /// Both operands of a binary operator, each evaluated (so each one's
    /// errors are raised), or `None` if either failed.
    fn operands(&mut self, left: &'a Expr, right: &'a Expr) -> Option<(V<'a>, V<'a>)> {
        let l = self.operand(left);
        let r = self.operand(right);
        l.zip(r)
    }

    // --- casts (§3.7); a failed cast yields the target type's zero value and
    // a CastError, and the operator goes on with that value ---

    fn cast_bool(&mut self, v: V<'_>) -> bool {
        match v {
            V::Bool(b) => b,
            V::Int(i) => i != 0,
            V::Str(s) => self.str_to_bool(&s),
        }
    }

    fn str_to_bool(&mut self, s: &str) -> bool {
        if s.eq_ignore_ascii_case("true") {
            true
        } else if s.eq_ignore_ascii_case("false") {
            false
        } else {
            self.fail(ErrorKind::Cast, || {
                format!("cannot cast string '{s}' to Boolean")
            });
            false
        }
    }

    /// The implicit cast of a logical operator's operand (NOT, AND, OR,
    /// XOR): Booleans and the strings `true`/`false` only. The spec's TCK
    /// makes `NOT 10` a CastError whose zero value `false` is negated to
    /// `true`, so an Integer is not read as a Boolean here, unlike the
    /// explicit `BOOL(10)`.
    fn logical(&mut self, v: V<'_>) -> bool {
        match v {
            V::Bool(b) => b,
            V::Str(s) => self.str_to_bool(&s),
            V::Int(i) => {
                self.fail(ErrorKind::Cast, || {
                    format!("a logical operator needs a Boolean, not the Integer {i}")
                });
                false
            }
        }
    }

    fn cast_int(&mut self, v: V<'_>) -> i32 {
        match v {
            V::Bool(b) => i32::from(b),
            V::Int(i) => i,
            // `i32::from_str` is exactly the spec's rule: optional '+' or '-',
            // base-10 digits, error on overflow.
            V::Str(s) => match s.parse::<i32>() {
                Ok(i) => i,
                Err(_) => {
                    self.fail(ErrorKind::Cast, || {
                        format!("cannot cast string '{s}' to Integer")
                    });
                    0
                }
            },
        }
    }

    fn cast_str<'b>(&mut self, v: V<'b>) -> Cow<'b, str> {
        match v {
            V::Bool(b) => Cow::Borrowed(if b { "true" } else { "false" }),
            V::Int(i) => Cow::Owned(i.to_string()),
            V::Str(s) => s,
        }
    }

    fn cast<'b>(&mut self, v: V<'b>, ty: Ty) -> V<'b> {
        match ty {
            Ty::Bool => V::Bool(self.cast_bool(v)),
            Ty::Int => V::Int(self.cast_int(v)),
            Ty::Str => V::Str(self.cast_str(v)),
        }
    }

    // --- evaluation ---

    fn eval(&mut self, expr: &'a Expr) -> V<'a> {
        match expr {
            Expr::Literal(Value::Boolean(b)) => V::Bool(*b),
            Expr::Literal(Value::Integer(i)) => V::Int(*i),
            Expr::Literal(Value::String(s)) => V::Str(Cow::Borrowed(s)),
            Expr::Attribute(name) => self.attribute(name),
            Expr::Exists(name) => V::Bool(self.event.attribute(name).is_some()),
            Expr::Unary(op, operand) => self.unary(*op, operand),
            Expr::Binary(op, left, right) => self.binary(*op, left, right),
            Expr::Like {
                value,
                pattern,
                negated,
            } => match self.operand(value) {
                Some(v) => {
                    let s = self.cast_str(v);
                    V::Bool(like(&s, pattern) != *negated)
                }
                None => V::Bool(false),
            },
            Expr::In {
                value,
                list,
                negated,
            } => self.in_list(value, list, *negated),
            Expr::Call { name, args } => self.call(name, args),
        }
    }

    /// An attribute's value with the type it arrived as (§3.2); a missing
    /// one raises a MissingAttributeError and is `false`, the Boolean the
    /// spec assumes when the type cannot be known.
    fn attribute(&mut self, name: &str) -> V<'a> {
        match self.event.attribute_value(name) {
            Some(AttributeValue::String(s)) => V::Str(Cow::Borrowed(s)),
            Some(AttributeValue::Boolean(b)) => V::Bool(b),
            Some(AttributeValue::Integer(i)) => V::Int(i),
            None => {
                self.fail(ErrorKind::MissingAttribute, || {
                    format!("missing attribute '{name}'")
                });
                V::Bool(false)
            }
        }
    }

    fn unary(&mut self, op: UnaryOp, operand: &'a Expr) -> V<'a> {
        let Some(v) = self.operand(operand) else {
            return match op {
                UnaryOp::Not => Ty::Bool.zero(),
                UnaryOp::Minus => Ty::Int.zero(),
            };
        };
        match op {
            UnaryOp::Not => V::Bool(!self.logical(v)),
            UnaryOp::Minus => {
                let i = self.cast_int(v);
                V::Int(self.checked(i.checked_neg(), || format!("-({i}) overflows")))
            }
        }
    }

    /// The result of a 32-bit operation, or 0 and a MathError when it
    /// overflows (the spec defines Integer as 32-bit but gives no rule for
    /// overflow; 0 is the zero value §3.3 asks for when there is no obvious
    /// result).
    fn checked(&mut self, result: Option<i32>, message: impl FnOnce() -> String) -> i32 {
        result.unwrap_or_else(|| {
            self.fail(ErrorKind::Math, message);
            0
        })
    }

    fn binary(&mut self, op: BinaryOp, left: &'a Expr, right: &'a Expr) -> V<'a> {
        match op {
            BinaryOp::And | BinaryOp::Or => {
                // Short-circuit (§3.4.2): the right operand is not evaluated
                // when the left decides the result.
                let Some(l) = self.operand(left) else {
                    return V::Bool(false);
                };
                let l = self.logical(l);
                if l == (op == BinaryOp::Or) {
                    return V::Bool(l);
                }
                match self.operand(right) {
                    Some(r) => V::Bool(self.logical(r)),
                    None => V::Bool(false),
                }
            }
            BinaryOp::Xor => match self.operands(left, right) {
                Some((l, r)) => V::Bool(self.logical(l) != self.logical(r)),
                None => V::Bool(false),
            },
            BinaryOp::Equal | BinaryOp::NotEqual => match self.operands(left, right) {
                Some((l, r)) => V::Bool(self.equal(l, &r) == (op == BinaryOp::Equal)),
                None => V::Bool(false),
            },
            BinaryOp::Less
            | BinaryOp::LessOrEqual
            | BinaryOp::Greater
            | BinaryOp::GreaterOrEqual => {
                let Some((l, r)) = self.operands(left, right) else {
                    return V::Bool(false);
                };
                let (l, r) = (self.cast_int(l), self.cast_int(r));
                V::Bool(match op {
                    BinaryOp::Less => l < r,
                    BinaryOp::LessOrEqual => l <= r,
                    BinaryOp::Greater => l > r,
                    _ => l >= r,
                })
            }
            BinaryOp::Add
            | BinaryOp::Subtract
            | BinaryOp::Multiply
            | BinaryOp::Divide
            | BinaryOp::Modulo => {
                // §3.2: `1 / missing` is 0 with only the MissingAttributeError.
                let Some((l, r)) = self.operands(left, right) else {
                    return V::Int(0);
                };
                let (l, r) = (self.cast_int(l), self.cast_int(r));
                V::Int(self.arithmetic(op, l, r))
            }
        }
    }

    fn arithmetic(&mut self, op: BinaryOp, l: i32, r: i32) -> i32 {
        if matches!(op, BinaryOp::Divide | BinaryOp::Modulo) && r == 0 {
            self.fail(ErrorKind::Math, || format!("division by zero: {l} by {r}"));
            return 0;
        }
        let (result, symbol) = match op {
            BinaryOp::Add => (l.checked_add(r), "+"),
            BinaryOp::Subtract => (l.checked_sub(r), "-"),
            BinaryOp::Multiply => (l.checked_mul(r), "*"),
            // Rust's `/` truncates towards 0 and `%` takes the sign of the
            // dividend, as the spec requires.
            BinaryOp::Divide => (l.checked_div(r), "/"),
            _ => (l.checked_rem(r), "%"),
        };
        self.checked(result, || format!("{l} {symbol} {r} overflows"))
    }

    /// `=` (§3.7): ambiguous, so the left operand is cast to the right's type.
    fn equal(&mut self, l: V<'_>, r: &V<'_>) -> bool {
        match r {
            V::Bool(b) => self.cast_bool(l) == *b,
            V::Int(i) => self.cast_int(l) == *i,
            V::Str(s) => self.cast_str(l) == *s,
        }
    }

    /// `IN` (§3.4.5): `=` per element, with the left operand's type as the
    /// target type for the elements.
    fn in_list(&mut self, value: &'a Expr, list: &'a [Expr], negated: bool) -> V<'a> {
        let v = self.operand(value);
        let mut found = false;
        let mut failed = v.is_none();
        for element in list {
            // Every element is evaluated (no short-circuit is specified), so
            // errors in later elements are still raised.
            let Some(e) = self.operand(element) else {
                failed = true;
                continue;
            };
            if let Some(v) = v.as_ref().filter(|_| !found && !failed) {
                let e = self.cast(e, v.ty());
                found = e == *v;
            }
        }
        if failed {
            return V::Bool(false);
        }
        V::Bool(found != negated)
    }

    fn call(&mut self, name: &str, args: &'a [Expr]) -> V<'a> {
        let Some(function) = Function::dispatch(name, args.len()) else {
            self.fail(ErrorKind::MissingFunction, || {
                format!("no function {name} taking {} argument(s)", args.len())
            });
            return V::Bool(false);
        };
        if function.variadic() {
            return self.concat(function, args);
        }
        let mut values: [Option<V<'a>>; 3] = [None, None, None];
        let mut failed = false;
        for (slot, arg) in values.iter_mut().zip(args) {
            *slot = self.operand(arg);
            failed |= slot.is_none();
        }
        if failed {
            return function.return_type().zero();
        }
        // Slots past the arity were not filled; the function ignores them.
        let [a, b, c] = values.map(|v| v.unwrap_or(V::Bool(false)));
        function.apply(self, a, b, c, args.len())
    }

    fn concat(&mut self, function: Function, args: &'a [Expr]) -> V<'a> {
        let mut values = Vec::with_capacity(args.len());
        let mut failed = false;
        for arg in args {
            match self.operand(arg) {
                Some(v) => values.push(self.cast_str(v)),
                None => failed = true,
            }
        }
        if failed {
            return Ty::Str.zero();
        }
        let joined = match function {
            Function::ConcatWs => match values.split_first() {
                Some((delimiter, rest)) => rest.join(delimiter.as_ref()),
                None => String::new(),
            },
            _ => values.concat(),
        };
        V::Str(Cow::Owned(joined))
    }
}

impl V<'_> {
    fn ty(&self) -> Ty {
        match self {
            V::Bool(_) => Ty::Bool,
            V::Int(_) => Ty::Int,
            V::Str(_) => Ty::Str,
        }
    }
}

/// The built-in functions (§3.5), plus the casting functions the conformance
/// tests use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Function {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    Abs,
    Int,
    Bool,
    Str,
    IsBool,
    IsInt,
}

impl Function {
    /// The function of that (upper-cased) name and arity, if there is one.
    fn dispatch(name: &str, arity: usize) -> Option<Function> {
        let (function, fits) = match name {
            "LENGTH" => (Function::Length, arity == 1),
            "CONCAT" => (Function::Concat, true),
            "CONCAT_WS" => (Function::ConcatWs, arity >= 1),
            "LOWER" => (Function::Lower, arity == 1),
            "UPPER" => (Function::Upper, arity == 1),
            "TRIM" => (Function::Trim, arity == 1),
            "LEFT" => (Function::Left, arity == 2),
            "RIGHT" => (Function::Right, arity == 2),
            "SUBSTRING" => (Function::Substring, arity == 2 || arity == 3),
            "ABS" => (Function::Abs, arity == 1),
            "INT" => (Function::Int, arity == 1),
            "BOOL" => (Function::Bool, arity == 1),
            "STRING" => (Function::Str, arity == 1),
            "IS_BOOL" => (Function::IsBool, arity == 1),
            "IS_INT" => (Function::IsInt, arity == 1),
            _ => return None,
        };
        fits.then_some(function)
    }

    fn variadic(self) -> bool {
        matches!(self, Function::Concat | Function::ConcatWs)
    }

    /// The return type, whose zero value a call yields when an argument
    /// failed.
    fn return_type(self) -> Ty {
        match self {
            Function::Length | Function::Abs | Function::Int => Ty::Int,
            Function::Bool | Function::IsBool | Function::IsInt => Ty::Bool,
            _ => Ty::Str,
        }
    }

    /// Applies a fixed-arity function; `a`, `b`, `c` are the arguments (past
    /// the arity, placeholders), `arity` how many were given.
    fn apply<'a>(self, cx: &mut Ctx<'_>, a: V<'a>, b: V<'a>, c: V<'a>, arity: usize) -> V<'a> {
        match self {
            Function::Length => {
                let n = cx.cast_str(a).chars().count();
                V::Int(i32::try_from(n).unwrap_or(i32::MAX))
            }
            Function::Lower => V::Str(Cow::Owned(cx.cast_str(a).to_lowercase())),
            Function::Upper => V::Str(Cow::Owned(cx.cast_str(a).to_uppercase())),
            Function::Trim => {
                // `str::trim` removes exactly Unicode White_Space.
                let s = cx.cast_str(a);
                V::Str(map_slice(s, |s| s.trim()))
            }
            Function::Left | Function::Right => {
                let s = cx.cast_str(a);
                let y = cx.cast_int(b);
                let name = if self == Function::Left {
                    "LEFT"
                } else {
                    "RIGHT"
                };
                if y < 0 {
                    cx.fail(ErrorKind::FunctionEvaluation, || {
                        format!("{name}: negative length {y}")
                    });
                    return V::Str(s);
                }
                let n = usize::try_from(y).unwrap_or(usize::MAX);
                let len = s.chars().count();
                if len <= n {
                    return V::Str(s);
                }
                V::Str(if self == Function::Left {
                    map_slice(s, |s| &s[..byte_offset(s, n)])
                } else {
                    map_slice(s, |s| &s[byte_offset(s, len - n)..])
                })
            }
            Function::Substring => {
                let s = cx.cast_str(a);
                let pos = cx.cast_int(b);
                let len = if arity == 3 {
                    Some(cx.cast_int(c))
                } else {
                    None
                };
                substring(cx, s, pos, len)
            }
            Function::Abs => {
                let x = cx.cast_int(a);
                V::Int(x.checked_abs().unwrap_or_else(|| {
                    cx.fail(ErrorKind::Math, || format!("ABS({x}) overflows"));
                    i32::MAX
                }))
            }
            Function::Int => V::Int(cx.cast_int(a)),
            Function::Bool => V::Bool(cx.cast_bool(a)),
            Function::Str => V::Str(cx.cast_str(a)),
            Function::IsBool => {
                let s = cx.cast_str(a);
                V::Bool(s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false"))
            }
            Function::IsInt => V::Bool(cx.cast_str(a).parse::<i32>().is_ok()),
            // Variadic functions are applied by `Ctx::concat`.
            Function::Concat | Function::ConcatWs => V::Str(Cow::Borrowed("")),
        }
    }
}

/// SUBSTRING(x, pos[, len]) (§3.5.1); positions count characters from 1, or
/// from the end when negative.
fn substring<'a>(cx: &mut Ctx<'_>, s: Cow<'a, str>, pos: i32, len: Option<i32>) -> V<'a> {
    let length = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
    let p = i64::from(pos);
    if p > length || p < -length {
        cx.fail(ErrorKind::FunctionEvaluation, || {
            format!("SUBSTRING: position {pos} is outside a string of length {length}")
        });
        return V::Str(Cow::Borrowed(""));
    }
    if let Some(l) = len.filter(|l| *l < 0) {
        cx.fail(ErrorKind::FunctionEvaluation, || {
            format!("SUBSTRING: negative length {l}")
        });
        return V::Str(Cow::Borrowed(""));
    }
    if pos == 0 {
        return V::Str(Cow::Borrowed(""));
    }
    // 0-based index of the first character; in 0..length by the checks above.
    let start = if p > 0 { p - 1 } else { length + p };
    let end = match len {
        Some(l) => (start + i64::from(l)).min(length),
        None => length,
    };
    let (start, end) = (
        usize::try_from(start).unwrap_or(0),
        usize::try_from(end).unwrap_or(0),
    );
    V::Str(map_slice(s, |s| {
        &s[byte_offset(s, start)..byte_offset(s, end)]
    }))
}

/// The byte offset of the `n`th character of `s` (its length if there are
/// fewer characters).
fn byte_offset(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

/// Applies a slicing function, keeping borrowed strings borrowed.
fn map_slice<'a>(s: Cow<'a, str>, f: impl FnOnce(&str) -> &str) -> Cow<'a, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(f(b)),
        Cow::Owned(o) => Cow::Owned(f(&o).to_owned()),
    }
}

/// Whether `s` matches a LIKE pattern (§3.4.3): `%` any run of characters,
/// `_` exactly one character, literals case-sensitively. Backtracks to the
/// most recent `%` only, so matching is O(len(s) × len(pattern)) and
/// allocates nothing.
pub(crate) fn like(s: &str, pattern: &[LikePart]) -> bool {
    let mut si = 0; // byte offset in `s`
    let mut pi = 0; // index in `pattern`
    // After the most recent `%`: the pattern index following it, and the
    // offset in `s` it has been extended to so far.
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        let step = match pattern.get(pi) {
            // A trailing `%` matches whatever is left: no need to walk it.
            Some(LikePart::AnyRun) if pi + 1 == pattern.len() => return true,
            Some(LikePart::AnyRun) => {
                backtrack = Some((pi + 1, si));
                pi += 1;
                continue;
            }
            Some(LikePart::AnyChar) => s[si..].chars().next().map(|c| si + c.len_utf8()),
            Some(LikePart::Literal(lit)) => {
                s[si..].starts_with(lit.as_str()).then(|| si + lit.len())
            }
            None if si == s.len() => return true,
            None => None,
        };
        match step {
            Some(next) => {
                si = next;
                pi += 1;
            }
            None => {
                // Let the last `%` swallow one more character and retry.
                let Some((after, from)) = backtrack else {
                    return false;
                };
                let Some(c) = s[from..].chars().next() else {
                    return false;
                };
                let from = from + c.len_utf8();
                backtrack = Some((after, from));
                pi = after;
                si = from;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(extra: &[(&str, &str)]) -> Event {
        let attributes: Vec<(String, String)> = [
            ("specversion", "1.0"),
            ("id", "1"),
            ("source", "/s"),
            ("type", "t"),
        ]
        .iter()
        .chain(extra)
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        Event::new(attributes, None).expect("a valid test event")
    }

    fn int(i: i32) -> Expr {
        Expr::Literal(Value::Integer(i))
    }
    fn boolean(b: bool) -> Expr {
        Expr::Literal(Value::Boolean(b))
    }
    fn string(s: &str) -> Expr {
        Expr::Literal(Value::String(Arc::from(s)))
    }
    fn attr(name: &str) -> Expr {
        Expr::Attribute(Arc::from(name))
    }
    fn bin(op: BinaryOp, l: Expr, r: Expr) -> Expr {
        Expr::Binary(op, Box::new(l), Box::new(r))
    }
    fn un(op: UnaryOp, x: Expr) -> Expr {
        Expr::Unary(op, Box::new(x))
    }
    fn call(name: &str, args: Vec<Expr>) -> Expr {
        Expr::Call {
            name: Arc::from(name),
            args,
        }
    }
    fn like_expr(value: Expr, pattern: Vec<LikePart>, negated: bool) -> Expr {
        Expr::Like {
            value: Box::new(value),
            pattern,
            negated,
        }
    }
    fn in_expr(value: Expr, list: Vec<Expr>, negated: bool) -> Expr {
        Expr::In {
            value: Box::new(value),
            list,
            negated,
        }
    }
    fn lit(s: &str) -> LikePart {
        LikePart::Literal(s.to_owned())
    }
    fn s(v: &str) -> Value {
        Value::String(Arc::from(v))
    }

    /// Evaluates on the default event; returns the value and the error kind.
    fn run(expr: &Expr) -> (Value, Option<&'static str>) {
        run_on(expr, &event(&[]))
    }
    fn run_on(expr: &Expr, ev: &Event) -> (Value, Option<&'static str>) {
        let result = evaluate(expr, ev);
        (result.value, result.error.map(|e| e.kind.as_str()))
    }
    fn ok(v: Value) -> (Value, Option<&'static str>) {
        (v, None)
    }
    fn err(v: Value, kind: &'static str) -> (Value, Option<&'static str>) {
        (v, Some(kind))
    }

    use BinaryOp::*;
    use Value::{Boolean as B, Integer as I};

    #[test]
    fn logical_operators() {
        assert_eq!(run(&bin(And, boolean(true), boolean(false))), ok(B(false)));
        assert_eq!(run(&bin(Or, boolean(false), boolean(true))), ok(B(true)));
        assert_eq!(run(&bin(Xor, boolean(true), boolean(true))), ok(B(false)));
        assert_eq!(run(&bin(Xor, boolean(true), boolean(false))), ok(B(true)));
        assert_eq!(run(&un(UnaryOp::Not, boolean(true))), ok(B(false)));
        // String operands are cast to Boolean; an Integer is a cast error
        // whose zero value the operator goes on with.
        assert_eq!(run(&bin(And, string("TRUE"), boolean(true))), ok(B(true)));
        assert_eq!(
            run(&bin(And, string("TRUE"), int(5))),
            err(B(false), "cast")
        );
        assert_eq!(run(&un(UnaryOp::Not, int(0))), err(B(true), "cast"));
        assert_eq!(
            run(&bin(And, boolean(true), string("yes"))),
            err(B(false), "cast")
        );
    }

    #[test]
    fn and_or_short_circuit() {
        // The right operand would raise an error if it were evaluated.
        assert_eq!(
            run(&bin(And, boolean(false), attr("missing"))),
            ok(B(false))
        );
        assert_eq!(run(&bin(Or, boolean(true), attr("missing"))), ok(B(true)));
        assert_eq!(
            run(&bin(And, boolean(true), attr("missing"))),
            err(B(false), "missingAttribute")
        );
        // The spec's example: `true AND (missingAttribute = "")`.
        assert_eq!(
            run(&bin(
                And,
                boolean(true),
                bin(Equal, attr("missing"), string(""))
            )),
            err(B(false), "missingAttribute")
        );
    }

    #[test]
    fn arithmetic() {
        // 4 * 2 + 4 / 2
        let e = bin(
            Add,
            bin(Multiply, int(4), int(2)),
            bin(Divide, int(4), int(2)),
        );
        assert_eq!(run(&e), ok(I(10)));
        assert_eq!(run(&bin(Divide, int(5), int(3))), ok(I(1)));
        assert_eq!(run(&bin(Divide, int(-5), int(3))), ok(I(-1)));
        assert_eq!(run(&bin(Modulo, int(5), int(2))), ok(I(1)));
        assert_eq!(run(&bin(Modulo, int(-5), int(3))), ok(I(-2)));
        assert_eq!(run(&bin(Modulo, int(5), int(-3))), ok(I(2)));
        assert_eq!(run(&bin(Subtract, int(-4), int(1))), ok(I(-5)));
        assert_eq!(run(&un(UnaryOp::Minus, int(4))), ok(I(-4)));
        // Implicit casts to Integer.
        assert_eq!(run(&bin(Add, string("5"), int(3))), ok(I(8)));
        assert_eq!(run(&bin(Add, int(5), string("+3"))), ok(I(8)));
        assert_eq!(run(&bin(Add, int(5), boolean(true))), ok(I(6)));
        assert_eq!(run(&bin(Add, int(5), string("x"))), err(I(5), "cast"));
    }

    #[test]
    fn division_by_zero_and_overflow_are_math_errors() {
        assert_eq!(run(&bin(Divide, int(5), int(0))), err(I(0), "math"));
        assert_eq!(run(&bin(Modulo, int(5), int(0))), err(I(0), "math"));
        assert_eq!(run(&bin(Add, int(i32::MAX), int(1))), err(I(0), "math"));
        assert_eq!(
            run(&bin(Subtract, int(i32::MIN), int(1))),
            err(I(0), "math")
        );
        assert_eq!(
            run(&bin(Multiply, int(65536), int(65536))),
            err(I(0), "math")
        );
        assert_eq!(run(&bin(Divide, int(i32::MIN), int(-1))), err(I(0), "math"));
        assert_eq!(run(&un(UnaryOp::Minus, int(i32::MIN))), err(I(0), "math"));
        // An operand that failed makes the enclosing operator yield 0.
        let e = bin(Add, bin(Divide, int(1), int(0)), int(7));
        assert_eq!(run(&e), err(I(0), "math"));
    }

    #[test]
    fn missing_attribute_yields_zero_of_the_return_type() {
        assert_eq!(run(&attr("missing")), err(B(false), "missingAttribute"));
        assert_eq!(
            run(&bin(Multiply, attr("missing"), int(5))),
            err(I(0), "missingAttribute")
        );
        // Not a division by zero: only the missing attribute is reported.
        assert_eq!(
            run(&bin(Divide, int(1), attr("missing"))),
            err(I(0), "missingAttribute")
        );
        assert_eq!(
            run(&bin(Modulo, attr("missing"), int(0))),
            err(I(0), "missingAttribute")
        );
        for op in [Equal, NotEqual, Less, GreaterOrEqual] {
            assert_eq!(
                run(&bin(op, attr("missing"), int(2))),
                err(B(false), "missingAttribute")
            );
        }
        assert_eq!(
            run(&call("LENGTH", vec![attr("missing")])),
            err(I(0), "missingAttribute")
        );
        assert_eq!(
            run(&call("CONCAT", vec![string("a"), attr("missing")])),
            err(s(""), "missingAttribute")
        );
        assert_eq!(
            run(&like_expr(attr("missing"), vec![LikePart::AnyRun], true)),
            err(B(false), "missingAttribute")
        );
        assert_eq!(
            run(&in_expr(attr("missing"), vec![int(1)], true)),
            err(B(false), "missingAttribute")
        );
    }

    #[test]
    fn attributes_are_strings() {
        let ev = event(&[
            ("sequence", "10"),
            ("flag", "TRUE"),
            ("hop", "2"),
            ("ttl", "10"),
        ]);
        assert_eq!(run_on(&attr("id"), &ev), ok(s("1")));
        assert_eq!(run_on(&attr("sequence"), &ev), ok(s("10")));
        // `sequence = 10`: the left operand is cast to the right's type.
        assert_eq!(
            run_on(&bin(Equal, attr("sequence"), int(10)), &ev),
            ok(B(true))
        );
        assert_eq!(
            run_on(&bin(Equal, attr("flag"), boolean(true)), &ev),
            ok(B(true))
        );
        // `hop < ttl` compares as Integers, not as strings ("2" > "10").
        assert_eq!(
            run_on(&bin(Less, attr("hop"), attr("ttl")), &ev),
            ok(B(true))
        );
        assert_eq!(
            run_on(&bin(Less, attr("source"), int(3)), &ev),
            err(B(true), "cast")
        );
    }

    #[test]
    fn equality_casts_left_to_right_type() {
        assert_eq!(
            run(&bin(Equal, boolean(true), boolean(false))),
            ok(B(false))
        );
        assert_eq!(run(&bin(Equal, int(2), int(2))), ok(B(true)));
        assert_eq!(run(&bin(NotEqual, int(1), int(2))), ok(B(true)));
        assert_eq!(run(&bin(Equal, string("abc"), string("abc"))), ok(B(true)));
        assert_eq!(run(&bin(Equal, string("abc"), string("ABC"))), ok(B(false)));
        assert_eq!(
            run(&bin(NotEqual, string("abc"), string("abc"))),
            ok(B(false))
        );
        // The spec's example: TRUE = "true" AND FALSE = "false" is true,
        // TRUE = "TRUE" OR FALSE = "FALSE" is false.
        let t = bin(
            And,
            bin(Equal, boolean(true), string("true")),
            bin(Equal, boolean(false), string("false")),
        );
        assert_eq!(run(&t), ok(B(true)));
        let f = bin(
            Or,
            bin(Equal, boolean(true), string("TRUE")),
            bin(Equal, boolean(false), string("FALSE")),
        );
        assert_eq!(run(&f), ok(B(false)));
        assert_eq!(run(&bin(Equal, string("TRUE"), boolean(true))), ok(B(true)));
        assert_eq!(run(&bin(Equal, int(1), string("1"))), ok(B(true)));
        assert_eq!(run(&bin(Equal, string("x"), int(0))), err(B(true), "cast"));
    }

    #[test]
    fn comparisons() {
        assert_eq!(run(&bin(LessOrEqual, int(2), int(2))), ok(B(true)));
        assert_eq!(run(&bin(LessOrEqual, int(3), int(2))), ok(B(false)));
        assert_eq!(run(&bin(Less, int(2), int(2))), ok(B(false)));
        assert_eq!(run(&bin(GreaterOrEqual, int(2), int(3))), ok(B(false)));
        assert_eq!(run(&bin(Greater, int(2), int(1))), ok(B(true)));
        assert_eq!(run(&bin(Greater, string("10"), string("9"))), ok(B(true)));
    }

    #[test]
    fn like_patterns() {
        let m = |v: &str, p: Vec<LikePart>| run(&like_expr(string(v), p, false)).0 == B(true);
        use LikePart::{AnyChar as U, AnyRun as P};
        // The spec's example `_b%`.
        let p = || vec![U, lit("b"), P];
        assert!(m("ab", p()) && m("abc", p()) && m("abcd1", p()));
        assert!(!m("b", p()) && !m("acd", p()) && !m("aBc", p()));
        assert!(m("abc%", vec![lit("abc%")]) && !m("abcd", vec![lit("abc%")]));
        // Empty pattern matches only the empty string.
        assert!(m("", vec![]) && !m("a", vec![]));
        // Patterns that match the empty string.
        assert!(m("", vec![P]) && m("", vec![P, P]) && m("xyz", vec![P, P]));
        assert!(!m("", vec![U]) && !m("", vec![P, U, P]));
        // Backtracking over several `%`.
        assert!(m("aXbXbc", vec![lit("a"), P, lit("b"), P, lit("bc")]));
        assert!(m("abab", vec![P, lit("ab")]) && !m("abac", vec![P, lit("ab")]));
        assert!(m("mississippi", vec![P, lit("iss"), P, lit("ppi")]));
        assert!(!m("mississippi", vec![P, lit("iss"), P, lit("pix")]));
        // `_` is one character, not one byte.
        assert!(m("é", vec![U]) && m("aéb", vec![lit("a"), U, lit("b")]));
        // Left operand cast to String; NOT LIKE.
        assert_eq!(
            run(&like_expr(int(123), vec![lit("1"), P], false)),
            ok(B(true))
        );
        assert_eq!(
            run(&like_expr(boolean(true), vec![lit("tr"), P], true)),
            ok(B(false))
        );
    }

    #[test]
    fn exists() {
        let ev = event(&[("subject", "x")]);
        let ex = |n: &str| Expr::Exists(Arc::from(n));
        assert_eq!(run_on(&ex("id"), &ev), ok(B(true)));
        assert_eq!(run_on(&ex("subject"), &ev), ok(B(true)));
        assert_eq!(run_on(&ex("missing"), &ev), ok(B(false)));
    }

    #[test]
    fn in_casts_elements_to_the_left_type() {
        let list = || (1..=3).map(int).chain([int(123)]).collect::<Vec<_>>();
        assert_eq!(run(&in_expr(int(123), list(), false)), ok(B(true)));
        assert_eq!(run(&in_expr(int(123), list(), true)), ok(B(false)));
        assert_eq!(
            run(&in_expr(boolean(true), vec![boolean(false)], false)),
            ok(B(false))
        );
        let ev = event(&[("myext", "/s")]);
        assert_eq!(
            run_on(
                &in_expr(attr("source"), vec![attr("myext"), string("x")], false),
                &ev
            ),
            ok(B(true))
        );
        assert_eq!(
            run(&in_expr(
                string("true"),
                vec![boolean(true), string("false")],
                false
            )),
            ok(B(true))
        );
        assert_eq!(
            run(&in_expr(
                string("TRUE"),
                vec![boolean(true), string("false")],
                false
            )),
            ok(B(false))
        );
        assert_eq!(
            run(&in_expr(
                boolean(true),
                vec![string("true"), string("false")],
                false
            )),
            ok(B(true))
        );
        assert_eq!(
            run(&in_expr(int(1), vec![string("1"), string("2")], false)),
            ok(B(true))
        );
        assert_eq!(
            run(&in_expr(string("1"), vec![int(1), int(2)], false)),
            ok(B(true))
        );
        assert_eq!(
            run(&in_expr(int(1), vec![string("x"), int(1)], false)),
            err(B(true), "cast")
        );
    }

    #[test]
    fn string_functions() {
        let f = |name: &str, args: Vec<Expr>| run(&call(name, args));
        assert_eq!(f("LENGTH", vec![string("abc")]), ok(I(3)));
        assert_eq!(f("LENGTH", vec![string("")]), ok(I(0)));
        assert_eq!(f("LENGTH", vec![string("é€")]), ok(I(2)));
        assert_eq!(f("LENGTH", vec![boolean(true)]), ok(I(4)));
        assert_eq!(
            f("CONCAT", vec![string("a"), int(1), boolean(true)]),
            ok(s("a1true"))
        );
        assert_eq!(f("CONCAT", vec![]), ok(s("")));
        assert_eq!(
            f(
                "CONCAT_WS",
                vec![string(","), string("a"), string("b"), string("c")]
            ),
            ok(s("a,b,c"))
        );
        assert_eq!(f("CONCAT_WS", vec![string(",")]), ok(s("")));
        assert_eq!(f("CONCAT_WS", vec![string(","), string("a")]), ok(s("a")));
        assert_eq!(f("CONCAT_WS", vec![]), err(B(false), "missingFunction"));
        assert_eq!(f("LOWER", vec![string("AbC")]), ok(s("abc")));
        assert_eq!(f("UPPER", vec![string("AbC")]), ok(s("ABC")));
        assert_eq!(
            f("TRIM", vec![string(" \u{2003} a b c\t\n ")]),
            ok(s("a b c"))
        );
        assert_eq!(f("TRIM", vec![string("\u{1}a")]), ok(s("\u{1}a")));
        assert_eq!(f("LEFT", vec![string("abc"), int(2)]), ok(s("ab")));
        assert_eq!(f("LEFT", vec![string("abc"), int(10)]), ok(s("abc")));
        assert_eq!(f("LEFT", vec![string(""), int(0)]), ok(s("")));
        assert_eq!(
            f("LEFT", vec![string("abc"), int(-2)]),
            err(s("abc"), "functionEvaluation")
        );
        assert_eq!(f("RIGHT", vec![string("abc"), int(2)]), ok(s("bc")));
        assert_eq!(f("RIGHT", vec![string("éab"), int(3)]), ok(s("éab")));
        assert_eq!(f("RIGHT", vec![string("abc"), int(10)]), ok(s("abc")));
        assert_eq!(
            f("RIGHT", vec![string("abc"), int(-2)]),
            err(s("abc"), "functionEvaluation")
        );
    }

    #[test]
    fn substring() {
        let f = |x: &str, args: &[i32]| {
            let mut all = vec![string(x)];
            all.extend(args.iter().copied().map(int));
            run(&call("SUBSTRING", all))
        };
        assert_eq!(f("abcdef", &[1]), ok(s("abcdef")));
        assert_eq!(f("abcdef", &[2]), ok(s("bcdef")));
        assert_eq!(f("Quadratically", &[5]), ok(s("ratically")));
        assert_eq!(f("Sakila", &[-3]), ok(s("ila")));
        assert_eq!(f("abcdef", &[1, 6]), ok(s("abcdef")));
        assert_eq!(f("abcdef", &[2, 4]), ok(s("bcde")));
        assert_eq!(f("Sakila", &[-5, 3]), ok(s("aki")));
        assert_eq!(f("abc", &[2, 100]), ok(s("bc")));
        assert_eq!(f("abc", &[2, 0]), ok(s("")));
        assert_eq!(f("Quadratically", &[0]), ok(s("")));
        assert_eq!(f("Quadratically", &[0, 1]), ok(s("")));
        assert_eq!(f("", &[0]), ok(s("")));
        assert_eq!(f("abcdef", &[10]), err(s(""), "functionEvaluation"));
        assert_eq!(f("abcdef", &[-10]), err(s(""), "functionEvaluation"));
        assert_eq!(f("abcdef", &[10, 10]), err(s(""), "functionEvaluation"));
        assert_eq!(f("abcdef", &[-10, 10]), err(s(""), "functionEvaluation"));
        assert_eq!(f("abcdef", &[1, -1]), err(s(""), "functionEvaluation"));
        assert_eq!(f("abc", &[1, i32::MAX]), ok(s("abc")));
        assert_eq!(f("", &[1]), err(s(""), "functionEvaluation"));
    }

    #[test]
    fn math_and_casting_functions() {
        let f = |name: &str, arg: Expr| run(&call(name, vec![arg]));
        assert_eq!(f("ABS", int(-10)), ok(I(10)));
        assert_eq!(f("ABS", int(0)), ok(I(0)));
        assert_eq!(f("ABS", int(i32::MIN)), err(I(i32::MAX), "math"));
        assert_eq!(f("INT", string("-1")), ok(I(-1)));
        assert_eq!(f("INT", string("+7")), ok(I(7)));
        assert_eq!(f("INT", boolean(true)), ok(I(1)));
        assert_eq!(f("INT", string("ABC")), err(I(0), "cast"));
        assert_eq!(f("INT", string("2147483648")), err(I(0), "cast"));
        assert_eq!(f("INT", string("")), err(I(0), "cast"));
        assert_eq!(f("INT", string(" 1")), err(I(0), "cast"));
        assert_eq!(f("BOOL", string("TRUE")), ok(B(true)));
        assert_eq!(f("BOOL", string("fAlSe")), ok(B(false)));
        assert_eq!(f("BOOL", string("ABC")), err(B(false), "cast"));
        assert_eq!(f("BOOL", int(-50)), ok(B(true)));
        assert_eq!(f("BOOL", int(0)), ok(B(false)));
        assert_eq!(f("STRING", boolean(false)), ok(s("false")));
        assert_eq!(f("STRING", int(-1)), ok(s("-1")));
        assert_eq!(f("STRING", string("abc")), ok(s("abc")));
        assert_eq!(f("IS_BOOL", string("True")), ok(B(true)));
        assert_eq!(f("IS_BOOL", string("yes")), ok(B(false)));
        assert_eq!(f("IS_INT", string("-12")), ok(B(true)));
        assert_eq!(f("IS_INT", string("1.5")), ok(B(false)));
        assert_eq!(f("IS_INT", int(3)), ok(B(true)));
    }

    #[test]
    fn unknown_function_or_arity_is_missing_function() {
        assert_eq!(run(&call("NOPE", vec![])), err(B(false), "missingFunction"));
        assert_eq!(
            run(&call("ABS", vec![int(1), int(2)])),
            err(B(false), "missingFunction")
        );
        assert_eq!(
            run(&call("SUBSTRING", vec![string("a")])),
            err(B(false), "missingFunction")
        );
        // Only the first error is reported.
        let e = bin(Or, call("NOPE", vec![]), bin(Divide, int(1), int(0)));
        assert_eq!(run(&e), err(B(false), "missingFunction"));
    }

    #[test]
    fn matches_requires_true_and_no_error() {
        let ev = event(&[("sequence", "10"), ("flag", "true")]);
        assert!(matches(&bin(Equal, attr("sequence"), int(10)), &ev));
        assert!(!matches(&bin(Equal, attr("sequence"), int(11)), &ev));
        // The top-level result is cast to Boolean.
        assert!(matches(&attr("flag"), &ev));
        assert!(matches(&int(3), &ev));
        assert!(!matches(&attr("type"), &ev));
        // True, but with an error: no match.
        assert!(!matches(
            &bin(Or, bin(Equal, attr("x"), int(1)), boolean(true)),
            &ev
        ));
        assert!(!matches(
            &bin(Equal, bin(Divide, int(1), int(0)), int(0)),
            &ev
        ));
        assert!(!matches(&un(UnaryOp::Not, attr("missing")), &ev));
    }
}
