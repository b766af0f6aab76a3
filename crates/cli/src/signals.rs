//! SIGINT and SIGTERM during a backup or restore: the first one asks the work to stop
//! cleanly (thaw, remove the snapshot, leave the destination incomplete), a second one
//! ends the process at once as the default action would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static CANCELLED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap, and for a second signal the
    // default action restored and the signal raised again.
    if CANCELLED.swap(true, Ordering::SeqCst) {
        // SAFETY: signal() and raise() are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Installs the handlers (once per process).
pub fn install() {
    INSTALL.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only touches an atomic and calls async-signal-safe
            // functions; the cast is how libc takes a handler address.
            unsafe {
                libc::signal(
                    sig,
                    on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
                );
            }
        }
    });
}

/// True once SIGINT or SIGTERM arrived.
pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// Passes progress through and stops the work once a signal arrived.
pub struct Cancellable<'a> {
    /// The progress shown.
    pub inner: Box<dyn vmdk::Progress + 'a>,
}

impl vmdk::Progress for Cancellable<'_> {
    fn start(&mut self, total_bytes: u64) {
        self.inner.start(total_bytes)
    }
    fn advance(&mut self, bytes: u64) -> std::ops::ControlFlow<()> {
        if cancelled() {
            return std::ops::ControlFlow::Break(());
        }
        self.inner.advance(bytes)
    }
    fn warn(&mut self, w: &vmdk::Warning) {
        self.inner.warn(w)
    }
    fn finish(&mut self) {
        self.inner.finish()
    }
}
