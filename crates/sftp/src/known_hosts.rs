//! Host key verification against an OpenSSH `known_hosts` file (sshd(8), "SSH_KNOWN_HOSTS
//! FILE FORMAT").
//!
//! A line is `[marker] hostpatterns keytype base64-key [comment]`. Host patterns are
//! comma-separated: plain names, `[host]:port` for a port other than 22, globs (`*`,
//! `?`), `!negations`, and hashed entries `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`
//! as `HashKnownHosts yes` writes them. The name looked up is `host` on port 22 and
//! `[host]:port` otherwise, as OpenSSH does.
//!
//! Lines with a marker (`@cert-authority`, `@revoked`) are skipped: host certificates
//! and revocation are not supported. A key of a different algorithm recorded for the
//! same host does not make the offered key "changed" (OpenSSH also asks first in that
//! case); it is unknown.

use crate::error::{Error, Result};
use crate::ssh_config::wildcard_match;
use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{HashAlg, PublicKey};
use sha1::Sha1;
use std::io::Write;
use std::path::Path;

/// What the known_hosts file says about an offered key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The key is recorded for this host.
    Known,
    /// Nothing is recorded for this host and key algorithm.
    Unknown,
    /// Another key of the same algorithm is recorded for this host, at this 1-based line.
    Changed {
        /// Line of the recorded key.
        line: usize,
    },
}

/// The name a host is recorded under: `host`, or `[host]:port` when the port is not 22.
pub(crate) fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:...` fingerprint of a key, as `ssh-keygen -l` prints it.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Check `key` offered by `host:port` against the file at `path` (missing file: unknown).
///
/// # Errors
/// [`Error::LocalIo`] when the file exists but cannot be read.
pub(crate) fn check(path: &Path, host: &str, port: u16, key: &PublicKey) -> Result<Verdict> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Verdict::Unknown),
        Err(source) => {
            return Err(Error::LocalIo {
                path: path.to_owned(),
                op: "read known_hosts",
                source,
            })
        }
    };
    Ok(check_text(&text, &lookup_name(host, port), key))
}

fn check_text(text: &str, name: &str, key: &PublicKey) -> Verdict {
    let mut changed = None;
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(patterns) = fields.next() else {
            continue;
        };
        if patterns.starts_with('#') || patterns.starts_with('@') {
            continue;
        }
        let (Some(key_type), Some(blob)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !patterns_match(patterns, name) {
            continue;
        }
        let recorded = match PublicKey::from_openssh(&format!("{key_type} {blob}")) {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::debug!(line = index + 1, error = %e, "known_hosts: unreadable key; skipping line");
                continue;
            }
        };
        if recorded.key_data() == key.key_data() {
            return Verdict::Known;
        }
        if recorded.algorithm() == key.algorithm() && changed.is_none() {
            changed = Some(index + 1);
        }
    }
    match changed {
        Some(line) => Verdict::Changed { line },
        None => Verdict::Unknown,
    }
}

fn patterns_match(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(hashed) = pattern.strip_prefix("|1|") {
            matched |= hashed_match(hashed, name);
        } else if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated, name) {
                return false;
            }
        } else {
            matched |= wildcard_match(pattern, name);
        }
    }
    matched
}

/// `salt|hash` (both base64) against HMAC-SHA1 keyed with the salt over the name.
fn hashed_match(salt_and_hash: &str, name: &str) -> bool {
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (
        BASE64.decode(salt.as_bytes()),
        BASE64.decode(hash.as_bytes()),
    ) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// Append `key` for `host:port` to the file at `path`, creating it (and a missing
/// parent folder, mode 0700) as needed. The entry is written unhashed.
///
/// # Errors
/// [`Error::LocalIo`] when the folder or file cannot be created or written.
pub(crate) fn record(path: &Path, host: &str, port: u16, key: &PublicKey) -> Result<()> {
    let io_err = |op: &'static str| {
        move |source| Error::LocalIo {
            path: path.to_owned(),
            op,
            source,
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err("create folder"))?;
        }
    }
    let existing = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(io_err("read known_hosts")(source)),
    };
    let encoded = PublicKey::new(key.key_data().clone(), "")
        .to_openssh()
        .map_err(|e| io_err("encode key")(std::io::Error::other(e.to_string())))?;
    let mut line = String::new();
    if existing.last().is_some_and(|&b| b != b'\n') {
        line.push('\n');
    }
    line.push_str(&format!(
        "{} {}\n",
        lookup_name(host, port),
        encoded.trim_end()
    ));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("open known_hosts"))?;
    file.write_all(line.as_bytes())
        .map_err(io_err("append to known_hosts"))?;
    file.sync_all().map_err(io_err("sync known_hosts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(s: &str) -> PublicKey {
        match PublicKey::from_openssh(s) {
            Ok(k) => k,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    /// A hashed entry for `name` with a fixed salt, computed like `ssh-keygen -H`.
    fn hashed(name: &str) -> String {
        let salt = [7u8; 20];
        let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
            panic!("hmac key")
        };
        mac.update(name.as_bytes());
        format!(
            "|1|{}|{}",
            BASE64.encode(&salt),
            BASE64.encode(&mac.finalize().into_bytes())
        )
    }

    #[test]
    fn plain_and_port_forms() {
        let text = format!("host1,host2 {ED_A}\n[host1]:2222 {ED_B} comment\n");
        assert_eq!(check_text(&text, "host2", &key(ED_A)), Verdict::Known);
        assert_eq!(
            check_text(&text, "[host1]:2222", &key(ED_B)),
            Verdict::Known
        );
        assert_eq!(
            check_text(&text, "[host1]:2222", &key(ED_A)),
            Verdict::Changed { line: 2 }
        );
        assert_eq!(
            check_text(&text, "host1", &key(ED_B)),
            Verdict::Changed { line: 1 }
        );
        assert_eq!(check_text(&text, "host3", &key(ED_A)), Verdict::Unknown);
        assert_eq!(
            check_text(&text, "[host2]:2222", &key(ED_A)),
            Verdict::Unknown
        );
    }

    #[test]
    fn hashed_entries() {
        let text = format!("# comment\n{} {ED_A}\n", hashed("[127.0.0.1]:2222"));
        assert_eq!(
            check_text(&text, "[127.0.0.1]:2222", &key(ED_A)),
            Verdict::Known
        );
        assert_eq!(
            check_text(&text, "[127.0.0.1]:2222", &key(ED_B)),
            Verdict::Changed { line: 2 }
        );
        assert_eq!(check_text(&text, "127.0.0.1", &key(ED_A)), Verdict::Unknown);
        assert!(!hashed_match("garbage", "x"));
        assert!(!hashed_match("!!|??", "x"));
    }

    #[test]
    fn wildcards_negation_markers_and_junk() {
        let text = format!(
            "@revoked * {ED_B}\n*.lan,!bad.lan {ED_A}\nnot a key line\nh ssh-ed25519 !!!\n"
        );
        assert_eq!(check_text(&text, "nas.lan", &key(ED_A)), Verdict::Known);
        assert_eq!(check_text(&text, "bad.lan", &key(ED_A)), Verdict::Unknown);
        assert_eq!(check_text(&text, "h", &key(ED_A)), Verdict::Unknown);
    }

    #[test]
    fn record_then_check() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let path = dir.path().join("sub/known_hosts");
        assert!(matches!(
            check(&path, "h", 2222, &key(ED_A)),
            Ok(Verdict::Unknown)
        ));
        assert!(record(&path, "h", 2222, &key(ED_A)).is_ok());
        assert!(record(&path, "h", 22, &key(ED_B)).is_ok());
        assert!(matches!(
            check(&path, "h", 2222, &key(ED_A)),
            Ok(Verdict::Known)
        ));
        assert!(matches!(
            check(&path, "h", 22, &key(ED_B)),
            Ok(Verdict::Known)
        ));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(text.starts_with("[h]:2222 ssh-ed25519 "), "{text}");
    }

    #[test]
    fn fingerprint_format() {
        assert!(fingerprint(&key(ED_A)).starts_with("SHA256:"));
    }
}
