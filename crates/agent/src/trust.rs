//! The client's trust file: one `host:port SHA-256-thumbprint` per line, as
//! `known_hosts` keeps SSH host keys. Written through the crash-safe helper; a line is
//! only ever added, never changed, by vcb.

use crate::{Error, Result};
use std::path::Path;

/// The thumbprint pinned for `endpoint`, if any.
///
/// # Errors
/// An unreadable file (a missing one pins nothing).
pub fn lookup(file: &Path, endpoint: &str) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(file, "read", e)),
    };
    Ok(text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(endpoint))
            .then(|| words.next().map(str::to_owned))
            .flatten()
    }))
}

/// Pins `thumbprint` for `endpoint` (an endpoint already pinned is refused).
///
/// # Errors
/// The endpoint is pinned already; write errors.
pub fn record(file: &Path, endpoint: &str, thumbprint: &str) -> Result<()> {
    if lookup(file, endpoint)?.is_some() {
        return Err(Error::Invalid(format!("{endpoint} is already pinned")));
    }
    if endpoint.contains(char::is_whitespace) {
        return Err(Error::Invalid(format!("bad endpoint {endpoint:?}")));
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create folder", e))?;
    }
    let mut text = std::fs::read_to_string(file).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{endpoint} {thumbprint}\n"));
    fsio::write_private(file, text.as_bytes())?;
    Ok(())
}

/// The default trust file: `$VCB_HOST_TRUST`, else `~/.config/vcb/host-certs`.
pub fn default_file() -> std::path::PathBuf {
    if let Some(f) = std::env::var_os("VCB_HOST_TRUST") {
        return f.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    Path::new(&home).join(".config/vcb/host-certs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_once_and_finds_by_endpoint() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("sub/trust");
        assert_eq!(lookup(&f, "h:1").unwrap(), None);
        record(&f, "h:1", "AA:BB").unwrap();
        record(&f, "h:2", "CC:DD").unwrap();
        assert_eq!(lookup(&f, "h:1").unwrap().as_deref(), Some("AA:BB"));
        assert_eq!(lookup(&f, "h:2").unwrap().as_deref(), Some("CC:DD"));
        assert!(record(&f, "h:1", "EE").is_err());
        assert_eq!(lookup(&f, "h:1").unwrap().as_deref(), Some("AA:BB"));
    }
}
