//! The registry: registration rules, calls, unknown names and panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use hale_actors::{
    BoxFuture, ErrorCode, HintKind, RegistryError, Status, Tool, ToolContext, ToolOutcome,
    ToolRegistry, ToolSpec,
};
use serde_json::{Value, json};

enum Behaviour {
    Echo,
    PanicNow,
    PanicInFuture,
    Interrupted,
}

struct TestTool {
    spec: ToolSpec,
    behaviour: Behaviour,
}

impl TestTool {
    fn shared(name: &str, behaviour: Behaviour) -> Arc<dyn Tool> {
        Arc::new(Self {
            spec: ToolSpec::new(name, "test tool", json!({"type": "object"})),
            behaviour,
        })
    }
}

impl Tool for TestTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        if let Behaviour::PanicNow = self.behaviour {
            panic!("panicked before the future");
        }
        Box::pin(async move {
            match self.behaviour {
                Behaviour::Echo => ToolOutcome::success(args),
                Behaviour::PanicInFuture => panic!("panicked inside {}", self.spec.name),
                Behaviour::Interrupted => ToolOutcome::from_code(ErrorCode::Interrupted, "cut"),
                Behaviour::PanicNow => ToolOutcome::success(Value::Null),
            }
        })
    }
}

#[tokio::test]
async fn registered_tool_is_called() {
    let registry = ToolRegistry::new();
    registry
        .register(TestTool::shared("echo", Behaviour::Echo))
        .unwrap();
    let o = registry
        .call(
            "echo",
            json!({"x": 1}),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(o.is_success());
    assert_eq!(o.data, json!({"x": 1}));
    assert!(registry.get("echo").is_some());
    assert_eq!(registry.len(), 1);
}

#[test]
fn duplicates_and_bad_names_are_rejected() {
    let registry = ToolRegistry::new();
    registry
        .register(TestTool::shared("echo", Behaviour::Echo))
        .unwrap();
    assert_eq!(
        registry.register(TestTool::shared("echo", Behaviour::Echo)),
        Err(RegistryError::Duplicate("echo".into()))
    );
    for bad in ["", "has space", "dot.ted", "slash/ed", "ünï"] {
        assert_eq!(
            registry.register(TestTool::shared(bad, Behaviour::Echo)),
            Err(RegistryError::InvalidName(bad.into())),
            "{bad:?}"
        );
    }
    assert_eq!(registry.len(), 1);
}

#[test]
fn specs_are_sorted_by_name() {
    let registry = ToolRegistry::new();
    for name in ["zeta", "Alpha-1", "mid_dle"] {
        registry
            .register(TestTool::shared(name, Behaviour::Echo))
            .unwrap();
    }
    let names: Vec<String> = registry.specs().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["Alpha-1", "mid_dle", "zeta"]);
}

#[tokio::test]
async fn unknown_tool_suggests_the_closest_name_first() {
    let registry = ToolRegistry::new();
    for name in ["read_file", "get_weather", "list_dir"] {
        registry
            .register(TestTool::shared(name, Behaviour::Echo))
            .unwrap();
    }
    let o = registry
        .call(
            "get_wether",
            json!({}),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(o.code, Some(ErrorCode::NotFound));
    assert!(o.recoverable);
    assert!(o.message.contains("get_wether"));
    let hint = &o.hints[0];
    assert_eq!(hint.kind, HintKind::DidYouMean);
    assert_eq!(hint.suggestions[0], "get_weather");
    assert_eq!(hint.suggestions.len(), 3);
}

#[tokio::test]
async fn unknown_tool_in_empty_registry_has_no_hint() {
    let o = ToolRegistry::new()
        .call("x", Value::Null, &hale_actors::ToolContext::default())
        .await;
    assert_eq!(o.code, Some(ErrorCode::NotFound));
    assert!(o.hints.is_empty());
}

#[tokio::test]
async fn panicking_tools_become_internal_outcomes() {
    let registry = ToolRegistry::new();
    registry
        .register(TestTool::shared("boom_now", Behaviour::PanicNow))
        .unwrap();
    registry
        .register(TestTool::shared("boom_later", Behaviour::PanicInFuture))
        .unwrap();

    let o = registry
        .call(
            "boom_later",
            json!({}),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(o.status, Status::Error);
    assert_eq!(o.code, Some(ErrorCode::Internal));
    assert!(
        o.message.contains("panicked inside boom_later"),
        "{}",
        o.message
    );

    let o = registry
        .call("boom_now", json!({}), &hale_actors::ToolContext::default())
        .await;
    assert_eq!(o.code, Some(ErrorCode::Internal));
    assert!(
        o.message.contains("panicked before the future"),
        "{}",
        o.message
    );

    // The registry is still usable afterwards.
    assert_eq!(registry.len(), 2);
}

#[tokio::test]
async fn interrupted_outcome_follows_the_tools_idempotency() {
    struct Idem(ToolSpec);
    impl Tool for Idem {
        fn spec(&self) -> &ToolSpec {
            &self.0
        }
        fn call<'a>(&'a self, _args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
            Box::pin(async { ToolOutcome::from_code(ErrorCode::Interrupted, "cut") })
        }
    }
    let registry = ToolRegistry::new();
    registry
        .register(TestTool::shared("plain", Behaviour::Interrupted))
        .unwrap();
    let spec = ToolSpec::new("idem", "", Value::Null).with_idempotent(true);
    registry.register(Arc::new(Idem(spec))).unwrap();
    assert!(
        !registry
            .call("plain", Value::Null, &hale_actors::ToolContext::default())
            .await
            .retryable
    );
    assert!(
        registry
            .call("idem", Value::Null, &hale_actors::ToolContext::default())
            .await
            .retryable
    );
}
