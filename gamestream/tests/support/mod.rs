//! Test support: real H.264 from ffmpeg's libx264, cut into access units.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// A High-profile H.264 clip (`seconds` at 60 fps, 640x360, 10 Mbit/s, an IDR every 30
/// frames, an access unit delimiter before each frame), encoded by ffmpeg
/// into `dir`, returned as access units in Annex B. `None` when ffmpeg is
/// not installed.
pub fn x264_clip(dir: &Path, seconds: u32) -> Option<Vec<Vec<u8>>> {
    let out = dir.join("clip.h264");
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=size=640x360:rate=60")
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "high",
            "-preset",
            "veryfast",
        ])
        .args(["-g", "30", "-bf", "0", "-x264-params", "aud=1"])
        .args(["-b:v", "10M", "-maxrate", "10M", "-bufsize", "400k"])
        .args(["-pix_fmt", "yuv420p", "-f", "h264"])
        .arg(&out)
        .status()
        .ok()?;
    assert!(status.success(), "ffmpeg failed: {status}");
    let bytes = std::fs::read(out).expect("ffmpeg wrote the clip");
    Some(split_access_units(&bytes))
}

/// Cuts an Annex B stream before each access unit delimiter (NAL type 9).
pub fn split_access_units(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 4 < bytes.len() {
        if bytes[i..i + 4] == [0, 0, 0, 1] && bytes[i + 4] & 0x1f == 9 {
            starts.push(i);
        }
        i += 1;
    }
    starts.push(bytes.len());
    starts
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

/// NAL unit types in an access unit, in order.
pub fn nal_types(au: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut i = 0;
    while i + 3 < au.len() {
        if au[i..i + 3] == [0, 0, 1] {
            types.push(au[i + 3] & 0x1f);
            i += 3;
        } else {
            i += 1;
        }
    }
    types
}

/// The SPS's profile_idc (100 is High).
pub fn sps_profile(au: &[u8]) -> Option<u8> {
    let mut i = 0;
    while i + 4 < au.len() {
        if au[i..i + 3] == [0, 0, 1] && au[i + 3] & 0x1f == 7 {
            return Some(au[i + 4]);
        }
        i += 1;
    }
    None
}
