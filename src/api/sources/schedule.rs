//! A PingSource schedule: a standard 5-field cron expression evaluated in an
//! IANA time zone.
//!
//! Fields are minute, hour, day-of-month, month and day-of-week, with `*`,
//! lists (`1,15`), ranges (`9-17`), steps (`*/15`, `0-30/10`), month and day
//! names (`JAN`, `MON-FRI`) and the macros `@yearly @annually @monthly
//! @weekly @daily @midnight @hourly`. When both day-of-month and day-of-week
//! are restricted a day matches if either does (Vixie cron).
//!
//! Each field is checked here first so that an error names the field and the
//! part that is wrong; `croner` then computes the ticks. Daylight-saving
//! changes follow Vixie cron: a wall-clock time skipped by spring-forward
//! fires once at the first instant after the gap, and a time repeated by
//! fall-back fires once, at its first occurrence.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule. Build it with [`Schedule::parse`].
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    cron: Cron,
    zone: Tz,
}

/// Why a schedule or time zone is rejected: the manifest field and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScheduleError {
    /// `spec.schedule` or `spec.timezone`.
    pub field: &'static str,
    pub reason: String,
}

const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

impl Schedule {
    /// Parses `expression` in `timezone` (UTC when `None`).
    pub(crate) fn parse(
        expression: &str,
        timezone: Option<&str>,
    ) -> Result<Schedule, ScheduleError> {
        let cron = parse_expression(expression).map_err(|reason| ScheduleError {
            field: "spec.schedule",
            reason,
        })?;
        let zone = match timezone {
            None => Tz::UTC,
            Some(name) => parse_timezone(name).map_err(|reason| ScheduleError {
                field: "spec.timezone",
                reason,
            })?,
        };
        Ok(Schedule { cron, zone })
    }

    /// The first tick strictly after `after`, or `None` if the expression
    /// never matches again (e.g. `0 0 30 2 *`).
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The latest tick at or before `at`, if any.
    pub(crate) fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.zone);
        let candidate = self
            .cron
            .find_previous_occurrence(&local, true)
            .ok()?
            .with_timezone(&Utc);
        // Searching backwards and forwards must agree on what a tick is
        // (daylight-saving gaps move a tick): keep the forward answer.
        let mut tick = self.next_after(candidate - chrono::Duration::seconds(1))?;
        while let Some(next) = self.next_after(tick) {
            if next > at {
                break;
            }
            tick = next;
        }
        (tick <= at).then_some(tick)
    }
}

/// Parses an IANA time zone name such as `Asia/Tokyo`.
pub(crate) fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("'{name}' is not an IANA time zone name such as Asia/Tokyo, Europe/London or UTC")
    })
}

/// Checks every field of a 5-field expression (or a macro) and parses it.
fn parse_expression(expression: &str) -> Result<Cron, String> {
    let trimmed = expression.trim();
    let expanded = if trimmed.starts_with('@') {
        MACROS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(trimmed))
            .map(|(_, expansion)| *expansion)
            .ok_or_else(|| {
                let names: Vec<&str> = MACROS.iter().map(|(n, _)| *n).collect();
                format!("'{trimmed}' is not a macro: use {}", names.join(", "))
            })?
    } else {
        trimmed
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "'{trimmed}' has {} fields; a schedule has 5: minute hour day-of-month month day-of-week (e.g. '*/5 * * * *')",
            fields.len()
        ));
    }
    for (index, (field, (name, min, max))) in fields.iter().zip(FIELDS).enumerate() {
        check_field(field, name, min, max)
            .map_err(|why| format!("field {} ({name}) '{field}' {why}", index + 1))?;
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    parser
        .parse(expanded)
        .map_err(|e| format!("'{trimmed}' is not a cron expression: {e}"))
}

/// Checks one field: a comma-separated list of `*`, `?` (day fields), `n`,
/// `a-b`, each optionally followed by `/step` (after `*` or a range).
fn check_field(field: &str, name: &str, min: u32, max: u32) -> Result<(), String> {
    for item in field.split(',') {
        if item.is_empty() {
            return Err("has an empty list item".to_owned());
        }
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            let n: u32 = step
                .parse()
                .map_err(|_| format!("has step '/{step}', which is not a number"))?;
            if n == 0 {
                return Err("has step /0: a step must be 1 or more".to_owned());
            }
            if n > max {
                return Err(format!("has step /{n}, larger than the range {min}-{max}"));
            }
        }
        let is_wildcard = base == "*" || (base == "?" && name.starts_with("day"));
        if is_wildcard {
            continue;
        }
        match base.split_once('-') {
            Some((low, high)) => {
                let low = value(low, name, min, max)?;
                let high = value(high, name, min, max)?;
                if low > high {
                    return Err(format!(
                        "has range {low}-{high} that runs backwards: write the lower value first"
                    ));
                }
            }
            None => {
                value(base, name, min, max)?;
                if step.is_some() {
                    return Err(format!(
                        "has a step after a single value '{base}': use */n or a range such as {base}-{max}/n"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// One value: a number in range, or a month / day name in those fields.
fn value(text: &str, name: &str, min: u32, max: u32) -> Result<u32, String> {
    let upper = text.to_ascii_uppercase();
    let named = match name {
        "month" => MONTHS
            .iter()
            .position(|m| *m == upper)
            .map(|i| i as u32 + 1),
        "day-of-week" => DAYS.iter().position(|d| *d == upper).map(|i| i as u32),
        _ => None,
    };
    if let Some(n) = named {
        return Ok(n);
    }
    let n: u32 = text.parse().map_err(|_| {
        let hint = match name {
            "month" => " (use 1-12 or JAN-DEC)",
            "day-of-week" => " (use 0-7 or SUN-SAT)",
            _ => "",
        };
        format!("has '{text}', which is not a number{hint}")
    })?;
    if n < min || n > max {
        return Err(format!("is out of range {min}-{max}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid test time")
    }

    fn next(expression: &str, tz: Option<&str>, after: DateTime<Utc>) -> DateTime<Utc> {
        Schedule::parse(expression, tz)
            .expect("valid schedule")
            .next_after(after)
            .expect("a next tick")
    }

    fn ticks(expression: &str, tz: Option<&str>, after: DateTime<Utc>, n: usize) -> Vec<String> {
        let schedule = Schedule::parse(expression, tz).expect("valid schedule");
        let mut out = Vec::new();
        let mut at = after;
        for _ in 0..n {
            at = schedule.next_after(at).expect("a next tick");
            out.push(at.to_rfc3339());
        }
        out
    }

    fn reason(expression: &str) -> String {
        Schedule::parse(expression, None)
            .expect_err("invalid")
            .reason
    }

    #[test]
    fn every_minute_is_strictly_after() {
        let t = utc(2026, 1, 5, 10, 0);
        assert_eq!(next("* * * * *", None, t), utc(2026, 1, 5, 10, 1));
        let mid = t + chrono::Duration::seconds(30);
        assert_eq!(next("* * * * *", None, mid), utc(2026, 1, 5, 10, 1));
    }

    #[test]
    fn lists_ranges_steps() {
        let t = utc(2026, 1, 5, 10, 7);
        assert_eq!(next("0,15,30,45 * * * *", None, t), utc(2026, 1, 5, 10, 15));
        assert_eq!(next("*/20 * * * *", None, t), utc(2026, 1, 5, 10, 20));
        assert_eq!(next("10-12 * * * *", None, t), utc(2026, 1, 5, 10, 10));
        assert_eq!(next("0-30/10 * * * *", None, t), utc(2026, 1, 5, 10, 10));
        assert_eq!(
            ticks("0-30/10 * * * *", None, t, 4),
            [
                "2026-01-05T10:10:00+00:00",
                "2026-01-05T10:20:00+00:00",
                "2026-01-05T10:30:00+00:00",
                "2026-01-05T11:00:00+00:00"
            ]
        );
        assert_eq!(next("0 9-17/4 * * *", None, t), utc(2026, 1, 5, 13, 0));
        assert_eq!(next("5 1,3 * * *", None, t), utc(2026, 1, 6, 1, 5));
    }

    #[test]
    fn names_for_months_and_days() {
        // 2026-01-05 is a Monday.
        let t = utc(2026, 1, 5, 10, 7);
        assert_eq!(next("0 9 * * MON-FRI", None, t), utc(2026, 1, 6, 9, 0));
        assert_eq!(next("0 9 * * sat,SUN", None, t), utc(2026, 1, 10, 9, 0));
        assert_eq!(next("0 0 1 MAR *", None, t), utc(2026, 3, 1, 0, 0));
        assert_eq!(next("0 0 1 jun-aug *", None, t), utc(2026, 6, 1, 0, 0));
        // 7 is Sunday too.
        assert_eq!(next("0 0 * * 7", None, t), utc(2026, 1, 11, 0, 0));
    }

    #[test]
    fn macros() {
        let t = utc(2026, 1, 5, 10, 7);
        assert_eq!(next("@hourly", None, t), utc(2026, 1, 5, 11, 0));
        assert_eq!(next("@daily", None, t), utc(2026, 1, 6, 0, 0));
        assert_eq!(next("@midnight", None, t), utc(2026, 1, 6, 0, 0));
        assert_eq!(next("@weekly", None, t), utc(2026, 1, 11, 0, 0));
        assert_eq!(next("@monthly", None, t), utc(2026, 2, 1, 0, 0));
        assert_eq!(next("@yearly", None, t), utc(2027, 1, 1, 0, 0));
        assert_eq!(next("@ANNUALLY", None, t), utc(2027, 1, 1, 0, 0));
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Vixie cron: the 13th OR any Friday. 2026-02-06 is a Friday.
        let t = utc(2026, 2, 1, 0, 0);
        assert_eq!(
            ticks("0 0 13 * FRI", None, t, 3),
            [
                "2026-02-06T00:00:00+00:00",
                "2026-02-13T00:00:00+00:00",
                "2026-02-20T00:00:00+00:00"
            ]
        );
        // Only one restricted: the other is ignored as usual.
        assert_eq!(next("0 0 13 * *", None, t), utc(2026, 2, 13, 0, 0));
    }

    #[test]
    fn tokyo_has_no_dst() {
        // 09:00 in Tokyo is 00:00 UTC all year.
        let winter = utc(2026, 1, 5, 1, 0);
        assert_eq!(
            next("0 9 * * *", Some("Asia/Tokyo"), winter),
            utc(2026, 1, 6, 0, 0)
        );
        let summer = utc(2026, 7, 5, 1, 0);
        assert_eq!(
            next("0 9 * * *", Some("Asia/Tokyo"), summer),
            utc(2026, 7, 6, 0, 0)
        );
    }

    #[test]
    fn new_york_spring_forward_fires_once_after_the_gap() {
        // 2026-03-08 02:00 EST jumps to 03:00 EDT: 02:30 does not exist that
        // day, so the job runs once at 03:00 EDT (07:00 UTC), as Vixie cron does.
        let t = utc(2026, 3, 7, 12, 0);
        assert_eq!(
            ticks("30 2 * * *", Some("America/New_York"), t, 3),
            [
                "2026-03-08T07:00:00+00:00",
                "2026-03-09T06:30:00+00:00",
                "2026-03-10T06:30:00+00:00"
            ]
        );
    }

    #[test]
    fn new_york_fall_back_fires_once() {
        // 2026-11-01 01:00-02:00 happens twice (EDT then EST): the job runs
        // at the first 01:30 (05:30 UTC) only, then 01:30 EST the next day.
        let t = utc(2026, 10, 31, 12, 0);
        assert_eq!(
            ticks("30 1 * * *", Some("America/New_York"), t, 3),
            [
                "2026-11-01T05:30:00+00:00",
                "2026-11-02T06:30:00+00:00",
                "2026-11-03T06:30:00+00:00"
            ]
        );
    }

    #[test]
    fn london_summer_time_shifts_utc() {
        let t = utc(2026, 3, 28, 12, 0);
        assert_eq!(
            ticks("0 9 * * *", Some("Europe/London"), t, 2),
            ["2026-03-29T08:00:00+00:00", "2026-03-30T08:00:00+00:00"]
        );
    }

    #[test]
    fn latest_at_or_before() {
        let s = Schedule::parse("*/15 * * * *", None).expect("valid");
        assert_eq!(
            s.latest_at_or_before(utc(2026, 1, 5, 10, 44)),
            Some(utc(2026, 1, 5, 10, 30))
        );
        assert_eq!(
            s.latest_at_or_before(utc(2026, 1, 5, 10, 45)),
            Some(utc(2026, 1, 5, 10, 45))
        );
        // Across the spring-forward gap the moved tick is the one found.
        let ny = Schedule::parse("30 2 * * *", Some("America/New_York")).expect("valid");
        assert_eq!(
            ny.latest_at_or_before(utc(2026, 3, 8, 8, 0)),
            Some(utc(2026, 3, 8, 7, 0))
        );
    }

    #[test]
    fn errors_name_the_field_and_position() {
        assert_eq!(
            reason("61 * * * *"),
            "field 1 (minute) '61' is out of range 0-59"
        );
        assert_eq!(
            reason("0 25 * * *"),
            "field 2 (hour) '25' is out of range 0-23"
        );
        assert_eq!(
            reason("0 0 0 * *"),
            "field 3 (day-of-month) '0' is out of range 1-31"
        );
        assert!(reason("* * * *").starts_with("'* * * *' has 4 fields; a schedule has 5"));
        assert!(reason("0 * * * * *").contains("has 6 fields"));
        assert_eq!(
            reason("*/0 * * * *"),
            "field 1 (minute) '*/0' has step /0: a step must be 1 or more"
        );
        assert!(reason("@sometimes").starts_with("'@sometimes' is not a macro: use @yearly"));
        assert!(
            reason("0 0 * FOO *")
                .starts_with("field 4 (month) 'FOO' has 'FOO', which is not a number")
        );
        assert!(
            reason("0 0 * * 1-8").starts_with("field 5 (day-of-week) '1-8' is out of range 0-7")
        );
        assert!(reason("0 0 * * 5-1").contains("runs backwards"));
        assert!(reason("5/15 * * * *").contains("step after a single value"));
        assert!(reason("1,,2 * * * *").contains("empty list item"));
        assert!(reason("0 0 L * *").starts_with("field 3 (day-of-month) 'L'"));
        assert!(reason("").contains("has 0 fields"));
    }

    #[test]
    fn timezone_must_be_iana() {
        let err = Schedule::parse("* * * * *", Some("Mars/Olympus")).expect_err("bad tz");
        assert_eq!(err.field, "spec.timezone");
        assert!(err.reason.contains("Asia/Tokyo"), "{}", err.reason);
        assert!(Schedule::parse("* * * * *", Some("UTC")).is_ok());
    }
}
