//! Doorbells: a plane that rests between polls (`shared` polling) sleeps on a futex word instead
//! of a timer, and whoever hands it work rings it, so that a permission request, grant, ack or
//! a peer's death is acted on within microseconds instead of at the end of a sleep.
//!
//! A bell is two 32-bit words in shared memory (the control page of a replica's region file, so
//! that peers' processes ring it too): a counter that every ring bumps, and the number of
//! threads asleep on it. The futex calls are process-shared (no `FUTEX_PRIVATE_FLAG`).
//!
//! # Invariants
//! - No lost wake-up: a sleeper registers in `sleepers`, then sleeps only while the counter still
//!   holds the value it read before its poll; a ringer bumps the counter, then wakes if anybody
//!   is registered. All four accesses are `SeqCst`, so either the ringer sees the sleeper or the
//!   sleeper sees the new count (and `FUTEX_WAIT` refuses to sleep on a changed word).
//! - A sleep always has a timeout: a lost or missing ring costs at most the rest it replaces.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use crate::mem::Mapping;

/// One doorbell: the two words it lives in.
#[derive(Clone, Copy)]
pub struct Bell<'a> {
    count: &'a AtomicU32,
    sleepers: &'a AtomicU32,
}

impl<'a> Bell<'a> {
    /// The bell over `count` and `sleepers` (words of a shared mapping, or of this process).
    pub fn new(count: &'a AtomicU32, sleepers: &'a AtomicU32) -> Bell<'a> {
        Bell { count, sleepers }
    }

    /// The bell whose two words lie at `offset` and `offset + 4` of `mapping`.
    pub fn in_mapping(mapping: &'a Mapping, offset: usize) -> Bell<'a> {
        Bell::new(mapping.word32(offset), mapping.word32(offset + 4))
    }

    /// What a sleeper passes to [`Bell::sleep`]: read it before the poll whose outcome decides
    /// whether to sleep, so that a ring during the poll is not missed.
    pub fn seen(&self) -> u32 {
        self.count.load(SeqCst)
    }

    /// Sleeps until the bell rings after `seen` was read, or `timeout` passes.
    pub fn sleep(&self, seen: u32, timeout: Duration) {
        self.sleep_or(seen, &mut Vec::new(), timeout);
    }

    /// Sleeps as [`Bell::sleep`] does, and also until one of `others` is woken or no longer
    /// holds its value (one `futex_waitv`). On a kernel without `futex_waitv` (before Linux
    /// 5.16) it sleeps on the bell alone.
    pub fn sleep_or(&self, seen: u32, others: &mut Vec<FutexWaitv>, timeout: Duration) {
        self.sleepers.fetch_add(1, SeqCst);
        if self.count.load(SeqCst) == seen {
            let slept = !others.is_empty() && {
                others.push(FutexWaitv::new(self.count, seen));
                futex_wait_any(others, timeout)
            };
            if !slept {
                futex_wait(self.count, seen, timeout);
            }
        }
        self.sleepers.fetch_sub(1, SeqCst);
    }

    /// Whether a thread sleeps on the bell (or is about to).
    pub fn has_sleepers(&self) -> bool {
        self.sleepers.load(SeqCst) != 0
    }

    /// Rings: a sleeper wakes, and one about to sleep does not.
    pub fn ring(&self) {
        self.count.fetch_add(1, SeqCst);
        if self.sleepers.load(SeqCst) != 0 {
            // SAFETY: `self.count` is a live, 4-aligned `AtomicU32` (borrowed for `'a`);
            // FUTEX_WAKE only uses its address to find sleepers and reads no other argument
            // but the count (the null pointers are ignored).
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.count.as_ptr(),
                    libc::FUTEX_WAKE,
                    i32::MAX,
                    std::ptr::null::<libc::timespec>(),
                    std::ptr::null::<u32>(),
                    0u32,
                );
            }
        }
    }
}

/// One entry of `futex_waitv(2)`'s array: sleep while a 32-bit word holds a value.
#[repr(C)]
pub struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// A 32-bit futex shared between processes (no `FUTEX_PRIVATE_FLAG`).
const FUTEX2_SIZE_U32: u32 = 2;

impl FutexWaitv {
    /// Sleep while `word` (a word that other processes may share) holds `value`.
    pub fn new(word: &AtomicU32, value: u32) -> FutexWaitv {
        FutexWaitv {
            val: value as u64,
            uaddr: word.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
        }
    }
}

/// Sleeps while `word` holds `value`, until woken or `timeout` passes.
fn futex_wait(word: &AtomicU32, value: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, 4-aligned `AtomicU32`, which FUTEX_WAIT only reads (an atomic
    // compare in the kernel); `timeout` is a live local timespec it only reads (relative);
    // the last two arguments are ignored. EAGAIN (the word changed), EINTR and ETIMEDOUT all
    // mean: poll again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            value,
            &timeout as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Sleeps until one of `waits` is woken or no longer holds its value, or `timeout` passes.
/// False when the kernel has no `futex_waitv` (nothing slept).
fn futex_wait_any(waits: &[FutexWaitv], timeout: Duration) -> bool {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which points at `now`, a
    // live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let nanos = now.tv_nsec as u64 + timeout.as_nanos() as u64;
    let until = libc::timespec {
        tv_sec: now.tv_sec + (nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: the kernel reads `waits.len()` entries of the `struct futex_waitv` layout
    // (`FutexWaitv` is `#[repr(C)]` with its fields) from `waits`, a live slice, and `until`,
    // a live local timespec; it only reads and compares the 32-bit words the entries name (an
    // address that is no longer mapped fails the call with EFAULT, it writes nothing there).
    // Every error but ENOSYS (EAGAIN: a word changed; ETIMEDOUT; EINTR) means: look again.
    let woke = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            waits.as_ptr(),
            waits.len() as libc::c_uint,
            0u32,
            &until as *const libc::timespec,
            libc::CLOCK_MONOTONIC,
        )
    };
    !(woke < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_ring_wakes_a_sleeper_long_before_its_timeout() {
        let (count, sleepers) = (AtomicU32::new(0), AtomicU32::new(0));
        let bell = Bell::new(&count, &sleepers);
        let start = Instant::now();
        std::thread::scope(|scope| {
            let seen = bell.seen();
            let sleeper = scope.spawn(move || bell.sleep(seen, Duration::from_secs(10)));
            while sleepers.load(SeqCst) == 0 {
                std::thread::yield_now();
            }
            bell.ring();
            sleeper.join().unwrap();
        });
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_ring_before_the_sleep_is_not_lost() {
        let (count, sleepers) = (AtomicU32::new(0), AtomicU32::new(0));
        let bell = Bell::new(&count, &sleepers);
        let seen = bell.seen();
        bell.ring();
        let start = Instant::now();
        bell.sleep(seen, Duration::from_secs(10));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(sleepers.load(SeqCst), 0);
    }

    #[test]
    fn without_a_ring_the_sleep_ends_at_its_timeout() {
        let (count, sleepers) = (AtomicU32::new(0), AtomicU32::new(0));
        let bell = Bell::new(&count, &sleepers);
        let start = Instant::now();
        bell.sleep(bell.seen(), Duration::from_millis(20));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
