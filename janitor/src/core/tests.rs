//! Scenario tests of the whole core in simulated time: `t0` is read once,
//! everything else is `t0 + offset`. Plans are applied to an in-memory
//! registry with the real one's compare-and-set rules, as the driver would.

use std::time::{Instant, SystemTime};

use bus_schema::{EndReason, Heartbeat, SessionRecord, SessionState, WorkerId};

use super::*;
use crate::reconcile::{ended_record, reassigned_record};
use crate::testkit::*;

/// Heartbeat interval 1s, dead after 3s, ended entries kept 10 min.
fn timing() -> Timing {
    Timing::new(secs(1), secs(3), secs(600))
}

struct Sim {
    t0: Instant,
    core: Core,
    reg: FakeRegistry,
}

impl Sim {
    fn new(records: Vec<SessionRecord>) -> Self {
        let t0 = Instant::now();
        Self {
            t0,
            core: Core::new(t0, timing()),
            reg: FakeRegistry::with(records),
        }
    }

    fn t(&self, ms_: u64) -> Instant {
        self.t0 + ms(ms_)
    }

    fn wall(&self, ms_: u64) -> SystemTime {
        wall0() + ms(ms_)
    }

    fn beat(&mut self, at_ms: u64, hb: Heartbeat) {
        let now = self.t(at_ms);
        self.core.observe(now, &hb);
    }

    /// Plans at `at_ms` from a registry read started at `read_ms`.
    fn plan_read_at(&mut self, at_ms: u64, read_ms: u64) -> Plan {
        let snapshot = Snapshot {
            entries: self.reg.list(),
            read_at: self.t(read_ms),
        };
        let (now, wall) = (self.t(at_ms), self.wall(at_ms));
        self.core.plan(now, wall, &snapshot)
    }

    fn plan(&mut self, at_ms: u64) -> Plan {
        self.plan_read_at(at_ms, at_ms)
    }

    /// Plans and applies every action to the registry.
    fn step(&mut self, at_ms: u64) -> Vec<Action> {
        let plan = self.plan(at_ms);
        let wall = self.wall(at_ms);
        for a in &plan.actions {
            self.reg.apply(a, wall);
        }
        plan.actions
    }
}

fn session_actions(actions: &[Action]) -> Vec<&Action> {
    actions
        .iter()
        .filter(|a| matches!(a, Action::End { .. } | Action::Reassign { .. }))
        .collect()
}

fn ends_of(actions: &[Action]) -> Vec<(String, EndReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::End { id, reason, .. } => Some((id.to_string(), *reason)),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------ quiet cluster

#[test]
fn nothing_to_do_when_registry_and_heartbeats_agree() {
    let mut sim = Sim::new(vec![record("s1", "w1", 1, SessionState::Live)]);
    for i in 0..10 {
        sim.beat(i * 1000, hb("w1", 4, &[("s1", 1)]));
        assert!(sim.step(i * 1000 + 500).is_empty(), "at {i}s");
    }
}

#[test]
fn repeated_plans_without_applying_repeat_the_same_action() {
    let mut sim = Sim::new(vec![record("s1", "w1", 1, SessionState::Live)]);
    sim.beat(0, hb("w1", 4, &[("s1", 1)]));
    let first = session_actions(&sim.plan(3500).actions)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    let again = session_actions(&sim.plan(4500).actions)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first, again,
        "same revision, so applying both is harmless: the second CAS loses"
    );
}

// ------------------------------------------------------------ startup grace

#[test]
fn nothing_is_reaped_during_the_startup_grace() {
    let mut sim = Sim::new(vec![
        record("s1", "ghost", 1, SessionState::Live),
        restartable(record("s2", "ghost", 1, SessionState::Starting)),
    ]);
    sim.beat(100, hb("w2", 4, &[]));
    for at in [0, 1000, 2000, 2999] {
        assert!(sim.step(at).is_empty(), "at {at} ms");
    }
}

#[test]
fn entries_of_unknown_owners_are_reaped_once_the_grace_is_over() {
    let mut sim = Sim::new(vec![
        record("s1", "ghost", 1, SessionState::Live),
        restartable(record("s2", "ghost", 1, SessionState::Starting)),
    ]);
    sim.step(0);
    sim.beat(2500, hb("w2", 4, &[]));
    let actions = sim.step(3000);
    assert_eq!(
        ends_of(&actions),
        vec![("s1".into(), EndReason::WorkerLost)]
    );
    assert!(actions.iter().any(
        |a| matches!(a, Action::Reassign { id, to, .. } if id.as_str() == "s2" && *to == wid("w2"))
    ));
    assert_eq!(sim.reg.get("s1").state, SessionState::Ended);
    assert_eq!(sim.reg.get("s2").owner, wid("w2"));
}

#[test]
fn an_unknown_owner_first_seen_after_the_grace_gets_dead_after_to_heartbeat() {
    // A fresh worker may write its first session before its first heartbeat
    // reaches the janitor.
    let mut sim = Sim::new(vec![]);
    assert!(sim.step(5000).is_empty());
    sim.reg
        .put(record("s1", "fresh", 1, SessionState::Starting));
    assert!(sim.step(6000).is_empty());
    assert!(sim.step(8999).is_empty());
    assert_eq!(
        ends_of(&sim.step(9000)),
        vec![("s1".into(), EndReason::WorkerLost)]
    );
}

#[test]
fn a_fresh_worker_that_heartbeats_in_time_keeps_its_session() {
    let mut sim = Sim::new(vec![]);
    sim.step(5000);
    sim.reg
        .put(record("s1", "fresh", 1, SessionState::Starting));
    assert!(sim.step(6000).is_empty());
    sim.beat(6500, hb("fresh", 4, &[("s1", 1)]));
    for at in [7000, 9000, 12000] {
        sim.beat(at - 500, hb("fresh", 4, &[("s1", 1)]));
        assert!(sim.step(at).is_empty());
    }
}

#[test]
fn a_janitor_that_was_blind_waits_dead_after_again() {
    let mut sim = Sim::new(vec![record("s1", "w1", 1, SessionState::Live)]);
    sim.beat(4000, hb("w1", 4, &[("s1", 1)]));
    sim.step(4500);
    // The janitor loses NATS from 5s to 20s; the worker is fine all along.
    sim.core.rebase(sim.t(20_000));
    assert!(sim.step(20_100).is_empty());
    sim.beat(20_500, hb("w1", 4, &[("s1", 1)]));
    assert!(sim.step(21_000).is_empty());
    assert!(sim.reg.get("s1").state == SessionState::Live);
}

// ------------------------------------------------------------ dead owners

#[test]
fn sessions_of_a_dead_worker_end_with_worker_lost() {
    let mut sim = Sim::new(vec![
        record("s1", "w1", 1, SessionState::Live),
        record("s2", "w1", 1, SessionState::Starting),
    ]);
    sim.beat(0, hb("w1", 4, &[("s1", 1), ("s2", 1)]));
    assert!(session_actions(&sim.step(2999)).is_empty());
    let plan = sim.plan(3000);
    assert_eq!(plan.newly_dead, vec![wid("w1")]);
    assert_eq!(
        ends_of(&plan.actions),
        vec![
            ("s1".into(), EndReason::WorkerLost),
            ("s2".into(), EndReason::WorkerLost)
        ]
    );
    match &plan.actions[0] {
        Action::End {
            owner,
            epoch,
            expected_revision,
            detail,
            ..
        } => {
            assert_eq!(owner, &wid("w1"));
            assert_eq!(*epoch, 1);
            assert_eq!(*expected_revision, 1);
            assert!(detail.contains("w1"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_restartable_session_moves_to_a_live_worker_under_the_next_epoch() {
    let mut sim = Sim::new(vec![restartable(record("s1", "w1", 4, SessionState::Live))]);
    sim.beat(0, hb("w1", 4, &[("s1", 4)]));
    sim.beat(2900, hb("w2", 4, &[]));
    let actions = sim.step(3000);
    assert_eq!(
        session_actions(&actions),
        vec![&Action::Reassign {
            id: sid("s1"),
            from: wid("w1"),
            to: wid("w2"),
            expected_revision: 1,
            new_epoch: 5,
            detail: "worker w1 stopped heartbeating; restarted on w2".into(),
        }]
    );
    let r = sim.reg.get("s1");
    assert_eq!(
        (r.owner.clone(), r.epoch, r.state),
        (wid("w2"), 5, SessionState::Starting)
    );
}

#[test]
fn no_restart_without_free_capacity_ends_the_session() {
    let mut sim = Sim::new(vec![restartable(record("s1", "w1", 1, SessionState::Live))]);
    sim.beat(0, hb("w1", 4, &[("s1", 1)]));
    sim.beat(2900, hb("full", 1, &[("x", 1)]));
    let actions = sim.step(3000);
    assert_eq!(
        ends_of(&actions),
        vec![("s1".into(), EndReason::WorkerLost)]
    );
    match &actions[0] {
        Action::End { detail, .. } => {
            assert!(detail.contains("no live worker has room"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn restart_placement_picks_the_least_loaded_and_never_the_dead_worker() {
    let mut sim = Sim::new(vec![restartable(record("s1", "w1", 1, SessionState::Live))]);
    // The dead worker was the emptiest of all.
    sim.beat(0, hb("w1", 100, &[("s1", 1)]));
    sim.beat(2900, hb("busy", 4, &[("a", 1), ("b", 1), ("c", 1)]));
    sim.beat(2900, hb("light", 4, &[("d", 1)]));
    let actions = sim.step(3000);
    assert!(matches!(&actions[0], Action::Reassign { to, .. } if *to == wid("light")));
}

#[test]
fn restarts_in_one_plan_spread_over_free_slots() {
    let mut sim = Sim::new(
        ["s1", "s2", "s3"]
            .iter()
            .map(|s| restartable(record(s, "w1", 1, SessionState::Live)))
            .collect(),
    );
    sim.beat(0, hb("w1", 4, &[("s1", 1), ("s2", 1), ("s3", 1)]));
    sim.beat(2900, hb("a", 1, &[]));
    sim.beat(2900, hb("b", 1, &[]));
    let actions = sim.step(3000);
    let targets: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Reassign { to, .. } => Some(to.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(targets, vec!["a", "b"]);
    assert_eq!(
        ends_of(&actions),
        vec![("s3".into(), EndReason::WorkerLost)]
    );
}

#[test]
fn placement_counts_registry_entries_not_yet_in_heartbeats() {
    // w2's heartbeat shows one free slot, but the registry already gives it
    // a session it is still starting.
    let mut sim = Sim::new(vec![
        restartable(record("s1", "w1", 1, SessionState::Live)),
        record("s9", "w2", 1, SessionState::Starting),
    ]);
    sim.beat(0, hb("w1", 4, &[("s1", 1)]));
    sim.beat(2900, hb("w2", 1, &[]));
    let actions = sim.step(3000);
    assert_eq!(
        ends_of(&actions),
        vec![("s1".into(), EndReason::WorkerLost)]
    );
}

#[test]
fn draining_workers_get_no_restarts() {
    let mut sim = Sim::new(vec![restartable(record("s1", "w1", 1, SessionState::Live))]);
    sim.beat(0, hb("w1", 4, &[("s1", 1)]));
    let mut leaving = hb("w2", 4, &[]);
    leaving.draining = true;
    sim.beat(2900, leaving);
    assert_eq!(
        ends_of(&sim.step(3000)),
        vec![("s1".into(), EndReason::WorkerLost)]
    );
}

#[test]
fn a_session_past_its_lifetime_is_not_restarted() {
    let mut r = restartable(record("s1", "w1", 1, SessionState::Live));
    r.spec.max_lifetime = bus_schema::HumanDuration::new(secs(2)).unwrap();
    let mut sim = Sim::new(vec![r]);
    sim.beat(0, hb("w1", 4, &[("s1", 1)]));
    sim.beat(2900, hb("w2", 4, &[]));
    assert_eq!(
        ends_of(&sim.step(3000)),
        vec![("s1".into(), EndReason::MaxLifetime)]
    );
}

#[test]
fn a_reassigned_session_that_is_never_adopted_is_restarted_again() {
    let mut sim = Sim::new(vec![restartable(record("s1", "w1", 1, SessionState::Live))]);
    sim.beat(0, hb("w1", 4, &[("s1", 1)]));
    sim.beat(2900, hb("w2", 4, &[]));
    sim.beat(2900, hb("w3", 4, &[("x", 1)]));
    sim.step(3000);
    assert_eq!(sim.reg.get("s1").owner, wid("w2"));
    // The adopt request failed: w2 keeps heartbeating without s1.
    let mut moved_again = None;
    for i in 1..=8 {
        let at = 3000 + i * 1000;
        sim.beat(at - 100, hb("w2", 4, &[]));
        sim.beat(at - 100, hb("w3", 4, &[("x", 1)]));
        let actions = sim.step(at);
        if !session_actions(&actions).is_empty() {
            moved_again = Some((at, actions));
            break;
        }
    }
    let (at, actions) = moved_again.expect("handled");
    assert!(at >= 6000, "not before 3 heartbeat intervals: {at}");
    assert!(
        matches!(&actions[0], Action::Reassign { from, to, new_epoch: 3, .. } if *from == wid("w2") && *to == wid("w3")),
        "{actions:?}"
    );
}

// ------------------------------------------------------------ owner alive, session not reported

#[test]
fn a_starting_entry_its_live_owner_never_reports_ends_after_the_grace() {
    let mut sim = Sim::new(vec![record("s1", "w1", 1, SessionState::Starting)]);
    let mut ended_at = None;
    for i in 0..10 {
        let at = i * 1000;
        sim.beat(at, hb("w1", 4, &[]));
        let actions = sim.step(at + 500);
        if !actions.is_empty() {
            assert_eq!(
                ends_of(&actions),
                vec![("s1".into(), EndReason::WorkerLost)]
            );
            ended_at = Some(at + 500);
            break;
        }
    }
    // First noticed at 500 ms; 3 heartbeat intervals later.
    assert_eq!(ended_at, Some(3500));
    match &sim.reg.get("s1").ended {
        Some(e) => assert!(e
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("does not report")),
        None => panic!("not ended"),
    }
}

#[test]
fn a_session_that_shows_up_in_heartbeats_within_the_grace_is_left_alone() {
    let mut sim = Sim::new(vec![record("s1", "w1", 1, SessionState::Starting)]);
    sim.beat(0, hb("w1", 4, &[]));
    sim.step(500);
    sim.beat(1000, hb("w1", 4, &[]));
    sim.step(1500);
    for i in 2..10 {
        sim.beat(i * 1000, hb("w1", 4, &[("s1", 1)]));
        assert!(sim.step(i * 1000 + 500).is_empty());
    }
}

#[test]
fn missing_needs_new_heartbeats_not_just_time() {
    let mut sim = Sim::new(vec![record("s1", "w1", 1, SessionState::Starting)]);
    sim.beat(0, hb("w1", 4, &[]));
    sim.step(100);
    sim.beat(1000, hb("w1", 4, &[]));
    // 3 s pass with a single heartbeat after the entry was noticed: the
    // janitor has not seen enough to conclude.
    assert!(sim.step(2900).is_empty());
    sim.beat(3000, hb("w1", 4, &[]));
    assert_eq!(
        ends_of(&sim.step(3100)),
        vec![("s1".into(), EndReason::WorkerLost)]
    );
}

#[test]
fn a_live_owner_reporting_another_epoch_does_not_count() {
    let mut sim = Sim::new(vec![record("s1", "w1", 2, SessionState::Live)]);
    for i in 0..4 {
        sim.beat(i * 1000, hb("w1", 4, &[("s1", 1)]));
        sim.step(i * 1000 + 500);
    }
    assert_eq!(sim.reg.get("s1").state, SessionState::Ended);
}

#[test]
fn an_unreported_restartable_session_moves_to_another_worker() {
    let mut sim = Sim::new(vec![restartable(record("s1", "w1", 1, SessionState::Live))]);
    let mut moved = None;
    for i in 0..6 {
        let at = i * 1000;
        // w1 is the emptiest but is the one that does not run it.
        sim.beat(at, hb("w1", 8, &[]));
        sim.beat(at, hb("w2", 4, &[("a", 1)]));
        let actions = sim.step(at + 500);
        if !session_actions(&actions).is_empty() {
            moved = Some(actions);
            break;
        }
    }
    let actions = moved.expect("moved");
    assert!(
        matches!(&actions[0], Action::Reassign { from, to, new_epoch: 2, .. } if *from == wid("w1") && *to == wid("w2"))
    );
    // A live worker is not lost: no announcement.
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::AnnounceLost { .. })));
}

#[test]
fn a_moved_session_never_adopted_by_the_only_live_worker_is_adopted_again_not_ended() {
    // A janitor moved s1 to w2 and died before its adopt request went out:
    // w2 is alive with room, the only worker, and never reports s1.
    let mut sim = Sim::new(vec![restartable(record(
        "s1",
        "w2",
        2,
        SessionState::Starting,
    ))]);
    let mut handled = None;
    for i in 0..8 {
        let at = i * 1000;
        sim.beat(at, hb("w2", 4, &[("a", 1)]));
        let actions = sim.step(at + 500);
        if !session_actions(&actions).is_empty() {
            handled = Some(actions);
            break;
        }
    }
    let actions = handled.expect("handled");
    assert!(
        matches!(&actions[0], Action::Reassign { from, to, new_epoch: 3, .. } if *from == wid("w2") && *to == wid("w2")),
        "{actions:?}"
    );
    assert_eq!(sim.reg.get("s1").state, SessionState::Starting);
    assert_eq!(sim.reg.get("s1").epoch, 3);
}

#[test]
fn an_unreported_session_of_a_full_owner_with_no_other_worker_ends() {
    let mut sim = Sim::new(vec![restartable(record("s1", "w1", 1, SessionState::Live))]);
    let mut ended = Vec::new();
    for i in 0..8 {
        let at = i * 1000;
        sim.beat(at, hb("w1", 2, &[("a", 1), ("b", 1)]));
        ended = ends_of(&sim.step(at + 500));
        if !ended.is_empty() {
            break;
        }
    }
    assert_eq!(ended, vec![("s1".into(), EndReason::WorkerLost)]);
}

// ------------------------------------------------------------ fencing

fn fences(actions: &[Action]) -> Vec<(String, String, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Fence { worker, id, epoch } => {
                Some((worker.to_string(), id.to_string(), *epoch))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_heartbeat_listing_an_unknown_session_is_fenced_after_two_heartbeats_and_the_grace() {
    let mut sim = Sim::new(vec![]);
    sim.beat(0, hb("w1", 4, &[("gone", 3)]));
    assert!(sim.step(500).is_empty());
    // The same heartbeat judged again later is not a second sighting.
    assert!(sim.step(1600).is_empty());
    sim.beat(2000, hb("w1", 4, &[("gone", 3)]));
    assert_eq!(
        fences(&sim.step(2500)),
        vec![("w1".into(), "gone".into(), 3)]
    );
}

#[test]
fn a_heartbeat_newer_than_the_snapshot_is_not_judged() {
    // The worker created s1 after the registry read started: the snapshot
    // does not have it, the heartbeat does.
    let mut sim = Sim::new(vec![]);
    for i in 0..5 {
        let read = i * 1000;
        sim.beat(read + 100, hb("w1", 4, &[("s1", 1)]));
        assert!(
            sim.plan_read_at(read + 300, read).actions.is_empty(),
            "scan {i}"
        );
    }
}

#[test]
fn a_create_racing_the_scan_is_never_fenced() {
    let mut sim = Sim::new(vec![]);
    // Scan at 0 reads the registry before the create; the worker writes,
    // starts and heartbeats at 200; the plan runs at 300.
    sim.reg.put(record("s1", "w1", 1, SessionState::Starting));
    sim.beat(200, hb("w1", 4, &[("s1", 1)]));
    let plan = {
        let snapshot = Snapshot {
            entries: vec![],
            read_at: sim.t(0),
        };
        sim.core.plan(sim.t(300), sim.wall(300), &snapshot)
    };
    assert!(plan.actions.is_empty());
    for i in 1..6 {
        sim.beat(i * 1000 + 200, hb("w1", 4, &[("s1", 1)]));
        assert!(sim.step(i * 1000 + 500).is_empty());
    }
}

#[test]
fn a_worker_still_running_a_session_given_away_is_fenced_with_its_epoch() {
    let mut sim = Sim::new(vec![record("s1", "w2", 4, SessionState::Live)]);
    let mut all = Vec::new();
    for i in 0..3 {
        sim.beat(i * 1000 + 100, hb("w1", 4, &[("s1", 3)]));
        sim.beat(i * 1000 + 100, hb("w2", 4, &[("s1", 4)]));
        all.extend(sim.step(i * 1000 + 500));
    }
    assert_eq!(fences(&all), vec![("w1".into(), "s1".into(), 3)]);
}

#[test]
fn a_worker_still_listing_an_ended_session_is_fenced() {
    let ended = ended_record(
        &record("s1", "w1", 1, SessionState::Live),
        EndReason::Stopped,
        "stop",
        wall0(),
    );
    let mut sim = Sim::new(vec![ended]);
    sim.beat(0, hb("w1", 4, &[("s1", 1)]));
    sim.step(500);
    sim.beat(1000, hb("w1", 4, &[("s1", 1)]));
    assert_eq!(fences(&sim.step(1500)), vec![("w1".into(), "s1".into(), 1)]);
}

#[test]
fn a_fence_is_repeated_only_after_another_grace() {
    let mut sim = Sim::new(vec![]);
    let mut fenced_at = Vec::new();
    for i in 0..8 {
        let at = i * 500;
        sim.beat(at, hb("w1", 4, &[("gone", 1)]));
        if !fences(&sim.step(at + 250)).is_empty() {
            fenced_at.push(at + 250);
        }
    }
    assert_eq!(fenced_at, vec![1250, 2250, 3250]);
}

#[test]
fn a_worker_that_stops_listing_the_session_is_left_alone() {
    let mut sim = Sim::new(vec![]);
    sim.beat(0, hb("w1", 4, &[("gone", 1)]));
    sim.step(500);
    sim.beat(1000, hb("w1", 4, &[]));
    for i in 1..5 {
        sim.beat(i * 1000, hb("w1", 4, &[]));
        assert!(sim.step(i * 1000 + 500).is_empty());
    }
}

#[test]
fn a_revived_worker_is_fenced_off_the_sessions_handed_away() {
    let mut sim = Sim::new(vec![restartable(record("s1", "w1", 1, SessionState::Live))]);
    sim.beat(0, hb("w1", 4, &[("s1", 1)]));
    sim.beat(2900, hb("w2", 4, &[]));
    sim.step(3000);
    assert_eq!(sim.reg.get("s1").owner, wid("w2"));
    // The partition heals: w1 heartbeats with its old copy.
    let mut all = Vec::new();
    for i in 0..3 {
        let at = 3500 + i * 1000;
        sim.beat(at, hb("w1", 4, &[("s1", 1)]));
        sim.beat(at, hb("w2", 4, &[("s1", 2)]));
        all.extend(sim.step(at + 200));
    }
    assert!(sim.core.liveness().is_alive(&wid("w1")));
    assert_eq!(fences(&all), vec![("w1".into(), "s1".into(), 1)]);
    assert!(session_actions(&all).is_empty(), "{all:?}");
}

// ------------------------------------------------------------ retention and lifetime

#[test]
fn ended_entries_are_purged_after_the_retention_and_not_before() {
    let ended = ended_record(
        &record("s1", "w1", 1, SessionState::Live),
        EndReason::Stopped,
        "stop",
        wall0(),
    );
    let mut sim = Sim::new(vec![ended]);
    assert!(sim.step(599_999).is_empty());
    assert_eq!(
        sim.step(600_000),
        vec![Action::Purge {
            id: sid("s1"),
            expected_revision: 1
        }]
    );
    assert!(sim.reg.entries.is_empty());
}

#[test]
fn an_ended_entry_without_end_details_ages_from_its_last_update() {
    let mut r = record("s1", "w1", 1, SessionState::Ended);
    r.updated_at = bus_schema::Timestamp::from_system(wall0() + secs(100));
    let mut sim = Sim::new(vec![r]);
    assert!(sim.step(699_999).is_empty());
    assert_eq!(sim.step(700_000).len(), 1);
}

#[test]
fn a_session_past_max_lifetime_and_grace_is_ended_as_a_backstop() {
    let mut r = record("s1", "w1", 1, SessionState::Live);
    r.spec.max_lifetime = bus_schema::HumanDuration::new(secs(60)).unwrap();
    let mut sim = Sim::new(vec![r]);
    let mut at = 0;
    while at < 90_000 {
        sim.beat(at, hb("w1", 4, &[("s1", 1)]));
        if at + 500 < 90_000 {
            assert!(sim.step(at + 500).is_empty(), "at {at}");
        }
        at += 1000;
    }
    assert_eq!(
        ends_of(&sim.step(90_000)),
        vec![("s1".into(), EndReason::MaxLifetime)]
    );
}

// ------------------------------------------------------------ worker lost announcements

fn announcements(actions: &[Action]) -> Vec<(WorkerId, Vec<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::AnnounceLost {
                worker, sessions, ..
            } => Some((
                worker.clone(),
                sessions.iter().map(|s| s.to_string()).collect(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_dead_worker_is_announced_once_with_the_sessions_reaped() {
    let mut sim = Sim::new(vec![
        record("s1", "w1", 1, SessionState::Live),
        record("s2", "w1", 1, SessionState::Live),
        record("s3", "w2", 1, SessionState::Live),
    ]);
    sim.beat(0, hb("w1", 4, &[("s1", 1), ("s2", 1)]));
    for i in 0..6 {
        sim.beat(i * 1000, hb("w2", 4, &[("s3", 1)]));
    }
    let actions = sim.step(3000);
    assert_eq!(
        announcements(&actions),
        vec![(wid("w1"), vec!["s1".into(), "s2".into()])]
    );
    assert!(
        matches!(actions.last(), Some(Action::AnnounceLost { .. })),
        "announcements come last"
    );
    assert!(announcements(&sim.step(4000)).is_empty());
    assert!(announcements(&sim.step(5000)).is_empty());
}

#[test]
fn a_dead_worker_that_held_nothing_is_announced() {
    let mut sim = Sim::new(vec![]);
    sim.beat(0, hb("w1", 4, &[]));
    assert_eq!(announcements(&sim.step(3000)), vec![(wid("w1"), vec![])]);
}

#[test]
fn a_worker_that_drained_and_left_is_not_announced() {
    let mut sim = Sim::new(vec![]);
    let mut last = hb("w1", 4, &[]);
    last.draining = true;
    sim.beat(0, last);
    let plan = sim.plan(3000);
    assert_eq!(plan.newly_dead, vec![wid("w1")]);
    assert!(plan.actions.is_empty());
}

#[test]
fn a_worker_whose_sessions_another_janitor_reaped_is_not_announced_again() {
    let mut sim = Sim::new(vec![record("s1", "w1", 1, SessionState::Live)]);
    sim.beat(0, hb("w1", 4, &[("s1", 1)]));
    // Another janitor ended s1 first.
    let other = ended_record(sim.reg.get("s1"), EndReason::WorkerLost, "x", wall0());
    sim.reg.put(other);
    assert!(sim.step(3000).is_empty());
}

#[test]
fn an_unknown_owner_is_announced_with_its_last_registry_write() {
    let mut r = record("s1", "ghost", 1, SessionState::Live);
    r.updated_at = bus_schema::Timestamp::from_system(wall0() + secs(7));
    let mut sim = Sim::new(vec![r]);
    sim.step(0);
    let actions = sim.step(3000);
    match actions.last() {
        Some(Action::AnnounceLost {
            worker,
            last_seen,
            sessions,
        }) => {
            assert_eq!(worker, &wid("ghost"));
            assert_eq!(last_seen.system(), wall0() + secs(7));
            assert_eq!(sessions, &vec![sid("s1")]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_worker_that_dies_twice_is_announced_twice() {
    let mut sim = Sim::new(vec![]);
    sim.beat(0, hb("w1", 4, &[]));
    assert_eq!(announcements(&sim.step(3000)).len(), 1);
    sim.beat(4000, hb("w1", 4, &[]));
    assert!(sim.step(4500).is_empty());
    assert_eq!(announcements(&sim.step(7000)).len(), 1);
}

// ------------------------------------------------------------ several janitors

#[test]
fn two_janitors_fed_the_same_inputs_plan_the_same_and_only_one_write_wins() {
    let records = vec![
        restartable(record("s1", "w1", 1, SessionState::Live)),
        record("s2", "w1", 1, SessionState::Live),
        ended_record(
            &record("s3", "w2", 1, SessionState::Live),
            EndReason::Stopped,
            "",
            wall0(),
        ),
    ];
    let t0 = Instant::now();
    let mut a = Core::new(t0, Timing::new(secs(1), secs(3), secs(60)));
    let mut b = a.clone();
    let beats = [
        (0, hb("w1", 4, &[("s1", 1), ("s2", 1)])),
        (0, hb("w2", 4, &[("stale", 9)])),
        (1000, hb("w2", 4, &[("stale", 9)])),
        (2000, hb("w3", 4, &[])),
        (2000, hb("w2", 4, &[("stale", 9)])),
    ];
    let mut reg = FakeRegistry::with(records);
    let mut plans = (Vec::new(), Vec::new());
    for at in [500, 1500, 2500, 3500, 61_000] {
        for (t, h) in &beats {
            if *t < at && *t + 1000 >= at {
                a.observe(t0 + ms(*t), h);
                b.observe(t0 + ms(*t), h);
            }
        }
        let snapshot = Snapshot {
            entries: reg.list(),
            read_at: t0 + ms(at),
        };
        let wall = wall0() + ms(at);
        let pa = a.plan(t0 + ms(at), wall, &snapshot);
        let pb = b.plan(t0 + ms(at), wall, &snapshot);
        assert_eq!(pa, pb, "at {at} ms");
        // Both apply; the registry's CAS lets only the first writer win.
        for action in &pa.actions {
            let first = reg.apply(action, wall);
            let second = reg.apply(action, wall);
            if first == Applied::Won {
                assert_eq!(second, Applied::LostRace, "{action:?}");
            }
        }
        plans.0.extend(pa.actions);
        plans.1.extend(pb.actions);
    }
    assert!(plans.0.iter().any(|a| matches!(a, Action::Reassign { .. })));
    assert!(plans.0.iter().any(|a| matches!(a, Action::End { .. })));
    assert!(plans.0.iter().any(|a| matches!(a, Action::Fence { .. })));
    assert!(plans.0.iter().any(|a| matches!(a, Action::Purge { .. })));
}

// ------------------------------------------------------------ record helpers

#[test]
fn reassigned_records_restart_under_the_new_owner_and_epoch() {
    let mut live = record("s1", "w1", 3, SessionState::Live);
    live.live_at = Some(bus_schema::Timestamp::from_system(wall0()));
    live.viewers = 2;
    let moved = reassigned_record(&live, &wid("w2"), 4, wall0() + secs(5));
    assert_eq!(
        (moved.owner.clone(), moved.epoch, moved.state),
        (wid("w2"), 4, SessionState::Starting)
    );
    assert_eq!(moved.live_at, None);
    assert_eq!(moved.viewers, 0);
    assert_eq!(moved.created_at, live.created_at);
    assert_eq!(moved.spec, live.spec);
    assert_eq!(moved.updated_at.system(), wall0() + secs(5));
}

#[test]
fn ended_records_carry_reason_time_and_detail_and_keep_the_owner() {
    let live = record("s1", "w1", 3, SessionState::Live);
    let ended = ended_record(
        &live,
        EndReason::WorkerLost,
        "worker w1 stopped heartbeating",
        wall0() + secs(9),
    );
    assert_eq!(ended.state, SessionState::Ended);
    assert_eq!((ended.owner.clone(), ended.epoch), (wid("w1"), 3));
    let e = ended.ended.unwrap();
    assert_eq!(e.reason, EndReason::WorkerLost);
    assert_eq!(e.at.system(), wall0() + secs(9));
    assert_eq!(e.detail.as_deref(), Some("worker w1 stopped heartbeating"));
}

#[test]
fn a_heartbeat_with_an_absurd_interval_only_delays_decisions() {
    let mut sim = Sim::new(vec![record("s1", "w1", 1, SessionState::Starting)]);
    for i in 0..6 {
        let mut h = hb("w1", 4, &[("ghost", 1)]);
        h.interval_ms = u64::MAX;
        sim.beat(i * 1000, h);
        assert!(sim.step(i * 1000 + 500).is_empty());
    }
}
