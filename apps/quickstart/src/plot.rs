//! The quickstart's plot, the paper's Figure 2 in miniature: each method's in-domain test
//! perplexity against its zero-shot average over the unseen domains (lower-left is better),
//! the mean over the seeds with its 95% confidence interval as error bars on both axes, the
//! untouched checkpoint as the reference. Drawn with `plotters` as SVG and PNG; text uses
//! the bundled font (`assets/DejaVuSans-subset.ttf`), never the system's.

use crate::table::QuickTable;
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::{Path, PathBuf};

/// DejaVu Sans reduced to Latin, Greek, sub/superscripts and a few symbols (Bitstream Vera
/// license with public-domain DejaVu changes; see assets/README.md).
pub const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
/// The family name the font is registered under.
pub const FAMILY: &str = "sans-serif";
/// Plot size in pixels.
pub const SIZE: (u32, u32) = (1300, 600);
/// Width of the legend column.
const LEGEND: i32 = 400;

fn register() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the bundled font assets/DejaVuSans-subset.ttf could not be read"))
    }
}

/// Colours of the fine-tuned rows (TRAM variants in warm colours), in row order after the
/// zero-shot row; the untouched checkpoint is grey.
const PALETTE: &[RGBColor] = &[
    RGBColor(31, 90, 190),
    RGBColor(0, 160, 210),
    RGBColor(100, 70, 180),
    RGBColor(0, 140, 100),
    RGBColor(130, 130, 20),
    RGBColor(210, 30, 40),
    RGBColor(240, 130, 0),
    RGBColor(190, 0, 150),
    RGBColor(140, 70, 30),
];
const GREY: RGBColor = RGBColor(110, 110, 110);

/// Colour and marker of a row: a grey square for the untouched checkpoint, triangles for
/// TRAM, circles for the baselines.
fn style(t: &QuickTable, i: usize) -> (RGBColor, char) {
    let m = &t.rows[i].method;
    if m == crate::ZERO_SHOT {
        return (GREY, 's');
    }
    let k = t.rows[..i].iter().filter(|r| r.method != crate::ZERO_SHOT).count();
    (PALETTE[k % PALETTE.len()], if m.starts_with("tram") { 't' } else { 'c' })
}

fn marker<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, at: (i32, i32), colour: RGBColor, shape: char) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    let (x, y) = at;
    match shape {
        's' => area.draw(&Rectangle::new([(x - 6, y - 6), (x + 6, y + 6)], colour.filled())).map_err(err),
        't' => area.draw(&Polygon::new(vec![(x, y - 8), (x - 7, y + 5), (x + 7, y + 5)], colour.filled())).map_err(err),
        _ => area.draw(&Circle::new((x, y), 6, colour.filled())).map_err(err),
    }
}

fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let span = (hi - lo).abs().max(hi.abs() * 0.02).max(1e-3);
    (lo - 0.12 * span, hi + 0.12 * span)
}

/// A tick label: whole numbers on a wide axis, one or two decimals on a narrow one.
fn tick(v: f64, span: f64) -> String {
    if span >= 20.0 {
        format!("{v:.0}")
    } else if span >= 2.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn finite(p: &(f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

/// One panel: the rows `show` (indices into the table) as markers, the untouched checkpoint's
/// values as grey reference lines where they fall inside; `label_zero_shot` writes its name
/// beside its marker. Markers are drawn on `root` in its pixel coordinates.
fn panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    t: &QuickTable,
    title: &str,
    show: &[usize],
    label_zero_shot: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    let pts: Vec<(f64, f64)> = t.rows.iter().map(|r| (r.perplexity[0], r.zero_shot_average)).collect();
    // Half-widths of the 95% intervals (0 without one: a single seed, the untouched checkpoint).
    let bar = |v: f64| if v.is_finite() { v } else { 0.0 };
    let cis: Vec<(f64, f64)> = t.rows.iter().map(|r| (bar(r.ci95[0]), bar(r.zero_shot_ci95))).collect();
    let shown: Vec<usize> = show.iter().copied().filter(|i| finite(&pts[*i])).collect();
    if shown.is_empty() {
        return Ok(());
    }
    let (xmin, xmax) =
        shown.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), i| (a.min(pts[*i].0 - cis[*i].0), b.max(pts[*i].0 + cis[*i].0)));
    let (ymin, ymax) =
        shown.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), i| (a.min(pts[*i].1 - cis[*i].1), b.max(pts[*i].1 + cis[*i].1)));
    let ((x0, x1), (y0, y1)) = (padded(xmin, xmax), padded(ymin, ymax));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 16))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("in-domain perplexity ({} test)", t.train_domain))
        .y_desc(format!("zero-shot avg. perplexity ({} unseen domains)", t.columns.len().saturating_sub(1)))
        .axis_desc_style((FAMILY, 14))
        .label_style((FAMILY, 12))
        .x_labels(5)
        .y_labels(8)
        .x_label_formatter(&|x| tick(*x, x1 - x0))
        .y_label_formatter(&|y| tick(*y, y1 - y0))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(err)?;
    let zero = t.rows.iter().position(|r| r.method == crate::ZERO_SHOT);
    if let Some(z) = zero {
        let (zx, zy) = pts[z];
        let line = RGBColor(160, 160, 160);
        if zx.is_finite() && zx >= x0 && zx <= x1 {
            chart.draw_series(LineSeries::new([(zx, y0), (zx, y1)], line.stroke_width(1))).map_err(err)?;
        }
        if zy.is_finite() && zy >= y0 && zy <= y1 {
            chart.draw_series(LineSeries::new([(x0, zy), (x1, zy)], line.stroke_width(1))).map_err(err)?;
        }
    }
    // Error bars first (the 95% interval on each axis, with caps), then the markers over them.
    for &i in &shown {
        let (c, _) = style(t, i);
        let ((x, y), (dx, dy)) = (pts[i], cis[i]);
        let line = c.stroke_width(2);
        let (cx, cy) = chart.backend_coord(&(x, y));
        if dx > 0.0 {
            let (l, r) = (chart.backend_coord(&(x - dx, y)).0, chart.backend_coord(&(x + dx, y)).0);
            root.draw(&PathElement::new(vec![(l, cy), (r, cy)], line)).map_err(err)?;
            for e in [l, r] {
                root.draw(&PathElement::new(vec![(e, cy - 4), (e, cy + 4)], line)).map_err(err)?;
            }
        }
        if dy > 0.0 {
            let (top, bottom) = (chart.backend_coord(&(x, y + dy)).1, chart.backend_coord(&(x, y - dy)).1);
            root.draw(&PathElement::new(vec![(cx, top), (cx, bottom)], line)).map_err(err)?;
            for e in [top, bottom] {
                root.draw(&PathElement::new(vec![(cx - 4, e), (cx + 4, e)], line)).map_err(err)?;
            }
        }
    }
    for &i in &shown {
        let (c, m) = style(t, i);
        marker(root, chart.backend_coord(&pts[i]), c, m)?;
    }
    if let (true, Some(z)) = (label_zero_shot, zero) {
        if shown.contains(&z) {
            let (px, py) = chart.backend_coord(&pts[z]);
            let label = &t.rows[z].label;
            let lw = label.chars().count() as i32 * 8;
            let right = area.get_base_pixel().0 + area.dim_in_pixel().0 as i32;
            let x = if px + 12 + lw < right { px + 12 } else { px - 12 - lw };
            root.draw(&Text::new(label.clone(), (x, py - 22), TextStyle::from((FAMILY, 14).into_font()).color(&BLACK))).map_err(err)?;
        }
    }
    Ok(())
}

/// The legend: marker, label, in-domain and zero-shot-average perplexity of every row.
fn legend<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, area: &DrawingArea<DB, Shift>, t: &QuickTable) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    let (bx, by) = area.get_base_pixel();
    let head = TextStyle::from((FAMILY, 13).into_font()).color(&RGBColor(60, 60, 60));
    let text = TextStyle::from((FAMILY, 14).into_font()).color(&BLACK);
    let y0 = by + 40;
    root.draw(&Text::new("method", (bx + 30, y0), head.clone())).map_err(err)?;
    root.draw(&Text::new("in-domain", (bx + 172, y0), head.clone())).map_err(err)?;
    root.draw(&Text::new("ZS avg.", (bx + 292, y0), head)).map_err(err)?;
    for (k, r) in t.rows.iter().enumerate() {
        let y = y0 + 26 + 24 * k as i32;
        let (c, m) = style(t, k);
        marker(root, (bx + 14, y + 7), c, m)?;
        // The bundled font has no ∞ / † / ‡: plain words for diverged, failed and skipped steps.
        // (A diverged row's values read `inf` / `diverged`.)
        let label = if r.failed {
            format!("{} (failed)", r.label)
        } else if r.skipped_steps > 0 {
            format!("{} (skips)", r.label)
        } else {
            r.label.clone()
        };
        let n = r.seeds.len();
        let value = |p: f64, ci: f64| {
            if p.is_finite() && n > 1 && ci.is_finite() {
                format!("{p:.1} ± {ci:.1}")
            } else if p.is_finite() {
                format!("{p:.1}")
            } else if p == f64::INFINITY {
                "inf".into()
            } else {
                "diverged".into()
            }
        };
        root.draw(&Text::new(label, (bx + 30, y), text.clone())).map_err(err)?;
        root.draw(&Text::new(value(r.perplexity[0], r.ci95[0]), (bx + 172, y), text.clone())).map_err(err)?;
        root.draw(&Text::new(value(r.zero_shot_average, r.zero_shot_ci95), (bx + 292, y), text.clone())).map_err(err)?;
    }
    Ok(())
}

fn chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, t: &QuickTable) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let titled = root
        .titled(
            &format!("Fine-tuned on `{}`: in-domain vs zero-shot perplexity of each method (mean ± 95% CI)", t.train_domain),
            (FAMILY, 21),
        )
        .map_err(err)?;
    let h = titled.dim_in_pixel().1 as i32;
    let (body, foot) = titled.split_vertically(h - 30);
    let w = SIZE.0 as i32;
    let (plots, side) = body.split_horizontally(w - LEGEND);
    let (left, right) = plots.split_horizontally((w - LEGEND) * 9 / 20);
    let all: Vec<usize> = (0..t.rows.len()).collect();
    let tuned: Vec<usize> = all.iter().copied().filter(|i| t.rows[*i].method != crate::ZERO_SHOT).collect();
    panel(root, &left, t, "every row", &all, true)?;
    panel(root, &right, t, "the fine-tuned methods (zoom)", &tuned, false)?;
    legend(root, &side, t)?;
    let note = TextStyle::from((FAMILY, 13).into_font()).color(&RGBColor(80, 80, 80));
    foot.draw(&Text::new(
        format!(
            "lower-left is better · bars: 95% CI over {} seeds · triangles: TRAM · circles: baselines · grey: the untouched checkpoint",
            t.seed_count()
        ),
        (16, 6),
        note,
    ))
    .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Draw `quickstart.svg` and `quickstart.png` into `dir`.
pub fn draw(t: &QuickTable, dir: &Path) -> Result<Vec<PathBuf>> {
    register()?;
    let svg = dir.join("quickstart.svg");
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        chart(&root, t)?;
    }
    let png = dir.join("quickstart.png");
    let mut buf = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        chart(&root, t)?;
    }
    let img = image::RgbImage::from_raw(SIZE.0, SIZE.1, buf).ok_or_else(|| anyhow!("plot buffer has the wrong size"))?;
    let file = std::fs::File::create(&png).with_context(|| format!("writing {}", png.display()))?;
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        std::io::BufWriter::new(file),
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    );
    img.write_with_encoder(encoder).with_context(|| format!("writing {}", png.display()))?;
    Ok(vec![svg, png])
}
