use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles of a latency histogram recorded in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// One system or variant measured in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub throughput_per_s: f64,
    pub unit: String,
    pub latency: Latency,
    pub latency_of: String,
    pub notes: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub scenario: String,
    pub machine: String,
    pub command: String,
    pub rows: Vec<Row>,
    /// Lines printed under the table (ratios between the rows).
    #[serde(default)]
    pub summary: Vec<String>,
    /// Machine-readable figures per system, for reports and plots.
    #[serde(default)]
    pub systems: Vec<serde_json::Value>,
}

pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!("{cores} cores, {} GiB", mem_kb / (1024 * 1024))
}

pub fn table(r: &Results) -> String {
    let mut out = format!(
        "scenario: {}\nmachine: {}\ncommand: {}\n\n| variant | throughput | p50 | p95 | p99 | p999 | max | latency of | notes |\n|---|---|---|---|---|---|---|---|---|\n",
        r.scenario, r.machine, r.command
    );
    for row in &r.rows {
        let l = &row.latency;
        out += &format!(
            "| {} | {:.0} {} | {} us | {} us | {} us | {} us | {} us | {} | {} |\n",
            row.name,
            row.throughput_per_s,
            row.unit,
            l.p50_us,
            l.p95_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            row.latency_of,
            row.notes
        );
    }
    if r.rows.len() == 2
        && r.rows[1].throughput_per_s > 0.0
        && r.rows[0].unit == r.rows[1].unit
        && r.scenario != "players"
    {
        out += &format!(
            "\n{} / {}: {:.1}x throughput\n",
            r.rows[0].name,
            r.rows[1].name,
            r.rows[0].throughput_per_s / r.rows[1].throughput_per_s
        );
    }
    for line in &r.summary {
        out += &format!("{line}\n");
    }
    out
}

/// A process measured through `/proc`: CPU seconds (user + system) and resident bytes.
pub fn proc_usage(pid: u32) -> (f64, u64) {
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}

/// The CPU and memory of a server process over a run, from `/proc` (`--server-pid`).
pub struct ServerUsage {
    pid: u32,
    cpu: f64,
    started: std::time::Instant,
}

impl ServerUsage {
    pub fn start(pid: Option<u32>) -> Option<ServerUsage> {
        let pid = pid?;
        Some(ServerUsage {
            pid,
            cpu: proc_usage(pid).0,
            started: std::time::Instant::now(),
        })
    }

    /// "server (pid N): X cores, RSS Y MiB" over the run so far.
    pub fn line(&self) -> String {
        let (cpu, rss) = proc_usage(self.pid);
        format!(
            "server (pid {}): {:.2} cores busy on average, RSS {:.0} MiB at the end",
            self.pid,
            (cpu - self.cpu) / self.started.elapsed().as_secs_f64().max(1e-9),
            rss as f64 / 1048576.0
        )
    }
}

/// A bar over a measuring window on stderr (drawn only on a terminal).
pub fn window_bar(secs: u64, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(secs);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} s")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    let ticking = bar.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.tick().await;
        while !ticking.is_finished() && ticking.position() < ticking.length().unwrap_or(0) {
            every.tick().await;
            ticking.inc(1);
        }
    });
    bar
}

/// A bar counting things (viewers connected, kills measured) on stderr.
pub fn count_bar(total: u64, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}
