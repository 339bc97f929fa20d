//! Reading the `since` / `until` of a log query.
//!
//! Agents and operators both ask for "the last hour" far more often than
//! for an instant, and they spell it `1h`, `30m`, `2d` (as in
//! `read_logs(since="1h")`). Absolute times come as RFC 3339. Parsing is a
//! pure function handed `now`, so it is tested without a clock.

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// A time that is neither relative (`1h`, `30m`, `2d`, `1h30m`, `90s`,
/// `1w`, optionally followed by `ago`), nor `now`, nor RFC 3339
/// (`2026-06-17T10:00:00Z`), nor a date (`2026-06-17`, midnight UTC).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot read `{0}` as a time: use a duration back from now (`30m`, `1h`, `2d`, `1h30m`), \
     `now`, an RFC 3339 timestamp (`2026-06-17T10:00:00Z`) or a date (`2026-06-17`, UTC)"
)]
pub struct TimeError(pub String);

/// Reads `input` as an instant, relative ones counted back from `now`.
///
/// # Errors
/// [`TimeError`] naming the input when it is none of the accepted forms.
pub fn parse_time(input: &str, now: Timestamp) -> Result<Timestamp, TimeError> {
    let error = || TimeError(input.to_owned());
    let trimmed = input.trim();
    if trimmed.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(back) = parse_relative(trimmed) {
        return now.checked_sub(back).map_err(|_| error());
    }
    if let Ok(ts) = trimmed.parse::<Timestamp>() {
        return Ok(ts);
    }
    if let Ok(date) = trimmed.parse::<Date>() {
        return date
            .to_zoned(TimeZone::UTC)
            .map(|z| z.timestamp())
            .map_err(|_| error());
    }
    Err(error())
}

/// `1h30m`, `2d`, `45 s`, `-1h`, `3 hours ago` -> the duration back.
pub fn parse_relative(input: &str) -> Option<Duration> {
    let lower = input.trim().to_ascii_lowercase();
    let body = lower.strip_suffix("ago").unwrap_or(&lower).trim();
    let body = body.strip_prefix('-').unwrap_or(body).trim();
    if body.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let amount: u64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let seconds_per = match &rest[..unit_len] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 604_800,
            _ => return None,
        };
        total = total.checked_add(amount.checked_mul(seconds_per)?)?;
        rest = rest[unit_len..].trim_start();
    }
    Some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn relative_and_absolute() {
        let now: Timestamp = "2026-06-17T12:00:00Z".parse().unwrap();
        let at = |s: &str| parse_time(s, now).unwrap().to_string();
        assert_eq!(at("1h"), "2026-06-17T11:00:00Z");
        assert_eq!(at("30m"), "2026-06-17T11:30:00Z");
        assert_eq!(at("2d"), "2026-06-15T12:00:00Z");
        assert_eq!(at("1h30m"), "2026-06-17T10:30:00Z");
        assert_eq!(at("3 hours ago"), "2026-06-17T09:00:00Z");
        assert_eq!(at("-90s"), "2026-06-17T11:58:30Z");
        assert_eq!(at("1W"), "2026-06-10T12:00:00Z");
        assert_eq!(at("now"), "2026-06-17T12:00:00Z");
        assert_eq!(at("2026-06-17T10:00:00+02:00"), "2026-06-17T08:00:00Z");
        assert_eq!(at("2026-06-16"), "2026-06-16T00:00:00Z");
        for bad in ["", "h", "1x", "yesterday", "1h-", "99999999999999999999h"] {
            assert!(parse_time(bad, now).is_err(), "{bad} parsed");
        }
    }
}
