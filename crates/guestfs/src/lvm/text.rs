//! lvm2's metadata text: `name = value`, `name { ... }`, values numbers, strings or lists.

use crate::{Error, Result};

/// A value of the metadata text.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number.
    Int(u64),
    /// A string.
    Str(String),
    /// `[a, b, ...]`.
    List(Vec<Value>),
    /// `{ key = value ... }` in order.
    Section(Vec<(String, Value)>),
}

impl Value {
    /// The value of `key` in a section.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    /// The number at `key`.
    pub fn int(&self, key: &str) -> Option<u64> {
        match self.get(key) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        }
    }
    /// The string at `key`.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
    /// The subsections of a section.
    pub fn sections(&self) -> Vec<(&String, &Value)> {
        match self {
            Value::Section(items) => items
                .iter()
                .filter(|(_, v)| matches!(v, Value::Section(_)))
                .map(|(k, v)| (k, v))
                .collect(),
            _ => vec![],
        }
    }
}

const MAX_DEPTH: usize = 16;

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

/// Parse metadata text into its top-level section.
///
/// # Errors
/// [`Error::Corrupt`] with the byte offset of the first thing that is not the syntax.
pub fn parse(text: &str) -> Result<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
    };
    let items = p.items(0, false)?;
    Ok(Value::Section(items))
}

impl Parser<'_> {
    fn err(&self, why: &str) -> Error {
        Error::corrupt("LVM metadata", format!("{why} at byte {}", self.pos))
    }

    fn skip(&mut self) {
        while let Some(&c) = self.s.get(self.pos) {
            if c == b'#' {
                while self.s.get(self.pos).is_some_and(|&c| c != b'\n') {
                    self.pos += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn items(&mut self, depth: usize, nested: bool) -> Result<Vec<(String, Value)>> {
        if depth > MAX_DEPTH {
            return Err(self.err("sections nested too deep"));
        }
        let mut items = Vec::new();
        loop {
            self.skip();
            match self.s.get(self.pos) {
                None if !nested => return Ok(items),
                None => return Err(self.err("unterminated section")),
                Some(b'}') if nested => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => {}
            }
            let start = self.pos;
            while self
                .s
                .get(self.pos)
                .is_some_and(|c| c.is_ascii_alphanumeric() || b"_.-+".contains(c))
            {
                self.pos += 1;
            }
            if start == self.pos {
                return Err(self.err("expected a name"));
            }
            let key = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
            self.skip();
            match self.s.get(self.pos) {
                Some(b'{') => {
                    self.pos += 1;
                    let inner = self.items(depth + 1, true)?;
                    items.push((key, Value::Section(inner)));
                }
                Some(b'=') => {
                    self.pos += 1;
                    let v = self.value(depth)?;
                    items.push((key, v));
                }
                _ => return Err(self.err("expected '=' or '{'")),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.err("lists nested too deep"));
        }
        self.skip();
        match self.s.get(self.pos) {
            Some(b'"') => self.string().map(Value::Str),
            Some(b'[') => {
                self.pos += 1;
                let mut list = Vec::new();
                loop {
                    self.skip();
                    match self.s.get(self.pos) {
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Value::List(list));
                        }
                        Some(b',') => self.pos += 1,
                        None => return Err(self.err("unterminated list")),
                        _ if list.len() > 1 << 16 => return Err(self.err("list too long")),
                        _ => list.push(self.value(depth + 1)?),
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' => {
                let start = self.pos;
                self.pos += 1;
                while self
                    .s
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.')
                {
                    self.pos += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
                // Negative and fractional numbers exist (e.g. "-1" defaults); they are kept as 0.
                Ok(Value::Int(t.parse().unwrap_or(0)))
            }
            _ => Err(self.err("expected a value")),
        }
    }

    fn string(&mut self) -> Result<String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.pos) {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    if let Some(&c) = self.s.get(self.pos + 1) {
                        out.push(c);
                    }
                    self.pos += 2;
                }
                Some(&c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_lists_and_comments() {
        let v = parse("# c\nvg {\n id = \"a-b\"\n seqno = 3\n s = [\"pv0\", 0, \"pv1\", 10]\n inner { x = 1 }\n}\n").unwrap();
        let vg = v.get("vg").unwrap();
        assert_eq!(vg.int("seqno"), Some(3));
        assert_eq!(vg.str("id"), Some("a-b"));
        assert_eq!(vg.sections().len(), 1);
        assert!(matches!(vg.get("s"), Some(Value::List(l)) if l.len() == 4));
    }

    #[test]
    fn hostile_text_is_an_error() {
        for t in [
            "vg {",
            "vg = ",
            "{{{",
            "a = [1,",
            "a = \"x",
            &"a{".repeat(100),
        ] {
            assert!(parse(t).is_err(), "{t}");
        }
    }
}
