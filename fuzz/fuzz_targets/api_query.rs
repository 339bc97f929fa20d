//! The HTTP API's query strings, read as the handlers read them: axum's
//! `Query` over the request URI, then `GET /v1/logs`' per-field parsing.
#![no_main]

use axum::extract::Query;
use axum::http::Uri;
use hale::api::{ApprovalParams, EventParams, LogParams, WaitParams};
use hale_actors::audit::parse_time;
use hale_actors::event::{EventKind, Level};
use hale_actors::store::Grep;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|query: &str| {
    let Ok(uri) = Uri::try_from(format!("/v1/logs?{query}")) else {
        return;
    };
    let _ = Query::<WaitParams>::try_from_uri(&uri);
    let _ = Query::<ApprovalParams>::try_from_uri(&uri);
    let _ = Query::<EventParams>::try_from_uri(&uri);
    if let Ok(Query(params)) = Query::<LogParams>::try_from_uri(&uri) {
        let now = jiff::Timestamp::now();
        for time in [&params.since, &params.until].into_iter().flatten() {
            let _ = parse_time(time, now);
        }
        if let Some(level) = params.level {
            let _ = Level::from(level);
        }
        if let Some(grep) = &params.grep {
            let _ = Grep::text(grep);
        }
        if let Some(kind) = params.kind {
            let _ = serde_json::from_value::<EventKind>(Value::String(kind));
        }
    }
});
