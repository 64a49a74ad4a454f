//! A session's lifecycle as a pure state machine.
//!
//! [`SessionCore`] is told what happened ([`Event`]) and what time it is,
//! and answers with what to do ([`Effect`]); [`SessionCore::deadline`] says
//! when to call [`SessionCore::tick`] next. It does no IO and reads no
//! clock; the task in `crate::session` feeds it and carries out its effects.
//!
//! The states and their deadlines:
//! - **Starting**, from creation until the first frame is recorded live in
//!   the registry: the source has [`Timing::first_frame`] to produce one
//!   ([`Event::FirstFrame`] → [`Effect::MarkLive`]; the write's result comes
//!   back as [`Event::LiveRecorded`] → [`Effect::AnswerLive`], or the end
//!   as fenced when the registry gave the session away meanwhile).
//! - **Live**: the TTL clocks run ([`SessionClock`]): the idle clock while
//!   no viewer is attached (reset by keepalives), the lifetime clock always.
//! - **Suspended** (orthogonal to the two above), from a lost lease
//!   ([`Event::LeaseLost`] → [`Effect::PauseMedia`]) until the registry is
//!   read and still gives the session to this worker under the same epoch
//!   ([`Effect::CheckResume`] every [`Timing::resume_check`], answered by
//!   [`Event::ResumeChecked`] → [`Effect::ResumeMedia`]), or until it gave
//!   it away (fenced), or [`Timing::max_suspension`] passed (lease lost).
//! - **Ended**: [`Effect::End`] with an [`Outcome`] was returned once; every
//!   later event is ignored and the deadline is gone.
//!
//! Besides: a viewer whose connection is not up [`Timing::connect`] after
//! joining is dropped ([`Effect::DropViewer`]), and every
//! [`Timing::input_sweep`] the input of silent viewers is released
//! ([`Effect::ExpireInput`]).
//!
//! The order of checks at one instant: an end by command or source wins
//! (it is handled when it arrives); at a tick the lifetime beats idleness
//! ([`SessionClock::expired`]), and a suspension that ran too long ends
//! before its registry check.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bus_schema::{EndReason, PeerId};

use super::SessionClock;

/// The session's fixed deadlines and periods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub idle_ttl: Duration,
    pub max_lifetime: Duration,
    /// How long a new source may take to produce its first frame.
    pub first_frame: Duration,
    /// How long a joined viewer may take to connect.
    pub connect: Duration,
    /// How often silent viewers' input is released.
    pub input_sweep: Duration,
    /// How often a suspended session asks whether it may resume.
    pub resume_check: Duration,
    /// The longest a session stays suspended before it ends.
    pub max_suspension: Duration,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// End and record the reason in the registry.
    End(EndReason, Option<String>),
    /// Stop streaming; the registry is someone else's now.
    Fenced,
    /// Suspended for too long: stop, and record `worker_lost` if possible.
    LeaseLost,
}

impl Outcome {
    /// The reason viewers and waiting callers are told.
    pub fn reason(&self) -> EndReason {
        match self {
            Outcome::End(r, _) => *r,
            Outcome::Fenced | Outcome::LeaseLost => EndReason::WorkerLost,
        }
    }
}

/// What a suspended session learned when it asked to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeCheck {
    /// The worker's lease is not back yet.
    LeaseStillLost,
    /// The registry could not be read.
    Unreadable,
    /// The registry still gives the session to this worker, same epoch.
    StillOurs,
    /// Another owner, another epoch, or ended.
    GivenAway,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The source produced its first frame (or is live on start).
    FirstFrame,
    /// The registry write marking the session live: done, or refused
    /// because the entry is no longer this worker's.
    LiveRecorded {
        ok: bool,
    },
    /// The source ended on its own.
    SourceExited {
        detail: String,
    },
    Stop {
        detail: Option<String>,
    },
    /// The registry gave the session away.
    Fence,
    /// The worker shuts down.
    Shutdown,
    Keepalive,
    /// The worker's lease ran out.
    LeaseLost,
    ResumeChecked(ResumeCheck),
    ViewerJoined(PeerId),
    ViewerConnected(PeerId),
    ViewerLeft(PeerId),
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write the session live into the registry, then report
    /// [`Event::LiveRecorded`].
    MarkLive,
    /// Tell the creator the session is live.
    AnswerLive,
    /// Stop sending media (sources and connections stay up).
    PauseMedia,
    /// Send media again, from a keyframe.
    ResumeMedia,
    /// Check the lease and the registry, then report [`Event::ResumeChecked`].
    CheckResume,
    /// Drop a viewer that never connected.
    DropViewer(PeerId),
    /// Release the input of viewers silent for too long.
    ExpireInput,
    /// The session is over: tear it down. Returned once.
    End(Outcome),
}

#[derive(Debug, Clone)]
struct ViewerSlot {
    joined_at: Instant,
    connected: bool,
}

#[derive(Debug, Clone)]
pub struct SessionCore {
    timing: Timing,
    clock: SessionClock,
    /// Until the live write is done: the first frame must come by then.
    starting_until: Option<Instant>,
    /// Waiting for the live write's result.
    marking_live: bool,
    /// Suspended since, and the next registry check.
    suspended: Option<(Instant, Instant)>,
    viewers: BTreeMap<PeerId, ViewerSlot>,
    next_sweep: Instant,
    ended: bool,
}

impl SessionCore {
    /// A session created at `now`, waiting for its source's first frame.
    pub fn new(now: Instant, timing: Timing) -> Self {
        Self {
            clock: SessionClock::new(now, timing.idle_ttl, timing.max_lifetime),
            starting_until: Some(now + timing.first_frame),
            marking_live: false,
            suspended: None,
            viewers: BTreeMap::new(),
            next_sweep: now + timing.input_sweep,
            ended: false,
            timing,
        }
    }

    pub fn is_live(&self) -> bool {
        self.starting_until.is_none() && !self.ended
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended.is_some()
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Viewers attached, connected or not.
    pub fn viewers(&self) -> usize {
        self.viewers.len()
    }

    /// The next instant at which [`Self::tick`] has something to do; `None`
    /// once ended.
    pub fn deadline(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let mut d = self.clock.deadline().min(self.next_sweep);
        if let Some(until) = self.starting_until {
            d = d.min(until);
        }
        if let Some((_, check)) = self.suspended {
            d = d.min(check);
        }
        let connect = self.timing.connect;
        for v in self.viewers.values().filter(|v| !v.connected) {
            d = d.min(v.joined_at + connect);
        }
        Some(d)
    }

    /// Time passed: whatever is due at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        if self.ended {
            return Vec::new();
        }
        if let Some(reason) = self.clock.expired(now) {
            return self.end(Outcome::End(reason, None));
        }
        if matches!(self.starting_until, Some(until) if now >= until) {
            return self.end(Outcome::End(
                EndReason::SourceFailed,
                Some("no frame within the first-frame deadline".into()),
            ));
        }
        let mut out = Vec::new();
        if let Some((since, check)) = self.suspended {
            if now.saturating_duration_since(since) >= self.timing.max_suspension {
                return self.end(Outcome::LeaseLost);
            }
            if now >= check {
                self.suspended = Some((since, now + self.timing.resume_check));
                out.push(Effect::CheckResume);
            }
        }
        let connect = self.timing.connect;
        let stale: Vec<PeerId> = self
            .viewers
            .iter()
            .filter(|(_, v)| !v.connected && now >= v.joined_at + connect)
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            // Dropped now; the driver's removal reports no second leave.
            self.remove_viewer(now, &p);
            out.push(Effect::DropViewer(p));
        }
        if now >= self.next_sweep {
            self.next_sweep = now + self.timing.input_sweep;
            out.push(Effect::ExpireInput);
        }
        out
    }

    /// Something happened at `now`.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Effect> {
        if self.ended {
            return Vec::new();
        }
        match event {
            Event::FirstFrame => {
                if self.starting_until.is_some() && !self.marking_live {
                    self.marking_live = true;
                    return vec![Effect::MarkLive];
                }
            }
            Event::LiveRecorded { ok } => {
                if !self.marking_live {
                    return Vec::new();
                }
                self.marking_live = false;
                if !ok {
                    return self.end(Outcome::Fenced);
                }
                self.starting_until = None;
                return vec![Effect::AnswerLive];
            }
            Event::SourceExited { detail } => {
                return self.end(Outcome::End(EndReason::SourceFailed, Some(detail)));
            }
            Event::Stop { detail } => return self.end(Outcome::End(EndReason::Stopped, detail)),
            Event::Fence => return self.end(Outcome::Fenced),
            Event::Shutdown => return self.end(Outcome::End(EndReason::WorkerShutdown, None)),
            Event::Keepalive => self.clock.keepalive(now),
            Event::LeaseLost => {
                if self.suspended.is_none() {
                    self.suspended = Some((now, now + self.timing.resume_check));
                    return vec![Effect::PauseMedia];
                }
            }
            Event::ResumeChecked(check) => {
                if self.suspended.is_none() {
                    return Vec::new();
                }
                match check {
                    ResumeCheck::StillOurs => {
                        self.suspended = None;
                        return vec![Effect::ResumeMedia];
                    }
                    ResumeCheck::GivenAway => return self.end(Outcome::Fenced),
                    ResumeCheck::LeaseStillLost | ResumeCheck::Unreadable => {}
                }
            }
            Event::ViewerJoined(peer) => {
                if !self.viewers.contains_key(&peer) {
                    self.clock.viewer_joined(now);
                    self.viewers.insert(
                        peer,
                        ViewerSlot {
                            joined_at: now,
                            connected: false,
                        },
                    );
                }
            }
            Event::ViewerConnected(peer) => {
                if let Some(v) = self.viewers.get_mut(&peer) {
                    v.connected = true;
                }
            }
            Event::ViewerLeft(peer) => self.remove_viewer(now, &peer),
        }
        Vec::new()
    }

    fn remove_viewer(&mut self, now: Instant, peer: &PeerId) {
        if self.viewers.remove(peer).is_some() {
            self.clock.viewer_left(now);
        }
    }

    fn end(&mut self, outcome: Outcome) -> Vec<Effect> {
        self.ended = true;
        vec![Effect::End(outcome)]
    }
}

#[cfg(test)]
mod tests;
