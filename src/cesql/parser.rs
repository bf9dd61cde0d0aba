//! Lexer and parser for CESQL v1 (cloudevents/spec `cesql/spec.md`, grammar
//! `cesql/CESQLParser.g4` + `CESQLLexer.g4`).
//!
//! Precedence, highest first, as the grammar's alternatives are ordered:
//!
//! 1. function calls, `EXISTS id`, parentheses, literals, attributes
//! 2. prefix `NOT`, then prefix `-` (their operand is another prefix
//!    expression or a primary: `NOT a = b` is `(NOT a) = b`)
//! 3. `x [NOT] LIKE 'pattern'`
//! 4. `x [NOT] IN (a, b, ...)`
//! 5. `*` `/` `%` (left-associative)
//! 6. `+` `-` (left-associative)
//! 7. `=` `!=` `<>` `<` `<=` `>` `>=` (left-associative)
//! 8. `AND` `OR` `XOR`: one level, right-associative as the grammar's
//!    `<assoc=right>` says (`a OR b AND c` is `a OR (b AND c)`).
//!
//! The expression is user input: nothing here panics on it, and nesting is
//! bounded so a hostile expression cannot overflow the stack.

use std::fmt;
use std::sync::Arc;

use super::ast::{BinaryOp, Expr, LikePart, UnaryOp, Value};

/// Deepest nesting of parentheses / prefix operators / operands accepted.
const MAX_DEPTH: usize = 256;

/// Why an expression could not be parsed, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What was found and what was expected.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole CESQL expression; anything after it is an error.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let tokens = lex(text)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    let expr = parser.expression(0, "at the start of the input")?;
    let tok = parser.peek();
    match tok.kind {
        Kind::Eof => Ok(expr),
        Kind::RParen => Err(tok.error("found ')' with no matching '('".to_string())),
        _ => Err(tok.error(format!(
            "expected an operator or end of input, found {}",
            tok.kind.describe()
        ))),
    }
}

// ---------------------------------------------------------------- lexer --

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Equal,
    /// `!=` or `<>`; the text is kept for messages.
    NotEqual(&'static str),
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    And,
    Or,
    Xor,
    Not,
    Like,
    In,
    Exists,
    True,
    False,
    /// Decimal digits, sign not included.
    Integer(String),
    /// A string literal: the text between the quotes, escapes unresolved
    /// (LIKE needs to see `\%` and `\_`), and the quote character.
    Str {
        raw: String,
        quote: char,
    },
    /// An attribute or function name, as written.
    Word(String),
    Eof,
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::LParen => "'('".into(),
            Kind::RParen => "')'".into(),
            Kind::Comma => "','".into(),
            Kind::Plus => "'+'".into(),
            Kind::Minus => "'-'".into(),
            Kind::Star => "'*'".into(),
            Kind::Slash => "'/'".into(),
            Kind::Percent => "'%'".into(),
            Kind::Equal => "'='".into(),
            Kind::NotEqual(t) => format!("'{t}'"),
            Kind::Less => "'<'".into(),
            Kind::LessOrEqual => "'<='".into(),
            Kind::Greater => "'>'".into(),
            Kind::GreaterOrEqual => "'>='".into(),
            Kind::And => "AND".into(),
            Kind::Or => "OR".into(),
            Kind::Xor => "XOR".into(),
            Kind::Not => "NOT".into(),
            Kind::Like => "LIKE".into(),
            Kind::In => "IN".into(),
            Kind::Exists => "EXISTS".into(),
            Kind::True => "TRUE".into(),
            Kind::False => "FALSE".into(),
            Kind::Integer(d) => format!("integer {d}"),
            Kind::Str { raw, quote } => format!("string {quote}{raw}{quote}"),
            Kind::Word(w) => format!("name '{w}'"),
            Kind::Eof => "end of input".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    line: usize,
    column: usize,
}

impl Token {
    fn error(&self, message: String) -> ParseError {
        ParseError {
            line: self.line,
            column: self.column,
            message,
        }
    }
}

struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    column: usize,
}

impl Cursor<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn keyword(word: &str) -> Option<Kind> {
    const KEYWORDS: [(&str, Kind); 9] = [
        ("AND", Kind::And),
        ("OR", Kind::Or),
        ("XOR", Kind::Xor),
        ("NOT", Kind::Not),
        ("LIKE", Kind::Like),
        ("IN", Kind::In),
        ("EXISTS", Kind::Exists),
        ("TRUE", Kind::True),
        ("FALSE", Kind::False),
    ];
    KEYWORDS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(word))
        .map(|(_, kind)| kind.clone())
}

fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let mut cur = Cursor {
        chars: text.chars().peekable(),
        line: 1,
        column: 1,
    };
    let mut tokens = Vec::new();
    loop {
        while cur
            .peek()
            .is_some_and(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
        {
            cur.bump();
        }
        let (line, column) = (cur.line, cur.column);
        let at = |message: String| ParseError {
            line,
            column,
            message,
        };
        let Some(c) = cur.bump() else {
            tokens.push(Token {
                kind: Kind::Eof,
                line,
                column,
            });
            return Ok(tokens);
        };
        let kind = match c {
            '(' => Kind::LParen,
            ')' => Kind::RParen,
            ',' => Kind::Comma,
            '+' => Kind::Plus,
            '-' => Kind::Minus,
            '*' => Kind::Star,
            '/' => Kind::Slash,
            '%' => Kind::Percent,
            '=' => Kind::Equal,
            '!' => {
                if cur.peek() == Some('=') {
                    cur.bump();
                    Kind::NotEqual("!=")
                } else {
                    return Err(at("unexpected character '!': expected '!='".into()));
                }
            }
            '<' => match cur.peek() {
                Some('=') => {
                    cur.bump();
                    Kind::LessOrEqual
                }
                Some('>') => {
                    cur.bump();
                    Kind::NotEqual("<>")
                }
                _ => Kind::Less,
            },
            '>' => {
                if cur.peek() == Some('=') {
                    cur.bump();
                    Kind::GreaterOrEqual
                } else {
                    Kind::Greater
                }
            }
            '\'' | '"' => {
                let quote = c;
                let mut raw = String::new();
                loop {
                    match cur.bump() {
                        None => {
                            return Err(at(format!(
                                "unterminated string literal: expected a closing {quote}, \
                                 found end of input"
                            )));
                        }
                        Some('\\') => match cur.bump() {
                            Some(e) => {
                                raw.push('\\');
                                raw.push(e);
                            }
                            None => {
                                return Err(at(format!(
                                    "unterminated string literal: expected a closing {quote}, \
                                     found end of input"
                                )));
                            }
                        },
                        Some(ch) if ch == quote => {
                            if cur.peek() == Some(quote) {
                                cur.bump();
                                raw.push(quote);
                                raw.push(quote);
                            } else {
                                break;
                            }
                        }
                        Some(ch) => raw.push(ch),
                    }
                }
                Kind::Str { raw, quote }
            }
            c if is_word_char(c) => {
                let mut word = String::from(c);
                while let Some(n) = cur.peek().filter(|&n| is_word_char(n)) {
                    word.push(n);
                    cur.bump();
                }
                if let Some(k) = keyword(&word) {
                    k
                } else if word.bytes().all(|b| b.is_ascii_digit()) {
                    Kind::Integer(word)
                } else {
                    Kind::Word(word)
                }
            }
            other => return Err(at(format!("unexpected character '{other}'"))),
        };
        tokens.push(Token { kind, line, column });
    }
}

/// The value of a string literal: `\'`, `\"`, `\\` and a doubled quote are
/// resolved; any other backslash sequence is kept as written (the spec's
/// test suite expects `'ab\c'` to be the four characters `ab\c`).
fn string_value(raw: &str, quote: char) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\'' | '"' | '\\')) => out.push(e),
                Some(e) => {
                    out.push('\\');
                    out.push(e);
                }
                None => out.push('\\'),
            }
        } else if c == quote {
            // The lexer only lets a quote in as a doubled pair.
            chars.next();
            out.push(quote);
        } else {
            out.push(c);
        }
    }
    out
}

/// Compiles a LIKE pattern: `%` any run, `_` any one character, `\%` `\_`
/// literal wildcards, otherwise as [`string_value`].
fn like_pattern(raw: &str, quote: char) -> Vec<LikePart> {
    fn flush(parts: &mut Vec<LikePart>, lit: &mut String) {
        if !lit.is_empty() {
            parts.push(LikePart::Literal(std::mem::take(lit)));
        }
    }
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('%' | '_' | '\'' | '"' | '\\')) => lit.push(e),
                Some(e) => {
                    lit.push('\\');
                    lit.push(e);
                }
                None => lit.push('\\'),
            },
            '%' => {
                flush(&mut parts, &mut lit);
                // `%%` matches what `%` matches.
                if parts.last() != Some(&LikePart::AnyRun) {
                    parts.push(LikePart::AnyRun);
                }
            }
            '_' => {
                flush(&mut parts, &mut lit);
                parts.push(LikePart::AnyChar);
            }
            c if c == quote => {
                chars.next();
                lit.push(quote);
            }
            c => lit.push(c),
        }
    }
    flush(&mut parts, &mut lit);
    parts
}

// --------------------------------------------------------------- parser --

const PREC_LOGIC: u8 = 3;
const PREC_COMPARE: u8 = 4;
const PREC_ADD: u8 = 5;
const PREC_MUL: u8 = 6;
const PREC_IN: u8 = 7;
const PREC_LIKE: u8 = 9;

fn binary_op(kind: &Kind) -> Option<(BinaryOp, u8)> {
    Some(match kind {
        Kind::And => (BinaryOp::And, PREC_LOGIC),
        Kind::Or => (BinaryOp::Or, PREC_LOGIC),
        Kind::Xor => (BinaryOp::Xor, PREC_LOGIC),
        Kind::Equal => (BinaryOp::Equal, PREC_COMPARE),
        Kind::NotEqual(_) => (BinaryOp::NotEqual, PREC_COMPARE),
        Kind::Less => (BinaryOp::Less, PREC_COMPARE),
        Kind::LessOrEqual => (BinaryOp::LessOrEqual, PREC_COMPARE),
        Kind::Greater => (BinaryOp::Greater, PREC_COMPARE),
        Kind::GreaterOrEqual => (BinaryOp::GreaterOrEqual, PREC_COMPARE),
        Kind::Plus => (BinaryOp::Add, PREC_ADD),
        Kind::Minus => (BinaryOp::Subtract, PREC_ADD),
        Kind::Star => (BinaryOp::Multiply, PREC_MUL),
        Kind::Slash => (BinaryOp::Divide, PREC_MUL),
        Kind::Percent => (BinaryOp::Modulo, PREC_MUL),
        _ => return None,
    })
}

struct Parser {
    /// Always ends with an `Eof` token.
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        let last = self.tokens.len().saturating_sub(1);
        // The lexer always pushes Eof, so the vector is never empty.
        &self.tokens[(self.pos + ahead).min(last)]
    }

    fn next(&mut self) -> Token {
        let tok = self.peek().clone();
        if tok.kind != Kind::Eof {
            self.pos += 1;
        }
        tok
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.peek().error(format!(
                "expression nested more than {MAX_DEPTH} levels deep (each parenthesis, \
                 prefix operator and chained operator is a level; write a long OR of \
                 comparisons as IN (...))"
            )));
        }
        Ok(())
    }

    /// Operators binding at least as tightly as `min_prec`, after an operand
    /// that `context` says where it is expected ("after AND", ...).
    fn expression(&mut self, min_prec: u8, context: &str) -> Result<Expr, ParseError> {
        self.enter()?;
        let mut lhs = self.prefix(context)?;
        let mut logic: Vec<(BinaryOp, Expr)> = Vec::new();
        // Each operator of a chain at this level adds a level to the tree
        // (`a = b = c` is `(a = b) = c`), and evaluating, compiling and
        // dropping the tree recurse through every level: a chain counts
        // towards MAX_DEPTH like nesting does, or `a = a = ... = a` with
        // thousands of operators would overflow the stack.
        let mut chained = 0;
        loop {
            let tok = self.peek().clone();
            if self.is_operator_here(&tok.kind, min_prec) {
                self.enter()?;
                chained += 1;
            }
            match &tok.kind {
                Kind::Like if PREC_LIKE >= min_prec => {
                    self.next();
                    lhs = self.like(lhs, false, "LIKE")?;
                }
                Kind::In if PREC_IN >= min_prec => {
                    self.next();
                    lhs = self.in_list(lhs, false, "IN")?;
                }
                Kind::Not => match self.peek_at(1).kind {
                    Kind::Like if PREC_LIKE >= min_prec => {
                        self.next();
                        self.next();
                        lhs = self.like(lhs, true, "NOT LIKE")?;
                    }
                    Kind::In if PREC_IN >= min_prec => {
                        self.next();
                        self.next();
                        lhs = self.in_list(lhs, true, "NOT IN")?;
                    }
                    Kind::Like | Kind::In => break,
                    _ => {
                        let after = self.peek_at(1).clone();
                        return Err(after.error(format!(
                            "expected LIKE or IN after NOT, found {}",
                            after.kind.describe()
                        )));
                    }
                },
                kind => {
                    let Some((op, prec)) = binary_op(kind) else {
                        break;
                    };
                    if prec < min_prec {
                        break;
                    }
                    self.next();
                    let context = format!("after {}", tok.kind.describe());
                    let rhs = self.expression(prec + 1, &context)?;
                    if prec == PREC_LOGIC {
                        // Right-associative: folded below, iteratively, so
                        // long AND/OR chains do not count as nesting.
                        logic.push((op, rhs));
                    } else {
                        lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs));
                    }
                }
            }
        }
        // Everything above the logic level was consumed by each operand, so
        // `lhs` is the first operand of the chain.
        let mut tail: Option<(BinaryOp, Expr)> = None;
        while let Some((op, operand)) = logic.pop() {
            let right = match tail.take() {
                Some((next_op, rest)) => Expr::Binary(next_op, Box::new(operand), Box::new(rest)),
                None => operand,
            };
            tail = Some((op, right));
        }
        if let Some((op, right)) = tail {
            lhs = Expr::Binary(op, Box::new(lhs), Box::new(right));
        }
        self.depth -= 1 + chained;
        Ok(lhs)
    }

    /// Whether `kind` continues the expression at this precedence level
    /// (the loop in `expression` consumes it as an operator).
    fn is_operator_here(&self, kind: &Kind, min_prec: u8) -> bool {
        match kind {
            Kind::Like => PREC_LIKE >= min_prec,
            Kind::In => PREC_IN >= min_prec,
            Kind::Not => match self.peek_at(1).kind {
                Kind::Like => PREC_LIKE >= min_prec,
                Kind::In => PREC_IN >= min_prec,
                _ => false,
            },
            kind => binary_op(kind).is_some_and(|(_, prec)| prec >= min_prec),
        }
    }

    /// Prefix operators and primaries.
    fn prefix(&mut self, context: &str) -> Result<Expr, ParseError> {
        self.enter()?;
        let tok = self.next();
        let expr = match tok.kind {
            Kind::Not => Expr::Unary(UnaryOp::Not, Box::new(self.prefix("after NOT")?)),
            Kind::Minus | Kind::Plus if matches!(self.peek().kind, Kind::Integer(_)) => {
                let digits = match self.next().kind {
                    Kind::Integer(d) => d,
                    _ => String::new(),
                };
                let sign = if tok.kind == Kind::Minus { "-" } else { "" };
                integer(&tok, &format!("{sign}{digits}"))?
            }
            Kind::Minus => Expr::Unary(UnaryOp::Minus, Box::new(self.prefix("after '-'")?)),
            Kind::Integer(ref digits) => integer(&tok, digits)?,
            Kind::True => Expr::Literal(Value::Boolean(true)),
            Kind::False => Expr::Literal(Value::Boolean(false)),
            Kind::Str { ref raw, quote } => {
                Expr::Literal(Value::String(Arc::from(string_value(raw, quote))))
            }
            Kind::LParen => {
                let inner = self.expression(0, "after '('")?;
                self.close(&tok, "the expression")?;
                inner
            }
            Kind::Exists => {
                let name = self.next();
                match name.kind {
                    Kind::Word(ref w) => Expr::Exists(attribute_name(&name, w)?),
                    ref other => {
                        return Err(name.error(format!(
                            "expected an attribute name after EXISTS, found {}",
                            other.describe()
                        )));
                    }
                }
            }
            Kind::Word(ref w) if self.peek().kind == Kind::LParen => self.call(&tok, w)?,
            Kind::Word(ref w) => {
                if w.contains('_') {
                    let found = self.peek();
                    return Err(found.error(format!(
                        "expected '(' after function name {}, found {} \
                         (attribute names cannot contain '_')",
                        w.to_ascii_uppercase(),
                        found.kind.describe()
                    )));
                }
                Expr::Attribute(attribute_name(&tok, w)?)
            }
            ref other => {
                return Err(tok.error(format!(
                    "expected an expression {context}, found {}",
                    other.describe()
                )));
            }
        };
        self.depth -= 1;
        Ok(expr)
    }

    /// Expects the `)` closing `open`.
    fn close(&mut self, open: &Token, what: &str) -> Result<(), ParseError> {
        let tok = self.next();
        if tok.kind == Kind::RParen {
            return Ok(());
        }
        Err(tok.error(format!(
            "expected ')' after {what} to close the '(' at line {}, column {}, found {}",
            open.line,
            open.column,
            tok.kind.describe()
        )))
    }

    fn like(&mut self, value: Expr, negated: bool, op: &str) -> Result<Expr, ParseError> {
        let tok = self.next();
        match tok.kind {
            Kind::Str { ref raw, quote } => Ok(Expr::Like {
                value: Box::new(value),
                pattern: like_pattern(raw, quote),
                negated,
            }),
            ref other => Err(tok.error(format!(
                "expected a string literal pattern after {op}, found {}",
                other.describe()
            ))),
        }
    }

    fn in_list(&mut self, value: Expr, negated: bool, op: &str) -> Result<Expr, ParseError> {
        let open = self.next();
        if open.kind != Kind::LParen {
            return Err(open.error(format!(
                "expected '(' after {op}, found {}",
                open.kind.describe()
            )));
        }
        if self.peek().kind == Kind::RParen {
            return Err(self.peek().error(format!(
                "expected an expression in the {op} list (it cannot be empty), found ')'"
            )));
        }
        let list = self.arguments(&open, &format!("in the {op} list"))?;
        Ok(Expr::In {
            value: Box::new(value),
            list,
            negated,
        })
    }

    fn call(&mut self, name_tok: &Token, name: &str) -> Result<Expr, ParseError> {
        if !name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_') || name.starts_with('_') {
            return Err(name_tok.error(format!(
                "'{name}' is not a function name: expected a letter followed by \
                 letters and '_'"
            )));
        }
        let open = self.next();
        let name: Arc<str> = Arc::from(name.to_ascii_uppercase());
        let args = if self.peek().kind == Kind::RParen {
            self.next();
            Vec::new()
        } else {
            self.arguments(&open, &format!("in the arguments of {name}"))?
        };
        Ok(Expr::Call { name, args })
    }

    /// `expr (, expr)* )` after an already consumed `open`.
    fn arguments(&mut self, open: &Token, context: &str) -> Result<Vec<Expr>, ParseError> {
        let mut list = vec![self.expression(0, context)?];
        loop {
            let tok = self.next();
            match tok.kind {
                Kind::Comma => list.push(self.expression(0, "after ','")?),
                Kind::RParen => return Ok(list),
                ref other => {
                    return Err(tok.error(format!(
                        "expected ',' or ')' to close the '(' at line {}, column {}, found {}",
                        open.line,
                        open.column,
                        other.describe()
                    )));
                }
            }
        }
    }
}

fn integer(tok: &Token, text: &str) -> Result<Expr, ParseError> {
    text.parse::<i32>()
        .map(|i| Expr::Literal(Value::Integer(i)))
        .map_err(|_| {
            tok.error(format!(
                "integer literal {text} is out of range: must be between {} and {}",
                i32::MIN,
                i32::MAX
            ))
        })
}

/// Attribute names: letters and digits (the lexer guarantees no other
/// characters apart from '_'), lower-cased.
fn attribute_name(tok: &Token, word: &str) -> Result<Arc<str>, ParseError> {
    if word.contains('_') {
        return Err(tok.error(format!(
            "'{word}' is not an attribute name: expected only letters and digits"
        )));
    }
    Ok(Arc::from(word.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Expr {
        match parse(text) {
            Ok(e) => e,
            Err(e) => panic!("{text:?} should parse, got {e}"),
        }
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(e) => panic!("{text:?} should not parse, got {e:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn int(i: i32) -> Expr {
        Expr::Literal(Value::Integer(i))
    }
    fn s(v: &str) -> Expr {
        Expr::Literal(Value::String(Arc::from(v)))
    }
    fn b(v: bool) -> Expr {
        Expr::Literal(Value::Boolean(v))
    }
    fn attr(n: &str) -> Expr {
        Expr::Attribute(Arc::from(n))
    }
    fn bin(op: BinaryOp, l: Expr, r: Expr) -> Expr {
        Expr::Binary(op, Box::new(l), Box::new(r))
    }
    fn not(e: Expr) -> Expr {
        Expr::Unary(UnaryOp::Not, Box::new(e))
    }
    fn neg(e: Expr) -> Expr {
        Expr::Unary(UnaryOp::Minus, Box::new(e))
    }
    fn call(n: &str, args: Vec<Expr>) -> Expr {
        Expr::Call {
            name: Arc::from(n),
            args,
        }
    }
    fn lit(t: &str) -> LikePart {
        LikePart::Literal(t.to_string())
    }
    fn like_parts(text: &str) -> Vec<LikePart> {
        match ok(text) {
            Expr::Like { pattern, .. } => pattern,
            other => panic!("not a LIKE: {other:?}"),
        }
    }

    #[test]
    fn literals() {
        assert_eq!(ok("TRUE"), b(true));
        assert_eq!(ok("false"), b(false));
        assert_eq!(ok("tRuE"), b(true));
        assert_eq!(ok("0"), int(0));
        assert_eq!(ok("  123 "), int(123));
        assert_eq!(ok("2147483647"), int(i32::MAX));
        assert_eq!(ok("-2147483648"), int(i32::MIN));
        assert_eq!(ok("+7"), int(7));
        assert_eq!(ok("007"), int(7));
        assert_eq!(ok("'abc'"), s("abc"));
        assert_eq!(ok("\"AbC\""), s("AbC"));
        assert_eq!(ok("''"), s(""));
        assert_eq!(ok("'aBcD'"), s("aBcD"));
    }

    #[test]
    fn string_escapes() {
        // The spec's test suite: literals.yaml.
        assert_eq!(ok(r#"'a"b\'c'"#), s("a\"b'c"));
        assert_eq!(ok(r#""a'b\"c""#), s("a'b\"c"));
        // Doubled quotes, as the lexer grammar allows.
        assert_eq!(ok("'it''s'"), s("it's"));
        assert_eq!(ok(r#""say ""hi""""#), s("say \"hi\""));
        assert_eq!(ok(r"'a\\b'"), s(r"a\b"));
        assert_eq!(ok(r"'a\\'"), s(r"a\"));
        // Unknown escapes are kept as written (like_expression.yaml).
        assert_eq!(ok(r"'ab\c'"), s(r"ab\c"));
        assert_eq!(ok(r"'50\%'"), s(r"50\%"));
        assert_eq!(ok("'line\nbreak'"), s("line\nbreak"));
        assert_eq!(ok("'héllo ✓'"), s("héllo ✓"));
    }

    #[test]
    fn attributes_and_keywords() {
        assert_eq!(ok("subject"), attr("subject"));
        assert_eq!(ok("SOURCE"), attr("source"));
        assert_eq!(ok("myExt1"), attr("myext1"));
        assert_eq!(ok("1abc"), attr("1abc"));
        assert_eq!(ok("a and b"), bin(BinaryOp::And, attr("a"), attr("b")));
        assert_eq!(ok("a AnD b"), bin(BinaryOp::And, attr("a"), attr("b")));
        assert_eq!(ok("a or b"), bin(BinaryOp::Or, attr("a"), attr("b")));
        assert_eq!(ok("a xOr b"), bin(BinaryOp::Xor, attr("a"), attr("b")));
        assert_eq!(ok("not a"), not(attr("a")));
        assert_eq!(ok("exists Id"), Expr::Exists(Arc::from("id")));
        assert_eq!(
            ok("x not like 'a' "),
            Expr::Like {
                value: Box::new(attr("x")),
                pattern: vec![lit("a")],
                negated: true
            }
        );
        assert_eq!(
            ok("x nOt iN (1)"),
            Expr::In {
                value: Box::new(attr("x")),
                list: vec![int(1)],
                negated: true
            }
        );
        // Keywords as prefixes of names are names.
        assert_eq!(ok("android"), attr("android"));
        assert_eq!(ok("notx"), attr("notx"));
    }

    #[test]
    fn operators() {
        use BinaryOp::*;
        for (text, op) in [
            ("a = b", Equal),
            ("a != b", NotEqual),
            ("a <> b", NotEqual),
            ("a < b", Less),
            ("a <= b", LessOrEqual),
            ("a > b", Greater),
            ("a >= b", GreaterOrEqual),
            ("a + b", Add),
            ("a - b", Subtract),
            ("a * b", Multiply),
            ("a / b", Divide),
            ("a % b", Modulo),
        ] {
            assert_eq!(ok(text), bin(op, attr("a"), attr("b")), "{text}");
        }
        // No spaces needed.
        assert_eq!(ok("a>=1"), bin(GreaterOrEqual, attr("a"), int(1)));
        assert_eq!(ok("a-1"), bin(Subtract, attr("a"), int(1)));
    }

    #[test]
    fn precedence() {
        use BinaryOp::*;
        assert_eq!(
            ok("1 + 2 * 3"),
            bin(Add, int(1), bin(Multiply, int(2), int(3)))
        );
        assert_eq!(
            ok("4 * 2 + 4 / 2"),
            bin(
                Add,
                bin(Multiply, int(4), int(2)),
                bin(Divide, int(4), int(2))
            )
        );
        assert_eq!(
            ok("a + 1 = b * 2"),
            bin(
                Equal,
                bin(Add, attr("a"), int(1)),
                bin(Multiply, attr("b"), int(2))
            )
        );
        assert_eq!(
            ok("a = 1 AND b = 2"),
            bin(
                And,
                bin(Equal, attr("a"), int(1)),
                bin(Equal, attr("b"), int(2))
            )
        );
        // Prefix operators bind tighter than every binary operator.
        assert_eq!(ok("NOT a = b"), bin(Equal, not(attr("a")), attr("b")));
        assert_eq!(ok("NOT a AND b"), bin(And, not(attr("a")), attr("b")));
        assert_eq!(ok("-x"), neg(attr("x")));
        assert_eq!(ok("-x * 2"), bin(Multiply, neg(attr("x")), int(2)));
        assert_eq!(ok("--10"), neg(int(-10)));
        assert_eq!(ok("-'10'"), neg(s("10")));
        assert_eq!(ok("- (1)"), neg(int(1)));
        assert_eq!(ok("NOT -x"), not(neg(attr("x"))));
        assert_eq!(ok("NOT NOT TRUE"), not(not(b(true))));
        assert_eq!(ok("-4 + -1"), bin(Add, int(-4), int(-1)));
        // LIKE and IN bind tighter than the arithmetic operators ...
        assert_eq!(
            ok("a + b IN (1)"),
            bin(
                Add,
                attr("a"),
                Expr::In {
                    value: Box::new(attr("b")),
                    list: vec![int(1)],
                    negated: false
                }
            )
        );
        assert_eq!(
            ok("a = b LIKE 'x'"),
            bin(
                Equal,
                attr("a"),
                Expr::Like {
                    value: Box::new(attr("b")),
                    pattern: vec![lit("x")],
                    negated: false
                }
            )
        );
        // ... but looser than the prefix operators.
        assert_eq!(
            ok("NOT a LIKE 'x'"),
            Expr::Like {
                value: Box::new(not(attr("a"))),
                pattern: vec![lit("x")],
                negated: false
            }
        );
        assert_eq!(
            ok("-a IN (1)"),
            Expr::In {
                value: Box::new(neg(attr("a"))),
                list: vec![int(1)],
                negated: false
            }
        );
        // LIKE binds tighter than IN; both chain left to right.
        assert_eq!(
            ok("a LIKE 'x' IN (TRUE)"),
            Expr::In {
                value: Box::new(Expr::Like {
                    value: Box::new(attr("a")),
                    pattern: vec![lit("x")],
                    negated: false
                }),
                list: vec![b(true)],
                negated: false
            }
        );
        assert_eq!(
            ok("a IN (b) = c"),
            bin(
                Equal,
                Expr::In {
                    value: Box::new(attr("a")),
                    list: vec![attr("b")],
                    negated: false
                },
                attr("c")
            )
        );
        // Function calls and EXISTS are primaries.
        assert_eq!(ok("NOT EXISTS time"), not(Expr::Exists(Arc::from("time"))));
        assert_eq!(
            ok("-ABS(x) * 2"),
            bin(Multiply, neg(call("ABS", vec![attr("x")])), int(2))
        );
    }

    #[test]
    fn associativity() {
        use BinaryOp::*;
        assert_eq!(
            ok("1 - 2 - 3"),
            bin(Subtract, bin(Subtract, int(1), int(2)), int(3))
        );
        assert_eq!(
            ok("8 / 4 * 2 % 3"),
            bin(
                Modulo,
                bin(Multiply, bin(Divide, int(8), int(4)), int(2)),
                int(3)
            )
        );
        assert_eq!(
            ok("a = b = c"),
            bin(Equal, bin(Equal, attr("a"), attr("b")), attr("c"))
        );
        // AND, OR and XOR share one level, right-associative (<assoc=right>).
        assert_eq!(
            ok("a OR b AND c"),
            bin(Or, attr("a"), bin(And, attr("b"), attr("c")))
        );
        assert_eq!(
            ok("a AND b OR c"),
            bin(And, attr("a"), bin(Or, attr("b"), attr("c")))
        );
        assert_eq!(
            ok("a XOR b XOR c"),
            bin(Xor, attr("a"), bin(Xor, attr("b"), attr("c")))
        );
    }

    #[test]
    fn parentheses() {
        use BinaryOp::*;
        assert_eq!(ok("(TRUE)"), b(true));
        assert_eq!(ok("((((1))))"), int(1));
        assert_eq!(
            ok("(1 + 2) * 3"),
            bin(Multiply, bin(Add, int(1), int(2)), int(3))
        );
        assert_eq!(
            ok("4 * (2 + 3)"),
            bin(Multiply, int(4), bin(Add, int(2), int(3)))
        );
        assert_eq!(
            ok("(a OR b) AND c"),
            bin(And, bin(Or, attr("a"), attr("b")), attr("c"))
        );
        assert_eq!(ok("NOT (a = b)"), not(bin(Equal, attr("a"), attr("b"))));
    }

    #[test]
    fn like_patterns() {
        assert_eq!(like_parts("x LIKE 'abc'"), vec![lit("abc")]);
        assert_eq!(like_parts("x LIKE ''"), vec![]);
        assert_eq!(
            like_parts("x LIKE 'a%b_c'"),
            vec![
                lit("a"),
                LikePart::AnyRun,
                lit("b"),
                LikePart::AnyChar,
                lit("c")
            ]
        );
        assert_eq!(
            like_parts("x LIKE '%%_'"),
            vec![LikePart::AnyRun, LikePart::AnyChar]
        );
        assert_eq!(like_parts(r"x LIKE 'a\%b\_c'"), vec![lit("a%b_c")]);
        assert_eq!(
            like_parts(r"x LIKE 'a\\%'"),
            vec![lit(r"a\"), LikePart::AnyRun]
        );
        assert_eq!(like_parts(r"x LIKE 'ab\c'"), vec![lit(r"ab\c")]);
        assert_eq!(
            like_parts(r"x LIKE 'it''s%'"),
            vec![lit("it's"), LikePart::AnyRun]
        );
        assert_eq!(
            like_parts(r#"x LIKE "\"q\"_""#),
            vec![lit("\"q\""), LikePart::AnyChar]
        );
        // like_expression.yaml
        assert_eq!(
            like_parts(r"myext LIKE 'abc%123\%456\_d_f'"),
            vec![
                lit("abc"),
                LikePart::AnyRun,
                lit("123%456_d"),
                LikePart::AnyChar,
                lit("f")
            ]
        );
        assert_eq!(
            ok("234 like '23_'"),
            Expr::Like {
                value: Box::new(int(234)),
                pattern: vec![lit("23"), LikePart::AnyChar],
                negated: false
            }
        );
    }

    #[test]
    fn in_lists() {
        assert_eq!(
            ok("123 IN (1, 2, 'x', a, 1 + 1)"),
            Expr::In {
                value: Box::new(int(123)),
                list: vec![
                    int(1),
                    int(2),
                    s("x"),
                    attr("a"),
                    bin(BinaryOp::Add, int(1), int(1))
                ],
                negated: false
            }
        );
        assert_eq!(
            ok("TRUE NOT IN (FALSE)"),
            Expr::In {
                value: Box::new(b(true)),
                list: vec![b(false)],
                negated: true
            }
        );
    }

    #[test]
    fn exists_and_calls() {
        assert_eq!(ok("EXISTS subject"), Expr::Exists(Arc::from("subject")));
        assert_eq!(
            ok("EXISTS a AND EXISTS b"),
            bin(
                BinaryOp::And,
                Expr::Exists(Arc::from("a")),
                Expr::Exists(Arc::from("b"))
            )
        );
        assert_eq!(ok("NOW()"), call("NOW", vec![]));
        assert_eq!(ok("now ( )"), call("NOW", vec![]));
        assert_eq!(ok("int(hop)"), call("INT", vec![attr("hop")]));
        assert_eq!(
            ok("Substring('abc', 1, -1)"),
            call("SUBSTRING", vec![s("abc"), int(1), int(-1)])
        );
        assert_eq!(
            ok("my_func(upper(a), 1 = 1)"),
            call(
                "MY_FUNC",
                vec![
                    call("UPPER", vec![attr("a")]),
                    bin(BinaryOp::Equal, int(1), int(1))
                ]
            )
        );
    }

    #[test]
    fn spec_examples() {
        use BinaryOp::*;
        let expected = bin(
            And,
            bin(
                Less,
                call("INT", vec![attr("hop")]),
                call("INT", vec![attr("ttl")]),
            ),
            bin(Less, call("INT", vec![attr("hop")]), int(1000)),
        );
        assert_eq!(ok("int(hop) < int(ttl) and int(hop) < 1000"), expected);
        assert_eq!(ok("INT(hop) < INT(ttl) AND INT(hop) < 1000"), expected);
        for text in [
            "hop < ttl",
            "sequence = 5",
            "firstname = 'Francesco' OR subject = 'Francesco'",
            "(firstname = 'Francesco' AND lastname = 'Guardiani') OR subject = 'Francesco Guardiani'",
            "EXISTS subject",
            "true AND (missing = \"\")",
            "missing * 5",
            "1 / missing",
            "source LIKE 'https://%'",
            "type like '%.error'",
            "(id = 'myId' AND type LIKE '%.success') OR (id = 'notmyId' AND source LIKE 'http://%' AND type LIKE '%.warning')",
            "EXISTS specversion AND EXISTS id AND EXISTS type AND EXISTS SOURCE",
            "'abc' IN ('abc', \"bcd\")",
            "false and (1 != 1 / 0)",
            "-TRUE",
            "--'10'",
        ] {
            ok(text);
        }
    }

    #[test]
    fn errors() {
        for (text, expected) in [
            (
                "'abc",
                "line 1, column 1: unterminated string literal: expected a closing ', found end of input",
            ),
            (
                "a = \"x\\\"",
                "line 1, column 5: unterminated string literal: expected a closing \", found end of input",
            ),
            (
                "a AND",
                "line 1, column 6: expected an expression after AND, found end of input",
            ),
            (
                "1 +\n  * 2",
                "line 2, column 3: expected an expression after '+', found '*'",
            ),
            (
                "",
                "line 1, column 1: expected an expression at the start of the input, found end of input",
            ),
            ("a # b", "line 1, column 3: unexpected character '#'"),
            (
                "a ! b",
                "line 1, column 3: unexpected character '!': expected '!='",
            ),
            ("é", "line 1, column 1: unexpected character 'é'"),
            ("'é' = x ; ", "line 1, column 9: unexpected character ';'"),
            (
                "(a = b",
                "line 1, column 7: expected ')' after the expression to close the '(' at line 1, column 1, found end of input",
            ),
            ("a = b)", "line 1, column 6: found ')' with no matching '('"),
            (
                "ABC(",
                "line 1, column 5: expected an expression in the arguments of ABC, found end of input",
            ),
            (
                "f(1 2)",
                "line 1, column 5: expected ',' or ')' to close the '(' at line 1, column 2, found integer 2",
            ),
            (
                "f(1,)",
                "line 1, column 5: expected an expression after ',', found ')'",
            ),
            (
                "2147483648",
                "line 1, column 1: integer literal 2147483648 is out of range: must be between -2147483648 and 2147483647",
            ),
            (
                "1 + -2147483649",
                "line 1, column 5: integer literal -2147483649 is out of range: must be between -2147483648 and 2147483647",
            ),
            (
                "99999999999999999999999",
                "line 1, column 1: integer literal 99999999999999999999999 is out of range: must be between -2147483648 and 2147483647",
            ),
            (
                "a b",
                "line 1, column 3: expected an operator or end of input, found name 'b'",
            ),
            (
                "TRUE FALSE",
                "line 1, column 6: expected an operator or end of input, found FALSE",
            ),
            (
                "x LIKE 123",
                "line 1, column 8: expected a string literal pattern after LIKE, found integer 123",
            ),
            (
                "x NOT LIKE y",
                "line 1, column 12: expected a string literal pattern after NOT LIKE, found name 'y'",
            ),
            (
                "x NOT 1",
                "line 1, column 7: expected LIKE or IN after NOT, found integer 1",
            ),
            (
                "x IN ()",
                "line 1, column 7: expected an expression in the IN list (it cannot be empty), found ')'",
            ),
            (
                "x IN 1",
                "line 1, column 6: expected '(' after IN, found integer 1",
            ),
            (
                "x IN (1, 2",
                "line 1, column 11: expected ',' or ')' to close the '(' at line 1, column 6, found end of input",
            ),
            (
                "EXISTS 'a'",
                "line 1, column 8: expected an attribute name after EXISTS, found string 'a'",
            ),
            (
                "EXISTS TRUE",
                "line 1, column 8: expected an attribute name after EXISTS, found TRUE",
            ),
            (
                "my_attr = 1",
                "line 1, column 9: expected '(' after function name MY_ATTR, found '=' (attribute names cannot contain '_')",
            ),
            (
                "abc1(x)",
                "line 1, column 1: 'abc1' is not a function name: expected a letter followed by letters and '_'",
            ),
            (
                "NOT",
                "line 1, column 4: expected an expression after NOT, found end of input",
            ),
            (
                "a = -",
                "line 1, column 6: expected an expression after '-', found end of input",
            ),
            (
                "+a",
                "line 1, column 1: expected an expression at the start of the input, found '+'",
            ),
        ] {
            assert_eq!(err(text), expected, "{text:?}");
        }
    }

    #[test]
    fn error_fields() {
        let e = parse("a AND\n\tb OR").err();
        assert_eq!(
            e,
            Some(ParseError {
                line: 2,
                column: 6,
                message: "expected an expression after OR, found end of input".into()
            })
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(err(&deep).contains("nested more than"));
        let nots = format!("{}TRUE", "NOT ".repeat(100_000));
        assert!(err(&nots).contains("nested more than"));
        let minus = format!("{}1", "-".repeat(100_000));
        assert!(err(&minus).contains("nested more than"));
        // Chains count as levels: each operator deepens the tree that
        // evaluation walks recursively (the property tests found that
        // `a = a = ... = 1` with 3000 operators overflowed the stack when
        // evaluated). Chains up to the limit are fine.
        let chain = vec!["1"; 200].join(" + ");
        ok(&chain);
        let chain = vec!["a = 1"; 200].join(" AND ");
        ok(&chain);
        let chain = vec!["a"; 10_000].join(" = ");
        assert!(err(&chain).contains("nested more than"));
        let chain = vec!["a = 1"; 10_000].join(" OR ");
        assert!(err(&chain).contains("write a long OR"));
        let ok_depth = format!("{}1{}", "(".repeat(50), ")".repeat(50));
        assert_eq!(ok(&ok_depth), int(1));
    }
}
