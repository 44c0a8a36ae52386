//! Mu firmware for the Arm MPS2 AN386 (Cortex-M4F) under QEMU `mps2-an386`: a single-node
//! self-test. One replica replicates the setpoint table's workload (its sweep over the axes,
//! through an exactly-once session: `runtime_embedded::sessions`) through the whole stack (the
//! core, the window fabric over a RAM window, the run loop), then checks that every command it
//! submitted was committed and applied once, in order. QEMU's exit code is the verdict
//! ([`ExitCode`]): 0 passed, 103 a wrong result, 101 a panic, 104 a fault.
//!
//! The cluster comes from the board file the build read (`board` below); the window is the
//! `WINDOW` memory region the build script put in `memory.x`.

#![no_std]
#![no_main]

mod platform;

/// The board file, as constants (written by build.rs).
mod board {
    include!(concat!(env!("OUT_DIR"), "/board.rs"));
}

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use cortex_m_rt::{entry, exception, ExceptionFrame};
use mu_nostd::ReplicaId;
use runtime_embedded::setpoints::{SessionSetpoints, SessionSweep, Setpoints, Sweep};
use runtime_embedded::words::Words;
use runtime_embedded::{fail_safe, Board, ExitCode, Statics};

use platform::timer;

/// Commands the self-test replicates.
const SELF_TEST_COMMANDS: u64 = 2_000;
const WINDOW_WORDS: usize = board::WINDOW_SIZE as usize / 4;

/// The shared window, in the board file's `WINDOW` memory region (not zeroed by the start-up
/// code: `main` clears it).
#[link_section = ".window"]
static WINDOW: [AtomicU32; WINDOW_WORDS] = [const { AtomicU32::new(0) }; WINDOW_WORDS];
/// The replica, what its planes share and its log permissions (`runtime_embedded::run` fills
/// it).
static STATICS: Statics<SessionSetpoints, SessionSweep> = Statics::new();

struct Mps2Board;

impl Board for Mps2Board {
    fn counter(&self) -> u64 {
        timer::counter()
    }

    fn counter_hz(&self) -> u64 {
        timer::frequency_hz()
    }

    fn window(&self) -> Words<'static> {
        Words::new(&WINDOW)
    }

    fn replica_id(&self) -> ReplicaId {
        0
    }

    fn halt(&mut self, code: ExitCode) -> ! {
        platform::exit(code as u32)
    }
}

#[entry]
fn main() -> ! {
    platform::init();
    defmt::info!(
        "mu self-test: cluster {=str} from {=str}, {=u64} commands; timer {=u64} Hz, wraps \
         every {=u64} s",
        board::CLUSTER_NAME,
        board::BOARD_FILE,
        SELF_TEST_COMMANDS,
        timer::frequency_hz(),
        timer::WRAP_SECONDS
    );
    for word in WINDOW.iter() {
        word.store(0, Relaxed);
    }
    let me = Mps2Board.replica_id();
    runtime_embedded::run(
        &mut Mps2Board,
        board::CONFIG,
        board::TICK_NS,
        &STATICS,
        SessionSetpoints::new(Setpoints::new()),
        SessionSweep::new(Sweep::new(me)),
        Some(SELF_TEST_COMMANDS),
    )
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // Stop looking alive first: with the run loop, the heartbeat stops.
    fail_safe::enter(ExitCode::Panic as u32);
    defmt::error!("{}", defmt::Display2Format(info));
    platform::exit(ExitCode::Panic as u32)
}

/// A fault ends the run with its own status instead of cortex-m-rt's endless loop, which would
/// leave QEMU running. No logging: the fault may have hit inside the logger.
#[exception]
unsafe fn HardFault(_frame: &ExceptionFrame) -> ! {
    fail_safe::enter(ExitCode::Fault as u32);
    platform::exit(ExitCode::Fault as u32)
}
