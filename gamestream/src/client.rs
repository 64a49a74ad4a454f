//! The tokio driver of the client: HTTP(S) calls, pairing, launch, and a
//! stream task that owns the sockets and the sans-IO cores.
//!
//! [`HostClient`] talks to one host. [`Stream`] is a handle to the task that
//! owns one session's video and audio sockets, the ENet control thread and
//! the [`Depacketizer`] / [`AudioReceiver`] / [`ControlChannel`] cores; events
//! come out of [`Stream::next_event`], commands go in through the handle.

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::audio::{AudioKey, AudioPacket, AudioReceiver};
use crate::control::{ControlChannel, ControlCipher, ControlMessage, Origin};
use crate::input::InputEvent;
use crate::nvhttp::{self, App, Get, HttpError, ServerInfo, XmlAnswer};
use crate::pairing::{ClientPairing, Identity, PairRequest, PairingError, PeerCert};
use crate::rtsp::{
    Negotiated, RtspCipher, RtspClient, RtspError, RtspMessage, StreamSettings, ENC_CONTROL_V2,
    ENC_VIDEO,
};
use crate::tls;
use crate::video::{AccessUnit, Depacketizer, DepacketizerConfig, VideoEvent};

/// How long one HTTP or RTSP exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(#[from] HttpError),
    #[error("pairing: {0}")]
    Pairing(#[from] PairingError),
    #[error("RTSP: {0}")]
    Rtsp(#[from] RtspError),
    #[error("not paired with this host")]
    NotPaired,
    #[error("host refused ({code}): {message}")]
    Refused { code: u32, message: String },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("control stream: {0}")]
    Control(String),
}

impl ClientError {
    fn from_http(e: HttpError) -> Self {
        match e {
            HttpError::Status { code, message } => ClientError::Refused { code, message },
            other => ClientError::Http(other),
        }
    }
}

/// What `launch` (or `resume`) returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub session_url: String,
    /// AES key for control, audio, video and RTSP encryption.
    pub key: [u8; 16],
    pub key_id: u32,
}

impl Launch {
    /// Host and RTSP port of `sessionUrl0`, and whether it is `rtspenc://`.
    pub fn rtsp_target(&self) -> Option<(String, u16, bool)> {
        let (enc, rest) = if let Some(r) = self.session_url.strip_prefix("rtspenc://") {
            (true, r)
        } else {
            (false, self.session_url.strip_prefix("rtsp://")?)
        };
        let (host, port) = rest.rsplit_once(':')?;
        Some((
            host.to_string(),
            port.trim_end_matches('/').parse().ok()?,
            enc,
        ))
    }
}

/// A client of one host.
pub struct HostClient {
    identity: Identity,
    host: IpAddr,
    http_port: u16,
    https_port: u16,
    pinned: Option<PeerCert>,
    unique_id: String,
}

impl HostClient {
    pub fn new(identity: Identity, host: IpAddr, http_port: u16) -> Self {
        Self {
            identity,
            host,
            http_port,
            https_port: 0,
            pinned: None,
            unique_id: "0123456789ABCDEF".into(),
        }
    }

    /// A client already paired: `pinned` is the host certificate learned then.
    pub fn with_pinned(mut self, pinned: PeerCert, https_port: u16) -> Self {
        self.pinned = Some(pinned);
        self.https_port = https_port;
        self
    }

    pub fn pinned(&self) -> Option<&PeerCert> {
        self.pinned.as_ref()
    }

    fn base(&self, path: &str) -> Get {
        Get::new(path)
            .arg("uniqueid", &self.unique_id)
            .arg("uuid", "00000000-0000-0000-0000-000000000000")
    }

    async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut s: S,
        request: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        s.write_all(request).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn http(&self, get: Get) -> Result<XmlAnswer, ClientError> {
        let addr = SocketAddr::new(self.host, self.http_port);
        let buf = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            let tcp = TcpStream::connect(addr).await?;
            Self::exchange(tcp, &get.encode(&self.host.to_string())).await
        })
        .await
        .map_err(|_| ClientError::Timeout("HTTP request"))??;
        Ok(XmlAnswer::parse(nvhttp::response_body(&buf)?)?)
    }

    async fn https(&self, get: Get) -> Result<XmlAnswer, ClientError> {
        if self.https_port == 0 {
            return Err(ClientError::NotPaired);
        }
        let addr = SocketAddr::new(self.host, self.https_port);
        let config = tls::client_config(&self.identity, self.pinned.as_ref().map(PeerCert::der));
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::IpAddress(self.host.into());
        let buf = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            let tcp = TcpStream::connect(addr).await?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            Self::exchange(tls, &get.encode(&self.host.to_string())).await
        })
        .await
        .map_err(|_| ClientError::Timeout("HTTPS request"))??;
        Ok(XmlAnswer::parse(nvhttp::response_body(&buf)?)?)
    }

    pub async fn server_info(&mut self) -> Result<ServerInfo, ClientError> {
        let a = self
            .http(self.base("/serverinfo"))
            .await?
            .ok()
            .map_err(ClientError::from_http)?;
        let info = ServerInfo::from_answer(&a)?;
        self.https_port = info.https_port;
        Ok(info)
    }

    /// Pairs with `pin` (which the user enters on the host); on success the
    /// host certificate is pinned for every later HTTPS request.
    pub async fn pair(
        &mut self,
        pin: &str,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), ClientError> {
        if self.https_port == 0 {
            self.server_info().await?;
        }
        let mut r = [[0u8; 16]; 3];
        for b in &mut r {
            rng.fill_bytes(b);
        }
        let (mut pairing, first) = ClientPairing::start(self.identity.clone(), pin, r[0], r[1]);
        let PairRequest::GetServerCert { salt, client_cert } = first else {
            unreachable!("pairing starts with getservercert")
        };
        let base = self
            .base("/pair")
            .arg("devicename", "roth")
            .arg("updateState", 1);
        let pair = |extra: Vec<(&str, String)>| {
            let mut g = base.clone();
            for (k, v) in extra {
                g = g.arg(k, v);
            }
            g
        };
        let a = self
            .http(pair(vec![
                ("phrase", "getservercert".into()),
                ("salt", salt),
                ("clientcert", client_cert),
            ]))
            .await?;
        let paired = a.fields.get("paired").map(String::as_str) == Some("1");
        let plaincert = a.fields.get("plaincert").cloned().unwrap_or_default();
        let step = |r: PairRequest| match r {
            PairRequest::ClientChallenge(v) => ("clientchallenge", v),
            PairRequest::ServerChallengeResp(v) => ("serverchallengeresp", v),
            PairRequest::ClientPairingSecret(v) => ("clientpairingsecret", v),
            PairRequest::GetServerCert { .. } => unreachable!("only first"),
        };
        let (k, v) = step(pairing.on_server_cert(paired, &plaincert)?);
        let a = self.http(pair(vec![(k, v)])).await?;
        let (k, v) = step(pairing.on_challenge_response(a.field("challengeresponse")?, r[2])?);
        let a = self.http(pair(vec![(k, v)])).await?;
        let (k, v) = step(pairing.on_pairing_secret(a.field("pairingsecret")?)?);
        let a = self.http(pair(vec![(k, v)])).await?;
        let host_cert =
            pairing.on_paired(a.fields.get("paired").map(String::as_str) == Some("1"))?;
        tracing::info!(host = %self.host, "paired; host certificate pinned");
        self.pinned = Some(host_cert);
        let a = self
            .https(pair(vec![("phrase", "pairchallenge".into())]))
            .await?;
        if a.fields.get("paired").map(String::as_str) != Some("1") {
            return Err(ClientError::NotPaired);
        }
        Ok(())
    }

    pub async fn apps(&self) -> Result<Vec<App>, ClientError> {
        let a = self
            .https(self.base("/applist"))
            .await?
            .ok()
            .map_err(ClientError::from_http)?;
        Ok(nvhttp::apps(&a))
    }

    /// Launches `app_id` (or resumes the running app when `resume`).
    pub async fn launch(
        &self,
        app_id: u32,
        settings: &StreamSettings,
        key: [u8; 16],
        key_id: u32,
        resume: bool,
    ) -> Result<Launch, ClientError> {
        let get = self
            .base(if resume { "/resume" } else { "/launch" })
            .arg("appid", app_id)
            .arg(
                "mode",
                format!("{}x{}x{}", settings.width, settings.height, settings.fps),
            )
            .arg("additionalStates", 1)
            .arg("sops", 0)
            .arg("rikey", hex::encode_upper(key))
            .arg("rikeyid", key_id)
            .arg("localAudioPlayMode", 0)
            .arg("surroundAudioInfo", 196_610)
            .arg("remoteControllersBitmap", 0)
            .arg("gcmap", 0)
            // Sunshine answers rtspenc:// only to clients that report corever >= 1.
            .arg("corever", 1);
        let a = self
            .https(get)
            .await?
            .ok()
            .map_err(ClientError::from_http)?;
        Ok(Launch {
            session_url: a.field("sessionUrl0")?.to_string(),
            key,
            key_id,
        })
    }

    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.https(self.base("/cancel"))
            .await?
            .ok()
            .map_err(ClientError::from_http)?;
        Ok(())
    }

    /// Runs the RTSP handshake and starts the stream task.
    pub async fn start_stream(
        &self,
        launch: &Launch,
        settings: StreamSettings,
        options: StreamOptions,
    ) -> Result<Stream, ClientError> {
        let (host, port, encrypted) = launch
            .rtsp_target()
            .ok_or(ClientError::Rtsp(RtspError::Malformed("sessionUrl0")))?;
        let host_ip: IpAddr = host.parse().unwrap_or(self.host);
        let mut rtsp = RtspClient::new(&host_ip.to_string(), "0.0.0.0", settings);
        let cipher = encrypted.then(|| RtspCipher::new(&launch.key));
        let mut seq = 0u32;
        while !rtsp.is_done() {
            let req = rtsp.next_request()?;
            seq += 1;
            let wire = match &cipher {
                Some(c) => c.seal(seq, Origin::Client, &req.encode()),
                None => req.encode(),
            };
            let buf = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
                let tcp = TcpStream::connect(SocketAddr::new(host_ip, port)).await?;
                Self::exchange(tcp, &wire).await
            })
            .await
            .map_err(|_| ClientError::Timeout("RTSP request"))??;
            let plain = match &cipher {
                Some(c) => {
                    c.open(Origin::Host, &buf)?
                        .ok_or(RtspError::Malformed("truncated"))?
                        .0
                }
                None => buf,
            };
            rtsp.on_response(&RtspMessage::parse_complete(&plain)?)?;
        }
        let negotiated = rtsp.negotiated().clone();
        let settings = rtsp.settings().clone();
        tracing::debug!(
            video_port = negotiated.video_port,
            audio_port = negotiated.audio_port,
            control_port = negotiated.control_port,
            encryption = negotiated.encryption,
            rtspenc = encrypted,
            "RTSP handshake done"
        );
        Stream::start(host_ip, negotiated, settings, launch.clone(), options).await
    }
}

/// Driver settings of a stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The stream ends with [`StreamEnd::HostVanished`] after this long
    /// without any packet from the host.
    pub host_timeout: Duration,
    /// Reassembly timeout of an incomplete frame.
    pub frame_timeout: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            host_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_millis(100),
        }
    }
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The host sent a termination with this HRESULT.
    Terminated { reason: u32 },
    /// Nothing arrived from the host for `host_timeout`, or its control
    /// connection dropped.
    HostVanished { silent_for: Duration },
    /// [`Stream::stop`] was called.
    Stopped,
    /// A socket failed.
    Failed(String),
}

/// What a stream delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Video(AccessUnit),
    Audio(AudioPacket),
    /// The client asked the host for an IDR frame (frame `lost_frame` could
    /// not be recovered).
    IdrRequested {
        lost_frame: u32,
    },
    /// The client asked the host to stop referencing frames `first..=last`
    /// (the host offers reference-frame invalidation).
    RefFramesInvalidated {
        first: u32,
        last: u32,
    },
    Ended(StreamEnd),
}

enum Command {
    Input(InputEvent),
    RequestIdr,
    Stop,
}

/// Handle to a running stream.
pub struct Stream {
    events: mpsc::Receiver<StreamEvent>,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
    negotiated: Negotiated,
}

enum EnetIn {
    Connected,
    Message(Vec<u8>),
    Disconnected,
}

/// The ENet host of the control stream, on its own thread (rusty_enet is a
/// synchronous, polled library).
fn spawn_enet(
    remote: SocketAddr,
    connect_data: u32,
    to_task: mpsc::UnboundedSender<EnetIn>,
) -> std::io::Result<std_mpsc::Sender<Option<Vec<u8>>>> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(
        if remote.is_ipv4() {
            "0.0.0.0".parse().expect("ip")
        } else {
            "::".parse().expect("ip")
        },
        0,
    ))?;
    let (tx, rx) = std_mpsc::channel::<Option<Vec<u8>>>();
    std::thread::Builder::new()
        .name("gamestream-enet".into())
        .spawn(move || {
            let settings = rusty_enet::HostSettings {
                peer_limit: 1,
                channel_limit: 32,
                ..Default::default()
            };
            let Ok(mut host) = rusty_enet::Host::new(socket, settings) else {
                let _ = to_task.send(EnetIn::Disconnected);
                return;
            };
            let peer_id = match host.connect(remote, 32, connect_data) {
                Ok(p) => {
                    p.set_timeout(8, 1000, 2000);
                    p.id()
                }
                Err(_) => {
                    let _ = to_task.send(EnetIn::Disconnected);
                    return;
                }
            };
            loop {
                loop {
                    match host.service() {
                        Ok(Some(rusty_enet::Event::Connect { .. })) => {
                            let _ = to_task.send(EnetIn::Connected);
                        }
                        Ok(Some(rusty_enet::Event::Receive { packet, .. })) => {
                            let _ = to_task.send(EnetIn::Message(packet.data().to_vec()));
                        }
                        Ok(Some(rusty_enet::Event::Disconnect { .. })) | Err(_) => {
                            let _ = to_task.send(EnetIn::Disconnected);
                            return;
                        }
                        Ok(None) => break,
                    }
                }
                loop {
                    match rx.try_recv() {
                        Ok(Some(bytes)) => {
                            let _ = host
                                .peer_mut(peer_id)
                                .send(0, &rusty_enet::Packet::reliable(bytes.as_slice()));
                        }
                        Ok(None) | Err(std_mpsc::TryRecvError::Disconnected) => {
                            host.peer_mut(peer_id).disconnect_now(0);
                            host.flush();
                            return;
                        }
                        Err(std_mpsc::TryRecvError::Empty) => break,
                    }
                }
                host.flush();
                // rusty_enet has no readiness API: poll at 1 kHz.
                std::thread::sleep(Duration::from_millis(1));
            }
        })?;
    Ok(tx)
}

/// The video socket, with a receive buffer that holds bursts of several
/// frames (an IDR at 50 Mbit/s is hundreds of datagrams); the kernel caps the
/// size at `net.core.rmem_max`.
fn video_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn ping_packet(payload: &Option<String>, seq: u32) -> Vec<u8> {
    match payload {
        Some(p) if p.len() == 16 => {
            let mut v = p.as_bytes().to_vec();
            v.extend_from_slice(&seq.to_be_bytes());
            v
        }
        _ => b"PING".to_vec(),
    }
}

impl Stream {
    async fn start(
        host: IpAddr,
        negotiated: Negotiated,
        settings: StreamSettings,
        launch: Launch,
        options: StreamOptions,
    ) -> Result<Stream, ClientError> {
        let any = SocketAddr::new(
            if host.is_ipv4() {
                "0.0.0.0".parse().expect("ip")
            } else {
                "::".parse().expect("ip")
            },
            0,
        );
        let video = video_socket(any)?;
        let audio = UdpSocket::bind(any).await?;
        let video_addr = SocketAddr::new(host, negotiated.video_port);
        let audio_addr = SocketAddr::new(host, negotiated.audio_port);
        let (enet_tx, enet_rx) = mpsc::unbounded_channel();
        let enet = spawn_enet(
            SocketAddr::new(host, negotiated.control_port),
            negotiated.control_connect_data.unwrap_or(0),
            enet_tx,
        )?;
        let cipher = if negotiated.encryption & ENC_CONTROL_V2 != 0 {
            ControlCipher::v2(&launch.key)
        } else {
            ControlCipher::v1(&launch.key)
        };
        let mut vconfig = DepacketizerConfig::new(settings.packet_size as usize);
        vconfig.frame_timeout = options.frame_timeout;
        vconfig.reference_invalidation = negotiated.capabilities.ref_pic_invalidation;
        if negotiated.encryption & ENC_VIDEO != 0 {
            vconfig.key = Some(launch.key);
        }
        let audio_key = (negotiated.encryption & crate::rtsp::ENC_AUDIO != 0).then_some(AudioKey {
            key: launch.key,
            key_id: launch.key_id,
        });
        let (events_tx, events) = mpsc::channel(1024);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let core = StreamTask {
            video,
            audio,
            video_addr,
            audio_addr,
            enet,
            enet_rx,
            control: ControlChannel::new(cipher, Origin::Client),
            depacketizer: Depacketizer::new(vconfig),
            audio_rx: AudioReceiver::new(audio_key, settings.audio_packet_duration_ms),
            events: events_tx,
            commands: commands_rx,
            options,
            negotiated: negotiated.clone(),
        };
        let task = tokio::spawn(core.run());
        Ok(Stream {
            events,
            commands,
            task,
            negotiated,
        })
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The next event; `None` after [`StreamEvent::Ended`] was taken.
    pub async fn next_event(&mut self) -> Option<StreamEvent> {
        self.events.recv().await
    }

    pub fn send_input(&self, event: InputEvent) {
        let _ = self.commands.send(Command::Input(event));
    }

    pub fn request_idr(&self) {
        let _ = self.commands.send(Command::RequestIdr);
    }

    /// Ends the stream; waits for its task.
    pub async fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        while self.events.recv().await.is_some() {}
        let _ = (&mut self.task).await;
    }
}

struct StreamTask {
    video: UdpSocket,
    audio: UdpSocket,
    video_addr: SocketAddr,
    audio_addr: SocketAddr,
    enet: std_mpsc::Sender<Option<Vec<u8>>>,
    enet_rx: mpsc::UnboundedReceiver<EnetIn>,
    control: ControlChannel,
    depacketizer: Depacketizer,
    audio_rx: AudioReceiver,
    events: mpsc::Sender<StreamEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    options: StreamOptions,
    negotiated: Negotiated,
}

impl StreamTask {
    fn send_control(&mut self, m: &ControlMessage) {
        let _ = self.enet.send(Some(self.control.seal(m)));
    }

    async fn run(mut self) {
        let end = self.run_inner().await;
        let stats = self.depacketizer.stats();
        tracing::info!(
            ?end,
            frames = stats.frames_delivered,
            frames_lost = stats.frames_lost,
            recovered_shards = stats.recovered_shards,
            audio_recovered = self.audio_rx.recovered(),
            "gamestream stream ended"
        );
        let _ = self.enet.send(None);
        let _ = self.events.send(StreamEvent::Ended(end)).await;
    }

    async fn run_inner(&mut self) -> StreamEnd {
        let mut vbuf = vec![0u8; 65536];
        let mut abuf = vec![0u8; 4096];
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval(Duration::from_millis(100));
        let mut udp_ping = tokio::time::interval(Duration::from_millis(500));
        let mut ping_seq = 0u32;
        loop {
            let deadline = self
                .depacketizer
                .deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let silent_until = last_heard + self.options.host_timeout;
            tokio::select! {
                r = self.video.recv_from(&mut vbuf) => {
                    let Ok((n, _)) = r else { return StreamEnd::Failed("video socket".into()) };
                    last_heard = Instant::now();
                    let _ = self.depacketizer.push(last_heard, &vbuf[..n]);
                    if self.drain_video().await.is_err() { return StreamEnd::Stopped; }
                }
                r = self.audio.recv_from(&mut abuf) => {
                    let Ok((n, _)) = r else { return StreamEnd::Failed("audio socket".into()) };
                    last_heard = Instant::now();
                    if let Ok(packets) = self.audio_rx.push(&abuf[..n]) {
                        for p in packets {
                            if self.events.send(StreamEvent::Audio(p)).await.is_err() { return StreamEnd::Stopped; }
                        }
                    }
                }
                m = self.enet_rx.recv() => match m {
                    Some(EnetIn::Connected) => {
                        last_heard = Instant::now();
                        self.send_control(&ControlMessage::RequestIdr);
                        self.send_control(&ControlMessage::StartB);
                    }
                    Some(EnetIn::Message(bytes)) => {
                        last_heard = Instant::now();
                        if let Ok(ControlMessage::Termination { reason }) = self.control.open(&bytes) {
                            return StreamEnd::Terminated { reason };
                        }
                    }
                    Some(EnetIn::Disconnected) | None => {
                        return StreamEnd::HostVanished { silent_for: last_heard.elapsed() };
                    }
                },
                c = self.commands.recv() => match c {
                    Some(Command::Input(e)) => self.send_control(&ControlMessage::Input(e)),
                    Some(Command::RequestIdr) => self.send_control(&ControlMessage::RequestIdr),
                    Some(Command::Stop) | None => return StreamEnd::Stopped,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.depacketizer.expire(Instant::now());
                    if self.drain_video().await.is_err() { return StreamEnd::Stopped; }
                }
                _ = ping.tick() => self.send_control(&ControlMessage::Ping),
                _ = udp_ping.tick() => {
                    ping_seq += 1;
                    let _ = self.video.send_to(&ping_packet(&self.negotiated.video_ping, ping_seq), self.video_addr).await;
                    let _ = self.audio.send_to(&ping_packet(&self.negotiated.audio_ping, ping_seq), self.audio_addr).await;
                }
                _ = tokio::time::sleep_until(silent_until.into()) => {
                    return StreamEnd::HostVanished { silent_for: last_heard.elapsed() };
                }
            }
        }
    }

    async fn drain_video(&mut self) -> Result<(), ()> {
        while let Some(e) = self.depacketizer.poll_event() {
            let out = match e {
                VideoEvent::Frame(au) => StreamEvent::Video(au),
                VideoEvent::RequestIdr { lost_frame } => {
                    tracing::debug!(lost_frame, "requesting an IDR frame");
                    self.send_control(&ControlMessage::RequestIdr);
                    StreamEvent::IdrRequested { lost_frame }
                }
                VideoEvent::InvalidateRefFrames { first, last } => {
                    tracing::debug!(first, last, "invalidating reference frames");
                    self.send_control(&ControlMessage::InvalidateRefFrames {
                        first: u64::from(first),
                        last: u64::from(last),
                    });
                    StreamEvent::RefFramesInvalidated { first, last }
                }
            };
            self.events.send(out).await.map_err(|_| ())?;
        }
        Ok(())
    }
}
