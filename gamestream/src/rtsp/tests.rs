use super::*;

/// The ANNOUNCE Moonlight (Android) sent to Wolf, from Wolf's MIT test data
/// (github.com/games-on-whales/wolf, tests/testRTSP.cpp, "ANNOUNCE control").
const WOLF_ANNOUNCE: &str = "ANNOUNCE streamid=control/13/0 RTSP/1.0\n\
CSeq: 6\n\
X-GS-ClientVersion: 14\n\
Host: 0.0.0.0\n\
Session:  DEADBEEFCAFE\n\
Content-type: application/sdp\n\
Content-length: 1308\r\n\r\n\
v=0\n\
o=android 0 14 IN IPv4 0.0.0.0\n\
s=NVIDIA Streaming Client\n\
a=x-nv-video[0].clientViewportWd:1920 \n\
a=x-nv-video[0].clientViewportHt:1080 \n\
a=x-nv-video[0].maxFPS:60 \n\
a=x-nv-video[0].packetSize:1024 \n\
a=x-nv-video[0].rateControlMode:4 \n\
a=x-nv-video[0].timeoutLengthMs:7000 \n\
a=x-nv-video[0].framesWithInvalidRefThreshold:0 \n\
a=x-nv-video[0].initialBitrateKbps:15500 \n\
a=x-nv-video[0].initialPeakBitrateKbps:15500 \n\
a=x-nv-vqos[0].bw.minimumBitrateKbps:15500 \n\
a=x-nv-vqos[0].bw.maximumBitrateKbps:15500 \n\
a=x-nv-vqos[0].fec.enable:1 \n\
a=x-nv-vqos[0].videoQualityScoreUpdateTime:5000 \n\
a=x-nv-vqos[0].qosTrafficType:0 \n\
a=x-nv-aqos.qosTrafficType:0 \n\
a=x-nv-general.featureFlags:167 \n\
a=x-nv-general.useReliableUdp:13 \n\
a=x-nv-vqos[0].fec.minRequiredFecPackets:2 \n\
a=x-nv-vqos[0].drc.enable:0 \n\
a=x-nv-general.enableRecoveryMode:0 \n\
a=x-nv-video[0].videoEncoderSlicesPerFrame:1 \n\
a=x-nv-clientSupportHevc:0 \n\
a=x-nv-vqos[0].bitStreamFormat:0 \n\
a=x-nv-video[0].dynamicRangeMode:0 \n\
a=x-nv-video[0].maxNumReferenceFrames:1 \n\
a=x-nv-video[0].clientRefreshRateX100:0 \n\
a=x-nv-audio.surround.numChannels:2 \n\
a=x-nv-audio.surround.channelMask:3 \n\
a=x-nv-audio.surround.enable:0 \n\
a=x-nv-audio.surround.AudioQuality:0 \n\
a=x-nv-aqos.packetDuration:5 \n\
a=x-nv-video[0].encoderCscMode:0 \n\
t=0 0\n\
m=video 47998 \n";

fn host_config() -> HostConfig {
    HostConfig {
        capabilities: HostCapabilities {
            feature_flags: 3,
            encryption_supported: ENC_CONTROL_V2 | ENC_VIDEO | ENC_AUDIO,
            encryption_requested: ENC_CONTROL_V2,
            hevc: true,
            av1: false,
            ref_pic_invalidation: true,
        },
        audio_port: 48000,
        video_port: 47998,
        control_port: 47999,
        audio_ping: "A1B2C3D4E5F60718".into(),
        video_ping: "0011223344556677".into(),
        control_connect_data: 0x1234_5678,
    }
}

#[test]
fn wolf_transcript_announce_parses_into_the_settings_moonlight_asked_for() {
    // Moonlight's Content-length counts bytes it did not send; the message
    // is complete when the peer closes, as each RTSP request is.
    let msg = RtspMessage::parse_complete(WOLF_ANNOUNCE.as_bytes()).unwrap();
    assert_eq!(msg.method(), Some("ANNOUNCE"));
    assert_eq!(msg.cseq, 6);
    assert_eq!(msg.header("Session"), Some("DEADBEEFCAFE"));
    let s = StreamSettings::from_sdp(&msg.body).unwrap();
    assert_eq!((s.width, s.height, s.fps), (1920, 1080, 60));
    assert_eq!(s.packet_size, 1024);
    assert_eq!(s.bitrate_kbps, 15500);
    assert_eq!(s.codec, VideoCodec::H264);
    assert_eq!(s.min_fec_packets, 2);
    assert_eq!((s.audio_channels, s.audio_packet_duration_ms), (2, 5));
}

#[test]
fn wolf_transcript_requests_get_the_answers_wolf_gives() {
    // Wolf tests/testRTSP.cpp "Commands": OPTIONS, DESCRIBE, SETUP x3 (LF line ends).
    let mut host = RtspHost::new(host_config());
    let options = "OPTIONS rtsp://10.1.2.49:48010 RTSP/1.0\r\nCSeq: 1\r\nX-GS-ClientVersion: 14\r\nHost: 10.1.2.49\r\n\r\n";
    let r = host.handle(&RtspMessage::parse_complete(options.as_bytes()).unwrap());
    assert_eq!(
        (r.start.clone(), r.cseq),
        (
            StartLine::Response {
                status: 200,
                reason: "OK".into()
            },
            1
        )
    );
    let describe = "DESCRIBE rtsp://10.1.2.49:48010 RTSP/1.0\nCSeq: 2\nX-GS-ClientVersion: 14\nHost: 10.1.2.49\nAccept: application/sdp\r\n\r\n";
    let r = host.handle(&RtspMessage::parse_complete(describe.as_bytes()).unwrap());
    let attrs = sdp_attributes(&r.body);
    assert_eq!(
        attrs.get("sprop-parameter-sets").map(String::as_str),
        Some("AAAAAU")
    );
    assert_eq!(
        attrs.get("fmtp").map(String::as_str),
        Some("97 surround-params=21101")
    );
    for (stream, port) in [("audio", 48000), ("video", 47998), ("control", 47999)] {
        let setup = format!(
            "SETUP streamid={stream}/0/0 RTSP/1.0\nCSeq: 3\nX-GS-ClientVersion: 14\nHost: 10.1.2.49\nTransport: unicast;X-GS-ClientPort=50000-50001\nIf-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n"
        );
        let r = host.handle(&RtspMessage::parse_complete(setup.as_bytes()).unwrap());
        assert_eq!(r.header("Session"), Some("DEADBEEFCAFE;timeout = 90"));
        assert_eq!(
            r.header("Transport"),
            Some(format!("server_port={port}").as_str())
        );
    }
    let missing = "MissingNo rtsp://10.1.2.49:48010 RTSP/1.0\r\nCSeq: 1\r\n\r\n";
    let r = host.handle(&RtspMessage::parse_complete(missing.as_bytes()).unwrap());
    assert!(matches!(r.start, StartLine::Response { status: 404, .. }));
}

/// Drives our client against our host, through the wire bytes, plain or
/// encrypted. Returns the client.
fn handshake(
    host: &mut RtspHost,
    key: Option<[u8; 16]>,
    settings: StreamSettings,
) -> Result<RtspClient, RtspError> {
    let mut client = RtspClient::new("10.0.0.1", "10.0.0.2", settings);
    let cipher = key.map(|k| RtspCipher::new(&k));
    let mut seq = 0u32;
    while !client.is_done() {
        let req = client.next_request()?;
        seq += 1;
        let wire = match &cipher {
            Some(c) => c.seal(seq, Origin::Client, &req.encode()),
            None => req.encode(),
        };
        // Host reads one request.
        let plain = match &cipher {
            Some(c) => c.open(Origin::Client, &wire)?.expect("whole").0,
            None => wire,
        };
        let (parsed, used) = RtspMessage::parse(&plain)?.expect("whole");
        assert_eq!(used, plain.len());
        let answer = host.handle(&parsed).encode();
        let answer_wire = match &cipher {
            Some(c) => c.seal(seq, Origin::Host, &answer),
            None => answer,
        };
        let answer_plain = match &cipher {
            Some(c) => c.open(Origin::Host, &answer_wire)?.expect("whole").0,
            None => answer_wire,
        };
        client.on_response(&RtspMessage::parse_complete(&answer_plain)?)?;
    }
    Ok(client)
}

#[test]
fn client_and_host_complete_the_handshake_plain_and_encrypted() {
    for key in [None, Some([5u8; 16])] {
        let mut host = RtspHost::new(host_config());
        let mut settings = StreamSettings::new(1920, 1080, 60, 20_000);
        settings.encryption = ENC_VIDEO | ENC_AUDIO;
        let client = handshake(&mut host, key, settings.clone()).unwrap();
        let n = client.negotiated();
        assert_eq!(n.session, "DEADBEEFCAFE");
        assert_eq!(
            (n.audio_port, n.video_port, n.control_port),
            (48000, 47998, 47999)
        );
        assert_eq!(n.video_ping.as_deref(), Some("0011223344556677"));
        assert_eq!(n.control_connect_data, Some(0x1234_5678));
        assert!(n.capabilities.hevc && n.capabilities.ref_pic_invalidation);
        // Requested by the host (control V2) is added; asked by the client and supported is kept.
        assert_eq!(n.encryption, ENC_CONTROL_V2 | ENC_VIDEO | ENC_AUDIO);
        let announced = host.announced().unwrap();
        settings.encryption = n.encryption;
        assert_eq!(announced, &settings);
        assert!(host.played());
    }
}

#[test]
fn encrypted_framing_binds_direction_and_refuses_plaintext() {
    let c = RtspCipher::new(&[1; 16]);
    let sealed = c.seal(1, Origin::Client, b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n");
    assert_eq!(&sealed[..4], &(ENCRYPTED_BIT | 31).to_be_bytes());
    assert_eq!(c.open(Origin::Host, &sealed), Err(RtspError::Decrypt));
    assert!(c.open(Origin::Client, &sealed).unwrap().is_some());
    assert_eq!(c.open(Origin::Client, &sealed[..30]), Ok(None));
    assert_eq!(
        c.open(Origin::Client, b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n"),
        Err(RtspError::NotEncrypted)
    );
}

#[test]
fn an_announce_without_required_attributes_is_refused() {
    let mut host = RtspHost::new(host_config());
    let mut req = RtspMessage::request("ANNOUNCE", "streamid=control/13/0", 6);
    req.body = b"v=0\na=x-nv-video[0].clientViewportWd:1920\n".to_vec();
    assert_eq!(
        StreamSettings::from_sdp(&req.body),
        Err(RtspError::MissingAttribute(
            "x-nv-video[0].clientViewportHt".into()
        ))
    );
    assert!(matches!(
        host.handle(&req).start,
        StartLine::Response { status: 400, .. }
    ));
    // PLAY before a good ANNOUNCE is refused too.
    let play = RtspMessage::request("PLAY", "/", 7);
    assert!(matches!(
        host.handle(&play).start,
        StartLine::Response { status: 400, .. }
    ));
}

#[test]
fn a_refusing_host_ends_the_handshake_with_its_status() {
    let mut client = RtspClient::new("h", "c", StreamSettings::new(1280, 720, 60, 5000));
    let req = client.next_request().unwrap();
    let answer = RtspMessage::response(503, "Service Unavailable", req.cseq);
    assert_eq!(
        client.on_response(&answer),
        Err(RtspError::Status {
            method: "OPTIONS".into(),
            status: 503,
            reason: "Service Unavailable".into()
        })
    );
    let wrong = RtspMessage::response(200, "OK", 99);
    assert!(matches!(
        client.on_response(&wrong),
        Err(RtspError::CSeqMismatch { .. })
    ));
}

#[test]
fn partial_messages_ask_for_more_bytes() {
    let m = RtspMessage::request("ANNOUNCE", "x", 1).with_header("A", "b");
    let mut m = m;
    m.body = b"v=0\r\n".to_vec();
    let wire = m.encode();
    for cut in [5, wire.len() - 1] {
        assert_eq!(RtspMessage::parse(&wire[..cut]), Ok(None));
    }
    assert_eq!(RtspMessage::parse(&wire).unwrap().unwrap().0, m);
    assert_eq!(
        RtspMessage::parse(b"OPTIONS x RTSP/1.0\r\n\r\n"),
        Err(RtspError::Malformed("no CSeq"))
    );
}
