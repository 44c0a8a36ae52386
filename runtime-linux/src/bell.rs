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
        self.sleepers.fetch_add(1, SeqCst);
        if self.count.load(SeqCst) == seen {
            let timeout = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: FUTEX_WAIT on a live, aligned 32-bit word with a relative timeout; the
            // kernel only compares the word and sleeps. EAGAIN (the word changed), EINTR and
            // ETIMEDOUT all mean: poll again.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.count.as_ptr(),
                    libc::FUTEX_WAIT,
                    seen,
                    &timeout as *const libc::timespec,
                    std::ptr::null::<u32>(),
                    0u32,
                );
            }
        }
        self.sleepers.fetch_sub(1, SeqCst);
    }

    /// Rings: a sleeper wakes, and one about to sleep does not.
    pub fn ring(&self) {
        self.count.fetch_add(1, SeqCst);
        if self.sleepers.load(SeqCst) != 0 {
            // SAFETY: FUTEX_WAKE on a live, aligned 32-bit word; it only wakes sleepers.
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
