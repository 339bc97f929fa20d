//! The JSON-RPC error classifier: every code and message gets a failure
//! with a catalog code and a message.
#![no_main]

use hale_actors::classify::from_jsonrpc_error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (i64, &str)| {
    let (code, message) = input;
    let outcome = from_jsonrpc_error(code, message);
    assert!(
        outcome.is_failure() && outcome.code.is_some(),
        "{outcome:?}"
    );
    assert!(!outcome.message.is_empty());
    assert_eq!(outcome.data["jsonrpc_code"], serde_json::json!(code));
});
