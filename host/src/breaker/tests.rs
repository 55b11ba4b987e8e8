//! The pure state machine, on a hand-driven clock.

use super::*;

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        window: 10,
        min_calls: 5,
        failure_rate: 50.0,
        slow_call_rate: 80.0,
        slow_call: Duration::from_millis(500),
        open_for: Duration::from_secs(30),
        half_open_probes: 3,
    }
}

const FAST: Duration = Duration::from_millis(10);
const SLOW: Duration = Duration::from_secs(1);

fn ok() -> CallOutcome {
    CallOutcome { success: true, duration: FAST, probe: false }
}
fn fail() -> CallOutcome {
    CallOutcome { success: false, duration: FAST, probe: false }
}
fn slow_ok() -> CallOutcome {
    CallOutcome { success: true, duration: SLOW, probe: false }
}
fn probe(c: CallOutcome) -> CallOutcome {
    CallOutcome { probe: true, ..c }
}

/// Admits and records each outcome at `now`; returns the transitions.
fn run(s: &mut BreakerState, now: i64, p: &BreakerPolicy, outcomes: &[CallOutcome]) -> Vec<Transition> {
    let mut moved = Vec::new();
    for &o in outcomes {
        assert_eq!(s.admit(now, p), Admission::Allowed { probe: false });
        moved.extend(s.record(now, p, o));
    }
    moved
}

/// Opens a fresh breaker at t=0.
fn opened(p: &BreakerPolicy) -> BreakerState {
    let mut s = BreakerState::default();
    run(&mut s, 0, p, &[fail(); 5]);
    assert_eq!(s.state(), State::Open { until_ms: 30_000 });
    s
}

#[test]
fn min_calls_respected() {
    let p = policy();
    let mut s = BreakerState::default();
    assert!(run(&mut s, 0, &p, &[fail(); 4]).is_empty(), "4 of min 5 calls must not judge");
    assert_eq!(s.state(), State::Closed);
    assert_eq!(run(&mut s, 0, &p, &[fail()]), vec![Transition { from: "closed", to: "open" }]);
    assert_eq!(s.window_len(), 0, "opening clears the window");
}

#[test]
fn failure_rate_opens_at_threshold() {
    let p = policy();
    let mut s = BreakerState::default();
    // 2 of 5 = 40 %: stays closed; 3 of 6 = 50 %: opens.
    assert!(run(&mut s, 0, &p, &[ok(), fail(), ok(), fail(), ok()]).is_empty());
    assert_eq!(run(&mut s, 0, &p, &[fail()]).len(), 1);
    assert!(matches!(s.state(), State::Open { .. }));
    assert_eq!(s.transitions().opened, 1);
}

#[test]
fn window_slides() {
    let p = policy();
    let mut s = BreakerState::default();
    assert!(run(&mut s, 0, &p, &[ok(), ok(), ok(), ok(), ok(), ok(), fail(), fail(), fail(), fail()]).is_empty());
    assert_eq!(s.snapshot(0).failures, 4);
    // Ten successes push the four failures out of the 10-call window.
    run(&mut s, 0, &p, &[ok(); 10]);
    assert_eq!(s.window_len(), 10);
    assert_eq!(s.snapshot(0).failures, 0);
    assert!(run(&mut s, 0, &p, &[fail(); 4]).is_empty(), "4 of 10 is below 50 %");
    assert_eq!(run(&mut s, 0, &p, &[fail()]).len(), 1, "5 of 10 opens");
}

#[test]
fn slow_calls_open() {
    let p = policy();
    let mut s = BreakerState::default();
    // 4 slow of 5 = 80 %; all succeeded.
    let moved = run(&mut s, 0, &p, &[slow_ok(), slow_ok(), ok(), slow_ok(), slow_ok()]);
    assert_eq!(moved, vec![Transition { from: "closed", to: "open" }]);
    // Exactly the threshold duration is not slow.
    let mut s = BreakerState::default();
    let edge = CallOutcome { success: true, duration: p.slow_call, probe: false };
    assert!(run(&mut s, 0, &p, &[edge; 10]).is_empty());
}

#[test]
fn open_rejects_until_open_for_then_half_open_allows_exactly_the_probes() {
    let p = policy();
    let mut s = opened(&p);
    assert_eq!(s.admit(29_000, &p), Admission::Rejected { retry_in: Duration::from_secs(1) });
    assert_eq!(s.snapshot(29_000).state, "open");
    assert_eq!(s.snapshot(30_000).state, "half_open");
    for _ in 0..3 {
        assert_eq!(s.admit(30_000, &p), Admission::Allowed { probe: true });
    }
    assert!(matches!(s.state(), State::HalfOpen { issued: 3, .. }));
    assert_eq!(s.admit(30_001, &p), Admission::Rejected { retry_in: HALF_OPEN_RETRY });
    assert_eq!(s.transitions().half_opened, 1);
}

#[test]
fn probes_all_succeed_closes() {
    let p = policy();
    let mut s = opened(&p);
    for _ in 0..3 {
        s.admit(30_000, &p);
    }
    // A late outcome of a call admitted while closed is not a probe.
    assert_eq!(s.record(30_001, &p, fail()), None);
    assert_eq!(s.record(30_001, &p, probe(ok())), None);
    assert_eq!(s.record(30_001, &p, probe(ok())), None);
    assert_eq!(s.record(30_001, &p, probe(ok())), Some(Transition { from: "half_open", to: "closed" }));
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.window_len(), 0);
    assert_eq!(s.admit(30_002, &p), Admission::Allowed { probe: false });
}

#[test]
fn failing_probes_reopen_after_all_results() {
    let p = policy();
    let mut s = opened(&p);
    for _ in 0..3 {
        s.admit(30_000, &p);
    }
    // resilience4j judges once all permitted probes have reported.
    assert_eq!(s.record(30_100, &p, probe(fail())), None);
    assert_eq!(s.record(30_100, &p, probe(ok())), None);
    assert_eq!(s.record(30_200, &p, probe(fail())), Some(Transition { from: "half_open", to: "open" }));
    assert_eq!(s.state(), State::Open { until_ms: 60_200 });
    assert_eq!(s.transitions(), TransitionCounts { opened: 2, half_opened: 1, closed: 0 });
}

#[test]
fn slow_probes_reopen() {
    let p = policy();
    let mut s = opened(&p);
    for _ in 0..3 {
        s.admit(30_000, &p);
    }
    s.record(30_000, &p, probe(slow_ok()));
    s.record(30_000, &p, probe(slow_ok()));
    assert_eq!(s.record(30_000, &p, probe(slow_ok())).map(|t| t.to), Some("open"));
}

#[test]
fn lost_probes_are_reissued() {
    let p = policy();
    let mut s = opened(&p);
    for _ in 0..3 {
        s.admit(30_000, &p);
    }
    s.record(30_000, &p, probe(ok()));
    // Two probes never report; after open_for + slow_call they are re-issued.
    assert!(matches!(s.admit(60_000, &p), Admission::Rejected { .. }));
    assert_eq!(s.admit(60_500, &p), Admission::Allowed { probe: true });
    assert_eq!(s.admit(60_500, &p), Admission::Allowed { probe: true });
    assert!(matches!(s.admit(60_500, &p), Admission::Rejected { .. }));
}

#[test]
fn outcomes_while_open_are_ignored() {
    let p = policy();
    let mut s = opened(&p);
    let before = s.clone();
    assert_eq!(s.record(1_000, &p, ok()), None);
    assert_eq!(s, before);
}

#[test]
fn min_calls_above_window_is_capped() {
    let p = BreakerPolicy { window: 4, min_calls: 100, ..policy() };
    let mut s = BreakerState::default();
    assert_eq!(run(&mut s, 0, &p, &[fail(); 4]).len(), 1);
}

#[test]
fn json_round_trip_and_snapshot() {
    let p = policy();
    let mut s = BreakerState::default();
    run(&mut s, 0, &p, &[ok(), fail(), slow_ok(), CallOutcome { success: false, duration: SLOW, probe: false }]);
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains(r#""window":"0123""#), "{json}");
    let back: BreakerState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    let snap = back.snapshot(0);
    assert_eq!((snap.state, snap.calls, snap.failures, snap.slow_calls), ("closed", 4, 2, 2));
    assert_eq!((snap.failure_rate, snap.slow_call_rate, snap.open_until), (50.0, 50.0, None));

    let o = opened(&p);
    let back: BreakerState = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
    assert_eq!(back.snapshot(0).open_until, Some(30_000));
    assert!(serde_json::from_str::<BreakerState>(r#"{"state":{"name":"closed"},"window":"09"}"#).is_err());
}
