//! Levels, event kinds, events from outcomes and the sinks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use hale_actors::{
    ErrorCode, Event, EventKind, EventSink, Level, MemorySink, NullSink, Severity, ToolOutcome,
};
use serde_json::{Value, json};

#[test]
fn levels_parse_case_insensitively() {
    assert_eq!("ERROR".parse::<Level>().unwrap(), Level::Error);
    assert_eq!("warn".parse::<Level>().unwrap(), Level::Warning);
    assert_eq!("WARNING".parse::<Level>().unwrap(), Level::Warning);
    assert_eq!(" Info ".parse::<Level>().unwrap(), Level::Info);
    assert_eq!("Critical".parse::<Level>().unwrap(), Level::Critical);
    assert_eq!("debug".parse::<Level>().unwrap(), Level::Debug);
    assert_eq!("TRACE".parse::<Level>().unwrap(), Level::Debug);
    let err = "loud".parse::<Level>().unwrap_err();
    assert!(err.to_string().contains("`loud`"), "{err}");
}

#[test]
fn levels_are_ordered_and_serialise_lowercase() {
    assert!(Level::Debug < Level::Info);
    assert!(Level::Info < Level::Warning);
    assert!(Level::Warning < Level::Error);
    assert!(Level::Error < Level::Critical);
    assert_eq!(
        serde_json::to_string(&Level::Warning).unwrap(),
        "\"warning\""
    );
    assert_eq!(
        serde_json::from_str::<Level>("\"warn\"").unwrap(),
        Level::Warning
    );
}

#[test]
fn event_kinds_are_snake_case_and_open() {
    assert_eq!(
        serde_json::to_string(&EventKind::ChildStartFailed).unwrap(),
        "\"child_start_failed\""
    );
    assert_eq!(
        serde_json::to_string(&EventKind::SupervisorGaveUp).unwrap(),
        "\"supervisor_gave_up\""
    );
    for kind in EventKind::KNOWN {
        let back: EventKind = serde_json::from_str(&serde_json::to_string(kind).unwrap()).unwrap();
        assert_eq!(&back, kind);
    }
    assert_eq!(EventKind::KNOWN.len(), 28);
    assert_eq!(
        serde_json::to_string(&EventKind::SessionStalled).unwrap(),
        "\"session_stalled\""
    );
    assert_eq!(
        serde_json::to_string(&EventKind::Incident).unwrap(),
        "\"incident\""
    );
    let odd: EventKind = serde_json::from_str("\"budget_warning\"").unwrap();
    assert_eq!(odd, EventKind::Other("budget_warning".into()));
    assert_eq!(serde_json::to_string(&odd).unwrap(), "\"budget_warning\"");
}

#[test]
fn event_builder_and_round_trip() {
    let e = Event::new(
        Level::Info,
        "hale/mcp/weather",
        EventKind::ChildStarted,
        "up",
    )
    .with_session("s-1")
    .with_code(ErrorCode::NotFound)
    .with_data(json!({"pid": 4}));
    assert_eq!(e.id, None);
    assert_eq!(e.session.as_deref(), Some("s-1"));
    let text = serde_json::to_string(&e).unwrap();
    let back: Event = serde_json::from_str(&text).unwrap();
    assert_eq!(back, e);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], json!("child_started"));
    assert_eq!(v["code"], json!("NOT_FOUND"));
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn events_from_outcomes_take_their_level_from_severity() {
    let cases = [
        (ToolOutcome::success(json!(1)), Level::Info),
        (ToolOutcome::partial(json!(1), "half"), Level::Warning),
        (ToolOutcome::timeout("slow"), Level::Warning),
        (
            ToolOutcome::from_code(ErrorCode::NotFound, "gone"),
            Level::Error,
        ),
        (ToolOutcome::blocked("no"), Level::Critical),
        (
            ToolOutcome::from_code(ErrorCode::NotFound, "x").with_severity(Severity::Critical),
            Level::Critical,
        ),
    ];
    for (outcome, level) in cases {
        let e = Event::from_outcome("hale/tools", EventKind::ToolOutcome, &outcome);
        assert_eq!(e.level, level, "{outcome:?}");
        assert_eq!(e.code, outcome.code);
        assert_eq!(e.message, outcome.message);
        assert_eq!(e.kind, EventKind::ToolOutcome);
        let stored: ToolOutcome = serde_json::from_value(e.data.clone()).unwrap();
        assert_eq!(stored, outcome);
    }
}

#[test]
fn memory_sink_keeps_events_in_order_through_an_arc() {
    let sink = Arc::new(MemorySink::new());
    assert!(sink.is_empty());
    let shared: Arc<dyn EventSink> = sink.clone();
    for i in 0..3 {
        shared.emit(Event::new(
            Level::Debug,
            "t",
            EventKind::Log,
            format!("{i}"),
        ));
    }
    let messages: Vec<String> = sink.events().into_iter().map(|e| e.message).collect();
    assert_eq!(messages, ["0", "1", "2"]);
    assert_eq!(sink.len(), 3);
    NullSink.emit(Event::new(Level::Debug, "t", EventKind::Log, "dropped"));
}
