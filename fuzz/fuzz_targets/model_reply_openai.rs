//! OpenAI chat-completions reply bodies: any bytes are a reply or a reason, and every tool
//! call read has object arguments.
#![no_main]

use hale_actors::model::openai;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(reply) = openai::parse_reply(&body) {
        assert!(reply.tool_calls.iter().all(|c| c.arguments.is_object()));
    }
});
