//! Memory that other processes change under our feet: a mapped shared-memory file, and byte
//! copies in and out of it.
//!
//! Every access to mapped bytes is atomic, never through Rust references to plain bytes,
//! because other processes write them at any time (a plain `memcpy` over them would be a data
//! race). Relaxed is enough: the core checks every slot and record it reads, and the fabric
//! orders what it must with `SeqCst` accesses to its control words.
//!
//! Copies move 8-byte words on the 8-byte grid of addresses, eight words a loop step, and single
//! bytes only at unaligned edges: two instructions a word plus a little per step, the least
//! relaxed 64-bit atomics allow (LLVM never merges them into wider accesses). A copy of 256
//! bytes or more moves its middle in 16-byte moves instead, where the CPU documents those as
//! single-copy atomic (x86-64 with AVX, Intel or AMD): in inline assembly, whose every access
//! is, to any other, the atomic move of the two words it covers (`Move::lines`). Such a copy
//! into mapped memory also warms the bytes after it for the next write (a log's next slot).
//!
//! # Invariants
//! - A `Mapping` is valid for `len` bytes from `base` until it is dropped; `len` is a multiple of
//!   the page size; a mapping of at least a huge page starts on a huge-page boundary.
//! - Copies stay inside the bounds the caller checked; the `unsafe` here is confined to pointer
//!   arithmetic inside those bounds, to plain accesses of the caller's own buffer in `copy_in`
//!   and `copy_out`, to 16-byte moves at 16-aligned mapped addresses only on CPUs that make
//!   those atomic (`atomic_16_byte_moves`), to prefetches (which access nothing), and to
//!   `mmap`/`munmap`.

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
    #[inline]
    pub fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.len);
        // SAFETY: `offset + 8 <= len` (asserted): inside the mapping; 8-aligned, since
        // `offset` is a multiple of 8 and the mapping starts on a page boundary; readable and
        // writable for as long as `self` lives, which the returned borrow cannot outlive; other
        // accesses to mapped bytes are atomic (the module's rule).
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast::<u64>()) }
    }

    /// The 32-bit word at byte `offset` (4-aligned).
    #[inline]
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
/// accesses: words when both are equally aligned, bytes otherwise (the core's layout aligns its
/// areas, slots and records on 8 bytes, so words are the rule).
///
/// # Safety
/// Both ranges must be valid for reads and writes of `len` bytes for the whole call (memory of
/// a live [`Mapping`], which is mapped readable and writable, or a buffer of the caller's), and
/// every other access to them meanwhile, by any thread or process, must be atomic.
pub unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
    if (src as usize ^ dst as usize) % 8 == 0 {
        // SAFETY: the caller's promise; `src`, the side the words are aligned on, has the
        // alignment of `dst`.
        unsafe { bulk::<MappedToMapped>(src, dst, len, src as usize) };
    } else {
        // SAFETY: the caller's promise, for every byte of the ranges.
        unsafe { bytes::<MappedToMapped>(src, dst, len) };
    }
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
    // SAFETY: `src` is readable for its length, and nothing writes it while it is borrowed;
    // `dst` is the caller's promise, and the side the words are aligned on.
    unsafe { bulk::<PlainToMapped>(src.as_ptr(), dst, src.len(), dst as usize) };
}

/// Copies mapped memory at `src` into `dst`, a buffer of this thread's, with relaxed atomic
/// loads: words once `src` is 8-aligned, bytes around them.
///
/// # Safety
/// `src` must be valid for reads and writes of `dst.len()` bytes for the whole call (memory of a
/// live [`Mapping`], which is mapped readable and writable), and every other access to them
/// meanwhile must be atomic. `AtomicU8::from_ptr` asks for writable memory even to load.
pub unsafe fn copy_out(src: *const u8, dst: &mut [u8]) {
    // SAFETY: `dst` is writable for its length and borrowed exclusively for the call; `src` is
    // the caller's promise, and the side the words are aligned on.
    unsafe { bulk::<MappedToPlain>(src, dst.as_mut_ptr(), dst.len(), src as usize) };
}

/// Copies into mapped memory at least this long warm what follows them ([`wide`]): a shorter
/// one is a stream the CPU's own prefetcher follows within a page, a longer one crosses pages,
/// where it loses the stream and each line of the next write misses in turn.
const WARM_MIN_BYTES: usize = 1024;

/// Asks the CPU to fetch the `len` bytes from `start` (rounded up to four lines) for writing
/// (`PREFETCHW`), without waiting.
///
/// A hint, not an access: it reads and writes nothing, faults on no address (past the end of a
/// mapping too), and is dropped where the CPU has no such prefetch.
#[inline(always)]
fn prefetch_for_writes(start: *const u8, len: usize) {
    // Four lines a step: a step costs its prefetches and one add, compare and branch.
    #[cfg(target_arch = "x86_64")]
    for at in (0..len.div_ceil(256)).map(|step| start.wrapping_add(step * 256)) {
        // SAFETY: PREFETCHW touches no memory in the abstract machine's sense (no load or
        // store, no fault even on an unmapped address), so any address is sound.
        unsafe {
            std::arch::asm!(
                "prefetchw byte ptr [{at}]",
                "prefetchw byte ptr [{at} + 64]",
                "prefetchw byte ptr [{at} + 128]",
                "prefetchw byte ptr [{at} + 192]",
                at = in(reg) at,
                options(nostack, readonly, preserves_flags),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

/// How a copy moves one word and one byte, by which side is mapped memory (accessed only
/// atomically) and which a buffer of this thread's (accessed plainly, at any alignment).
///
/// # Safety
/// An implementation must access a mapped side only through relaxed atomics, or in
/// [`Move::lines`] through 16-byte moves at 16-aligned addresses that the CPU makes atomic.
unsafe trait Move {
    /// Moves the word at `src` to `dst`.
    ///
    /// # Safety
    /// Both words must be valid for the access the implementation makes (reads of `src`,
    /// writes of `dst`, and reads and writes of a mapped side) for the whole call; the mapped
    /// side's word must be 8-aligned and accessed by others only atomically.
    unsafe fn word(src: *const u64, dst: *mut u64);

    /// Moves the byte at `src` to `dst`, as [`Move::word`] with bytes.
    ///
    /// # Safety
    /// As for [`Move::word`], for one byte.
    unsafe fn byte(src: *const u8, dst: *mut u8);

    /// Whether the copy writes mapped memory, whose next bytes a long copy warms ([`wide`]).
    const WARMS: bool;

    /// The address of the two that [`Move::lines`] needs 16-aligned (a mapped side, whose
    /// accesses must be atomic), or `None` when both are mapped and cannot be 16-aligned at once.
    fn wide_anchor(src: usize, dst: usize) -> Option<usize>;

    /// Moves `len` bytes, a nonzero multiple of [`LINE_BYTES`], in 16-byte moves: on a mapped
    /// side each move is a `MOVDQA`, atomic where [`atomic_16_byte_moves`] says so, and so, to
    /// every other access, the relaxed atomic moves of the two words it covers.
    ///
    /// # Safety
    /// [`Move::word`]'s contract for each of the `len / 8` words; each mapped side 16-aligned,
    /// and [`atomic_16_byte_moves`] true.
    #[cfg(target_arch = "x86_64")]
    unsafe fn lines(src: *const u8, dst: *mut u8, len: usize);
}

/// The body of [`Move::lines`] with the given load and store instructions (`movdqa` on a
/// mapped side, `movdqu` on a plain one): four 16-byte loads and four stores a step, one index
/// counting up to zero for both sides.
///
/// The assembly's memory accesses are what Rust asks of an `asm!` block: expressible as Rust
/// operations, here the relaxed atomic word moves of [`Move::word`] (see [`Move::lines`]); and
/// the block, which may touch any memory, orders with the surrounding code as a call would.
#[cfg(target_arch = "x86_64")]
macro_rules! move_lines {
    ($load:literal, $store:literal, $src:expr, $dst:expr, $len:expr) => {{
        let len: usize = $len;
        assert!(len > 0 && len % LINE_BYTES == 0);
        // SAFETY: the caller's promise: `len` bytes from both sides, mapped ones 16-aligned and
        // atomic in 16-byte moves; the loop reads `src + len - k` and writes `dst + len - k` for
        // `k` from `len` down to 16, and ends when the index reaches zero.
        unsafe {
            std::arch::asm!(
                "2:",
                concat!($load, " {a}, xmmword ptr [{s} + {i}]"),
                concat!($load, " {b}, xmmword ptr [{s} + {i} + 16]"),
                concat!($load, " {c}, xmmword ptr [{s} + {i} + 32]"),
                concat!($load, " {e}, xmmword ptr [{s} + {i} + 48]"),
                concat!($store, " xmmword ptr [{d} + {i}], {a}"),
                concat!($store, " xmmword ptr [{d} + {i} + 16], {b}"),
                concat!($store, " xmmword ptr [{d} + {i} + 32], {c}"),
                concat!($store, " xmmword ptr [{d} + {i} + 48], {e}"),
                "add {i}, 64",
                "jnz 2b",
                s = in(reg) $src.add(len),
                d = in(reg) $dst.add(len),
                i = inout(reg) len.wrapping_neg() => _,
                a = out(xmm_reg) _,
                b = out(xmm_reg) _,
                c = out(xmm_reg) _,
                e = out(xmm_reg) _,
                options(nostack),
            );
        }
    }};
}

/// Mapped memory on both sides: [`copy`].
struct MappedToMapped;
/// A buffer of this thread's into mapped memory: [`copy_in`].
struct PlainToMapped;
/// Mapped memory into a buffer of this thread's: [`copy_out`].
struct MappedToPlain;

// SAFETY: both sides are mapped, and both accessed only through relaxed atomics.
unsafe impl Move for MappedToMapped {
    const WARMS: bool = true;

    #[inline(always)]
    unsafe fn word(src: *const u64, dst: *mut u64) {
        // SAFETY: the caller's promise: both words aligned, valid for reads and writes, accessed
        // by others only atomically.
        let (s, d) = unsafe {
            (
                AtomicU64::from_ptr(src.cast_mut()),
                AtomicU64::from_ptr(dst),
            )
        };
        d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    #[inline(always)]
    unsafe fn byte(src: *const u8, dst: *mut u8) {
        // SAFETY: as for `word`; a byte is always aligned.
        let (s, d) = unsafe { (AtomicU8::from_ptr(src.cast_mut()), AtomicU8::from_ptr(dst)) };
        d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    #[inline(always)]
    fn wide_anchor(src: usize, dst: usize) -> Option<usize> {
        ((src ^ dst) % 16 == 0).then_some(src)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lines(src: *const u8, dst: *mut u8, len: usize) {
        move_lines!("movdqa", "movdqa", src, dst, len)
    }
}

// SAFETY: the mapped side, `dst`, is only stored to atomically.
unsafe impl Move for PlainToMapped {
    const WARMS: bool = true;

    #[inline(always)]
    unsafe fn word(src: *const u64, dst: *mut u64) {
        // SAFETY: `src` is readable (the caller's promise), at any alignment; `dst` is aligned,
        // valid for reads and writes and accessed by others only atomically.
        unsafe { AtomicU64::from_ptr(dst).store(src.read_unaligned(), Ordering::Relaxed) };
    }

    #[inline(always)]
    unsafe fn byte(src: *const u8, dst: *mut u8) {
        // SAFETY: as for `word`; a byte is always aligned.
        unsafe { AtomicU8::from_ptr(dst).store(src.read(), Ordering::Relaxed) };
    }

    #[inline(always)]
    fn wide_anchor(_: usize, dst: usize) -> Option<usize> {
        Some(dst)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lines(src: *const u8, dst: *mut u8, len: usize) {
        move_lines!("movdqu", "movdqa", src, dst, len)
    }
}

// SAFETY: the mapped side, `src`, is only loaded from atomically.
unsafe impl Move for MappedToPlain {
    const WARMS: bool = false;

    #[inline(always)]
    unsafe fn word(src: *const u64, dst: *mut u64) {
        // SAFETY: `src` is aligned, valid for reads and writes and accessed by others only
        // atomically; `dst` is writable (the caller's promise), at any alignment.
        unsafe {
            let word = AtomicU64::from_ptr(src.cast_mut()).load(Ordering::Relaxed);
            dst.write_unaligned(word);
        }
    }

    #[inline(always)]
    unsafe fn byte(src: *const u8, dst: *mut u8) {
        // SAFETY: as for `word`; a byte is always aligned.
        unsafe { dst.write(AtomicU8::from_ptr(src.cast_mut()).load(Ordering::Relaxed)) };
    }

    #[inline(always)]
    fn wide_anchor(src: usize, _: usize) -> Option<usize> {
        Some(src)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn lines(src: *const u8, dst: *mut u8, len: usize) {
        move_lines!("movdqa", "movdqu", src, dst, len)
    }
}

/// Words a copy moves per step of its word loop.
///
/// Why unrolled by hand: LLVM neither merges relaxed atomic accesses into wider ones nor
/// vectorises them, and leaves a loop over them rolled, so a word at a time costs a load, a
/// store and the loop's own count, check and branch (about nine instructions a word under
/// `mu-bench instructions`). Eight words a step keep the two moves per word and spread the
/// loop's cost over 64 bytes. Wider accesses need vector moves that the CPU makes atomic, for
/// which stable Rust has no atomic type: [`Move::lines`], in inline assembly, for long copies.
const UNROLL: usize = 8;

/// Moves `len` bytes from `src` to `dst` with `M`: a long copy in 64-byte lines of 16-byte
/// moves where those are atomic ([`wide`]), any other in words ([`words`]).
///
/// # Safety
/// `M`'s contract for every byte and word of the two ranges of `len` bytes; `aligned` is `src`
/// or `dst`, and when both are mapped they are equally aligned.
#[inline(always)]
unsafe fn bulk<M: Move>(src: *const u8, dst: *mut u8, len: usize, aligned: usize) {
    // SAFETY: the caller's promise, passed on.
    unsafe {
        if len >= WIDE_MIN_BYTES {
            wide::<M>(src, dst, len, aligned);
        } else {
            words::<M>(src, dst, len, aligned);
        }
    }
}

/// Moves `len` bytes from `src` to `dst` with `M`: bytes up to the first 8-aligned address of
/// `aligned` (the address of whichever of the two sides must be aligned for words: a mapped
/// one), words from there, [`UNROLL`] a step, bytes after the last whole word.
///
/// # Safety
/// As for [`bulk`].
#[inline(always)]
unsafe fn words<M: Move>(src: *const u8, dst: *mut u8, len: usize, aligned: usize) {
    let head = (aligned.wrapping_neg() % 8).min(len);
    // Both remainders computed as such, so that LLVM knows the edges hold fewer than 8 bytes
    // and moves them without a loop.
    let (words, tail) = ((len - head) / 8, (len - head) % 8);
    // SAFETY: the bytes `..head`, the words from `head` and the last `tail` bytes partition the
    // ranges; the words start on an 8-aligned address of the side `M` needs aligned.
    unsafe {
        bytes::<M>(src, dst, head);
        let (s, d) = (src.add(head).cast::<u64>(), dst.add(head).cast::<u64>());
        // One index for both sides: a step costs one add, compare and branch.
        for step_index in 0..words / UNROLL {
            let k = step_index * UNROLL;
            step::<M, UNROLL>(s.add(k), d.add(k));
        }
        // The words left, fewer than a step, in straight pieces: LLVM unrolls a loop over them
        // again, behind a prologue that costs a short copy more than its few words.
        let (mut k, left) = (words / UNROLL * UNROLL, words % UNROLL);
        if left & 4 != 0 {
            step::<M, 4>(s.add(k), d.add(k));
            k += 4;
        }
        if left & 2 != 0 {
            step::<M, 2>(s.add(k), d.add(k));
            k += 2;
        }
        if left & 1 != 0 {
            M::word(s.add(k), d.add(k));
        }
        let end = len - tail;
        bytes::<M>(src.add(end), dst.add(end), tail);
    }
}

/// Moves `len` bytes from `src` to `dst` with `M`, the whole 64-byte lines between the first
/// and last 16-aligned addresses of the mapped side(s) in 16-byte moves ([`Move::lines`]),
/// where the CPU makes such a move single-copy atomic ([`atomic_16_byte_moves`]) and the mapped
/// sides are 16-aligned together; the rest, and all of it elsewhere, in [`words`].
///
/// A copy into mapped memory of at least [`WARM_MIN_BYTES`] then warms the next `len` bytes
/// there for writing: a log is written in order, so its next slot's lines are owned by the time
/// it is written. Without it, each of the 64 lines of a 4 KiB slot missed in turn on the
/// leader, in its own log and in each follower's (p50 of a 4 KiB command about 1.5 times as
/// long under `mu-bench latency`).
///
/// Out of line, so that the short copies, inlined, keep their few registers.
///
/// # Safety
/// As for [`bulk`].
#[inline(never)]
unsafe fn wide<M: Move>(src: *const u8, dst: *mut u8, len: usize, aligned: usize) {
    // SAFETY: the caller's promise, passed on.
    unsafe { wide_copy::<M>(src, dst, len, aligned) };
    if M::WARMS && len >= WARM_MIN_BYTES {
        prefetch_for_writes(dst.wrapping_add(len), len);
    }
}

/// [`wide`]'s copy.
///
/// # Safety
/// As for [`bulk`].
#[inline(always)]
unsafe fn wide_copy<M: Move>(src: *const u8, dst: *mut u8, len: usize, aligned: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(anchor) = M::wide_anchor(src as usize, dst as usize) {
        let before = anchor.wrapping_neg() % 16;
        let lines = len.saturating_sub(before) / LINE_BYTES * LINE_BYTES;
        if lines > 0 && atomic_16_byte_moves() {
            let after = before + lines;
            // SAFETY: `before`, `lines` and the rest partition the caller's ranges; after
            // `before` bytes each mapped side is 16-aligned (`wide_anchor`), where the CPU makes
            // 16-byte moves atomic (checked just above).
            unsafe {
                words::<M>(src, dst, before, aligned);
                M::lines(src.add(before), dst.add(before), lines);
                let rest = aligned.wrapping_add(after);
                words::<M>(src.add(after), dst.add(after), len - after, rest);
            }
            return;
        }
    }
    // SAFETY: the caller's promise, passed on.
    unsafe { words::<M>(src, dst, len, aligned) };
}

/// The shortest copy that [`bulk`] moves in lines: below it the checks cost more than the lines
/// save (a 64 B command's slot is two 64-byte copies into the own log and one of 128 bytes to
/// each follower, under `mu-bench instructions`).
const WIDE_MIN_BYTES: usize = 256;

/// Bytes a step of [`Move::lines`] moves: four 16-byte moves.
#[cfg(target_arch = "x86_64")]
const LINE_BYTES: usize = 64;

/// Whether a 16-byte SSE move (`MOVDQA`) at a 16-aligned address of cacheable memory is
/// single-copy atomic on this CPU: on Intel and AMD processors that have AVX, by their manuals
/// (Intel SDM vol. 3A, "Guaranteed Atomic Operations"; AMD64 APM vol. 2, "Access Atomicity").
/// Checked once; other vendors, and CPUs without AVX, copy in words.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn atomic_16_byte_moves() -> bool {
    use std::sync::atomic::AtomicU8;
    const UNKNOWN: u8 = 0;
    const ATOMIC: u8 = 1;
    const NOT_ATOMIC: u8 = 2;
    static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
    match STATE.load(Ordering::Relaxed) {
        ATOMIC => true,
        NOT_ATOMIC => false,
        _ => {
            let atomic =
                vendor_documents_16_byte_atomicity() && std::arch::is_x86_feature_detected!("avx");
            STATE.store(if atomic { ATOMIC } else { NOT_ATOMIC }, Ordering::Relaxed);
            atomic
        }
    }
}

/// Whether the CPU's vendor is one whose manual gives aligned 16-byte moves atomicity with AVX.
#[cfg(target_arch = "x86_64")]
#[cold]
fn vendor_documents_16_byte_atomicity() -> bool {
    // CPUID leaf 0 names the vendor in EBX, EDX, ECX.
    #[allow(unused_unsafe)] // `__cpuid` is safe to call from Rust 1.87 on, unsafe before.
    // SAFETY: CPUID leaf 0 exists on every x86-64 CPU and only reads identification registers.
    let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&leaf.ecx.to_le_bytes());
    &vendor == b"GenuineIntel" || &vendor == b"AuthenticAMD"
}

const _: () = assert!(
    UNROLL == 8,
    "`words` moves the words left in pieces of 4, 2 and 1"
);

/// Moves `N` consecutive words with `M`, in straight-line code.
///
/// # Safety
/// `M::word`'s contract for each of the `N` words from `src` and `dst`.
#[inline(always)]
unsafe fn step<M: Move, const N: usize>(src: *const u64, dst: *mut u64) {
    for k in 0..N {
        // SAFETY: word `k < N` of the caller's words.
        unsafe { M::word(src.add(k), dst.add(k)) };
    }
}

/// Moves `len` bytes with `M`, one at a time.
///
/// # Safety
/// `M::byte`'s contract for each of the `len` bytes from `src` and `dst`.
#[inline(always)]
unsafe fn bytes<M: Move>(src: *const u8, dst: *mut u8, len: usize) {
    for i in 0..len {
        // SAFETY: byte `i < len` of the caller's bytes.
        unsafe { M::byte(src.add(i), dst.add(i)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Around the edges of a word, of a whole step of the word loops ([`UNROLL`] words) and of two.
    /// With the lines of [`wide`] too: one, and several with words and bytes after them.
    const LENGTHS: [usize; 19] = [
        0, 1, 7, 8, 9, 15, 16, 63, 64, 65, 71, 72, 127, 128, 129, 200, 263, 264, 328,
    ];
    const BUFFER: usize = 17 + 328;

    /// Runs `f(from, to, len, src, dst)` for every alignment of both ends and every length, and
    /// checks that exactly `dst[to..to + len]` became `src[from..from + len]`.
    fn every_alignment_and_length(mut f: impl FnMut(usize, usize, usize, &mut [u8], &mut [u8])) {
        // Never 0xEE, and not periodic in words: a byte missed or misplaced shows.
        let mut src: Vec<u8> = (0..BUFFER).map(|i| (i % 199) as u8).collect();
        for from in 0..17 {
            for to in 0..17 {
                for len in LENGTHS {
                    let mut dst = vec![0xEEu8; BUFFER];
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
            // SAFETY: both ranges are inside the local buffers (from, to < 17, len <= 328, of
            // `BUFFER` bytes), borrowed mutably for the call, so nothing else touches them.
            unsafe { copy(src.as_mut_ptr().add(from), dst.as_mut_ptr().add(to), len) };
        });
    }

    /// `lines` moves exactly its bytes, in each direction, wherever `wide` would use it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lines_move_exactly_their_bytes() {
        if !atomic_16_byte_moves() {
            return; // `wide` never calls it here; `copies_every_alignment_and_length` copies.
        }
        #[repr(align(16))]
        struct Bytes([u8; 320]);
        let src = Bytes(core::array::from_fn(|i| (i % 251) as u8 + 1));
        for len in [64, 128, 256] {
            let moves: [unsafe fn(*const u8, *mut u8, usize); 3] = [
                MappedToMapped::lines,
                PlainToMapped::lines,
                MappedToPlain::lines,
            ];
            for lines in moves {
                let mut dst = Bytes([0; 320]);
                // SAFETY: `16 + len <= 320` bytes of both buffers, owned here and 16-aligned
                // at offset 16.
                unsafe { lines(src.0[16..].as_ptr(), dst.0[16..].as_mut_ptr(), len) };
                assert_eq!(dst.0[16..16 + len], src.0[16..16 + len]);
                assert!(dst.0[..16]
                    .iter()
                    .chain(&dst.0[16 + len..])
                    .all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn copies_in_and_out_at_every_alignment_and_length() {
        every_alignment_and_length(|from, to, len, src, dst| {
            // SAFETY: `to + len <= BUFFER`: inside the local buffer, borrowed mutably for the
            // call.
            unsafe { copy_in(&src[from..from + len], dst.as_mut_ptr().add(to)) };
        });
        every_alignment_and_length(|from, to, len, src, dst| {
            // SAFETY: `from + len <= BUFFER`: inside the local buffer, borrowed mutably for the
            // call.
            unsafe { copy_out(src.as_mut_ptr().add(from), &mut dst[to..to + len]) };
        });
    }
}
