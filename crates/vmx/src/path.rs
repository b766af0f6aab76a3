//! Untrusted paths: [`DatastorePath`] and [`validate_relative_name`].

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Checks that `name` is a relative path that stays inside the folder it is joined to.
///
/// Refused: the empty name, absolute paths, `..`, `.` and empty components (`a//b`,
/// trailing `/`), backslashes, NUL and other control characters.
///
/// # Errors
/// [`Error::UnsafeName`] saying why.
pub fn validate_relative_name(name: &str) -> Result<(), Error> {
    let refuse = |reason| {
        Err(Error::UnsafeName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("empty");
    }
    if name.starts_with('/') {
        return refuse("absolute path");
    }
    if name.contains('\\') {
        return refuse("contains a backslash");
    }
    if name.contains(char::is_control) {
        return refuse("contains a control character");
    }
    for component in name.split('/') {
        match component {
            ".." => return refuse("contains a `..` component"),
            "." => return refuse("contains a `.` component"),
            "" => return refuse("contains an empty component"),
            _ => {}
        }
    }
    Ok(())
}

/// A datastore path: `[datastore1] vm37/vm37.vmx`.
///
/// The datastore name is non-empty and holds no `[`, `]`, `/`, `\` or control character.
/// The relative part is `/`-separated, may be empty (the datastore's root) or end with
/// `/` (a folder), and never starts with `/` or holds a `..` component, backslash or
/// control character, so joining it to the datastore's folder stays inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatastorePath {
    datastore: String,
    path: String,
}

impl DatastorePath {
    /// A datastore path from its two parts.
    ///
    /// # Errors
    /// [`Error::BadDatastorePath`] if either part breaks the rules above.
    pub fn new(datastore: &str, path: &str) -> Result<DatastorePath, Error> {
        let text = || format!("[{datastore}] {path}");
        check_parts(datastore, path).map_err(|reason| Error::BadDatastorePath {
            text: text(),
            reason,
        })?;
        Ok(DatastorePath {
            datastore: datastore.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The datastore name.
    pub fn datastore(&self) -> &str {
        &self.datastore
    }

    /// The path relative to the datastore's root, `/`-separated.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The last component (`vm37.vmx`), or `None` for the root or a folder path ending
    /// in `/`.
    pub fn file_name(&self) -> Option<&str> {
        match self.path.rsplit('/').next() {
            Some("") | None => None,
            Some(name) => Some(name),
        }
    }

    /// The folder holding this path (`[ds] vm37/` for `[ds] vm37/vm37.vmx`, `[ds]` for
    /// `[ds] vm37.vmx`), or `None` for the root.
    pub fn parent(&self) -> Option<DatastorePath> {
        let trimmed = self.path.strip_suffix('/').unwrap_or(&self.path);
        if trimmed.is_empty() {
            return None;
        }
        let folder = trimmed.rfind('/').map_or("", |i| &trimmed[..=i]);
        Some(DatastorePath {
            datastore: self.datastore.clone(),
            path: folder.to_owned(),
        })
    }

    /// `name` (a relative name, see [`validate_relative_name`]) inside this path, taken
    /// as a folder.
    ///
    /// # Errors
    /// [`Error::UnsafeName`] for a name that is not a safe relative name, and
    /// [`Error::BadDatastorePath`] if the result would be invalid.
    pub fn join(&self, name: &str) -> Result<DatastorePath, Error> {
        validate_relative_name(name)?;
        let path = if self.path.is_empty() || self.path.ends_with('/') {
            format!("{}{name}", self.path)
        } else {
            format!("{}/{name}", self.path)
        };
        DatastorePath::new(&self.datastore, &path)
    }
}

fn check_parts(datastore: &str, path: &str) -> Result<(), &'static str> {
    if datastore.is_empty() {
        return Err("empty datastore name");
    }
    if datastore.contains(|c: char| matches!(c, '[' | ']' | '/' | '\\') || c.is_control()) {
        return Err("datastore name holds `[`, `]`, `/`, `\\` or a control character");
    }
    if path.starts_with('/') {
        return Err("the path inside the datastore is absolute");
    }
    if path.contains(|c: char| c == '\\' || c.is_control()) {
        return Err("the path holds a backslash or a control character");
    }
    if path.split('/').any(|c| c == "..") {
        return Err("the path holds a `..` component");
    }
    Ok(())
}

impl FromStr for DatastorePath {
    type Err = Error;

    /// Parses `[datastore] relative/path`; whitespace after `]` is optional.
    fn from_str(s: &str) -> Result<DatastorePath, Error> {
        let bad = |reason| Error::BadDatastorePath {
            text: s.to_owned(),
            reason,
        };
        let rest = s
            .trim()
            .strip_prefix('[')
            .ok_or_else(|| bad("does not start with `[`"))?;
        let (datastore, path) = rest
            .split_once(']')
            .ok_or_else(|| bad("no `]` after the datastore name"))?;
        let path = path.trim_start();
        check_parts(datastore, path).map_err(bad)?;
        Ok(DatastorePath {
            datastore: datastore.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for DatastorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "[{}]", self.datastore)
        } else {
            write!(f, "[{}] {}", self.datastore, self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(s: &str) -> DatastorePath {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_displays() {
        let p = dp("[datastore1] vm37/vm37.vmx");
        assert_eq!(p.datastore(), "datastore1");
        assert_eq!(p.path(), "vm37/vm37.vmx");
        assert_eq!(p.to_string(), "[datastore1] vm37/vm37.vmx");
        assert_eq!(p.file_name(), Some("vm37.vmx"));
        assert_eq!(p.parent().unwrap().to_string(), "[datastore1] vm37/");
        assert_eq!(dp("[my ds]vm.vmx").to_string(), "[my ds] vm.vmx");
        assert_eq!(dp("[ds] vm.vmx").parent().unwrap().to_string(), "[ds]");
        assert_eq!(dp("[ds] vm37/").parent().unwrap().to_string(), "[ds]");
        assert_eq!(dp("[ds] vm37/").file_name(), None);
        assert_eq!(dp("[ds]").parent(), None);
        assert_eq!(dp("[ds] ").to_string(), "[ds]");
        assert_eq!(dp("[ds] a..b/c").path(), "a..b/c");
    }

    #[test]
    fn join_confines_names() {
        let folder = dp("[ds] vm37/");
        assert_eq!(
            folder.join("vm37.vmdk").unwrap().to_string(),
            "[ds] vm37/vm37.vmdk"
        );
        assert_eq!(
            dp("[ds] vm37").join("a").unwrap().to_string(),
            "[ds] vm37/a"
        );
        assert_eq!(dp("[ds]").join("a").unwrap().to_string(), "[ds] a");
        assert!(matches!(folder.join("../x"), Err(Error::UnsafeName { .. })));
    }

    #[test]
    fn error_bad_datastore_path() {
        for s in [
            "vm37/vm37.vmx",
            "[ds vm.vmx",
            "[] vm.vmx",
            "[a/b] vm.vmx",
            "[ds] /etc/passwd",
            "[ds] vm/../../etc",
            "[ds] ..",
            "[ds] a\\b",
            "[ds] a\0b",
        ] {
            assert!(
                matches!(
                    s.parse::<DatastorePath>(),
                    Err(Error::BadDatastorePath { .. })
                ),
                "{s:?}"
            );
        }
        assert!(matches!(
            DatastorePath::new("ds", "../x"),
            Err(Error::BadDatastorePath { .. })
        ));
    }

    #[test]
    fn relative_names() {
        for ok in ["a.vmdk", "dir/a.vmdk", "a..b", "..a", "é"] {
            validate_relative_name(ok).unwrap();
        }
    }

    #[test]
    fn error_unsafe_name() {
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "../a",
            "a/../b",
            "a/..",
            "a\\b",
            "a\0b",
            "./a",
            "a//b",
            "a/",
            "a\nb",
        ] {
            assert!(
                matches!(validate_relative_name(bad), Err(Error::UnsafeName { .. })),
                "{bad:?}"
            );
        }
    }
}
