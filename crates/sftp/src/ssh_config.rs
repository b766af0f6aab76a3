//! The subset of OpenSSH's client configuration (`~/.ssh/config`, ssh_config(5)) that
//! decides where and as whom to connect: `Host` blocks with `HostName`, `User`, `Port`
//! and `IdentityFile`.
//!
//! As in OpenSSH, the first value obtained for a keyword wins, `IdentityFile` lines
//! accumulate, options before the first `Host` apply to every host, and `Host` patterns
//! may use `*`, `?` and `!negation`. `Match` blocks and `Include` are not evaluated (their
//! options are ignored, with a debug log), nor are other keywords.

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
/// [`Error::LocalIo`] when the file exists but cannot be read, [`Error::SshConfig`] for
/// a bad `Port` or an unterminated quote in a block that applies to `alias`.
pub(crate) fn lookup(path: &Path, alias: &str) -> Result<HostConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HostConfig::default()),
        Err(source) => {
            return Err(Error::LocalIo {
                path: path.to_owned(),
                op: "read ssh config",
                source,
            })
        }
    };
    parse(&text, alias).map_err(|(line, reason)| Error::SshConfig {
        path: path.to_owned(),
        line,
        reason,
    })
}

fn parse(text: &str, alias: &str) -> Result<HostConfig, (usize, String)> {
    let mut config = HostConfig::default();
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
            "include" => tracing::debug!(line = line_no, "ssh config: Include is not followed"),
            _ => {}
        }
    }
    Ok(config)
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
