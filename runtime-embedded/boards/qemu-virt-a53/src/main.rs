//! Mu firmware for the QEMU `virt` machine with a Cortex-A53: one replica per VM, the replicas'
//! regions and rings in an ivshmem window every VM maps (`runtime_embedded::window`).
//!
//! The replica id comes from the semihosting command line (`-semihosting-config
//! enable=on,target=native,arg=mu,arg=ID`), the cluster from the board file the build read
//! (`board` below). The console is defmt over semihosting; QEMU's exit code is the firmware's
//! [`ExitCode`].

#![no_std]
#![no_main]

mod platform;

/// The board file, as constants (written by build.rs).
mod board {
    include!(concat!(env!("OUT_DIR"), "/board.rs"));
}

use core::sync::atomic::AtomicU32;

use mu_nostd::ReplicaId;
use runtime_embedded::setpoints::{SessionSetpoints, SessionSweep, Setpoints, Sweep};
use runtime_embedded::words::Words;
use runtime_embedded::{fail_safe, Board, ExitCode, Statics};

use platform::{ivshmem, semihosting, timer};

/// The replica (the setpoint table inside exactly-once sessions, submitting its sweep through
/// one while it leads), what its two planes share and the log permissions the responder
/// enforces: a static, so that the panic handler's fail-safe and a responder core could reach
/// them too.
static STATICS: Statics<SessionSetpoints, SessionSweep> = Statics::new();

struct VirtBoard {
    window: Words<'static>,
    id: ReplicaId,
}

impl Board for VirtBoard {
    fn counter(&self) -> u64 {
        timer::counter()
    }

    fn counter_hz(&self) -> u64 {
        timer::frequency_hz()
    }

    fn window(&self) -> Words<'static> {
        self.window
    }

    fn replica_id(&self) -> ReplicaId {
        self.id
    }

    fn halt(&mut self, code: ExitCode) -> ! {
        semihosting::exit(code as u32)
    }
}

fn main() -> ! {
    defmt::info!(
        "mu firmware, cluster {=str} from {=str}; at EL{=u8} (entered at EL{=u8})",
        board::CLUSTER_NAME,
        board::BOARD_FILE,
        platform::boot::current_el(),
        platform::boot::entry_el()
    );
    let id = replica_id().unwrap_or_else(|| {
        defmt::error!(
            "no replica id: run QEMU with -semihosting-config enable=on,target=native,arg=mu,arg=ID \
             (ID below {=u8})",
            board::REPLICAS
        );
        semihosting::exit(ExitCode::Start as u32)
    });
    let window = ivshmem::map(board::WINDOW_BASE).unwrap_or_else(|| {
        defmt::error!("no ivshmem device: run QEMU with -device ivshmem-plain,memdev=...");
        semihosting::exit(ExitCode::Start as u32)
    });
    if (window.size as u64) < board::WINDOW_SIZE {
        defmt::error!(
            "the ivshmem window has {=usize} bytes; the board file says {=u64}",
            window.size,
            board::WINDOW_SIZE
        );
        semihosting::exit(ExitCode::Start as u32);
    }
    // SAFETY: `map` mapped `size` bytes at `base` as Normal memory, 4 KiB aligned; nothing else
    // in this image uses that address range, and every access (here and in the other VMs) is an
    // atomic word access, so sharing it is not a data race.
    let words: &'static [AtomicU32] =
        unsafe { core::slice::from_raw_parts(window.base as *const AtomicU32, window.size / 4) };
    let mut board = VirtBoard {
        window: Words::new(words),
        id,
    };
    runtime_embedded::run(
        &mut board,
        board::CONFIG,
        board::TICK_NS,
        &STATICS,
        SessionSetpoints::new(Setpoints::new()),
        SessionSweep::new(Sweep::new(id)),
        None,
    )
}

/// The id in the command line `mu ID`, if it names a replica of the cluster.
fn replica_id() -> Option<ReplicaId> {
    let mut buffer = [0u8; 64];
    let line = semihosting::command_line(&mut buffer)?;
    let mut words = line.split_whitespace();
    let id: ReplicaId = words.nth(1)?.parse().ok()?;
    (id < board::REPLICAS).then_some(id)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // Stop looking alive first: the heartbeat stops with the run loop, the others fail over.
    fail_safe::enter(ExitCode::Panic as u32);
    match info.location() {
        Some(at) => defmt::error!("panic at {=str}:{=u32}", at.file(), at.line()),
        None => defmt::error!("panic"),
    }
    semihosting::exit(ExitCode::Panic as u32)
}
