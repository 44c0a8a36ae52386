//! The latency CDF as SVG.
//!
//! Each series becomes one curve: x is a latency in nanoseconds, y the fraction of operations that
//! completed at or below it. The x axis is logarithmic because the distributions worth comparing
//! can sit orders of magnitude apart, and because the tail that matters stretches a decade or more
//! past the median; on a linear axis either the fast curves collapse onto the y axis or the tail
//! is squeezed into the last few pixels.
//!
//! Text is left to the SVG viewer: plotters' SVG backend emits `<text>` elements and, with no font
//! feature enabled, sizes them for layout by a fixed per-character estimate, so drawing needs no
//! font files and no system fonts.
//!
//! # Invariants
//! - The chart is drawn into memory and written in one go: a failed drawing leaves no file.
//! - Every curve rises monotonically from (its minimum, 0) to (its maximum, 1).

use std::error::Error;
use std::path::Path;

use hdrhistogram::iterators::IterationValue;
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// One latency distribution to draw.
pub struct Series<'a> {
    /// Legend label, e.g. "Mu 3 replicas 64 B".
    pub label: String,
    /// Recorded values, in units of `ns_per_unit` nanoseconds (TSC cycles with
    /// `ns_per_unit = 1e9 / tsc_hz`).
    pub histogram: &'a Histogram<u64>,
    /// Nanoseconds per recorded unit.
    pub ns_per_unit: f64,
}

const SIZE: (u32, u32) = (1000, 600);

/// Quantile steps per halving of the distance to 1.0: the steps shrink as the curve nears 1.0, so
/// the tail (p99, p99.9, ...) gets as many points as the body.
const TICKS_PER_HALF_DISTANCE: u32 = 16;

/// Ratio between successive values of the log walk: about 47 points a decade, so that at 1000 px
/// wide no chord spans more than a few pixels, and at most about 900 points for the whole u64
/// range.
const LOG_STEP: f64 = 1.05;

/// How far the x axis extends past the data on either side, as a factor, so that the extreme
/// points do not sit on the plot's frame.
const X_PAD: f64 = 1.25;

/// Tableau 10 plus two: distinct on white, none too pale to see as a thin line.
const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 128),
    RGBColor(128, 0, 0),
];

/// A series reduced to the points of its curve, in ns and fraction.
struct Curve<'s> {
    label: &'s str,
    points: Vec<(f64, f64)>,
}

/// Draws the cumulative distribution of each series: x = latency in ns on a log scale, y =
/// fraction of operations at or below it (0..1). Writes an SVG file at `path`.
///
/// Series with empty histograms are left out; it is an error if that leaves none.
pub fn latency_cdf_svg(path: &Path, title: &str, series: &[Series<'_>]) -> Result<(), String> {
    let fail = |why: &dyn std::fmt::Display| format!("latency CDF {}: {why}", path.display());

    let mut curves = Vec::with_capacity(series.len());
    for s in series.iter().filter(|s| !s.histogram.is_empty()) {
        if !(s.ns_per_unit.is_finite() && s.ns_per_unit > 0.0) {
            return Err(fail(&format_args!(
                "series {:?} has ns_per_unit {}, which is not a positive number",
                s.label, s.ns_per_unit
            )));
        }
        curves.push(curve(s));
    }
    if curves.is_empty() {
        return Err(fail(&"no series with recorded values"));
    }

    // A log axis cannot show 0 (a histogram may hold zero-latency samples, e.g. from a coarse
    // clock), so such points are drawn at the smallest positive latency instead.
    let floor = curves
        .iter()
        .flat_map(|c| &c.points)
        .map(|&(x, _)| x)
        .filter(|&x| x > 0.0)
        .fold(f64::INFINITY, f64::min);
    let floor = if floor.is_finite() { floor } else { 1.0 };
    for c in &mut curves {
        for p in &mut c.points {
            p.0 = p.0.max(floor);
        }
    }
    let ceiling = curves
        .iter()
        .flat_map(|c| &c.points)
        .map(|&(x, _)| x)
        .fold(floor, f64::max);

    let (mut x_lo, x_hi) = (floor / X_PAD, ceiling * X_PAD);
    // plotters puts log-axis ticks, and so labels, only on powers of ten inside the range: a
    // range that falls within one decade would leave the x axis unlabelled.
    let decade = 10f64.powf(x_hi.log10().floor());
    if decade < x_lo {
        x_lo = decade / X_PAD;
    }
    // Extreme ns_per_unit can push the bounds to 0 or infinity, which no log axis can span.
    if !(x_lo > 0.0 && x_hi.is_finite()) {
        return Err(fail(&format_args!(
            "latencies from {floor} to {ceiling} ns are beyond what can be drawn"
        )));
    }

    let mut svg = String::new();
    draw(&mut svg, title, &curves, x_lo, x_hi).map_err(|e| fail(&e))?;
    std::fs::write(path, svg).map_err(|e| fail(&e))
}

/// The curve's points, from two walks over the histogram merged: quantile steps put them densest
/// in the tail, where the steps in fraction shrink, and log steps in value keep a body that spreads
/// over decades from being drawn as a few long chords on the log axis.
fn curve<'s>(s: &'s Series<'_>) -> Curve<'s> {
    let h = s.histogram;
    let point =
        |v: IterationValue<u64>| (v.value_iterated_to() as f64 * s.ns_per_unit, v.quantile());
    let mut points: Vec<(f64, f64)> = h
        .iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(point)
        .chain(
            // Its first step reports the value below the one it is given, which would stretch the
            // curve to the left of the smallest value; its last overshoots the largest.
            h.iter_log(h.min().saturating_add(1), LOG_STEP)
                .take_while(|v| v.value_iterated_to() <= h.max())
                .map(point),
        )
        // Starting at 0 makes the curve rise from the x axis rather than appear mid-plot.
        .chain([(h.min() as f64 * s.ns_per_unit, 0.0)])
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    // Steps inside one histogram bucket, of either walk, land on the same point.
    points.dedup();
    Curve {
        label: &s.label,
        points,
    }
}

/// Renders the chart into `svg`; the caller writes the file, so that file errors and drawing
/// errors are reported apart.
fn draw(
    svg: &mut String,
    title: &str,
    curves: &[Curve<'_>],
    x_lo: f64,
    x_hi: f64,
) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        // Room for the last x tick label, centred on the right edge of the plot.
        .margin_right(40)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ns, log scale)")
        .y_desc("fraction of operations ≤ latency")
        // The default prints whole ticks as "1000.0"; below 1 ns, as many decimals as the tick
        // needs (a tick is a power of ten or a small multiple of one).
        .x_label_formatter(&|x| {
            let decimals = (-x.log10()).ceil().max(0.0) as usize;
            format!("{x:.decimals$}")
        })
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;

    for (i, c) in curves.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                c.points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(c.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }

    // Lower right: the CDFs have all climbed towards 1.0 by the right edge, so that corner is empty.
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 16))
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_svg(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mu-plot-{}-{name}.svg", std::process::id()))
    }

    fn histogram(values: impl Iterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new(3).unwrap();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn draws_both_series_with_labels_and_title() {
        let fast = histogram((100..10_000).step_by(7));
        let slow = histogram((1_000..1_000_000).step_by(101));
        let empty = Histogram::new(3).unwrap();
        let series = [
            Series {
                label: "Mu 3 replicas 64 B".into(),
                histogram: &fast,
                ns_per_unit: 1.0,
            },
            Series {
                label: "raft-rs 3 replicas 64 B".into(),
                histogram: &slow,
                ns_per_unit: 0.5,
            },
            Series {
                label: "nothing recorded".into(),
                histogram: &empty,
                ns_per_unit: 1.0,
            },
        ];
        let path = temp_svg("two-series");
        latency_cdf_svg(&path, "Replicated write latency", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();

        assert!(svg.trim_start().starts_with("<svg"), "{svg:.200}");
        for text in [
            "Mu 3 replicas 64 B",
            "raft-rs 3 replicas 64 B",
            "Replicated write latency",
            "latency (ns, log scale)",
            "fraction of operations ≤ latency",
        ] {
            assert!(svg.contains(text), "{text:?} missing");
        }
        assert!(!svg.contains("nothing recorded"));
    }

    #[test]
    fn curve_rises_from_0_to_1_with_points_in_the_tail() {
        // Heavy-tailed: the slowest 0.1 % spread over two decades.
        let h = histogram((1..=100_000).map(|i| 1_000_000 / i));
        let s = Series {
            label: "heavy tail".into(),
            histogram: &h,
            ns_per_unit: 2.0,
        };
        let points = curve(&s).points;
        assert!(points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(points.first().unwrap(), &(h.min() as f64 * 2.0, 0.0));
        assert_eq!(points.last().unwrap(), &(h.max() as f64 * 2.0, 1.0));
        let tail = points
            .iter()
            .filter(|p| (0.999..1.0).contains(&p.1))
            .count();
        assert!(tail >= 50, "{tail} points in the last 0.1 %");
    }

    #[test]
    fn zero_latencies_do_not_break_the_log_axis() {
        let zeros = histogram([0, 0, 0].into_iter());
        let series = [Series {
            label: "all zero".into(),
            histogram: &zeros,
            ns_per_unit: 1.0,
        }];
        let path = temp_svg("zeros");
        latency_cdf_svg(&path, "zeros", &series).unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_range_within_one_decade_still_has_labelled_ticks() {
        let narrow = histogram(200..300);
        let series = [Series {
            label: "narrow".into(),
            histogram: &narrow,
            ns_per_unit: 1.0,
        }];
        let path = temp_svg("narrow");
        latency_cdf_svg(&path, "narrow", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("\n100\n"), "no tick label at 100 ns");
    }

    #[test]
    fn sub_nanosecond_ticks_keep_their_decimals() {
        let cycles = histogram(1..20);
        let series = [Series {
            label: "a few cycles".into(),
            histogram: &cycles,
            ns_per_unit: 0.1,
        }];
        let path = temp_svg("sub-ns");
        latency_cdf_svg(&path, "sub-ns", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("\n0.1\n"), "no tick label at 0.1 ns");
        assert!(svg.contains("\n1\n"), "no tick label at 1 ns");
    }

    #[test]
    fn nothing_to_draw_is_an_error() {
        let path = temp_svg("nothing");
        assert!(latency_cdf_svg(&path, "none", &[]).is_err());
        let empty = Histogram::new(3).unwrap();
        let series = [Series {
            label: "empty".into(),
            histogram: &empty,
            ns_per_unit: 1.0,
        }];
        assert!(latency_cdf_svg(&path, "empty", &series).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn bad_ns_per_unit_is_an_error() {
        let h = histogram([5].into_iter());
        let path = temp_svg("bad-scale");
        for ns_per_unit in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e308] {
            let series = [Series {
                label: "bad".into(),
                histogram: &h,
                ns_per_unit,
            }];
            assert!(latency_cdf_svg(&path, "bad", &series).is_err());
        }
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_path_is_an_error_naming_it() {
        let h = histogram(1..100);
        let series = [Series {
            label: "one".into(),
            histogram: &h,
            ns_per_unit: 1.0,
        }];
        let path = std::env::temp_dir()
            .join(format!("mu-plot-missing-{}", std::process::id()))
            .join("cdf.svg");
        let err = latency_cdf_svg(&path, "missing", &series).unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
