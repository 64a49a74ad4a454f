//! Debian's ffmpeg as an RTP sender, for the RTP source's tests.

/// Debian's ffmpeg sending the test picture (320x240 at 15 fps, H.264
/// constrained baseline) and a tone (Opus) as plain RTP; killed on drop.
pub struct RtpSender(std::process::Child);

impl RtpSender {
    /// Video to `video_port` with an IDR every `gop` frames (and none
    /// between: no scene-cut IDRs), audio to `audio_port` if given.
    pub fn start(video_port: u16, audio_port: Option<u16>, gop: u32) -> Self {
        let gop = gop.to_string();
        let mut args: Vec<String> = [
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=15",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-map",
            "0:v",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-profile:v",
            "baseline",
            "-tune",
            "zerolatency",
            "-g",
            &gop,
            "-sc_threshold",
            "0",
            "-bf",
            "0",
            "-f",
            "rtp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("rtp://127.0.0.1:{video_port}"));
        if let Some(port) = audio_port {
            for a in [
                "-map",
                "1:a",
                "-c:a",
                "libopus",
                "-payload_type",
                "111",
                "-f",
                "rtp",
            ] {
                args.push(a.into());
            }
            args.push(format!("rtp://127.0.0.1:{port}"));
        }
        let child = std::process::Command::new("/usr/bin/ffmpeg")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ffmpeg runs (scripts/setup.sh installs it)");
        RtpSender(child)
    }
}

impl Drop for RtpSender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
