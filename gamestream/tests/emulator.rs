//! Our client (the tokio driver over the sans-IO cores) against the host
//! emulator on loopback sockets: pairing, launch, RTSP, the ENet control
//! stream, video with FEC under seeded loss, audio, input, endings.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use gamestream::client::{
    ClientError, HostClient, Launch, Stream, StreamEnd, StreamEvent, StreamOptions,
};
use gamestream::control::TERMINATION_GRACEFUL;
use gamestream::emulator::{Emulator, EmulatorConfig};
use gamestream::input::{self, InputEvent, MouseButton};
use gamestream::netsim::LinkProfile;
use gamestream::pairing::{Identity, PairingError};
use gamestream::rtsp::StreamSettings;
use gamestream::video::{AccessUnit, FrameType};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const PIN: &str = "4321";
const WAIT: Duration = Duration::from_secs(10);

/// The tests of this file stream in real time over loopback: one at a
/// time, so a test's receiving task is not starved by its siblings' (a
/// starved one misses packets that the seeded loss never dropped).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn identities() -> &'static (Identity, Identity) {
    static IDS: OnceLock<(Identity, Identity)> = OnceLock::new();
    IDS.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        (
            Identity::generate(&mut rng, "NVIDIA GameStream Client", t).unwrap(),
            Identity::generate(&mut rng, "roth emulator", t).unwrap(),
        )
    })
}

/// The x264 clip (or, without ffmpeg, a synthetic Annex B stand-in), as
/// (frame type, access unit).
fn clip() -> &'static Vec<(FrameType, Vec<u8>)> {
    static CLIP: OnceLock<Vec<(FrameType, Vec<u8>)>> = OnceLock::new();
    CLIP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let aus = support::x264_clip(dir.path(), 1).unwrap_or_else(|| {
            eprintln!("ffmpeg missing: using synthetic access units");
            (0..60u8)
                .map(|i| {
                    [
                        &[0, 0, 0, 1, if i % 30 == 0 { 0x65 } else { 0x41 }][..],
                        &[i; 3000][..],
                    ]
                    .concat()
                })
                .collect()
        });
        aus.into_iter()
            .map(|au| {
                let idr = support::nal_types(&au).contains(&5);
                (if idr { FrameType::Idr } else { FrameType::P }, au)
            })
            .collect()
    })
}

/// 5 ms Opus packets (48 kHz stereo, CBR) of a 440 Hz tone.
fn opus_packets() -> Vec<Vec<u8>> {
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::LowDelay).unwrap();
    enc.set_vbr(false).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(96_000)).unwrap();
    (0..40)
        .map(|k| {
            let pcm: Vec<i16> = (0..240)
                .flat_map(|n| {
                    let t = (k * 240 + n) as f32 / 48_000.0;
                    let v = (t * 440.0 * std::f32::consts::TAU).sin() * 8000.0;
                    [v as i16, v as i16]
                })
                .collect();
            enc.encode_vec(&pcm, 4000).unwrap()
        })
        .collect()
}

fn config() -> EmulatorConfig {
    let mut c = EmulatorConfig::new(identities().1.clone(), PIN);
    c.video = clip().clone();
    c.audio = opus_packets();
    c
}

async fn paired_client(emu: &Emulator) -> HostClient {
    let mut client = HostClient::new(identities().0.clone(), emu.ip(), emu.ports().http);
    let info = client.server_info().await.unwrap();
    assert!(!info.paired);
    client
        .pair(PIN, &mut ChaCha20Rng::seed_from_u64(1))
        .await
        .unwrap();
    client
}

async fn launch(client: &HostClient) -> Result<(Launch, StreamSettings), ClientError> {
    let mut settings = StreamSettings::new(640, 360, 60, 10_000);
    settings.encryption = gamestream::rtsp::ENC_VIDEO | gamestream::rtsp::ENC_AUDIO;
    let launch = client.launch(1, &settings, [0x42; 16], 7, false).await?;
    Ok((launch, settings))
}

async fn start(emu: &Emulator, options: StreamOptions) -> (HostClient, Stream) {
    let client = paired_client(emu).await;
    let (l, settings) = launch(&client).await.unwrap();
    let stream = client.start_stream(&l, settings, options).await.unwrap();
    (client, stream)
}

async fn next(stream: &mut Stream) -> StreamEvent {
    tokio::time::timeout(WAIT, stream.next_event())
        .await
        .expect("an event within the deadline")
        .expect("the stream reports its end before closing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pairs_launches_and_receives_video_and_audio_byte_identical_under_ten_percent_loss()
{
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.link = LinkProfile {
        loss: 0.10,
        reorder: 0.02,
        duplicate: 0.01,
        ..LinkProfile::perfect()
    };
    config.fec_percentage = 50;
    let emu = Emulator::start(config.clone()).await.unwrap();
    let (client, mut stream) = start(&emu, StreamOptions::default()).await;
    assert_eq!(client.apps().await.unwrap()[0].title, "Desktop");
    assert_eq!(
        stream.negotiated().encryption,
        0x07,
        "control V2, video and audio encrypted"
    );
    assert!(emu.record().rtspenc, "RTSP went encrypted");

    let mut video: Vec<AccessUnit> = Vec::new();
    let mut audio = Vec::new();
    let mut idr_requests = 0;
    while video.len() < 90 || audio.len() < 100 {
        match next(&mut stream).await {
            StreamEvent::Video(au) => video.push(au),
            StreamEvent::Audio(p) => audio.push(p),
            StreamEvent::IdrRequested { .. } | StreamEvent::RefFramesInvalidated { .. } => {
                idr_requests += 1
            }
            StreamEvent::Ended(e) => panic!("ended early: {e:?}"),
        }
    }
    let record = emu.record();
    // Every access unit is the clip's, byte for byte, in frame order without a gap.
    for (k, au) in video.iter().enumerate() {
        let (_, clip_index) = record
            .frames_sent
            .iter()
            .find(|(f, _)| *f == au.frame_index)
            .unwrap();
        assert_eq!(
            au.data, config.video[*clip_index].1,
            "frame {}",
            au.frame_index
        );
        assert_eq!(au.frame_index, video[0].frame_index + k as u32);
    }
    assert_eq!(video[0].frame_type, FrameType::Idr);
    assert_eq!(idr_requests, 0, "FEC recovered every loss");
    let recovered = audio.iter().filter(|p| p.recovered).count();
    for p in &audio {
        assert_eq!(
            p.opus,
            config.audio[p.sequence as usize % config.audio.len()]
        );
    }
    assert!(recovered > 0, "some audio came from FEC");
    eprintln!(
        "video {} frames, audio {} packets ({recovered} recovered)",
        video.len(),
        audio.len()
    );
    stream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_refused_and_nothing_is_pinned() {
    let _serial = SERIAL.lock().await;
    let emu = Emulator::start(config()).await.unwrap();
    let mut client = HostClient::new(identities().0.clone(), emu.ip(), emu.ports().http);
    let err = client
        .pair("0000", &mut ChaCha20Rng::seed_from_u64(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Pairing(PairingError::WrongPin)),
        "{err:?}"
    );
    assert!(client.pinned().is_none());
    assert!(emu.record().paired_clients.is_empty());
    // An unpaired client is refused over HTTPS.
    let err = client.apps().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::NotPaired | ClientError::Refused { code: 401, .. }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecoverable_frame_brings_an_idr_request_and_the_next_idr_arrives_whole() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.damaged_frames = vec![12];
    let emu = Emulator::start(config.clone()).await.unwrap();
    let (_client, mut stream) = start(&emu, StreamOptions::default()).await;
    let requests_before = emu
        .wait_for(WAIT, |r| r.idr_requests >= 1)
        .await
        .unwrap()
        .idr_requests;
    let mut last_before = 0;
    let lost = loop {
        match next(&mut stream).await {
            StreamEvent::Video(au) => last_before = au.frame_index,
            StreamEvent::IdrRequested { lost_frame } => break lost_frame,
            StreamEvent::Audio(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(lost, 12);
    assert_eq!(last_before, 11);
    emu.wait_for(WAIT, |r| r.idr_requests > requests_before)
        .await
        .unwrap();
    let idr = loop {
        if let StreamEvent::Video(au) = next(&mut stream).await {
            break au;
        }
    };
    assert_eq!(idr.frame_type, FrameType::Idr);
    assert!(idr.frame_index > 12);
    let record = emu.record();
    let (_, clip_index) = record
        .frames_sent
        .iter()
        .find(|(f, _)| *f == idr.frame_index)
        .unwrap();
    assert_eq!(idr.data, config.video[*clip_index].1, "the IDR is whole");
    stream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_events_arrive_at_the_host_as_the_right_packets() {
    let _serial = SERIAL.lock().await;
    let emu = Emulator::start(config()).await.unwrap();
    let (_client, stream) = start(&emu, StreamOptions::default()).await;
    // Wait until the control stream is up (the client's first IDR request).
    emu.wait_for(WAIT, |r| r.idr_requests >= 1).await.unwrap();
    let mut sent = vec![
        input::key_event("KeyW", true, input::MODIFIER_SHIFT).unwrap(),
        input::key_event("KeyW", false, 0).unwrap(),
        InputEvent::MouseMove { dx: -5, dy: 12 },
        InputEvent::MousePosition {
            x: 320,
            y: 180,
            width: 640,
            height: 360,
        },
        InputEvent::MouseButton {
            down: true,
            button: MouseButton::Left,
        },
        InputEvent::MouseButton {
            down: false,
            button: MouseButton::Left,
        },
        InputEvent::Scroll { amount: 120 },
        InputEvent::HScroll { amount: -120 },
        InputEvent::ControllerArrival {
            number: 0,
            controller_type: 1,
            capabilities: 3,
            supported_buttons: 0xffff,
        },
        InputEvent::Controller(input::ControllerState {
            number: 0,
            active_mask: 1,
            buttons: input::buttons::A,
            left_trigger: 200,
            ..Default::default()
        }),
    ];
    sent.extend(InputEvent::text("héllo"));
    for e in &sent {
        stream.send_input(e.clone());
    }
    let record = emu
        .wait_for(WAIT, |r| r.inputs.len() >= sent.len())
        .await
        .unwrap();
    assert_eq!(record.inputs, sent);
    stream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_host_ends_the_stream_with_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let mut emu = Emulator::start(config()).await.unwrap();
    let options = StreamOptions {
        host_timeout: Duration::from_millis(800),
        ..StreamOptions::default()
    };
    let (_client, mut stream) = start(&emu, options).await;
    loop {
        if let StreamEvent::Video(_) = next(&mut stream).await {
            break;
        }
    }
    emu.vanish();
    let end = loop {
        if let StreamEvent::Ended(e) = next(&mut stream).await {
            break e;
        }
    };
    assert!(matches!(end, StreamEnd::HostVanished { .. }), "{end:?}");
    assert!(stream.next_event().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_termination_reason_reaches_the_client() {
    let _serial = SERIAL.lock().await;
    let emu = Emulator::start(config()).await.unwrap();
    let (_client, mut stream) = start(&emu, StreamOptions::default()).await;
    loop {
        if let StreamEvent::Video(_) = next(&mut stream).await {
            break;
        }
    }
    emu.terminate(TERMINATION_GRACEFUL);
    let end = loop {
        if let StreamEvent::Ended(e) = next(&mut stream).await {
            break e;
        }
    };
    assert_eq!(
        end,
        StreamEnd::Terminated {
            reason: TERMINATION_GRACEFUL
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_host_refuses_to_launch_with_its_reason() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.busy = true;
    let emu = Emulator::start(config).await.unwrap();
    let mut client = paired_client(&emu).await;
    assert!(client.server_info().await.unwrap().is_busy());
    let err = launch(&client).await.unwrap_err();
    match err {
        ClientError::Refused { code, message } => {
            assert_eq!(code, 400);
            assert_eq!(message, "An app is already running on this host");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_host_offering_invalidation_a_lost_frame_is_invalidated_not_an_idr_request() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.damaged_frames = vec![12];
    config.ref_pic_invalidation = true;
    let emu = Emulator::start(config.clone()).await.unwrap();
    let (_client, mut stream) = start(&emu, StreamOptions::default()).await;
    assert!(stream.negotiated().capabilities.ref_pic_invalidation);
    let (first, last) = loop {
        match next(&mut stream).await {
            StreamEvent::RefFramesInvalidated { first, last } => break (first, last),
            StreamEvent::Video(_) | StreamEvent::Audio(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(first, 12);
    assert!(last >= 12);
    let record = emu
        .wait_for(WAIT, |r| !r.invalidations.is_empty())
        .await
        .unwrap_or_else(|r| {
            panic!(
                "no invalidation recorded; IDR requests {}, control messages {}",
                r.idr_requests, r.control_messages
            )
        });
    assert_eq!(record.invalidations[0], (u64::from(first), u64::from(last)));
    // The emulator answers with its next IDR, which arrives whole.
    let idr = loop {
        if let StreamEvent::Video(au) = next(&mut stream).await {
            break au;
        }
    };
    assert_eq!(idr.frame_type, FrameType::Idr);
    let record = emu.record();
    let (_, clip_index) = record
        .frames_sent
        .iter()
        .find(|(f, _)| *f == idr.frame_index)
        .unwrap();
    assert_eq!(idr.data, config.video[*clip_index].1);
    stream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_refuses_a_host_whose_certificate_differs_from_the_pinned_one() {
    let _serial = SERIAL.lock().await;
    let emu = Emulator::start(config()).await.unwrap();
    let client = paired_client(&emu).await;
    let pinned = client.pinned().unwrap().clone();
    // Another host (another identity) answering at an address the client
    // believes is the paired host.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let impostor_id = Identity::generate(&mut rng, "impostor", t).unwrap();
    let impostor = Emulator::start(EmulatorConfig::new(impostor_id, PIN))
        .await
        .unwrap();
    let fooled = HostClient::new(identities().0.clone(), impostor.ip(), impostor.ports().http)
        .with_pinned(pinned, impostor.ports().https);
    let err = fooled.apps().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(ref m) if m.contains("pinned")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_session_and_resume_or_launch_work_again() {
    let _serial = SERIAL.lock().await;
    let emu = Emulator::start(config()).await.unwrap();
    let client = paired_client(&emu).await;
    let (first, _) = launch(&client).await.unwrap();
    // A second launch while the app runs is refused; resume is accepted.
    assert!(matches!(
        launch(&client).await,
        Err(ClientError::Refused { code: 400, .. })
    ));
    let settings = StreamSettings::new(640, 360, 60, 10_000);
    let resumed = client
        .launch(1, &settings, [0x43; 16], 8, true)
        .await
        .unwrap();
    assert_eq!(resumed.session_url, first.session_url);
    client.cancel().await.unwrap();
    launch(&client).await.unwrap();
    assert_eq!(emu.record().launches, 3);
}
