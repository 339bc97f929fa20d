//! The lenient tool-outcome reader: any bytes are an outcome or refused,
//! and what it reads survives a write and a second read unchanged.
#![no_main]

use hale_actors::outcome::ToolOutcome;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(outcome) = serde_json::from_slice::<ToolOutcome>(data) {
        let text = serde_json::to_string(&outcome).expect("an outcome always serializes");
        let back: ToolOutcome = serde_json::from_str(&text).expect("hale reads what it writes");
        assert_eq!(back, outcome);
    }
});
