//! The quickstart's plot, the paper's Figure 2 in miniature: each method's in-domain test
//! perplexity against its zero-shot average over the unseen domains (lower-left is better),
//! the untouched checkpoint as the reference. Drawn with `plotters` as SVG and PNG; text uses
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
pub const SIZE: (u32, u32) = (1200, 600);

fn register() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the bundled font assets/DejaVuSans-subset.ttf could not be read"))
    }
}

fn colour(method: &str) -> RGBColor {
    if method == crate::ZERO_SHOT {
        RGBColor(110, 110, 110)
    } else if method.starts_with("tram") {
        RGBColor(200, 40, 40)
    } else {
        RGBColor(30, 90, 190)
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

/// One panel: the rows `show` (indices into the table) as points; labelled ones get their
/// label beside the point (pushed down where labels would overlap). `root` is the whole
/// drawing (labels are placed in its pixel coordinates).
fn panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    t: &QuickTable,
    title: &str,
    show: &[usize],
    labelled: &[usize],
) -> Result<Option<(f64, f64, f64, f64)>>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    let pts: Vec<(f64, f64)> = t.rows.iter().map(|r| (r.perplexity[0], r.zero_shot_average)).collect();
    let shown: Vec<usize> = show.iter().copied().filter(|i| finite(&pts[*i])).collect();
    if shown.is_empty() {
        return Ok(None);
    }
    let (xmin, xmax) = shown.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), i| (a.min(pts[*i].0), b.max(pts[*i].0)));
    let (ymin, ymax) = shown.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), i| (a.min(pts[*i].1), b.max(pts[*i].1)));
    let ((x0, x1), (y0, y1)) = (padded(xmin, xmax), padded(ymin, ymax));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 17))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(62)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("in-domain perplexity ({} test)", t.train_domain))
        .y_desc(format!("zero-shot avg. perplexity ({} unseen domains)", t.columns.len().saturating_sub(1)))
        .axis_desc_style((FAMILY, 14))
        .label_style((FAMILY, 12))
        .x_labels(6)
        .y_labels(8)
        .x_label_formatter(&|x| tick(*x, x1 - x0))
        .y_label_formatter(&|y| tick(*y, y1 - y0))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(err)?;
    // The untouched checkpoint's values as reference lines (where they fall inside the panel).
    if let Some(z) = t.rows.iter().position(|r| r.method == crate::ZERO_SHOT) {
        let (zx, zy) = pts[z];
        let grey = RGBColor(150, 150, 150);
        if zx.is_finite() && zx >= x0 && zx <= x1 {
            chart.draw_series(LineSeries::new([(zx, y0), (zx, y1)], grey.stroke_width(1))).map_err(err)?;
        }
        if zy.is_finite() && zy >= y0 && zy <= y1 {
            chart.draw_series(LineSeries::new([(x0, zy), (x1, zy)], grey.stroke_width(1))).map_err(err)?;
        }
    }
    for &i in &shown {
        chart.draw_series(std::iter::once(Circle::new(pts[i], 6, colour(&t.rows[i].method).filled()))).map_err(err)?;
    }
    let mut order: Vec<usize> = shown.iter().copied().filter(|i| labelled.contains(i)).collect();
    let pix: Vec<(i32, i32)> = pts.iter().map(|p| chart.backend_coord(p)).collect();
    order.sort_by_key(|i| (pix[*i].1, pix[*i].0));
    let ((ax0, _), (ax1, _)) = (area.get_base_pixel(), {
        let (w, h) = area.dim_in_pixel();
        let (bx, by) = area.get_base_pixel();
        (bx + w as i32, by + h as i32)
    });
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    let style = TextStyle::from((FAMILY, 14).into_font()).color(&BLACK);
    for i in order {
        let label = &t.rows[i].label;
        let lw = (label.chars().count() as i32) * 8 + 4;
        let (px, py) = pix[i];
        let mut x = px + 10;
        if x + lw > ax1 - 4 {
            x = (px - 10 - lw).max(ax0 + 4);
        }
        let mut y = py - 9;
        while placed.iter().any(|&(bx0, by0, bx1, by1)| x < bx1 && bx0 < x + lw && y < by1 && by0 < y + 15) {
            y += 15;
        }
        placed.push((x, y, x + lw, y + 15));
        root.draw(&Text::new(label.clone(), (x, y), style.clone())).map_err(err)?;
    }
    Ok(Some((x0, x1, y0, y1)))
}

fn chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, t: &QuickTable) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let title = root
        .titled(&format!("Fine-tuned on `{}`: in-domain vs zero-shot perplexity of each method", t.train_domain), (FAMILY, 21))
        .map_err(err)?;
    let (body, foot) = title.split_vertically(SIZE.1 as i32 - 62);
    let (left, right) = body.split_horizontally(SIZE.0 as i32 * 2 / 5);
    let all: Vec<usize> = (0..t.rows.len()).collect();
    let tuned: Vec<usize> = all.iter().copied().filter(|i| t.rows[*i].method != crate::ZERO_SHOT).collect();
    let zero: Vec<usize> = all.iter().copied().filter(|i| t.rows[*i].method == crate::ZERO_SHOT).collect();
    panel(root, &left, t, "all rows (grey: the untouched checkpoint)", &all, &zero)?;
    panel(root, &right, t, "the fine-tuned methods (zoom)", &tuned, &tuned)?;
    let note = TextStyle::from((FAMILY, 13).into_font()).color(&RGBColor(80, 80, 80));
    foot.draw(&Text::new(
        "lower-left is better: low in-domain perplexity while keeping the other domains · red: TRAM · blue: baselines · grey lines: the untouched checkpoint",
        (16, 12),
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
    img.save_with_format(&png, image::ImageFormat::Png).with_context(|| format!("writing {}", png.display()))?;
    Ok(vec![svg, png])
}
