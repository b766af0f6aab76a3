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

/// A spinner with a count for repository work (verify, check, gc, copy): on stderr when
/// it is a terminal, hidden otherwise. Stops the work on SIGINT/SIGTERM.
pub struct Counter {
    bar: ProgressBar,
}

impl Counter {
    /// A counter titled `title`.
    pub fn new(title: &str) -> Counter {
        crate::signals::install();
        let bar = if std::io::stderr().is_terminal() {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg} {pos}/{len}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        } else {
            ProgressBar::hidden()
        };
        bar.set_prefix(title.to_owned());
        Counter { bar }
    }
}

impl repo::Progress for Counter {
    fn phase(&mut self, name: &str, total: Option<u64>) {
        self.bar.set_message(name.to_owned());
        self.bar.set_position(0);
        self.bar.set_length(total.unwrap_or(0));
    }
    fn advance(&mut self, n: u64) {
        self.bar.inc(n);
    }
    fn cancelled(&self) -> bool {
        crate::signals::cancelled()
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Progress of a disk stored into a repository: a bar with bytes read, new and reused
/// on a terminal; otherwise one line when the disk is done.
pub struct StoreBar {
    bar: ProgressBar,
    message: String,
    tty: bool,
    read: u64,
    new: u64,
    reused: u64,
    started: std::time::Instant,
}

impl StoreBar {
    /// A bar titled `message` (drawn only when `tty`).
    pub fn new(message: String, tty: bool) -> StoreBar {
        let bar = if tty {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:25}] {percent:>3}% {msg} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("**-"),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        bar.set_prefix(message.clone());
        StoreBar {
            bar,
            message,
            tty,
            read: 0,
            new: 0,
            reused: 0,
            started: std::time::Instant::now(),
        }
    }

    fn counts(&self) -> String {
        format!(
            "read {}, new {}, reused {}",
            human_bytes(self.read),
            human_bytes(self.new),
            human_bytes(self.reused)
        )
    }
}

impl repo::StoreProgress for StoreBar {
    fn start(&mut self, total: u64) {
        self.bar.set_length(total);
        self.started = std::time::Instant::now();
    }
    fn advance(&mut self, step: &repo::Advance) -> ControlFlow<()> {
        self.read += step.read;
        self.new += step.new;
        self.reused += step.reused;
        self.bar.inc(step.covered);
        self.bar.set_message(self.counts());
        if crate::signals::cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
    fn finish(&mut self) {
        self.bar.finish_and_clear();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "{} {} in {secs:.1} s ({}/s)",
            self.message,
            self.counts(),
            human_bytes((self.read as f64 / secs) as u64)
        );
        if self.tty {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}
