//! A GameStream host emulator for tests (feature `emulator`): the host side
//! of every stage, on real loopback sockets, built on the same sans-IO host
//! cores the unit tests check ([`HostPairing`], [`RtspHost`], [`Packetizer`],
//! [`AudioPacketizer`], [`ControlChannel`]).
//!
//! - HTTP: `serverinfo`, the pairing steps with the PIN the test gives;
//!   HTTPS (client certificate required, paired ones only): `serverinfo`,
//!   `pairchallenge`, `applist`, `launch` (refused with 400 while an app
//!   runs or when configured busy), `resume`, `cancel`;
//! - RTSP: one request per connection, closed after the reply, plain or
//!   `rtspenc://`;
//! - ENet control stream (rusty_enet), V1 or V2 AES-GCM envelope; every
//!   input packet is recorded, IDR requests make the next frame sent the
//!   clip's next IDR;
//! - video: the given access units in a loop at `fps`, packetized with FEC,
//!   through a seeded [`Link`] (loss, reordering, duplication), starting when
//!   the client's first ping shows its address; audio likewise with the
//!   given Opus packets.
//!
//! The record ([`Record`]) sits behind one mutex, never held across an
//! `.await`; waiters use [`Emulator::wait_for`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::audio::{AudioKey, AudioPacketizer};
use crate::control::{ControlChannel, ControlCipher, ControlMessage, Origin};
use crate::input::InputEvent;
use crate::netsim::{Link, LinkProfile};
use crate::nvhttp::{self, App, Get};
use crate::pairing::{HostPairing, Identity};
use crate::rtsp::{
    HostCapabilities, HostConfig, RtspCipher, RtspHost, RtspMessage, StreamSettings, ENC_AUDIO,
    ENC_CONTROL_V2, ENC_VIDEO,
};
use crate::video::{FrameType, HostFrame, Packetizer, PacketizerConfig};

/// What the emulated host serves.
#[derive(Clone)]
pub struct EmulatorConfig {
    pub identity: Identity,
    /// The PIN the user "enters" on the host.
    pub pin: String,
    pub apps: Vec<App>,
    /// The clip, looped: frame type and access unit.
    pub video: Vec<(FrameType, Vec<u8>)>,
    /// Opus packets, looped, one per `packetDuration`.
    pub audio: Vec<Vec<u8>>,
    pub fps: u32,
    pub fec_percentage: u8,
    pub link: LinkProfile,
    pub seed: u64,
    pub encrypt_rtsp: bool,
    /// `ENC_*` flags the host asks for in DESCRIBE.
    pub encryption_requested: u32,
    /// Refuse every launch as if an app were running.
    pub busy: bool,
    /// Frame indices sent with all but their first packet dropped.
    pub damaged_frames: Vec<u32>,
    /// Offer reference-frame invalidation in DESCRIBE. The emulator answers
    /// an invalidation by sending the clip's next IDR (its clip has no
    /// frames encoded without the lost references).
    pub ref_pic_invalidation: bool,
}

impl EmulatorConfig {
    pub fn new(identity: Identity, pin: &str) -> Self {
        Self {
            identity,
            pin: pin.into(),
            apps: vec![App {
                id: 1,
                title: "Desktop".into(),
            }],
            video: Vec::new(),
            audio: Vec::new(),
            fps: 60,
            fec_percentage: 20,
            link: LinkProfile::perfect(),
            seed: 1,
            encrypt_rtsp: true,
            encryption_requested: ENC_CONTROL_V2 | ENC_VIDEO | ENC_AUDIO,
            busy: false,
            damaged_frames: Vec::new(),
            ref_pic_invalidation: false,
        }
    }
}

/// Everything the emulator saw and sent.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub paired_clients: Vec<Vec<u8>>,
    pub inputs: Vec<InputEvent>,
    pub idr_requests: usize,
    /// Reference-frame invalidation requests, as (first, last).
    pub invalidations: Vec<(u64, u64)>,
    pub control_messages: usize,
    /// (frame index, clip index) of each frame sent.
    pub frames_sent: Vec<(u32, usize)>,
    /// Opus packets sent, by sequence number order.
    pub audio_sent: usize,
    pub announced: Option<StreamSettings>,
    pub launches: usize,
    /// Whether the last launch answered `rtspenc://`.
    pub rtspenc: bool,
    pub streaming: bool,
}

struct Session {
    key: [u8; 16],
    key_id: u32,
    rtspenc: bool,
    rtsp: RtspHost,
}

struct State {
    record: Record,
    pairing: Option<HostPairing>,
    session: Option<Session>,
    idr_pending: bool,
}

struct Shared {
    config: EmulatorConfig,
    state: Mutex<State>,
    changed: Notify,
    ports: Ports,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state.lock().expect("emulator state"));
        self.changed.notify_waiters();
        r
    }
}

/// The emulator's listening ports (all on 127.0.0.1).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
    pub rtsp: u16,
    pub control: u16,
    pub video: u16,
    pub audio: u16,
}

/// A running emulated host. Dropping it (or [`vanish`](Self::vanish)) stops
/// every task without a goodbye.
pub struct Emulator {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    enet: std_mpsc::Sender<EnetCmd>,
}

enum EnetCmd {
    Send(ControlMessage),
    Stop,
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

impl Emulator {
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Self> {
        let http = TcpListener::bind((LOCALHOST, 0)).await?;
        let https = TcpListener::bind((LOCALHOST, 0)).await?;
        let rtsp = TcpListener::bind((LOCALHOST, 0)).await?;
        let video = UdpSocket::bind((LOCALHOST, 0)).await?;
        let audio = UdpSocket::bind((LOCALHOST, 0)).await?;
        let control = std::net::UdpSocket::bind((LOCALHOST, 0))?;
        let ports = Ports {
            http: http.local_addr()?.port(),
            https: https.local_addr()?.port(),
            rtsp: rtsp.local_addr()?.port(),
            control: control.local_addr()?.port(),
            video: video.local_addr()?.port(),
            audio: audio.local_addr()?.port(),
        };
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                record: Record::default(),
                pairing: None,
                session: None,
                idr_pending: false,
            }),
            changed: Notify::new(),
            ports,
        });
        let tls =
            tokio_rustls::TlsAcceptor::from(crate::tls::server_config(&shared.config.identity));
        let (enet_tx, enet_rx) = std_mpsc::channel();
        spawn_enet_host(control, shared.clone(), enet_rx)?;
        let tasks = vec![
            tokio::spawn(serve_http(http, shared.clone(), None)),
            tokio::spawn(serve_http(https, shared.clone(), Some(tls))),
            tokio::spawn(serve_rtsp(rtsp, shared.clone())),
            tokio::spawn(stream_video(video, shared.clone())),
            tokio::spawn(stream_audio(audio, shared.clone())),
        ];
        Ok(Self {
            shared,
            tasks,
            enet: enet_tx,
        })
    }

    pub fn ports(&self) -> Ports {
        self.shared.ports
    }

    pub fn ip(&self) -> IpAddr {
        LOCALHOST
    }

    pub fn record(&self) -> Record {
        self.shared
            .state
            .lock()
            .expect("emulator state")
            .record
            .clone()
    }

    /// Waits until `check` holds on the record, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        check: impl Fn(&Record) -> bool,
    ) -> Result<Record, Record> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            let r = self.record();
            if check(&r) {
                return Ok(r);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.record());
            }
        }
    }

    /// Ends the stream as a host does: a termination message with `reason`.
    pub fn terminate(&self, reason: u32) {
        let _ = self
            .enet
            .send(EnetCmd::Send(ControlMessage::Termination { reason }));
    }

    /// Stops answering anything, without a goodbye.
    pub fn vanish(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let _ = self.enet.send(EnetCmd::Stop);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.vanish();
    }
}

async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    done: impl Fn(&[u8]) -> bool,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !done(&buf) {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

async fn serve_http(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    let _ = answer_http(tcp, &shared, None).await;
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.as_ref().to_vec());
                    let _ = answer_http(stream, &shared, Some(cert)).await;
                }
            }
        });
    }
}

async fn answer_http<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    shared: &Shared,
    tls_cert: Option<Option<Vec<u8>>>,
) -> std::io::Result<()> {
    let buf = read_head(&mut s, |b| b.windows(4).any(|w| w == b"\r\n\r\n")).await?;
    let body = match Get::parse(&buf) {
        Ok(Some(get)) => handle_http(shared, &get, tls_cert),
        _ => nvhttp::xml(400, "Bad request", &[]),
    };
    s.write_all(&nvhttp::response(&body)).await?;
    s.shutdown().await
}

fn handle_http(shared: &Shared, get: &Get, tls_cert: Option<Option<Vec<u8>>>) -> String {
    let config = &shared.config;
    let ports = shared.ports;
    let paired = match &tls_cert {
        Some(Some(der)) => shared.with(|s| s.record.paired_clients.contains(der)),
        _ => false,
    };
    let https = tls_cert.is_some();
    if https && !paired && get.path != "/serverinfo" {
        return nvhttp::xml(
            401,
            "The client is not authorized. Certificate verification failed.",
            &[],
        );
    }
    match get.path.as_str() {
        "/serverinfo" => {
            let running = shared.with(|s| s.session.is_some()) || config.busy;
            nvhttp::xml(
                200,
                "OK",
                &[
                    ("hostname", "roth-emulator".into()),
                    ("appversion", "7.1.431.-1".into()),
                    ("GfeVersion", "3.23.0.74".into()),
                    ("uniqueid", "EMULATOR-0000".into()),
                    ("HttpsPort", ports.https.to_string()),
                    ("ExternalPort", ports.http.to_string()),
                    ("mac", "00:00:00:00:00:00".into()),
                    ("LocalIP", "127.0.0.1".into()),
                    ("ServerCodecModeSupport", "1".into()),
                    ("PairStatus", u8::from(paired).to_string()),
                    ("currentgame", if running { "1" } else { "0" }.into()),
                    (
                        "state",
                        if running {
                            "SUNSHINE_SERVER_BUSY"
                        } else {
                            "SUNSHINE_SERVER_FREE"
                        }
                        .into(),
                    ),
                ],
            )
        }
        "/pair" => handle_pair(shared, get, paired),
        "/applist" => {
            let mut s = String::from(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<root status_code=\"200\">",
            );
            for a in &config.apps {
                s.push_str(&format!(
                    "<App><IsHdrSupported>0</IsHdrSupported><AppTitle>{}</AppTitle><ID>{}</ID></App>",
                    a.title, a.id
                ));
            }
            s.push_str("</root>");
            s
        }
        "/launch" | "/resume" => {
            let key = get
                .param("rikey")
                .and_then(|k| hex::decode(k).ok())
                .and_then(|k| <[u8; 16]>::try_from(k).ok());
            let key_id = get
                .param("rikeyid")
                .and_then(|k| k.parse::<i64>().ok())
                .unwrap_or(0) as u32;
            let Some(key) = key else {
                return nvhttp::xml(400, "Missing rikey", &[]);
            };
            let resume = get.path == "/resume";
            let ok = shared.with(|s| {
                if config.busy || (s.session.is_some() && !resume) {
                    return false;
                }
                s.record.launches += 1;
                s.session = Some(Session {
                    key,
                    key_id,
                    rtspenc: false,
                    rtsp: RtspHost::new(HostConfig {
                        capabilities: HostCapabilities {
                            feature_flags: 3,
                            encryption_supported: ENC_CONTROL_V2 | ENC_VIDEO | ENC_AUDIO,
                            encryption_requested: config.encryption_requested,
                            hevc: false,
                            av1: false,
                            ref_pic_invalidation: config.ref_pic_invalidation,
                        },
                        audio_port: ports.audio,
                        video_port: ports.video,
                        control_port: ports.control,
                        audio_ping: "AUDIOPING0123456".into(),
                        video_ping: "VIDEOPING0123456".into(),
                        control_connect_data: 0x1234_5678,
                    }),
                });
                true
            });
            if !ok {
                return nvhttp::xml(400, "An app is already running on this host", &[]);
            }
            // As Sunshine: encrypted RTSP only for clients reporting corever >= 1.
            let corever = get
                .param("corever")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0);
            let encrypted = config.encrypt_rtsp && corever >= 1;
            shared.with(|s| {
                if let Some(session) = s.session.as_mut() {
                    session.rtspenc = encrypted;
                }
                s.record.rtspenc = encrypted;
            });
            let scheme = if encrypted { "rtspenc" } else { "rtsp" };
            nvhttp::xml(
                200,
                "OK",
                &[
                    (
                        "sessionUrl0",
                        format!("{scheme}://127.0.0.1:{}", ports.rtsp),
                    ),
                    ("gamesession", "1".into()),
                ],
            )
        }
        "/cancel" => {
            shared.with(|s| {
                s.session = None;
                s.record.streaming = false;
            });
            nvhttp::xml(200, "OK", &[("cancel", "1".into())])
        }
        _ => nvhttp::xml(404, "Not found", &[]),
    }
}

fn handle_pair(shared: &Shared, get: &Get, paired: bool) -> String {
    let config = &shared.config;
    let fail = || nvhttp::xml(200, "OK", &[("paired", "0".into())]);
    if get.param("phrase") == Some("pairchallenge") {
        return nvhttp::xml(200, "OK", &[("paired", u8::from(paired).to_string())]);
    }
    if get.param("phrase") == Some("getservercert") {
        let (Some(salt), Some(cert)) = (get.param("salt"), get.param("clientcert")) else {
            return fail();
        };
        return match HostPairing::start(config.identity.clone(), &config.pin, salt, cert) {
            Ok((p, plaincert)) => {
                shared.with(|s| s.pairing = Some(p));
                nvhttp::xml(
                    200,
                    "OK",
                    &[("paired", "1".into()), ("plaincert", plaincert)],
                )
            }
            Err(_) => fail(),
        };
    }
    shared.with(|s| {
        let Some(p) = s.pairing.as_mut() else {
            return fail();
        };
        if let Some(c) = get.param("clientchallenge") {
            let mut secret = [0u8; 16];
            let mut challenge = [0u8; 16];
            OsRng.fill_bytes(&mut secret);
            OsRng.fill_bytes(&mut challenge);
            match p.on_client_challenge(c, secret, challenge) {
                Ok(r) => nvhttp::xml(
                    200,
                    "OK",
                    &[("paired", "1".into()), ("challengeresponse", r)],
                ),
                Err(_) => fail(),
            }
        } else if let Some(r) = get.param("serverchallengeresp") {
            match p.on_server_challenge_resp(r) {
                Ok(secret) => nvhttp::xml(
                    200,
                    "OK",
                    &[("paired", "1".into()), ("pairingsecret", secret)],
                ),
                Err(_) => fail(),
            }
        } else if let Some(r) = get.param("clientpairingsecret") {
            let result = p.on_client_pairing_secret(r);
            s.pairing = None;
            match result {
                Ok(cert) => {
                    s.record.paired_clients.push(cert.der().to_vec());
                    nvhttp::xml(200, "OK", &[("paired", "1".into())])
                }
                Err(_) => fail(),
            }
        } else {
            fail()
        }
    })
}

async fn serve_rtsp(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        let Some((key, encrypted)) =
            shared.with(|s| s.session.as_ref().map(|x| (x.key, x.rtspenc)))
        else {
            continue;
        };
        let cipher = RtspCipher::new(&key);
        let done = |b: &[u8]| {
            if encrypted {
                matches!(cipher.open(Origin::Client, b), Ok(Some(_)) | Err(_))
            } else {
                !matches!(RtspMessage::parse(b), Ok(None))
            }
        };
        let Ok(buf) = read_head(&mut tcp, done).await else {
            continue;
        };
        let (plain, seq) = if encrypted {
            let seq = buf
                .get(4..8)
                .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
                .unwrap_or(0);
            match cipher.open(Origin::Client, &buf) {
                Ok(Some((p, _))) => (p, seq),
                _ => continue,
            }
        } else {
            (buf, 0)
        };
        let Ok(Some((req, _))) = RtspMessage::parse(&plain) else {
            continue;
        };
        let reply = shared.with(|s| {
            let session = s.session.as_mut()?;
            let reply = session.rtsp.handle(&req);
            if session.rtsp.played() && !s.record.streaming {
                s.record.announced = session.rtsp.announced().cloned();
                s.record.streaming = true;
                s.idr_pending = false;
            }
            Some(reply)
        });
        let Some(reply) = reply else { continue };
        let wire = if encrypted {
            cipher.seal(seq, Origin::Host, &reply.encode())
        } else {
            reply.encode()
        };
        let _ = tcp.write_all(&wire).await;
        let _ = tcp.shutdown().await;
    }
}

/// Waits for the client's first ping on `socket`; returns its address.
async fn client_address(socket: &UdpSocket, shared: &Shared) -> SocketAddr {
    let mut buf = [0u8; 64];
    loop {
        let streaming = shared.with(|s| s.record.streaming);
        if let Ok((_, from)) = socket.recv_from(&mut buf).await {
            if streaming || shared.with(|s| s.record.streaming) {
                return from;
            }
        }
    }
}

async fn stream_video(socket: UdpSocket, shared: Arc<Shared>) {
    let config = &shared.config;
    if config.video.is_empty() {
        return;
    }
    let client = client_address(&socket, &shared).await;
    let (settings, key, encryption) = shared.with(|s| {
        let settings = s
            .record
            .announced
            .clone()
            .unwrap_or_else(|| StreamSettings::new(1280, 720, 60, 10_000));
        let key = s.session.as_ref().map(|x| x.key).unwrap_or_default();
        (settings.clone(), key, settings.encryption)
    });
    let mut packetizer = Packetizer::new(PacketizerConfig {
        packet_size: settings.packet_size as usize,
        fec_percentage: config.fec_percentage,
        min_parity: settings.min_fec_packets as usize,
        key: (encryption & ENC_VIDEO != 0).then_some(key),
    });
    let mut link = Link::new(config.seed, config.link);
    let mut tick = tokio::time::interval(Duration::from_micros(
        1_000_000 / u64::from(config.fps.max(1)),
    ));
    let mut clip_index = 0usize;
    let mut frame_index = 1u32;
    loop {
        tick.tick().await;
        if !shared.with(|s| s.record.streaming) {
            continue;
        }
        if shared.with(|s| std::mem::take(&mut s.idr_pending)) {
            // Jump to the clip's next IDR frame.
            let n = config.video.len();
            clip_index = (0..n)
                .map(|k| (clip_index + k) % n)
                .find(|&i| config.video[i].0 == FrameType::Idr)
                .unwrap_or(clip_index);
        }
        let (frame_type, data) = &config.video[clip_index];
        let packets = packetizer.packetize(&HostFrame {
            frame_index,
            frame_type: *frame_type,
            rtp_timestamp: frame_index.wrapping_mul(90_000 / config.fps.max(1)),
            data,
        });
        let damaged = config.damaged_frames.contains(&frame_index);
        let now = Instant::now();
        for (k, p) in packets.into_iter().enumerate() {
            if damaged && k > 0 {
                continue;
            }
            link.send(now, p);
        }
        while let Some((_, p)) = link.poll(now + Duration::from_millis(10)) {
            let _ = socket.send_to(&p, client).await;
        }
        shared.with(|s| s.record.frames_sent.push((frame_index, clip_index)));
        frame_index += 1;
        clip_index = (clip_index + 1) % config.video.len();
    }
}

async fn stream_audio(socket: UdpSocket, shared: Arc<Shared>) {
    let config = &shared.config;
    if config.audio.is_empty() {
        return;
    }
    let client = client_address(&socket, &shared).await;
    let (duration, key) = shared.with(|s| {
        let settings = s
            .record
            .announced
            .clone()
            .unwrap_or_else(|| StreamSettings::new(1280, 720, 60, 10_000));
        let key = s.session.as_ref().and_then(|x| {
            (settings.encryption & ENC_AUDIO != 0).then_some(AudioKey {
                key: x.key,
                key_id: x.key_id,
            })
        });
        (settings.audio_packet_duration_ms.max(1), key)
    });
    let mut packetizer = AudioPacketizer::new(key, duration);
    let mut link = Link::new(config.seed ^ 0xa0d10, config.link);
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(duration)));
    let mut i = 0usize;
    loop {
        tick.tick().await;
        if !shared.with(|s| s.record.streaming) {
            continue;
        }
        let now = Instant::now();
        for p in packetizer.packetize(&config.audio[i % config.audio.len()]) {
            link.send(now, p);
        }
        while let Some((_, p)) = link.poll(now + Duration::from_millis(10)) {
            let _ = socket.send_to(&p, client).await;
        }
        shared.with(|s| s.record.audio_sent += 1);
        i += 1;
    }
}

fn spawn_enet_host(
    socket: std::net::UdpSocket,
    shared: Arc<Shared>,
    commands: std_mpsc::Receiver<EnetCmd>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("emulator-enet".into())
        .spawn(move || {
            let settings = rusty_enet::HostSettings {
                peer_limit: 4,
                channel_limit: 255,
                ..Default::default()
            };
            let Ok(mut host) = rusty_enet::Host::new(socket, settings) else {
                return;
            };
            let mut peer = None;
            let channel = |shared: &Shared| -> Option<ControlChannel> {
                shared.with(|s| {
                    let session = s.session.as_ref()?;
                    let encryption = s
                        .record
                        .announced
                        .as_ref()
                        .map(|a| a.encryption)
                        .unwrap_or(0);
                    let cipher = if encryption & ENC_CONTROL_V2 != 0 {
                        ControlCipher::v2(&session.key)
                    } else {
                        ControlCipher::v1(&session.key)
                    };
                    Some(ControlChannel::new(cipher, Origin::Host))
                })
            };
            let mut sender: Option<ControlChannel> = None;
            loop {
                loop {
                    match host.service() {
                        Ok(Some(rusty_enet::Event::Connect { peer: p, .. })) => {
                            peer = Some(p.id());
                            sender = channel(&shared);
                        }
                        Ok(Some(rusty_enet::Event::Receive { packet, .. })) => {
                            let opened = channel(&shared).map(|c| c.open(packet.data()));
                            shared.with(|s| {
                                s.record.control_messages += 1;
                                match opened {
                                    Some(Ok(ControlMessage::Input(e))) => s.record.inputs.push(e),
                                    Some(Ok(ControlMessage::RequestIdr)) => {
                                        s.record.idr_requests += 1;
                                        s.idr_pending = true;
                                    }
                                    Some(Ok(ControlMessage::InvalidateRefFrames {
                                        first,
                                        last,
                                    })) => {
                                        s.record.invalidations.push((first, last));
                                        s.idr_pending = true;
                                    }
                                    _ => {}
                                }
                            });
                        }
                        Ok(Some(rusty_enet::Event::Disconnect { .. })) => peer = None,
                        Ok(None) | Err(_) => break,
                    }
                }
                loop {
                    match commands.try_recv() {
                        Ok(EnetCmd::Send(m)) => {
                            if let (Some(id), Some(ch)) = (peer, sender.as_mut()) {
                                let bytes = ch.seal(&m);
                                let _ = host
                                    .peer_mut(id)
                                    .send(0, &rusty_enet::Packet::reliable(bytes.as_slice()));
                            }
                        }
                        Ok(EnetCmd::Stop) | Err(std_mpsc::TryRecvError::Disconnected) => return,
                        Err(std_mpsc::TryRecvError::Empty) => break,
                    }
                }
                host.flush();
                // rusty_enet has no readiness API: poll at 1 kHz.
                std::thread::sleep(Duration::from_millis(1));
            }
        })?;
    Ok(())
}
