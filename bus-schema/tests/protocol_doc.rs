//! Keeps `docs/protocol.md` and the v1 fixtures honest.
//!
//! - Every JSON block of the document preceded by `<!-- fixture: NAME -->`
//!   is parsed with the Rust type NAME stands for (see [`check_fixture`]).
//!   Records, events and replies must also be *canonical*: what the
//!   services serialize (so an example cannot show `"24h"` where a worker
//!   writes `"1day"`, or show a field that is never sent); an example may
//!   leave out only fields whose value is empty (`false`, `0`, `[]`…).
//! - Every `nats req <subject> '<payload>'` line is decoded as the command
//!   of its subject.
//! - Every subject `Subjects` can build appears in the document in its
//!   pattern form (`<id>`, `<w>`, `<peer>`), and a new `Subjects` method
//!   fails this test until it is added here (and so to the document).
//! - Every error code, end reason, event kind, signalling message type and
//!   input event type is documented.
//! - `tests/fixtures/*.json` are v1 payloads that must keep parsing with
//!   the type named by their file name (`<Type>.<case>.json`), and
//!   `tests/fixtures/rejected/*.json` commands that must stay refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use bus_schema::codec::Envelope;
use bus_schema::input::validate_event;
use bus_schema::subjects::{WORKER_QUEUE, WORKER_SERVICE};
use bus_schema::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn protocol_md() -> String {
    let path = manifest_dir().join("../docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ------------------------------------------------------------ fixtures in the doc

/// One `<!-- fixture: NAME -->` block: its name, JSON text and line.
#[derive(Debug)]
struct DocFixture {
    name: String,
    json: String,
    line: usize,
}

fn doc_fixtures(doc: &str) -> Vec<DocFixture> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim();
        if let Some(rest) = t.strip_prefix("<!-- fixture:") {
            let name = rest
                .strip_suffix("-->")
                .unwrap_or_else(|| panic!("line {}: unterminated fixture marker", i + 1))
                .trim()
                .to_string();
            let marker_line = i + 1;
            i += 1;
            while i < lines.len() && lines[i].trim().is_empty() {
                i += 1;
            }
            assert!(
                i < lines.len() && lines[i].trim() == "```json",
                "line {marker_line}: fixture {name} is not followed by a ```json block"
            );
            i += 1;
            let start = i;
            while i < lines.len() && lines[i].trim() != "```" {
                i += 1;
            }
            assert!(i < lines.len(), "line {marker_line}: unterminated block");
            out.push(DocFixture {
                name,
                json: lines[start..i].join("\n"),
                line: marker_line,
            });
        }
        i += 1;
    }
    out
}

/// Mirrors of api types the crate cannot see (the api depends on us).
#[derive(Debug, Deserialize)]
struct JoinClaims {
    sid: SessionId,
    role: Role,
    exp: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TokenRequest {
    #[serde(default)]
    role: Role,
    #[serde(default)]
    ttl: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    token: String,
    role: Role,
    url: String,
    ws: String,
}

/// What the parsed fixtures showed, for the coverage checks.
#[derive(Default)]
struct Seen {
    names: BTreeSet<String>,
    input_kinds: BTreeSet<&'static str>,
    event_kinds: BTreeSet<&'static str>,
    to_peer: BTreeSet<&'static str>,
    peer_signal: BTreeSet<&'static str>,
    source_event_kinds: BTreeSet<&'static str>,
}

/// A command: decoded exactly as a worker decodes it.
fn command<M: DeserializeOwned>(json: &str) -> Result<M, String> {
    decode::<M>(json.as_bytes()).map_err(|e| e.to_string())
}

/// A record, event or reply payload: must parse and be what the services
/// would serialize. Fields the example leaves out must serialize to an
/// empty value (`false`, `0`, `""`, `[]`, `{}`, `null`), so a field added
/// later with its default does not outdate every example.
fn canonical<M: DeserializeOwned + Serialize>(value: &Value) -> Result<M, String> {
    let m: M = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&m).map_err(|e| e.to_string())?;
    covers(value, &back, "").map_err(|e| {
        format!(
            "not canonical ({e}): the services would send\n{}",
            serde_json::to_string_pretty(&back).unwrap()
        )
    })?;
    Ok(m)
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Whether the `example` shows exactly what `sent` holds, except for
/// empty fields it leaves out.
fn covers(example: &Value, sent: &Value, at: &str) -> Result<(), String> {
    match (example, sent) {
        (Value::Object(e), Value::Object(s)) => {
            for (k, v) in e {
                let w = s.get(k).ok_or_else(|| format!("{at}.{k} is never sent"))?;
                covers(v, w, &format!("{at}.{k}"))?;
            }
            match s
                .iter()
                .find(|(k, v)| !e.contains_key(*k) && !is_empty_value(v))
            {
                Some((k, _)) => Err(format!("{at}.{k} is missing")),
                None => Ok(()),
            }
        }
        (Value::Array(e), Value::Array(s)) if e.len() == s.len() => e
            .iter()
            .zip(s)
            .enumerate()
            .try_for_each(|(i, (a, b))| covers(a, b, &format!("{at}[{i}]"))),
        (e, s) if e == s => Ok(()),
        (e, s) => Err(format!("{at} is {e} but would be sent as {s}")),
    }
}

fn reply<T: DeserializeOwned + Serialize>(json: &str) -> Result<T, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let keys: BTreeSet<&str> = v
        .as_object()
        .ok_or("a reply is an object")?
        .keys()
        .map(String::as_str)
        .collect();
    if keys != BTreeSet::from(["ok", "result"]) || v["ok"] != Value::Bool(true) {
        return Err("a success reply is exactly {\"ok\":true,\"result\":…}".into());
    }
    decode_reply::<T>(json.as_bytes()).map_err(|e| e.to_string())?;
    canonical(&v["result"])
}

fn to_peer_kind(m: &ToPeer) -> &'static str {
    match m {
        ToPeer::Candidate { .. } => "candidate",
        ToPeer::Viewers { .. } => "viewers",
        ToPeer::Ended { .. } => "ended",
        ToPeer::Closed { .. } => "closed",
    }
}

fn peer_signal_kind(m: &PeerSignal) -> &'static str {
    match m {
        PeerSignal::Answer { .. } => "answer",
        PeerSignal::Candidate { .. } => "candidate",
        PeerSignal::Leave => "leave",
    }
}

/// Minimal base64url (no padding) decoding, for the token example.
fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

fn check_token(token: &str) -> Result<JoinClaims, String> {
    let rest = token
        .strip_prefix("v1.")
        .ok_or("token must start with v1.")?;
    let (claims, sig) = rest.split_once('.').ok_or("token is v1.<claims>.<sig>")?;
    let sig = b64url_decode(sig).ok_or("signature is not base64url")?;
    if sig.len() != 32 {
        return Err(format!("an HMAC-SHA256 is 32 bytes, not {}", sig.len()));
    }
    let raw = b64url_decode(claims).ok_or("claims are not base64url")?;
    serde_json::from_slice(&raw).map_err(|e| e.to_string())
}

/// Parses one document fixture by its name.
fn check_fixture(f: &DocFixture, seen: &mut Seen) -> Result<(), String> {
    let value = || serde_json::from_str::<Value>(&f.json).map_err(|e| e.to_string());
    seen.names.insert(f.name.clone());
    match f.name.as_str() {
        // ---- commands, decoded like a worker does
        "CreateSession" => command::<CreateSession>(&f.json)?
            .validate()
            .map_err(|e| e.to_string()),
        "ListSessions" => command::<ListSessions>(&f.json).map(drop),
        "GetSession" => command::<GetSession>(&f.json).map(drop),
        "Keepalive" => command::<Keepalive>(&f.json).map(drop),
        "StopSession" => command::<StopSession>(&f.json).map(drop),
        "AdoptSession" => command::<AdoptSession>(&f.json).map(drop),
        "Fence" => command::<Fence>(&f.json).map(drop),
        "GetStats" => command::<GetStats>(&f.json).map(drop),
        "JoinPeer" => command::<JoinPeer>(&f.json).map(drop),
        "PeerSignal" => {
            let m = command::<PeerSignal>(&f.json)?;
            seen.peer_signal.insert(peer_signal_kind(&m));
            Ok(())
        }
        "InjectInput" => {
            let m = command::<InjectInput>(&f.json)?;
            m.validate().map_err(|e| e.to_string())?;
            seen.input_kinds
                .extend(m.events.iter().map(InputEvent::kind));
            Ok(())
        }
        "InputEvent" => {
            let e = command::<InputEvent>(&f.json)?;
            validate_event(&e).map_err(|e| e.to_string())?;
            seen.input_kinds.insert(e.kind());
            Ok(())
        }
        // ---- records and events, canonical
        "SourceInput" => {
            let m = canonical::<SourceInput>(&value()?)?;
            seen.source_event_kinds
                .extend(m.events.iter().map(SourceEvent::kind));
            Ok(())
        }
        "SessionRecord" => canonical::<SessionRecord>(&value()?).map(drop),
        "SessionInfo" => canonical::<SessionInfo>(&value()?).map(drop),
        "Heartbeat" => canonical::<Heartbeat>(&value()?).map(drop),
        "WorkerLost" => canonical::<WorkerLost>(&value()?).map(drop),
        "SessionEvent" => {
            let e = canonical::<SessionEvent>(&value()?)?;
            seen.event_kinds.insert(e.kind.as_str());
            Ok(())
        }
        "ToPeer" => {
            let m = canonical::<ToPeer>(&value()?)?;
            seen.to_peer.insert(to_peer_kind(&m));
            Ok(())
        }
        // ---- replies, whole envelopes
        "Reply<Ack>" => reply::<Ack>(&f.json).map(drop),
        "Reply<SessionInfo>" => reply::<SessionInfo>(&f.json).map(drop),
        "Reply<SessionList>" => reply::<SessionList>(&f.json).map(drop),
        "Reply<SessionStats>" => reply::<SessionStats>(&f.json).map(drop),
        "Reply<Joined>" => reply::<Joined>(&f.json).map(drop),
        "ErrorReply" => {
            let v = value()?;
            let keys: Vec<&String> = v.as_object().ok_or("not an object")?.keys().collect();
            if keys.len() != 2 || v["ok"] != Value::Bool(false) {
                return Err("an error reply is exactly {\"ok\":false,\"error\":…}".into());
            }
            canonical::<WireError>(&v["error"])?;
            match decode_reply::<Value>(f.json.as_bytes()) {
                Err(_) => Ok(()),
                Ok(_) => Err("decoded as a success".into()),
            }
        }
        // ---- the browser WebSocket and the api
        "BrowserJoined" => {
            let mut v = value()?;
            let t = v.as_object_mut().and_then(|o| o.remove("type"));
            if t != Some(Value::from("joined")) {
                return Err("a joined message has \"type\":\"joined\"".into());
            }
            canonical::<Joined>(&v).map(drop)
        }
        "BrowserError" => {
            let mut v = value()?;
            let t = v.as_object_mut().and_then(|o| o.remove("type"));
            if t != Some(Value::from("error")) {
                return Err("an error message has \"type\":\"error\"".into());
            }
            canonical::<WireError>(&v).map(drop)
        }
        "JoinClaims" => serde_json::from_str::<JoinClaims>(&f.json)
            .map(drop)
            .map_err(|e| e.to_string()),
        "TokenRequest" => command::<TokenRequest>(&f.json).map(drop),
        "TokenResponse" => {
            let r: TokenResponse = serde_json::from_str(&f.json).map_err(|e| e.to_string())?;
            let claims = check_token(&r.token)?;
            if claims.role != r.role {
                return Err("the token's role differs from the reply's".into());
            }
            let sid = claims.sid.as_str();
            if r.url != format!("/view/{sid}?token={}", r.token)
                || r.ws != format!("/api/sessions/{sid}/ws?token={}", r.token)
            {
                return Err(
                    "url and ws must be /view/{id}?token=… and /api/sessions/{id}/ws?token=…"
                        .into(),
                );
            }
            if claims.exp < 1_700_000_000 {
                return Err("exp is in Unix seconds".into());
            }
            Ok(())
        }
        other => Err(format!(
            "unknown fixture type {other:?}: add it to check_fixture"
        )),
    }
}

#[test]
fn every_json_example_in_the_protocol_doc_parses_with_its_type() {
    let doc = protocol_md();
    let fixtures = doc_fixtures(&doc);
    assert!(
        fixtures.len() >= 40,
        "only {} fixtures found",
        fixtures.len()
    );
    let mut seen = Seen::default();
    let mut failures = Vec::new();
    for f in &fixtures {
        if let Err(e) = check_fixture(f, &mut seen) {
            failures.push(format!(
                "docs/protocol.md line {} ({}): {e}\n{}",
                f.line, f.name, f.json
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // Every message of the contract has an example.
    for (name, _) in schema::all() {
        let covered = match name {
            "ReplyEnvelope" => seen.names.contains("ErrorReply"),
            "SourceEvent" => seen.names.contains("SourceInput"),
            "Ack" | "SessionInfo" | "SessionList" | "SessionStats" | "Joined" => {
                seen.names.contains(&format!("Reply<{name}>"))
            }
            n => seen.names.contains(n),
        };
        assert!(covered, "docs/protocol.md has no fixture example of {name}");
    }
    let all_input: BTreeSet<_> = every_input_event().iter().map(InputEvent::kind).collect();
    assert_eq!(
        seen.input_kinds, all_input,
        "input event types with examples"
    );
    assert_eq!(
        seen.source_event_kinds,
        BTreeSet::from([
            "key",
            "mouse_move",
            "mouse_abs",
            "mouse_button",
            "wheel",
            "touch",
            "pad_button",
            "pad_axis",
            "pad_connected",
            "pad_disconnected",
        ]),
        "merged input event types with examples"
    );
    let all_kinds: BTreeSet<_> = EVENT_KINDS.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        seen.event_kinds, all_kinds,
        "session event kinds with examples"
    );
    assert_eq!(
        seen.to_peer,
        BTreeSet::from(["candidate", "viewers", "ended", "closed"]),
        "ToPeer types with examples"
    );
    assert_eq!(
        seen.peer_signal,
        BTreeSet::from(["answer", "candidate", "leave"]),
        "PeerSignal types with examples"
    );
}

// ------------------------------------------------------------ nats req lines

/// The command type of a subject, decoded like the worker endpoint does.
fn decode_for_subject(s: &Subjects, subject: &str, payload: &str) -> Result<(), String> {
    let base = format!("{}.v1.", s.prefix());
    let rest = subject
        .strip_prefix(&base)
        .ok_or_else(|| format!("{subject} is not under {base}"))?;
    let tokens: Vec<&str> = rest.split('.').collect();
    let verb = match tokens.as_slice() {
        ["session", "create"] | ["worker", _, "session", "create"] => "create",
        ["session", "list"] => "list",
        ["worker", _, "session", _, "peer", _] => {
            s.peer_in(subject).map_err(|e| e.to_string())?;
            "peer"
        }
        ["session", _, verb] | ["worker", _, "session", _, verb] => {
            s.session_id_in(subject).map_err(|e| e.to_string())?;
            verb
        }
        _ => return Err(format!("{subject} is no command subject")),
    };
    if let ["worker", w, ..] = tokens.as_slice() {
        WorkerId::parse(*w).map_err(|e| e.to_string())?;
    }
    let p = payload.as_bytes();
    let e = |e: WireError| e.to_string();
    match verb {
        "create" => decode::<CreateSession>(p)
            .and_then(|c| c.validate())
            .map_err(e),
        "list" => decode::<ListSessions>(p).map(drop).map_err(e),
        "get" => decode::<GetSession>(p).map(drop).map_err(e),
        "keepalive" => decode::<Keepalive>(p).map(drop).map_err(e),
        "stop" => decode::<StopSession>(p).map(drop).map_err(e),
        "join" => decode::<JoinPeer>(p).map(drop).map_err(e),
        "input" => decode::<InjectInput>(p)
            .and_then(|c| c.validate())
            .map_err(e),
        "stats" => decode::<GetStats>(p).map(drop).map_err(e),
        "adopt" => decode::<AdoptSession>(p).map(drop).map_err(e),
        "fence" => decode::<Fence>(p).map(drop).map_err(e),
        "peer" => decode::<PeerSignal>(p).map(drop).map_err(e),
        v => Err(format!("unknown verb {v}")),
    }
}

/// `(subject, payload)` of a `nats req [--flag value]… <subject> '<payload>'` line.
fn parse_nats_req(line: &str) -> Option<(String, String)> {
    let mut rest = line.trim().strip_prefix("nats req ")?.trim_start();
    while let Some(flag) = rest.strip_prefix("--") {
        // `--timeout 15s` or `--timeout=15s`
        let (name, after) = flag.split_once(' ')?;
        rest = if name.contains('=') {
            after
        } else {
            after.trim_start().split_once(' ')?.1
        }
        .trim_start();
    }
    let (subject, after) = rest.split_once(' ')?;
    let after = after.trim_start().strip_prefix('\'')?;
    let end = after.rfind('\'')?;
    Some((subject.to_string(), after[..end].to_string()))
}

#[test]
fn every_nats_req_example_sends_a_valid_command() {
    let doc = protocol_md();
    let s = Subjects::default();
    let mut count = 0;
    let mut failures = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        if !line.trim_start().starts_with("nats req ") {
            continue;
        }
        let Some((subject, payload)) = parse_nats_req(line) else {
            failures.push(format!("line {}: cannot read {line:?}", i + 1));
            continue;
        };
        count += 1;
        if let Err(e) = decode_for_subject(&s, &subject, &payload) {
            failures.push(format!("line {}: {line}\n  {e}", i + 1));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(count >= 15, "only {count} nats req examples");
}

#[test]
fn nats_req_lines_are_read_right() {
    assert_eq!(
        parse_nats_req(r#"nats req --timeout 15s streams.v1.session.create '{"id":"a"}'"#),
        Some(("streams.v1.session.create".into(), r#"{"id":"a"}"#.into()))
    );
    assert_eq!(
        parse_nats_req("nats req streams.v1.session.a.get ''"),
        Some(("streams.v1.session.a.get".into(), String::new()))
    );
    let s = Subjects::default();
    assert!(decode_for_subject(&s, "streams.v1.session.a.get", r#"{"x":1}"#).is_err());
    assert!(decode_for_subject(&s, "streams.v1.session.a.b.get", "").is_err());
}

// ------------------------------------------------------------ subjects

/// Every session event kind. The match below stops compiling when a kind
/// is added; add it here and document it.
const EVENT_KINDS: [SessionEventKind; 5] = [
    SessionEventKind::Started,
    SessionEventKind::Ended,
    SessionEventKind::Moved,
    SessionEventKind::ViewerJoined,
    SessionEventKind::ViewerLeft,
];

#[allow(dead_code)]
fn event_kinds_are_all_listed(k: SessionEventKind) {
    match k {
        SessionEventKind::Started
        | SessionEventKind::Ended
        | SessionEventKind::Moved
        | SessionEventKind::ViewerJoined
        | SessionEventKind::ViewerLeft => {}
    }
}

/// Every end reason, likewise.
const END_REASONS: [EndReason; 6] = [
    EndReason::Stopped,
    EndReason::IdleTimeout,
    EndReason::MaxLifetime,
    EndReason::WorkerShutdown,
    EndReason::WorkerLost,
    EndReason::SourceFailed,
];

#[allow(dead_code)]
fn end_reasons_are_all_listed(r: EndReason) {
    match r {
        EndReason::Stopped
        | EndReason::IdleTimeout
        | EndReason::MaxLifetime
        | EndReason::WorkerShutdown
        | EndReason::WorkerLost
        | EndReason::SourceFailed => {}
    }
}

/// One of every input event, likewise.
fn every_input_event() -> Vec<InputEvent> {
    vec![
        InputEvent::Key {
            code: "KeyA".into(),
            down: true,
        },
        InputEvent::MouseMove { dx: 1, dy: 1 },
        InputEvent::MouseAbs { x: 1, y: 1 },
        InputEvent::MouseButton {
            button: 0,
            down: true,
        },
        InputEvent::Wheel { dx: 0, dy: 120 },
        InputEvent::Touch {
            id: 0,
            phase: TouchPhase::Start,
            x: 0,
            y: 0,
        },
        InputEvent::PadButton {
            pad: 0,
            button: 0,
            value: 255,
        },
        InputEvent::PadAxis {
            pad: 0,
            axis: 0,
            value: 0,
        },
        InputEvent::PadPresence {
            pad: 0,
            connected: true,
        },
        InputEvent::Ping,
    ]
}

#[allow(dead_code)]
fn input_events_are_all_listed(e: &InputEvent) {
    match e {
        InputEvent::Key { .. }
        | InputEvent::MouseMove { .. }
        | InputEvent::MouseAbs { .. }
        | InputEvent::MouseButton { .. }
        | InputEvent::Wheel { .. }
        | InputEvent::Touch { .. }
        | InputEvent::PadButton { .. }
        | InputEvent::PadAxis { .. }
        | InputEvent::PadPresence { .. }
        | InputEvent::Ping => {}
    }
}

/// Sample ids that turn into placeholders.
const SID: &str = "zz-session-zz";
const WID: &str = "zz-worker-zz";
const PID: &str = "zz-peer-zz";

fn pattern(subject: &str) -> String {
    subject
        .replace(SID, "<id>")
        .replace(WID, "<w>")
        .replace(PID, "<peer>")
}

/// `(method, patterns)` for every subject-building method of `Subjects`.
fn every_subject() -> Vec<(&'static str, Vec<String>)> {
    let s = Subjects::default();
    let id = SessionId::parse(SID).unwrap();
    let w = WorkerId::parse(WID).unwrap();
    let p = PeerId::parse(PID).unwrap();
    let one = |x: &dyn std::fmt::Display| vec![pattern(&x.to_string())];
    let direct_verbs = [
        "keepalive",
        "stop",
        "join",
        "input",
        "stats",
        "adopt",
        "fence",
    ];
    vec![
        ("registry_bucket", vec![s.registry_bucket()]),
        ("session_create", one(&s.session_create())),
        ("session_list", one(&s.session_list())),
        ("session_get", one(&s.session_get(&id))),
        ("session_keepalive", one(&s.session_keepalive(&id))),
        ("session_stop", one(&s.session_stop(&id))),
        ("session_join", one(&s.session_join(&id))),
        ("session_input", one(&s.session_input(&id))),
        ("session_stats", one(&s.session_stats(&id))),
        (
            "session_verb_any",
            SessionVerb::ALL
                .iter()
                .map(|v| s.session_verb_any(*v))
                .collect(),
        ),
        ("worker_create", one(&s.worker_create(&w))),
        ("worker_keepalive", one(&s.worker_keepalive(&w, &id))),
        ("worker_stop", one(&s.worker_stop(&w, &id))),
        ("worker_join", one(&s.worker_join(&w, &id))),
        ("worker_input", one(&s.worker_input(&w, &id))),
        ("worker_stats", one(&s.worker_stats(&w, &id))),
        ("worker_adopt", one(&s.worker_adopt(&w, &id))),
        ("worker_fence", one(&s.worker_fence(&w, &id))),
        ("worker_peer", one(&s.worker_peer(&w, &id, &p))),
        ("worker_peer_any", one(&s.worker_peer_any(&w))),
        (
            "worker_session_verb_any",
            direct_verbs
                .iter()
                .map(|v| pattern(&s.worker_session_verb_any(&w, v)))
                .collect(),
        ),
        ("peer_out", one(&s.peer_out(&p))),
        ("source_input", one(&s.source_input(&id))),
        ("heartbeat", one(&s.heartbeat(&w))),
        ("heartbeat_any", vec![s.heartbeat_any()]),
        (
            "event_session",
            EVENT_KINDS
                .iter()
                .map(|k| pattern(&s.event_session(&id, *k).to_string()))
                .chain([format!("{}.v1.event.session.<id>.<kind>", s.prefix())])
                .collect(),
        ),
        ("event_session_all", one(&s.event_session_all(&id))),
        ("event_session_any", vec![s.event_session_any()]),
        ("event_worker_lost", one(&s.event_worker_lost(&w))),
        ("event_worker_any", vec![s.event_worker_any()]),
    ]
}

/// `Subjects` methods that build no subject.
const NOT_SUBJECTS: [&str; 4] = ["new", "prefix", "session_id_in", "peer_in"];

/// The public methods of `impl Subjects` in the source.
fn subjects_methods_in_source() -> BTreeSet<String> {
    let src = std::fs::read_to_string(manifest_dir().join("src/subjects.rs")).unwrap();
    let start = src
        .find("\nimpl Subjects {")
        .expect("impl Subjects in subjects.rs");
    let body = &src[start + 1..];
    let end = body.find("\n}\n").expect("end of impl Subjects");
    body[..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub fn "))
        .map(|l| l.split(['(', '<']).next().unwrap().trim().to_string())
        .collect()
}

#[test]
fn every_subject_is_documented_in_its_pattern_form() {
    let doc = protocol_md();
    let listed: BTreeSet<String> = every_subject()
        .iter()
        .map(|(m, _)| m.to_string())
        .chain(NOT_SUBJECTS.iter().map(|m| m.to_string()))
        .collect();
    let in_source = subjects_methods_in_source();
    assert_eq!(
        in_source, listed,
        "Subjects methods changed: add the new subject to every_subject() here and to docs/protocol.md"
    );
    let mut missing = Vec::new();
    for (method, patterns) in every_subject() {
        for p in patterns {
            assert!(!p.contains("zz-"), "{method}: sample id left in {p}");
            if !doc.contains(&format!("`{p}`")) {
                missing.push(format!("{method}: `{p}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/protocol.md does not mention:\n{}",
        missing.join("\n")
    );
    // The bucket's name for a dotted prefix.
    let acme = Subjects::new("acme.streams").unwrap();
    assert!(doc.contains(&format!("`{}`", acme.registry_bucket())));
    // Names operators type.
    assert!(doc.contains(&format!("`{WORKER_QUEUE}`")));
    assert!(doc.contains(&format!("**`{WORKER_SERVICE}`**")));
}

#[test]
fn every_code_reason_and_message_type_is_documented() {
    let doc = protocol_md();
    for code in ErrorCode::ALL {
        assert!(
            doc.contains(&format!("| `{code}` |")),
            "error code {code} has no row in the error table"
        );
    }
    for r in END_REASONS {
        assert!(
            doc.contains(&format!("| `{}` |", r.as_str())),
            "end reason {} has no row in the end reasons table",
            r.as_str()
        );
    }
    for k in EVENT_KINDS {
        assert!(
            doc.contains(&format!("| `{}` |", k.as_str())),
            "event kind {} has no row in the events table",
            k.as_str()
        );
    }
    for e in every_input_event() {
        assert!(
            doc.contains(&format!("| `{}` |", e.kind())),
            "input event {} has no row in the JSON input table",
            e.kind()
        );
    }
    for v in SessionVerb::ALL {
        assert!(
            doc.contains(&format!("| `{}` |", v.as_str())),
            "micro endpoint {} is not in the endpoints table",
            v.as_str()
        );
    }
}

// ------------------------------------------------------------ doc claims

#[test]
fn documented_duration_and_timestamp_forms_hold() {
    let canonical = |s: &str| String::from(HumanDuration::parse(s).unwrap());
    // What the record carries for what a client sends.
    assert_eq!(canonical("5m"), "5m");
    assert_eq!(canonical("90s"), "1m 30s");
    assert_eq!(canonical("24h"), "1day");
    assert_eq!(canonical("36h"), "1day 12h");
    assert_eq!(canonical("365d"), "11months 30days 3h 50m 24s");
    // Go's time.Duration.String() and other accepted spellings.
    for ok in [
        "5m0s", "1h30m0s", "1.5h", "500ms", "2days", "1 h 30 m", "1M",
    ] {
        HumanDuration::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in ["10ms", "366d", "1y", "soon", ""] {
        assert_eq!(
            HumanDuration::parse(bad).unwrap_err().code,
            ErrorCode::InvalidDuration,
            "{bad}"
        );
    }
    let ts = |s: &str| Timestamp::try_from(s.to_string()).map(String::from);
    assert_eq!(
        ts("2026-11-25T13:52:49.572Z").unwrap(),
        "2026-11-25T13:52:49.572Z"
    );
    assert_eq!(
        ts("2026-11-25T13:52:49Z").unwrap(),
        "2026-11-25T13:52:49.000Z"
    );
    assert!(ts("2026-11-25T13:52:49+01:00").is_err());
}

#[test]
fn documented_decoding_rules_hold() {
    let code = |p: &[u8]| decode::<StopSession>(p).unwrap_err().code;
    assert_eq!(decode::<GetSession>(b"").unwrap(), GetSession {});
    assert_eq!(decode::<GetSession>(b" \n").unwrap(), GetSession {});
    assert_eq!(code(&vec![b' '; 65_537]), ErrorCode::TooLarge);
    assert!(decode::<StopSession>(&[b' '; 65_536]).is_ok());
    assert_eq!(code(b"\xff"), ErrorCode::Malformed);
    assert_eq!(code(b"{"), ErrorCode::Malformed);
    let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
    assert_eq!(code(deep.as_bytes()), ErrorCode::Malformed);
    assert_eq!(code(b"[]"), ErrorCode::InvalidRequest);
    assert_eq!(code(b"null"), ErrorCode::InvalidRequest);
    assert_eq!(code(br#"{"detial":"x"}"#), ErrorCode::InvalidRequest);
    assert_eq!(
        decode::<CreateSession>(br#"{"id":"a.b"}"#)
            .unwrap_err()
            .code,
        ErrorCode::InvalidId
    );
    assert_eq!(
        decode::<InjectInput>(b"").unwrap_err().code,
        ErrorCode::InvalidRequest,
        "events is required"
    );
    let many = InjectInput {
        events: vec![InputEvent::Ping; 257],
    };
    assert_eq!(many.validate().unwrap_err().code, ErrorCode::TooLarge);
    // Records ignore unknown fields.
    let record = br#"{"id":"a","owner":"w","epoch":1,"state":"live","spec":{"source":{"kind":"synthetic"},"idle_ttl":"5m","max_lifetime":"1day","future":1},"created_at":"2026-11-25T12:00:00Z","updated_at":"2026-11-25T12:00:00Z","future":{"x":[1]}}"#;
    decode_record::<SessionRecord>(record).unwrap();
    // The binary example of the input section.
    let bytes = [
        0x01, 0x01, 0x04, 0x4B, 0x65, 0x79, 0x41, 0x02, 0x03, 0x00, 0xFF, 0xFF, 0x0A,
    ];
    assert_eq!(
        input::decode_input(&bytes).unwrap(),
        vec![
            InputEvent::Key {
                code: "KeyA".into(),
                down: true
            },
            InputEvent::MouseMove { dx: 3, dy: -1 },
            InputEvent::Ping
        ]
    );
}

// ------------------------------------------------------------ v1 fixture files

fn fixture_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn type_of(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    name.split('.').next().unwrap().to_string()
}

/// Parses `bytes` as `M` and checks that what we write back reads the same.
fn parses<M, F>(bytes: &[u8], read: F) -> Result<(), String>
where
    M: Serialize + PartialEq + Debug,
    F: Fn(&[u8]) -> Result<M, WireError>,
{
    let m = read(bytes).map_err(|e| e.to_string())?;
    let again = read(&encode(&m)).map_err(|e| format!("re-encoded: {e}"))?;
    if again != m {
        return Err(format!("round trip changed it: {m:?} vs {again:?}"));
    }
    Ok(())
}

fn parse_fixture(ty: &str, b: &[u8]) -> Result<(), String> {
    match ty {
        "CreateSession" => parses(b, |b| {
            decode::<CreateSession>(b).and_then(|c| c.validate().map(|_| c))
        }),
        "ListSessions" => parses(b, decode::<ListSessions>),
        "GetSession" => parses(b, decode::<GetSession>),
        "Keepalive" => parses(b, decode::<Keepalive>),
        "StopSession" => parses(b, decode::<StopSession>),
        "AdoptSession" => parses(b, decode::<AdoptSession>),
        "Fence" => parses(b, decode::<Fence>),
        "GetStats" => parses(b, decode::<GetStats>),
        "JoinPeer" => parses(b, decode::<JoinPeer>),
        "PeerSignal" => parses(b, decode::<PeerSignal>),
        "InjectInput" => parses(b, |b| {
            decode::<InjectInput>(b).and_then(|c| c.validate().map(|_| c))
        }),
        "InputEvent" => parses(b, |b| {
            decode::<InputEvent>(b).and_then(|e| validate_event(&e).map(|_| e))
        }),
        "Ack" => parses(b, decode_record::<Ack>),
        "SessionInfo" => parses(b, decode_record::<SessionInfo>),
        "SessionList" => parses(b, decode_record::<SessionList>),
        "SessionRecord" => parses(b, decode_record::<SessionRecord>),
        "Heartbeat" => parses(b, decode_record::<Heartbeat>),
        "SessionEvent" => parses(b, decode_record::<SessionEvent>),
        "WorkerLost" => parses(b, decode_record::<WorkerLost>),
        "SessionStats" => parses(b, decode_record::<SessionStats>),
        "Joined" => parses(b, decode_record::<Joined>),
        "ToPeer" => parses(b, decode_record::<ToPeer>),
        "SourceInput" => parses(b, decode_record::<SourceInput>),
        "SourceEvent" => parses(b, decode_record::<SourceEvent>),
        "ReplyEnvelope" => {
            let env: Envelope<Value> = decode_record(b).map_err(|e| e.to_string())?;
            match (env.ok, env.result.is_some(), env.error.is_some()) {
                (true, true, false) | (false, false, true) => Ok(()),
                _ => Err("an envelope has ok with result, or not ok with error".into()),
            }
        }
        other => Err(format!("no type {other}: name files <Type>.<case>.json")),
    }
}

#[test]
fn v1_fixtures_keep_parsing() {
    let dir = manifest_dir().join("tests/fixtures");
    let mut types = BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    for path in fixture_files(&dir) {
        let ty = type_of(&path);
        let bytes = std::fs::read(&path).unwrap();
        if let Err(e) = parse_fixture(&ty, &bytes) {
            failures.push(format!("{}: {e}", path.display()));
        }
        *types.entry(ty).or_default() += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for (name, _) in schema::all() {
        assert!(
            types.contains_key(name),
            "no v1 fixture for {name} in tests/fixtures/"
        );
    }
}

#[test]
fn rejected_fixtures_stay_rejected() {
    let dir = manifest_dir().join("tests/fixtures/rejected");
    let files = fixture_files(&dir);
    assert!(!files.is_empty());
    for path in files {
        let ty = type_of(&path);
        let bytes = std::fs::read(&path).unwrap();
        let err = match ty.as_str() {
            "CreateSession" => decode::<CreateSession>(&bytes).map(drop),
            "StopSession" => decode::<StopSession>(&bytes).map(drop),
            "ListSessions" => decode::<ListSessions>(&bytes).map(drop),
            "JoinPeer" => decode::<JoinPeer>(&bytes).map(drop),
            "PeerSignal" => decode::<PeerSignal>(&bytes).map(drop),
            "InjectInput" => decode::<InjectInput>(&bytes).map(drop),
            other => panic!("{}: no command type {other}", path.display()),
        }
        .expect_err(&format!("{} must be refused", path.display()));
        assert_eq!(
            err.code,
            ErrorCode::InvalidRequest,
            "{}: {err}",
            path.display()
        );
    }
}
