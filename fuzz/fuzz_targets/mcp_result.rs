//! MCP `tools/call` results: any JSON rmcp reads as a result becomes an
//! outcome, `isError` a failure with a code, anything else a success.
#![no_main]

use hale_actors::mcp::convert;
use libfuzzer_sys::fuzz_target;
use rmcp::model::CallToolResult;

fuzz_target!(|data: &[u8]| {
    if let Ok(result) = serde_json::from_slice::<CallToolResult>(data) {
        let outcome = convert::call_result("srv", "tool", &result);
        if result.is_error == Some(true) {
            assert!(
                outcome.is_failure() && outcome.code.is_some(),
                "{outcome:?}"
            );
        } else {
            assert!(outcome.is_success());
        }
    }
});
