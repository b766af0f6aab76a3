//! Remote destination URLs: `scp://` (the seed's forms) and `sftp://` (the standard form).
//!
//! | form | example |
//! | --- | --- |
//! | seed, default port | `scp://user@host:/abs/path` |
//! | seed, other port | `scp://user@host:2222:/abs/path` |
//! | standard | `sftp://user@host/abs/path`, `sftp://user@host:2222/abs/path` |
//!
//! Both schemes accept every form above; the user part is optional (the ssh config's
//! `User`, else the local user, fills it in at connect time) and the host may be an
//! IPv6 literal in brackets (`[::1]`). The path must be absolute: a backup location
//! relative to a login directory is ambiguous across servers, so it is refused. Paths are
//! taken literally (no percent-decoding).

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// Which spelling the URL used; both mean SFTP over SSH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `scp://`
    Scp,
    /// `sftp://`
    Sftp,
}

/// A parsed `scp://` or `sftp://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    /// The scheme as written.
    pub scheme: Scheme,
    /// The remote user, if the URL names one.
    pub user: Option<String>,
    /// Host name, ssh config alias or address (IPv6 without brackets).
    pub host: String,
    /// TCP port, if the URL names one (else the ssh config's `Port`, else 22).
    pub port: Option<u16>,
    /// Absolute remote path, without a trailing `/` (except the root itself).
    pub path: String,
}

impl RemoteUrl {
    /// Whether `spec` is meant as a remote URL (starts with `scp://` or `sftp://`), so a
    /// caller can route it here and report parse errors instead of treating it as a path.
    pub fn is_remote(spec: &str) -> bool {
        scheme_of(spec).is_some()
    }

    /// Parse one of the forms in the module documentation.
    ///
    /// # Errors
    /// [`Error::BadUrl`] naming the input and what is wrong: unknown scheme, empty user or
    /// host, bad port, missing or relative path, whitespace or control characters.
    pub fn parse(input: &str) -> Result<RemoteUrl> {
        let bad = |reason: &str| Error::BadUrl {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = scheme_of(input).ok_or_else(|| bad("expected scp:// or sftp://"))?;
        if input.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("contains whitespace or control characters"));
        }
        let (user, rest) = split_user(rest).map_err(&bad)?;
        let (host, rest) = split_host(rest).map_err(&bad)?;
        let (port, path) = split_port_path(rest).map_err(&bad)?;
        let path = normalize_path(path).map_err(bad)?;
        Ok(RemoteUrl {
            scheme,
            user,
            host,
            port,
            path,
        })
    }

    /// The full path of `name` inside this URL's folder (`name` is `/`-separated and
    /// relative).
    pub fn join(&self, name: &str) -> String {
        join_path(&self.path, name)
    }
}

impl FromStr for RemoteUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<RemoteUrl> {
        RemoteUrl::parse(s)
    }
}

impl fmt::Display for RemoteUrl {
    /// The URL in its own scheme's canonical form (seed form for `scp://`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Scp => "scp",
            Scheme::Sftp => "sftp",
        };
        write!(f, "{scheme}://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        match (self.scheme, self.port) {
            (Scheme::Scp, Some(port)) => write!(f, ":{port}:{}", self.path),
            (Scheme::Scp, None) => write!(f, ":{}", self.path),
            (Scheme::Sftp, Some(port)) => write!(f, ":{port}{}", self.path),
            (Scheme::Sftp, None) => f.write_str(&self.path),
        }
    }
}

/// `dir` joined with the relative `/`-separated `name`.
pub(crate) fn join_path(dir: &str, name: &str) -> String {
    let name = name.trim_start_matches('/');
    if name.is_empty() {
        dir.to_owned()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The parent folder of an absolute path (`/` for top-level names).
pub(crate) fn parent_path(path: &str) -> &str {
    match path.trim_end_matches('/').rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn scheme_of(input: &str) -> Option<(Scheme, &str)> {
    let (scheme, rest) = input.split_once("://")?;
    if scheme.eq_ignore_ascii_case("scp") {
        Some((Scheme::Scp, rest))
    } else if scheme.eq_ignore_ascii_case("sftp") {
        Some((Scheme::Sftp, rest))
    } else {
        None
    }
}

fn split_user(rest: &str) -> Result<(Option<String>, &str), &'static str> {
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].find('@') {
        None => Ok((None, rest)),
        Some(0) => Err("empty user name before '@'"),
        Some(at) => {
            let user = &rest[..at];
            if user.contains(':') {
                return Err("passwords in URLs are not supported (key authentication only)");
            }
            Ok((Some(user.to_owned()), &rest[at + 1..]))
        }
    }
}

fn split_host(rest: &str) -> Result<(String, &str), &'static str> {
    if let Some(inner) = rest.strip_prefix('[') {
        let end = inner.find(']').ok_or("unterminated '[' in IPv6 host")?;
        let host = &inner[..end];
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err("bad IPv6 address in brackets");
        }
        return Ok((host.to_owned(), &inner[end + 1..]));
    }
    let end = rest.find([':', '/']).unwrap_or(rest.len());
    let host = &rest[..end];
    if host.is_empty() {
        return Err("empty host name");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return Err("bad character in host name");
    }
    Ok((host.to_owned(), &rest[end..]))
}

fn split_port_path(rest: &str) -> Result<(Option<u16>, &str), &'static str> {
    let Some(after_colon) = rest.strip_prefix(':') else {
        return match rest {
            "" => Err("no path (expected host:/abs/path or host/abs/path)"),
            path => Ok((None, path)),
        };
    };
    let digits = after_colon.len()
        - after_colon
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    let (port_text, tail) = after_colon.split_at(digits);
    let port = if port_text.is_empty() {
        None
    } else {
        match port_text.parse::<u16>() {
            Ok(0) | Err(_) => return Err("port must be 1 to 65535"),
            Ok(port) => Some(port),
        }
    };
    // After a port, the seed form has a second ':' before the path; the standard form not.
    let path = match (port, tail.strip_prefix(':')) {
        (Some(_), Some(path)) => path,
        _ => tail,
    };
    if path.is_empty() {
        return Err("no path after the host (expected an absolute path like :/backups)");
    }
    Ok((port, path))
}

fn normalize_path(path: &str) -> Result<String, &'static str> {
    if !path.starts_with('/') {
        return Err("the path must be absolute (start with '/')");
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RemoteUrl {
        match RemoteUrl::parse(s) {
            Ok(u) => u,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn bad(s: &str) -> String {
        match RemoteUrl::parse(s) {
            Err(Error::BadUrl { input, reason }) => {
                assert_eq!(input, s);
                reason
            }
            other => panic!("{s}: expected BadUrl, got {other:?}"),
        }
    }

    #[test]
    fn seed_form() {
        let u = url("scp://backup@vault:/srv/vms");
        assert_eq!(
            u,
            RemoteUrl {
                scheme: Scheme::Scp,
                user: Some("backup".into()),
                host: "vault".into(),
                port: None,
                path: "/srv/vms".into()
            }
        );
        assert_eq!(u.to_string(), "scp://backup@vault:/srv/vms");
    }

    #[test]
    fn seed_form_with_port() {
        let u = url("scp://backup@vault.example.com:2222:/srv/vms/");
        assert_eq!(
            (u.port, u.path.as_str(), u.host.as_str()),
            (Some(2222), "/srv/vms", "vault.example.com")
        );
        assert_eq!(
            u.to_string(),
            "scp://backup@vault.example.com:2222:/srv/vms"
        );
    }

    #[test]
    fn sftp_forms() {
        let u = url("sftp://backup@vault/srv/vms");
        assert_eq!(
            (u.scheme, u.port, u.path.as_str()),
            (Scheme::Sftp, None, "/srv/vms")
        );
        let u = url("sftp://backup@10.0.0.5:2200/srv");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("10.0.0.5", Some(2200), "/srv")
        );
        assert_eq!(u.to_string(), "sftp://backup@10.0.0.5:2200/srv");
        let u = url("SFTP://vault/");
        assert_eq!((u.user, u.path.as_str()), (None, "/"));
    }

    #[test]
    fn user_is_optional() {
        let u = url("scp://vault:/srv");
        assert_eq!(u.user, None);
        assert_eq!(u.to_string(), "scp://vault:/srv");
    }

    #[test]
    fn ipv6_host() {
        let u = url("sftp://root@[::1]:2222/data");
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(2222)));
        assert_eq!(u.to_string(), "sftp://root@[::1]:2222/data");
        let u = url("scp://root@[fe80::1]:/data");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("fe80::1", None, "/data")
        );
    }

    #[test]
    fn at_sign_in_path_is_not_a_user() {
        let u = url("sftp://vault/srv/a@b");
        assert_eq!((u.user, u.path.as_str()), (None, "/srv/a@b"));
    }

    #[test]
    fn refuses_bad_input() {
        assert!(bad("").contains("scp://"));
        assert!(bad("/local/path").contains("scp://"));
        assert!(bad("http://host/x").contains("scp://"));
        assert!(bad("scp://user@host:backups").contains("absolute"));
        assert!(bad("scp://user@host:~/backups").contains("absolute"));
        assert!(bad("sftp://host").contains("no path"));
        assert!(bad("scp://user@host:").contains("no path"));
        assert!(bad("scp://user@host:2222").contains("no path"));
        assert!(bad("scp://user@host:2222:").contains("no path"));
        assert!(bad("scp://user@host: /srv").contains("whitespace"));
        assert!(bad("scp://@host:/srv").contains("empty user"));
        assert!(bad("scp://user@:/srv").contains("empty host"));
        assert!(bad("scp://user:pw@host:/srv").contains("password"));
        assert!(bad("scp://user@host:0:/srv").contains("port"));
        assert!(bad("scp://user@host:99999:/srv").contains("port"));
        assert!(bad("scp://user@ho$t:/srv").contains("host"));
        assert!(bad("sftp://[::1/srv").contains("IPv6"));
        assert!(bad("sftp://[zz]/srv").contains("IPv6"));
        assert!(bad("scp://host:/a\nb").contains("control"));
        assert!(bad("scp://host:/a\u{7f}b").contains("control"));
    }

    #[test]
    fn is_remote() {
        assert!(RemoteUrl::is_remote("scp://h:/p"));
        assert!(RemoteUrl::is_remote("sftp://h/p"));
        assert!(!RemoteUrl::is_remote("/srv/backups"));
        assert!(!RemoteUrl::is_remote("file:///srv"));
    }

    #[test]
    fn join_and_parent() {
        let u = url("scp://h:/srv/vms");
        assert_eq!(u.join("vm37/catalog"), "/srv/vms/vm37/catalog");
        assert_eq!(join_path("/", "x"), "/x");
        assert_eq!(parent_path("/srv/vms/x"), "/srv/vms");
        assert_eq!(parent_path("/x"), "/");
        assert_eq!(parent_path("/"), "/");
    }
}
