//! The parsed form of a CESQL expression.

use std::fmt;
use std::sync::Arc;

/// A CESQL value: the spec's three types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Boolean(bool),
    /// 32-bit, as the spec defines Integer.
    Integer(i32),
    String(Arc<str>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{}", if *b { "true" } else { "false" }),
            Value::Integer(i) => write!(f, "{i}"),
            Value::String(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// `NOT x`
    Not,
    /// `-x`
    Minus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    And,
    Or,
    Xor,
    Equal,
    /// `!=` and `<>`
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    Add,
    Subtract,
    Multiply,
    Divide,
    Modulo,
}

/// One piece of a LIKE pattern, compiled at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LikePart {
    /// Characters that must match exactly (escapes already resolved).
    Literal(String),
    /// `_`: exactly one character.
    AnyChar,
    /// `%`: any run of characters, possibly empty.
    AnyRun,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Literal(Value),
    /// A context attribute or extension, lower-cased as the spec requires.
    Attribute(Arc<str>),
    /// `EXISTS name`
    Exists(Arc<str>),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `x [NOT] LIKE 'pattern'`
    Like {
        value: Box<Expr>,
        pattern: Vec<LikePart>,
        negated: bool,
    },
    /// `x [NOT] IN (a, b, ...)`
    In {
        value: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    /// A function call; `name` upper-cased (names are case-insensitive).
    Call {
        name: Arc<str>,
        args: Vec<Expr>,
    },
}
