//! SVG plots of latency against throughput, one series per system, one
//! point per client count (plotters).

use super::Point;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

pub fn write(out: &Path, points: &[Point]) -> Result<(), String> {
    for (file, label, pick) in [
        (
            "latency-p50.svg",
            "p50 latency (ms)",
            (|p: &Point| p.p50_us) as fn(&Point) -> u64,
        ),
        ("latency-p99.svg", "p99 latency (ms)", |p: &Point| p.p99_us),
    ] {
        draw(&out.join(file), label, points, pick).map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(())
}

fn draw(
    path: &Path,
    label: &str,
    points: &[Point],
    pick: fn(&Point) -> u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in points {
        series
            .entry(p.system.as_str())
            .or_default()
            .push((p.per_second.max(1.0), (pick(p) as f64 / 1e3).max(0.01)));
    }
    let x_max = points.iter().map(|p| p.per_second).fold(10.0, f64::max) * 1.5;
    let y_max = points
        .iter()
        .map(|p| pick(p) as f64 / 1e3)
        .fold(1.0, f64::max)
        * 1.5;
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{label} against throughput"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..x_max).log_scale(), (0.01..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("operations per second (log)")
        .y_desc(format!("{label} (log)"))
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
