//! `hale.toml` durations: any text parses or not, and a parsed duration
//! survives format and parse.
#![no_main]

use hale::config::{format_duration, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(d) = parse_duration(text) {
        assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
});
