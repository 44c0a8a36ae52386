//! Memory that other processes change under our feet: a mapped shared-memory file, and byte
//! copies in and out of it.
//!
//! Every access to mapped bytes goes through relaxed atomics, never through Rust references to
//! plain bytes, because other processes write them at any time (a plain `memcpy` over them would
//! be a data race). Relaxed is enough: the core checks every slot and record it reads, and the
//! fabric orders what it must with `SeqCst` accesses to its control words.
//!
//! # Invariants
//! - A `Mapping` is valid for `len` bytes from `base` until it is dropped; `len` is a multiple of
//!   the page size; a mapping of at least a huge page starts on a huge-page boundary.
//! - Copies stay inside the bounds the caller checked; the `unsafe` here is confined to pointer
//!   arithmetic inside those bounds and to `mmap`/`munmap`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// A shared, writable mapping of a whole file.
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` owns its address range (only its `Drop` unmaps it), which is plain shared
// memory with no tie to the thread that mapped it, so any thread may own and drop it.
unsafe impl Send for Mapping {}
// SAFETY: through `&Mapping` a thread gets only atomics (`word`, `word32`), which are `Sync`,
// and raw pointers (`at`) whose every use is `unsafe` and atomic (`copy`); nothing mutates the
// `Mapping` itself.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file`, shared and writable, populated up front so that the
    /// hot path takes no page faults.
    ///
    /// A mapping of at least a huge page starts on a huge-page boundary, so that the parts of
    /// the file that [`Mapping::collapse`] made huge are mapped with one page-table entry each.
    pub fn map(file: &File, len: usize) -> io::Result<Mapping> {
        assert!(len > 0 && len % page_size() == 0);
        let at = match huge_page_size() {
            Some(huge) if len >= huge => reserve_aligned(len, huge)?,
            _ => std::ptr::null_mut(),
        };
        let fixed = if at.is_null() { 0 } else { libc::MAP_FIXED };
        // SAFETY: a fresh mapping of `len` bytes of a file we hold open across the call, either
        // where the kernel picks (a null hint) or with MAP_FIXED over the reservation that
        // `reserve_aligned` just made for exactly `len` bytes, so MAP_FIXED replaces no memory
        // but ours, which nothing uses yet.
        let base = unsafe {
            libc::mmap(
                at.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE | fixed,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            if !at.is_null() {
                // SAFETY: unmaps exactly the reservation `reserve_aligned` made (`at`, `len`),
                // which nothing else uses; the failed mmap left it in place.
                unsafe { libc::munmap(at.cast(), len) };
            }
            return Err(error);
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        assert!(at.is_null() || base.as_ptr() == at);
        Ok(Mapping { base, len })
    }

    /// Asks the kernel to hold the file's whole huge pages that this mapping covers in huge
    /// pages, now (`MADV_COLLAPSE`, Linux 6.1); for the process that creates the file, before
    /// others map it.
    ///
    /// Why: a replica's locked mappings (its region, every peer's, its client port) are tens of
    /// thousands of small pages, and the kernel unmaps them one by one when it exits, in the
    /// way of the survivors' fail-over on a host with few cores; in huge pages they are a few
    /// dozen entries, and the leader's writes into its followers' logs miss the TLB less.
    /// An error leaves small pages, which work the same.
    pub fn collapse(&self) -> io::Result<()> {
        collapse(self.base.as_ptr(), self.len)
    }

    /// The 64-bit word at byte `offset` (8-aligned).
    pub fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.len);
        // SAFETY: `offset + 8 <= len` (asserted): inside the mapping; 8-aligned, since
        // `offset` is a multiple of 8 and the mapping starts on a page boundary; readable and
        // writable for as long as `self` lives, which the returned borrow cannot outlive; other
        // accesses to mapped bytes are atomic (the module's rule).
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast::<u64>()) }
    }

    /// The 32-bit word at byte `offset` (4-aligned).
    pub fn word32(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= self.len);
        // SAFETY: as in `word`: `offset + 4 <= len` (asserted), 4-aligned, mapped readable and
        // writable while the borrow of `self` lasts, accessed only atomically.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    /// Pointer to byte `offset`, for [`copy`]; the caller keeps within `len`.
    pub fn at(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.len);
        // SAFETY: `offset <= len` (asserted): inside the mapping or one past its end, which
        // `add` allows; the result is only an address (using it is `copy`'s business).
        unsafe { self.base.as_ptr().add(offset) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `map` mapped, once. Every atomic handed out borrows
        // `self`, so none outlives it; pointers from `at` may be used only under `copy`'s
        // contract, which asks for a live mapping.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The size of the kernel's huge pages for memory mapped whole by one page-table entry, if it
/// has them.
pub fn huge_page_size() -> Option<usize> {
    static SIZE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&size| size > page_size() && size.is_power_of_two())
    })
}

/// Reserves `len` bytes of address space starting on an `align` boundary, for a `MAP_FIXED`
/// mapping over them.
fn reserve_aligned(len: usize, align: usize) -> io::Result<*mut u8> {
    let span = len + align;
    // SAFETY: a fresh inaccessible anonymous mapping where the kernel picks (null hint, no
    // MAP_FIXED), so it cannot replace any existing memory.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = base as usize;
    let aligned = start.next_multiple_of(align);
    let head = aligned - start;
    let tail = span - head - len;
    // SAFETY: `head` bytes from `base` and `tail` bytes from `aligned + len` both lie inside the
    // `span` bytes just reserved (`head + len + tail == span`), which nothing else uses.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    Ok(aligned as *mut u8)
}

/// Asks the kernel to back the whole huge pages inside `[base, base + len)` with huge pages,
/// now (`MADV_COLLAPSE`) and when they are first touched (`MADV_HUGEPAGE`, for anonymous memory
/// not yet populated); see [`Mapping::collapse`]. Memory outside whole huge pages, and all of it
/// on a kernel without huge pages, stays as it was.
pub fn collapse(base: *mut u8, len: usize) -> io::Result<()> {
    let Some(huge) = huge_page_size() else {
        return Ok(());
    };
    let start = (base as usize).next_multiple_of(huge);
    let end = (base as usize + len) / huge * huge;
    if end <= start {
        return Ok(());
    }
    let advise = |advice| {
        // SAFETY: MADV_HUGEPAGE and MADV_COLLAPSE never change what memory holds or where it
        // is mapped, whatever the range (a range with unmapped pages fails with ENOMEM), so
        // this is sound for any `base` and `len`; the call reads no memory of ours.
        match unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    };
    // Not every kernel lets shared memory take the hint; the collapse still works there.
    let _ = advise(libc::MADV_HUGEPAGE);
    advise(libc::MADV_COLLAPSE)
}

/// The system's page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf takes an integer name and touches no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Copies `len` bytes from `src` to `dst` (both mapped memory, as a rule) with relaxed atomic
/// accesses: words when both are equally aligned, bytes otherwise.
///
/// # Safety
/// Both ranges must be valid for reads and writes of `len` bytes for the whole call (memory of
/// a live [`Mapping`], which is mapped readable and writable, or a buffer of the caller's), and
/// every other access to them meanwhile, by any thread or process, must be atomic.
pub unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
    let mut i = 0;
    if (src as usize) % 8 == (dst as usize) % 8 {
        while i < len && (src as usize + i) % 8 != 0 {
            // SAFETY: `i < len`, inside both ranges (the caller's promise).
            unsafe { copy_byte(src, dst, i) };
            i += 1;
        }
        while i + 8 <= len {
            // SAFETY: `i + 8 <= len`, so both words lie inside the ranges the caller promised
            // valid for reads and writes for the whole call; both are 8-aligned (the loop above
            // aligned `src`, and `dst` has the same alignment); every other access to them is
            // atomic (the caller's promise).
            let (s, d) = unsafe {
                (
                    AtomicU64::from_ptr(src.add(i).cast_mut().cast::<u64>()),
                    AtomicU64::from_ptr(dst.add(i).cast::<u64>()),
                )
            };
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
            i += 8;
        }
    }
    while i < len {
        // SAFETY: `i < len`, inside both ranges (the caller's promise).
        unsafe { copy_byte(src, dst, i) };
        i += 1;
    }
}

/// Copies byte `i` from `src` to `dst` with relaxed atomic accesses.
///
/// # Safety
/// `src + i` and `dst + i` must be bytes of ranges as [`copy`] requires them.
unsafe fn copy_byte(src: *const u8, dst: *mut u8, i: usize) {
    // SAFETY: both bytes are valid for reads and writes for the whole call, and accessed by
    // others only atomically (the caller's promise); a byte is always aligned.
    let (s, d) = unsafe {
        (
            AtomicU8::from_ptr(src.add(i).cast_mut()),
            AtomicU8::from_ptr(dst.add(i)),
        )
    };
    d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Copies `src`, a buffer of this thread's, into mapped memory at `dst` with relaxed atomic
/// stores: words once `dst` is 8-aligned, bytes around them.
///
/// `src` is read plainly: the atomics that [`copy`] uses on both sides need memory valid for
/// writes, which a shared slice is not.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes for the whole call (memory of a live
/// [`Mapping`], as a rule), and every other access to them meanwhile must be atomic.
pub unsafe fn copy_in(src: &[u8], dst: *mut u8) {
    let len = src.len();
    let mut i = 0;
    while i < len && (dst as usize + i) % 8 != 0 {
        // SAFETY: `i < len`: inside the range the caller promised; a byte is aligned.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(src[i], Ordering::Relaxed);
        i += 1;
    }
    while i + 8 <= len {
        let word = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
        // SAFETY: `i + 8 <= len`: inside the range the caller promised, 8-aligned (the loop
        // above); other accesses to it are atomic (the caller's promise).
        unsafe { AtomicU64::from_ptr(dst.add(i).cast::<u64>()) }.store(word, Ordering::Relaxed);
        i += 8;
    }
    while i < len {
        // SAFETY: as in the first loop.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(src[i], Ordering::Relaxed);
        i += 1;
    }
}

/// Copies mapped memory at `src` into `dst`, a buffer of this thread's, with relaxed atomic
/// loads: words once `src` is 8-aligned, bytes around them.
///
/// # Safety
/// `src` must be valid for reads and writes of `dst.len()` bytes for the whole call (memory of a
/// live [`Mapping`], which is mapped readable and writable), and every other access to them
/// meanwhile must be atomic. `AtomicU8::from_ptr` asks for writable memory even to load.
pub unsafe fn copy_out(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let mut i = 0;
    while i < len && (src as usize + i) % 8 != 0 {
        // SAFETY: `i < len`: inside the range the caller promised; a byte is aligned.
        dst[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        i += 1;
    }
    while i + 8 <= len {
        // SAFETY: `i + 8 <= len`: inside the range the caller promised, 8-aligned (the loop
        // above); other accesses to it are atomic (the caller's promise).
        let word = unsafe { AtomicU64::from_ptr(src.add(i).cast_mut().cast::<u64>()) }
            .load(Ordering::Relaxed);
        dst[i..i + 8].copy_from_slice(&word.to_ne_bytes());
        i += 8;
    }
    while i < len {
        // SAFETY: as in the first loop.
        dst[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LENGTHS: [usize; 9] = [0, 1, 7, 8, 9, 63, 64, 65, 150];

    /// Runs `f(from, to, len, src, dst)` for every alignment of both ends and every length, and
    /// checks that exactly `dst[to..to + len]` became `src[from..from + len]`.
    fn every_alignment_and_length(mut f: impl FnMut(usize, usize, usize, &mut [u8], &mut [u8])) {
        let mut src: Vec<u8> = (0..200u8).collect();
        for from in 0..9 {
            for to in 0..9 {
                for len in LENGTHS {
                    let mut dst = vec![0xEEu8; 200];
                    f(from, to, len, &mut src, &mut dst);
                    assert_eq!(&dst[to..to + len], &src[from..from + len]);
                    assert!(dst[..to].iter().all(|&b| b == 0xEE));
                    assert!(dst[to + len..].iter().all(|&b| b == 0xEE));
                }
            }
        }
    }

    #[test]
    fn copies_every_alignment_and_length() {
        every_alignment_and_length(|from, to, len, src, dst| {
            // SAFETY: both ranges are inside the local buffers (from, to < 9, len <= 150, of
            // 200 bytes), borrowed mutably for the call, so nothing else touches them.
            unsafe { copy(src.as_mut_ptr().add(from), dst.as_mut_ptr().add(to), len) };
        });
    }

    #[test]
    fn copies_in_and_out_at_every_alignment_and_length() {
        every_alignment_and_length(|from, to, len, src, dst| {
            // SAFETY: `to + len <= 200`: inside the local buffer, borrowed mutably for the call.
            unsafe { copy_in(&src[from..from + len], dst.as_mut_ptr().add(to)) };
        });
        every_alignment_and_length(|from, to, len, src, dst| {
            // SAFETY: `from + len <= 200`: inside the local buffer, borrowed mutably for the
            // call.
            unsafe { copy_out(src.as_mut_ptr().add(from), &mut dst[to..to + len]) };
        });
    }
}
