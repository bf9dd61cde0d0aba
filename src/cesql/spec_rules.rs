//! The CESQL specification's rules as table tests, one test per rule, each
//! case an expression (through the real parser), the event it runs on, and
//! the value and error kind the spec gives. The cases follow the spec's text
//! and the situations its conformance suite (cesql/cesql_tck) covers;
//! `scripts/cesql_tck.py` runs that suite itself against the binary.

use std::sync::Arc;

use super::ast::Value;
use super::eval::evaluate;
use super::parser::parse;
use crate::cloudevent::{AttributeType, Event};

/// An event with the required attributes and `extra`, typed as given (a
/// structured-mode JSON event can carry Booleans and Integers).
fn event(extra: &[(&str, &str, AttributeType)]) -> Event {
    let mut attributes: Vec<(String, String, AttributeType)> = [
        ("specversion", "1.0"),
        ("id", "myId"),
        ("source", "http://localhost/source"),
        ("type", "myType"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string(), AttributeType::String))
    .collect();
    attributes.extend(
        extra
            .iter()
            .map(|(n, v, t)| (n.to_string(), v.to_string(), *t)),
    );
    Event::typed(attributes, None).expect("a valid test event")
}

fn b(v: bool) -> Value {
    Value::Boolean(v)
}
fn i(v: i32) -> Value {
    Value::Integer(v)
}
fn s(v: &str) -> Value {
    Value::String(Arc::from(v))
}

/// Checks every `(expression, value, error kind)` on `on`.
fn check(on: &Event, cases: &[(&str, Value, Option<&str>)]) {
    for (expression, value, error) in cases {
        let parsed = parse(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
        let result = evaluate(&parsed, on);
        assert_eq!(
            (
                &result.value,
                result.error.as_ref().map(|e| e.kind.as_str())
            ),
            (value, *error),
            "{expression}"
        );
    }
}

#[test]
fn an_operand_that_raised_an_error_makes_the_enclosing_operator_yield_its_zero_value_3_3() {
    check(
        &event(&[]),
        &[
            // A MathError deeper down: the comparison is false, not `1 != 0`.
            ("true AND (1 != 1 / 0)", b(false), Some("math")),
            ("false OR (1 != 1 / 0)", b(false), Some("math")),
            ("(5 % 0) = 0", b(false), Some("math")),
            ("(1 / 0) + 7", i(0), Some("math")),
            ("-(1 / 0)", i(0), Some("math")),
            ("NOT ((1 / 0) = 1)", b(false), Some("math")),
            ("(1 / 0) IN (0, 1)", b(false), Some("math")),
            ("1 IN (1 / 0, 1)", b(false), Some("math")),
            ("(1 / 0) LIKE '0'", b(false), Some("math")),
            ("LENGTH(CONCAT('a', 1 / 0))", i(0), Some("math")),
            ("ABS(-2147483648) = 2147483647", b(false), Some("math")),
            // A CastError deeper down.
            ("INT('abc') = 0", b(false), Some("cast")),
            ("true AND (INT('abc') < 1)", b(false), Some("cast")),
            ("UPPER(BOOL('maybe'))", s(""), Some("cast")),
            // A FunctionEvaluationError deeper down.
            (
                "LEFT('abc', -1) = 'abc'",
                b(false),
                Some("functionEvaluation"),
            ),
            // A function that does not exist returns false.
            ("NOPE(1) = false", b(false), Some("missingFunction")),
        ],
    );
}

#[test]
fn a_missing_attribute_makes_its_subexpression_yield_the_zero_value_of_its_return_type_3_2() {
    check(
        &event(&[]),
        &[
            // The spec's own examples.
            (
                "true AND (missingattribute = \"\")",
                b(false),
                Some("missingAttribute"),
            ),
            ("missingattribute * 5", i(0), Some("missingAttribute")),
            // Not a MathError for the division: the missing attribute wins.
            ("1 / missingattribute", i(0), Some("missingAttribute")),
            ("missing % 0", i(0), Some("missingAttribute")),
            ("missing = 2", b(false), Some("missingAttribute")),
            ("missing != 2", b(false), Some("missingAttribute")),
            ("missing <= 2", b(false), Some("missingAttribute")),
            ("NOT missing", b(false), Some("missingAttribute")),
            ("-missing", i(0), Some("missingAttribute")),
            ("missing LIKE '%'", b(false), Some("missingAttribute")),
            ("missing NOT IN ('a')", b(false), Some("missingAttribute")),
            ("UPPER(missing)", s(""), Some("missingAttribute")),
            ("CONCAT('a', missing)", s(""), Some("missingAttribute")),
            // A bare reference: the return type cannot be known, so Boolean.
            ("subject", b(false), Some("missingAttribute")),
        ],
    );
}

#[test]
fn a_failed_implicit_cast_raises_a_cast_error_and_the_operator_goes_on_with_its_zero_value_3_7() {
    check(
        &event(&[]),
        &[
            // The cast of 'maybe' gives false; NOT false is true.
            ("NOT 'maybe'", b(true), Some("cast")),
            // A logical operator does not read an Integer as a Boolean.
            ("NOT 10", b(true), Some("cast")),
            ("true AND 'maybe'", b(false), Some("cast")),
            ("'abc' < 1", b(true), Some("cast")),
            ("-'abc'", i(0), Some("cast")),
            ("'x' + 1", i(1), Some("cast")),
            // Successful casts raise nothing.
            ("NOT 'TRUE'", b(false), None),
            ("-TRUE", i(-1), None),
            ("--'10'", i(10), None),
            ("'TRUE' = true", b(true), None),
            ("true = 'TRUE'", b(false), None),
            ("BOOL(1)", b(true), None),
        ],
    );
}

#[test]
fn and_or_are_short_circuit_so_an_unevaluated_operand_raises_nothing_3_4_2() {
    check(
        &event(&[]),
        &[
            ("false AND (1 != 1 / 0)", b(false), None),
            ("true OR (1 != 1 / 0)", b(true), None),
            ("false AND missing", b(false), None),
            ("true OR missing", b(true), None),
            // XOR has no short-circuit.
            ("true XOR missing", b(false), Some("missingAttribute")),
        ],
    );
}

#[test]
fn functions_return_a_value_of_their_type_with_their_own_error_3_5_3() {
    check(
        &event(&[]),
        &[
            ("ABS(-2147483648)", i(2147483647), Some("math")),
            ("LEFT('abc', -1)", s("abc"), Some("functionEvaluation")),
            ("RIGHT('abc', -1)", s("abc"), Some("functionEvaluation")),
            ("SUBSTRING('abcdef', 10)", s(""), Some("functionEvaluation")),
            (
                "SUBSTRING('abcdef', 1, -1)",
                s(""),
                Some("functionEvaluation"),
            ),
            ("INT('ABC')", i(0), Some("cast")),
            ("BOOL('ABC')", b(false), Some("cast")),
            ("CONCAT_WS()", b(false), Some("missingFunction")),
        ],
    );
}

#[test]
fn extension_values_keep_their_cloudevents_type_and_only_other_values_become_strings_3_2() {
    use AttributeType::{Boolean, Integer, String};
    let on = event(&[
        ("mybool", "true", Boolean),
        ("myint", "10", Integer),
        ("myext", "my extension", String),
        ("textbool", "true", String),
        ("textint", "10", String),
    ]);
    check(
        &on,
        &[
            ("mybool", b(true), None),
            ("myint", i(10), None),
            ("myext", s("my extension"), None),
            // Arrived as strings (binary mode): they stay Strings.
            ("textbool", s("true"), None),
            ("textint", s("10"), None),
            // URI and Timestamp attributes are Strings.
            ("source", s("http://localhost/source"), None),
            // Typed values take part in operators without a cast...
            ("myint + 1", i(11), None),
            ("NOT mybool", b(false), None),
            ("mybool AND myint > 5", b(true), None),
            ("myint = 10", b(true), None),
            // ...and are cast where an operator needs another type.
            ("myint = '10'", b(true), None),
            ("mybool = 'true'", b(true), None),
            ("'TRUE' = mybool", b(true), None),
            ("mybool IN ('TRUE')", b(true), None),
            ("myint IN ('x', '10')", b(true), Some("cast")),
            ("myint LIKE '1%'", b(true), None),
            // A text attribute in a logical operator is cast; an Integer is not.
            ("NOT textbool", b(false), None),
            ("NOT myint", b(true), Some("cast")),
        ],
    );
}
