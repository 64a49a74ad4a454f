//! The synthetic test picture, drawn straight into I420 planes.
//!
//! Everything here is pure: the same inputs give the same picture.

use std::collections::{BTreeMap, BTreeSet};

use bus_schema::SourceEvent;
use font8x8::legacy::BASIC_LEGACY;

/// What the viewers' merged input looks like, drawn into the synthetic
/// picture (the round trip made visible).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overlay {
    /// Pointer position in picture pixels (clamped to the picture).
    pub cursor: Option<(u32, u32)>,
    pub keys_down: Vec<String>,
    pub buttons_down: Vec<String>,
    pub pads: Vec<String>,
    /// Free text; newlines start new lines.
    pub text: Option<String>,
}

/// The synthetic source's view of the merged input: what is held, where the
/// pointer is. Fed the session's [`SourceEvent`]s in order, it draws what a
/// real source would act on: keys and buttons down once however many
/// viewers hold them, pads by slot, the pointer moved by absolute positions
/// and by relative motion (clamped to the picture).
#[derive(Clone, Debug)]
pub struct DrawnInput {
    size: (u32, u32),
    cursor: Option<(u32, u32)>,
    keys: BTreeSet<String>,
    buttons: BTreeSet<u8>,
    /// Slot → its non-zero buttons (button → value).
    pads: BTreeMap<u8, BTreeMap<u8, u8>>,
}

impl DrawnInput {
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            size: (width.max(1), height.max(1)),
            cursor: None,
            keys: BTreeSet::new(),
            buttons: BTreeSet::new(),
            pads: BTreeMap::new(),
        }
    }

    /// Applies events in order; returns whether anything drawn changed.
    pub fn apply(&mut self, events: &[SourceEvent]) -> bool {
        let before = self.overlay();
        let (w, h) = self.size;
        for e in events {
            match e {
                SourceEvent::Key { code, down: true } => {
                    self.keys.insert(code.clone());
                }
                SourceEvent::Key { code, down: false } => {
                    self.keys.remove(code);
                }
                SourceEvent::MouseButton { button, down: true } => {
                    self.buttons.insert(*button);
                }
                SourceEvent::MouseButton {
                    button,
                    down: false,
                } => {
                    self.buttons.remove(button);
                }
                SourceEvent::MouseAbs { x, y } => {
                    self.cursor = Some((
                        u32::from(*x) * (w - 1) / 65535,
                        u32::from(*y) * (h - 1) / 65535,
                    ));
                }
                SourceEvent::MouseMove { dx, dy } => {
                    let (cx, cy) = self.cursor.unwrap_or((w / 2, h / 2));
                    let nx = (i64::from(cx) + i64::from(*dx)).clamp(0, i64::from(w) - 1);
                    let ny = (i64::from(cy) + i64::from(*dy)).clamp(0, i64::from(h) - 1);
                    self.cursor = Some((nx as u32, ny as u32));
                }
                SourceEvent::PadConnected { slot } => {
                    self.pads.entry(*slot).or_default();
                }
                SourceEvent::PadDisconnected { slot } => {
                    self.pads.remove(slot);
                }
                SourceEvent::PadButton {
                    slot,
                    button,
                    value,
                } => {
                    let pad = self.pads.entry(*slot).or_default();
                    if *value == 0 {
                        pad.remove(button);
                    } else {
                        pad.insert(*button, *value);
                    }
                }
                SourceEvent::Wheel { .. }
                | SourceEvent::Touch { .. }
                | SourceEvent::PadAxis { .. }
                | SourceEvent::Unknown => {}
            }
        }
        self.overlay() != before
    }

    /// What to draw now.
    pub fn overlay(&self) -> Overlay {
        Overlay {
            cursor: self.cursor,
            keys_down: self.keys.iter().cloned().collect(),
            buttons_down: self.buttons.iter().map(|b| format!("mouse{b}")).collect(),
            pads: self
                .pads
                .iter()
                .map(|(slot, buttons)| {
                    let held: Vec<(u8, u8)> = buttons.iter().map(|(b, v)| (*b, *v)).collect();
                    format!("pad{slot}:{held:?}")
                })
                .collect(),
            text: None,
        }
    }
}

/// A picture in planar YUV 4:2:0 (BT.601 limited range), no padding:
/// the Y plane is `width` bytes a row, U and V `width / 2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I420 {
    width: u32,
    height: u32,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl I420 {
    /// A black picture. Width and height are rounded down to even numbers
    /// (4:2:0 needs them even; specs are validated to be).
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = ((width & !1) as usize, (height & !1) as usize);
        I420 {
            width: w as u32,
            height: h as u32,
            y: vec![16; w * h],
            u: vec![128; w * h / 4],
            v: vec![128; w * h / 4],
        }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Fills a rectangle (clipped to the picture) with one colour.
    fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, colour: Yuv) {
        let Some((x0, y0, x1, y1)) = self.clip(x, y, w, h) else {
            return;
        };
        let stride = self.width as usize;
        for row in y0..y1 {
            self.y[row * stride + x0..row * stride + x1].fill(colour.0);
        }
        let cstride = stride / 2;
        for row in y0 / 2..y1.div_ceil(2) {
            let (a, b) = (row * cstride + x0 / 2, row * cstride + x1.div_ceil(2));
            self.u[a..b].fill(colour.1);
            self.v[a..b].fill(colour.2);
        }
    }

    /// Sets luma only in a rectangle (clipped), leaving colour as it is.
    fn fill_luma(&mut self, x: i64, y: i64, w: i64, h: i64, luma: u8) {
        let Some((x0, y0, x1, y1)) = self.clip(x, y, w, h) else {
            return;
        };
        let stride = self.width as usize;
        for row in y0..y1 {
            self.y[row * stride + x0..row * stride + x1].fill(luma);
        }
    }

    fn clip(&self, x: i64, y: i64, w: i64, h: i64) -> Option<(usize, usize, usize, usize)> {
        let x0 = x.clamp(0, i64::from(self.width));
        let y0 = y.clamp(0, i64::from(self.height));
        let x1 = (x + w).clamp(0, i64::from(self.width));
        let y1 = (y + h).clamp(0, i64::from(self.height));
        (x1 > x0 && y1 > y0).then_some((x0 as usize, y0 as usize, x1 as usize, y1 as usize))
    }
}

impl openh264::formats::YUVSource for I420 {
    fn dimensions(&self) -> (usize, usize) {
        (self.width as usize, self.height as usize)
    }

    fn strides(&self) -> (usize, usize, usize) {
        let w = self.width as usize;
        (w, w / 2, w / 2)
    }

    fn y(&self) -> &[u8] {
        &self.y
    }

    fn u(&self) -> &[u8] {
        &self.u
    }

    fn v(&self) -> &[u8] {
        &self.v
    }
}

/// A colour as (Y, U, V).
#[derive(Clone, Copy)]
struct Yuv(u8, u8, u8);

const BLACK: Yuv = Yuv(16, 128, 128);
const PANEL: Yuv = Yuv(24, 128, 128);
const TEXT_LUMA: u8 = 235;
const BOX: Yuv = Yuv(190, 40, 150); // warm yellow
const BOX_EDGE: Yuv = Yuv(40, 150, 110);
/// Chroma of the scrolling bars: U, V pairs, muted so text stays readable.
const BARS: [(u8, u8); 8] = [
    (128, 128),
    (96, 136),
    (144, 96),
    (112, 100),
    (150, 150),
    (104, 160),
    (160, 118),
    (128, 128),
];

/// Draws frame `n` of the test picture: a scrolling gradient with colour
/// bars, a bouncing box, the frame counter, `wallclock` and the overlay.
pub fn draw_frame(img: &mut I420, n: u64, wallclock: &str, overlay: &Overlay) {
    draw_background(img, n);
    draw_bouncing_box(img, n);

    let (w, h) = (i64::from(img.width), i64::from(img.height));
    let scale = text_scale(h);
    let margin = 4 * scale;
    let line_h = 10 * scale;
    let cols = ((w - 2 * margin) / (8 * scale)).max(1) as usize;

    // Top left: what frame this is and when it was drawn. The clock wraps
    // between date and time when the picture is narrow.
    let mut top = vec![format!("frame {n:06}")];
    top.extend(wrap(&wallclock.replacen('T', " ", 1), cols));
    let mut y = margin;
    for line in &top {
        draw_text(img, margin, y, scale, line);
        y += line_h;
    }

    // Bottom left: the viewers' input, newest state.
    let mut lines = Vec::new();
    for (label, items) in [
        ("keys", &overlay.keys_down),
        ("buttons", &overlay.buttons_down),
        ("pads", &overlay.pads),
    ] {
        if !items.is_empty() {
            lines.extend(wrap(&format!("{label}: {}", items.join(" ")), cols));
        }
    }
    if let Some(text) = &overlay.text {
        for part in text.lines() {
            lines.extend(wrap(part, cols));
        }
    }
    let room = ((h - y - margin) / line_h).max(0) as usize;
    lines.truncate(room);
    let mut y = h - margin - line_h * lines.len() as i64;
    for line in &lines {
        draw_text(img, margin, y, scale, line);
        y += line_h;
    }

    if let Some((cx, cy)) = overlay.cursor {
        draw_cursor(img, i64::from(cx), i64::from(cy), scale);
    }
}

/// Glyph magnification: 2x at 240 lines, up to 4x from 480 lines.
fn text_scale(height: i64) -> i64 {
    (height / 120).clamp(1, 4)
}

/// A luma ramp scrolling left to right over colour bars scrolling the other way.
/// Each plane's rows differ only by a constant, so one row is computed and
/// copied down.
fn draw_background(img: &mut I420, n: u64) {
    let (w, h) = (img.width as usize, img.height as usize);
    if w == 0 || h == 0 {
        return;
    }
    let shift = (n as usize).wrapping_mul(4) % w;
    let ramp: Vec<u8> = (0..w)
        .map(|col| 40 + ((col + w - shift) % w * 120 / w) as u8)
        .collect();
    for (row, line) in img.y.chunks_exact_mut(w).enumerate() {
        let lift = (row * 40 / h) as u8;
        for (px, base) in line.iter_mut().zip(&ramp) {
            *px = base + lift;
        }
    }
    let cw = w / 2;
    let bar_shift = (n as usize).wrapping_mul(2) % cw;
    let bar = |col: usize| BARS[(col + bar_shift) % cw * BARS.len() / cw];
    let u_row: Vec<u8> = (0..cw).map(|col| bar(col).0).collect();
    let v_row: Vec<u8> = (0..cw).map(|col| bar(col).1).collect();
    for line in img.u.chunks_exact_mut(cw) {
        line.copy_from_slice(&u_row);
    }
    for line in img.v.chunks_exact_mut(cw) {
        line.copy_from_slice(&v_row);
    }
}

fn draw_bouncing_box(img: &mut I420, n: u64) {
    let (w, h) = (i64::from(img.width), i64::from(img.height));
    let size = (h / 5).max(4);
    let edge = (size / 12).max(1);
    let n = n as i64;
    let x = triangle(n * (w / 100).max(1), w - size);
    let y = triangle(n * (h / 80).max(1), h - size);
    img.fill(x, y, size, size, BOX_EDGE);
    img.fill(x + edge, y + edge, size - 2 * edge, size - 2 * edge, BOX);
}

/// Bounces `t` between 0 and `range`.
fn triangle(t: i64, range: i64) -> i64 {
    if range <= 0 {
        return 0;
    }
    let p = t.rem_euclid(2 * range);
    if p <= range {
        p
    } else {
        2 * range - p
    }
}

/// One line of text on a dark panel, glyphs 8x8 scaled by `scale`.
fn draw_text(img: &mut I420, x: i64, y: i64, scale: i64, text: &str) {
    let len = text.chars().count() as i64;
    if len == 0 {
        return;
    }
    img.fill(
        x - scale,
        y - scale,
        len * 8 * scale + 2 * scale,
        10 * scale,
        PANEL,
    );
    for (i, ch) in text.chars().enumerate() {
        let glyph = glyph(ch);
        let gx0 = x + i as i64 * 8 * scale;
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..8 {
                if bits >> gx & 1 == 1 {
                    img.fill_luma(
                        gx0 + gx * scale,
                        y + gy as i64 * scale,
                        scale,
                        scale,
                        TEXT_LUMA,
                    );
                }
            }
        }
    }
}

/// The 8x8 bitmap of `ch`: row bytes, bit 0 the leftmost pixel. Outside
/// ASCII a `?`.
fn glyph(ch: char) -> [u8; 8] {
    let code = if ch.is_ascii() {
        ch as usize
    } else {
        '?' as usize
    };
    BASIC_LEGACY[code]
}

/// Splits `text` into lines of at most `cols` characters, at spaces when it can.
fn wrap(text: &str, cols: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word: Vec<char> = word.chars().collect();
        // A word longer than a line is cut.
        while word.len() > cols {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.drain(..cols).collect());
        }
        if word.is_empty() {
            continue;
        }
        let word: String = word.into_iter().collect();
        let needed = if line.is_empty() {
            word.chars().count()
        } else {
            line.chars().count() + 1 + word.chars().count()
        };
        if needed > cols {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// A crosshair, white on a black outline so it shows on any background.
fn draw_cursor(img: &mut I420, cx: i64, cy: i64, scale: i64) {
    let cx = cx.clamp(0, i64::from(img.width) - 1);
    let cy = cy.clamp(0, i64::from(img.height) - 1);
    let arm = 6 * scale + 2;
    let t = scale.max(1);
    img.fill(cx - arm - 1, cy - t / 2 - 1, 2 * arm + 3, t + 2, BLACK);
    img.fill(cx - t / 2 - 1, cy - arm - 1, t + 2, 2 * arm + 3, BLACK);
    let white = Yuv(TEXT_LUMA, 128, 128);
    img.fill(cx - arm, cy - t / 2, 2 * arm + 1, t, white);
    img.fill(cx - t / 2, cy - arm, t, 2 * arm + 1, white);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCK: &str = "2025-01-02T03:04:05.678Z";

    fn drawn(w: u32, h: u32, n: u64, clock: &str, overlay: &Overlay) -> I420 {
        let mut img = I420::new(w, h);
        draw_frame(&mut img, n, clock, overlay);
        img
    }

    /// Luma bytes that differ inside the square of half-size `r` around (x, y).
    fn luma_diff_around(a: &I420, b: &I420, x: u32, y: u32, r: u32) -> usize {
        let w = a.width();
        let mut diff = 0;
        for row in y.saturating_sub(r)..(y + r).min(a.height()) {
            for col in x.saturating_sub(r)..(x + r).min(w) {
                let i = (row * w + col) as usize;
                diff += usize::from(a.y[i] != b.y[i]);
            }
        }
        diff
    }

    #[test]
    fn planes_have_i420_sizes() {
        let img = drawn(320, 240, 0, CLOCK, &Overlay::default());
        assert_eq!(img.y.len(), 320 * 240);
        assert_eq!(img.u.len(), 160 * 120);
        assert_eq!(img.v.len(), 160 * 120);
    }

    #[test]
    fn same_inputs_same_picture() {
        let o = Overlay {
            cursor: Some((10, 10)),
            ..Overlay::default()
        };
        assert_eq!(drawn(320, 240, 7, CLOCK, &o), drawn(320, 240, 7, CLOCK, &o));
    }

    #[test]
    fn frames_differ_over_time() {
        let a = drawn(320, 240, 1, CLOCK, &Overlay::default());
        let b = drawn(320, 240, 2, CLOCK, &Overlay::default());
        let changed = a.y.iter().zip(&b.y).filter(|(p, q)| p != q).count();
        assert!(changed > 320 * 240 / 4, "only {changed} luma bytes changed");
    }

    #[test]
    fn cursor_is_drawn_where_it_points() {
        let at = |x, y| Overlay {
            cursor: Some((x, y)),
            ..Overlay::default()
        };
        let plain = drawn(320, 240, 5, CLOCK, &Overlay::default());
        let a = drawn(320, 240, 5, CLOCK, &at(100, 150));
        let b = drawn(320, 240, 5, CLOCK, &at(250, 60));
        assert!(luma_diff_around(&plain, &a, 100, 150, 8) > 20);
        assert!(luma_diff_around(&a, &b, 100, 150, 8) > 20);
        assert!(luma_diff_around(&a, &b, 250, 60, 8) > 20);
        // Far from both cursors nothing changed.
        assert_eq!(luma_diff_around(&a, &b, 30, 120, 10), 0);
        // The centre pixel is the crosshair's white.
        assert_eq!(a.y[(150 * 320 + 100) as usize], TEXT_LUMA);
    }

    #[test]
    fn cursor_out_of_picture_is_clamped() {
        let o = Overlay {
            cursor: Some((10_000, 10_000)),
            ..Overlay::default()
        };
        let img = drawn(320, 240, 0, CLOCK, &o);
        assert_eq!(img.y[(239 * 320 + 319) as usize], TEXT_LUMA);
    }

    #[test]
    fn held_keys_and_text_appear() {
        let plain = drawn(320, 240, 3, CLOCK, &Overlay::default());
        let o = Overlay {
            keys_down: vec!["KeyA".into(), "ShiftLeft".into()],
            buttons_down: vec!["Left".into()],
            pads: vec!["pad0: A".into()],
            text: Some("hello".into()),
            ..Overlay::default()
        };
        let with = drawn(320, 240, 3, CLOCK, &o);
        // The lower part of the picture carries the lines.
        let lower = 240 / 2 * 320;
        let changed = plain.y[lower..]
            .iter()
            .zip(&with.y[lower..])
            .filter(|(p, q)| p != q)
            .count();
        assert!(changed > 1000, "only {changed} luma bytes changed");
    }

    #[test]
    fn counter_and_clock_change_the_text_area() {
        let a = drawn(320, 240, 10, CLOCK, &Overlay::default());
        let b = drawn(
            320,
            240,
            10,
            "2025-01-02T03:04:06.001Z",
            &Overlay::default(),
        );
        // Same frame, other time: only the clock line (second or third row of text) differs.
        let differing_rows: Vec<u32> = (0..240)
            .filter(|&r| {
                let s = (r * 320) as usize..((r + 1) * 320) as usize;
                a.y[s.clone()] != b.y[s]
            })
            .collect();
        assert!(!differing_rows.is_empty());
        assert!(
            differing_rows.iter().all(|&r| r < 80),
            "rows {differing_rows:?}"
        );
    }

    #[test]
    fn glyphs_grow_with_the_picture() {
        assert_eq!(text_scale(240), 2);
        assert_eq!(text_scale(480), 4);
        assert_eq!(text_scale(720), 4);
        assert_eq!(text_scale(16), 1);
    }

    #[test]
    fn wrap_breaks_at_spaces_and_cuts_long_words() {
        assert_eq!(
            wrap("2025-01-02 03:04:05.678Z", 20),
            vec!["2025-01-02", "03:04:05.678Z"]
        );
        assert_eq!(
            wrap("2025-01-02 03:04:05.678Z", 40),
            vec!["2025-01-02 03:04:05.678Z"]
        );
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("keys: a b", 5), vec!["keys:", "a b"]);
        assert!(wrap("", 5).is_empty());
    }

    #[test]
    fn tiny_pictures_do_not_panic() {
        let o = Overlay {
            cursor: Some((3, 3)),
            keys_down: vec!["KeyA".into()],
            text: Some("a long line of text that cannot fit".into()),
            ..Overlay::default()
        };
        let img = drawn(16, 16, 99, CLOCK, &o);
        assert_eq!(img.y.len(), 256);
    }

    #[test]
    fn triangle_bounces() {
        let xs: Vec<i64> = (0..8).map(|t| triangle(t, 3)).collect();
        assert_eq!(xs, vec![0, 1, 2, 3, 2, 1, 0, 1]);
        assert_eq!(triangle(5, 0), 0);
    }

    #[test]
    fn drawn_input_follows_the_merged_stream() {
        let key = |code: &str, down| SourceEvent::Key {
            code: code.into(),
            down,
        };
        let mut d = DrawnInput::new(320, 240);
        assert!(!d.apply(&[]), "nothing applied, nothing changed");
        assert!(d.apply(&[key("ShiftLeft", true), key("KeyA", true)]));
        assert_eq!(d.overlay().keys_down, ["KeyA", "ShiftLeft"]);
        assert!(d.apply(&[key("KeyA", false)]));
        assert_eq!(d.overlay().keys_down, ["ShiftLeft"]);
        // Absolute position over the picture, then relative motion clamped.
        d.apply(&[SourceEvent::MouseAbs { x: 65535, y: 0 }]);
        assert_eq!(d.overlay().cursor, Some((319, 0)));
        d.apply(&[SourceEvent::MouseMove { dx: 50, dy: -7 }]);
        assert_eq!(d.overlay().cursor, Some((319, 0)), "clamped to the picture");
        d.apply(&[SourceEvent::MouseMove { dx: -19, dy: 40 }]);
        assert_eq!(d.overlay().cursor, Some((300, 40)));
        d.apply(&[
            SourceEvent::MouseButton {
                button: 2,
                down: true,
            },
            SourceEvent::PadConnected { slot: 1 },
            SourceEvent::PadButton {
                slot: 1,
                button: 0,
                value: 255,
            },
        ]);
        assert_eq!(d.overlay().buttons_down, ["mouse2"]);
        assert_eq!(d.overlay().pads, ["pad1:[(0, 255)]"]);
        assert!(d.apply(&[SourceEvent::PadDisconnected { slot: 1 }]));
        assert!(d.overlay().pads.is_empty());
        assert!(
            !d.apply(&[SourceEvent::Unknown]),
            "unknown types are skipped"
        );
    }
}
