//! Rendering backup and restore progress: event lines, the seed's
//! `Converting "<file>" (compact file):` lines with a bar, and conflict prompts.

use crate::output::human_bytes;
use backup::{Answer, Event, GroupItem, GroupObserver, Observer};
use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::Path;

/// Prints what a backup or restore does. `level` follows the tools' `-L`: 0 prints
/// nothing but errors, 1 the conversion lines, 3 (the default) every step.
pub struct Render {
    level: u8,
}

impl Render {
    /// A renderer at log level `level` (0..6). Backups and restores rendered by it stop
    /// cleanly on SIGINT/SIGTERM (see [`crate::signals`]).
    pub fn new(level: u8) -> Render {
        crate::signals::install();
        Render { level }
    }

    /// Print a result line (level 1 and up).
    pub fn line(&self, text: impl AsRef<str>) {
        if self.level >= 1 {
            println!("{}", text.as_ref());
        }
    }
}

impl Observer for Render {
    fn event(&mut self, event: &Event) {
        if let Event::Warning(w) = event {
            eprintln!("warning: {w}");
            return;
        }
        if self.level < 3 {
            return;
        }
        let text = match event {
            Event::ChangeTracking { text } => text.clone(),
            Event::HookRan { path, stage } => format!("Ran {stage} hook {}", path.display()),
            Event::Consolidated { vm } => {
                format!("Committed the snapshot an interrupted backup of {vm} left")
            }
            Event::Quiesced {
                vm,
                filesystems,
                elapsed,
            } => format!(
                "Quiesced {vm} through the guest agent ({filesystems} file systems frozen in {:.2} s)",
                elapsed.as_secs_f64()
            ),
            Event::NotQuiesced { vm, reason } => {
                format!("Not quiescing {vm} ({reason}): the backup is crash-consistent")
            }
            Event::ThawedLeftover { vm } => {
                format!("Thawed {vm}, which an interrupted backup may have left frozen")
            }
            Event::Thawed {
                vm,
                by_watchdog: true,
                ..
            } => format!("Thawed {vm} (by the watchdog: the quiesce timeout passed)"),
            Event::Thawed { vm, frozen_for, .. } => format!(
                "Thawed {vm} (frozen for {:.2} s)",
                frozen_for.as_secs_f64()
            ),
            Event::SnapshotTaken { vm, live, elapsed } => format!(
                "Took the backup snapshot of {vm}{} in {:.2} s",
                if *live { " (live)" } else { "" },
                elapsed.as_secs_f64()
            ),
            Event::SnapshotRemoved { vm, live, elapsed } => format!(
                "Removed the backup snapshot of {vm} (redo logs committed{}) in {:.2} s",
                if *live { " live" } else { "" },
                elapsed.as_secs_f64()
            ),
            Event::FileCopied { name, size_bytes } => {
                format!("Copied {name} ({})", human_bytes(*size_bytes))
            }
            Event::DiskSkipped { node, reason } => format!("Skipped disk {node}: {reason}"),
            Event::Verified { files } => format!("Verified {files} files against the catalog"),
            Event::Kept { what } => format!("Keeping existing {what}"),
            Event::Replaced { what } => format!("Replacing existing {what}"),
            Event::RdmRecreated { path, device } => {
                format!(
                    "Recreated mapping {} for device {}",
                    path.display(),
                    device.display()
                )
            }
            Event::Stored {
                location,
                point,
                stats,
            } => format!(
                "Stored point {point} in {location}: read {} from the disks, {} new chunks ({} new, {} stored), {} reused chunks ({})",
                human_bytes(stats.read_bytes),
                stats.new_chunks,
                human_bytes(stats.new_bytes),
                human_bytes(stats.stored_bytes),
                stats.reused_chunks,
                human_bytes(stats.reused_bytes)
            ),
            other => format!("{other:?}"),
        };
        println!("{text}");
    }

    fn converting(&mut self, dest: &Path, note: &str) -> Box<dyn vmdk::Progress + '_> {
        let message = format!("Converting \"{}\" ({note}):", dest.display());
        let inner: Box<dyn vmdk::Progress> = if self.level == 0 {
            Box::new(())
        } else if std::io::stderr().is_terminal() {
            Box::new(crate::output::Bar::new(message))
        } else {
            println!("{message}");
            Box::new(Stars::default())
        };
        Box::new(crate::signals::Cancellable { inner })
    }

    fn storing(&mut self, name: &str) -> Box<dyn repo::StoreProgress + '_> {
        let message = format!("Storing \"{name}\":");
        if self.level == 0 {
            return Box::new(());
        }
        Box::new(crate::output::StoreBar::new(
            message,
            std::io::stderr().is_terminal(),
        ))
    }

    fn cancelled(&self) -> bool {
        crate::signals::cancelled()
    }

    fn ask(&mut self, what: &str) -> Option<Answer> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        loop {
            eprint!("{what} already exists: [o]verwrite, [k]eep, [a]bort? ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            if stdin.lock().read_line(&mut line).ok()? == 0 {
                return None;
            }
            match line.trim().to_ascii_lowercase().as_str() {
                "o" | "overwrite" => return Some(Answer::Overwrite),
                "k" | "keep" => return Some(Answer::Keep),
                "a" | "abort" => return Some(Answer::Abort),
                _ => continue,
            }
        }
    }
}

impl GroupObserver for Render {
    fn vm_started(&mut self, vm: &str, dest: &Path) {
        self.line(format!("Backing up {vm} to {}", dest.display()));
    }

    fn vm_finished(&mut self, item: &GroupItem) {
        match &item.result {
            Ok(r) => self.line(format!(
                "Backed up {} ({} files, {})",
                item.vm,
                r.catalog.files.len(),
                human_bytes(r.bytes_written)
            )),
            Err(e) => eprintln!("error: {}: {e}", item.vm),
        }
    }
}

/// The seed's text progress: a row of `*` filled as the conversion advances.
#[derive(Default)]
struct Stars {
    total: u64,
    done: u64,
    printed: u64,
}

/// Stars in a full row.
const ROW: u64 = 78;

impl vmdk::Progress for Stars {
    fn start(&mut self, total_bytes: u64) {
        self.total = total_bytes;
    }
    fn advance(&mut self, bytes: u64) -> ControlFlow<()> {
        self.done = self.done.saturating_add(bytes);
        let want = if self.total == 0 {
            ROW
        } else {
            (self.done.min(self.total) as u128 * ROW as u128 / self.total as u128) as u64
        };
        if want > self.printed {
            print!("{}", "*".repeat((want - self.printed) as usize));
            let _ = std::io::stdout().flush();
            self.printed = want;
        }
        ControlFlow::Continue(())
    }
    fn warn(&mut self, w: &vmdk::Warning) {
        eprintln!("warning: {w}");
    }
    fn finish(&mut self) {
        if self.printed < ROW {
            print!("{}", "*".repeat((ROW - self.printed) as usize));
        }
        println!();
        self.printed = ROW;
    }
}
