//! The `|XX` value escapes.
//!
//! VMware writes `"` as `|22` and `|` as `|7C` inside values, and reads `|` followed by two
//! hex digits as that byte anywhere in a value. A `|` not followed by two hex digits is
//! kept as it is (hand-edited files have them). On write this crate also escapes control
//! characters and invisible format characters, so a value never spans lines or hides
//! text.

use std::fmt::Write as _;

/// Decodes `|XX` escapes. Returns `None` when the decoded bytes are not UTF-8.
pub(crate) fn unescape(raw: &str) -> Option<String> {
    if !raw.contains('|') {
        return Some(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'|' {
            if let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_digit),
                bytes.get(i + 2).copied().and_then(hex_digit),
            ) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True for characters written as `|XX` escapes inside a quoted value.
fn needs_escape(c: char) -> bool {
    c == '"'
        || c == '|'
        || c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Escapes `value` for writing between double quotes.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if needs_escape(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(out, "|{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Formats `value` as a quoted value token.
pub(crate) fn quote(value: &str) -> String {
    format!("\"{}\"", escape(value))
}

/// True if `token` can be written without quotes and reads back unchanged.
pub(crate) fn is_bare_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| !c.is_whitespace() && !needs_escape(c) && c != '#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_quote_pipe_and_controls() {
        assert_eq!(escape(r#"say "hi" | bye"#), "say |22hi|22 |7C bye");
        assert_eq!(escape("a\nb\tc\u{7f}"), "a|0Ab|09c|7F");
        assert_eq!(escape("\u{2028}"), "|E2|80|A8");
        assert_eq!(escape("héllo"), "héllo");
    }

    #[test]
    fn unescapes_any_byte() {
        assert_eq!(unescape("|22x|7c|41").as_deref(), Some("\"x|A"));
        assert_eq!(unescape("|C3|A9").as_deref(), Some("é"));
    }

    #[test]
    fn lone_pipe_is_literal() {
        assert_eq!(unescape("a|b|7").as_deref(), Some("a|b|7"));
        assert_eq!(unescape("|").as_deref(), Some("|"));
    }

    #[test]
    fn invalid_utf8_after_decoding_is_refused() {
        assert_eq!(unescape("|FF"), None);
    }

    #[test]
    fn escape_round_trips() {
        for s in ["", "plain", "|7C", "\"", "a\r\nb", "\u{feff}x", "日本"] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s));
        }
    }

    #[test]
    fn bare_tokens() {
        assert!(is_bare_token("poweredOn"));
        assert!(is_bare_token("-12"));
        assert!(!is_bare_token(""));
        assert!(!is_bare_token("a b"));
        assert!(!is_bare_token("a#b"));
        assert!(!is_bare_token("\"x"));
    }
}
