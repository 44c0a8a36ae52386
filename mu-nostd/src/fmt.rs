//! Logging shim: `trace!`..`error!` forward to `defmt` under the `defmt` feature and compile to
//! nothing otherwise (the arguments are still type-checked, never evaluated).
#![allow(unused_macros)]

macro_rules! trace {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::trace!($($arg)*);
        #[cfg(not(feature = "defmt"))]
        if false { let _ = ($crate::fmt::Ignore, $($arg)*); }
    }};
}
macro_rules! debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::debug!($($arg)*);
        #[cfg(not(feature = "defmt"))]
        if false { let _ = ($crate::fmt::Ignore, $($arg)*); }
    }};
}
macro_rules! info {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::info!($($arg)*);
        #[cfg(not(feature = "defmt"))]
        if false { let _ = ($crate::fmt::Ignore, $($arg)*); }
    }};
}
macro_rules! warn {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::warn!($($arg)*);
        #[cfg(not(feature = "defmt"))]
        if false { let _ = ($crate::fmt::Ignore, $($arg)*); }
    }};
}

/// Placeholder that makes the no-defmt expansion a tuple expression.
#[cfg(not(feature = "defmt"))]
pub(crate) struct Ignore;
