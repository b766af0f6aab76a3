//! Progress reporting and cancellation for long operations.
//!
//! Libraries never print: long work (convert, commit, inflate) calls a [`Progress`]
//! the caller supplies. The CLI draws a bar from it; tests record the calls.

use std::ops::ControlFlow;

/// A non-fatal condition met during a long operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// Free-form text naming what was noticed.
    Note(String),
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::Note(s) => f.write_str(s),
        }
    }
}

/// Callback for long operations. All methods have no-op defaults.
pub trait Progress {
    /// Called once before work starts with the total number of bytes to be processed.
    fn start(&mut self, _total_bytes: u64) {}
    /// `bytes` more have been processed. Returning `ControlFlow::Break` cancels the
    /// operation, which then fails with [`crate::Error::Cancelled`] leaving no partial output.
    fn advance(&mut self, _bytes: u64) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// A soft failure or notable condition.
    fn warn(&mut self, _warning: &Warning) {}
    /// Called once when the work is complete.
    fn finish(&mut self) {}
}

impl Progress for () {}

impl<P: Progress + ?Sized> Progress for &mut P {
    fn start(&mut self, total_bytes: u64) {
        (**self).start(total_bytes)
    }
    fn advance(&mut self, bytes: u64) -> ControlFlow<()> {
        (**self).advance(bytes)
    }
    fn warn(&mut self, warning: &Warning) {
        (**self).warn(warning)
    }
    fn finish(&mut self) {
        (**self).finish()
    }
}
