//! The scripted model's plan reader: any last user message, followed by a
//! decision and some tool results, gets one tool call or one text.
#![no_main]

use hale_actors::model::{ChatMessage, ModelRequest, scripted_reply};
use hale_actors::outcome::ToolOutcome;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|input: (&str, Option<&str>, u8)| {
    let (text, option, results) = input;
    let mut messages = vec![ChatMessage::User {
        text: text.to_owned(),
    }];
    messages.push(ChatMessage::Decision {
        approval: "a1".to_owned(),
        option: option.map(str::to_owned),
        instructions: None,
    });
    for i in 0..usize::from(results % 8) {
        messages.push(ChatMessage::ToolResult {
            call_id: format!("s{i}"),
            name: "exec".to_owned(),
            outcome: ToolOutcome::success(json!(i)),
        });
    }
    let reply = scripted_reply(&ModelRequest {
        messages,
        ..ModelRequest::default()
    });
    match (&reply.text, reply.tool_calls.len()) {
        (None, 1) => assert!(reply.tool_calls[0].arguments.is_object()),
        (Some(_), 0) => {}
        other => panic!("scripted reply of an unexpected shape: {other:?}"),
    }
});
