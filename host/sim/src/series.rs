//! A run over time: one row per interval (at most [`MAX_ROWS`] per run),
//! written as CSV and drawn as one SVG of stacked charts (with the
//! `plotters` crate) a person reads at a glance: load and rebalancing,
//! power and where it came from, the overlay's traffic.

use plotters::prelude::*;
use serde::Serialize;

/// Rows a run keeps at most: the interval grows with the run.
pub const MAX_ROWS: u64 = 1_000;

/// The state of the cluster at one instant, and what the interval before
/// it carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Row {
    /// Virtual time, seconds.
    pub t_s: f64,
    /// VMs the hosts' agents hold.
    pub vms: u64,
    /// Hosts overloaded now.
    pub overloaded_hosts: u64,
    /// Hosts in standby now.
    pub standby_hosts: u64,
    /// Live migrations under way now.
    pub migrating: u64,
    /// Live migrations started so far.
    pub migrations: u64,
    /// Power every host draws now, watts.
    pub watts: f64,
    /// The part of it the grid supplies, watts.
    pub grid_watts: f64,
    /// Overlay bytes received per node per second over the interval.
    pub overlay_bytes_per_node_s: f64,
}

/// The rows as CSV, a header first.
pub fn csv(rows: &[Row]) -> Result<String, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(|e| format!("series: {e}"))?;
    }
    let bytes = w.into_inner().map_err(|e| format!("series: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("series: {e}"))
}

/// The rows drawn as one SVG of three charts sharing the time axis.
pub fn svg(title: &str, rows: &[Row]) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 900)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(draw)?;
        let panels = root.split_evenly((3, 1));
        let end = rows.last().map_or(1.0, |r| r.t_s.max(1.0));
        let col = |f: fn(&Row) -> f64| -> Vec<(f64, f64)> { rows.iter().map(|r| (r.t_s, f(r))).collect() };
        chart(
            &panels[0],
            "hosts",
            end,
            &[
                ("overloaded hosts", RED, col(|r| r.overloaded_hosts as f64)),
                ("migrations under way", BLUE, col(|r| r.migrating as f64)),
                ("hosts in standby", GREEN, col(|r| r.standby_hosts as f64)),
            ],
        )?;
        chart(
            &panels[1],
            "kW",
            end,
            &[
                ("drawn", BLACK, col(|r| r.watts / 1000.0)),
                ("from the grid", RED, col(|r| r.grid_watts / 1000.0)),
            ],
        )?;
        chart(
            &panels[2],
            "overlay bytes per node per s",
            end,
            &[("received", MAGENTA, col(|r| r.overlay_bytes_per_node_s))],
        )?;
        root.present().map_err(draw)?;
    }
    Ok(out)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
/// A line of a chart: its name, colour and points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn chart(area: &Area<'_>, y: &str, end: f64, lines: &[Line<'_>]) -> Result<(), String> {
    let top = lines.iter().flat_map(|(_, _, l)| l.iter().map(|p| p.1)).fold(0.0, f64::max);
    let mut c = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..(top * 1.1).max(1.0))
        .map_err(draw)?;
    let digits = if top >= 10.0 { 0 } else { 1 };
    c.configure_mesh()
        .x_desc("virtual time, s")
        .y_desc(y)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.digits$}"))
        .draw()
        .map_err(draw)?;
    for (name, colour, points) in lines {
        let colour = *colour;
        c.draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
            .map_err(draw)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    c.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(draw)?;
    Ok(())
}

fn draw<E: std::fmt::Debug>(e: E) -> String {
    format!("chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_csv_with_a_header_and_an_svg_with_every_line_named() {
        let rows: Vec<Row> = (0..5)
            .map(|i| Row {
                t_s: f64::from(i) * 10.0,
                vms: 10,
                watts: 1_000.0,
                overloaded_hosts: i as u64 % 2,
                ..Row::default()
            })
            .collect();
        let text = csv(&rows).expect("csv");
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "t_s,vms,overloaded_hosts,standby_hosts,migrating,migrations,watts,grid_watts,overlay_bytes_per_node_s"
            )
        );
        assert_eq!(lines.count(), 5);
        let svg = svg("a run", &rows).expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("a run"), "{}", &svg[..200.min(svg.len())]);
        for name in ["overloaded hosts", "from the grid", "virtual time, s"] {
            assert!(svg.contains(name), "{name}");
        }
    }
}
