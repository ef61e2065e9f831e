//! The server's resource use, read from /proc (Linux), for per-connection and
//! per-delivery figures.

use anyhow::Context;

/// A sample of a process's memory and CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Resident set size, bytes.
    pub rss: u64,
    /// Of it, anonymous memory (heap and stacks: not the binary's pages, which every
    /// process running it shares), bytes.
    pub anon: u64,
    /// User + system CPU time, seconds.
    pub cpu: f64,
}

pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    let kib = |field: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{field} missing"))
    };
    let (rss_kib, anon_kib) = (kib("VmRSS:")?, kib("RssAnon:")?);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the ')'.
    let cpu = (ticks(11) + ticks(12)) as f64 / clock_ticks_per_second();
    Ok(Sample { rss: rss_kib * 1024, anon: anon_kib * 1024, cpu })
}

/// USER_HZ: 100 on every Linux this runs on (the kernel's ABI constant).
fn clock_ticks_per_second() -> f64 {
    100.0
}
