//! Message ids (`<session>:<seq>`): any text is an id or refused, and an
//! id read from text writes back as that text.
#![no_main]

use hale_actors::session::MessageId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(id) = text.parse::<MessageId>() {
        assert_eq!(id.to_string(), text);
        assert_eq!(id.to_string().parse::<MessageId>().ok(), Some(id));
    }
});
