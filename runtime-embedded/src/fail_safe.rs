//! Fate sharing on failure: a replica that panics (a broken invariant) or cannot go on must stop
//! looking alive, so that the others fail over instead of waiting for it.
//!
//! The board's `#[panic_handler]` calls [`enter`] and then halts the board. `enter` marks the
//! replica failed in its telemetry and raises a flag that stops the run loop and any responder
//! running on another core; with the run loop stopped, the heartbeat stops, the other replicas'
//! pull scores fall, and they elect a new leader. A write of this replica already in a peer's log
//! is harmless: the new leader revokes it before its prepare.
//!
//! # Invariants
//! - `enter` never panics and never waits, so it is safe inside a panic handler.

use core::sync::atomic::{AtomicBool, Ordering::SeqCst};

use crate::telemetry::{word, Telemetry, PHASE_FAILED};

static FAILED: AtomicBool = AtomicBool::new(false);
static TELEMETRY: spin::Once<Telemetry<'static>> = spin::Once::new();

/// Lets [`enter`] report through `telemetry`.
pub fn arm(telemetry: Telemetry<'static>) {
    TELEMETRY.call_once(|| telemetry);
}

/// Stops the replica: raises the flag and marks the telemetry failed with `code`.
pub fn enter(code: u32) {
    FAILED.store(true, SeqCst);
    if let Some(telemetry) = TELEMETRY.get() {
        telemetry.set(word::CODE, code);
        telemetry.set(word::PHASE, PHASE_FAILED);
    }
}

/// True once [`enter`] ran: run loops and responders stop.
pub fn failed() -> bool {
    FAILED.load(SeqCst)
}
