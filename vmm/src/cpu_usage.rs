//! The CPU time each of the VMM's threads used, read from /proc/self/task, so that a run can
//! report how much went to device emulation (the event-loop thread) and how much to the guest
//! (the vCPU threads, whose time includes running guest code).

use std::time::Duration;

/// CPU time (user + system) of one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCpu {
    /// The thread's name (`comm`).
    pub name: String,
    /// User plus system time.
    pub cpu: Duration,
}

/// Parses a `/proc/.../stat` line: `comm` is in parentheses and may itself contain spaces or
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str, ticks_per_sec: u64) -> Option<ThreadCpu> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    // After ")": state (field 3), ..., utime (14), stime (15).
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    let millis = ticks.checked_mul(1000)? / ticks_per_sec.max(1);
    Some(ThreadCpu {
        name,
        cpu: Duration::from_millis(millis),
    })
}

/// The CPU time of every thread of this process; empty if /proc cannot be read.
pub fn threads() -> Vec<ThreadCpu> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).unwrap_or(100);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat, ticks))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let stat = "42 (kiln (x) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        let t = parse_stat(stat, 100).unwrap();
        assert_eq!(t.name, "kiln (x) 1");
        assert_eq!(t.cpu, Duration::from_millis(3000));
        assert_eq!(parse_stat("garbage", 100), None);
    }

    #[test]
    fn reads_this_process() {
        let threads = threads();
        assert!(!threads.is_empty());
    }
}
