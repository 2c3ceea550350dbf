//! Results: bdevperf's table (the `printf` formats of its `bdevperf_test_done` and
//! `performance_dump_job_stdout`) and SPDK's `perform_tests` JSON result.

use std::fmt::Write as _;

use serde::Serialize;

use super::histogram::Histogram;
use super::job::Totals;

/// bdevperf's percentile cutoffs for `-l`, in percent.
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

/// One job's figures at some point of the run.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Job (bdev) name.
    pub name: String,
    /// The job's core as a mask, `0x1`.
    pub core_mask: String,
    /// Workload name as bdevperf spells it.
    pub workload: &'static str,
    /// Read percentage for rw/randrw.
    pub percentage: Option<u8>,
    /// Verification range in I/O-size units (verify, reset).
    pub verify_range: Option<(u64, u64)>,
    /// I/O depth.
    pub queue_depth: u32,
    /// I/O size in bytes.
    pub io_size: u64,
    /// Seconds the job ran.
    pub runtime: f64,
    /// Its counters.
    pub totals: Totals,
    /// It ended early with an error.
    pub error: bool,
}

/// Per-second and latency figures of a row.
#[derive(Debug, Clone, Copy)]
struct Figures {
    iops: f64,
    mibps: f64,
    fail_s: f64,
    to_s: f64,
    avg_us: f64,
    min_us: f64,
    max_us: f64,
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

impl JobRow {
    fn figures(&self) -> Figures {
        let t = &self.totals;
        let iops = per_sec(t.ios, self.runtime);
        Figures {
            iops,
            mibps: iops * self.io_size as f64 / (1024.0 * 1024.0),
            fail_s: per_sec(t.failed, self.runtime),
            to_s: per_sec(t.timeouts, self.runtime),
            avg_us: if t.ios > 0 {
                t.lat_sum_ns as f64 / t.ios as f64 / 1000.0
            } else {
                0.0
            },
            min_us: if t.ios > 0 {
                t.lat_min_ns as f64 / 1000.0
            } else {
                0.0
            },
            max_us: t.lat_max_ns as f64 / 1000.0,
        }
    }

    /// `finished` or `failed`, as `perform_tests` reports it.
    pub fn status(&self) -> &'static str {
        if self.error { "failed" } else { "finished" }
    }
}

/// The header: `Latency(us)` right-aligned to column 107, then the column names.
pub fn header() -> String {
    format!(
        "\n{:>107}\n {:<28}: {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10}\n",
        "Latency(us)",
        "Device Information",
        "runtime(s)",
        "IOPS",
        "MiB/s",
        "Fail/s",
        "TO/s",
        "Average",
        "min",
        "max"
    )
}

/// The job lines and the Total row.
pub fn rows(jobs: &[JobRow]) -> String {
    let mut s = String::new();
    for j in jobs {
        match j.percentage {
            Some(p) => writeln!(
                s,
                "Job: {} (Core Mask {}, workload: {}, percentage: {p}, depth: {}, IO size: {})",
                j.name, j.core_mask, j.workload, j.queue_depth, j.io_size
            ),
            None => writeln!(
                s,
                "Job: {} (Core Mask {}, workload: {}, depth: {}, IO size: {})",
                j.name, j.core_mask, j.workload, j.queue_depth, j.io_size
            ),
        }
        .expect("write to String");
        if j.error && j.workload != "reset" {
            writeln!(
                s,
                "Job: {} ended in about {:.2} seconds with error",
                j.name, j.runtime
            )
            .expect("write to String");
        }
        if let Some((start, len)) = j.verify_range {
            writeln!(
                s,
                "\t Verification LBA range: start 0x{start:x} length 0x{len:x}"
            )
            .expect("write to String");
        }
        let f = j.figures();
        writeln!(
            s,
            "\t {:<20}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}",
            j.name, j.runtime, f.iops, f.mibps, f.fail_s, f.to_s, f.avg_us, f.min_us, f.max_us
        )
        .expect("write to String");
    }
    let mut total = Figures {
        iops: 0.0,
        mibps: 0.0,
        fail_s: 0.0,
        to_s: 0.0,
        avg_us: 0.0,
        min_us: 0.0,
        max_us: 0.0,
    };
    let (mut ios, mut sum_ns, mut min_ns) = (0u64, 0u64, u64::MAX);
    for j in jobs {
        let f = j.figures();
        total.iops += f.iops;
        total.mibps += f.mibps;
        total.fail_s += f.fail_s;
        total.to_s += f.to_s;
        total.max_us = total.max_us.max(f.max_us);
        ios += j.totals.ios;
        sum_ns += j.totals.lat_sum_ns;
        min_ns = min_ns.min(j.totals.lat_min_ns);
    }
    // Weighted by I/O count, as bdevperf's Total.
    if ios > 0 {
        total.avg_us = sum_ns as f64 / ios as f64 / 1000.0;
        total.min_us = min_ns as f64 / 1000.0;
    }
    writeln!(s, " {}", "=".repeat(115)).expect("write to String");
    writeln!(
        s,
        " {:<28}: {:>10} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}",
        "Total",
        "",
        total.iops,
        total.mibps,
        total.fail_s,
        total.to_s,
        total.avg_us,
        total.min_us,
        total.max_us
    )
    .expect("write to String");
    s
}

/// bdevperf's `-l` latency summary: per job, the percentile lines `%9.5f%% : %9.3fus`.
pub fn latency_summary(jobs: &[(JobRow, Option<Histogram>)]) -> String {
    let mut s = String::from("\n Latency summary\n");
    for (j, h) in jobs {
        let Some(h) = h.as_ref().filter(|h| h.len() > 0) else {
            continue;
        };
        writeln!(s, " {}", "=".repeat(45)).expect("write to String");
        writeln!(s, " Job: {} (Core Mask {})", j.name, j.core_mask).expect("write to String");
        for p in PERCENTILES {
            // The histogram's bucket bound, but never above the largest value seen.
            let ns = h.percentile(p).unwrap_or(0).min(j.totals.lat_max_ns.max(1));
            writeln!(s, "{p:9.5}% : {:9.3}us", ns as f64 / 1000.0).expect("write to String");
        }
        s.push('\n');
    }
    s
}

/// `perform_tests`' result.
#[derive(Debug, Serialize)]
pub struct PerfJson {
    /// One entry per job.
    pub results: Vec<PerfJobJson>,
    /// Cores that ran jobs.
    pub core_count: u32,
}

/// `perform_tests`' `verify_range`, in I/O-size units.
#[derive(Debug, Serialize)]
pub struct VerifyRangeJson {
    /// First unit.
    pub start: u64,
    /// Units.
    pub length: u64,
}

/// One job of [`PerfJson`] (SPDK's `performance_dump_job_json`).
#[derive(Debug, Serialize)]
pub struct PerfJobJson {
    /// Bdev name.
    pub job: String,
    /// `0x..` mask of the job's core.
    pub core_mask: String,
    /// Workload.
    pub workload: String,
    /// Read percentage (rw, randrw only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u8>,
    /// `finished` or `failed`.
    pub status: String,
    /// Verification range (verify, reset only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_range: Option<VerifyRangeJson>,
    /// I/O depth.
    pub queue_depth: u32,
    /// I/O size in bytes.
    pub io_size: u64,
    /// Seconds.
    pub runtime: f64,
    /// I/Os per second.
    pub iops: f64,
    /// MiB per second.
    pub mibps: f64,
    /// Failed I/Os.
    pub io_failed: u64,
    /// Timed-out I/Os.
    pub io_timeout: u64,
    /// Average latency, µs.
    pub avg_latency_us: f64,
    /// Smallest latency, µs.
    pub min_latency_us: f64,
    /// Largest latency, µs.
    pub max_latency_us: f64,
}

/// The JSON result of `jobs` run on `core_count` cores.
pub fn json(jobs: &[JobRow], core_count: u32) -> PerfJson {
    PerfJson {
        results: jobs
            .iter()
            .map(|j| {
                let f = j.figures();
                PerfJobJson {
                    job: j.name.clone(),
                    core_mask: j.core_mask.clone(),
                    workload: j.workload.into(),
                    percentage: j.percentage,
                    status: j.status().into(),
                    verify_range: j
                        .verify_range
                        .map(|(start, length)| VerifyRangeJson { start, length }),
                    queue_depth: j.queue_depth,
                    io_size: j.io_size,
                    runtime: j.runtime,
                    iops: f.iops,
                    mibps: f.mibps,
                    io_failed: j.totals.failed,
                    io_timeout: j.totals.timeouts,
                    avg_latency_us: f.avg_us,
                    min_latency_us: f.min_us,
                    max_latency_us: f.max_us,
                }
            })
            .collect(),
        core_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> JobRow {
        JobRow {
            name: "VirtioScsi0t0".into(),
            core_mask: "0x1".into(),
            workload: "verify",
            percentage: None,
            verify_range: Some((0, 0x8000)),
            queue_depth: 128,
            io_size: 4096,
            runtime: 10.0,
            totals: Totals {
                ios: 1_111_111,
                failed: 0,
                timeouts: 0,
                lat_sum_ns: 1_111_111 * 1_150_000,
                lat_min_ns: 40_000,
                lat_max_ns: 5_000_000,
            },
            error: false,
        }
    }

    #[test]
    fn table_matches_bdevperf_layout() {
        let h = header();
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(lines[1].len(), 107);
        assert!(lines[1].ends_with("Latency(us)"));
        assert_eq!(
            lines[2],
            " Device Information          : runtime(s)       IOPS      MiB/s     Fail/s     TO/s    Average        min        max"
        );
        let r = rows(&[row()]);
        let expected = "Job: VirtioScsi0t0 (Core Mask 0x1, workload: verify, depth: 128, IO size: 4096)\n\
\t Verification LBA range: start 0x0 length 0x8000\n\
\t VirtioScsi0t0       :      10.00  111111.10     434.03       0.00     0.00    1150.00      40.00    5000.00\n \
===================================================================================================================\n \
Total                       :             111111.10     434.03       0.00     0.00    1150.00      40.00    5000.00\n";
        assert_eq!(r, expected);
    }

    #[test]
    fn json_has_perform_tests_shape() {
        let mut r = row();
        r.workload = "randrw";
        r.percentage = Some(70);
        r.verify_range = None;
        let v = serde_json::to_value(json(&[r], 1)).unwrap();
        let keys: Vec<&str> = v["results"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(keys.contains(&"percentage") && !keys.contains(&"verify_range"));
        assert_eq!(v["core_count"], 1);
        assert_eq!(v["results"][0]["status"], "finished");
    }
}
