//! ISO-8601 durations as Knative's delivery fields take them
//! (`backoffDelay`, `timeout`, `retryAfterMax`).
//!
//! Knative checks them with `period.Parse` of github.com/rickb777/date and
//! turns them into time with `Period.Duration()`. This follows both:
//!
//! - `P`, then date units in the order years, months, weeks, days, then `T`
//!   and time units in the order hours, minutes, seconds; each number may
//!   have a fraction (`PT0.5S`, `P0,5D`);
//! - at least one unit with its number: `P` and `PT` are refused, as
//!   Knative refuses them ("expected 'Y', 'M', 'W', 'D', 'H', 'M', or 'S'
//!   designator");
//! - years and months are accepted, with Knative's lengths: a year is
//!   365.2425 days and a month a twelfth of that (30.436875 days), a week 7
//!   days and a day 24 hours, so the same manifest waits as long here as
//!   there;
//! - a sign is refused: no delivery duration means anything below zero
//!   (Knative itself refuses a negative `retryAfterMax`).

use std::time::Duration;

/// How long one unit lasts, in whole seconds (Knative's year and month are
/// whole numbers of seconds: 31 556 952 and 2 629 746).
const YEAR_SECS: u64 = 31_556_952;
const MONTH_SECS: u64 = YEAR_SECS / 12;
const WEEK_SECS: u64 = 7 * DAY_SECS;
const DAY_SECS: u64 = 86_400;

/// One designator: its letter and length.
struct Unit {
    letter: char,
    secs: u64,
}

const DATE_UNITS: [Unit; 4] = [
    Unit {
        letter: 'Y',
        secs: YEAR_SECS,
    },
    Unit {
        letter: 'M',
        secs: MONTH_SECS,
    },
    Unit {
        letter: 'W',
        secs: WEEK_SECS,
    },
    Unit {
        letter: 'D',
        secs: DAY_SECS,
    },
];

const TIME_UNITS: [Unit; 3] = [
    Unit {
        letter: 'H',
        secs: 3600,
    },
    Unit {
        letter: 'M',
        secs: 60,
    },
    Unit {
        letter: 'S',
        secs: 1,
    },
];

/// What a user is shown with every refusal, so that they can write one.
const EXAMPLE: &str = "write an ISO-8601 duration such as PT0.5S, PT1M30S or P1D";

/// Parses an ISO-8601 duration (`PT0.2S`, `PT1M30S`, `P1D`), as Knative's
/// delivery fields take them. The error says what is wrong with `text`; the
/// caller adds the field.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let refuse = |why: &str| format!("'{text}' {why}; {EXAMPLE}");
    if text.starts_with(['-', '+']) {
        return Err(refuse("has a sign: a delivery duration is never negative"));
    }
    let Some(rest) = text.strip_prefix('P') else {
        return Err(refuse("does not start with P"));
    };
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (rest, None),
    };
    let mut nanos = 0u128;
    let mut values = 0;
    for (part, units) in [
        (date, &DATE_UNITS[..]),
        (time.unwrap_or(""), &TIME_UNITS[..]),
    ] {
        let (sum, count) = sum_units(part, units).map_err(|why| refuse(&why))?;
        nanos += sum;
        values += count;
    }
    if time.is_some_and(str::is_empty) {
        return Err(refuse("has a T with no hours, minutes or seconds after it"));
    }
    if values == 0 {
        return Err(refuse("has no value"));
    }
    to_duration(nanos).ok_or_else(|| refuse("is too long"))
}

/// The nanoseconds of one part (date or time) and how many values it had.
fn sum_units(part: &str, units: &[Unit]) -> Result<(u128, usize), String> {
    let mut rest = part;
    let mut next_unit = 0;
    let mut nanos = 0u128;
    let mut count = 0;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
            .ok_or_else(|| format!("has the number '{rest}' without a unit"))?;
        let (number, after) = rest.split_at(end);
        let letter = after.chars().next().unwrap_or_default();
        let position = units[next_unit..]
            .iter()
            .position(|u| u.letter == letter)
            .ok_or_else(|| unit_error(letter, units))?;
        let unit = &units[next_unit + position];
        nanos += scaled(number, unit.secs)?;
        count += 1;
        next_unit += position + 1;
        rest = &after[letter.len_utf8()..];
    }
    Ok((nanos, count))
}

/// Why `letter` is not allowed where it is.
fn unit_error(letter: char, units: &[Unit]) -> String {
    let letters: String = units.iter().map(|u| u.letter).collect();
    if units.iter().any(|u| u.letter == letter) {
        format!("has '{letter}' twice or out of the order {letters}")
    } else {
        format!("has '{letter}' where one of {letters} belongs")
    }
}

/// `number` units of `secs` seconds, in nanoseconds; `number` may have a
/// fraction after '.' or ','.
fn scaled(number: &str, secs: u64) -> Result<u128, String> {
    let (whole, fraction) = match number.split_once(['.', ',']) {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) {
        return Err(format!("has '{number}', which is not a number"));
    }
    // Nanoseconds are the finest a Duration holds: further digits cannot
    // change it.
    let fraction = &fraction[..fraction.len().min(9)];
    let whole: u128 = whole
        .parse()
        .map_err(|_| format!("has '{number}', which is too large"))?;
    let unit_nanos = u128::from(secs) * 1_000_000_000;
    let fraction_nanos = match fraction.parse::<u128>() {
        Ok(value) => value * unit_nanos / 10u128.pow(fraction.len() as u32),
        Err(_) => 0,
    };
    whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(|| format!("has '{number}', which is too large"))
}

fn to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let subsec = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, subsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_as_knative_accepts_them() {
        let secs = Duration::from_secs;
        for (text, want) in [
            ("PT0.2S", Duration::from_millis(200)),
            ("PT1M30S", secs(90)),
            ("PT2S", secs(2)),
            ("PT0S", secs(0)),
            ("PT1H", secs(3600)),
            ("P1D", secs(86_400)),
            ("P1W", secs(7 * 86_400)),
            ("P1W2D", secs(9 * 86_400)),
            ("P1DT12H", secs(86_400 + 12 * 3600)),
            ("P0,5D", secs(43_200)),
            // Knative's lengths of the calendar units.
            ("P1Y", secs(31_556_952)),
            ("P1M", secs(2_629_746)),
            ("PT1.000000001S", Duration::new(1, 1)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refused_with_what_is_wrong() {
        for (text, why) in [
            ("P", "'P' has no value"),
            (
                "PT",
                "'PT' has a T with no hours, minutes or seconds after it",
            ),
            ("P1DT", "'P1DT' has a T with no hours"),
            ("", "'' does not start with P"),
            ("10s", "'10s' does not start with P"),
            ("-PT1S", "'-PT1S' has a sign"),
            ("PT1", "'PT1' has the number '1' without a unit"),
            ("P1S", "'P1S' has 'S' where one of YMWD belongs"),
            ("PT1D", "'PT1D' has 'D' where one of HMS belongs"),
            ("P1D1Y", "'P1D1Y' has 'Y' twice or out of the order YMWD"),
            ("PT1S1S", "'PT1S1S' has 'S' twice or out of the order HMS"),
            ("PT.5S", "'PT.5S' has '.5', which is not a number"),
            ("PT1.2.3S", "'PT1.2.3S' has '1.2.3', which is not a number"),
            ("P99999999999999999999999Y", "is too large"),
            ("P999999999999Y", "is too long"),
        ] {
            let error = parse_duration(text).expect_err(text);
            assert!(error.contains(why), "{text}: {error}");
            assert!(error.ends_with(EXAMPLE), "{text}: {error}");
        }
    }
}
