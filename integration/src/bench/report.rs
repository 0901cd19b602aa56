//! Turning what a benchmark run measured into printable lines: latency percentiles, the
//! CPU used by the processes under test (from `/proc`, via [`flotilla_testkit::process`])
//! and their log-writer fsyncs (from `/metrics`, via [`flotilla_testkit::metrics`]).

use std::str::FromStr;
use std::time::{Duration, Instant};

use flotilla_testkit::{metrics, process};

/// `d` in milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `p50 .. p90 .. p99 .. max ..` of `samples` in milliseconds (`no samples` if empty).
pub fn percentiles(mut samples: Vec<Duration>) -> String {
    let Some(&max) = samples.iter().max() else {
        return "no samples".into();
    };
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(at(0.50)),
        ms(at(0.90)),
        ms(at(0.99)),
        ms(max)
    )
}

/// Named processes whose CPU a run reports, parsed from `name=pid,name=pid` (empty: none),
/// as `--cpu-pids leader=PID,follower=PID` gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pids(pub Vec<(String, u32)>);

impl FromStr for Pids {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, String> {
        list.split(',')
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (name, pid) = item
                    .split_once('=')
                    .ok_or(format!("{item} is not name=pid"))?;
                let pid = pid.parse::<u32>().map_err(|e| format!("{item}: {e}"))?;
                Ok((name.to_owned(), pid))
            })
            .collect::<Result<_, String>>()
            .map(Pids)
    }
}

/// CPU clock ticks used so far by the whole machine and by some processes (those of a
/// [`Pids`] plus this one, as `bench`); two samples give the CPU used in between.
pub struct CpuSample {
    at: Instant,
    machine_busy: u64,
    machine_total: u64,
    procs: Vec<(String, Option<u64>)>,
}

impl CpuSample {
    /// Reads the counters now (a process that is gone is left out of the report).
    pub fn take(pids: &Pids) -> Self {
        let (machine_busy, machine_total) = process::machine_ticks();
        let mut procs: Vec<(String, Option<u64>)> = pids
            .0
            .iter()
            .map(|(name, pid)| (name.clone(), process::cpu_ticks(*pid)))
            .collect();
        procs.push(("bench".into(), process::cpu_ticks(std::process::id())));
        CpuSample {
            at: Instant::now(),
            machine_busy,
            machine_total,
            procs,
        }
    }

    /// One line: each process's CPU since `earlier` as a share of one core, how busy the
    /// machine was, and how much of that was not the listed processes.
    pub fn report_since(&self, earlier: &CpuSample) -> String {
        let wall = (self.at - earlier.at).as_secs_f64().max(1e-3);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut parts = Vec::new();
        let mut ours = 0.0;
        for ((name, t0), (_, t1)) in earlier.procs.iter().zip(&self.procs) {
            if let (Some(t0), Some(t1)) = (t0, t1) {
                let pct = t1.saturating_sub(*t0) as f64 / process::TICKS_PER_SECOND / wall * 100.0;
                ours += pct;
                parts.push(format!("{name} {pct:.0}%"));
            }
        }
        let total = self
            .machine_total
            .saturating_sub(earlier.machine_total)
            .max(1) as f64;
        let busy = self.machine_busy.saturating_sub(earlier.machine_busy) as f64;
        let busy_pct = busy / total * 100.0 * cores as f64;
        format!(
            "cpu (% of one core): {}; machine busy {busy_pct:.0}% of {}% ({cores} cores), of which not ours {:.0}%",
            parts.join(", "),
            cores * 100,
            (busy_pct - ours).max(0.0)
        )
    }
}

/// Log-writer fsync counters of one process so far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fsyncs {
    /// `flotilla_log_writer_fsync_rounds_total`.
    pub rounds: f64,
    /// `flotilla_log_writer_fsync_seconds_sum`.
    pub seconds: f64,
}

impl Fsyncs {
    /// Reads the counters from the `/metrics` page on `rest` (`host:port`).
    pub async fn read(rest: &str) -> Result<Self, String> {
        let page = metrics::scrape(rest)
            .await
            .ok_or(format!("reading /metrics on {rest}"))?;
        let get =
            |name: &str| metrics::value(&page, name).ok_or(format!("{name} missing on {rest}"));
        Ok(Fsyncs {
            rounds: get("flotilla_log_writer_fsync_rounds_total")?,
            seconds: get("flotilla_log_writer_fsync_seconds_sum")?,
        })
    }

    /// One line for process `name`: fsync rounds since `earlier` per 1000 of the `writes`
    /// made meanwhile, and their mean duration.
    pub fn report_since(&self, earlier: &Fsyncs, name: &str, writes: usize) -> String {
        let rounds = self.rounds - earlier.rounds;
        format!(
            "{name}: {rounds} fsync rounds ({:.0} per 1000 writes), mean fsync {:.2} ms",
            rounds * 1000.0 / writes.max(1) as f64,
            (self.seconds - earlier.seconds) * 1e3 / rounds.max(1.0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_hundred_samples() {
        let samples = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(
            percentiles(samples),
            "p50 51.00 ms, p90 91.00 ms, p99 100.00 ms, max 100.00 ms"
        );
        assert_eq!(percentiles(Vec::new()), "no samples");
    }

    #[test]
    fn pids_parse_from_name_equals_pid() {
        assert_eq!("".parse::<Pids>(), Ok(Pids::default()));
        assert_eq!(
            "leader=1,follower=22".parse::<Pids>(),
            Ok(Pids(vec![("leader".into(), 1), ("follower".into(), 22)]))
        );
        assert!("leader".parse::<Pids>().is_err());
        assert!("leader=x".parse::<Pids>().is_err());
    }

    #[test]
    fn this_process_shows_up_in_a_cpu_report() {
        let before = CpuSample::take(&Pids::default());
        let after = CpuSample::take(&Pids::default());
        assert!(after.report_since(&before).contains("bench "));
    }

    #[test]
    fn fsync_report_divides_by_writes_and_rounds() {
        let a = Fsyncs {
            rounds: 10.0,
            seconds: 1.0,
        };
        let b = Fsyncs {
            rounds: 30.0,
            seconds: 1.04,
        };
        assert_eq!(
            b.report_since(&a, "leader", 1000),
            "leader: 20 fsync rounds (20 per 1000 writes), mean fsync 2.00 ms"
        );
    }
}
