//! What a process costs, read from `/proc` (Linux): CPU time and resident memory, for
//! benchmarks that measure the nodes they started.

/// Clock ticks per second of `/proc/<pid>/stat` times (`CLK_TCK`, 100 on Linux).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of process `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm) " start at field 3 (state); utime and stime are 14 and 15.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// (busy, total) clock ticks over all cores so far, from the first line of `/proc/stat`
/// (idle and iowait count as not busy).
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Resident set size of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measurable() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
        let (busy, total) = machine_ticks();
        assert!(total > 0 && busy <= total);
    }
}
