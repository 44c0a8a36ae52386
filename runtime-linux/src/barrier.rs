//! Asymmetric fences between processes, for the shared-memory fabric's permission handshake
//! (see `shm`): a writer's side costs no fence instruction, and the owner's rare side
//! (`revoke`, retiring a file) issues one system call that makes every thread of every
//! registered process pass a full fence (`membarrier(2)`, `MEMBARRIER_CMD_GLOBAL_EXPEDITED`,
//! Linux 4.16).
//!
//! Why: a writer's `SeqCst` marker store (a locked instruction on x86) waits until every store
//! before it left the core, and the leader's copies into a follower's log are stores to lines
//! that follower's core was polling. With the fence on every write, a 64 B commit with 3
//! replicas took 220 ns at p50 on this VM where it took 100 ns without (`mu-bench latency`, the
//! two builds alternating, in one of the host's phases where the two cores shared no cache).
//!
//! The argument, for a writer W that set its marker and then loaded the gate (program order,
//! kept by a compiler fence) and an owner O that closed the gate and then, after the barrier,
//! loaded the marker: the barrier's fence in W falls either before W's marker store, and then
//! W's gate load comes after O's gate store became visible, so W sees the gate closed; or after
//! it, and then the store is visible before the barrier returns, so O sees the marker and waits
//! for the copy. A thread not running meanwhile passed a full fence when it was switched out.
//!
//! # Invariants
//! - A process uses a writer's light side only when it registered (`registered`): the barrier
//!   reaches registered processes only.
//! - An owner advertises that it issues the barrier (`issues`) only when a first call succeeded;
//!   a later call that fails ends the process, which must not go on as though it had fenced.

use std::io;
use std::sync::OnceLock;

/// `membarrier(cmd, 0, 0)`.
fn membarrier(cmd: libc::c_int) -> io::Result<libc::c_long> {
    // SAFETY: membarrier takes integers only and touches no memory of ours.
    let result = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0u32, 0i32) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}

/// Registers this process for the barrier, once; true when its threads will take part in every
/// owner's barrier from now on, so that its writes may use the light side.
pub fn registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        issues() && membarrier(libc::MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED).is_ok()
    })
}

/// Whether this process can issue the barrier: the kernel has it, and a first call succeeded
/// (a seccomp filter, as in some containers, would refuse it).
pub fn issues() -> bool {
    static ISSUES: OnceLock<bool> = OnceLock::new();
    *ISSUES.get_or_init(|| {
        let supported = membarrier(libc::MEMBARRIER_CMD_QUERY)
            .is_ok_and(|commands| commands & libc::MEMBARRIER_CMD_GLOBAL_EXPEDITED as i64 != 0);
        supported && membarrier(libc::MEMBARRIER_CMD_GLOBAL_EXPEDITED).is_ok()
    })
}

/// Makes every running thread of every registered process pass a full fence before it returns.
/// Only for a process whose `issues()` was true.
pub fn fence_everyone() {
    assert!(issues(), "the barrier is issued only where it works");
    if let Err(error) = membarrier(libc::MEMBARRIER_CMD_GLOBAL_EXPEDITED) {
        // Writers count on this fence: going on without it could let a revoked write land.
        eprintln!("membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) failed after it worked: {error}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registering_needs_the_barrier_and_a_fence_returns() {
        assert!(!registered() || issues());
        if issues() {
            fence_everyone();
        }
    }
}
