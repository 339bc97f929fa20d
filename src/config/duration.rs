//! Durations as `hale.toml` writes them: `"500ms"`, `"30s"`, `"5m"`,
//! `"1h"`, `"7d"`.
//!
//! One number and one unit, nothing else: a config is read by people, and
//! `"1h30m"` or `"90"` (seconds? milliseconds?) invite misreadings that a
//! single explicit unit does not.

use std::time::Duration;

/// What every duration error says is accepted.
pub const ACCEPTED: &str = "a whole number followed by a unit: ms, s, m, h or d (e.g. \"500ms\", \"30s\", \"5m\", \"1h\", \"7d\")";

/// Parses `"<digits><unit>"`, unit one of `ms`, `s`, `m`, `h`, `d`.
///
/// # Errors
/// A message saying what was wrong and which forms are accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(format!("`{text}` is not a duration: expected {ACCEPTED}"));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is too large a duration"))?;
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => {
            return Err(format!("`{text}` has no unit: expected {ACCEPTED}"));
        }
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}`: expected {ACCEPTED}"
            ));
        }
    };
    value
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too large a duration"))
}

/// Formats a duration in the largest unit that divides it exactly, so
/// that `parse_duration(format_duration(d)) == d` for whole milliseconds.
pub fn format_duration(duration: Duration) -> String {
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration(" 2 s ").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn errors_say_what_is_accepted() {
        for bad in [
            "",
            "s",
            "30",
            "30x",
            "1.5s",
            "-1s",
            "1h30m",
            "99999999999999999999d",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains("ms, s, m, h or d") || err.contains("too large"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn format_round_trips() {
        for text in ["500ms", "30s", "5m", "1h", "7d", "1500ms", "90s", "0ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
    }
}
