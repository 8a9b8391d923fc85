use proptest::prelude::*;

use super::*;

const S: i64 = 1_000_000_000;

fn b(on: i64, off: i64) -> Behaviour {
    Behaviour { on_delay: on * S, off_delay: off * S, ..Behaviour::default() }
}

/// Feeds `(second, condition)` steps and returns the outcomes with their second.
fn run(b: &Behaviour, steps: &[(i64, Option<Severity>)]) -> Vec<(i64, Outcome)> {
    let mut a = Alarm::default();
    let mut all = Vec::new();
    for &(t, c) in steps {
        let mut out = Vec::new();
        a.evaluate(b, t * S, c, &mut out);
        all.extend(out.into_iter().map(|o| (t, o)));
    }
    all
}

const CRIT: Option<Severity> = Some(Severity::Critical);
const WARN: Option<Severity> = Some(Severity::Warning);

#[test]
fn raises_after_on_delay_only() {
    let out = run(&b(10, 0), &[(0, CRIT), (5, CRIT), (9, CRIT), (10, CRIT)]);
    assert_eq!(out, vec![(10, Outcome::Raised { severity: Severity::Critical })]);
}

#[test]
fn on_delay_not_reached_raises_nothing() {
    assert!(run(&b(10, 0), &[(0, CRIT), (9, CRIT), (9, None), (15, CRIT)]).is_empty());
}

#[test]
fn tick_raises_without_new_samples() {
    let beh = b(10, 0);
    let mut a = Alarm::default();
    let mut out = Vec::new();
    a.evaluate(&beh, 0, CRIT, &mut out);
    assert_eq!(a.next_deadline(&beh), Some(10 * S));
    a.tick(&beh, 10 * S, &mut out);
    assert_eq!(out, vec![Outcome::Raised { severity: Severity::Critical }]);
}

#[test]
fn escalation_stays_one_alarm() {
    let out = run(&b(0, 0), &[(0, WARN), (1, CRIT), (2, WARN), (3, CRIT)]);
    assert_eq!(
        out,
        vec![
            (0, Outcome::Raised { severity: Severity::Warning }),
            (1, Outcome::Escalated { severity: Severity::Critical })
        ]
    );
}

#[test]
fn returned_then_ack_closes() {
    let beh = b(0, 5);
    let mut a = Alarm::default();
    let mut out = Vec::new();
    a.evaluate(&beh, 0, CRIT, &mut out);
    a.evaluate(&beh, S, None, &mut out);
    assert_eq!(a.state, State::ActiveUnacked, "off-delay not over");
    a.tick(&beh, 6 * S, &mut out);
    assert_eq!(a.state, State::ReturnedUnacked);
    assert!(a.ack(&beh, 7 * S, &mut out));
    assert_eq!(a.state, State::Normal);
    assert_eq!(out.last(), Some(&Outcome::Closed));
}

#[test]
fn acked_alarm_closes_when_condition_clears() {
    let beh = b(0, 0);
    let mut a = Alarm::default();
    let mut out = Vec::new();
    a.evaluate(&beh, 0, CRIT, &mut out);
    a.ack(&beh, S, &mut out);
    a.evaluate(&beh, 2 * S, None, &mut out);
    assert_eq!(a.state, State::Normal);
    assert_eq!(out.last(), Some(&Outcome::Closed));
}

#[test]
fn latched_alarm_waits_for_reset() {
    let beh = Behaviour { latch: true, ..b(0, 0) };
    let mut a = Alarm::default();
    let mut out = Vec::new();
    a.evaluate(&beh, 0, CRIT, &mut out);
    a.evaluate(&beh, S, None, &mut out);
    assert_eq!(a.state, State::ActiveUnacked, "latched: stays active");
    a.ack(&beh, 2 * S, &mut out);
    assert_eq!(a.state, State::Normal);
}

#[test]
fn shelved_alarm_is_announced_at_expiry_if_still_true() {
    let beh = b(0, 0);
    let mut a = Alarm::default();
    let mut out = Vec::new();
    a.shelve(0, 100 * S, &mut out);
    a.evaluate(&beh, S, CRIT, &mut out);
    assert_eq!(a.state, State::Normal);
    a.tick(&beh, 100 * S, &mut out);
    assert_eq!(a.state, State::ActiveUnacked);
    assert!(out.contains(&Outcome::Unshelved));
}

#[test]
fn suppressed_alarm_ignores_conditions() {
    let beh = b(0, 0);
    let mut a = Alarm::default();
    let mut out = Vec::new();
    a.set_suppressed(&beh, 0, true, &mut out);
    a.evaluate(&beh, S, CRIT, &mut out);
    assert!(out.is_empty());
    a.set_suppressed(&beh, 2 * S, false, &mut out);
    assert_eq!(out, vec![Outcome::Raised { severity: Severity::Critical }]);
}

#[test]
fn chattering_is_told_once() {
    let beh = Behaviour { chatter_count: 4, ..b(0, 0) };
    let mut steps = Vec::new();
    for i in 0..20 {
        steps.push((i, if i % 2 == 0 { CRIT } else { None }));
    }
    let out = run(&beh, &steps);
    assert_eq!(out.iter().filter(|(_, o)| *o == Outcome::Chattering).count(), 1);
    // Flapping without acknowledgement never opens a second incident.
    assert_eq!(out.iter().filter(|(_, o)| matches!(o, Outcome::Raised { .. })).count(), 1);
}

#[derive(Debug, Clone)]
enum Input {
    Eval(Option<Severity>),
    Tick,
    Ack,
    Shelve(i64),
    Unshelve,
    Suppress(bool),
}

fn input() -> impl Strategy<Value = (i64, Input)> {
    let sev = prop_oneof![
        Just(None),
        Just(Some(Severity::Warning)),
        Just(Some(Severity::Major)),
        Just(Some(Severity::Critical))
    ];
    (
        0i64..20,
        prop_oneof![
            4 => sev.prop_map(Input::Eval),
            2 => Just(Input::Tick),
            2 => Just(Input::Ack),
            1 => (1i64..30).prop_map(Input::Shelve),
            1 => Just(Input::Unshelve),
            1 => any::<bool>().prop_map(Input::Suppress),
        ],
    )
}

proptest! {
    /// An incident opens only from normal and closes only back to normal: never two open at once.
    #[test]
    fn never_two_incidents(inputs in prop::collection::vec(input(), 1..80), on in 0i64..5, off in 0i64..5, latch: bool) {
        let beh = Behaviour { latch, ..b(on, off) };
        let mut a = Alarm::default();
        let mut now = 0;
        let mut open = false;
        for (dt, i) in inputs {
            now += dt * S;
            let mut out = Vec::new();
            let before = a.state;
            match i {
                Input::Eval(c) => a.evaluate(&beh, now, c, &mut out),
                Input::Tick => a.tick(&beh, now, &mut out),
                Input::Ack => { a.ack(&beh, now, &mut out); }
                Input::Shelve(s) => a.shelve(now, now + s * S, &mut out),
                Input::Unshelve => a.unshelve(&beh, now, &mut out),
                Input::Suppress(s) => a.set_suppressed(&beh, now, s, &mut out),
            }
            for o in &out {
                match o {
                    Outcome::Raised { .. } => { prop_assert!(!open, "second incident from {before:?}"); open = true; }
                    Outcome::Closed => { prop_assert!(open); open = false; }
                    _ => {}
                }
            }
            prop_assert_eq!(open, a.state != State::Normal);
        }
    }

    /// Acknowledging a returned alarm closes it.
    #[test]
    fn ack_of_returned_closes(inputs in prop::collection::vec(input(), 1..60)) {
        let beh = b(1, 1);
        let mut a = Alarm::default();
        let mut now = 0;
        for (dt, i) in inputs {
            now += dt * S;
            let mut out = Vec::new();
            match i {
                Input::Eval(c) => a.evaluate(&beh, now, c, &mut out),
                Input::Ack => {
                    let returned = a.state == State::ReturnedUnacked;
                    a.ack(&beh, now, &mut out);
                    if returned {
                        prop_assert_eq!(a.state, State::Normal);
                        prop_assert!(out.contains(&Outcome::Closed));
                    }
                }
                _ => a.tick(&beh, now, &mut out),
            }
        }
    }
}
