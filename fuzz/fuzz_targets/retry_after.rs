//! `Retry-After`: any header value, at any time, parses or not; digits
//! read as themselves.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use hale_actors::classify::parse_retry_after;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u64)| {
    let (value, now) = input;
    let now = UNIX_EPOCH + Duration::from_secs(now % 400_000_000_000);
    let parsed = parse_retry_after(value, now);
    let trimmed = value.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        assert_eq!(parsed, trimmed.parse::<u64>().ok().map(Duration::from_secs));
    }
});
