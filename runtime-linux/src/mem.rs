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

// SAFETY: the mapping is plain shared memory; every access to it is atomic (see the module doc).
unsafe impl Send for Mapping {}
// SAFETY: as above.
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
        // SAFETY: a fresh mapping of a file we hold open, either where the kernel picks or over
        // the reservation `reserve_aligned` made for exactly `len` bytes.
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
                // SAFETY: releases the reservation, which nothing else uses.
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
        // SAFETY: in bounds and aligned (the mapping is page-aligned); lives as long as `self`.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast::<u64>()) }
    }

    /// The 32-bit word at byte `offset` (4-aligned).
    pub fn word32(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= self.len);
        // SAFETY: in bounds and aligned; lives as long as `self`.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    /// Pointer to byte `offset`, for [`copy`]; the caller keeps within `len`.
    pub fn at(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.len);
        // SAFETY: in bounds (checked above).
        unsafe { self.base.as_ptr().add(offset) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped; no reference into it outlives `self`.
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
    // SAFETY: a fresh inaccessible anonymous mapping; the kernel picks the address.
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
    // SAFETY: both trims lie inside the reservation just made, which nothing else uses.
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
        // SAFETY: advice on memory the caller maps; neither changes its contents.
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
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Copies `len` bytes from `src` to `dst` with relaxed atomic accesses: words when both are
/// equally aligned, bytes otherwise.
///
/// # Safety
/// Both ranges must be valid for `len` bytes (mapped memory, or a local buffer nobody else
/// touches meanwhile).
pub unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
    let mut i = 0;
    if (src as usize) % 8 == (dst as usize) % 8 {
        while i < len && (src as usize + i) % 8 != 0 {
            copy_byte(src, dst, i);
            i += 1;
        }
        while i + 8 <= len {
            // SAFETY: in bounds (caller) and 8-aligned (loop above).
            let (s, d) = unsafe {
                (
                    AtomicU64::from_ptr(src.add(i) as *mut u64),
                    AtomicU64::from_ptr(dst.add(i).cast::<u64>()),
                )
            };
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
            i += 8;
        }
    }
    while i < len {
        copy_byte(src, dst, i);
        i += 1;
    }
}

fn copy_byte(src: *const u8, dst: *mut u8, i: usize) {
    // SAFETY: `copy`'s caller guarantees both ranges; `i` is inside them.
    let (s, d) = unsafe {
        (
            AtomicU8::from_ptr(src.add(i) as *mut u8),
            AtomicU8::from_ptr(dst.add(i)),
        )
    };
    d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_alignment_and_length() {
        let src: Vec<u8> = (0..200u8).collect();
        for from in 0..9 {
            for to in 0..9 {
                for len in [0, 1, 7, 8, 9, 63, 64, 65, 150] {
                    let mut dst = vec![0xEEu8; 200];
                    // SAFETY: both ranges are inside the local vectors.
                    unsafe { copy(src.as_ptr().add(from), dst.as_mut_ptr().add(to), len) };
                    assert_eq!(&dst[to..to + len], &src[from..from + len]);
                    assert!(dst[..to].iter().all(|&b| b == 0xEE));
                    assert!(dst[to + len..].iter().all(|&b| b == 0xEE));
                }
            }
        }
    }
}
