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
pub const SIZE: (u32, u32) = (900, 600);

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

fn chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, t: &QuickTable) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let pts: Vec<(f64, f64)> = t.rows.iter().map(|r| (r.perplexity[0], r.zero_shot_average)).collect();
    let finite: Vec<&(f64, f64)> = pts.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let (xmin, xmax) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if finite.is_empty() {
        return Err(anyhow!("no finite perplexity to plot"));
    }
    let ((x0, x1), (y0, y1)) = (padded(xmin, xmax), padded(ymin, ymax));
    let mut chart = ChartBuilder::on(root)
        .caption(format!("Fine-tuned on `{}`: in-domain vs zero-shot perplexity", t.train_domain), (FAMILY, 22))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("in-domain perplexity ({} test split)", t.train_domain))
        .y_desc(format!("zero-shot average perplexity ({} unseen domains)", t.columns.len().saturating_sub(1)))
        .axis_desc_style((FAMILY, 16))
        .label_style((FAMILY, 13))
        .x_label_formatter(&|x| format!("{x:.1}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(err)?;
    // The untouched checkpoint's values as reference lines.
    if let Some(z) = t.rows.iter().position(|r| r.method == crate::ZERO_SHOT) {
        let (zx, zy) = pts[z];
        let grey = RGBColor(160, 160, 160);
        if zx.is_finite() {
            chart.draw_series(LineSeries::new([(zx, y0), (zx, y1)], grey.stroke_width(1))).map_err(err)?;
        }
        if zy.is_finite() {
            chart.draw_series(LineSeries::new([(x0, zy), (x1, zy)], grey.stroke_width(1))).map_err(err)?;
        }
    }
    for (r, p) in t.rows.iter().zip(&pts) {
        if p.0.is_finite() && p.1.is_finite() {
            chart.draw_series(std::iter::once(Circle::new(*p, 6, colour(&r.method).filled()))).map_err(err)?;
        }
    }
    // Labels beside the points, pushed down where they would overlap.
    let mut order: Vec<usize> = (0..pts.len()).filter(|i| pts[*i].0.is_finite() && pts[*i].1.is_finite()).collect();
    let pix: Vec<(i32, i32)> = pts.iter().map(|p| chart.backend_coord(p)).collect();
    order.sort_by_key(|i| (pix[*i].1, pix[*i].0));
    let (w, _) = root.dim_in_pixel();
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    let style = TextStyle::from((FAMILY, 15).into_font()).color(&BLACK);
    for i in order {
        let label = &t.rows[i].label;
        let lw = (label.chars().count() as i32) * 8 + 4;
        let (px, py) = pix[i];
        let mut x = px + 10;
        if x + lw > w as i32 - 4 {
            x = px - 10 - lw;
        }
        let mut y = py - 9;
        while placed.iter().any(|&(ax, ay, bx, by)| x < bx && ax < x + lw && y < by && ay < y + 16) {
            y += 16;
        }
        placed.push((x, y, x + lw, y + 16));
        root.draw(&Text::new(label.clone(), (x, y), style.clone())).map_err(err)?;
    }
    let note = TextStyle::from((FAMILY, 13).into_font()).color(&RGBColor(90, 90, 90));
    root.draw(&Text::new("lower-left is better · grey lines: the untouched checkpoint · red: TRAM · blue: baselines", (90, SIZE.1 as i32 - 18), note))
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
