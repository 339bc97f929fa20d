//! One test per OTP supervisor rule, each asserting what can be observed from
//! outside: which actors are new, what the journal of starts and graceful
//! stops says, what the supervisor reports, and which events it emitted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hale_supervision::{
    Backoff, ChildId, ChildSpec, ChildState, Decision, ExitReason, Park, Restart, Shutdown,
    Strategy, SupervisorError, SupervisorEvent, SupervisorEventKind, SupervisorRef, SupervisorSpec,
};
use support::*;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const WAIT: Duration = Duration::from_secs(5);

fn observed(spec: SupervisorSpec) -> (SupervisorSpec, UnboundedReceiver<SupervisorEvent>) {
    let (tx, rx) = unbounded_channel();
    (spec.observer(Arc::new(tx)), rx)
}

async fn three_children(strategy: Strategy) -> (SupervisorRef, Arc<Shared>) {
    let shared = Shared::new();
    let spec = SupervisorSpec::new("test")
        .strategy(strategy)
        .intensity(10, Duration::from_secs(5))
        .children(["a", "b", "c"].map(|id| worker(id, &shared)));
    let (sup, _) = SupervisorRef::start(spec).await.unwrap();
    shared.clear_journal();
    (sup, shared)
}

async fn ids(sup: &SupervisorRef) -> Vec<ractor::ActorId> {
    let mut out = Vec::new();
    for id in ["a", "b", "c"] {
        out.push(current(sup, id).await.get_id());
    }
    out
}

/// The supervisor's child ids in start order.
async fn child_ids(sup: &SupervisorRef) -> Vec<ChildId> {
    sup.which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

async fn wait_restarts(sup: &SupervisorRef, n: u64) {
    eventually(WAIT, || async {
        (sup.stats().await.ok()?.restarts >= n).then_some(())
    })
    .await
    .expect("restart not reported in time");
}

#[tokio::test]
async fn one_for_one_restarts_only_the_exited_child() {
    let (sup, shared) = three_children(Strategy::OneForOne).await;
    let before = ids(&sup).await;
    let b = current(&sup, "b").await;
    b.kill();
    let new_b = replaced(&sup, "b", &b).await;
    assert_eq!(ping(&new_b).await.as_deref(), Some("b"));
    let after = ids(&sup).await;
    assert_eq!(after[0], before[0]);
    assert_ne!(after[1], before[1]);
    assert_eq!(after[2], before[2]);
    assert_eq!(shared.journal(), vec!["start:b"]);
}

#[tokio::test]
async fn one_for_all_restarts_every_child_in_order() {
    let (sup, shared) = three_children(Strategy::OneForAll).await;
    let before = ids(&sup).await;
    let b = current(&sup, "b").await;
    b.kill();
    wait_restarts(&sup, 1).await;
    let after = ids(&sup).await;
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old, new);
    }
    // The siblings stop in reverse start order, then all start in order.
    assert_eq!(
        shared.journal(),
        vec!["stop:c", "stop:a", "start:a", "start:b", "start:c"]
    );
    let stats = sup.stats().await.unwrap();
    assert_eq!((stats.exits, stats.restarts), (1, 1));
}

#[tokio::test]
async fn rest_for_one_restarts_the_child_and_those_after_it() {
    let (sup, shared) = three_children(Strategy::RestForOne).await;
    let before = ids(&sup).await;
    let b = current(&sup, "b").await;
    b.kill();
    wait_restarts(&sup, 1).await;
    let after = ids(&sup).await;
    assert_eq!(after[0], before[0]);
    assert_ne!(after[1], before[1]);
    assert_ne!(after[2], before[2]);
    assert_eq!(shared.journal(), vec!["stop:c", "start:b", "start:c"]);
}

/// How a child leaves, for the restart-type table.
#[derive(Debug, Clone, Copy)]
enum Exit {
    Normal,
    Shutdown,
    Killed,
    Panicked,
    Failed,
}

#[tokio::test]
async fn restart_types_follow_otps_table() {
    use Exit::*;
    let cases = [
        (Restart::Permanent, Normal, true),
        (Restart::Permanent, Shutdown, true),
        (Restart::Permanent, Killed, true),
        (Restart::Permanent, Panicked, true),
        (Restart::Permanent, Failed, true),
        (Restart::Transient, Normal, false),
        (Restart::Transient, Shutdown, false),
        (Restart::Transient, Killed, true),
        (Restart::Transient, Panicked, true),
        (Restart::Transient, Failed, true),
        (Restart::Temporary, Normal, false),
        (Restart::Temporary, Killed, false),
        (Restart::Temporary, Panicked, false),
    ];
    for (restart, exit, restarted) in cases {
        let shared = Shared::new();
        let (spec, mut events) = observed(
            SupervisorSpec::new("table")
                .intensity(10, Duration::from_secs(5))
                .child(worker("w", &shared).restart(restart)),
        );
        let (sup, _) = SupervisorRef::start(spec).await.unwrap();
        let w = current(&sup, "w").await;
        match exit {
            Normal => send(&w, WorkerMsg::Stop(None)),
            Shutdown => send(&w, WorkerMsg::Stop(Some("shutdown".into()))),
            Killed => w.kill(),
            Panicked => send(&w, WorkerMsg::Panic),
            Failed => send(&w, WorkerMsg::Fail),
        }
        let exited = wait_event(&mut events, WAIT, |e| {
            matches!(e.kind, SupervisorEventKind::ChildExited { .. })
        })
        .await
        .unwrap_or_else(|| panic!("{restart:?}/{exit:?}: no exit event"));
        let SupervisorEventKind::ChildExited { reason, decision } = exited.kind else {
            unreachable!()
        };
        let expected_reason_abnormal = matches!(exit, Killed | Panicked | Failed);
        assert_eq!(
            reason.is_abnormal(),
            expected_reason_abnormal,
            "{restart:?}/{exit:?}: {reason}"
        );
        let children = sup.which_children().await.unwrap();
        if restarted {
            assert_eq!(decision, Decision::Restart, "{restart:?}/{exit:?}");
            let new = replaced(&sup, "w", &w).await;
            assert_eq!(ping(&new).await.as_deref(), Some("w"));
        } else if restart == Restart::Temporary {
            assert_eq!(decision, Decision::Remove, "{restart:?}/{exit:?}");
            assert!(
                children.is_empty(),
                "{restart:?}/{exit:?}: temporary child kept"
            );
        } else {
            assert_eq!(decision, Decision::LeaveStopped, "{restart:?}/{exit:?}");
            assert_eq!(children[0].state, ChildState::Stopped);
            assert_eq!(
                children[0].last_exit.as_ref().map(ExitReason::is_abnormal),
                Some(false)
            );
        }
        sup.shutdown(WAIT).await.unwrap();
    }
}

/// A mid supervisor (intensity 3 in 5 s) under a top one: three kills are
/// absorbed by mid, the fourth makes mid give up and top restart it.
#[tokio::test]
async fn intensity_exceeded_escalates_to_the_parent() {
    let shared = Shared::new();
    let (mid_tx, mut mid_events) = unbounded_channel();
    let mid_spec = {
        let shared = shared.clone();
        move || {
            SupervisorSpec::new("top/mid")
                .intensity(3, Duration::from_secs(5))
                .observer(Arc::new(mid_tx.clone()))
                .child(worker("w", &shared))
                .child(worker("x", &shared))
        }
    };
    let top_spec = SupervisorSpec::new("top")
        .intensity(5, Duration::from_secs(5))
        .child(ChildSpec::supervisor("mid", mid_spec));
    let (top, _) = SupervisorRef::start(top_spec).await.unwrap();
    let mid_cell = current(&top, "mid").await;
    let mid = SupervisorRef::from(mid_cell.clone());
    for round in 1..=3 {
        let w = current(&mid, "w").await;
        w.kill();
        replaced(&mid, "w", &w).await;
        assert_eq!(mid.stats().await.unwrap().restarts, round);
        assert_eq!(
            current(&top, "mid").await.get_id(),
            mid_cell.get_id(),
            "mid survives kill {round}"
        );
    }
    shared.clear_journal();
    current(&mid, "w").await.kill();
    let new_mid = replaced(&top, "mid", &mid_cell).await;
    let gave_up = wait_event(&mut mid_events, WAIT, |e| {
        matches!(e.kind, SupervisorEventKind::GaveUp { .. })
    })
    .await;
    assert!(gave_up.is_some(), "mid reported no give-up");
    // Mid stopped its remaining child before exiting, then top restarted the subtree.
    let journal = shared.journal();
    assert_eq!(journal, vec!["stop:x", "start:w", "start:x"]);
    let infos = top.which_children().await.unwrap();
    assert_eq!(infos[0].restarts, 1);
    assert_eq!(
        infos[0].last_exit,
        Some(ExitReason::Shutdown(Some(
            "reached_max_restart_intensity".into()
        )))
    );
    let new_mid = SupervisorRef::from(new_mid);
    let w = current(&new_mid, "w").await;
    assert_eq!(ping(&w).await.as_deref(), Some("w"));
    assert_eq!(
        new_mid.stats().await.unwrap().restarts,
        0,
        "the new mid starts with a clean history"
    );
}

#[tokio::test]
async fn transient_supervisor_that_gives_up_is_not_restarted() {
    let shared = Shared::new();
    let mid_spec = {
        let shared = shared.clone();
        move || {
            SupervisorSpec::new("mid")
                .intensity(0, Duration::from_secs(5))
                .child(worker("w", &shared))
        }
    };
    let top_spec = SupervisorSpec::new("top")
        .child(ChildSpec::supervisor("mid", mid_spec).restart(Restart::Transient));
    let (top, _) = SupervisorRef::start(top_spec).await.unwrap();
    let mid = SupervisorRef::from(current(&top, "mid").await);
    current(&mid, "w").await.kill();
    let state = eventually(WAIT, || async {
        let infos = top.which_children().await.ok()?;
        (infos[0].state == ChildState::Stopped).then_some(infos[0].clone())
    })
    .await
    .expect("mid did not stop");
    assert_eq!(state.restarts, 0);
    assert_eq!(top.stats().await.unwrap().restarts, 0);
}

#[tokio::test]
async fn shutdown_stops_children_in_reverse_start_order() {
    let (sup, shared) = three_children(Strategy::OneForOne).await;
    let cell = sup.cell();
    sup.shutdown(WAIT).await.unwrap();
    assert_eq!(shared.journal(), vec!["stop:c", "stop:b", "stop:a"]);
    assert_eq!(cell.get_status(), ractor::ActorStatus::Stopped);
    assert_eq!(shared.live.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn graceful_shutdown_kills_a_hung_child_after_its_timeout() {
    let shared = Shared::new();
    let (spec, mut events) = observed(
        SupervisorSpec::new("s")
            .child(worker("quick", &shared))
            .child(
                worker("hung", &shared).shutdown(Shutdown::Graceful(Duration::from_millis(200))),
            ),
    );
    let (sup, _) = SupervisorRef::start(spec).await.unwrap();
    let hung = current(&sup, "hung").await;
    // Once it has answered, its handler is stuck: a graceful stop cannot get in.
    let actor: ractor::ActorRef<WorkerMsg> = hung.clone().into();
    actor
        .call(WorkerMsg::Hang, Some(WAIT))
        .await
        .unwrap()
        .unwrap();
    let started = std::time::Instant::now();
    sup.terminate_child(&ChildId::from("hung")).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "killed before its timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "kill after timeout took {took:?}"
    );
    assert_eq!(hung.get_status(), ractor::ActorStatus::Stopped);
    let terminated = wait_event(&mut events, WAIT, |e| {
        matches!(e.kind, SupervisorEventKind::ChildTerminated { .. })
    })
    .await
    .unwrap();
    assert_eq!(
        terminated.kind,
        SupervisorEventKind::ChildTerminated {
            killed_after_timeout: true
        }
    );
    // It was killed: post_stop never ran for it. A permanent child that was
    // terminated on purpose is not restarted.
    assert!(!shared.journal().contains(&"stop:hung".to_owned()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let infos = sup.which_children().await.unwrap();
    assert_eq!(infos[1].state, ChildState::Stopped);
    assert_eq!(sup.stats().await.unwrap().exits, 0);
}

#[tokio::test]
async fn brutal_shutdown_skips_post_stop() {
    let shared = Shared::new();
    let spec = SupervisorSpec::new("s")
        .child(worker("gentle", &shared))
        .child(worker("brutal", &shared).shutdown(Shutdown::Brutal));
    let (sup, _) = SupervisorRef::start(spec).await.unwrap();
    sup.shutdown(WAIT).await.unwrap();
    assert_eq!(
        shared.journal(),
        vec!["start:gentle", "start:brutal", "stop:gentle"]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn backoff_delays_grow_within_bounds_and_reset_when_stable() {
    let shared = Shared::new();
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800), 0.5)
        .unwrap()
        .reset_after(Duration::from_secs(10));
    let (spec, mut events) = observed(
        SupervisorSpec::new("s")
            .intensity(100, Duration::from_secs(60))
            .child(worker("w", &shared).backoff(backoff)),
    );
    let (sup, _) = SupervisorRef::start(spec).await.unwrap();
    let mut bases = Vec::new();
    for attempt in 0..5u32 {
        let w = current(&sup, "w").await;
        w.kill();
        let scheduled = wait_event(&mut events, WAIT, |e| {
            matches!(e.kind, SupervisorEventKind::RestartScheduled { .. })
        })
        .await
        .unwrap();
        let SupervisorEventKind::RestartScheduled { attempt: a, delay } = scheduled.kind else {
            unreachable!()
        };
        let scheduled_at = tokio::time::Instant::now();
        assert_eq!(a, attempt);
        let base = Duration::from_millis(100 * 2u64.pow(attempt)).min(Duration::from_millis(800));
        assert!(
            delay >= base && delay <= base.mul_f64(1.5),
            "attempt {attempt}: {delay:?} vs base {base:?}"
        );
        // While it waits the supervisor answers and reports the child pending.
        let infos = sup.which_children().await.unwrap();
        assert_eq!(infos[0].state, ChildState::RestartPending);
        let new = replaced(&sup, "w", &w).await;
        let waited = scheduled_at.elapsed();
        assert!(
            waited >= delay,
            "restarted after {waited:?}, before its delay {delay:?}"
        );
        assert!(
            waited <= delay + Duration::from_millis(20),
            "restarted late: {waited:?} for {delay:?}"
        );
        assert_eq!(ping(&new).await.as_deref(), Some("w"));
        bases.push(base);
    }
    assert_eq!(bases.last(), Some(&Duration::from_millis(800)));
    // Stable for longer than reset_after: the next delay starts from min again.
    tokio::time::sleep(Duration::from_secs(11)).await;
    current(&sup, "w").await.kill();
    let scheduled = wait_event(&mut events, WAIT, |e| {
        matches!(e.kind, SupervisorEventKind::RestartScheduled { .. })
    })
    .await
    .unwrap();
    assert!(matches!(
        scheduled.kind,
        SupervisorEventKind::RestartScheduled { attempt: 0, .. }
    ));
}

#[tokio::test]
async fn failed_restart_is_counted_and_retried() {
    let shared = Shared::new();
    let (spec, mut events) = observed(
        SupervisorSpec::new("s")
            .intensity(10, Duration::from_secs(5))
            .child(worker("w", &shared)),
    );
    let (sup, _) = SupervisorRef::start(spec).await.unwrap();
    shared.fail_next_starts("w", 2);
    let w = current(&sup, "w").await;
    w.kill();
    let new = replaced(&sup, "w", &w).await;
    assert_eq!(ping(&new).await.as_deref(), Some("w"));
    let stats = sup.stats().await.unwrap();
    assert_eq!(stats.start_failures, 2);
    assert_eq!(stats.restarts, 1);
    let mut failures = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event.kind, SupervisorEventKind::ChildStartFailed { .. }) {
            failures += 1;
        }
    }
    assert_eq!(failures, 2);
}

#[tokio::test]
async fn failed_restarts_count_towards_intensity() {
    // Intensity 2: the restart after the kill, then two failed starts = 3 > 2.
    let shared = Shared::new();
    let (spec, mut events) = observed(
        SupervisorSpec::new("s")
            .intensity(2, Duration::from_secs(5))
            .child(worker("w", &shared)),
    );
    let (sup, task) = SupervisorRef::start(spec).await.unwrap();
    shared.fail_next_starts("w", 5);
    current(&sup, "w").await.kill();
    let gave_up = wait_event(&mut events, WAIT, |e| {
        matches!(e.kind, SupervisorEventKind::GaveUp { .. })
    })
    .await;
    assert!(gave_up.is_some());
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert!(matches!(
        sup.stats().await,
        Err(SupervisorError::Unavailable)
    ));
    // Two of the five planned failures were consumed before the give-up.
    assert_eq!(shared.fail_starts.lock().unwrap()[0].1, 3);
}

#[tokio::test]
async fn supervisor_fails_to_start_when_a_child_cannot_start() {
    let shared = Shared::new();
    shared.fail_next_starts("b", 1);
    let spec = SupervisorSpec::new("s").children(["a", "b", "c"].map(|id| worker(id, &shared)));
    let result = SupervisorRef::start(spec).await;
    assert!(
        matches!(result, Err(SupervisorError::Spawn(ref e)) if e.contains("b")),
        "{result:?}"
    );
    // a had started and was stopped again; c never started.
    assert_eq!(shared.journal(), vec!["start:a", "stop:a"]);
    assert_eq!(shared.live.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn invalid_specs_are_refused_before_anything_starts() {
    let shared = Shared::new();
    let spec = SupervisorSpec::new("s")
        .child(worker("a", &shared))
        .child(worker("a", &shared));
    let result = SupervisorRef::start(spec).await;
    assert!(
        matches!(result, Err(SupervisorError::InvalidSpec(_))),
        "{result:?}"
    );
    let zero = SupervisorSpec::new("s").intensity(1, Duration::ZERO);
    assert!(matches!(
        SupervisorRef::start(zero).await,
        Err(SupervisorError::InvalidSpec(_))
    ));
    assert!(shared.journal().is_empty());
}

#[tokio::test]
async fn dynamic_children_start_terminate_restart_delete() {
    let shared = Shared::new();
    let (sup, _) = SupervisorRef::start(SupervisorSpec::new("dyn"))
        .await
        .unwrap();
    let a = sup.start_child(worker("a", &shared)).await.unwrap();
    assert_eq!(ping(&a).await.as_deref(), Some("a"));
    sup.start_child(worker("b", &shared).restart(Restart::Transient))
        .await
        .unwrap();
    assert_eq!(
        sup.start_child(worker("a", &shared)).await.unwrap_err(),
        SupervisorError::DuplicateChild(ChildId::from("a"))
    );
    let infos = sup.which_children().await.unwrap();
    let listed: Vec<_> = infos
        .iter()
        .map(|i| (i.id.as_str(), i.state, i.restarts))
        .collect();
    assert_eq!(
        listed,
        vec![("a", ChildState::Running, 0), ("b", ChildState::Running, 0)]
    );
    assert_eq!(
        infos[0].actor.as_ref().map(|c| c.get_id()),
        Some(a.get_id())
    );

    // Terminated on purpose: stays down although permanent.
    sup.terminate_child(&ChildId::from("a")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        sup.resolve(&ChildId::from("a"))
            .await
            .unwrap()
            .map(|c| c.get_id()),
        None
    );
    assert_eq!(
        sup.which_children().await.unwrap()[0].state,
        ChildState::Stopped
    );

    // Restarted on request: a new actor, counted.
    let a2 = sup.restart_child(&ChildId::from("a")).await.unwrap();
    assert_ne!(a2.get_id(), a.get_id());
    assert_eq!(ping(&a2).await.as_deref(), Some("a"));
    // Restarting a running child restarts it.
    let a3 = sup.restart_child(&ChildId::from("a")).await.unwrap();
    assert_ne!(a3.get_id(), a2.get_id());
    assert_eq!(sup.which_children().await.unwrap()[0].restarts, 2);

    sup.delete_child(&ChildId::from("a")).await.unwrap();
    assert_eq!(child_ids(&sup).await, vec![ChildId::from("b")]);
    assert_eq!(a3.get_status(), ractor::ActorStatus::Stopped);

    let unknown = ChildId::from("nope");
    assert_eq!(
        sup.terminate_child(&unknown).await,
        Err(SupervisorError::UnknownChild(unknown.clone()))
    );
    assert!(matches!(
        sup.restart_child(&unknown).await,
        Err(SupervisorError::UnknownChild(_))
    ));
    assert!(matches!(
        sup.delete_child(&unknown).await,
        Err(SupervisorError::UnknownChild(_))
    ));

    // A dynamic child that fails to start is reported and not kept.
    shared.fail_next_starts("c", 1);
    let failed = sup.start_child(worker("c", &shared)).await;
    assert!(
        matches!(failed, Err(SupervisorError::StartFailed { .. })),
        "{failed:?}"
    );
    assert_eq!(sup.which_children().await.unwrap().len(), 1);
}

#[tokio::test]
async fn crash_looping_child_is_parked_and_probed_without_touching_siblings() {
    let shared = Shared::new();
    let park = Park {
        limit: hale_supervision::Intensity::new(2, Duration::from_secs(5)),
        probe_after: Duration::from_millis(300),
    };
    let (spec, mut events) = observed(
        SupervisorSpec::new("mcp")
            // The supervisor's own intensity would trip on the third restart.
            .intensity(2, Duration::from_secs(5))
            .child(worker("healthy", &shared))
            .child(worker("flaky", &shared).park(park))
            .child(worker("backup", &shared)),
    );
    let (sup, _) = SupervisorRef::start(spec).await.unwrap();
    let healthy = current(&sup, "healthy").await;
    let backup = current(&sup, "backup").await;
    for _ in 0..2 {
        let flaky = current(&sup, "flaky").await;
        flaky.kill();
        replaced(&sup, "flaky", &flaky).await;
    }
    current(&sup, "flaky").await.kill();
    let parked = wait_event(&mut events, WAIT, |e| {
        matches!(e.kind, SupervisorEventKind::ChildParked { .. })
    })
    .await
    .expect("not parked");
    assert_eq!(parked.child, Some(ChildId::from("flaky")));
    let infos = sup.which_children().await.unwrap();
    assert_eq!(infos[1].state, ChildState::Parked);
    assert_eq!(infos[1].last_exit, Some(ExitReason::Killed));
    // Siblings untouched, supervisor alive.
    assert_eq!(current(&sup, "healthy").await.get_id(), healthy.get_id());
    assert_eq!(current(&sup, "backup").await.get_id(), backup.get_id());
    // The probe brings it back after the cool-down.
    let probed = wait_event(&mut events, WAIT, |e| {
        matches!(e.kind, SupervisorEventKind::ChildProbed)
    })
    .await;
    assert!(probed.is_some());
    let flaky = eventually(WAIT, || async {
        sup.resolve(&ChildId::from("flaky")).await.ok().flatten()
    })
    .await
    .unwrap();
    assert_eq!(ping(&flaky).await.as_deref(), Some("flaky"));
    assert_eq!(sup.stats().await.unwrap().parks, 1);
}

#[tokio::test]
async fn a_kill_aimed_at_a_stale_ref_is_not_a_restart() {
    let (sup, _shared) = three_children(Strategy::OneForOne).await;
    let old = current(&sup, "a").await;
    old.kill();
    let new = replaced(&sup, "a", &old).await;
    old.kill();
    old.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sup.stats().await.unwrap().restarts, 1);
    assert_eq!(current(&sup, "a").await.get_id(), new.get_id());
}

#[tokio::test]
async fn events_report_start_exit_and_restart() {
    let shared = Shared::new();
    let (spec, mut events) = observed(
        SupervisorSpec::new("hale/test")
            .intensity(5, Duration::from_secs(5))
            .child(worker("w", &shared)),
    );
    let (sup, _) = SupervisorRef::start(spec).await.unwrap();
    let w = current(&sup, "w").await;
    send(&w, WorkerMsg::Panic);
    let new = replaced(&sup, "w", &w).await;
    let mut kinds = Vec::new();
    while let Ok(event) = events.try_recv() {
        assert_eq!(&*event.supervisor, "hale/test");
        assert_eq!(event.child, Some(ChildId::from("w")));
        kinds.push(event.kind);
    }
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(
        kinds[0],
        SupervisorEventKind::ChildStarted {
            actor: w.get_id(),
            restarts: 0
        }
    );
    assert!(matches!(
        &kinds[1],
        SupervisorEventKind::ChildExited { reason: ExitReason::Failed(msg), decision: Decision::Restart }
            if msg.contains("told to panic")
    ));
    assert_eq!(
        kinds[2],
        SupervisorEventKind::ChildStarted {
            actor: new.get_id(),
            restarts: 1
        }
    );
}

/// Strategy x restart type: which siblings a middle child's exit takes down
/// with it. Only an exit that the restart table restarts triggers the
/// strategy; a transient child's normal exit and a temporary child's exit
/// leave the siblings alone.
#[tokio::test]
async fn strategy_by_restart_type_matrix() {
    for strategy in [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ] {
        for restart in [Restart::Permanent, Restart::Transient, Restart::Temporary] {
            for killed in [false, true] {
                let case = format!(
                    "{strategy:?}/{restart:?}/{}",
                    if killed { "killed" } else { "normal" }
                );
                let shared = Shared::new();
                let spec = SupervisorSpec::new("matrix")
                    .strategy(strategy)
                    .intensity(10, Duration::from_secs(5))
                    .child(worker("a", &shared))
                    .child(worker("b", &shared).restart(restart))
                    .child(worker("c", &shared));
                let (sup, _) = SupervisorRef::start(spec).await.unwrap();
                let a = current(&sup, "a").await.get_id();
                let b = current(&sup, "b").await;
                let c = current(&sup, "c").await.get_id();
                if killed {
                    b.kill();
                } else {
                    send(&b, WorkerMsg::Stop(None));
                }
                let restarts = decide_expected(restart, killed);
                if restarts {
                    wait_restarts(&sup, 1).await;
                } else {
                    eventually(WAIT, || async {
                        (sup.stats().await.ok()?.exits == 1).then_some(())
                    })
                    .await
                    .unwrap_or_else(|| panic!("{case}: exit not seen"));
                }
                let infos = sup.which_children().await.unwrap();
                let id_of = |name: &str| {
                    infos
                        .iter()
                        .find(|i| i.id.as_str() == name)
                        .and_then(|i| i.actor.as_ref().map(|cell| cell.get_id()))
                };
                let (a_new, c_new) = (id_of("a") != Some(a), id_of("c") != Some(c));
                let expected = match (restarts, strategy) {
                    (false, _) | (true, Strategy::OneForOne) => (false, false),
                    (true, Strategy::OneForAll) => (true, true),
                    (true, Strategy::RestForOne) => (false, true),
                };
                assert_eq!(
                    (a_new, c_new),
                    expected,
                    "{case}: (a restarted, c restarted)"
                );
                match (restarts, restart) {
                    (true, _) => assert!(
                        id_of("b").is_some_and(|id| id != b.get_id()),
                        "{case}: b not restarted"
                    ),
                    (false, Restart::Temporary) => {
                        assert_eq!(infos.len(), 2, "{case}: temporary b kept")
                    }
                    (false, _) => assert_eq!(infos[1].state, ChildState::Stopped, "{case}"),
                }
                for info in &infos {
                    if let Some(cell) = &info.actor {
                        assert_eq!(
                            ping(cell).await.as_deref(),
                            Some(info.id.as_str()),
                            "{case}"
                        );
                    }
                }
                sup.shutdown(WAIT).await.unwrap();
            }
        }
    }
}

fn decide_expected(restart: Restart, killed: bool) -> bool {
    match restart {
        Restart::Permanent => true,
        Restart::Transient => killed,
        Restart::Temporary => false,
    }
}

/// A temporary sibling caught in a group restart is shut down and forgotten,
/// not restarted (OTP deletes temporary children it terminates).
#[tokio::test]
async fn group_restart_forgets_temporary_siblings() {
    let shared = Shared::new();
    let spec = SupervisorSpec::new("s")
        .strategy(Strategy::OneForAll)
        .intensity(10, Duration::from_secs(5))
        .child(worker("a", &shared))
        .child(worker("t", &shared).restart(Restart::Temporary))
        .child(worker("c", &shared));
    let (sup, _) = SupervisorRef::start(spec).await.unwrap();
    shared.clear_journal();
    current(&sup, "a").await.kill();
    wait_restarts(&sup, 1).await;
    assert_eq!(
        child_ids(&sup).await,
        vec![ChildId::from("a"), ChildId::from("c")]
    );
    assert_eq!(
        shared.journal(),
        vec!["stop:c", "stop:t", "start:a", "start:c"]
    );
}
