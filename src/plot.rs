//! The SVG bar chart of `cranelora bench --plot FILE.svg`, written by hand
//! (no plotting dependency).
//!
//! One group per workload, one horizontal bar per mode; a bar's length is the
//! mode's median time divided by the workload's eager median, on a log₂
//! scale (shorter = faster; the dashed line is eager, 1×). Each bar is
//! labelled with its mode, its median and the ratio. W5 (compile times, no
//! eager) is listed as text under the chart.

use crate::bench::{Mode, Report, Workload};
use std::fmt::Write as _;
use std::time::Duration;

const LEFT: f64 = 120.0; // mode labels to the left of the bars
const PLOT_W: f64 = 460.0; // the bar area
const VALUE_W: f64 = 200.0; // value labels right of the bars
const BAR_H: f64 = 16.0;
const ROW_H: f64 = 20.0;
const GROUP_GAP: f64 = 26.0;
const TOP: f64 = 56.0;

fn fmt_time(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10.0 {
        format!("{us:.3} µs")
    } else if us < 10_000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1e3)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn color(mode: Mode) -> &'static str {
    match mode {
        Mode::Eager => "#7f7f7f",
        Mode::Interp => "#d62728",
        Mode::Jit => "#1f77b4",
        Mode::JitBound => "#17becf",
        Mode::JitFolded => "#2ca02c",
        Mode::MergedEager => "#9467bd",
        Mode::RustcBaseline => "#ff7f0e",
    }
}

/// A row of the chart: (workload, mode, median, ratio to eager).
type Row = (Workload, Mode, Duration, f64);

/// The chart of `report` as SVG text; `subtitle` (machine, command) goes
/// under the title.
pub fn bench_svg(report: &Report, subtitle: &str) -> String {
    // Rows per workload with an eager time to divide by.
    let mut groups: Vec<(Workload, Vec<Row>)> = Vec::new();
    for w in Workload::ALL {
        let Some(eager) = report.get(w, Mode::Eager) else {
            continue;
        };
        let e = eager.stats.median.as_secs_f64();
        let rows: Vec<Row> = w
            .modes()
            .iter()
            .filter_map(|&m| report.get(w, m))
            .map(|m| (w, m.mode, m.stats.median, m.stats.median.as_secs_f64() / e))
            .collect();
        groups.push((w, rows));
    }
    // Log₂ axis from a power of two at or below the smallest ratio to one at
    // or above the largest (at least 1/2 … 2).
    let ratios = groups.iter().flat_map(|(_, r)| r.iter().map(|r| r.3));
    let (lo, hi) = ratios
        .filter(|r| r.is_finite() && *r > 0.0)
        .fold((0.5f64, 2.0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
    let (e_lo, e_hi) = (lo.log2().floor() as i32, hi.log2().ceil() as i32);
    let x_of = |r: f64| {
        let t = (r.max(f64::MIN_POSITIVE).log2() - f64::from(e_lo)) / f64::from(e_hi - e_lo);
        LEFT + t.clamp(0.0, 1.0) * PLOT_W
    };

    let rows_total: usize = groups.iter().map(|(_, r)| r.len()).sum();
    let compile_lines = report.compile.len() + usize::from(!report.compile.is_empty());
    let plot_h = rows_total as f64 * ROW_H + groups.len() as f64 * GROUP_GAP;
    let width = LEFT + PLOT_W + VALUE_W;
    let height = TOP + plot_h + 40.0 + compile_lines as f64 * 16.0 + 10.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">cranelora bench: median time per call relative to eager (log scale; shorter is faster)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">{}</text>"##,
        escape(subtitle)
    );

    // Grid lines and tick labels at powers of two.
    let axis_y = TOP + plot_h;
    for e in e_lo..=e_hi {
        let r = 2f64.powi(e);
        let x = x_of(r);
        let label = if e >= 0 {
            format!("{}×", 1u64 << e)
        } else {
            format!("1/{}×", 1u64 << -e)
        };
        let (stroke, dash) = if e == 0 {
            ("#333", r#" stroke-dasharray="4,3""#)
        } else {
            ("#ddd", "")
        };
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{TOP:.1}" x2="{x:.1}" y2="{axis_y:.1}" stroke="{stroke}"{dash}/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            axis_y + 14.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">median / eager median (log₂ scale)</text>"##,
        LEFT + PLOT_W / 2.0,
        axis_y + 30.0
    );

    // The bars.
    let mut y = TOP;
    for (w, rows) in &groups {
        y += GROUP_GAP;
        let _ = writeln!(
            s,
            r#"<text x="10" y="{:.1}" font-weight="bold">{} {}</text>"#,
            y - 8.0,
            w.name(),
            workload_title(*w)
        );
        for &(_, mode, median, ratio) in rows {
            let x1 = x_of(ratio);
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + BAR_H - 4.0,
                mode.name()
            );
            let _ = writeln!(
                s,
                r#"<rect x="{LEFT:.1}" y="{y:.1}" width="{:.1}" height="{BAR_H:.1}" fill="{}"><title>{} {}: {} ({ratio:.3}× eager)</title></rect>"#,
                (x1 - LEFT).max(1.0),
                color(mode),
                w.name(),
                mode.name(),
                fmt_time(median)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{} ({ratio:.2}×)</text>"#,
                x1 + 4.0,
                y + BAR_H - 4.0,
                fmt_time(median)
            );
            y += ROW_H;
        }
    }

    // W5 as text.
    let mut ty = axis_y + 52.0;
    if !report.compile.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="10" y="{ty:.1}" font-weight="bold">W5 compile W3 (export + passes + JIT), wall time</text>"#
        );
        for c in &report.compile {
            ty += 16.0;
            let _ = writeln!(
                s,
                r#"<text x="20" y="{ty:.1}">{}: median {}, min {}</text>"#,
                c.mode.name(),
                fmt_time(c.stats.median),
                fmt_time(c.stats.min)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn workload_title(w: Workload) -> &'static str {
    match w {
        Workload::W1 => "lora-mlp (batch 64)",
        Workload::W2 => "tiny-latency (batch 1)",
        Workload::W3 => "encoder-block (8 × 128)",
        Workload::W4 => "train-step",
        Workload::W5 => "compile",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Measurement, Stats};

    #[test]
    fn svg_names_every_mode_and_value() {
        let mut report = Report::default();
        for (mode, us) in [
            (Mode::Eager, 8.0),
            (Mode::Interp, 50.0),
            (Mode::RustcBaseline, 0.6),
        ] {
            let d = Duration::from_secs_f64(us * 1e-6);
            report.results.push(Measurement {
                workload: Workload::W2,
                mode,
                stats: Stats {
                    median: d,
                    min: d,
                    calls: 3,
                },
                gflops: None,
            });
        }
        let svg = bench_svg(&report, "test <machine>");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        for m in ["eager", "interp", "rustc-baseline", "0.600 µs", "6.25×"] {
            assert!(svg.contains(m), "{m} missing");
        }
        assert!(svg.contains("test &lt;machine&gt;"));
        assert!(svg.contains("1/16×") && svg.contains("8×"));
    }
}
