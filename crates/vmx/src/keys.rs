//! Case-insensitive key helpers.

/// `s` without `prefix`, compared ASCII-case-insensitively.
pub(crate) fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// `s` without `suffix`, compared ASCII-case-insensitively.
pub(crate) fn strip_suffix_ci<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let i = s.len().checked_sub(suffix.len())?;
    let tail = s.get(i..)?;
    tail.eq_ignore_ascii_case(suffix)
        .then(|| s.get(..i))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_any_case() {
        assert_eq!(strip_prefix_ci("Snapshot0.uid", "snapshot"), Some("0.uid"));
        assert_eq!(strip_prefix_ci("snap", "snapshot"), None);
        assert_eq!(strip_prefix_ci("éé", "e"), None);
        assert_eq!(
            strip_suffix_ci("scsi0:0.FILENAME", ".fileName"),
            Some("scsi0:0")
        );
        assert_eq!(strip_suffix_ci("é.x", "..x"), None);
        assert_eq!(strip_suffix_ci("x", ".fileName"), None);
    }
}
