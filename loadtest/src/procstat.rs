//! CPU time and memory of a process and its descendants, from /proc (Linux).
//!
//! CPU of a tree = for every live process in it, user + system time plus the time of its
//! children that already exited and were reaped (`cutime`, `cstime`). So Postfix's short-lived
//! workers count once they exit, through the master.

use std::collections::HashMap;

/// Linux reports times in clock ticks of 1/100 s (USER_HZ, fixed at 100 on every architecture
/// that matters here).
const TICKS_PER_SEC: f64 = 100.0;

struct Stat {
    ppid: u32,
    ticks: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Fields from 3 (state): ppid = 4, utime = 14, stime = 15, cutime = 16, cstime = 17.
    let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(Stat { ppid: n(4) as u32, ticks: n(14) + n(15) + n(16) + n(17) })
}

/// `root` and every live descendant.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(s) = stat(pid)
            {
                children.entry(s.ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// CPU seconds used by the tree so far.
pub fn cpu_seconds(root: u32) -> f64 {
    tree(root).into_iter().filter_map(stat).map(|s| s.ticks).sum::<u64>() as f64 / TICKS_PER_SEC
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Peak resident memory of `root` itself (VmHWM), in KiB.
pub fn peak_rss_kb(root: u32) -> u64 {
    status_kb(root, "VmHWM:")
}

/// Resident memory of the whole tree now, in KiB.
pub fn tree_rss_kb(root: u32) -> u64 {
    tree(root).into_iter().map(|p| status_kb(p, "VmRSS:")).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(tree(me).contains(&me));
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(me) > 0.0);
        assert!(peak_rss_kb(me) > 0);
        assert!(tree_rss_kb(me) > 0);
    }
}
