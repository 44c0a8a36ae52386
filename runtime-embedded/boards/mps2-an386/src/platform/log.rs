//! The global defmt logger and its timestamp.
//!
//! defmt-semihosting writes the encoded frames with SYS_WRITE to the host's stdout; under QEMU
//! with `target=native` they land on QEMU's own stdout, which `defmt-print -e ELF` decodes.

// Linking the crate is what registers it as the `#[global_logger]`.
use defmt_semihosting as _;

// Microseconds since `platform::init` started the timer (0 before that).
defmt::timestamp!("{=u64:us}", super::timer::micros());
