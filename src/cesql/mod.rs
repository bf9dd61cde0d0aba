//! CloudEvents SQL Expression Language v1 (cesql/spec.md): parsed once when a
//! Trigger loads, evaluated against every event.
//!
//! - [`ast`]: the expression tree both halves share.
//! - `parser`: lexing and parsing with the spec's precedence; errors give
//!   line, column and what was expected.
//! - `eval`: types, casts, operators, functions and the spec's error rules.
//! - `program`: what a Trigger holds; common filters compiled to a small
//!   tree of typed tests (an enum), the rest interpreted.

pub(crate) mod ast;
pub(crate) mod eval;
pub mod parser;
pub mod program;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod spec_rules;
