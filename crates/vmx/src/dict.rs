//! [`Dict`]: an ordered, comment-preserving VMware dictionary.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::escape;
use crate::line::{Eol, Line};
use crate::Error;

/// Largest input [`Dict::parse`] accepts: 16 MiB.
pub const MAX_INPUT_BYTES: usize = 16 << 20;

/// Longest line [`Dict::parse`] accepts, and that a setter writes: 64 KiB.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// How a [`Dict`] writes entries it adds.
///
/// Lines that were parsed keep their own layout; when a value is replaced, the key,
/// spacing and any trailing comment stay as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// `key = "value"`, as in .vmx, .vmsd and .vmxf files.
    #[default]
    Vmx,
    /// `key= "value"`, with [`Dict::set_number`] writing bare integers, as in a backup
    /// catalog.
    Catalog,
}

/// An ordered VMware dictionary file (.vmx, .vmsd, .vmxf or a backup catalog).
///
/// Every line is kept byte for byte: comments, blank lines, unknown keys, key case,
/// spacing and line endings, so `Dict::parse(text)?.to_string() == text`. Keys are
/// matched ASCII-case-insensitively and unique. Values are returned unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dict {
    lines: Vec<Line>,
    /// Lowercased key -> index into `lines`.
    index: HashMap<String, usize>,
    style: Style,
    /// A UTF-8 byte order mark preceded the first line.
    bom: bool,
}

impl Dict {
    /// An empty dictionary that writes new entries in `style`.
    pub fn new(style: Style) -> Dict {
        Dict {
            style,
            ..Dict::default()
        }
    }

    /// Parses dictionary text.
    ///
    /// The writing style is taken from the first entry (`key= value` means
    /// [`Style::Catalog`], anything else [`Style::Vmx`]).
    ///
    /// # Errors
    /// [`Error::TooLarge`], [`Error::LineTooLong`], [`Error::Malformed`],
    /// [`Error::InvalidEscape`] and [`Error::DuplicateKey`].
    pub fn parse(text: &str) -> Result<Dict, Error> {
        if text.len() > MAX_INPUT_BYTES {
            return Err(Error::TooLarge {
                len_bytes: text.len(),
                max_bytes: MAX_INPUT_BYTES,
            });
        }
        let (bom, body) = match text.strip_prefix('\u{FEFF}') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let mut dict = Dict {
            bom,
            ..Dict::default()
        };
        let mut rest = body;
        while !rest.is_empty() {
            let line_no = dict.lines.len() + 1;
            let (raw, eol, next) = match rest.find('\n') {
                Some(i) => match rest[..i].strip_suffix('\r') {
                    Some(t) => (t, Eol::CrLf, &rest[i + 1..]),
                    None => (&rest[..i], Eol::Lf, &rest[i + 1..]),
                },
                None => (rest, Eol::None, ""),
            };
            if raw.len() > MAX_LINE_BYTES {
                return Err(Error::LineTooLong {
                    line: line_no,
                    len_bytes: raw.len(),
                    max_bytes: MAX_LINE_BYTES,
                });
            }
            let line = Line::parse(raw, eol, line_no)?;
            if let Some(key) = line.key() {
                let lower = key.to_ascii_lowercase();
                if let Some(&first) = dict.index.get(&lower) {
                    return Err(Error::DuplicateKey {
                        key: key.to_owned(),
                        line: line_no,
                        first_line: first + 1,
                    });
                }
                dict.index.insert(lower, dict.lines.len());
            }
            dict.lines.push(line);
            rest = next;
        }
        if let Some(first) = dict.lines.iter().find(|l| l.entry.is_some()) {
            if first.is_catalog_style() {
                dict.style = Style::Catalog;
            }
        }
        Ok(dict)
    }

    /// Parses dictionary bytes, which must be UTF-8.
    ///
    /// # Errors
    /// [`Error::NotUtf8`] with the first bad line, and everything [`Dict::parse`] returns.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Dict, Error> {
        if bytes.len() > MAX_INPUT_BYTES {
            return Err(Error::TooLarge {
                len_bytes: bytes.len(),
                max_bytes: MAX_INPUT_BYTES,
            });
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Dict::parse(text),
            Err(e) => {
                let good = bytes.get(..e.valid_up_to()).unwrap_or_default();
                let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
                Err(Error::NotUtf8 { line })
            }
        }
    }

    /// The style new entries are written in.
    pub fn style(&self) -> Style {
        self.style
    }

    /// Changes the style new entries are written in.
    pub fn set_style(&mut self, style: Style) {
        self.style = style;
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True if there are no entries (there may be comments).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// True if `key` (any case) is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(&key.to_ascii_lowercase())
    }

    /// The unescaped value of `key` (any case).
    pub fn get(&self, key: &str) -> Option<&str> {
        let i = *self.index.get(&key.to_ascii_lowercase())?;
        self.lines
            .get(i)?
            .entry
            .as_ref()
            .map(|e| e.decoded.as_str())
    }

    /// The 1-based line `key` is on, for error messages.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.index.get(&key.to_ascii_lowercase()).map(|i| i + 1)
    }

    /// `key` as a boolean: `TRUE`/`FALSE` (any case; `yes`/`no` are also accepted).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if the key is present with another value.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, Error> {
        self.get_parsed(key, "expected TRUE or FALSE", |v| {
            let v = v.trim();
            if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("yes") {
                Some(true)
            } else if v.eq_ignore_ascii_case("false") || v.eq_ignore_ascii_case("no") {
                Some(false)
            } else {
                None
            }
        })
    }

    /// `key` as an unsigned decimal integer.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if the key is present with another value.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, Error> {
        self.get_parsed(key, "expected an unsigned integer", |v| {
            v.trim().parse().ok()
        })
    }

    /// `key` as a signed decimal integer.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if the key is present with another value.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, Error> {
        self.get_parsed(key, "expected an integer", |v| v.trim().parse().ok())
    }

    fn get_parsed<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match parse(value) {
            Some(v) => Ok(Some(v)),
            None => Err(Error::invalid_value(
                self.line_of(key).unwrap_or(0),
                key,
                value,
                expected,
            )),
        }
    }

    /// Sets `key` to the string `value`, written quoted and escaped. An existing entry
    /// (any key case) is replaced in place, keeping its key as written; otherwise the
    /// entry is appended.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for a key that could not be read back, and
    /// [`Error::LineTooLong`] if the line would exceed [`MAX_LINE_BYTES`].
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        self.put(key, &escape::quote(value), value)
    }

    /// Sets `key` to `TRUE` or `FALSE`, as [`Dict::set`] does.
    ///
    /// # Errors
    /// As for [`Dict::set`].
    pub fn set_bool(&mut self, key: &str, value: bool) -> Result<(), Error> {
        self.set(key, if value { "TRUE" } else { "FALSE" })
    }

    /// Sets `key` to an integer. A new entry is quoted in [`Style::Vmx`] and bare in
    /// [`Style::Catalog`]; a replaced entry keeps its quoting.
    ///
    /// # Errors
    /// As for [`Dict::set`].
    pub fn set_number(&mut self, key: &str, value: impl Into<i128>) -> Result<(), Error> {
        let text = value.into().to_string();
        let bare = match self.line_index(key) {
            Some(i) => !self.lines.get(i).is_some_and(Line::is_quoted),
            None => self.style == Style::Catalog,
        };
        let token = if bare {
            text.clone()
        } else {
            escape::quote(&text)
        };
        self.put(key, &token, &text)
    }

    /// Sets `key` to `token` written without quotes (`state= poweredOn`).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if `token` is empty or holds whitespace, `#`, `"`, `|` or
    /// control characters (it would not read back unchanged), and as for [`Dict::set`].
    pub fn set_bare(&mut self, key: &str, token: &str) -> Result<(), Error> {
        if !escape::is_bare_token(token) {
            let line = self.line_of(key).unwrap_or(self.lines.len() + 1);
            return Err(Error::invalid_value(
                line,
                key,
                token,
                "not writable without quotes",
            ));
        }
        self.put(key, token, token)
    }

    fn line_index(&self, key: &str) -> Option<usize> {
        self.index.get(&key.to_ascii_lowercase()).copied()
    }

    fn put(&mut self, key: &str, token: &str, decoded: &str) -> Result<(), Error> {
        check_key(key)?;
        if let Some((i, line)) = self
            .line_index(key)
            .and_then(|i| Some((i, self.lines.get_mut(i)?)))
        {
            let entry_len = line.entry.as_ref().map_or(0, |e| e.value.len());
            let new_len = line.text.len() - entry_len + token.len();
            check_len(i + 1, new_len)?;
            line.replace_value(token, decoded.to_owned());
            return Ok(());
        }
        let sep = self.separator();
        check_len(self.lines.len() + 1, key.len() + sep.len() + token.len())?;
        let eol = self.default_eol();
        if let Some(last) = self.lines.last_mut() {
            if last.eol == Eol::None {
                last.eol = eol;
            }
        }
        let line = Line::new_entry(key, sep, token, decoded.to_owned(), eol);
        self.index
            .insert(key.to_ascii_lowercase(), self.lines.len());
        self.lines.push(line);
        Ok(())
    }

    fn separator(&self) -> &'static str {
        match self.style {
            Style::Vmx => " = ",
            Style::Catalog => "= ",
        }
    }

    /// The line ending of the first line, or `\n`.
    fn default_eol(&self) -> Eol {
        match self.lines.first().map(|l| l.eol) {
            Some(Eol::CrLf) => Eol::CrLf,
            _ => Eol::Lf,
        }
    }

    /// Removes `key` (any case) and returns its unescaped value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.line_index(key)?;
        let line = self.lines.remove(i);
        self.rebuild_index();
        line.entry.map(|e| e.decoded)
    }

    /// Removes every entry whose key starts with `prefix` (ASCII-case-insensitively), such
    /// as `"snapshot3."`, and returns how many were removed.
    pub fn remove_prefix(&mut self, prefix: &str) -> usize {
        let prefix = prefix.to_ascii_lowercase();
        self.remove_where(|key| key.to_ascii_lowercase().starts_with(&prefix))
            .map_or(0, |(_, n)| n)
    }

    /// Removes every entry whose key satisfies `pred`; returns the index the first removed
    /// line had and the number removed.
    pub(crate) fn remove_where(&mut self, pred: impl Fn(&str) -> bool) -> Option<(usize, usize)> {
        let mut first = None;
        let mut removed = 0;
        let mut i = 0;
        self.lines.retain(|line| {
            let drop = line.key().is_some_and(&pred);
            if drop {
                first.get_or_insert(i);
                removed += 1;
            }
            i += 1;
            !drop
        });
        if removed > 0 {
            self.rebuild_index();
        }
        first.map(|f| (f, removed))
    }

    /// Inserts quoted string entries before line index `at` (appending if `at` is past the
    /// end). A key already present is replaced in place instead; a key repeated in
    /// `entries` keeps its last value.
    pub(crate) fn insert_at(
        &mut self,
        at: usize,
        entries: &[(String, String)],
    ) -> Result<(), Error> {
        let at = at.min(self.lines.len());
        let sep = self.separator();
        let eol = self.default_eol();
        let mut new_lines: Vec<Line> = Vec::new();
        let mut new_index: HashMap<String, usize> = HashMap::new();
        for (key, value) in entries {
            if self.contains_key(key) {
                self.set(key, value)?;
                continue;
            }
            check_key(key)?;
            let token = escape::quote(value);
            check_len(
                at + new_lines.len() + 1,
                key.len() + sep.len() + token.len(),
            )?;
            let line = Line::new_entry(key, sep, &token, value.clone(), eol);
            match new_index.entry(key.to_ascii_lowercase()) {
                std::collections::hash_map::Entry::Occupied(o) => new_lines[*o.get()] = line,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(new_lines.len());
                    new_lines.push(line);
                }
            }
        }
        if new_lines.is_empty() {
            return Ok(());
        }
        if at == self.lines.len() {
            if let Some(last) = self.lines.last_mut() {
                if last.eol == Eol::None {
                    last.eol = eol;
                }
            }
        }
        self.lines.splice(at..at, new_lines);
        self.rebuild_index();
        Ok(())
    }

    fn rebuild_index(&mut self) {
        self.index.clear();
        for (i, line) in self.lines.iter().enumerate() {
            if let Some(key) = line.key() {
                self.index.insert(key.to_ascii_lowercase(), i);
            }
        }
    }

    /// The keys, as written, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(Line::key)
    }

    /// `(key as written, unescaped value)` pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| {
            let e = l.entry.as_ref()?;
            Some((l.key()?, e.decoded.as_str()))
        })
    }

    /// Like [`Dict::iter`], with each entry's 1-based line number.
    pub(crate) fn iter_lines(&self) -> impl Iterator<Item = (usize, &str, &str)> {
        self.lines.iter().enumerate().filter_map(|(i, l)| {
            let e = l.entry.as_ref()?;
            Some((i + 1, l.key()?, e.decoded.as_str()))
        })
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    let ok = !key.is_empty()
        && key.trim() == key
        && !key.starts_with('#')
        && !key.contains(|c: char| c == '=' || c == '"' || c.is_control())
        && key.len() < MAX_LINE_BYTES;
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKey {
            key: key.to_owned(),
        })
    }
}

fn check_len(line: usize, len_bytes: usize) -> Result<(), Error> {
    if len_bytes > MAX_LINE_BYTES {
        return Err(Error::LineTooLong {
            line,
            len_bytes,
            max_bytes: MAX_LINE_BYTES,
        });
    }
    Ok(())
}

impl fmt::Display for Dict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bom {
            f.write_str("\u{FEFF}")?;
        }
        for line in &self.lines {
            f.write_str(&line.text)?;
            f.write_str(line.eol.as_str())?;
        }
        Ok(())
    }
}

impl FromStr for Dict {
    type Err = Error;

    fn from_str(s: &str) -> Result<Dict, Error> {
        Dict::parse(s)
    }
}

#[cfg(test)]
#[path = "dict_tests.rs"]
mod tests;
