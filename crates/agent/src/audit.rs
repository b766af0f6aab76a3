//! The audit log: one JSON line per API call (when, who, from where, what, on what, and
//! the result), appended to `audit.log` (0600) and flushed before the reply goes out.

use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// The audit log's file in the agent's folder.
pub const AUDIT_FILE: &str = "audit.log";

/// One audited call.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// The user, or `-` before login.
    pub user: &'a str,
    /// The peer address.
    pub peer: &'a str,
    /// The call (`POST /api/v1/backups`).
    pub action: &'a str,
    /// What it was about (a VM, a session), or empty.
    pub target: &'a str,
    /// `ok`, or the refusal or error.
    pub result: &'a str,
}

/// The open audit log.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    /// Opens (creating) `dir/audit.log` for appending.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(dir: &Path) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(AUDIT_FILE))?;
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    /// Appends `entry`; a failure is logged, never returned (the call already happened).
    pub fn write(&self, entry: &Entry<'_>) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let Ok(mut f) = self.file.lock() else { return };
        if let Err(e) = f.write_all(&line).and_then(|()| f.sync_data()) {
            tracing::error!("audit log: {e}");
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
