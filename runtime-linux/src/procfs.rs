//! What `/proc` and `/sys` tell about processes and cores: whether a process is alive, stopped or
//! dead (the shared-memory fabric's fencing depends on it), and which cores are isolated.

use std::fs;

/// What a process is doing, as far as fencing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Running, runnable or sleeping: it will finish what it is doing.
    Running,
    /// Stopped by a signal or a debugger: it may stay in the middle of a copy forever.
    Stopped,
    /// Gone, a zombie, or another process now holds the pid.
    Dead,
}

/// The state and start time (clock ticks since boot) in a `/proc` stat file: a process's
/// (`/proc/<pid>/stat`) or one of its threads' (`/proc/<pid>/task/<tid>/stat`).
fn stat_file(path: &str) -> Option<(char, u64)> {
    let text = fs::read_to_string(path).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state come fields 4..=21; the start time is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn stat(pid: u32) -> Option<(char, u64)> {
    stat_file(&format!("/proc/{pid}/stat"))
}

/// What a task state letter means for fencing.
fn classify(state: char) -> Liveness {
    match state {
        'Z' | 'X' | 'x' => Liveness::Dead,
        'T' | 't' => Liveness::Stopped,
        _ => Liveness::Running,
    }
}

/// The start time of this process, which together with the pid names it uniquely.
pub fn own_start_time() -> u64 {
    stat(std::process::id()).map_or(0, |(_, start)| start)
}

/// Whether the process `pid` that started at `start` still exists and what it is doing.
pub fn liveness(pid: u32, start: u64) -> Liveness {
    match stat(pid) {
        Some((state, started)) if started == start => classify(state),
        _ => Liveness::Dead,
    }
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub fn is_running(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| classify(state) != Liveness::Dead)
}

/// Like [`liveness`], for the thread `tid` of the process: a debugger may stop one thread and
/// leave the others running, and the main thread may end before the others. The process's start
/// time still names it; the thread's own state decides. A thread that no longer exists is dead.
pub fn thread_liveness(pid: u32, start: u64, tid: u32) -> Liveness {
    if tid == 0 {
        return liveness(pid, start);
    }
    if stat(pid).is_none_or(|(_, started)| started != start) {
        return Liveness::Dead;
    }
    stat_file(&format!("/proc/{pid}/task/{tid}/stat"))
        .map_or(Liveness::Dead, |(state, _)| classify(state))
}

/// Cores the kernel keeps the scheduler (`isolcpus`) or the tick (`nohz_full`) away from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IsolatedCores {
    /// From `/sys/devices/system/cpu/isolated` (the `isolcpus=` boot parameter).
    pub isolated: Vec<usize>,
    /// From `/sys/devices/system/cpu/nohz_full`.
    pub nohz_full: Vec<usize>,
}

impl IsolatedCores {
    /// Reads both lists; a missing file reads as "none".
    pub fn detect() -> IsolatedCores {
        let read = |path: &str| {
            fs::read_to_string(path)
                .ok()
                .and_then(|text| parse_cpu_list(text.trim()))
                .unwrap_or_default()
        };
        IsolatedCores {
            isolated: read("/sys/devices/system/cpu/isolated"),
            nohz_full: read("/sys/devices/system/cpu/nohz_full"),
        }
    }

    /// One line for start-up logs.
    pub fn describe(&self) -> String {
        let list = |cores: &[usize]| {
            if cores.is_empty() {
                "none".to_string()
            } else {
                format_cpu_list(cores)
            }
        };
        format!(
            "isolated cores (isolcpus): {}; nohz_full: {}",
            list(&self.isolated),
            list(&self.nohz_full)
        )
    }
}

/// Parses the kernel's cpu list format (`"2-5,8,10-11"`); `None` when malformed.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cores = Vec::new();
    if text.is_empty() || text == "(null)" {
        return Some(cores);
    }
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                cores.extend(a..=b);
            }
            None => cores.push(part.parse().ok()?),
        }
    }
    Some(cores)
}

/// Formats cores back into the kernel's compact list format.
pub fn format_cpu_list(cores: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cores.len() {
        let mut j = i;
        while j + 1 < cores.len() && cores[j + 1] == cores[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cores[i].to_string()
        } else {
            format!("{}-{}", cores[i], cores[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(
            parse_cpu_list("2-5,8,10-11"),
            Some(vec![2, 3, 4, 5, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("5-2"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(format_cpu_list(&[2, 3, 4, 5, 8, 10, 11]), "2-5,8,10-11");
    }

    #[test]
    fn this_process_is_running_and_a_child_can_be_stopped_and_reaped() {
        let me = std::process::id();
        assert_eq!(liveness(me, own_start_time()), Liveness::Running);
        assert_eq!(liveness(me, own_start_time() + 1), Liveness::Dead);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = stat(pid).unwrap().1;
        // SAFETY: kill(2) takes two integers and touches no memory; `pid` is our own child,
        // not yet reaped (`child` still owns it), so no other process can have its pid.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let stopped = (0..1000).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            liveness(pid, start) == Liveness::Stopped
        });
        assert!(stopped);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(liveness(pid, start), Liveness::Dead);
    }
}
