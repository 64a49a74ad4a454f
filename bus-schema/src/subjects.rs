//! Every NATS subject of the system, spelled here and nowhere else.
//!
//! Layout: `<prefix>.v1.<noun>.<id>.<verb>`. The prefix (default `streams`)
//! lets several deployments share one NATS account; `v1` changes only when a
//! message changes incompatibly. A subject is typed by the message it carries
//! ([`Subject<M>`]), so a call site cannot publish the wrong payload on it.

use std::fmt;
use std::marker::PhantomData;

use crate::error::{ErrorCode, WireError};
use crate::ids::{PeerId, SessionId, WorkerId};
use crate::messages::*;

/// The protocol version token present in every subject.
pub const VERSION: &str = "v1";
/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "streams";
/// The queue group every worker joins for cluster-wide commands.
pub const WORKER_QUEUE: &str = "workers";
/// The micro service name workers register under (`nats micro ls`).
pub const WORKER_SERVICE: &str = "stream-worker";

/// A concrete subject carrying messages of type `M`.
pub struct Subject<M> {
    name: String,
    _m: PhantomData<fn() -> M>,
}

impl<M> Subject<M> {
    fn new(name: String) -> Self {
        Self {
            name,
            _m: PhantomData,
        }
    }
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl<M> Clone for Subject<M> {
    fn clone(&self) -> Self {
        Self::new(self.name.clone())
    }
}

impl<M> fmt::Display for Subject<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl<M> fmt::Debug for Subject<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subject({})", self.name)
    }
}

/// The verbs a session answers to on its public subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionVerb {
    Get,
    Keepalive,
    Stop,
    Join,
    Input,
    Stats,
}

impl SessionVerb {
    pub const ALL: [SessionVerb; 6] = [
        SessionVerb::Get,
        SessionVerb::Keepalive,
        SessionVerb::Stop,
        SessionVerb::Join,
        SessionVerb::Input,
        SessionVerb::Stats,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SessionVerb::Get => "get",
            SessionVerb::Keepalive => "keepalive",
            SessionVerb::Stop => "stop",
            SessionVerb::Join => "join",
            SessionVerb::Input => "input",
            SessionVerb::Stats => "stats",
        }
    }
}

/// Builds every subject under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Subjects {
    /// A prefix is one or more dot-separated tokens of `A-Z a-z 0-9 - _`.
    pub fn new(prefix: &str) -> Result<Self, WireError> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "subject prefix {prefix:?} must be dot-separated tokens of A-Z a-z 0-9 - _"
                ),
            ));
        }
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn base(&self) -> String {
        format!("{}.{VERSION}", self.prefix)
    }

    /// The JetStream key-value bucket holding the session registry.
    pub fn registry_bucket(&self) -> String {
        format!("{}_sessions", self.prefix.replace('.', "_"))
    }

    // ---- cluster-wide commands (any worker answers, queue group) ----

    /// Create a session (idempotent by id). Reply: [`SessionInfo`].
    pub fn session_create(&self) -> Subject<CreateSession> {
        Subject::new(format!("{}.session.create", self.base()))
    }

    /// List sessions from the registry. Reply: [`SessionList`].
    pub fn session_list(&self) -> Subject<ListSessions> {
        Subject::new(format!("{}.session.list", self.base()))
    }

    /// Read one session. Reply: [`SessionInfo`].
    pub fn session_get(&self, id: &SessionId) -> Subject<GetSession> {
        Subject::new(format!("{}.session.{id}.get", self.base()))
    }

    /// Reset a session's idle clock. Reply: [`SessionInfo`].
    pub fn session_keepalive(&self, id: &SessionId) -> Subject<Keepalive> {
        Subject::new(format!("{}.session.{id}.keepalive", self.base()))
    }

    /// End a session with reason `stopped`. Reply: [`SessionInfo`].
    pub fn session_stop(&self, id: &SessionId) -> Subject<StopSession> {
        Subject::new(format!("{}.session.{id}.stop", self.base()))
    }

    /// Attach a viewer. Reply: [`Joined`].
    pub fn session_join(&self, id: &SessionId) -> Subject<JoinPeer> {
        Subject::new(format!("{}.session.{id}.join", self.base()))
    }

    /// Inject input as the backend. Reply: [`Ack`].
    pub fn session_input(&self, id: &SessionId) -> Subject<crate::input::InjectInput> {
        Subject::new(format!("{}.session.{id}.input", self.base()))
    }

    /// The owner's live view of a session. Reply: [`SessionStats`].
    pub fn session_stats(&self, id: &SessionId) -> Subject<GetStats> {
        Subject::new(format!("{}.session.{id}.stats", self.base()))
    }

    pub fn worker_stats(&self, w: &WorkerId, id: &SessionId) -> Subject<GetStats> {
        Subject::new(format!("{}.worker.{w}.session.{id}.stats", self.base()))
    }

    /// The wildcard a worker subscribes to for one verb of any session.
    pub fn session_verb_any(&self, verb: SessionVerb) -> String {
        format!("{}.session.*.{}", self.base(), verb.as_str())
    }

    /// Parses `<prefix>.v1.session.<id>.<verb>` (public) or
    /// `<prefix>.v1.worker.<wid>.session.<id>.<verb>` (direct), returning the
    /// session id. Invalid ids give `invalid_id`.
    pub fn session_id_in(&self, subject: &str) -> Result<SessionId, WireError> {
        let rest = subject
            .strip_prefix(&self.base())
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| {
                WireError::new(ErrorCode::InvalidRequest, "subject outside this prefix")
            })?;
        let tokens: Vec<&str> = rest.split('.').collect();
        let id = match tokens.as_slice() {
            ["session", id, _verb] => id,
            ["worker", _w, "session", id, _verb] => id,
            _ => {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("subject {subject:?} names no session"),
                ))
            }
        };
        SessionId::parse(*id)
    }

    // ---- worker-addressed commands ----

    /// A create already placed on this worker (no further placement).
    pub fn worker_create(&self, w: &WorkerId) -> Subject<CreateSession> {
        Subject::new(format!("{}.worker.{w}.session.create", self.base()))
    }

    pub fn worker_keepalive(&self, w: &WorkerId, id: &SessionId) -> Subject<Keepalive> {
        Subject::new(format!("{}.worker.{w}.session.{id}.keepalive", self.base()))
    }

    pub fn worker_stop(&self, w: &WorkerId, id: &SessionId) -> Subject<StopSession> {
        Subject::new(format!("{}.worker.{w}.session.{id}.stop", self.base()))
    }

    /// The janitor hands a session to this worker under a new epoch.
    /// Reply: [`SessionInfo`].
    pub fn worker_adopt(&self, w: &WorkerId, id: &SessionId) -> Subject<AdoptSession> {
        Subject::new(format!("{}.worker.{w}.session.{id}.adopt", self.base()))
    }

    /// The janitor tells a worker to stop a session the registry no longer
    /// gives it. Reply: [`Ack`].
    pub fn worker_fence(&self, w: &WorkerId, id: &SessionId) -> Subject<Fence> {
        Subject::new(format!("{}.worker.{w}.session.{id}.fence", self.base()))
    }

    pub fn worker_join(&self, w: &WorkerId, id: &SessionId) -> Subject<JoinPeer> {
        Subject::new(format!("{}.worker.{w}.session.{id}.join", self.base()))
    }

    pub fn worker_input(&self, w: &WorkerId, id: &SessionId) -> Subject<crate::input::InjectInput> {
        Subject::new(format!("{}.worker.{w}.session.{id}.input", self.base()))
    }

    /// Viewer to worker signalling for one peer. Reply: [`Ack`].
    pub fn worker_peer(&self, w: &WorkerId, id: &SessionId, peer: &PeerId) -> Subject<PeerSignal> {
        Subject::new(format!(
            "{}.worker.{w}.session.{id}.peer.{peer}",
            self.base()
        ))
    }

    /// Wildcard over every peer signal to one worker.
    pub fn worker_peer_any(&self, w: &WorkerId) -> String {
        format!("{}.worker.{w}.session.*.peer.*", self.base())
    }

    /// Worker to viewer signalling; the api serving the viewer subscribes.
    pub fn peer_out(&self, peer: &PeerId) -> Subject<ToPeer> {
        Subject::new(format!("{}.peer.{peer}.out", self.base()))
    }

    /// Parses `<prefix>.v1.worker.<w>.session.<id>.peer.<peer>`.
    pub fn peer_in(&self, subject: &str) -> Result<(SessionId, PeerId), WireError> {
        let rest = subject
            .strip_prefix(&self.base())
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| {
                WireError::new(ErrorCode::InvalidRequest, "subject outside this prefix")
            })?;
        match rest.split('.').collect::<Vec<_>>().as_slice() {
            ["worker", _w, "session", id, "peer", peer] => {
                Ok((SessionId::parse(*id)?, PeerId::parse(*peer)?))
            }
            _ => Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("subject {subject:?} names no peer"),
            )),
        }
    }

    /// Wildcard over one worker's per-session verb.
    pub fn worker_session_verb_any(&self, w: &WorkerId, verb: &str) -> String {
        format!("{}.worker.{w}.session.*.{verb}", self.base())
    }

    /// Worker liveness, published every heartbeat interval.
    pub fn heartbeat(&self, w: &WorkerId) -> Subject<Heartbeat> {
        Subject::new(format!("{}.worker.{w}.heartbeat", self.base()))
    }

    /// Every worker's heartbeat.
    pub fn heartbeat_any(&self) -> String {
        format!("{}.worker.*.heartbeat", self.base())
    }

    // ---- events ----

    pub fn event_session(&self, id: &SessionId, kind: SessionEventKind) -> Subject<SessionEvent> {
        Subject::new(format!(
            "{}.event.session.{id}.{}",
            self.base(),
            kind.as_str()
        ))
    }

    /// All events of one session.
    pub fn event_session_all(&self, id: &SessionId) -> String {
        format!("{}.event.session.{id}.*", self.base())
    }

    /// All session events.
    pub fn event_session_any(&self) -> String {
        format!("{}.event.session.>", self.base())
    }

    /// A session's merged input, published by its owner for a source that
    /// reads it from the bus (`rtp`).
    pub fn source_input(&self, id: &SessionId) -> Subject<crate::source_input::SourceInput> {
        Subject::new(format!("{}.source.{id}.input", self.base()))
    }

    /// Published by the janitor when it declares a worker dead.
    pub fn event_worker_lost(&self, w: &WorkerId) -> Subject<WorkerLost> {
        Subject::new(format!("{}.event.worker.{w}.lost", self.base()))
    }

    pub fn event_worker_any(&self) -> String {
        format!("{}.event.worker.>", self.base())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_versioned_under_the_prefix() {
        let s = Subjects::new("acme.streams").unwrap();
        let id = SessionId::parse("s1").unwrap();
        let w = WorkerId::parse("w1").unwrap();
        assert_eq!(
            s.session_create().as_str(),
            "acme.streams.v1.session.create"
        );
        assert_eq!(
            s.session_stop(&id).as_str(),
            "acme.streams.v1.session.s1.stop"
        );
        assert_eq!(
            s.heartbeat(&w).as_str(),
            "acme.streams.v1.worker.w1.heartbeat"
        );
        assert_eq!(s.registry_bucket(), "acme_streams_sessions");
        assert_eq!(
            s.session_verb_any(SessionVerb::Get),
            "acme.streams.v1.session.*.get"
        );
    }

    #[test]
    fn session_ids_are_recovered_from_subjects() {
        let s = Subjects::default();
        let id = SessionId::parse("abc").unwrap();
        let w = WorkerId::parse("w1").unwrap();
        assert_eq!(s.session_id_in(s.session_get(&id).as_str()).unwrap(), id);
        assert_eq!(
            s.session_id_in(s.worker_stop(&w, &id).as_str()).unwrap(),
            id
        );
        assert!(s.session_id_in("other.v1.session.abc.get").is_err());
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["", "a..b", "a.*", "a >", ".a"] {
            assert!(Subjects::new(bad).is_err(), "{bad}");
        }
    }
}
