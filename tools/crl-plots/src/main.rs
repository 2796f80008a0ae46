//! Draws the SVG plots of BENCHMARKS.md from the CSV files the benchmarks write.
//!
//! `scripts/plots.sh` runs the benchmarks with `--csv` and then this program:
//!
//! - `miss_latency.csv` (`examples/miss_latency.rs --csv`, `case,latency_us`): the latency
//!   distribution (CDF) of each case, crl's misses beside raw quinn, on a log axis;
//! - `et1_tps.csv` (`scripts/et1-vs-pgbench.sh --csv`, `system,clients,tps`): ET1 throughput
//!   against clients, crl beside PostgreSQL's pgbench;
//! - `many_regions.csv` (`examples/many_regions.rs --csv`, one row per run): resident memory
//!   per homed region and per cached copy against the number of regions, with the 128 B
//!   target.
//!
//! A missing input is skipped with a note; a malformed one is an error naming the file and
//! line.
//!
//! Run: `cargo run -p crl-plots -- --dir bench-results --out docs/plots`.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};

use clap::Parser;
use plotters::prelude::*;

#[derive(Parser)]
#[command(about = "Draw BENCHMARKS.md's SVG plots from the benchmarks' CSV output")]
struct Args {
    /// Where the CSV files are.
    #[arg(long, default_value = "bench-results")]
    dir: PathBuf,
    /// Where the SVG files go.
    #[arg(long, default_value = "docs/plots")]
    out: PathBuf,
}

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// A CSV row: its line number and its fields.
type Row = (usize, Vec<String>);

/// The rows of a CSV file after its header, each split at commas; `None` if the file is missing.
fn read_csv(path: &Path, header: &str) -> Result<Option<Vec<Row>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display()).into()),
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == header => {}
        other => {
            return Err(format!(
                "{}: expected the header `{header}`, found {:?}",
                path.display(),
                other.map(|(_, h)| h)
            )
            .into());
        }
    }
    let width = header.split(',').count();
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<String> = line.split(',').map(|f| f.trim().to_owned()).collect();
        if fields.len() != width {
            return Err(format!(
                "{}:{}: {} fields, expected {width}",
                path.display(),
                i + 1,
                fields.len()
            )
            .into());
        }
        rows.push((i + 1, fields));
    }
    Ok(Some(rows))
}

fn number(path: &Path, line: usize, field: &str) -> Result<f64> {
    field
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("{}:{line}: `{field}` is not a number", path.display()).into())
}

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    COLORS[i % COLORS.len()]
}

/// Latency CDF per case.
fn miss_latency(input: &Path, out: &Path) -> Result<bool> {
    let Some(rows) = read_csv(input, "case,latency_us")? else {
        return Ok(false);
    };
    let mut cases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut order = Vec::new();
    for (line, f) in &rows {
        let v = number(input, *line, &f[1])?;
        if !cases.contains_key(&f[0]) {
            order.push(f[0].clone());
        }
        cases.entry(f[0].clone()).or_default().push(v.max(0.1));
    }
    if cases.is_empty() {
        return Err(format!("{}: no samples", input.display()).into());
    }
    let lo = cases.values().flatten().copied().fold(f64::MAX, f64::min);
    let hi = cases.values().flatten().copied().fold(0.0, f64::max);
    let root = SVGBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Miss latency over QUIC: crl beside raw quinn (CDF)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("fraction of operations at or below")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, case) in order.iter().enumerate() {
        let mut v = cases[case].clone();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let points: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(k, &x)| (x, (k + 1) as f64 / n))
            .collect();
        let c = color(i);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(format!("{case} ({} samples)", v.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(true)
}

/// TPS against clients per system.
fn et1_tps(input: &Path, out: &Path) -> Result<bool> {
    let Some(rows) = read_csv(input, "system,clients,tps")? else {
        return Ok(false);
    };
    let mut systems: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut order = Vec::new();
    for (line, f) in &rows {
        if f[2].is_empty() || f[2] == "-" {
            continue; // a run that printed no figure
        }
        let (c, t) = (number(input, *line, &f[1])?, number(input, *line, &f[2])?);
        if !systems.contains_key(&f[0]) {
            order.push(f[0].clone());
        }
        systems.entry(f[0].clone()).or_default().push((c, t));
    }
    if systems.is_empty() {
        return Err(format!("{}: no figures", input.display()).into());
    }
    let max_c = systems.values().flatten().map(|p| p.0).fold(1.0, f64::max);
    let max_t = systems.values().flatten().map(|p| p.1).fold(1.0, f64::max);
    let root = SVGBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ET1 (DebitCredit), durable: crl beside PostgreSQL pgbench",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((0.8..max_c * 1.25).log_scale(), 0f64..max_t * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("clients (log scale)")
        .y_desc("transactions per second")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, system) in order.iter().enumerate() {
        let mut points = systems[system].clone();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = color(i);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(system.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(true)
}

/// Bytes per homed region and per cached copy against the number of regions.
fn memory(input: &Path, out: &Path) -> Result<bool> {
    let Some(rows) = read_csv(
        input,
        "regions,homed_bytes,cached_bytes,creates_per_s,reads_per_s",
    )?
    else {
        return Ok(false);
    };
    let mut homed = Vec::new();
    let mut cached = Vec::new();
    for (line, f) in &rows {
        let n = number(input, *line, &f[0])?;
        homed.push((n, number(input, *line, &f[1])?));
        cached.push((n, number(input, *line, &f[2])?));
    }
    if homed.is_empty() {
        return Err(format!("{}: no runs", input.display()).into());
    }
    homed.sort_by(|a, b| a.0.total_cmp(&b.0));
    cached.sort_by(|a, b| a.0.total_cmp(&b.0));
    let lo = homed.first().map_or(1.0, |p| p.0);
    let hi = homed.last().map_or(10.0, |p| p.0).max(lo * 10.0);
    let top = homed
        .iter()
        .chain(&cached)
        .map(|p| p.1)
        .fold(128.0, f64::max);
    let root = SVGBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Resident memory per region (16 archived bytes each)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo * 0.7..hi * 1.4).log_scale(), 0f64..top * 1.2)?;
    chart
        .configure_mesh()
        .x_desc("regions per node (log scale)")
        .y_desc("bytes per region")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let target = RGBColor(127, 127, 127);
    chart
        .draw_series(LineSeries::new(
            vec![(lo * 0.7, 144.0), (hi * 1.4, 144.0)],
            target.stroke_width(1),
        ))?
        .label("target: 128 B of metadata + 16 B of data")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], target));
    for (i, (name, points)) in [("per homed region", homed), ("per cached copy", cached)]
        .into_iter()
        .enumerate()
    {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(true)
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    type Plot = fn(&Path, &Path) -> Result<bool>;
    let plots: [(&str, &str, Plot); 3] = [
        ("miss_latency.csv", "miss_latency_cdf.svg", miss_latency),
        ("et1_tps.csv", "et1_tps.svg", et1_tps),
        ("many_regions.csv", "memory_per_region.svg", memory),
    ];
    for (input, output, plot) in plots {
        let (input, output) = (args.dir.join(input), args.out.join(output));
        if plot(&input, &output)? {
            eprintln!("{} -> {}", input.display(), output.display());
        } else {
            eprintln!(
                "skipping {}: {} is missing",
                output.display(),
                input.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_drawn_from_csv_and_bad_input_is_an_error() {
        let dir = std::env::temp_dir().join(format!("crl-plots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("m.csv");
        std::fs::write(&csv, "case,latency_us\ncrl,50\ncrl,70\nraw quinn,40\n").unwrap();
        let svg = dir.join("m.svg");
        assert!(miss_latency(&csv, &svg).unwrap());
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("raw quinn (1 samples)"));
        // Missing: skipped; malformed: an error naming the line.
        assert!(!miss_latency(&dir.join("none.csv"), &svg).unwrap());
        std::fs::write(&csv, "case,latency_us\ncrl,fast\n").unwrap();
        let e = miss_latency(&csv, &svg).unwrap_err().to_string();
        assert!(e.contains(":2: `fast` is not a number"), "{e}");
        std::fs::write(&csv, "wrong\n").unwrap();
        assert!(miss_latency(&csv, &svg).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
