//! Fan-out spike on `webrtc` 0.17 (tokio stack).
//!
//!   fanout-v017 [--n 20] [--mode shared|per-peer|rtp] [--mux PORT] [--secs 15] [--warmup 3] [--file /tmp/spike.h264] [--no-audio]
//!
//! The sender process creates N RTCPeerConnections (H.264 42e01f + Opus + a data channel),
//! spawns itself as `recv` child process that creates the N receiving peer connections, and
//! exchanges SDP with it over the child's stdin/stdout (non-trickle: waits for ICE gathering
//! complete). Only loopback host candidates are used.
//!
//! Modes: `shared` = one TrackLocalStaticSample added to all N PCs; `per-peer` = one
//! TrackLocalStaticSample per PC; `rtp` = packetize once with `rtp::packetizer`, write the same
//! packets into one TrackLocalStaticRTP per PC (SSRC/PT are rewritten per binding by the track).
//! `--mux PORT`: all sender PCs share ONE UDP socket (UDPNetwork::Muxed(UDPMuxDefault)).

#[path = "../../common/harness.rs"]
mod harness;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use harness::*;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::media::io::sample_builder::SampleBuilder;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp::codecs::h264::H264Packet;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::rtp::packetizer::Packetizer;

fn h264_cap() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
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

fn opus_cap() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn build_api(mux: Option<Arc<UDPMuxDefault>>) -> Result<API> {
    let mut m = MediaEngine::default();
    m.register_codec(
        RTCRtpCodecParameters { capability: h264_cap(), payload_type: 102, ..Default::default() },
        RTPCodecType::Video,
    )?;
    m.register_codec(
        RTCRtpCodecParameters { capability: opus_cap(), payload_type: 111, ..Default::default() },
        RTPCodecType::Audio,
    )?;
    // NACK generator/responder, RTCP reports, TWCC header extension + sender.
    let registry = register_default_interceptors(Registry::new(), &mut m)?;

    let mut s = SettingEngine::default();
    // Spike runs on loopback only. In the worker: set_nat_1to1_ips(vec![public_ip],
    // RTCIceCandidateType::Host), set_udp_network(UDPNetwork::Muxed(UDPMuxDefault::new(..)))
    // or UDPNetwork::Ephemeral(EphemeralUDP::new(min, max)?).
    s.set_include_loopback_candidate(true);
    s.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    s.set_network_types(vec![NetworkType::Udp4]);
    s.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    if let Some(mux) = mux {
        s.set_udp_network(UDPNetwork::Muxed(mux));
    }

    Ok(APIBuilder::new()
        .with_media_engine(m)
        .with_interceptor_registry(registry)
        .with_setting_engine(s)
        .build())
}

async fn gather_local(pc: &RTCPeerConnection, desc: RTCSessionDescription) -> Result<String> {
    let mut done = pc.gathering_complete_promise().await;
    pc.set_local_description(desc).await?;
    let _ = done.recv().await;
    let ld = pc.local_description().await.ok_or_else(|| anyhow!("no local description"))?;
    Ok(serde_json::to_string(&ld)?)
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

// ------------------------------------------------------------------ sender

async fn sender(args: Args) -> Result<()> {
    let aus: Vec<Bytes> = load_access_units(&args.file)?.into_iter().map(Bytes::from).collect();
    let mux = match std::env::var("MUX_PORT").ok().or(args.mux.clone()) {
        Some(port) => {
            let sock = tokio::net::UdpSocket::bind(format!("127.0.0.1:{port}")).await?;
            eprintln!("[sender 0.17] UDP mux on {}", sock.local_addr()?);
            Some(UDPMuxDefault::new(UDPMuxParams::new(sock)))
        }
        None => None,
    };
    let api = build_api(mux)?;
    let n = args.n;
    let shared = args.mode == "shared";
    let rtp_mode = args.mode == "rtp";
    eprintln!("[sender 0.17] n={n} mode={} aus={}", args.mode, aus.len());

    let plis = Arc::new(AtomicU64::new(0));
    let dc_msgs = Arc::new(AtomicU64::new(0));

    // Fan-out pattern A: ONE track bound to all N peer connections (packetized once,
    // TrackLocalStaticRTP::write_rtp loops over the bindings, rewriting SSRC/PT per binding).
    // Pattern B: one track per peer connection (each packetizes on its own).
    let mk_video = |i: usize| {
        Arc::new(TrackLocalStaticSample::new(h264_cap(), format!("video{i}"), "fanout".into()))
    };
    let mk_audio = |i: usize| {
        Arc::new(TrackLocalStaticSample::new(opus_cap(), format!("audio{i}"), "fanout".into()))
    };
    let shared_video = mk_video(0);
    let shared_audio = mk_audio(0);
    let mut video_tracks = Vec::new();
    let mut rtp_tracks: Vec<Arc<TrackLocalStaticRTP>> = Vec::new();
    let mut audio_tracks = Vec::new();
    let mut pcs = Vec::new();

    let mut child = spawn_receiver_child(&args)?;
    let t_setup = Instant::now();
    for i in 0..n {
        let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await?);
        let (v, a) = if shared {
            (shared_video.clone(), shared_audio.clone())
        } else {
            (mk_video(i), mk_audio(i))
        };
        let vs = if rtp_mode {
            let t = Arc::new(TrackLocalStaticRTP::new(h264_cap(), format!("video{i}"), "fanout".into()));
            rtp_tracks.push(t.clone());
            pc.add_track(t as Arc<dyn TrackLocal + Send + Sync>).await?
        } else {
            let vs = pc.add_track(v.clone() as Arc<dyn TrackLocal + Send + Sync>).await?;
            if !shared || i == 0 {
                video_tracks.push(v);
            }
            vs
        };
        if args.audio {
            let as_ = pc.add_track(a.clone() as Arc<dyn TrackLocal + Send + Sync>).await?;
            if !shared || i == 0 {
                audio_tracks.push(a);
            }
            tokio::spawn(async move { while as_.read_rtcp().await.is_ok() {} });
        }
        // RTCP from this receiver: must be read, otherwise interceptors (NACK responder,
        // reports) don't see it. PLI / FIR => a real worker asks the encoder for an IDR.
        let plis2 = plis.clone();
        tokio::spawn(async move {
            while let Ok((pkts, _)) = vs.read_rtcp().await {
                for p in pkts {
                    let any = p.as_any();
                    if any.downcast_ref::<PictureLossIndication>().is_some()
                        || any.downcast_ref::<FullIntraRequest>().is_some()
                    {
                        plis2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        // Data channel for input (created by the offerer).
        let dc: Arc<RTCDataChannel> = pc.create_data_channel("input", None).await?;
        let dcm = dc_msgs.clone();
        dc.on_message(Box::new(move |_m: DataChannelMessage| {
            dcm.fetch_add(1, Ordering::Relaxed);
            Box::pin(async {})
        }));

        let offer = pc.create_offer(None).await?;
        let sdp = gather_local(&pc, offer).await?;
        child.send_line(&format!("OFFER {i} {sdp}"));
        let line = child.recv_line(Duration::from_secs(30)).context("waiting for ANSWER")?;
        let json = line
            .strip_prefix(&format!("ANSWER {i} "))
            .ok_or_else(|| anyhow!("unexpected line from child: {line}"))?;
        pc.set_remote_description(serde_json::from_str(json)?).await?;
        pcs.push(pc);
    }
    // wait for all connected
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = pcs
            .iter()
            .filter(|p| p.connection_state() == RTCPeerConnectionState::Connected)
            .count();
        if c == n {
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!("only {c}/{n} connected"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("[sender 0.17] all {n} connected in {:?}", t_setup.elapsed());

    // --- feeding
    let write_ns = Arc::new(AtomicU64::new(0));
    let write_max_ns = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let write_errs = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (write_ns, write_max_ns, writes, errs) =
            (write_ns.clone(), write_max_ns.clone(), writes.clone(), write_errs.clone());
        let tracks = video_tracks.clone();
        let rtp_tracks = rtp_tracks.clone();
        tokio::spawn(async move {
            let mut packetizer = webrtc::rtp::packetizer::new_packetizer(
                1200,
                0, // PT and SSRC are rewritten per binding by TrackLocalStaticRTP::write_rtp
                0,
                Box::new(webrtc::rtp::codecs::h264::H264Payloader::default()),
                Box::new(webrtc::rtp::sequence::new_random_sequencer()),
                90000,
            );
            let mut tick = tokio::time::interval(FRAME_DUR);
            let mut idx = 0usize;
            loop {
                tick.tick().await;
                let s = Sample { data: aus[idx % aus.len()].clone(), duration: FRAME_DUR, ..Default::default() };
                idx += 1;
                let t0 = Instant::now();
                let note = |e: String| {
                    let mut g = errs.lock().unwrap();
                    if g.len() < 5 {
                        g.push(e);
                    }
                };
                if rtp_mode {
                    match packetizer.packetize(&s.data, 90000 / FPS) {
                        Ok(pkts) => {
                            for t in &rtp_tracks {
                                for p in &pkts {
                                    if let Err(e) = t.write_rtp(p).await {
                                        note(e.to_string());
                                    }
                                }
                            }
                        }
                        Err(e) => note(e.to_string()),
                    }
                }
                for t in &tracks {
                    if let Err(e) = t.write_sample(&s).await {
                        note(e.to_string());
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
        let tracks = audio_tracks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                let s = Sample {
                    data: Bytes::from_static(&OPUS_SILENCE),
                    duration: Duration::from_millis(20),
                    ..Default::default()
                };
                for t in &tracks {
                    let _ = t.write_sample(&s).await;
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
        "SUMMARY stack=0.17 mode={} n={} sender_cpu_pct={:.1} rss_mib={:.1} hwm_mib={:.1} threads={} writes_per_s={:.1} write_ms_avg={:.3} write_ms_max={:.2} plis={} dc_msgs={} errors={:?} | {}",
        args.mode,
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

// ------------------------------------------------------------------ receivers (child)

async fn receiver(args: Args) -> Result<()> {
    let known = Arc::new(au_set(&load_access_units(&args.file)?));
    let api = build_api(None)?;
    let n = args.n;
    let stats: Arc<Vec<Mutex<RecvStats>>> =
        Arc::new((0..n).map(|_| Mutex::new(RecvStats::default())).collect());
    let mut pcs = Vec::new();
    let mut lines = stdin_lines();
    let mut t0 = Instant::now();
    let mut cpu0 = 0.0;
    while let Some(line) = lines.recv().await {
        if let Some(rest) = line.strip_prefix("OFFER ") {
            let (i, json) = rest.split_once(' ').ok_or_else(|| anyhow!("bad OFFER"))?;
            let i: usize = i.parse()?;
            let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await?);
            let st = stats.clone();
            let kn = known.clone();
            let pc_weak = Arc::downgrade(&pc);
            pc.on_track(Box::new(move |track, _recv, _tr| {
                let st = st.clone();
                let kn = kn.clone();
                let pc_weak = pc_weak.clone();
                Box::pin(async move {
                    let is_video = track.kind() == RTPCodecType::Video;
                    tokio::spawn(async move {
                        let mut sb = SampleBuilder::new(256, H264Packet::default(), 90000);
                        let mut sent_pli = false;
                        while let Ok((pkt, _)) = track.read_rtp().await {
                            if !is_video {
                                st[i].lock().unwrap().audio_pkts += 1;
                                continue;
                            }
                            let marker = pkt.header.marker;
                            let plen = pkt.payload.len();
                            sb.push(pkt);
                            let markers = {
                                let mut s = st[i].lock().unwrap();
                                s.on_video_pkt(plen, marker);
                                while let Some(sample) = sb.pop() {
                                    s.on_au(&sample.data, &kn);
                                }
                                s.markers
                            };
                            if !sent_pli && markers > 60 {
                                sent_pli = true;
                                if let Some(pc) = pc_weak.upgrade() {
                                    let _ = pc
                                        .write_rtcp(&[Box::new(PictureLossIndication {
                                            sender_ssrc: 0,
                                            media_ssrc: track.ssrc(),
                                        })])
                                        .await;
                                }
                            }
                        }
                    });
                })
            }));
            pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
                Box::pin(async move {
                    let dc2 = dc.clone();
                    dc.on_open(Box::new(move || {
                        Box::pin(async move {
                            let _ = dc2.send_text("key:down:KeyA").await;
                        })
                    }));
                })
            }));
            pc.set_remote_description(serde_json::from_str(json)?).await?;
            let answer = pc.create_answer(None).await?;
            let sdp = gather_local(&pc, answer).await?;
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
            say(&format!(
                "{{\"recv_cpu_pct\":{cpu:.1},\"receivers\":[{}]}}",
                per.join(",")
            ));
            break;
        }
    }
    for pc in &pcs {
        let _ = pc.close().await;
    }
    Ok(())
}
