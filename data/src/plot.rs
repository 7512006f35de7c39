//! Small PNG charts for reports (line charts, bars with error bars, histograms), drawn here
//! with no font files: text uses the classic 5×7 LCD glyph set (HD44780-style, upper case).

use std::path::Path;

use crate::error::Result;

pub type Rgb = [u8; 3];
pub const COLOURS: [Rgb; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];
const BLACK: Rgb = [0, 0, 0];
const GREY: Rgb = [220, 220, 220];

/// Column bytes (bit 0 = top row) of the 5×7 glyphs for ASCII 32..=95.
const GLYPHS: [[u8; 5]; 64] = [
    [0x00, 0x00, 0x00, 0x00, 0x00],
    [0x00, 0x00, 0x5F, 0x00, 0x00],
    [0x00, 0x07, 0x00, 0x07, 0x00],
    [0x14, 0x7F, 0x14, 0x7F, 0x14],
    [0x24, 0x2A, 0x7F, 0x2A, 0x12],
    [0x23, 0x13, 0x08, 0x64, 0x62],
    [0x36, 0x49, 0x55, 0x22, 0x50],
    [0x00, 0x05, 0x03, 0x00, 0x00],
    [0x00, 0x1C, 0x22, 0x41, 0x00],
    [0x00, 0x41, 0x22, 0x1C, 0x00],
    [0x08, 0x2A, 0x1C, 0x2A, 0x08],
    [0x08, 0x08, 0x3E, 0x08, 0x08],
    [0x00, 0x50, 0x30, 0x00, 0x00],
    [0x08, 0x08, 0x08, 0x08, 0x08],
    [0x00, 0x60, 0x60, 0x00, 0x00],
    [0x20, 0x10, 0x08, 0x04, 0x02],
    [0x3E, 0x51, 0x49, 0x45, 0x3E],
    [0x00, 0x42, 0x7F, 0x40, 0x00],
    [0x42, 0x61, 0x51, 0x49, 0x46],
    [0x21, 0x41, 0x45, 0x4B, 0x31],
    [0x18, 0x14, 0x12, 0x7F, 0x10],
    [0x27, 0x45, 0x45, 0x45, 0x39],
    [0x3C, 0x4A, 0x49, 0x49, 0x30],
    [0x01, 0x71, 0x09, 0x05, 0x03],
    [0x36, 0x49, 0x49, 0x49, 0x36],
    [0x06, 0x49, 0x49, 0x29, 0x1E],
    [0x00, 0x36, 0x36, 0x00, 0x00],
    [0x00, 0x56, 0x36, 0x00, 0x00],
    [0x00, 0x08, 0x14, 0x22, 0x41],
    [0x14, 0x14, 0x14, 0x14, 0x14],
    [0x41, 0x22, 0x14, 0x08, 0x00],
    [0x02, 0x01, 0x51, 0x09, 0x06],
    [0x32, 0x49, 0x79, 0x41, 0x3E],
    [0x7E, 0x11, 0x11, 0x11, 0x7E],
    [0x7F, 0x49, 0x49, 0x49, 0x36],
    [0x3E, 0x41, 0x41, 0x41, 0x22],
    [0x7F, 0x41, 0x41, 0x22, 0x1C],
    [0x7F, 0x49, 0x49, 0x49, 0x41],
    [0x7F, 0x09, 0x09, 0x01, 0x01],
    [0x3E, 0x41, 0x41, 0x51, 0x32],
    [0x7F, 0x08, 0x08, 0x08, 0x7F],
    [0x00, 0x41, 0x7F, 0x41, 0x00],
    [0x20, 0x40, 0x41, 0x3F, 0x01],
    [0x7F, 0x08, 0x14, 0x22, 0x41],
    [0x7F, 0x40, 0x40, 0x40, 0x40],
    [0x7F, 0x02, 0x04, 0x02, 0x7F],
    [0x7F, 0x04, 0x08, 0x10, 0x7F],
    [0x3E, 0x41, 0x41, 0x41, 0x3E],
    [0x7F, 0x09, 0x09, 0x09, 0x06],
    [0x3E, 0x41, 0x51, 0x21, 0x5E],
    [0x7F, 0x09, 0x19, 0x29, 0x46],
    [0x46, 0x49, 0x49, 0x49, 0x31],
    [0x01, 0x01, 0x7F, 0x01, 0x01],
    [0x3F, 0x40, 0x40, 0x40, 0x3F],
    [0x1F, 0x20, 0x40, 0x20, 0x1F],
    [0x7F, 0x20, 0x18, 0x20, 0x7F],
    [0x63, 0x14, 0x08, 0x14, 0x63],
    [0x03, 0x04, 0x78, 0x04, 0x03],
    [0x61, 0x51, 0x49, 0x45, 0x43],
    [0x00, 0x00, 0x7F, 0x41, 0x41],
    [0x02, 0x04, 0x08, 0x10, 0x20],
    [0x41, 0x41, 0x7F, 0x00, 0x00],
    [0x04, 0x02, 0x01, 0x02, 0x04],
    [0x40, 0x40, 0x40, 0x40, 0x40],
];

fn glyph(c: char) -> [u8; 5] {
    match c {
        '°' => [0x00, 0x06, 0x09, 0x06, 0x00],
        '±' => [0x44, 0x44, 0x5F, 0x44, 0x44],
        'Δ' => [0x60, 0x58, 0x46, 0x58, 0x60],
        '×' => GLYPHS[(b'X' - 32) as usize],
        '−' | '–' => GLYPHS[(b'-' - 32) as usize],
        _ => {
            let u = c.to_ascii_uppercase();
            if (' '..='_').contains(&u) {
                GLYPHS[(u as u8 - 32) as usize]
            } else {
                GLYPHS[(b'?' - 32) as usize]
            }
        }
    }
}

/// An RGB raster, white background.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Canvas {
            width,
            height,
            rgb: vec![255; width * height * 3],
        }
    }
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }
    pub fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for k in 0..=n {
            let x = x0 + (x1 - x0) * k / n;
            let y = y0 + (y1 - y0) * k / n;
            self.set(x, y, c);
        }
    }
    pub fn thick_line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for d in [-1, 0, 1] {
            self.line(x0, y0 + d, x1, y1 + d, c);
        }
    }
    pub fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }
    /// Text with its top-left corner at (x, y); `scale` multiplies the 5×7 glyphs.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: i64) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (col, bits) in g.iter().enumerate() {
                for row in 0..7 {
                    if bits >> row & 1 == 1 {
                        let (px, py) = (x + (k as i64 * 6 + col as i64) * scale, y + row * scale);
                        self.fill(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
        }
    }
    pub fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 6 * scale
    }
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::png::write_rgb(path, self.width, self.height, &self.rgb)
    }
}

/// 1-2-5 ticks covering [lo, hi].
pub fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).ceil() as i64;
    let end = (hi / step).floor() as i64;
    (start..=end).map(|k| k as f64 * step).collect()
}

/// Short number labels: 3 significant digits, no trailing zeros.
pub fn fmt(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    let s = if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let decimals = (2 - a.log10().floor() as i64).clamp(0, 4) as usize;
        format!("{v:.decimals$}")
    };
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The plotting frame shared by the charts: title, axis labels, y ticks, gridlines.
struct Frame {
    c: Canvas,
    left: i64,
    right: i64,
    top: i64,
    bottom: i64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn new(title: &str, y_label: &str, y0: f64, y1: f64) -> Frame {
        let (w, h) = (720, 440);
        let mut c = Canvas::new(w, h);
        c.text(12, 10, title, BLACK, 2);
        c.text(12, 34, y_label, [90, 90, 90], 1);
        let (y0, y1) = if y1 > y0 {
            let pad = (y1 - y0) * 0.08;
            (y0 - pad, y1 + pad)
        } else {
            (y0 - 1.0, y0 + 1.0)
        };
        let mut f = Frame {
            c,
            left: 70,
            right: w as i64 - 20,
            top: 50,
            bottom: h as i64 - 70,
            y0,
            y1,
        };
        for t in ticks(y0, y1, 6) {
            let y = f.ypix(t);
            f.c.line(f.left, y, f.right, y, GREY);
            let s = fmt(t);
            f.c.text(f.left - 6 - Canvas::text_width(&s, 1), y - 3, &s, BLACK, 1);
        }
        f.c.line(f.left, f.top, f.left, f.bottom, BLACK);
        f.c.line(f.left, f.bottom, f.right, f.bottom, BLACK);
        f
    }
    fn ypix(&self, v: f64) -> i64 {
        let t = (v - self.y0) / (self.y1 - self.y0);
        self.bottom - (t * (self.bottom - self.top) as f64).round() as i64
    }
}

/// Canvases one above the other, as wide as the widest (a chart and its histogram in one PNG).
pub fn stack(parts: &[Canvas]) -> Canvas {
    let width = parts.iter().map(|c| c.width).max().unwrap_or(1);
    let mut out = Canvas::new(width, parts.iter().map(|c| c.height).sum::<usize>().max(1));
    let mut y0 = 0;
    for c in parts {
        for y in 0..c.height {
            let src = &c.rgb[y * c.width * 3..(y + 1) * c.width * 3];
            let at = ((y0 + y) * width) * 3;
            out.rgb[at..at + src.len()].copy_from_slice(src);
        }
        y0 += c.height;
    }
    out
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    vals.filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        })
}

/// One line of a line chart.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Lines over a shared x axis, with a legend.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Canvas {
    let (ylo, yhi) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let (xlo, xhi) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (xlo, xhi) = if xhi > xlo {
        (xlo, xhi)
    } else {
        (xlo - 1.0, xlo + 1.0)
    };
    let mut f = Frame::new(title, y_label, ylo, yhi);
    let xpix = |f: &Frame, v: f64| {
        f.left + ((v - xlo) / (xhi - xlo) * (f.right - f.left) as f64).round() as i64
    };
    for t in ticks(xlo, xhi, 8) {
        let x = xpix(&f, t);
        f.c.line(x, f.bottom, x, f.bottom + 4, BLACK);
        let s = fmt(t);
        let tw = Canvas::text_width(&s, 1);
        f.c.text(x - tw / 2, f.bottom + 8, &s, BLACK, 1);
    }
    let xw = Canvas::text_width(x_label, 1);
    let (l, r, b) = (f.left, f.right, f.bottom);
    f.c.text((l + r) / 2 - xw / 2, b + 24, x_label, [90, 90, 90], 1);
    for (k, s) in series.iter().enumerate() {
        let col = COLOURS[k % COLOURS.len()];
        let pts: Vec<(i64, i64)> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| (xpix(&f, x), f.ypix(y)))
            .collect();
        for w in pts.windows(2) {
            f.c.thick_line(w[0].0, w[0].1, w[1].0, w[1].1, col);
        }
        for &(x, y) in &pts {
            f.c.fill(x - 2, y - 2, x + 2, y + 2, col);
        }
        let ly = b + 40 + (k as i64 / 3) * 12;
        let lx = l + (k as i64 % 3) * 210;
        f.c.fill(lx, ly, lx + 12, ly + 6, col);
        f.c.text(lx + 18, ly, &s.label, BLACK, 1);
    }
    f.c
}

/// One bar: label, value and an error half-width (0 for none).
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub err: f64,
}

/// Bars with error bars (mean ± std) and the value printed above each.
pub fn bar_chart(title: &str, y_label: &str, bars: &[Bar]) -> Canvas {
    let (lo, hi) = range(
        bars.iter()
            .flat_map(|b| [b.value - b.err, b.value + b.err, 0.0]),
    );
    let mut f = Frame::new(title, y_label, lo, hi);
    let n = bars.len().max(1) as i64;
    let slot = (f.right - f.left) / n;
    let zero = f.ypix(0.0);
    for (k, b) in bars.iter().enumerate() {
        let col = COLOURS[k % COLOURS.len()];
        let x0 = f.left + k as i64 * slot + slot / 5;
        let x1 = f.left + (k as i64 + 1) * slot - slot / 5;
        if b.value.is_finite() {
            let y = f.ypix(b.value);
            f.c.fill(x0, y, x1, zero, col);
            if b.err > 0.0 {
                let (ya, yb) = (f.ypix(b.value - b.err), f.ypix(b.value + b.err));
                let xm = (x0 + x1) / 2;
                f.c.line(xm, ya, xm, yb, BLACK);
                f.c.line(xm - 5, ya, xm + 5, ya, BLACK);
                f.c.line(xm - 5, yb, xm + 5, yb, BLACK);
            }
            let s = fmt(b.value);
            let top = y.min(f.ypix(b.value + b.err)) - 10;
            f.c.text(
                (x0 + x1) / 2 - Canvas::text_width(&s, 1) / 2,
                top,
                &s,
                BLACK,
                1,
            );
        }
        let tw = Canvas::text_width(&b.label, 1);
        let b_ = f.bottom;
        f.c.text((x0 + x1) / 2 - tw / 2, b_ + 8, &b.label, BLACK, 1);
    }
    f.c
}

/// A histogram of `values` with vertical marks (e.g. p50, p99, a budget).
pub fn histogram(
    title: &str,
    x_label: &str,
    values: &[f64],
    bins: usize,
    marks: &[(&str, f64)],
) -> Canvas {
    // Marks far beyond the data (a generous budget) would squash it: they are listed in the
    // corner instead of drawn.
    let (dlo, dhi) = range(values.iter().copied());
    let span = (dhi - dlo).max(dhi.abs() * 0.1).max(1e-9);
    let on_scale = |v: f64| v >= dlo - span && v <= dhi + span;
    let (lo, hi) = range(
        values
            .iter()
            .copied()
            .chain(marks.iter().map(|m| m.1).filter(|v| on_scale(*v))),
    );
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let bins = bins.max(1);
    let mut counts = vec![0usize; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        counts[(((v - lo) / (hi - lo) * bins as f64) as usize).min(bins - 1)] += 1;
    }
    let max = *counts.iter().max().unwrap_or(&1) as f64;
    let mut f = Frame::new(title, "count", 0.0, max);
    let xpix = |f: &Frame, v: f64| {
        f.left + ((v - lo) / (hi - lo) * (f.right - f.left) as f64).round() as i64
    };
    for (k, &n) in counts.iter().enumerate() {
        let x0 = xpix(&f, lo + (hi - lo) * k as f64 / bins as f64);
        let x1 = xpix(&f, lo + (hi - lo) * (k + 1) as f64 / bins as f64) - 1;
        let (y, z) = (f.ypix(n as f64), f.ypix(0.0));
        if n > 0 {
            f.c.fill(x0, y, x1.max(x0), z, COLOURS[0]);
        }
    }
    for t in ticks(lo, hi, 8) {
        let x = xpix(&f, t);
        let s = fmt(t);
        let b = f.bottom;
        f.c.text(x - Canvas::text_width(&s, 1) / 2, b + 8, &s, BLACK, 1);
    }
    let (l, r, b) = (f.left, f.right, f.bottom);
    let xw = Canvas::text_width(x_label, 1);
    f.c.text((l + r) / 2 - xw / 2, b + 24, x_label, [90, 90, 90], 1);
    for (k, (label, v)) in marks.iter().enumerate() {
        let col = COLOURS[(k + 1) % COLOURS.len()];
        let s = format!("{label} {}", fmt(*v));
        let t = f.top;
        if !on_scale(*v) {
            let w = Canvas::text_width(&s, 1);
            f.c.text(r - w - 4, t + 4 + 10 * k as i64, &s, col, 1);
            continue;
        }
        let x = xpix(&f, *v);
        f.c.line(x, t, x, b, col);
        f.c.line(x + 1, t, x + 1, b, col);
        let w = Canvas::text_width(&s, 1);
        let tx = if x + 4 + w > r { x - 4 - w } else { x + 4 };
        f.c.text(tx, t + 4 + 10 * k as i64, &s, col, 1);
    }
    f.c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.013, 0.047, 4);
        assert!(t.iter().all(|v| (0.013..=0.047).contains(v)));
        assert!(t.len() >= 3);
        assert_eq!(fmt(21.046), "21");
        assert_eq!(fmt(0.1234), "0.123");
        assert_eq!(fmt(2.5), "2.5");
    }

    #[test]
    fn charts_draw_their_data() {
        let c = bar_chart(
            "t",
            "y",
            &[
                Bar {
                    label: "a".into(),
                    value: 2.0,
                    err: 0.5,
                },
                Bar {
                    label: "b".into(),
                    value: 1.0,
                    err: 0.0,
                },
            ],
        );
        // The first bar's colour appears, and the taller bar covers more pixels.
        let count = |col: Rgb| c.rgb.chunks_exact(3).filter(|p| *p == col).count();
        assert!(count(COLOURS[0]) > count(COLOURS[1]) && count(COLOURS[1]) > 0);
        let l = line_chart(
            "t",
            "x",
            "y",
            &[Series {
                label: "s".into(),
                points: vec![(0.0, 0.0), (1.0, 1.0)],
            }],
        );
        assert!(l.rgb.chunks_exact(3).any(|p| p == COLOURS[0]));
        let h = histogram("t", "ms", &[1.0, 1.1, 5.0], 10, &[("p50", 1.1)]);
        assert!(h.rgb.chunks_exact(3).any(|p| p == COLOURS[0]));
        let d = tempfile::tempdir().unwrap();
        h.save(&d.path().join("h.png")).unwrap();

        // Stacked: the wider part sets the width, the narrower keeps its pixels, white beside.
        let mut narrow = Canvas::new(2, 1);
        narrow.set(1, 0, COLOURS[1]);
        let mut wide = Canvas::new(3, 2);
        wide.set(2, 1, COLOURS[0]);
        let s = stack(&[narrow, wide]);
        assert_eq!((s.width, s.height), (3, 3));
        let px = |x: usize, y: usize| &s.rgb[(y * 3 + x) * 3..][..3];
        assert_eq!(px(1, 0), COLOURS[1]);
        assert_eq!(px(2, 0), [255; 3]);
        assert_eq!(px(2, 2), COLOURS[0]);
    }
}
