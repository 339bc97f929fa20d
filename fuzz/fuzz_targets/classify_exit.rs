//! The process-exit classifier (exit code, signal, stderr as bytes read
//! lossily): exit 0 is a success, anything else a failure with a code and
//! at most MAX_EXCERPT_BYTES of stderr.
#![no_main]

use hale_actors::classify::{MAX_EXCERPT_BYTES, from_process_exit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Option<i32>, Option<i32>, &[u8])| {
    let (exit_code, signal, stderr) = input;
    let stderr = String::from_utf8_lossy(stderr);
    let outcome = from_process_exit(exit_code, signal, &stderr);
    if exit_code == Some(0) && signal.is_none() {
        assert!(outcome.is_success());
    } else {
        assert!(
            outcome.is_failure() && outcome.code.is_some(),
            "{outcome:?}"
        );
        assert!(outcome.message.len() <= MAX_EXCERPT_BYTES.max(64));
    }
});
