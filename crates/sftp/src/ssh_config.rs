//! The subset of OpenSSH's client configuration (`~/.ssh/config`, ssh_config(5)) that
//! decides where and as whom to connect: `Host` blocks with `HostName`, `User`, `Port`
//! and `IdentityFile`.
//!
//! As in OpenSSH, the first value obtained for a keyword wins, `IdentityFile` lines
//! accumulate, options before the first `Host` apply to every host, and `Host` patterns
//! may use `*`, `?` and `!negation`. `Include` is followed where it applies: relative
//! names are relative to the including file's folder (`~/.ssh` for the user's config),
//! `*` and `?` glob the last component, files are read in name order, a `Host` line in
//! an included file holds to its end only, and nesting stops at 16 levels. `Match`
//! blocks are not evaluated (their options are ignored, with a debug log), nor are
//! other keywords.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// What the config file says about one host alias.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HostConfig {
    /// `HostName`, with `%h` expanded to the alias.
    pub hostname: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// `IdentityFile` values, unexpanded (see [`expand_path`]).
    pub identity_files: Vec<String>,
}

/// Look `alias` up in the config file at `path`. A missing file is an empty config.
///
/// # Errors
/// [`Error::LocalIo`] when a file exists but cannot be read, [`Error::SshConfig`] for
/// a bad `Port`, an unterminated quote in a block that applies to `alias`, or `Include`
/// nested too deeply.
pub(crate) fn lookup(path: &Path, alias: &str) -> Result<HostConfig> {
    let mut config = HostConfig::default();
    // `~` in an Include is the home folder: the one holding the user's `.ssh`.
    let home = path
        .parent()
        .filter(|d| d.ends_with(".ssh"))
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    read_into(path, alias, home.as_deref(), &mut config, 0)?;
    Ok(config)
}

/// Deepest `Include` nesting followed (OpenSSH's limit).
const MAX_INCLUDE_DEPTH: usize = 16;

fn read_into(
    path: &Path,
    alias: &str,
    home: Option<&Path>,
    config: &mut HostConfig,
    depth: usize,
) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::LocalIo {
                path: path.to_owned(),
                op: "read ssh config",
                source,
            })
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut nested: Option<Error> = None;
    let mut include = |line: usize, pattern: &str, config: &mut HostConfig| -> bool {
        if depth >= MAX_INCLUDE_DEPTH {
            nested = Some(Error::SshConfig {
                path: path.to_owned(),
                line,
                reason: format!("Include nested more than {MAX_INCLUDE_DEPTH} levels"),
            });
            return false;
        }
        for file in expand_include(base, home, pattern) {
            if let Err(e) = read_into(&file, alias, home, config, depth + 1) {
                nested = Some(e);
                return false;
            }
        }
        true
    };
    let parsed = parse_into(&text, alias, config, &mut include);
    if let Some(e) = nested {
        return Err(e);
    }
    parsed.map_err(|(line, reason)| Error::SshConfig {
        path: path.to_owned(),
        line,
        reason,
    })
}

/// The files an `Include` argument names: `~/` is the home folder (none known: the
/// include is skipped), relative names are relative to `base`, and `*`/`?` in the last
/// component glob (sorted).
fn expand_include(base: &Path, home: Option<&Path>, pattern: &str) -> Vec<PathBuf> {
    let path = match (pattern.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        (Some(_), None) => {
            tracing::debug!("ssh config: Include {pattern}: no home folder known; skipped");
            return Vec::new();
        }
        (None, _) => base.join(pattern),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![path];
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| wildcard_match(&name, &e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
fn parse(text: &str, alias: &str) -> Result<HostConfig, (usize, String)> {
    let mut config = HostConfig::default();
    parse_into(text, alias, &mut config, &mut |_, _, _| true)?;
    Ok(config)
}

/// Applies `text` to `config`. An `Include` in an applying block is handed to
/// `include` where it stands (its files are read inline, as OpenSSH does); `include`
/// returns false to stop (it keeps its own error).
pub(crate) fn parse_into(
    text: &str,
    alias: &str,
    config: &mut HostConfig,
    include: &mut dyn FnMut(usize, &str, &mut HostConfig) -> bool,
) -> Result<(), (usize, String)> {
    let mut active = true;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = split_keyword(line);
        let keyword = keyword.to_ascii_lowercase();
        if keyword == "host" {
            let patterns = split_args(rest).map_err(|r| (line_no, r))?;
            active = host_matches(&patterns, alias);
            continue;
        }
        if keyword == "match" {
            tracing::debug!(
                line = line_no,
                "ssh config: Match blocks are not evaluated; skipping"
            );
            active = false;
            continue;
        }
        if !active {
            continue;
        }
        let args = split_args(rest).map_err(|r| (line_no, r))?;
        let Some(first) = args.first() else {
            return Err((line_no, format!("{keyword}: missing value")));
        };
        match keyword.as_str() {
            "hostname" if config.hostname.is_none() => {
                config.hostname = Some(first.replace("%h", alias))
            }
            "user" if config.user.is_none() => config.user = Some(first.clone()),
            "port" if config.port.is_none() => match first.parse::<u16>() {
                Ok(port) if port > 0 => config.port = Some(port),
                _ => return Err((line_no, format!("Port {first:?} is not 1 to 65535"))),
            },
            "identityfile" => config.identity_files.push(first.clone()),
            "include" => {
                for a in &args {
                    if !include(line_no, a, config) {
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// `keyword rest`, where the separator is whitespace and/or one `=`.
fn split_keyword(line: &str) -> (&str, &str) {
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let rest = line[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    (&line[..end], rest)
}

/// Whitespace-separated arguments; double quotes group (without escapes, as OpenSSH).
fn split_args(rest: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' {
            break;
        }
        let mut arg = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(ch) => arg.push(ch),
                    None => return Err("unterminated quote".to_owned()),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                arg.push(ch);
                chars.next();
            }
        }
        args.push(arg);
    }
    Ok(args)
}

/// OpenSSH `Host` semantics: some positive pattern matches and no negated one does.
fn host_matches(patterns: &[String], alias: &str) -> bool {
    let mut matched = false;
    for pattern in patterns {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated, alias) {
                return false;
            }
        } else if wildcard_match(pattern, alias) {
            matched = true;
        }
    }
    matched
}

/// Glob match with `*` (any run) and `?` (one character), ASCII case-insensitive as
/// OpenSSH compares host names.
pub(crate) fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    // Classic iterative glob with backtracking to the last `*`.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Values for `%` tokens and `~` in an `IdentityFile` path.
pub(crate) struct Tokens<'a> {
    /// Home folder (`~`, `%d`).
    pub home: Option<&'a Path>,
    /// Local user (`%u`).
    pub local_user: Option<&'a str>,
    /// Remote user (`%r`).
    pub remote_user: &'a str,
    /// Host name connected to (`%h`).
    pub host: &'a str,
    /// Port (`%p`).
    pub port: u16,
}

/// Expand `~/`, `%d`, `%u`, `%r`, `%h`, `%p` and `%%`; `None` when a token is needed
/// but unknown (no home folder), so the file is skipped.
pub(crate) fn expand_path(raw: &str, tokens: &Tokens<'_>) -> Option<PathBuf> {
    let home = tokens.home.map(|h| h.to_string_lossy().into_owned());
    let mut out = String::new();
    let rest = if let Some(stripped) = raw.strip_prefix("~/") {
        out.push_str(home.as_deref()?);
        out.push('/');
        stripped
    } else {
        raw
    };
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('d') => out.push_str(home.as_deref()?),
            Some('u') => out.push_str(tokens.local_user?),
            Some('r') => out.push_str(tokens.remote_user),
            Some('h') => out.push_str(tokens.host),
            Some('p') => out.push_str(&tokens.port.to_string()),
            _ => return None,
        }
    }
    Some(PathBuf::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
# global
IdentityFile ~/.ssh/global_key

Host vault backup-*  !backup-old
    HostName %h.example.com
    User   backup
    Port=2222
    IdentityFile \"~/.ssh/vault key\"

Host vault
    User ignored-second-value
    Port 23

Match host vault
    User matched

Host *
    User fallback
    Port 22
";

    #[test]
    fn first_value_wins_and_identity_files_accumulate() {
        let c = parse(CONFIG, "vault").unwrap_or_default();
        assert_eq!(c.hostname.as_deref(), Some("vault.example.com"));
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.port, Some(2222));
        assert_eq!(
            c.identity_files,
            vec![
                "~/.ssh/global_key".to_owned(),
                "~/.ssh/vault key".to_owned()
            ]
        );
    }

    #[test]
    fn wildcards_and_negation() {
        let c = parse(CONFIG, "backup-7").unwrap_or_default();
        assert_eq!((c.user.as_deref(), c.port), (Some("backup"), Some(2222)));
        let c = parse(CONFIG, "backup-old").unwrap_or_default();
        assert_eq!(
            (c.user.as_deref(), c.port, c.hostname),
            (Some("fallback"), Some(22), None)
        );
        let c = parse(CONFIG, "other").unwrap_or_default();
        assert_eq!(c.user.as_deref(), Some("fallback"));
    }

    #[test]
    fn bad_port_is_an_error_with_line() {
        let err = parse("Host x\n  Port nope\n", "x");
        assert!(
            matches!(err, Err((2, ref r)) if r.contains("Port")),
            "{err:?}"
        );
        // A bad line in a block that does not apply is not evaluated.
        assert!(parse("Host x\n  Port nope\n", "y").is_ok());
    }

    #[test]
    fn unterminated_quote() {
        assert!(matches!(parse("IdentityFile \"abc\n", "x"), Err((1, _))));
    }

    #[test]
    fn missing_file_is_empty() {
        let c = lookup(Path::new("/nonexistent/vcb/ssh_config"), "x");
        assert!(matches!(c, Ok(ref c) if *c == HostConfig::default()));
    }

    #[test]
    fn issue_10_include_is_followed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ssh = dir.path().join(".ssh");
        let _ = std::fs::create_dir_all(ssh.join("conf.d"));
        let _ = std::fs::write(
            ssh.join("config"),
            "Include conf.d/*.conf\nHost *\n  User fallback\n",
        );
        let _ = std::fs::write(ssh.join("conf.d/10-nas.conf"), "Host nas\n  HostName 10.0.0.9\n  Port 2200\n  Include ~/.ssh/deeper\nHost *\n  Port 2300\n");
        let _ = std::fs::write(ssh.join("deeper"), "IdentityFile ~/.ssh/deep_key\n");
        let c = lookup(&ssh.join("config"), "nas").unwrap_or_default();
        assert_eq!(c.hostname.as_deref(), Some("10.0.0.9"));
        assert_eq!(c.port, Some(2200));
        assert_eq!(c.user.as_deref(), Some("fallback"));
        assert_eq!(c.identity_files, vec!["~/.ssh/deep_key".to_owned()]);
        let c = lookup(&ssh.join("config"), "other").unwrap_or_default();
        assert!(c.identity_files.is_empty() && c.hostname.is_none());
        // Read inline: the included file's `Host *` held to its end only, and its value
        // came before the including file's later lines.
        assert_eq!(c.port, Some(2300));
        let _ = std::fs::write(ssh.join("loop"), "Include loop\n");
        let e = lookup(&ssh.join("loop"), "x");
        assert!(
            matches!(e, Err(Error::SshConfig { ref reason, .. }) if reason.contains("nested")),
            "{e:?}"
        );
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*c", "abbbc"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*.EXAMPLE.com", "host.example.com"));
        assert!(!wildcard_match("*.example.com", "example.org"));
        assert!(wildcard_match("[10.0.0.*]:22", "[10.0.0.5]:22"));
    }

    #[test]
    fn token_expansion() {
        let tokens = Tokens {
            home: Some(Path::new("/home/u")),
            local_user: Some("u"),
            remote_user: "r",
            host: "h",
            port: 2222,
        };
        assert_eq!(
            expand_path("~/.ssh/id_%r@%h:%p", &tokens),
            Some(PathBuf::from("/home/u/.ssh/id_r@h:2222"))
        );
        assert_eq!(
            expand_path("%d/k_%u%%", &tokens),
            Some(PathBuf::from("/home/u/k_u%"))
        );
        assert_eq!(expand_path("/k%x", &tokens), None);
        let no_home = Tokens {
            home: None,
            ..tokens
        };
        assert_eq!(expand_path("~/.ssh/k", &no_home), None);
    }
}
