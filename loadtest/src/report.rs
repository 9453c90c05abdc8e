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
