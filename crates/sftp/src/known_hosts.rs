//! Host key verification against an OpenSSH `known_hosts` file (sshd(8), "SSH_KNOWN_HOSTS
//! FILE FORMAT").
//!
//! A line is `[marker] hostpatterns keytype base64-key [comment]`. Host patterns are
//! comma-separated: plain names, `[host]:port` for a port other than 22, globs (`*`,
//! `?`), `!negations`, and hashed entries `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`
//! as `HashKnownHosts yes` writes them. The name looked up is `host` on port 22 and
//! `[host]:port` otherwise, as OpenSSH does.
//!
//! `@revoked` lines are honoured: a key they list is refused for every host their
//! patterns match, whatever else the files say. `@cert-authority` lines are skipped
//! (host certificates are not supported). A key of a different algorithm recorded for
//! the same host does not make the offered key "changed" (OpenSSH also asks first in
//! that case); it is unknown. Several files are consulted in order (the user's, then
//! the system-wide `/etc/ssh/ssh_known_hosts`), as OpenSSH does.

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
    /// An `@revoked` line lists this key, at this 1-based line.
    Revoked {
        /// Line of the revocation.
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
    Ok(match read(path)? {
        Some(text) => check_text(&text, &lookup_name(host, port), key),
        None => Verdict::Unknown,
    })
}

/// Check `key` against every file of `paths` (in order): a revocation anywhere wins,
/// then a file that knows the key, then the first file recording another key.
///
/// # Errors
/// [`Error::LocalIo`] when a file exists but cannot be read.
pub(crate) fn check_all(
    paths: &[std::path::PathBuf],
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<(Verdict, Option<std::path::PathBuf>)> {
    let mut best: (Verdict, Option<std::path::PathBuf>) = (Verdict::Unknown, None);
    for path in paths {
        let v = check(path, host, port, key)?;
        let rank = |v: &Verdict| match v {
            Verdict::Revoked { .. } => 3,
            Verdict::Known => 2,
            Verdict::Changed { .. } => 1,
            Verdict::Unknown => 0,
        };
        if rank(&v) > rank(&best.0) {
            best = (v, Some(path.clone()));
        }
    }
    Ok(best)
}

/// The key algorithms the files record for `host:port`, in file order: the client
/// offers them first, so a server known by its ECDSA key is not called unknown because
/// another algorithm was negotiated.
pub(crate) fn known_algorithms(
    paths: &[std::path::PathBuf],
    host: &str,
    port: u16,
) -> Vec<russh::keys::Algorithm> {
    let name = lookup_name(host, port);
    let mut out = Vec::new();
    for path in paths {
        let Ok(Some(text)) = read(path) else { continue };
        for a in algorithms_in(&text, &name) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// The key algorithms `text` records for the lookup name `name`, in file order.
pub(crate) fn algorithms_in(text: &str, name: &str) -> Vec<russh::keys::Algorithm> {
    let mut out = Vec::new();
    {
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let Some(patterns) = fields.next() else {
                continue;
            };
            if patterns.starts_with('#')
                || patterns.starts_with('@')
                || !patterns_match(patterns, name)
            {
                continue;
            }
            let (Some(key_type), Some(blob)) = (fields.next(), fields.next()) else {
                continue;
            };
            if let Ok(k) = PublicKey::from_openssh(&format!("{key_type} {blob}")) {
                if !out.contains(&k.algorithm()) {
                    out.push(k.algorithm());
                }
            }
        }
    }
    out
}

/// The file's text, or `None` when it does not exist.
fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::LocalIo {
            path: path.to_owned(),
            op: "read known_hosts",
            source,
        }),
    }
}

pub(crate) fn check_text(text: &str, name: &str, key: &PublicKey) -> Verdict {
    let mut changed = None;
    let mut known = false;
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(mut patterns) = fields.next() else {
            continue;
        };
        if patterns.starts_with('#') {
            continue;
        }
        let revoked = patterns == "@revoked";
        if revoked {
            match fields.next() {
                Some(p) => patterns = p,
                None => continue,
            }
        } else if patterns.starts_with('@') {
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
        let same = recorded.key_data() == key.key_data();
        if revoked {
            if same {
                return Verdict::Revoked { line: index + 1 };
            }
            continue;
        }
        if same {
            known = true;
        } else if recorded.algorithm() == key.algorithm() && changed.is_none() {
            changed = Some(index + 1);
        }
    }
    match (known, changed) {
        (true, _) => Verdict::Known,
        (false, Some(line)) => Verdict::Changed { line },
        (false, None) => Verdict::Unknown,
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
    fn issue_10_revoked_keys_are_refused_whatever_else_the_file_says() {
        let text = format!(
            "nas {ED_A}
@revoked * {ED_A}
@revoked other {ED_B}
"
        );
        assert_eq!(
            check_text(&text, "nas", &key(ED_A)),
            Verdict::Revoked { line: 2 }
        );
        assert_eq!(
            check_text(&text, "nas", &key(ED_B)),
            Verdict::Changed { line: 1 }
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (user, global) = (dir.path().join("user"), dir.path().join("global"));
        let _ = std::fs::write(
            &user,
            format!(
                "[h]:2222 {ED_B}
"
            ),
        );
        let _ = std::fs::write(
            &global,
            format!(
                "[h]:2222 {ED_A}
"
            ),
        );
        let files = [user.clone(), global.clone()];
        let (v, file) = check_all(&files, "h", 2222, &key(ED_A)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (v, file),
            (Verdict::Known, Some(global.clone())),
            "the global file counts"
        );
        let _ = std::fs::write(
            &global,
            format!(
                "@revoked * {ED_B}
"
            ),
        );
        let (v, _) = check_all(&files, "h", 2222, &key(ED_B)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v, Verdict::Revoked { line: 1 });
        let algs = known_algorithms(&files, "h", 2222);
        assert_eq!(algs.len(), 1, "{algs:?}");
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
