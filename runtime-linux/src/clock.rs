//! Time: the core's ticks from `CLOCK_MONOTONIC`, and the invariant TSC for latency figures.

use std::time::Duration;

/// `CLOCK_MONOTONIC` in nanoseconds; the same clock in every process of the host.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which points at `ts`, a
    // live local; CLOCK_MONOTONIC is always supported.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The core's clock: monotonic time in ticks of `tick_ns`.
#[derive(Clone, Copy, Debug)]
pub struct Ticker {
    tick_ns: u64,
}

impl Ticker {
    /// Ticks of `tick_ns` nanoseconds (at least 1).
    pub fn new(tick_ns: u64) -> Ticker {
        Ticker {
            tick_ns: tick_ns.max(1),
        }
    }

    /// Now, in ticks.
    pub fn now(&self) -> u64 {
        self.at(monotonic_ns())
    }

    /// `CLOCK_MONOTONIC` time `ns`, in ticks.
    pub fn at(&self, ns: u64) -> u64 {
        ns / self.tick_ns
    }
}

/// A cycle counter read at the start of a measured interval (`lfence; rdtsc`).
#[inline]
pub fn cycles_start() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `lfence` needs SSE2 and `rdtsc` needs the TSC, both part of every x86_64 CPU
    // (SSE2 is in the x86_64 target's baseline); neither touches memory.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    monotonic_ns()
}

/// A cycle counter read at the end of a measured interval (`rdtscp; lfence`).
#[inline]
pub fn cycles_end() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `lfence` is part of every x86_64 CPU (SSE2); `__rdtscp` writes the TSC_AUX value
    // into `aux`, a live local, and touches no other memory. It needs the RDTSCP feature (AMD
    // since K8 revision F, 2006; Intel since Nehalem, 2008); on an older CPU the instruction
    // faults (SIGILL) and the process ends, without any access to memory.
    unsafe {
        let mut aux = 0u32;
        let t = core::arch::x86_64::__rdtscp(&mut aux);
        core::arch::x86_64::_mm_lfence();
        t
    }
    #[cfg(not(target_arch = "x86_64"))]
    monotonic_ns()
}

/// Cycles per second of [`cycles_start`]'s counter, measured against `CLOCK_MONOTONIC`.
pub fn cycles_per_second() -> f64 {
    let (c0, t0) = (cycles_start(), monotonic_ns());
    std::thread::sleep(Duration::from_millis(50));
    let (c1, t1) = (cycles_end(), monotonic_ns());
    (c1 - c0) as f64 * 1e9 / (t1 - t0).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward() {
        let ticker = Ticker::new(1000);
        let (a, c) = (ticker.now(), cycles_start());
        std::thread::sleep(Duration::from_millis(2));
        assert!(ticker.now() >= a + 1000);
        assert!(cycles_end() > c);
        assert!(cycles_per_second() > 1e6);
    }
}
