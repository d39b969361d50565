//! The latency plot, as a self-contained SVG file: on top the latency by
//! percentile (the x axis in "nines" as HdrHistogram's plotter draws it: 90%,
//! 99%, 99.9% … equally spaced), below the latency over time (p50, p99 and max
//! of each second). Both latency axes are logarithmic, so a 0.2 ms median and a
//! 200 ms stall are both readable.
//!
//! Written by hand rather than with a plotting crate: two panels of lines and
//! labels are a page of code, and the load generator stays free of a graphics
//! stack.

use crate::report::fmt_us;
use crate::run::IntervalPoint;
use hdrhistogram::Histogram;
use std::fmt::Write;

const WIDTH: f64 = 900.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 870.0;

/// A line of the over-time panel: name, colour, and its value in a point.
type Series = (&'static str, &'static str, fn(&IntervalPoint) -> u64);

/// One panel: where it is on the page and its latency (y) range.
struct Panel {
    top: f64,
    bottom: f64,
    /// log10 of the lowest and highest latency shown (µs).
    lo: f64,
    hi: f64,
}

impl Panel {
    fn new(top: f64, bottom: f64, min_us: u64, max_us: u64) -> Panel {
        let lo = (min_us.max(1) as f64).log10().floor();
        let hi = (max_us.max(1) as f64).log10().ceil().max(lo + 1.0);
        Panel {
            top,
            bottom,
            lo,
            hi,
        }
    }

    fn y(&self, us: u64) -> f64 {
        let v = (us.max(1) as f64).log10().clamp(self.lo, self.hi);
        self.bottom - (v - self.lo) / (self.hi - self.lo) * (self.bottom - self.top)
    }

    /// Frame, decade grid lines and their labels, and the axis titles.
    fn axes(&self, svg: &mut String, title: &str, x_title: &str) {
        let (t, b) = (self.top, self.bottom);
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"##,
            t - 10.0,
            escape(title)
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{t}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
            RIGHT - LEFT,
            b - t
        );
        for d in self.lo as i32..=self.hi as i32 {
            let us = 10f64.powi(d) as u64;
            let y = self.y(us);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                LEFT - 6.0,
                y + 4.0,
                fmt_us(us)
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"##,
            (LEFT + RIGHT) / 2.0,
            b + 36.0,
            escape(x_title)
        );
        let _ = writeln!(
            svg,
            r##"<text x="20" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 20 {:.1})">latency</text>"##,
            (t + b) / 2.0,
            (t + b) / 2.0
        );
    }
}

/// A line through `points` (page coordinates).
fn polyline(svg: &mut String, points: &[(f64, f64)], colour: &str) {
    if points.is_empty() {
        return;
    }
    let mut p = String::new();
    for (x, y) in points {
        let _ = write!(p, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        svg,
        r##"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"##,
        p.trim_end()
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The label of `nines` on the percentile axis: 0 → "0%", 2 → "99%".
fn nines_label(nines: u32) -> String {
    match nines {
        0 => "0%".to_string(),
        n => format!("{}%", 100.0 - 100.0 / 10f64.powi(n as i32)),
    }
}

/// The plot of `hist` (the whole measurement) and `over_time`, headed by
/// `title`.
pub fn latency_svg(title: &str, hist: &Histogram<u64>, over_time: &[IntervalPoint]) -> String {
    let height = 780.0;
    let mut svg = String::new();
    let _ = writeln!(svg, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"##
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="28" font-size="16">{}</text>"##,
        escape(title)
    );
    if hist.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="80" font-size="14">no request was measured</text></svg>"##
        );
        return svg;
    }

    // Latency by percentile. The x axis is log10(1 / (1 - q)): 1 is 90%, 2 is
    // 99%, …; as far as the sample size resolves (at least to 99%).
    let p = Panel::new(70.0, 370.0, hist.min(), hist.max());
    p.axes(&mut svg, "Latency by percentile", "percentile");
    let nines = ((hist.len() as f64).log10().ceil() as u32).clamp(2, 6);
    let x_of = |q: f64| {
        let v = if q >= 1.0 {
            f64::from(nines)
        } else {
            (1.0 / (1.0 - q)).log10().min(f64::from(nines))
        };
        LEFT + v / f64::from(nines) * (RIGHT - LEFT)
    };
    for n in 0..=nines {
        let x = LEFT + f64::from(n) / f64::from(nines) * (RIGHT - LEFT);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
            p.top,
            p.bottom,
            p.bottom + 16.0,
            nines_label(n)
        );
    }
    let mut points = Vec::new();
    for v in hist.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let y = p.y(hist.highest_equivalent(v.value_iterated_to()));
        points.push((x_of(q), y));
    }
    polyline(&mut svg, &points, "#1f77b4");

    // Latency over time.
    let t = Panel::new(460.0, 720.0, hist.min(), hist.max());
    t.axes(
        &mut svg,
        "Latency over time (each second: p50, p99, max)",
        "seconds since the end of the warm-up",
    );
    let t_max = over_time.iter().map(|i| i.t_s).fold(1.0, f64::max);
    let x_of_t = |s: f64| LEFT + s / t_max * (RIGHT - LEFT);
    let step = [
        1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|s| t_max / s <= 12.0)
    .unwrap_or(7200.0);
    let mut s = 0.0;
    while s <= t_max {
        let x = x_of_t(s);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{s}</text>"##,
            t.top,
            t.bottom,
            t.bottom + 16.0
        );
        s += step;
    }
    let series: [Series; 3] = [
        ("p50", "#2ca02c", |i| i.p50_us),
        ("p99", "#ff7f0e", |i| i.p99_us),
        ("max", "#d62728", |i| i.max_us),
    ];
    for (k, (name, colour, pick)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = over_time
            .iter()
            .filter(|i| i.count > 0)
            .map(|i| (x_of_t(i.t_s), t.y(pick(i))))
            .collect();
        polyline(&mut svg, &pts, colour);
        let lx = RIGHT - 190.0 + 65.0 * k as f64;
        let _ = writeln!(
            svg,
            r##"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{name}</text>"##,
            t.top - 14.0,
            lx + 18.0,
            t.top - 14.0,
            lx + 22.0,
            t.top - 10.0
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_axis_reads_in_nines() {
        assert_eq!(nines_label(0), "0%");
        assert_eq!(nines_label(1), "90%");
        assert_eq!(nines_label(3), "99.9%");
    }

    #[test]
    fn a_plot_has_a_line_per_panel_and_series_inside_its_frame() {
        let mut h = crate::run::new_hist();
        for us in [100, 120, 130, 200, 5_000, 90_000] {
            h.record(us).unwrap();
        }
        let pts = [
            IntervalPoint {
                t_s: 1.0,
                count: 3,
                p50_us: 120,
                p99_us: 130,
                max_us: 130,
            },
            IntervalPoint {
                t_s: 2.0,
                count: 3,
                p50_us: 200,
                p99_us: 90_000,
                max_us: 90_000,
            },
        ];
        let svg = latency_svg("a & b", &h, &pts);
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");
        assert!(svg.contains("a &amp; b"));
        // Every plotted y lies within its panel (70..370 or 460..720).
        for line in svg.lines().filter(|l| l.starts_with("<polyline")) {
            let pts = line
                .split("points=\"")
                .nth(1)
                .unwrap()
                .trim_end_matches("\"/>");
            for p in pts.split(' ') {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((LEFT..=RIGHT).contains(&x), "{p}");
                assert!(
                    (70.0..=370.0).contains(&y) || (460.0..=720.0).contains(&y),
                    "{p}"
                );
            }
        }
        let empty = latency_svg("none", &crate::run::new_hist(), &[]);
        assert!(empty.contains("no request was measured") && empty.ends_with("</svg>\n"));
    }
}
