//! One physical line of a dictionary file: its exact text, its terminator, and for
//! `key = value` lines where the key and the value token sit in that text.

use std::ops::Range;

use crate::escape;
use crate::Error;

/// How a line ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eol {
    /// Last line of a file without a final newline.
    None,
    /// `\n`.
    Lf,
    /// `\r\n`.
    CrLf,
}

impl Eol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Eol::None => "",
            Eol::Lf => "\n",
            Eol::CrLf => "\r\n",
        }
    }
}

/// Where the key and the value are in an entry line, and the decoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Byte range of the key (trimmed) in the line's text.
    pub(crate) key: Range<usize>,
    /// Byte range of the value token in the line's text, quotes included.
    pub(crate) value: Range<usize>,
    /// The value with quotes removed and escapes decoded.
    pub(crate) decoded: String,
}

/// One line, kept byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// The text without its terminator.
    pub(crate) text: String,
    /// The terminator.
    pub(crate) eol: Eol,
    /// `Some` for a `key = value` line; `None` for blank and comment lines.
    pub(crate) entry: Option<Entry>,
}

impl Line {
    /// The key as written, if this is an entry.
    pub(crate) fn key(&self) -> Option<&str> {
        self.entry
            .as_ref()
            .and_then(|e| self.text.get(e.key.clone()))
    }

    /// Parses one line (without its terminator). `line_no` is used in errors.
    pub(crate) fn parse(text: &str, eol: Eol, line_no: usize) -> Result<Line, Error> {
        let entry = parse_entry(text, line_no)?;
        Ok(Line {
            text: text.to_owned(),
            eol,
            entry,
        })
    }

    /// A new entry line `key<sep>token`, where `token` is an already formatted value.
    pub(crate) fn new_entry(key: &str, sep: &str, token: &str, decoded: String, eol: Eol) -> Line {
        let text = format!("{key}{sep}{token}");
        let value_start = key.len() + sep.len();
        Line {
            entry: Some(Entry {
                key: 0..key.len(),
                value: value_start..text.len(),
                decoded,
            }),
            text,
            eol,
        }
    }

    /// Replaces the value token in place, keeping the key and spacing as written.
    /// Returns false for a line that is not an entry.
    pub(crate) fn replace_value(&mut self, token: &str, decoded: String) -> bool {
        let Some(entry) = self.entry.as_mut() else {
            return false;
        };
        let start = entry.value.start;
        self.text.replace_range(entry.value.clone(), token);
        entry.value = start..start + token.len();
        entry.decoded = decoded;
        true
    }

    /// True if the value token is quoted.
    pub(crate) fn is_quoted(&self) -> bool {
        self.entry
            .as_ref()
            .and_then(|e| self.text.get(e.value.clone()))
            .is_some_and(|t| t.starts_with('"'))
    }

    /// True if the line has no whitespace before `=` and some after: `key= value`.
    pub(crate) fn is_catalog_style(&self) -> bool {
        let Some(entry) = &self.entry else {
            return false;
        };
        let rest = &self.text[entry.key.end..];
        rest.starts_with('=') && rest[1..].starts_with(|c: char| c.is_whitespace())
    }
}

fn malformed(line_no: usize, text: &str) -> Error {
    Error::Malformed {
        line: line_no,
        text: text.chars().take(80).collect(),
    }
}

fn parse_entry(text: &str, line_no: usize) -> Result<Option<Entry>, Error> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let Some(eq) = text.find('=') else {
        return Err(malformed(line_no, text));
    };
    let key_text = &text[..eq];
    let key_start = key_text.len() - key_text.trim_start().len();
    let key_end = key_text.trim_end().len();
    let key = &text[key_start..key_end.max(key_start)];
    if key.is_empty() || key.contains(|c: char| c == '"' || c.is_control()) {
        return Err(malformed(line_no, text));
    }
    let after = eq + 1;
    let rest = &text[after..];
    let value_start = after + (rest.len() - rest.trim_start().len());
    let value_text = &text[value_start..];
    let (value, raw) = if let Some(inner) = value_text.strip_prefix('"') {
        let close = inner.find('"').ok_or_else(|| malformed(line_no, text))?;
        let tail = inner[close + 1..].trim_start();
        if !(tail.is_empty() || tail.starts_with('#')) {
            return Err(malformed(line_no, text));
        }
        (value_start..value_start + close + 2, &inner[..close])
    } else {
        let end = bare_end(value_text);
        (value_start..value_start + end, &value_text[..end])
    };
    let decoded = escape::unescape(raw).ok_or_else(|| Error::InvalidEscape {
        line: line_no,
        key: key.to_owned(),
    })?;
    Ok(Some(Entry {
        key: key_start..key_end,
        value,
        decoded,
    }))
}

/// Length of an unquoted value: up to a `#` that follows whitespace (a trailing comment),
/// without trailing whitespace.
fn bare_end(s: &str) -> usize {
    let mut prev_space = false;
    let mut end = s.len();
    for (i, c) in s.char_indices() {
        if c == '#' && prev_space {
            end = i;
            break;
        }
        prev_space = c.is_whitespace();
    }
    s[..end].trim_end().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> (String, String, String) {
        let line = Line::parse(text, Eol::Lf, 1).unwrap();
        let e = line.entry.clone().unwrap();
        (
            line.key().unwrap().to_owned(),
            text[e.value].to_owned(),
            e.decoded,
        )
    }

    #[test]
    fn parses_the_usual_forms() {
        let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            entry(r#"memsize = "1024""#),
            s("memsize", "\"1024\"", "1024")
        );
        assert_eq!(entry(r#"  a.b=   "x y"  "#), s("a.b", "\"x y\"", "x y"));
        assert_eq!(entry("version= 1"), s("version", "1", "1"));
        assert_eq!(
            entry(r#"display name= "vm37""#),
            s("display name", "\"vm37\"", "vm37")
        );
        assert_eq!(
            entry("state= poweredOn   # note"),
            s("state", "poweredOn", "poweredOn")
        );
        assert_eq!(entry(r#"k = "v" # note"#), s("k", "\"v\"", "v"));
        assert_eq!(entry("k ="), s("k", "", ""));
        assert_eq!(entry("k = a=b"), s("k", "a=b", "a=b"));
    }

    #[test]
    fn comments_and_blanks_are_not_entries() {
        for t in ["", "   ", "# x = 1", "#!/usr/bin/vmware", "\t# c"] {
            assert!(Line::parse(t, Eol::Lf, 1).unwrap().entry.is_none());
        }
    }

    #[test]
    fn malformed_lines() {
        for t in [
            "novalue",
            "= \"x\"",
            "  = 1",
            "k = \"open",
            "k = \"a\" b",
            "k\"q = 1",
        ] {
            let err = Line::parse(t, Eol::Lf, 4).unwrap_err();
            assert!(
                matches!(err, Error::Malformed { line: 4, .. }),
                "{t}: {err}"
            );
        }
    }

    #[test]
    fn invalid_escape_is_reported_with_key() {
        let err = Line::parse("k = \"|FE\"", Eol::Lf, 2).unwrap_err();
        assert!(matches!(err, Error::InvalidEscape { line: 2, ref key } if key == "k"));
    }

    #[test]
    fn replace_value_keeps_layout() {
        let mut line = Line::parse("  Key   =  \"old\"   # c", Eol::Lf, 1).unwrap();
        assert!(line.replace_value("\"newer\"", "newer".into()));
        assert_eq!(line.text, "  Key   =  \"newer\"   # c");
        assert_eq!(line.entry.unwrap().decoded, "newer");
    }

    #[test]
    fn detects_catalog_style() {
        assert!(Line::parse("version= 1", Eol::Lf, 1)
            .unwrap()
            .is_catalog_style());
        assert!(!Line::parse("a = \"1\"", Eol::Lf, 1)
            .unwrap()
            .is_catalog_style());
        assert!(!Line::parse("a=\"1\"", Eol::Lf, 1)
            .unwrap()
            .is_catalog_style());
    }
}
