//! Progress reporting and cancellation for transfers.

use std::ops::ControlFlow;

/// Receives transfer progress; every method has a no-op default and `()` implements it.
///
/// Called from the thread that called the transfer method, never concurrently.
pub trait Progress {
    /// The transfer starts; `total_bytes` when known (downloads know the remote size,
    /// uploads of an unsized stream do not).
    fn start(&mut self, _total_bytes: Option<u64>) {}
    /// `bytes` more were confirmed by the server (upload) or written to the local writer
    /// (download). Returning `ControlFlow::Break` stops the transfer, which then fails
    /// with [`crate::Error::Cancelled`].
    fn advance(&mut self, _bytes: u64) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// The transfer completed successfully.
    fn finish(&mut self) {}
}

impl Progress for () {}

impl<P: Progress + ?Sized> Progress for &mut P {
    fn start(&mut self, total_bytes: Option<u64>) {
        (**self).start(total_bytes)
    }
    fn advance(&mut self, bytes: u64) -> ControlFlow<()> {
        (**self).advance(bytes)
    }
    fn finish(&mut self) {
        (**self).finish()
    }
}
