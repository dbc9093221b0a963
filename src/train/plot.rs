//! Line charts of training curves written as PNG files. Self-contained, with
//! its own bitmap font, because plotting crates need system fonts that
//! training machines often lack.

use std::path::Path;

/// One curve; the label is what the legend shows.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One panel; several series share its axes so that runs can be compared.
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

type Rgb = [u8; 3];

const WIDTH: u32 = 900;
const PANEL_H: u32 = 340;
const LEFT: i64 = 110;
const RIGHT: i64 = 880;
const TOP: i64 = 40;
const BOTTOM: i64 = 280;
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const TEXT: Rgb = [50, 50, 50];
const GRID: Rgb = [225, 225, 225];
/// Tableau-10: distinct at a glance and for the common forms of colour blindness.
const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
    [188, 189, 34],
    [127, 127, 127],
];

/// Characters the font covers; `GLYPHS[i]` draws `CHARS[i]` (ASCII, so byte index = char index).
const CHARS: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.,-+@:()/%_=#[]";
/// 5×7 glyphs, one byte per row, bit 4 is the leftmost column.
const GLYPHS: [[u8; 7]; 51] = [
    [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
    [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
    [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
    [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
    [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
    [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
    [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
    [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
    [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
    [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
    [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
    [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
    [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
    [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
    [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
    [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
    [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
    [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
    [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
    [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
    [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
    [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
    [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
    [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
    [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
    [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
    [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
    [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
    [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
    [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
    [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
    [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
    [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
    [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
    [0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E],
    [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
    [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
    [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
    [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
    [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
    [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
    [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
    [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
    [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
];
/// Drawn for characters outside the font, so that they show up as missing rather than vanish.
const UNKNOWN: [u8; 7] = [0x00, 0x1F, 0x11, 0x11, 0x11, 0x1F, 0x00];
const SCALE: i64 = 2;
/// Horizontal advance per character: 5 columns plus 1 of spacing, scaled.
const ADVANCE: i64 = 6 * SCALE;
const TEXT_H: i64 = 7 * SCALE;

fn glyph(c: char) -> [u8; 7] {
    if c == ' ' {
        return [0; 7];
    }
    match CHARS.find(c.to_ascii_uppercase()) {
        Some(i) => GLYPHS[i],
        None => UNKNOWN,
    }
}

fn text_width(s: &str) -> i64 {
    (s.chars().count() as i64 * ADVANCE - SCALE).max(0)
}

struct Canvas {
    w: i64,
    h: i64,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: u32, h: u32) -> Canvas {
        Canvas { w: w as i64, h: h as i64, px: vec![255; w as usize * h as usize * 3] }
    }

    /// Clips instead of panicking, so callers can draw partly off-canvas.
    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && x < self.w && y < self.h {
            let i = ((y * self.w + x) * 3) as usize;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn get(&self, x: i64, y: i64) -> Rgb {
        let i = ((y * self.w + x) * 3) as usize;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.max(0)..y1.min(self.h) {
            for x in x0.max(0)..x1.min(self.w) {
                self.set(x, y, c);
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let gx = x + k as i64 * ADVANCE;
            if gx > self.w {
                break;
            }
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..5 {
                    if bits >> (4 - col) & 1 == 1 {
                        let (px, py) = (gx + col * SCALE, y + row as i64 * SCALE);
                        self.rect(px, py, px + SCALE, py + SCALE, c);
                    }
                }
            }
        }
    }

    /// Bresenham plus the neighbour across the line's direction, giving 2 px strokes.
    fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let flat = dx >= -dy;
        let mut err = dx + dy;
        loop {
            self.set(x0, y0, c);
            if flat {
                self.set(x0, y0 + 1, c);
            } else {
                self.set(x0 + 1, y0, c);
            }
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }
}

/// Data range padded ~5% so curves do not sit on the axes; degenerate ranges are widened so a flat line shows.
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else if lo != 0.0 {
        lo.abs() * 0.1
    } else {
        1.0
    };
    let (plo, phi) = (lo - pad, hi + pad);
    if plo.is_finite() && phi.is_finite() && phi > plo {
        (plo, phi)
    } else if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    }
}

/// Ticks on a 1-2-5 × 10^k grid, choosing the step whose count is closest to 5; also returns the step.
fn ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return (vec![lo, hi], span);
    }
    let base = 10f64.powf((span / 5.0).log10().floor());
    let mut best = (f64::INFINITY, base, 0.0, 0.0);
    for step in [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0].map(|m| m * base) {
        let (first, last) = ((lo / step).ceil(), (hi / step).floor());
        let score = (last - first - 4.0).abs();
        if score < best.0 {
            best = (score, step, first, last);
        }
    }
    let (_, step, first, last) = best;
    ((first as i64..=last as i64).take(20).map(|i| i as f64 * step).collect(), step)
}

/// Compact tick label: only as many digits as the tick step needs, scientific for tiny or huge values.
fn fmt_tick(v: f64, step: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() { "0".into() } else { format!("{v}") };
    }
    let step_exp = if step > 0.0 && step.is_finite() { (step.log10() + 1e-9).floor() as i64 } else { 0 };
    let trim =
        |s: &str| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s.into() };
    let a = v.abs();
    if (1e-3..1e6).contains(&a) {
        let s = format!("{:.*}", (-step_exp).clamp(0, 10) as usize, v);
        let s = trim(&s);
        return if s == "-0" { "0".into() } else { s };
    }
    let digits = ((a.log10().floor() as i64) - step_exp).clamp(0, 6) as usize;
    let s = format!("{:.*e}", digits, v);
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i64 = exp.parse().unwrap_or(0);
    format!("{}e{}{:02}", trim(mant), if e < 0 { '-' } else { '+' }, e.abs())
}

fn draw_chart(cv: &mut Canvas, oy: i64, chart: &Chart) {
    let (top, bottom) = (oy + TOP, oy + BOTTOM);
    let finite = || chart.series.iter().flat_map(|s| &s.points).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (xlo, xhi) = padded_range(finite().map(|p| p.0));
    let (ylo, yhi) = padded_range(finite().map(|p| p.1));
    // Clamped so that absurd values cannot make Bresenham walk billions of pixels.
    let map_x = |x: f64| (LEFT as f64 + (x - xlo) / (xhi - xlo) * (RIGHT - LEFT) as f64).round() as i64;
    let map_y = |y: f64| (bottom as f64 - (y - ylo) / (yhi - ylo) * (bottom - top) as f64).round() as i64;
    let clamp = |(x, y): (i64, i64)| (x.clamp(LEFT, RIGHT), y.clamp(top, bottom));

    let title_x = (LEFT + RIGHT - text_width(&chart.title)) / 2;
    cv.text(title_x.max(4), oy + 12, &chart.title, BLACK);
    let (xt, xstep) = ticks(xlo, xhi);
    for &t in &xt {
        let px = map_x(t).clamp(LEFT, RIGHT);
        cv.rect(px, top, px + 1, bottom, GRID);
        cv.rect(px, bottom, px + 1, bottom + 5, BLACK);
        let label = fmt_tick(t, xstep);
        cv.text(px - text_width(&label) / 2, bottom + 9, &label, TEXT);
    }
    let (yt, ystep) = ticks(ylo, yhi);
    for &t in &yt {
        let py = map_y(t).clamp(top, bottom);
        cv.rect(LEFT, py, RIGHT, py + 1, GRID);
        cv.rect(LEFT - 5, py, LEFT, py + 1, BLACK);
        let label = fmt_tick(t, ystep);
        cv.text(LEFT - 9 - text_width(&label), py - TEXT_H / 2, &label, TEXT);
    }
    cv.rect(LEFT, top, LEFT + 1, bottom + 1, BLACK);
    cv.rect(LEFT, bottom, RIGHT + 1, bottom + 1, BLACK);
    cv.text((LEFT + RIGHT - text_width(&chart.x_label)) / 2, bottom + 32, &chart.x_label, TEXT);

    for (i, s) in chart.series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let pts: Vec<(i64, i64)> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| clamp((map_x(x), map_y(y))))
            .collect();
        if let [(x, y)] = pts[..] {
            cv.rect(x - 2, y - 2, x + 3, y + 3, c);
        }
        for w in pts.windows(2) {
            cv.line(w[0], w[1], c);
        }
    }

    // The legend goes in whichever top corner hides fewer data pixels.
    let labels: Vec<String> = chart.series.iter().map(|s| s.label.chars().take(48).collect()).collect();
    if labels.is_empty() {
        return;
    }
    let box_w = labels.iter().map(|l| text_width(l)).max().unwrap_or(0) + 40;
    let box_h = labels.len() as i64 * 20 + 8;
    let covered = |x0: i64, cv: &Canvas| {
        let ys = top + 8..(top + 8 + box_h).min(bottom);
        ys.flat_map(|y| (x0..(x0 + box_w).min(RIGHT)).map(move |x| (x, y)))
            .filter(|&(x, y)| x > LEFT && !matches!(cv.get(x, y), WHITE | GRID | BLACK))
            .count()
    };
    let (left_x, right_x) = (LEFT + 10, (RIGHT - 10 - box_w).max(LEFT + 10));
    let bx = if covered(left_x, cv) < covered(right_x, cv) { left_x } else { right_x };
    let by = top + 8;
    cv.rect(bx, by, bx + box_w, by + box_h, GRID);
    cv.rect(bx + 1, by + 1, bx + box_w - 1, by + box_h - 1, WHITE);
    for (i, label) in labels.iter().enumerate() {
        let y = by + 6 + i as i64 * 20;
        cv.rect(bx + 6, y + 2, bx + 24, y + 12, PALETTE[i % PALETTE.len()]);
        cv.text(bx + 30, y, label, TEXT);
    }
}

/// Renders charts stacked vertically, so one file shows every curve of a run;
/// returns (width, height, RGB8 pixels row-major).
pub fn render(charts: &[Chart]) -> (u32, u32, Vec<u8>) {
    if charts.is_empty() {
        let cv = Canvas::new(WIDTH, 40);
        return (WIDTH, 40, cv.px);
    }
    let height = PANEL_H.saturating_mul(charts.len().min(u32::MAX as usize / PANEL_H as usize) as u32);
    let mut cv = Canvas::new(WIDTH, height);
    for (i, chart) in charts.iter().enumerate() {
        draw_chart(&mut cv, i as i64 * PANEL_H as i64, chart);
    }
    (WIDTH, height, cv.px)
}

/// Writes the PNG via a temporary file and rename, so a viewer polling the
/// file during training never reads a half-written image.
pub fn write_png(path: &Path, charts: &[Chart]) -> anyhow::Result<()> {
    let (w, h, px) = render(charts);
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(&px)?;
    writer.finish()?;
    crate::model::checkpoint::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>) -> Chart {
        Chart { title: "Loss".into(), x_label: "step".into(), series }
    }

    fn series(label: &str, points: Vec<(f64, f64)>) -> Series {
        Series { label: label.into(), points }
    }

    fn pixel(px: &[u8], w: u32, x: i64, y: i64) -> Rgb {
        let i = (y as usize * w as usize + x as usize) * 3;
        [px[i], px[i + 1], px[i + 2]]
    }

    /// Rows inside the plot area (legend excluded by x range) holding at least `min` pixels of `c`.
    fn rows_with(px: &[u8], w: u32, c: Rgb, x0: i64, min: usize) -> Vec<i64> {
        (TOP..=BOTTOM).filter(|&y| (x0..RIGHT).filter(|&x| pixel(px, w, x, y) == c).count() >= min).collect()
    }

    #[test]
    fn horizontal_series_sits_at_the_middle_row() {
        let pts = (0..=10).map(|x| (x as f64, 0.5)).collect();
        let (w, h, px) = render(&[chart(vec![series("flat", pts)])]);
        assert_eq!((w, h), (WIDTH, PANEL_H));
        let rows = rows_with(&px, w, PALETTE[0], LEFT + 1, 300);
        assert!(!rows.is_empty(), "no line drawn");
        let mid = (TOP + BOTTOM) / 2;
        assert!(rows.iter().all(|&y| (y - mid).abs() <= 2), "rows {rows:?}, middle {mid}");
    }

    #[test]
    fn digits_have_ink_and_space_has_none() {
        for s in ["0", "7", "A", "a", "%", "\u{3bb}"] {
            let mut cv = Canvas::new(20, 20);
            cv.text(0, 0, s, BLACK);
            assert!(cv.px.iter().any(|&b| b != 255), "{s:?} drew nothing");
        }
        let mut cv = Canvas::new(20, 20);
        cv.text(0, 0, " ", BLACK);
        assert!(cv.px.iter().all(|&b| b == 255));
        assert_eq!(glyph('q'), glyph('Q'));
        assert_eq!(CHARS.len(), GLYPHS.len());
    }

    #[test]
    fn png_round_trips() {
        let c = chart(vec![series("a", vec![(0.0, 1.0), (5.0, 0.2)]), series("b", vec![(2.0, 0.5)])]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        write_png(&path, std::slice::from_ref(&c)).unwrap();
        let (w, h, px) = render(&[c]);
        let bytes = std::fs::read(&path).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height, info.color_type), (w, h, png::ColorType::Rgb));
        assert_eq!(&buf[..info.buffer_size()], &px[..]);
    }

    #[test]
    fn non_finite_points_are_skipped() {
        let pts = vec![(0.0, 0.5), (f64::NAN, 3.0), (5.0, f64::INFINITY), (10.0, 0.5)];
        let (w, _, px) = render(&[chart(vec![series("nan", pts)])]);
        let rows = rows_with(&px, w, PALETTE[0], LEFT + 1, 300);
        let mid = (TOP + BOTTOM) / 2;
        assert!(!rows.is_empty() && rows.iter().all(|&y| (y - mid).abs() <= 2), "rows {rows:?}");
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let (w, h, px) = render(&[]);
        assert_eq!((w, h, px.len()), (WIDTH, 40, WIDTH as usize * 40 * 3));
        let odd = vec![
            chart(vec![]),
            chart(vec![series("empty", vec![]), series("", vec![(f64::NAN, f64::NAN)])]),
            chart(vec![series("one", vec![(3.0, 3.0)])]),
            chart(vec![series("huge", vec![(-1e308, -1e308), (1e308, 1e308), (0.0, 1e-320)])]),
            chart(vec![series("tiny", vec![(0.0, 1e-7), (1.0, 1.3e-7)])]),
        ];
        let (w, h, px) = render(&odd);
        assert_eq!(px.len(), (w * h * 3) as usize);
        // The single point shows as a marker at the centre of its padded range.
        let (x, y) = ((LEFT + RIGHT) / 2, 2 * PANEL_H as i64 + (TOP + BOTTOM) / 2);
        assert!((-1..=1).all(|d| pixel(&px, w, x + d, y + d) == PALETTE[0]));
    }

    #[test]
    fn charts_stack_vertically() {
        let c = || chart(vec![series("a", vec![(0.0, 0.0), (1.0, 1.0)])]);
        let (_, h1, _) = render(&[c()]);
        let (_, h2, _) = render(&[c(), c()]);
        assert_eq!(h2, 2 * h1);
    }

    #[test]
    fn ticks_are_nice_and_labels_compact() {
        let (t, step) = ticks(-0.05, 1.05);
        assert!((step - 0.2).abs() < 1e-12, "{step}");
        assert!((4..=6).contains(&t.len()), "{t:?}");
        assert_eq!(fmt_tick(0.25, 0.05), "0.25");
        assert_eq!(fmt_tick(1500.0, 500.0), "1500");
        assert_eq!(fmt_tick(0.6000000000000001, 0.2), "0.6");
        assert_eq!(fmt_tick(1.2e-5, 2e-6), "1.2e-05");
        assert_eq!(fmt_tick(3e6, 1e6), "3e+06");
        assert_eq!(fmt_tick(-0.0, 0.1), "0");
    }
}
