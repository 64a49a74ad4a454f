//! The bounded fuzz campaign over every decoder that reads bytes from the
//! wire: `decode` of each command, `decode_record` of each record, event and
//! heartbeat, `decode_reply` (the envelope), `decode_input` (the binary
//! data-channel codec) and the subject parsers (a subject is chosen by the
//! sender too).
//!
//! Property tests (proptest) rather than cargo-fuzz, which needs a nightly
//! compiler: the same campaign runs in every `cargo test`, and so in CI.
//! Inputs: arbitrary bytes, arbitrary JSON values, mutated valid messages
//! (the v1 fixtures), deep nesting, huge strings around the 64 KiB limit,
//! invalid UTF-8, and generated valid messages. Every input goes through
//! every decoder. What must hold:
//!
//! - no decoder panics (the runner catches panics and reports the input);
//! - a refusal carries a code from the decoder's stable set and a non-empty
//!   message, and survives the reply envelope unchanged;
//! - whatever decodes re-encodes to a payload that decodes to the same value
//!   (so a decoded value never holds what the encoder cannot say);
//! - valid messages round-trip exactly;
//! - over 64 KiB is `too_large`; invalid UTF-8 is `malformed`.
//!
//! `FUZZ_CASES` sets the cases per property (default 10 000: about 2.5
//! million decoder executions in about 20 s in a debug build on two cores). The test prints how many decoder executions
//! it ran: `cargo test -p bus-schema --test fuzz -- --nocapture`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bus_schema::codec::MAX_COMMAND_BYTES;
use bus_schema::input::{decode_input, encode_input, MAX_INPUT_BYTES};
use bus_schema::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Decoder executions so far (every decoder call on every input).
static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

// ------------------------------------------------------------ the decoders

/// Which stable codes a decoder may refuse with.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `decode`: commands (size and depth limits, objects only).
    Command,
    /// `decode_record`: records, events, heartbeats, signals to peers.
    Record,
    /// `decode_reply`: any code the envelope carries; `internal` when the
    /// bytes are no envelope.
    Reply,
    /// `decode_input`: binary input.
    Input,
    /// `Subjects::session_id_in` / `peer_in` on the bytes as a subject.
    Subject,
}

impl Kind {
    fn allows(self, code: ErrorCode) -> bool {
        use ErrorCode::*;
        match self {
            Kind::Command => matches!(
                code,
                Malformed | InvalidRequest | InvalidId | InvalidDuration | TooLarge
            ),
            Kind::Record => matches!(
                code,
                Malformed | InvalidRequest | InvalidId | InvalidDuration
            ),
            Kind::Reply => true,
            Kind::Input => matches!(code, InvalidRequest | TooLarge),
            Kind::Subject => matches!(code, InvalidRequest | InvalidId),
        }
    }
}

/// A decoder's verdict: `Err(TestCaseError)` when a property broke,
/// `Ok(Err(e))` for a refusal to check, `Ok(Ok(()))` for an accepted input.
type Verdict = Result<Result<(), WireError>, TestCaseError>;

struct Decoder {
    name: &'static str,
    kind: Kind,
    /// Decodes; on success checks the re-encode property itself; on refusal
    /// returns the error for the common checks.
    run: fn(&[u8]) -> Verdict,
}

/// `decode::<M>`; a decoded command re-encodes to an equal command.
fn command<M: DeserializeOwned + Serialize + PartialEq + Debug>(b: &[u8]) -> Verdict {
    match decode::<M>(b) {
        Err(e) => Ok(Err(e)),
        Ok(m) => {
            let again = encode(&m);
            if again.len() <= MAX_COMMAND_BYTES {
                let back: M = decode(&again).map_err(|e| {
                    TestCaseError::fail(format!("re-encoded {m:?} does not decode: {e}"))
                })?;
                prop_assert_eq!(back, m);
            }
            Ok(Ok(()))
        }
    }
}

/// `decode_record::<M>`: what the encoder writes of a decoded record is a
/// fixed point (decoding it and encoding again gives the same bytes).
/// Records carry timestamps, which are written at millisecond precision, so
/// a decoded value with finer ones is not itself what comes back.
fn record<M: DeserializeOwned + Serialize + PartialEq + Debug>(b: &[u8]) -> Verdict {
    match decode_record::<M>(b) {
        Err(e) => Ok(Err(e)),
        Ok(m) => {
            let once = encode(&m);
            let back: M = decode_record(&once).map_err(|e| {
                TestCaseError::fail(format!("re-encoded {m:?} does not decode: {e}"))
            })?;
            prop_assert_eq!(encode(&back), once);
            Ok(Ok(()))
        }
    }
}

/// `decode_reply::<T>`: a decoded result or error goes back into an
/// envelope, and that envelope is a fixed point.
fn reply<T: DeserializeOwned + Serialize + PartialEq + Debug>(b: &[u8]) -> Verdict {
    let r = decode_reply::<T>(b);
    let once = encode_reply(&r);
    let back = decode_reply::<T>(&once);
    prop_assert_eq!(encode_reply(&back), once);
    Ok(r.map(|_| ()))
}

fn input(b: &[u8]) -> Verdict {
    match decode_input(b) {
        Err(e) => Ok(Err(e)),
        Ok(events) => {
            // The binary encoding is canonical.
            prop_assert_eq!(encode_input(&events).unwrap(), b.to_vec());
            Ok(Ok(()))
        }
    }
}

fn subject_session(b: &[u8]) -> Verdict {
    let s = String::from_utf8_lossy(b);
    Ok(Subjects::default().session_id_in(&s).map(|_| ()))
}

fn subject_peer(b: &[u8]) -> Verdict {
    let s = String::from_utf8_lossy(b);
    Ok(Subjects::default().peer_in(&s).map(|_| ()))
}

fn decoders() -> Vec<Decoder> {
    macro_rules! d {
        ($kind:ident, $f:ident, $t:ty) => {
            Decoder {
                name: concat!(stringify!($f), "::<", stringify!($t), ">"),
                kind: Kind::$kind,
                run: $f::<$t>,
            }
        };
    }
    vec![
        d!(Command, command, CreateSession),
        d!(Command, command, ListSessions),
        d!(Command, command, GetSession),
        d!(Command, command, Keepalive),
        d!(Command, command, StopSession),
        d!(Command, command, AdoptSession),
        d!(Command, command, Fence),
        d!(Command, command, GetStats),
        d!(Command, command, JoinPeer),
        d!(Command, command, PeerSignal),
        d!(Command, command, InjectInput),
        d!(Record, record, SessionRecord),
        d!(Record, record, SessionInfo),
        d!(Record, record, SessionList),
        d!(Record, record, Heartbeat),
        d!(Record, record, SessionEvent),
        d!(Record, record, WorkerLost),
        d!(Record, record, ToPeer),
        d!(Record, record, Joined),
        d!(Record, record, SessionStats),
        d!(Reply, reply, SessionInfo),
        d!(Reply, reply, Ack),
        d!(Reply, reply, Joined),
        d!(Reply, reply, SessionStats),
        d!(Reply, reply, SessionList),
        Decoder {
            name: "decode_input",
            kind: Kind::Input,
            run: input,
        },
        Decoder {
            name: "Subjects::session_id_in",
            kind: Kind::Subject,
            run: subject_session,
        },
        Decoder {
            name: "Subjects::peer_in",
            kind: Kind::Subject,
            run: subject_peer,
        },
    ]
}

/// Feeds `bytes` to every decoder and checks what must always hold.
fn check_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    thread_local! {
        static DECODERS: Vec<Decoder> = decoders();
    }
    DECODERS.with(|ds| {
        for d in ds {
            EXECUTIONS.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = (d.run)(bytes)? {
                check_refusal(d, bytes, &e)?;
            }
        }
        Ok(())
    })
}

fn check_refusal(d: &Decoder, bytes: &[u8], e: &WireError) -> Result<(), TestCaseError> {
    prop_assert!(
        d.kind.allows(e.code),
        "{} refused with code {} outside its set: {}",
        d.name,
        e.code,
        e.message
    );
    prop_assert!(!e.message.is_empty(), "{}: empty message", d.name);
    // The code is one of the documented ones and survives the envelope.
    prop_assert!(ErrorCode::ALL.contains(&e.code));
    let back = decode_reply::<Ack>(&encode_reply::<Ack>(&Err(e.clone()))).unwrap_err();
    prop_assert_eq!(&back, e);
    match d.kind {
        Kind::Command if bytes.len() > MAX_COMMAND_BYTES => {
            prop_assert_eq!(e.code, ErrorCode::TooLarge, "{}", d.name)
        }
        // Commands check UTF-8 first (records may fail on a type before
        // serde reaches the bad byte; either way they are refused).
        Kind::Command if std::str::from_utf8(bytes).is_err() => {
            prop_assert_eq!(e.code, ErrorCode::Malformed, "{}: {}", d.name, e.message)
        }
        Kind::Input if bytes.len() > MAX_INPUT_BYTES => {
            prop_assert_eq!(e.code, ErrorCode::TooLarge, "{}", d.name)
        }
        _ => {}
    }
    Ok(())
}

// ------------------------------------------------------------ inputs

/// The v1 fixtures: real, valid payloads of every type, to mutate.
fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read(&p).expect("fixture readable"))
        })
        .collect();
    out.sort();
    // Valid binary input too, for the input decoder.
    let every = encode_input(&[
        InputEvent::Key {
            code: "KeyA".into(),
            down: true,
        },
        InputEvent::MouseMove { dx: -3, dy: 7 },
        InputEvent::MouseAbs { x: 1, y: 65535 },
        InputEvent::MouseButton {
            button: 2,
            down: false,
        },
        InputEvent::Wheel { dx: 0, dy: -120 },
        InputEvent::Touch {
            id: 3,
            phase: TouchPhase::Move,
            x: 9,
            y: 9,
        },
        InputEvent::PadButton {
            pad: 1,
            button: 4,
            value: 255,
        },
        InputEvent::PadAxis {
            pad: 0,
            axis: 1,
            value: -32768,
        },
        InputEvent::PadPresence {
            pad: 2,
            connected: true,
        },
        InputEvent::Ping,
    ])
    .unwrap();
    out.push(("input.bin".into(), every));
    out.push((
        "subject.peer".into(),
        b"streams.v1.worker.w-1.session.s-1.peer.p-0123456789ab".to_vec(),
    ));
    out.push((
        "subject.session".into(),
        b"streams.v1.session.s-1.stop".to_vec(),
    ));
    out
}

/// Bytes that break JSON and UTF-8 in interesting ways.
const SPECIAL: &[u8] = b"{}[]\":,\\0-eE.+ntf\xff\xc3\xed\xc0\x80\x00\x7f";

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
    /// Splices a piece of another fixture in.
    Splice(usize, usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<usize>();
    prop_oneof![
        (idx, 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, 1 << b)),
        (idx, prop::sample::select(SPECIAL)).prop_map(|(i, b)| Mutation::Set(i, b)),
        (
            idx,
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..8),
                prop::collection::vec(prop::sample::select(SPECIAL), 1..8),
            ]
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (idx, 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (idx, 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<usize>(), idx, idx, 1usize..64)
            .prop_map(|(f, i, j, n)| Mutation::Splice(f, i, j, n)),
    ]
}

fn mutate(mut b: Vec<u8>, ms: &[Mutation], all: &[(String, Vec<u8>)]) -> Vec<u8> {
    for m in ms {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Flip(i, bit) if !b.is_empty() => {
                let i = i % b.len();
                b[i] ^= bit;
            }
            Mutation::Set(i, v) if !b.is_empty() => {
                let i = i % b.len();
                b[i] = *v;
            }
            Mutation::Insert(i, v) => {
                let i = at(*i, b.len());
                b.splice(i..i, v.iter().copied());
            }
            Mutation::Delete(i, n) if !b.is_empty() => {
                let i = i % b.len();
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Duplicate(i, n) if !b.is_empty() => {
                let i = i % b.len();
                let end = (i + n).min(b.len());
                let piece = b[i..end].to_vec();
                b.splice(end..end, piece);
            }
            Mutation::Splice(f, i, j, n) => {
                let other = &all[f % all.len()].1;
                if !other.is_empty() {
                    let j = j % other.len();
                    let piece = &other[j..(j + n).min(other.len())];
                    let i = at(*i, b.len());
                    b.splice(i..i, piece.iter().copied());
                }
            }
            _ => {}
        }
    }
    b
}

/// Field names and values the messages use, so generated JSON gets deep
/// into the decoders before failing.
const KEYS: &[&str] = &[
    "id",
    "source",
    "kind",
    "synthetic",
    "rtp",
    "width",
    "height",
    "fps",
    "bitrate_kbps",
    "idle_ttl",
    "max_lifetime",
    "on_worker_lost",
    "labels",
    "include_ended",
    "detail",
    "epoch",
    "peer",
    "role",
    "type",
    "sdp",
    "candidate",
    "sdpMid",
    "sdpMLineIndex",
    "events",
    "code",
    "down",
    "dx",
    "dy",
    "x",
    "y",
    "button",
    "phase",
    "pad",
    "axis",
    "value",
    "connected",
    "ok",
    "result",
    "error",
    "message",
    "worker",
    "seq",
    "interval_ms",
    "capacity",
    "sessions",
    "draining",
    "sent_at",
    "state",
    "spec",
    "created_at",
    "updated_at",
    "reason",
    "at",
    "viewers",
    "revision",
    "count",
];
const WORDS: &[&str] = &[
    "synthetic",
    "answer",
    "candidate",
    "leave",
    "control",
    "view",
    "key",
    "ping",
    "mouse_abs",
    "touch",
    "start",
    "live",
    "ended",
    "stopped",
    "restart",
    "end",
    "5m",
    "0s",
    "100ms",
    "366d",
    "2026-11-25T13:53:47.513Z",
    "s-1",
    "p-0123456789ab",
    "w-1",
    "a.b",
    "",
    "KeyA",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>()].prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(WORDS).prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![4 => prop::sample::select(KEYS).prop_map(String::from), 1 => ".{0,8}"],
                    inner
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Deep nesting, balanced or not, bare or inside a command or a string.
fn deep() -> impl Strategy<Value = Vec<u8>> {
    (
        0usize..4000,
        prop::sample::select(&["[", "{\"a\":", "[{\"x\":", "{\"labels\":"][..]),
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(depth, open, close, wrap)| {
            let mut s = open.repeat(depth);
            s.push('1');
            if close {
                let closers: String = open
                    .chars()
                    .rev()
                    .filter_map(|c| match c {
                        '[' => Some(']'),
                        '{' => Some('}'),
                        _ => None,
                    })
                    .collect();
                s.push_str(&closers.repeat(depth));
            }
            match wrap {
                0 => s.into_bytes(),
                1 => format!("{{\"detail\":{s}}}").into_bytes(),
                // Brackets in a string are text, at any depth.
                _ => serde_json::to_vec(&serde_json::json!({ "detail": s })).unwrap(),
            }
        })
}

/// A string field of a valid message grown to `n` bytes, around the limit.
fn huge() -> impl Strategy<Value = (usize, Vec<u8>)> {
    (
        prop_oneof![
            0usize..2000,
            (MAX_COMMAND_BYTES - 200)..(MAX_COMMAND_BYTES + 200),
            Just(1 << 20),
        ],
        prop::sample::select(&["a", "é", "\\n", "\\u0000", "\\ud83d\\ude00", "[", "\""][..]),
        0u8..4,
    )
        .prop_map(|(n, unit, which)| {
            let mut body = unit.repeat(n / unit.len().max(1) + 1);
            // Keep escapes whole: cut at a unit boundary.
            body.truncate((n / unit.len()) * unit.len());
            if unit == "\"" {
                body = body.replace('"', "\\\"");
            }
            let s = match which {
                0 => format!(r#"{{"detail":"{body}"}}"#),
                1 => format!(r#"{{"type":"answer","sdp":"{body}"}}"#),
                2 => format!(r#"{{"type":"candidate","candidate":{{"candidate":"{body}"}}}}"#),
                _ => format!(r#"{{"labels":{{"k":"{body}"}}}}"#),
            };
            (s.len(), s.into_bytes())
        })
}

/// A valid message with invalid UTF-8 put in at some position.
fn bad_utf8(fx: Vec<(String, Vec<u8>)>) -> impl Strategy<Value = Vec<u8>> {
    let seqs: &[&[u8]] = &[
        b"\xff",
        b"\xc3",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe2\x82",
        b"\x80",
    ];
    (
        prop::sample::select(fx),
        prop::sample::select(seqs),
        any::<usize>(),
    )
        .prop_map(|((_, mut b), seq, i)| {
            let i = i % (b.len() + 1);
            b.splice(i..i, seq.iter().copied());
            b
        })
}

// ------------------------------------------------------------ valid messages

fn id_str() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}
fn session_id() -> impl Strategy<Value = SessionId> {
    id_str().prop_map(|s| SessionId::parse(s).unwrap())
}
fn peer_id() -> impl Strategy<Value = PeerId> {
    id_str().prop_map(|s| PeerId::parse(s).unwrap())
}
fn worker_id() -> impl Strategy<Value = WorkerId> {
    id_str().prop_map(|s| WorkerId::parse(s).unwrap())
}
fn duration() -> impl Strategy<Value = HumanDuration> {
    (100u64..=365 * 24 * 3600 * 1000)
        .prop_map(|ms| HumanDuration::new(Duration::from_millis(ms)).unwrap())
}
fn timestamp() -> impl Strategy<Value = Timestamp> {
    (0u64..253_402_300_799_000)
        .prop_map(|ms| Timestamp::from_system(UNIX_EPOCH + Duration::from_millis(ms)))
}
fn synthetic() -> impl Strategy<Value = SourceSpec> {
    (8u32..=1920, 8u32..=1080, 1u32..=120, 50u32..=50_000).prop_map(|(w, h, fps, b)| {
        SourceSpec::Synthetic {
            width: w * 2,
            height: h * 2,
            fps,
            bitrate_kbps: b,
        }
    })
}
fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(".{1,16}", ".{0,64}", 0..8)
}
fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Control), Just(Role::View)]
}
fn candidate() -> impl Strategy<Value = Candidate> {
    (
        ".{0,120}",
        proptest::option::of(".{0,4}"),
        proptest::option::of(any::<u16>()),
    )
        .prop_map(|(candidate, sdp_mid, sdp_mline_index)| Candidate {
            candidate,
            sdp_mid,
            sdp_mline_index,
        })
}
fn end_reason() -> impl Strategy<Value = EndReason> {
    prop::sample::select(vec![
        EndReason::Stopped,
        EndReason::IdleTimeout,
        EndReason::MaxLifetime,
        EndReason::WorkerShutdown,
        EndReason::WorkerLost,
        EndReason::SourceFailed,
    ])
}

/// Valid commands, as their type-tagged encodings.
fn valid_command() -> impl Strategy<Value = Vec<u8>> {
    let create = (
        proptest::option::of(session_id()),
        synthetic(),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        any::<bool>(),
        labels(),
    )
        .prop_map(|(id, source, idle_ttl, max_lifetime, restart, labels)| {
            let c = CreateSession {
                id,
                source,
                idle_ttl,
                max_lifetime,
                on_worker_lost: if restart {
                    OnWorkerLost::Restart
                } else {
                    OnWorkerLost::End
                },
                labels,
            };
            c.validate().unwrap();
            round_trip_command(&c)
        });
    let signal = prop_oneof![
        ".{0,2000}".prop_map(|sdp| PeerSignal::Answer { sdp }),
        candidate().prop_map(|candidate| PeerSignal::Candidate { candidate }),
        Just(PeerSignal::Leave),
    ]
    .prop_map(|s| round_trip_command(&s));
    let others = prop_oneof![
        proptest::option::of(".{0,200}")
            .prop_map(|detail| round_trip_command(&StopSession { detail })),
        any::<u64>().prop_map(|epoch| round_trip_command(&AdoptSession { epoch })),
        any::<u64>().prop_map(|epoch| round_trip_command(&Fence { epoch })),
        (
            any::<bool>(),
            proptest::option::of(1..=MAX_LIST_LIMIT),
            proptest::option::of((timestamp(), session_id()))
        )
            .prop_map(
                |(include_ended, limit, after)| round_trip_command(&ListSessions {
                    include_ended,
                    limit,
                    after: after.map(|(created_at, id)| ListCursor { created_at, id }),
                })
            ),
        (peer_id(), role()).prop_map(|(peer, role)| round_trip_command(&JoinPeer { peer, role })),
    ];
    prop_oneof![create, signal, others]
}

/// Valid records and signals to peers.
fn valid_record() -> impl Strategy<Value = Vec<u8>> {
    let held = (session_id(), any::<u64>(), any::<u32>(), any::<bool>()).prop_map(
        |(id, epoch, viewers, suspended)| HeldSession {
            id,
            epoch,
            viewers,
            suspended,
        },
    );
    let heartbeat = (
        worker_id(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        prop::collection::vec(held, 0..6),
        any::<bool>(),
        timestamp(),
    )
        .prop_map(
            |(worker, seq, interval_ms, capacity, sessions, draining, sent_at)| {
                round_trip_record(&Heartbeat {
                    worker,
                    seq,
                    interval_ms,
                    capacity,
                    sessions,
                    draining,
                    sent_at,
                })
            },
        );
    let event = (
        session_id(),
        prop::sample::select(vec![
            SessionEventKind::Started,
            SessionEventKind::Ended,
            SessionEventKind::Moved,
            SessionEventKind::ViewerJoined,
            SessionEventKind::ViewerLeft,
        ]),
        worker_id(),
        any::<u64>(),
        timestamp(),
        proptest::option::of(end_reason()),
        proptest::option::of(".{0,40}"),
        proptest::option::of(peer_id()),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(
            |(id, kind, worker, epoch, at, reason, detail, peer, viewers)| {
                round_trip_record(&SessionEvent {
                    id,
                    kind,
                    worker,
                    epoch,
                    at,
                    reason,
                    detail,
                    peer,
                    viewers,
                })
            },
        );
    let record = (
        session_id(),
        worker_id(),
        any::<u64>(),
        synthetic(),
        duration(),
        duration(),
        labels(),
        (timestamp(), timestamp(), proptest::option::of(timestamp())),
        proptest::option::of((end_reason(), timestamp(), proptest::option::of(".{0,40}"))),
        any::<u32>(),
    )
        .prop_map(
            |(id, owner, epoch, source, idle_ttl, max_lifetime, labels, times, ended, viewers)| {
                round_trip_record(&SessionRecord {
                    id,
                    owner,
                    epoch,
                    state: if ended.is_some() {
                        SessionState::Ended
                    } else {
                        SessionState::Live
                    },
                    spec: SessionSpec {
                        source,
                        idle_ttl,
                        max_lifetime,
                        on_worker_lost: OnWorkerLost::End,
                        labels,
                    },
                    created_at: times.0,
                    updated_at: times.1,
                    live_at: times.2,
                    ended: ended.map(|(reason, at, detail)| Ended { reason, at, detail }),
                    viewers,
                })
            },
        );
    let to_peer = prop_oneof![
        candidate().prop_map(|candidate| ToPeer::Candidate { candidate }),
        any::<u32>().prop_map(|count| ToPeer::Viewers { count }),
        end_reason().prop_map(|reason| ToPeer::Ended { reason }),
        ".{0,80}".prop_map(|reason| ToPeer::Closed { reason }),
    ]
    .prop_map(|m| round_trip_record(&m));
    prop_oneof![heartbeat, event, record, to_peer]
}

/// Encodes, decodes, and checks the value came back; returns the bytes.
fn round_trip_command<M: Serialize + DeserializeOwned + PartialEq + Debug>(m: &M) -> Vec<u8> {
    let bytes = encode(m);
    let back: M = decode(&bytes).unwrap_or_else(|e| panic!("{m:?} does not decode: {e}"));
    assert_eq!(&back, m, "command round trip");
    bytes.to_vec()
}

fn round_trip_record<M: Serialize + DeserializeOwned + PartialEq + Debug>(m: &M) -> Vec<u8> {
    let bytes = encode(m);
    let back: M = decode_record(&bytes).unwrap_or_else(|e| panic!("{m:?} does not decode: {e}"));
    assert_eq!(&back, m, "record round trip");
    bytes.to_vec()
}

fn valid_input() -> impl Strategy<Value = Vec<u8>> {
    let ev =
        prop_oneof![
            ("[A-Za-z0-9]{1,32}", any::<bool>())
                .prop_map(|(code, down)| InputEvent::Key { code, down }),
            (any::<i16>(), any::<i16>()).prop_map(|(dx, dy)| InputEvent::MouseMove { dx, dy }),
            (any::<u16>(), any::<u16>()).prop_map(|(x, y)| InputEvent::MouseAbs { x, y }),
            (0u8..=15, any::<bool>())
                .prop_map(|(button, down)| InputEvent::MouseButton { button, down }),
            (0u8..=15, 0u8..=31, any::<u8>())
                .prop_map(|(pad, button, value)| InputEvent::PadButton { pad, button, value }),
            Just(InputEvent::Ping),
        ];
    prop::collection::vec(ev, 1..=100).prop_map(|evs| {
        let b = encode_input(&evs).unwrap();
        assert_eq!(decode_input(&b).unwrap(), evs, "input round trip");
        b
    })
}

// ------------------------------------------------------------ the campaign

/// Runs one property over `cases` inputs; panics with the (shrunk) input
/// that broke it.
fn property<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
    table: &mut Vec<(String, u32, u64, Duration)>,
) where
    S::Value: Debug,
{
    let before = EXECUTIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => {
            panic!("fuzz property {name} failed: {why}\nminimal input: {input:?}")
        }
        Err(e) => panic!("fuzz property {name}: {e}"),
    }
    table.push((
        name.to_string(),
        cases,
        EXECUTIONS.load(Ordering::Relaxed) - before,
        started.elapsed(),
    ));
}

#[test]
fn every_wire_decoder_survives_the_campaign() {
    let n = cases();
    let fx = fixtures();
    let mut table = Vec::new();
    let started = Instant::now();

    // The fixtures themselves, unmutated.
    for (name, bytes) in &fx {
        check_all(bytes).unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    }

    property(
        "arbitrary bytes",
        n,
        prop::collection::vec(any::<u8>(), 0..1024),
        |b| check_all(&b),
        &mut table,
    );
    property(
        "arbitrary JSON values",
        n,
        json_value(),
        |v| check_all(&serde_json::to_vec(&v).unwrap()),
        &mut table,
    );
    let all = fx.clone();
    property(
        "mutated valid messages",
        n * 2,
        (
            prop::sample::select(fx.clone()),
            prop::collection::vec(mutation(), 1..8),
        ),
        move |((_, b), ms)| check_all(&mutate(b, &ms, &all)),
        &mut table,
    );
    property("deep nesting", n / 4, deep(), |b| check_all(&b), &mut table);
    property(
        "huge strings",
        n / 20,
        huge(),
        |(len, b)| {
            check_all(&b)?;
            let r = decode::<StopSession>(&b);
            if len > MAX_COMMAND_BYTES {
                prop_assert_eq!(r.unwrap_err().code, ErrorCode::TooLarge);
            }
            Ok(())
        },
        &mut table,
    );
    property(
        "invalid UTF-8",
        n,
        bad_utf8(fx.clone()),
        |b| {
            check_all(&b)?;
            prop_assert_eq!(
                decode::<CreateSession>(&b).unwrap_err().code,
                ErrorCode::Malformed
            );
            Ok(())
        },
        &mut table,
    );
    property(
        "valid commands round-trip",
        n,
        valid_command(),
        |b| check_all(&b),
        &mut table,
    );
    property(
        "valid records round-trip",
        n,
        valid_record(),
        |b| check_all(&b),
        &mut table,
    );
    property(
        "valid input round-trips",
        n,
        valid_input(),
        |b| check_all(&b),
        &mut table,
    );

    let total = EXECUTIONS.load(Ordering::Relaxed);
    let inputs: u32 = table.iter().map(|r| r.1).sum();
    eprintln!(
        "fuzz campaign ({} decoders, FUZZ_CASES={n}):",
        decoders().len()
    );
    for (name, cases, execs, took) in &table {
        eprintln!("  {name:<28} {cases:>7} inputs {execs:>9} executions {took:>8.1?}");
    }
    eprintln!(
        "fuzz: {total} decoder executions over {} inputs in {:.1?}",
        inputs as usize + fx.len(),
        started.elapsed()
    );
}
