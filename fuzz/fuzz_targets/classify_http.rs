//! The HTTP classifiers (status, `Retry-After` header, body), generic and
//! for both model providers: every response gets an outcome, 2xx a
//! success, anything else a failure with a code.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use hale_actors::classify::{
    MAX_EXCERPT_BYTES, from_anthropic_http_error, from_http_status, from_openai_http_error,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Option<&str>, &str, u32)| {
    let (status, retry_after, body, now) = input;
    let now = UNIX_EPOCH + Duration::from_secs(u64::from(now));
    let generic = from_http_status(status, retry_after, body, now);
    for outcome in [
        &generic,
        &from_openai_http_error(status, retry_after, body, now),
        &from_anthropic_http_error(status, retry_after, body, now),
    ] {
        if (200..300).contains(&status) {
            assert!(outcome.is_success());
        } else {
            assert!(
                outcome.is_failure() && outcome.code.is_some(),
                "{outcome:?}"
            );
            assert!(outcome.retry_after.is_none() || outcome.retryable);
        }
    }
    assert!(generic.message.len() <= MAX_EXCERPT_BYTES + "HTTP 65535: ".len());
});
