//! Interop: PyPI's moonlight-python (moonlight-common-c, the library
//! Moonlight's own clients use) pairs with the emulator, launches, decodes
//! frames and audio, and sends keyboard and mouse input the emulator records.
//! Skipped, saying so, when the tool is not installed
//! (`scripts/setup-gamestream.sh` installs it).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use gamestream::emulator::{Emulator, EmulatorConfig};
use gamestream::input::{InputEvent, MouseButton};
use gamestream::pairing::Identity;
use gamestream::video::FrameType;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn moonlight_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("GAMESTREAM_MOONLIGHT_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = std::env::var("GAMESTREAM_MOONLIGHT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/streams/moonlight-python")
        });
    let python = venv.join("bin/python");
    python.exists().then_some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moonlight_common_c_pairs_streams_decodes_and_sends_input_to_the_emulator() {
    let Some(python) = moonlight_python() else {
        eprintln!("SKIPPED: moonlight-python is not installed (run scripts/setup-gamestream.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(aus) = support::x264_clip(dir.path(), 1) else {
        eprintln!("SKIPPED: ffmpeg is not installed");
        return;
    };
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let host = Identity::generate(
        &mut rng,
        "roth emulator",
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    )
    .unwrap();
    let mut config = EmulatorConfig::new(host, "5678");
    config.video = aus
        .into_iter()
        .map(|au| {
            (
                if support::nal_types(&au).contains(&5) {
                    FrameType::Idr
                } else {
                    FrameType::P
                },
                au,
            )
        })
        .collect();
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::LowDelay).unwrap();
    enc.set_vbr(false).unwrap();
    config.audio = (0..40)
        .map(|k| {
            let pcm: Vec<i16> = (0..480)
                .map(|n| (((k * 240 + n / 2) as f32 / 48_000.0 * 2765.0).sin() * 8000.0) as i16)
                .collect();
            enc.encode_vec(&pcm, 4000).unwrap()
        })
        .collect();
    let emu = Emulator::start(config).await.unwrap();

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/moonlight_client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .args(["127.0.0.1", &emu.ports().http.to_string(), "5678"])
        .arg(dir.path().join("moonlight-config"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("moonlight-python: {line}");
            let _ = tx.send(line);
        }
    });
    let stage = |name: &str| -> serde_json::Value {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(40))
                .unwrap_or_else(|_| panic!("moonlight-python never reached {name}"));
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
            if v["stage"] == name {
                return v;
            }
        }
    };
    let video = tokio::task::block_in_place(|| stage("video"));
    assert!(video["decoded"].as_u64().unwrap() >= 30, "{video}");
    assert_eq!(video["shapes"][0], serde_json::json!([360, 640, 3]));
    let audio = tokio::task::block_in_place(|| stage("audio"));
    assert!(audio["chunks"].as_u64().unwrap() >= 5, "{audio}");
    tokio::task::block_in_place(|| stage("input"));

    let expected = vec![
        InputEvent::Key {
            down: true,
            vk: 0x8041,
            modifiers: 1,
            flags: 0,
        },
        InputEvent::Key {
            down: false,
            vk: 0x8041,
            modifiers: 0,
            flags: 0,
        },
        InputEvent::MouseMove { dx: 5, dy: -3 },
        InputEvent::MouseButton {
            down: true,
            button: MouseButton::Left,
        },
        InputEvent::MouseButton {
            down: false,
            button: MouseButton::Left,
        },
        InputEvent::MousePosition {
            x: 100,
            y: 50,
            width: 639,
            height: 359,
        },
        InputEvent::Scroll { amount: 120 },
    ];
    let record = emu
        .wait_for(Duration::from_secs(10), |r| {
            r.inputs.windows(expected.len()).any(|w| w == expected)
        })
        .await
        .unwrap_or_else(|r| panic!("inputs recorded: {:?}", r.inputs));
    let mut stdin = child.stdin.take().unwrap();
    let _ = writeln!(stdin, "done");
    drop(stdin);
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    // moonlight-python nudges the mouse itself to wake the host (small moves
    // before ours); our events arrive in order, one packet each, as sent.
    let ours: Vec<&InputEvent> = record
        .inputs
        .iter()
        .skip_while(|e| !matches!(e, InputEvent::Key { .. }))
        .collect();
    assert_eq!(ours, expected.iter().collect::<Vec<_>>());
    assert_eq!(record.paired_clients.len(), 1);
    // moonlight-common-c took everything the emulator asked for: rtspenc,
    // control V2, video AES-GCM and audio AES-CBC.
    assert_eq!(record.announced.as_ref().map(|a| a.encryption), Some(0x07));
    assert!(
        record.rtspenc,
        "moonlight-common-c reported corever >= 1 and spoke rtspenc://"
    );
    eprintln!(
        "moonlight-python exited {status}; emulator sent {} frames, {} audio packets",
        record.frames_sent.len(),
        record.audio_sent
    );
}
