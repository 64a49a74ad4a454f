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

/// A HEVC clip from libx265 (10 Mbit/s, AUD before each access unit, IDR every 30
/// frames), as access units with whether each is an IDR. `None` without
/// ffmpeg or libx265.
pub fn x265_clip(dir: &Path, frames: u32) -> Option<Vec<(bool, Vec<u8>)>> {
    let out = dir.join("clip.hevc");
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
        .args(["-frames:v", &frames.to_string()])
        .args(["-c:v", "libx265", "-preset", "ultrafast", "-b:v", "10M"])
        .args(["-maxrate", "10M", "-bufsize", "400k"])
        .args([
            "-x265-params",
            "aud=1:keyint=30:min-keyint=30:bframes=0:log-level=error",
        ])
        .args(["-pix_fmt", "yuv420p", "-f", "hevc"])
        .arg(&out)
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let bytes = std::fs::read(out).ok()?;
    // Cut before each AUD (NAL type 35: first header byte 0x46).
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 4 < bytes.len() {
        if bytes[i..i + 4] == [0, 0, 0, 1] && (bytes[i + 4] >> 1) & 0x3f == 35 {
            starts.push(i);
        }
        i += 1;
    }
    starts.push(bytes.len());
    Some(
        starts
            .windows(2)
            .map(|w| {
                let au = bytes[w[0]..w[1]].to_vec();
                let idr = hevc_nal_types(&au).iter().any(|t| (16..=21).contains(t));
                (idr, au)
            })
            .collect(),
    )
}

fn hevc_nal_types(au: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut i = 0;
    while i + 3 < au.len() {
        if au[i..i + 3] == [0, 0, 1] {
            types.push((au[i + 3] >> 1) & 0x3f);
            i += 3;
        } else {
            i += 1;
        }
    }
    types
}

/// An AV1 clip from ffmpeg (libsvtav1 or libaom), low-overhead OBU format,
/// cut into temporal units (each starts with a temporal delimiter OBU); a
/// unit holding a sequence header counts as a key frame. `None` without an
/// AV1 encoder.
pub fn av1_clip(dir: &Path, frames: u32) -> Option<Vec<(bool, Vec<u8>)>> {
    let out = dir.join("clip.obu");
    let mut ok = false;
    for (codec, extra) in [
        (
            "libsvtav1",
            vec!["-preset", "12", "-g", "30", "-svtav1-params", "lp=1"],
        ),
        (
            "libaom-av1",
            vec!["-cpu-used", "8", "-g", "30", "-usage", "realtime"],
        ),
    ] {
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
            .args([
                "-frames:v",
                &frames.to_string(),
                "-c:v",
                codec,
                "-b:v",
                "4M",
            ])
            .args(extra)
            .args(["-pix_fmt", "yuv420p", "-f", "obu"])
            .arg(&out)
            .status();
        if matches!(status, Ok(s) if s.success()) {
            ok = true;
            break;
        }
    }
    if !ok {
        return None;
    }
    let bytes = std::fs::read(out).ok()?;
    let mut units: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let header = bytes[i];
        let obu_type = (header >> 3) & 0xf;
        let has_ext = header & 0x4 != 0;
        let mut j = i + 1 + usize::from(has_ext);
        // leb128 size (ffmpeg's obu muxer always writes it).
        let mut size = 0usize;
        let mut shift = 0;
        loop {
            let b = bytes[j];
            size |= usize::from(b & 0x7f) << shift;
            j += 1;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = j + size;
        if obu_type == 2 || units.is_empty() {
            units.push((false, Vec::new()));
        }
        let unit = units.last_mut().expect("pushed");
        if obu_type == 1 {
            unit.0 = true;
        }
        unit.1.extend_from_slice(&bytes[i..end]);
        i = end;
    }
    Some(units)
}
