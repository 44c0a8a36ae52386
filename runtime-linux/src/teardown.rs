//! The teardown of a replica's memory at idle priority, even when the replica is SIGKILLed.
//!
//! When a process dies, its last thread to exit unmaps its memory before the process is gone:
//! for a replica (its region, the peers' regions, its client port, its store, all locked:
//! 140 MB in `mu failover` while each plane mapped the peers on its own) that was 35,000 small
//! pages and 2-5 ms of kernel time.
//! On a kernel without preemption, with fewer cores than threads, the survivors' planes woken on
//! that core wait it out: scheduler traces of `mu failover` on a 2-core host showed the whole
//! fail-over run beside it, on the other core. Huge pages ([`crate::mem::collapse`]) make the
//! unmapping shorter; this takes what is left off the survivors' way.
//!
//! So each replica starts a reaper: a process that shares the replica's memory (`CLONE_VM`),
//! runs at `SCHED_IDLE` and does nothing but wait for the replica to exit. The replica's own
//! threads then only drop their reference to the memory as they die; the reaper, the last user,
//! unmaps it at idle priority, which every other thread preempts at the kernel's next
//! rescheduling point. Those points can be 2 ms apart in the unmapping, so the reaper first
//! waits out the fail-over that the death starts (`SETTLE`).
//!
//! Invariants:
//! - The reaper shares the memory and nothing else: before anything else it closes every
//!   descriptor it inherited but the replica's pidfd, so no socket, lock or region file
//!   outlives the replica's own exit (a verbs peer learns of a death from a closed handshake
//!   socket; a successor reclaims a region by its owner mutex).
//! - It makes raw system calls only, with every signal blocked: it runs on the replica's heap
//!   and thread-local storage, so it must not allocate, take a lock, or run a signal handler
//!   installed by the replica (a SIGTERM meant for a replica stops the replica; its reaper
//!   follows it).
//! - It exits only once the replica's pidfd is readable, that is once every thread of the
//!   replica has left the memory, and `SETTLE` after that.

use std::io;

/// The reaper's stack: it only makes system calls.
const REAPER_STACK: usize = 16 * 1024;

/// How long the reaper waits after the replica's exit before it unmaps the memory: past the
/// fail-over that the death starts (a few ms at worst on a 2-core host). Once begun, the
/// unmapping keeps its core for 0.2 to 2 ms, idle priority or not: a kernel without preemption
/// (`preempt=none`) switches only where the kernel code allows it, and the unmapping of a
/// replica's memory (some 3,500 small pages besides the huge ones) rarely does. Traced on a
/// 2-core host, such a stretch held a survivor's thread or the client off their core in the
/// middle of one fail-over in ten.
const SETTLE: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 100_000_000,
};

/// Starts the reaper of the calling process's memory (see the module's docs).
///
/// An error leaves the process as it was: its memory is then torn down by its last thread.
pub fn start_idle_reaper() -> io::Result<()> {
    // SAFETY: getpid has no preconditions; pidfd_open takes two integers (our own pid, no
    // flags), touches no memory of ours, and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Lives as long as the reaper, which outlives every thread of this process.
    // 16-byte words, so that the top of the stack is aligned as both ABIs want.
    let stack: &'static mut [u128] = Vec::leak(vec![0u128; REAPER_STACK / 16]);
    let top = stack.as_mut_ptr_range().end;
    // SAFETY: the child runs `reap` inside this address space (`CLONE_VM`) on `stack`, which is
    // leaked, so it stays valid for as long as the child runs, and which nothing else uses;
    // `top` is its end, 16-byte aligned (the slice's element type), since the stack grows down.
    // `reap` touches only its own frame and the `SETTLE` constant, and makes raw system calls
    // only (the module's invariants), so it races with no thread of this process. Its argument
    // is the descriptor number, passed by value, not a pointer.
    let child = unsafe {
        libc::clone(
            reap,
            top.cast(),
            libc::CLONE_VM | libc::SIGCHLD,
            pidfd as usize as *mut libc::c_void,
        )
    };
    let cloned = if child < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // The reaper holds its own copy of the pidfd.
    // SAFETY: `pidfd` is the descriptor pidfd_open returned above; no `File` or `OwnedFd` owns
    // it, so closing it here cannot close a descriptor something else still uses.
    unsafe { libc::close(pidfd as libc::c_int) };
    cloned
}

/// The reaper: sheds the replica's descriptors, drops to `SCHED_IDLE`, then waits for the
/// replica (`arg`: its pidfd) to exit.
extern "C" fn reap(arg: *mut libc::c_void) -> libc::c_int {
    let pidfd = arg as usize as libc::c_uint;
    // SAFETY: every call below is `libc::syscall`, a raw system call with no allocation and no
    // lock, on plain values and on pointers to locals of this frame (`all`, `idle`, `ready`)
    // or to the constant `SETTLE`, each valid for the call and of the type and size the kernel
    // reads or writes (`rt_sigprocmask` reads the 8 bytes of `all`, `ppoll` writes `revents`
    // of `ready`); null pointers only where the call takes them. `close_range` closes the
    // reaper's own copies of the inherited descriptors (no `CLONE_FILES`: the replica's table
    // is untouched). A failing call writes errno in the thread-local storage of the thread
    // that started the reaper (the reaper shares its TLS pointer); none of these calls fail on
    // a kernel with pidfds except `close_range` before Linux 5.9, after which the reaper exits
    // at once.
    unsafe {
        // The kernel's signal set: one bit per signal, 64 of them.
        let all: u64 = !0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            core::ptr::null_mut::<u64>(),
            core::mem::size_of::<u64>(),
        );
        let below = if pidfd == 0 {
            0
        } else {
            libc::syscall(libc::SYS_close_range, 0, pidfd - 1, 0)
        };
        let above = libc::syscall(libc::SYS_close_range, pidfd + 1, libc::c_uint::MAX, 0);
        if below != 0 || above != 0 {
            // Holding the replica's sockets and files past its death would delay what peers
            // learn from their closing: leave the teardown to the replica.
            return 1;
        }
        let idle = libc::sched_param { sched_priority: 0 };
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_IDLE,
            &idle as *const libc::sched_param,
        );
        let mut ready = libc::pollfd {
            fd: pidfd as libc::c_int,
            events: libc::POLLIN,
            revents: 0,
        };
        while ready.revents == 0 {
            let waited = libc::syscall(
                libc::SYS_ppoll,
                &mut ready as *mut libc::pollfd,
                1,
                core::ptr::null::<libc::timespec>(),
                core::ptr::null::<libc::sigset_t>(),
                0,
            );
            if waited < 0 {
                return 1;
            }
        }
        libc::syscall(
            libc::SYS_nanosleep,
            &SETTLE as *const libc::timespec,
            core::ptr::null_mut::<libc::timespec>(),
        );
    }
    0
}
