//! The latency chart of a report (SVG, plotters): latency by percentile on
//! a "nines" axis (where the tail is visible), and p50/p99 per second of
//! the run (where stalls are visible).

use plotters::prelude::*;

use super::report::Report;

/// The percentile as distance in nines: 90 -> 1, 99 -> 2, 99.9 -> 3.
fn nines(p: f64) -> f64 {
    let rest = (100.0 - p).max(1e-4) / 100.0;
    -rest.log10()
}

/// Draws the chart; a plotting failure gives an SVG saying so rather than
/// failing the run whose numbers are already measured.
pub fn svg(r: &Report) -> String {
    let mut out = String::new();
    if let Err(e) = draw(r, &mut out) {
        return format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\"><text x=\"10\" y=\"25\">chart failed: {}</text></svg>\n",
            e.to_string().replace('<', "&lt;")
        );
    }
    out
}

fn draw(r: &Report, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, (960, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    let title = format!(
        "{} {} loop, {} conns: {:.0} req/s, p99 {:.2} ms",
        r.protocol, r.pacing, r.connections, r.throughput_rps, r.latency_ms.p99
    );

    let curve: Vec<(f64, f64)> = r
        .curve
        .iter()
        .filter(|(p, _)| *p < 100.0)
        .map(|(p, ms)| (nines(*p), *ms))
        .collect();
    let y_max = curve.iter().map(|c| c.1).fold(0.0, f64::max).max(0.001) * 1.1;
    let x_max = curve.iter().map(|c| c.0).fold(0.0, f64::max).max(1.0);
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(6)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            format!("{p:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        })
        .draw()?;
    chart.draw_series(LineSeries::new(curve.iter().copied(), BLUE.stroke_width(2)))?;
    chart.draw_series(curve.iter().map(|c| Circle::new(*c, 3, BLUE.filled())))?;

    let p50: Vec<(f64, f64)> = r
        .timeline
        .iter()
        .filter_map(|s| s.p50_ms.map(|v| (s.second as f64, v)))
        .collect();
    let p99: Vec<(f64, f64)> = r
        .timeline
        .iter()
        .filter_map(|s| s.p99_ms.map(|v| (s.second as f64, v)))
        .collect();
    let t_max = (r.timeline.len() as f64).max(1.0);
    let y2 = p99.iter().map(|c| c.1).fold(0.0, f64::max).max(0.001) * 1.1;
    let mut timeline = ChartBuilder::on(&bottom)
        .caption("latency per second", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y2)?;
    timeline
        .configure_mesh()
        .x_desc("second of the run")
        .y_desc("latency (ms)")
        .draw()?;
    timeline
        .draw_series(LineSeries::new(p50, GREEN.stroke_width(2)))?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN));
    timeline
        .draw_series(LineSeries::new(p99, RED.stroke_width(2)))?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    timeline
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::nines;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert!(nines(0.0).abs() < 1e-9);
    }
}
