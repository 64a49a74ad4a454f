//! The session core in simulated time: a [`Sim`] drives it from deadline to
//! deadline, as the session task does, and records each effect with the
//! instant it came at.

use super::*;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn timing() -> Timing {
    Timing {
        idle_ttl: 30 * S,
        max_lifetime: 600 * S,
        first_frame: 10 * S,
        connect: 20 * S,
        input_sweep: 5 * S,
        resume_check: 100 * MS,
        max_suspension: 60 * S,
    }
}

fn peer(p: &str) -> PeerId {
    PeerId::parse(p).unwrap()
}

struct Sim {
    t0: Instant,
    now: Instant,
    core: SessionCore,
    /// Every effect so far, with its time since `t0`.
    log: Vec<(Duration, Effect)>,
}

impl Sim {
    fn new(timing: Timing) -> Self {
        let t0 = Instant::now();
        Self {
            t0,
            now: t0,
            core: SessionCore::new(t0, timing),
            log: Vec::new(),
        }
    }

    /// A session that went live at t0.
    fn live(timing: Timing) -> Self {
        let mut sim = Self::new(timing);
        assert_eq!(sim.event(Event::FirstFrame), [Effect::MarkLive]);
        assert_eq!(
            sim.event(Event::LiveRecorded { ok: true }),
            [Effect::AnswerLive]
        );
        sim
    }

    fn at(&self) -> Duration {
        self.now - self.t0
    }

    fn event(&mut self, e: Event) -> Vec<Effect> {
        let out = self.core.handle(self.now, e);
        let at = self.at();
        self.log.extend(out.iter().map(|e| (at, e.clone())));
        out
    }

    /// Ticks at every deadline up to `t0 + until` (as the driver sleeps to
    /// each), then moves the clock there.
    fn run_until(&mut self, until: Duration) {
        let end = self.t0 + until;
        while let Some(d) = self.core.deadline() {
            if d > end {
                break;
            }
            assert!(
                d >= self.now,
                "a deadline in the past: {d:?} < {:?}",
                self.now
            );
            self.now = d;
            let out = self.core.tick(d);
            let at = self.at();
            self.log.extend(out.into_iter().map(|e| (at, e)));
        }
        self.now = self.now.max(end);
    }

    /// The end, if any, and when.
    fn ended(&self) -> Option<(Duration, Outcome)> {
        self.log.iter().find_map(|(t, e)| match e {
            Effect::End(o) => Some((*t, o.clone())),
            _ => None,
        })
    }

    fn count(&self, what: impl Fn(&Effect) -> bool) -> usize {
        self.log.iter().filter(|(_, e)| what(e)).count()
    }
}

#[test]
fn a_source_without_a_first_frame_fails_at_the_first_frame_deadline() {
    let mut sim = Sim::new(timing());
    sim.run_until(10 * S - MS);
    assert_eq!(sim.ended(), None);
    sim.run_until(11 * S);
    assert_eq!(
        sim.ended(),
        Some((
            10 * S,
            Outcome::End(
                EndReason::SourceFailed,
                Some("no frame within the first-frame deadline".into())
            )
        ))
    );
    assert_eq!(sim.core.deadline(), None, "no deadline once ended");
}

#[test]
fn the_first_frame_is_recorded_live_once_then_answered() {
    let mut sim = Sim::new(timing());
    sim.now += 2 * S;
    assert_eq!(sim.event(Event::FirstFrame), [Effect::MarkLive]);
    assert_eq!(
        sim.event(Event::FirstFrame),
        [],
        "one write, however many frames"
    );
    assert!(!sim.core.is_live(), "live only once recorded");
    assert_eq!(
        sim.event(Event::LiveRecorded { ok: true }),
        [Effect::AnswerLive]
    );
    assert!(sim.core.is_live());
    sim.run_until(20 * S);
    assert_eq!(
        sim.ended(),
        None,
        "the first-frame deadline is gone once live"
    );
}

#[test]
fn a_live_write_the_registry_refuses_ends_fenced() {
    let mut sim = Sim::new(timing());
    sim.event(Event::FirstFrame);
    assert_eq!(
        sim.event(Event::LiveRecorded { ok: false }),
        [Effect::End(Outcome::Fenced)]
    );
    assert!(sim.core.is_ended());
}

#[test]
fn a_headless_session_idles_out_from_creation_and_keepalives_postpone_it() {
    let mut sim = Sim::live(timing());
    sim.run_until(20 * S);
    sim.event(Event::Keepalive);
    sim.run_until(49 * S);
    assert_eq!(sim.ended(), None, "kept alive at 20 s: idle until 50 s");
    sim.run_until(60 * S);
    assert_eq!(
        sim.ended(),
        Some((50 * S, Outcome::End(EndReason::IdleTimeout, None)))
    );
}

#[test]
fn viewers_hold_the_idle_clock_until_the_last_leaves() {
    let mut sim = Sim::live(timing());
    sim.now += S;
    sim.event(Event::ViewerJoined(peer("a")));
    sim.event(Event::ViewerConnected(peer("a")));
    sim.event(Event::ViewerJoined(peer("b")));
    sim.event(Event::ViewerConnected(peer("b")));
    sim.run_until(100 * S);
    assert_eq!(sim.ended(), None, "watched sessions do not idle out");
    sim.event(Event::ViewerLeft(peer("a")));
    sim.run_until(200 * S);
    assert_eq!(sim.ended(), None, "one viewer still attached");
    sim.event(Event::ViewerLeft(peer("b")));
    sim.event(Event::ViewerLeft(peer("b")));
    sim.run_until(300 * S);
    assert_eq!(
        sim.ended(),
        Some((230 * S, Outcome::End(EndReason::IdleTimeout, None))),
        "idle from the last leave; a repeated leave changes nothing"
    );
}

#[test]
fn the_lifetime_ends_even_a_watched_session_and_beats_idleness_in_a_tie() {
    let mut sim = Sim::live(timing());
    sim.event(Event::ViewerJoined(peer("a")));
    sim.event(Event::ViewerConnected(peer("a")));
    sim.run_until(700 * S);
    assert_eq!(
        sim.ended(),
        Some((600 * S, Outcome::End(EndReason::MaxLifetime, None)))
    );

    let mut tie = Sim::live(Timing {
        idle_ttl: 30 * S,
        max_lifetime: 30 * S,
        ..timing()
    });
    tie.run_until(40 * S);
    assert_eq!(
        tie.ended(),
        Some((30 * S, Outcome::End(EndReason::MaxLifetime, None)))
    );
}

#[test]
fn a_lost_lease_pauses_once_checks_every_period_and_resumes_when_still_ours() {
    let mut sim = Sim::live(timing());
    sim.now += 3 * S;
    assert_eq!(sim.event(Event::LeaseLost), [Effect::PauseMedia]);
    assert_eq!(sim.event(Event::LeaseLost), [], "already suspended");
    assert!(sim.core.is_suspended());
    sim.run_until(3 * S + 450 * MS);
    assert_eq!(
        sim.count(|e| *e == Effect::CheckResume),
        4,
        "a check every 100 ms"
    );
    assert_eq!(
        sim.event(Event::ResumeChecked(ResumeCheck::LeaseStillLost)),
        []
    );
    assert_eq!(sim.event(Event::ResumeChecked(ResumeCheck::Unreadable)), []);
    assert!(sim.core.is_suspended());
    assert_eq!(
        sim.event(Event::ResumeChecked(ResumeCheck::StillOurs)),
        [Effect::ResumeMedia]
    );
    assert!(!sim.core.is_suspended());
    let checks = sim.count(|e| *e == Effect::CheckResume);
    sim.run_until(10 * S);
    assert_eq!(
        sim.count(|e| *e == Effect::CheckResume),
        checks,
        "no checks once resumed"
    );
    assert_eq!(
        sim.event(Event::ResumeChecked(ResumeCheck::GivenAway)),
        [],
        "a late answer after resuming is ignored"
    );
    assert_eq!(sim.ended(), None);
}

#[test]
fn a_session_given_away_while_suspended_ends_fenced() {
    let mut sim = Sim::live(timing());
    sim.event(Event::LeaseLost);
    sim.run_until(100 * MS);
    assert_eq!(
        sim.event(Event::ResumeChecked(ResumeCheck::GivenAway)),
        [Effect::End(Outcome::Fenced)]
    );
}

#[test]
fn a_suspension_past_its_maximum_ends_as_lease_lost() {
    let mut sim = Sim::live(timing());
    // A watched session, so the idle clock stays out of it.
    sim.event(Event::ViewerJoined(peer("a")));
    sim.event(Event::ViewerConnected(peer("a")));
    sim.now += 5 * S;
    sim.event(Event::LeaseLost);
    sim.run_until(5 * S + 60 * S - MS);
    assert_eq!(sim.ended(), None);
    sim.run_until(70 * S);
    assert_eq!(sim.ended(), Some((65 * S, Outcome::LeaseLost)));
    assert_eq!(Outcome::LeaseLost.reason(), EndReason::WorkerLost);
}

#[test]
fn the_idle_ttl_runs_on_while_suspended() {
    let mut sim = Sim::live(timing());
    sim.event(Event::LeaseLost);
    sim.run_until(40 * S);
    assert_eq!(
        sim.ended(),
        Some((30 * S, Outcome::End(EndReason::IdleTimeout, None)))
    );
}

#[test]
fn fence_stop_shutdown_and_source_exit_end_at_once() {
    let cases = [
        (Event::Fence, Outcome::Fenced),
        (
            Event::Stop {
                detail: Some("desktop closed".into()),
            },
            Outcome::End(EndReason::Stopped, Some("desktop closed".into())),
        ),
        (
            Event::Shutdown,
            Outcome::End(EndReason::WorkerShutdown, None),
        ),
        (
            Event::SourceExited {
                detail: "encoder died".into(),
            },
            Outcome::End(EndReason::SourceFailed, Some("encoder died".into())),
        ),
    ];
    for (event, outcome) in cases {
        let mut sim = Sim::live(timing());
        sim.now += 7 * S;
        assert_eq!(sim.event(event), [Effect::End(outcome.clone())]);
        assert_eq!(sim.event(Event::Stop { detail: None }), [], "ended once");
        assert_eq!(sim.core.tick(sim.now + 1000 * S), []);
    }
}

#[test]
fn a_stop_that_races_the_first_frame_ends_stopped_and_the_frame_is_ignored() {
    let mut sim = Sim::new(timing());
    sim.now += 50 * MS;
    assert_eq!(
        sim.event(Event::Stop { detail: None }),
        [Effect::End(Outcome::End(EndReason::Stopped, None))]
    );
    assert_eq!(
        sim.event(Event::FirstFrame),
        [],
        "no live write after the end"
    );
    assert_eq!(sim.event(Event::LiveRecorded { ok: true }), []);
    assert!(!sim.core.is_live());

    // And the other order: the frame is being recorded when the stop comes.
    let mut sim = Sim::new(timing());
    assert_eq!(sim.event(Event::FirstFrame), [Effect::MarkLive]);
    assert_eq!(
        sim.event(Event::Stop { detail: None }),
        [Effect::End(Outcome::End(EndReason::Stopped, None))]
    );
    assert_eq!(
        sim.event(Event::LiveRecorded { ok: true }),
        [],
        "no answer after the end"
    );
}

#[test]
fn a_viewer_that_never_connects_is_dropped_at_its_connect_deadline() {
    let mut sim = Sim::live(timing());
    sim.now += 2 * S;
    sim.event(Event::ViewerJoined(peer("slow")));
    sim.now += S;
    sim.event(Event::ViewerJoined(peer("fine")));
    sim.event(Event::ViewerConnected(peer("fine")));
    sim.run_until(22 * S - MS);
    assert_eq!(sim.count(|e| matches!(e, Effect::DropViewer(_))), 0);
    sim.run_until(100 * S);
    let drops: Vec<_> = sim
        .log
        .iter()
        .filter(|(_, e)| matches!(e, Effect::DropViewer(_)))
        .cloned()
        .collect();
    assert_eq!(drops, [(22 * S, Effect::DropViewer(peer("slow")))]);
    assert_eq!(sim.core.viewers(), 1);
    assert_eq!(
        sim.ended(),
        None,
        "the connected viewer holds the idle clock"
    );
}

#[test]
fn the_last_viewer_dropped_for_not_connecting_starts_the_idle_clock() {
    let mut sim = Sim::live(timing());
    sim.event(Event::ViewerJoined(peer("ghost")));
    sim.run_until(100 * S);
    assert_eq!(
        sim.ended(),
        Some((50 * S, Outcome::End(EndReason::IdleTimeout, None))),
        "dropped at 20 s, idle 30 s from then"
    );
}

#[test]
fn silent_viewers_input_is_swept_every_period() {
    let mut sim = Sim::live(timing());
    sim.run_until(21 * S);
    let sweeps: Vec<Duration> = sim
        .log
        .iter()
        .filter(|(_, e)| *e == Effect::ExpireInput)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(sweeps, [5 * S, 10 * S, 15 * S, 20 * S]);
}

#[test]
fn deadlines_never_lie_in_the_past_and_ticks_between_them_do_nothing() {
    let mut sim = Sim::live(timing());
    sim.event(Event::ViewerJoined(peer("a")));
    sim.event(Event::LeaseLost);
    let d = sim.core.deadline().unwrap();
    assert_eq!(
        d,
        sim.t0 + 100 * MS,
        "the first resume check is the nearest"
    );
    assert_eq!(sim.core.tick(d - MS), [], "nothing due before the deadline");
}
