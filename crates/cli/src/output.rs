//! Output helpers shared by every command: exit codes, one-line errors, progress bars.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::process::ExitCode;

/// Map a command result to the process exit code, printing a one-line cause on failure.
/// A closed stdout (`vcb ... | head`) exits quietly.
pub fn exit_with(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, without repeating a cause already in the text.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}

/// A progress bar on stderr for long disk work, hidden when stderr is not a terminal
/// unless `force_text` is set (then the seed's `****` style is printed).
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar with a message such as `Converting "disk.vmdk" (compact file):`.
    pub fn new(message: impl Into<String>) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("**-"),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        bar.set_message(message.into());
        Bar { bar }
    }
}

impl vmdk::Progress for Bar {
    fn start(&mut self, total_bytes: u64) {
        self.bar.set_length(total_bytes);
        self.bar.set_position(0);
    }
    fn advance(&mut self, bytes: u64) -> ControlFlow<()> {
        self.bar.inc(bytes);
        ControlFlow::Continue(())
    }
    fn warn(&mut self, w: &vmdk::Warning) {
        self.bar.suspend(|| eprintln!("warning: {w}"));
    }
    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Bytes as a short human string (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
