//! PNG charts for reports (plotters, bitmap backend, DejaVu Sans embedded): grouped bars
//! over categories, lines, and labelled points. Each chart is rendered to a temporary file
//! in the target directory and renamed into place, so a failed render leaves no partial
//! PNG.
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Chart size in pixels.
const SIZE: (u32, u32) = (900, 500);

/// A named series of values (one per category) or of points.
pub struct Series<T> {
    pub name: String,
    pub values: Vec<T>,
}

fn font() -> Result<()> {
    static FONT: OnceLock<bool> = OnceLock::new();
    let ok = *FONT.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
    ok.then_some(()).ok_or_else(|| Error::Plot {
        what: "font".into(),
        msg: "the embedded font does not load".into(),
    })
}

fn colour(k: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[k % C.len()]
}

/// Renders `draw` to `path` through a temporary PNG beside it.
fn render(
    path: &Path,
    draw: impl FnOnce(
        &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    ) -> std::result::Result<(), String>,
) -> Result<()> {
    font()?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp.png", std::process::id()));
    let result = (|| {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::Plot {
                what: path.display().to_string(),
                msg: e,
            })
        }
    }
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-9);
    (lo - pad, hi + pad)
}

/// Grouped bars: one group per category, one bar per series. The y axis starts at 0 when
/// every value is non-negative.
///
/// Errors: a render or write failure; series of another length than `categories`.
pub fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[Series<f64>],
) -> Result<()> {
    if series.iter().any(|s| s.values.len() != categories.len()) {
        return Err(Error::Plot {
            what: title.to_string(),
            msg: "one value per category".into(),
        });
    }
    let all = || series.iter().flat_map(|s| s.values.iter().copied());
    let (mut lo, hi) = span(all().chain([0.0]));
    if all().all(|v| v >= 0.0) {
        lo = 0.0;
    }
    let n = categories.len().max(1);
    let width = 0.8 / series.len().max(1) as f64;
    // names longer than a bar group is wide are shortened (the full names are in the
    // report's tables)
    let room = (130 / n).clamp(3, 16);
    let shown: Vec<String> = categories
        .iter()
        .map(|c| match c.chars().count() > room {
            true => c.chars().take(room - 1).chain(['.']).collect(),
            false => c.clone(),
        })
        .collect();
    render(path, |root| {
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, lo..hi)
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < categories.len() {
                    shown[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_label_style(("sans-serif", if n > 8 { 11 } else { 13 }))
            .y_desc(y_label)
            .draw()
            .map_err(e)?;
        for (k, s) in series.iter().enumerate() {
            let c = colour(k);
            chart
                .draw_series(s.values.iter().enumerate().map(|(i, &v)| {
                    let x0 = i as f64 - 0.4 + k as f64 * width;
                    Rectangle::new([(x0, 0f64.max(lo)), (x0 + width * 0.92, v)], c.filled())
                }))
                .map_err(e)?
                .label(s.name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        Ok(())
    })
}

/// A chart with f64 axes over `x` and `y` (min, max), its caption, mesh and axis labels
/// drawn: what [`lines`] and [`points`] share.
fn xy_chart<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    x: (f64, f64),
    y: (f64, f64),
) -> std::result::Result<
    ChartContext<
        'a,
        BitMapBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    String,
> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(e)?;
    Ok(chart)
}

/// Lines through `(x, y)` points, one per series.
///
/// Errors: a render or write failure.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<(f64, f64)>],
) -> Result<()> {
    let (x0, x1) = span(series.iter().flat_map(|s| s.values.iter().map(|p| p.0)));
    let (y0, y1) = span(series.iter().flat_map(|s| s.values.iter().map(|p| p.1)));
    render(path, |root| {
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        let mut chart = xy_chart(root, title, x_label, y_label, (x0, x1), (y0, y1))?;
        for (k, s) in series.iter().enumerate() {
            let c = colour(k);
            let pts: Vec<(f64, f64)> = s
                .values
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(e)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        Ok(())
    })
}

/// Labelled points (`(x, y, label)`), e.g. quality against cost for several models.
///
/// Errors: a render or write failure.
pub fn points(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    pts: &[(f64, f64, String)],
) -> Result<()> {
    let (x0, x1) = span(pts.iter().map(|p| p.0));
    let (y0, y1) = span(pts.iter().map(|p| p.1));
    render(path, |root| {
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        let mut chart = xy_chart(root, title, x_label, y_label, (x0, x1), (y0, y1))?;
        chart
            .draw_series(pts.iter().enumerate().map(|(k, (x, y, label))| {
                EmptyElement::at((*x, *y))
                    + Circle::new((0, 0), 5, colour(k).filled())
                    + Text::new(label.clone(), (8, -14), ("sans-serif", 14).into_font())
            }))
            .map_err(e)?;
        Ok(())
    })
}
