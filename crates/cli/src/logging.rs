//! `-L LEVEL`: the libraries' `tracing` diagnostics on stderr.
//!
//! VCB's tools take `-L 0..6`; levels 0-3 shape the tool's own output (see the
//! renderer), 4-6 add the libraries' diagnostics: 4 info, 5 debug, 6 trace. Warnings
//! from the libraries are shown from level 1 up.

use std::sync::OnceLock;

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Installs the stderr subscriber for `level` (once per process).
pub fn init(level: u8) {
    INSTALLED.get_or_init(|| {
        let max = match level {
            0 => tracing::Level::ERROR,
            1..=3 => tracing::Level::WARN,
            4 => tracing::Level::INFO,
            5 => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        };
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(max)
            .with_writer(std::io::stderr)
            .with_target(level >= 5)
            .without_time()
            .finish();
        // Another subscriber already set (tests) is fine.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}
