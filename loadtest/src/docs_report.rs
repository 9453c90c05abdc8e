//! `loadtest report`: regenerates docs/benchmarks.md from a template and the JSON results of
//! the runs (`--json`), drawing the plots as SVG. Template directives, one per line:
//!
//! - `{{table FILE}}`: the run's command, machine, table and summary lines;
//! - `{{ratios FILE...}}`: Grandstand against each peer, pair by pair, per viewer count;
//! - `{{cdf FILE}}`: latency CDFs of every system of a `viewers` run;
//! - `{{scaling FILE...}}`: msgs per CPU-second and memory per connection against viewers,
//!   per system, over several `viewers` runs;
//! - `{{players FILE...}}`: downstream bytes per player against room size, per variant.
//!
//! Anything else is copied as it is, so the narrative lives in the template.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use serde::Deserialize;

use crate::report::{table, Results};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value = "docs/benchmarks.template.md")]
    template: PathBuf,
    #[arg(long, default_value = "docs/results")]
    results: PathBuf,
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Where the SVG plots go (linked relative to `--out`).
    #[arg(long, default_value = "docs/plots")]
    plots: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
struct System {
    system: String,
    viewers: usize,
    held: u64,
    delivered_per_s: f64,
    server_cpu_cores: f64,
    msgs_per_cpu_second: f64,
    rss_per_connection_bytes: f64,
    /// Absent from runs before 2026-12-05 (0 then).
    #[serde(default)]
    rss_marginal_per_connection_bytes: f64,
    gaps: u64,
    latency: crate::report::Latency,
    cdf: Vec<(u64, f64)>,
    #[serde(default)]
    wire_bytes_per_viewer_per_s: f64,
    #[serde(default)]
    encode_cpu_cores: f64,
    #[serde(default)]
    messages_per_write: f64,
}

fn load(dir: &Path, file: &str) -> anyhow::Result<Results> {
    let path = dir.join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn systems(r: &Results) -> Vec<System> {
    r.systems
        .iter()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect()
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(227, 119, 194),
    RGBColor(90, 90, 90),
    RGBColor(140, 86, 75),
];

/// The systems with a colour of their own, in palette order.
const SYSTEM_COLOURS: [&str; 7] = [
    "grandstand",
    "node-ws",
    "socketio",
    "nats-ws",
    "raw",
    "uws",
    "floor",
];

fn colour_of(system: &str) -> RGBColor {
    let i = SYSTEM_COLOURS
        .iter()
        .position(|s| *s == system)
        .unwrap_or(PALETTE.len() - 1);
    PALETTE[i]
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn cdf_plot(path: &Path, title: &str, systems: &[System]) -> PlotResult {
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_ms = systems
        .iter()
        .flat_map(|s| s.cdf.iter().map(|p| p.0 as f64 / 1000.0))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0.1f64..max_ms * 1.2).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("publish -> received (ms, log scale)")
        .y_desc("fraction of messages")
        .draw()?;
    for s in systems {
        let c = colour_of(&s.system);
        let points: Vec<(f64, f64)> = s
            .cdf
            .iter()
            .map(|&(us, q)| ((us as f64 / 1000.0).max(0.1), q))
            .collect();
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(s.system.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One line per series over x, on a log x axis.
fn lines_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &BTreeMap<String, Vec<(f64, f64)>>,
) -> PlotResult {
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let xs = series.values().flatten().map(|p| p.0);
    let (x0, x1) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let y1 = series
        .values()
        .flatten()
        .map(|p| p.1)
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0f64..y1 * 1.15)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let c = if SYSTEM_COLOURS.contains(&name.as_str()) {
            colour_of(name)
        } else {
            PALETTE[i % PALETTE.len()]
        };
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn stem(file: &str) -> &str {
    file.trim_end_matches(".json")
}

fn plot_link(args: &Args, name: &str) -> String {
    let rel = args
        .plots
        .strip_prefix(args.out.parent().unwrap_or(Path::new("")))
        .unwrap_or(&args.plots);
    format!("![{name}]({}/{name}.svg)", rel.display())
}

fn ratios(args: &Args, files: &[&str]) -> anyhow::Result<String> {
    let mut out = String::from(
        "| viewers | peer | msgs per CPU-second (Grandstand / peer) | p99 latency (Grandstand / peer, lower is better) | memory per connection (Grandstand / peer, lower is better) | held (Grandstand / peer) |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for f in files {
        let r = load(&args.results, f)?;
        let all = systems(&r);
        let Some(gs) = all.iter().find(|s| s.system == "grandstand") else {
            continue;
        };
        for p in all.iter().filter(|s| s.system != "grandstand") {
            out += &format!(
                "| {} | {} | **{:.2}x** ({:.0} / {:.0}) | {:.2}x ({:.1} / {:.1} ms) | {:.2}x ({:.1} / {:.1} KiB) | {} / {} |\n",
                gs.viewers,
                p.system,
                gs.msgs_per_cpu_second / p.msgs_per_cpu_second.max(1e-9),
                gs.msgs_per_cpu_second,
                p.msgs_per_cpu_second,
                gs.latency.p99_us as f64 / p.latency.p99_us.max(1) as f64,
                gs.latency.p99_us as f64 / 1000.0,
                p.latency.p99_us as f64 / 1000.0,
                gs.rss_per_connection_bytes / p.rss_per_connection_bytes.max(1.0),
                gs.rss_per_connection_bytes / 1024.0,
                p.rss_per_connection_bytes / 1024.0,
                gs.held,
                p.held,
            );
        }
    }
    Ok(out)
}

fn systems_table(r: &Results) -> String {
    let all = systems(r);
    if all.is_empty() {
        return String::new();
    }
    let wire = all.iter().any(|s| s.wire_bytes_per_viewer_per_s > 0.0);
    let mut out = if wire {
        String::from("| system | held | delivered/s | p50 | p99 | p999 | server CPU | msgs per CPU-s | RSS per conn | gaps | KB/s per viewer | encoding | msgs per write |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    } else {
        String::from("| system | held | delivered/s | p50 | p99 | p999 | server CPU | msgs per CPU-s | RSS per conn | gaps |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    };
    for s in &all {
        out += &format!(
            "| {} | {}/{} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} cores | {:.0} | {:.1} KiB{} | {} |",
            s.system,
            s.held,
            s.viewers,
            s.delivered_per_s,
            s.latency.p50_us as f64 / 1000.0,
            s.latency.p99_us as f64 / 1000.0,
            s.latency.p999_us as f64 / 1000.0,
            s.server_cpu_cores,
            s.msgs_per_cpu_second,
            s.rss_per_connection_bytes / 1024.0,
            if s.rss_marginal_per_connection_bytes > 0.0 {
                format!(
                    " ({:.1} for each of the second half)",
                    s.rss_marginal_per_connection_bytes / 1024.0
                )
            } else {
                String::new()
            },
            s.gaps
        );
        if wire {
            let grandstand = s.system == "grandstand";
            out += &format!(
                " {:.1} | {} | {} |",
                s.wire_bytes_per_viewer_per_s / 1000.0,
                if grandstand {
                    format!("{:.3} cores", s.encode_cpu_cores)
                } else {
                    "-".into()
                },
                if grandstand {
                    format!("{:.2}", s.messages_per_write)
                } else {
                    "-".into()
                },
            );
        }
        out.push('\n');
    }
    for v in &r.systems {
        let Some(st) = v.get("storm") else { continue };
        let ms = |l: &serde_json::Value, q: &str| l[q].as_f64().unwrap_or(0.0) / 1000.0;
        out += &format!(
            "\n**{} storm** ({}): {} viewers resumed, {} failed to reconnect (not retried); their first message was a replay of retained deltas for {} and a snapshot for {}; drop -> reconnected p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            st["kind"].as_str().unwrap_or("?"),
            v["system"].as_str().unwrap_or("?"),
            st["resumed"],
            st["failed"],
            st["replays"],
            st["snapshots"],
            ms(&st["resume"], "p50_us"),
            ms(&st["resume"], "p99_us"),
            ms(&st["resume"], "max_us"),
        );
        if let Some(c) = st.get("cold_load") {
            out += &format!(
                "; snapshot GET p50 {:.0} ms, p99 {:.0} ms",
                ms(c, "p50_us"),
                ms(c, "p99_us")
            );
        }
        out += ".\n";
    }
    out
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let template = std::fs::read_to_string(&args.template)
        .with_context(|| format!("reading {}", args.template.display()))?;
    std::fs::create_dir_all(&args.plots)?;
    let mut out = String::new();
    for line in template.lines() {
        let Some(directive) = line
            .trim()
            .strip_prefix("{{")
            .and_then(|l| l.strip_suffix("}}"))
        else {
            out += line;
            out.push('\n');
            continue;
        };
        let mut words = directive.split_whitespace();
        let verb = words.next().unwrap_or_default();
        let files: Vec<&str> = words.collect();
        match verb {
            "table" => {
                for f in &files {
                    let r = load(&args.results, f)?;
                    let sys = systems_table(&r);
                    if sys.is_empty() {
                        out += &table(&r);
                    } else {
                        out +=
                            &format!("command: `{}`\nmachine: {}\n\n{sys}", r.command, r.machine);
                    }
                    out.push('\n');
                }
            }
            "ratios" => out += &ratios(&args, &files)?,
            "cdf" => {
                for f in &files {
                    let r = load(&args.results, f)?;
                    let all = systems(&r);
                    let name = format!("{}-cdf", stem(f));
                    let title = format!(
                        "publish -> viewer latency, {} viewers",
                        all.first().map_or(0, |s| s.viewers)
                    );
                    cdf_plot(&args.plots.join(format!("{name}.svg")), &title, &all)
                        .map_err(|e| anyhow::anyhow!("plotting {name}: {e}"))?;
                    out += &plot_link(&args, &name);
                    out.push('\n');
                }
            }
            "scaling" => {
                let mut per_cpu: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
                let mut memory: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
                for f in &files {
                    for s in systems(&load(&args.results, f)?) {
                        let x = s.viewers as f64;
                        per_cpu
                            .entry(s.system.clone())
                            .or_default()
                            .push((x, s.msgs_per_cpu_second));
                        memory
                            .entry(s.system.clone())
                            .or_default()
                            .push((x, s.rss_per_connection_bytes / 1024.0));
                    }
                }
                for v in per_cpu.values_mut().chain(memory.values_mut()) {
                    v.sort_by(|a, b| a.0.total_cmp(&b.0));
                }
                lines_plot(
                    &args.plots.join("viewers-per-cpu.svg"),
                    "delivered messages per CPU-second of the fan-out server",
                    "viewers (log scale)",
                    "msgs per CPU-second",
                    &per_cpu,
                )
                .map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
                lines_plot(
                    &args.plots.join("viewers-memory.svg"),
                    "server memory per connection",
                    "viewers (log scale)",
                    "KiB per connection",
                    &memory,
                )
                .map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
                out += &format!(
                    "{}\n\n{}\n",
                    plot_link(&args, "viewers-per-cpu"),
                    plot_link(&args, "viewers-memory")
                );
            }
            "players" => {
                let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
                for f in &files {
                    let r = load(&args.results, f)?;
                    let room = r
                        .command
                        .split("--room-size ")
                        .nth(1)
                        .and_then(|s| s.split_whitespace().next())
                        .and_then(|s| s.parse::<f64>().ok())
                        .context("no --room-size in the command")?;
                    for row in r.rows.iter().filter(|r| r.name.ends_with("input -> ack")) {
                        let variant = row.name.trim_end_matches(": input -> ack").to_string();
                        series
                            .entry(variant)
                            .or_default()
                            .push((room, row.throughput_per_s));
                    }
                }
                for v in series.values_mut() {
                    v.sort_by(|a, b| a.0.total_cmp(&b.0));
                }
                lines_plot(
                    &args.plots.join("players-bytes.svg"),
                    "downstream bytes per player (30 Hz, incl. UDP/IP headers)",
                    "players in the room (log scale)",
                    "bytes/s per player",
                    &series,
                )
                .map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
                out += &plot_link(&args, "players-bytes");
                out.push('\n');
            }
            other => anyhow::bail!("unknown directive {other:?} in {}", args.template.display()),
        }
    }
    std::fs::write(&args.out, out)?;
    println!(
        "wrote {} (plots in {})",
        args.out.display(),
        args.plots.display()
    );
    Ok(())
}
