//! Fan-out spike on `webrtc` 0.21 (async layer over the sans-IO `rtc` crate).
//!
//!   fanout-v021 [--n 20] [--mode rtp|per-peer] [--secs 15] [--warmup 3] [--file /tmp/spike.h264] [--no-audio]
//!
//! Same harness as v017. In 0.21 a local track binds to exactly ONE peer connection
//! (`TrackLocalStaticRTP { ctx: Mutex<Option<TrackLocalContext>> }`), so the two fan-out
//! patterns are:
//!   * `per-peer`: one `TrackLocalStaticSample` per peer (each packetizes on its own);
//!   * `rtp`: packetize each access unit ONCE with `rtc::rtp::packetizer`, then write a clone
//!     of every packet (SSRC/PT rewritten) into a per-peer `TrackLocalStaticRTP`
//!     (the pattern of the upstream `broadcast` example).

#[path = "../../common/harness.rs"]
mod harness;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use harness::*;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Attribute, Interceptor, Packet as IPacket, Slot, StreamInfo, TaggedPacket};
use rtc::media::io::sample_builder::SampleBuilder;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Packetizer;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

fn h264_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: H264_FMTP.to_owned(),
        rtcp_feedback: vec![
            RTCPFeedback { typ: "goog-remb".into(), parameter: "".into() },
            RTCPFeedback { typ: "ccm".into(), parameter: "fir".into() },
            RTCPFeedback { typ: "nack".into(), parameter: "".into() },
            RTCPFeedback { typ: "nack".into(), parameter: "pli".into() },
        ],
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

// ---------------------------------------------------------------- PLI/FIR -> application
// In 0.21 inbound RTCP stops inside the interceptor chain unless an interceptor tags it
// `Attribute::DeliverToApplication`; then it surfaces as TrackLocalEvent::OnRtcpPacket on the
// local track's poll(). (Copied from the upstream rtcp-processing example.)

struct KeyframeRequestForwarder {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

fn is_keyframe_request(p: &Box<dyn rtc::rtcp::Packet>) -> bool {
    let a = p.as_any();
    a.is::<PictureLossIndication>() || a.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let IPacket::Rtcp(pkts) = &msg.message.packet {
            let reqs: Vec<Box<dyn rtc::rtcp::Packet>> =
                pkts.iter().filter(|p| is_keyframe_request(p)).cloned().collect();
            if reqs.is_empty() {
                return Ok(());
            }
            msg.message.packet = IPacket::Rtcp(reqs);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

// ---------------------------------------------------------------- PC factory

struct Handler {
    gathered: tokio::sync::mpsc::UnboundedSender<()>,
    connected: Arc<AtomicUsize>,
    on_track: Option<Arc<dyn Fn(Arc<dyn TrackRemote>) + Send + Sync>>,
    on_dc: Option<Arc<dyn Fn(Arc<dyn DataChannel>) + Send + Sync>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(());
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.connected.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(state, RTCPeerConnectionState::Failed) {
            eprintln!("[0.21] peer connection failed");
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(f) = &self.on_track {
            f(track)
        }
    }
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        if let Some(f) = &self.on_dc {
            f(dc)
        }
    }
}

async fn new_pc(
    handler: Handler,
) -> Result<Arc<dyn PeerConnection>> {
    let mut me = MediaEngine::default();
    me.register_codec(
        RTCRtpCodecParameters { rtp_codec: h264_codec(), payload_type: 102, ..Default::default() },
        RtpCodecKind::Video,
    )?;
    me.register_codec(
        RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: 111, ..Default::default() },
        RtpCodecKind::Audio,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut me)?;
    let registry = registry.with(
        Slot::from(14_000),
        KeyframeRequestForwarder { read_queue: VecDeque::new(), write_queue: VecDeque::new() },
    );
    let se = SettingEngineBuilder::new()
        .with_include_loopback_candidate(true)
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .with_setting_engine(se)
        .with_handler(Arc::new(handler))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

async fn gather_local(
    pc: &Arc<dyn PeerConnection>,
    gathered: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    desc: RTCSessionDescription,
) -> Result<String> {
    pc.set_local_description(desc).await?;
    tokio::time::timeout(Duration::from_secs(10), gathered.recv())
        .await
        .context("ICE gathering timeout")?;
    let ld = pc.local_description().await.ok_or_else(|| anyhow!("no local description"))?;
    Ok(serde_json::to_string(&ld)?)
}

fn coding(codec: RTCRtpCodec, ssrc: u32) -> Vec<RTCRtpEncodingParameters> {
    vec![RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
        codec,
        ..Default::default()
    }]
}

fn mst(kind: RtpCodecKind, i: usize, codec: RTCRtpCodec, ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
        "fanout".to_owned(),
        format!("{kind}{i}"),
        format!("{kind}{i}"),
        kind,
        coding(codec, ssrc),
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args();
    if args.role == "recv" {
        receiver(args).await
    } else {
        sender(args).await
    }
}

// ---------------------------------------------------------------- sender

enum VTrack {
    Sample(Arc<TrackLocalStaticSample>, u32, u8),
    Rtp(Arc<TrackLocalStaticRTP>, u32, u8),
}

async fn negotiated_pt(sender: &Arc<dyn webrtc::rtp_transceiver::RtpSender>) -> Result<u8> {
    sender
        .get_parameters()
        .await?
        .rtp_parameters
        .codecs
        .first()
        .map(|c| c.payload_type)
        .ok_or_else(|| anyhow!("no negotiated codec"))
}

async fn sender(args: Args) -> Result<()> {
    let aus: Vec<Bytes> = load_access_units(&args.file)?.into_iter().map(Bytes::from).collect();
    let n = args.n;
    let rtp_mode = args.mode != "per-peer";
    eprintln!("[sender 0.21] n={n} mode={} aus={}", if rtp_mode { "rtp" } else { "per-peer" }, aus.len());
    let connected = Arc::new(AtomicUsize::new(0));
    let plis = Arc::new(AtomicU64::new(0));
    let dc_msgs = Arc::new(AtomicU64::new(0));

    let mut child = spawn_receiver_child(&args)?;
    let t_setup = Instant::now();
    let mut pcs = Vec::new();
    let mut vtracks: Vec<VTrack> = Vec::new();
    let mut atracks: Vec<(Arc<TrackLocalStaticSample>, u32, u8)> = Vec::new();
    let mut senders = Vec::new();
    for i in 0..n {
        let (gtx, mut grx) = tokio::sync::mpsc::unbounded_channel();
        let pc = new_pc(Handler { gathered: gtx, connected: connected.clone(), on_track: None, on_dc: None })
            .await?;
        let vssrc: u32 = 0x1000_0000 + i as u32;
        let (vlocal, vt): (Arc<dyn TrackLocal>, VTrack) = if rtp_mode {
            let t = Arc::new(TrackLocalStaticRTP::new(mst(RtpCodecKind::Video, i, h264_codec(), vssrc)));
            (t.clone(), VTrack::Rtp(t, vssrc, 0))
        } else {
            let t = Arc::new(TrackLocalStaticSample::new(
                Instant::now(),
                mst(RtpCodecKind::Video, i, h264_codec(), vssrc),
            )?);
            (t.clone(), VTrack::Sample(t, vssrc, 0))
        };
        let vs = pc.add_track(vlocal.clone()).await?;
        senders.push(vs);
        vtracks.push(vt);
        // PLI/FIR arrive on the local track's event stream (thanks to the forwarder above).
        let plis2 = plis.clone();
        tokio::spawn(async move {
            while let Some(ev) = vlocal.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(pkts) = ev {
                    plis2.fetch_add(pkts.iter().filter(|p| is_keyframe_request(p)).count() as u64, Ordering::Relaxed);
                }
            }
        });
        if args.audio {
            let assrc: u32 = 0x2000_0000 + i as u32;
            let t = Arc::new(TrackLocalStaticSample::new(
                Instant::now(),
                mst(RtpCodecKind::Audio, i, opus_codec(), assrc),
            )?);
            let s = pc.add_track(t.clone() as Arc<dyn TrackLocal>).await?;
            senders.push(s);
            atracks.push((t, assrc, 0));
        }
        let dc = pc.create_data_channel("input", None).await?;
        let dcm = dc_msgs.clone();
        tokio::spawn(async move {
            while let Some(ev) = dc.poll().await {
                if let DataChannelEvent::OnMessage(_m) = ev {
                    dcm.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let offer = pc.create_offer(None).await?;
        let sdp = gather_local(&pc, &mut grx, offer).await?;
        child.send_line(&format!("OFFER {i} {sdp}"));
        let line = child.recv_line(Duration::from_secs(30)).context("waiting for ANSWER")?;
        let json = line
            .strip_prefix(&format!("ANSWER {i} "))
            .ok_or_else(|| anyhow!("unexpected line from child: {line}"))?;
        let ans: RTCSessionDescription = serde_json::from_str(json)?;
        pc.set_remote_description(ans).await?;
        pcs.push(pc);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(anyhow!("only {}/{n} connected", connected.load(Ordering::Relaxed)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("[sender 0.21] all {n} connected in {:?}", t_setup.elapsed());
    // payload types as negotiated (write_rtp requires a negotiated PT)
    {
        let per = if args.audio { 2 } else { 1 };
        for (i, vt) in vtracks.iter_mut().enumerate() {
            let pt = negotiated_pt(&senders[i * per]).await?;
            match vt {
                VTrack::Sample(_, _, p) | VTrack::Rtp(_, _, p) => *p = pt,
            }
            if args.audio {
                atracks[i].2 = negotiated_pt(&senders[i * per + 1]).await?;
            }
        }
    }

    let write_ns = Arc::new(AtomicU64::new(0));
    let write_max_ns = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let write_errs = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (write_ns, write_max_ns, writes, errs) =
            (write_ns.clone(), write_max_ns.clone(), writes.clone(), write_errs.clone());
        tokio::spawn(async move {
            // packetize-once state for rtp mode
            let codec = h264_codec();
            let mut packetizer = rtc::rtp::packetizer::new_packetizer(
                Instant::now(),
                1200,
                0,
                0,
                codec.payloader().expect("h264 payloader"),
                Box::new(rtc::rtp::sequence::new_random_sequencer()),
                90000,
            );
            let samples = 90000 / FPS;
            let mut tick = tokio::time::interval(FRAME_DUR);
            let mut idx = 0usize;
            loop {
                tick.tick().await;
                let au = aus[idx % aus.len()].clone();
                idx += 1;
                let t0 = Instant::now();
                let note = |e: String| {
                    let mut g = errs.lock().unwrap();
                    if g.len() < 5 {
                        g.push(e);
                    }
                };
                if rtp_mode {
                    match packetizer.packetize(Instant::now(), &au, samples) {
                        Ok(pkts) => {
                            for vt in &vtracks {
                                if let VTrack::Rtp(t, ssrc, pt) = vt {
                                    for p in &pkts {
                                        let mut p = p.clone();
                                        p.header.ssrc = *ssrc;
                                        p.header.payload_type = *pt;
                                        if let Err(e) = t.write_rtp(p).await {
                                            note(e.to_string());
                                        }
                                    }
                                }
                            }
                        }
                        Err(e) => note(e.to_string()),
                    }
                } else {
                    let s = Sample { data: au, duration: FRAME_DUR, ..Sample::new(Instant::now()) };
                    for vt in &vtracks {
                        if let VTrack::Sample(t, ssrc, pt) = vt {
                            if let Err(e) = t.sample_writer(*ssrc, *pt).write_sample(&s).await {
                                note(e.to_string());
                            }
                        }
                    }
                }
                let d = t0.elapsed().as_nanos() as u64;
                write_ns.fetch_add(d, Ordering::Relaxed);
                write_max_ns.fetch_max(d, Ordering::Relaxed);
                writes.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    if args.audio {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                let s = Sample {
                    data: Bytes::from_static(&OPUS_SILENCE),
                    duration: Duration::from_millis(20),
                    ..Sample::new(Instant::now())
                };
                for (t, ssrc, pt) in &atracks {
                    let _ = t.sample_writer(*ssrc, *pt).write_sample(&s).await;
                }
            }
        });
    }

    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    child.send_line("START");
    write_ns.store(0, Ordering::Relaxed);
    write_max_ns.store(0, Ordering::Relaxed);
    writes.store(0, Ordering::Relaxed);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let (cpu1, el) = (cpu_seconds(), t0.elapsed().as_secs_f64());
    child.send_line("STOP");
    let result = child.recv_line(Duration::from_secs(30)).context("waiting for RESULT")?;
    let (rss, hwm) = rss_mib();
    let w = writes.load(Ordering::Relaxed).max(1);
    println!(
        "SUMMARY stack=0.21 mode={} n={} sender_cpu_pct={:.1} rss_mib={:.1} hwm_mib={:.1} threads={} writes_per_s={:.1} write_ms_avg={:.3} write_ms_max={:.2} plis={} dc_msgs={} errors={:?} | {}",
        if rtp_mode { "rtp" } else { "per-peer" },
        n,
        100.0 * (cpu1 - cpu0) / el,
        rss,
        hwm,
        threads(),
        w as f64 / el,
        write_ns.load(Ordering::Relaxed) as f64 / w as f64 / 1e6,
        write_max_ns.load(Ordering::Relaxed) as f64 / 1e6,
        plis.load(Ordering::Relaxed),
        dc_msgs.load(Ordering::Relaxed),
        write_errs.lock().unwrap(),
        summarize(&result)
    );
    println!("RECEIVERS {result}");
    for pc in &pcs {
        let _ = pc.close().await;
    }
    let _ = child.proc.wait();
    Ok(())
}

// ---------------------------------------------------------------- receivers (child)

async fn receiver(args: Args) -> Result<()> {
    let known = Arc::new(au_set(&load_access_units(&args.file)?));
    let n = args.n;
    let stats: Arc<Vec<Mutex<RecvStats>>> =
        Arc::new((0..n).map(|_| Mutex::new(RecvStats::default())).collect());
    let connected = Arc::new(AtomicUsize::new(0));
    let mut pcs = Vec::new();
    let mut lines = stdin_lines();
    let mut t0 = Instant::now();
    let mut cpu0 = 0.0;
    while let Some(line) = lines.recv().await {
        if let Some(rest) = line.strip_prefix("OFFER ") {
            let (i, json) = rest.split_once(' ').ok_or_else(|| anyhow!("bad OFFER"))?;
            let i: usize = i.parse()?;
            let st = stats.clone();
            let kn = known.clone();
            let on_track: Arc<dyn Fn(Arc<dyn TrackRemote>) + Send + Sync> = Arc::new(move |track| {
                let st = st.clone();
                let kn = kn.clone();
                tokio::spawn(async move {
                    let is_video = track.kind().await == RtpCodecKind::Video;
                    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
                    let mut sb = SampleBuilder::new(256, H264Packet::default(), 90000);
                    let mut sent_pli = false;
                    while let Some(ev) = track.poll().await {
                        let TrackRemoteEvent::OnRtpPacket(pkt) = ev else { continue };
                        if !is_video {
                            st[i].lock().unwrap().audio_pkts += 1;
                            continue;
                        }
                        let marker = pkt.header.marker;
                        let plen = pkt.payload.len();
                        let now = Instant::now();
                        sb.push(now, pkt);
                        let markers = {
                            let mut s = st[i].lock().unwrap();
                            s.on_video_pkt(plen, marker);
                            while let Some(sample) = sb.pop(now) {
                                s.on_au(&sample.data, &kn);
                            }
                            s.markers
                        };
                        if !sent_pli && markers > 60 {
                            sent_pli = true;
                            let _ = track
                                .write_rtcp(vec![Box::new(PictureLossIndication {
                                    sender_ssrc: 0,
                                    media_ssrc: ssrc,
                                })])
                                .await;
                        }
                    }
                });
            });
            let on_dc: Arc<dyn Fn(Arc<dyn DataChannel>) + Send + Sync> = Arc::new(|dc| {
                tokio::spawn(async move {
                    let mut sent = false;
                    if matches!(dc.ready_state().await, Ok(s) if s.to_string() == "open") {
                        sent = dc.send_text("key:down:KeyA").await.is_ok();
                    }
                    while let Some(ev) = dc.poll().await {
                        if matches!(ev, DataChannelEvent::OnOpen) && !sent {
                            sent = dc.send_text("key:down:KeyA").await.is_ok();
                        }
                    }
                });
            });
            let (gtx, mut grx) = tokio::sync::mpsc::unbounded_channel();
            let pc = new_pc(Handler {
                gathered: gtx,
                connected: connected.clone(),
                on_track: Some(on_track),
                on_dc: Some(on_dc),
            })
            .await?;
            let offer: RTCSessionDescription = serde_json::from_str(json)?;
            pc.set_remote_description(offer).await?;
            let answer = pc.create_answer(None).await?;
            let sdp = gather_local(&pc, &mut grx, answer).await?;
            say(&format!("ANSWER {i} {sdp}"));
            pcs.push(pc);
        } else if line == "START" {
            for s in stats.iter() {
                s.lock().unwrap().reset();
            }
            t0 = Instant::now();
            cpu0 = cpu_seconds();
        } else if line == "STOP" {
            let el = t0.elapsed().as_secs_f64();
            let cpu = 100.0 * (cpu_seconds() - cpu0) / el;
            let per: Vec<String> = stats.iter().map(|s| s.lock().unwrap().to_json(el)).collect();
            say(&format!("{{\"recv_cpu_pct\":{cpu:.1},\"receivers\":[{}]}}", per.join(",")));
            break;
        }
    }
    for pc in &pcs {
        let _ = pc.close().await;
    }
    Ok(())
}
