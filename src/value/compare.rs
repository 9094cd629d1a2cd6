//! How rendered values compare: the one place that says when two JSON
//! values (as walhook renders columns, and as a filter writes literals) are
//! equal or ordered, used by filters and by `changed_columns` alike.
//!
//! Numbers compare by exact decimal value (`decimal`), strings by code point
//! after undoing JSON escapes (lazily, character by character: nothing is
//! allocated), `true`/`false` as booleans (false < true), JSON objects and
//! arrays as their JSON text. NaN and ±Infinity arrive as the JSON strings
//! `"NaN"`, `"Infinity"`, `"-Infinity"`; against a number they rank as
//! PostgreSQL ranks them: -Infinity < every number < Infinity < NaN. It
//! imports nothing of walhook's.

use std::cmp::Ordering;

use super::decimal;

/// A rendered value (or a filter literal), borrowed.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// Not sent: unknown to every predicate.
    Missing,
    Null,
    Bool(bool),
    /// A JSON number or a number literal (validated text).
    Number(&'a [u8]),
    Text(Text<'a>),
    /// A JSON object or array: compared as its JSON text.
    Json(&'a [u8]),
}

/// Text, either as it is or still JSON-escaped.
#[derive(Debug, Clone, Copy)]
pub enum Text<'a> {
    Plain(&'a [u8]),
    /// The inside of a JSON string that holds at least one backslash.
    Escaped(&'a [u8]),
}

/// What a cell's JSON text is.
pub fn classify(json: &[u8]) -> Value<'_> {
    match json.first() {
        None => Value::Missing,
        Some(b'n') => Value::Null,
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'"') => {
            let inner = json
                .get(1..json.len().saturating_sub(1))
                .unwrap_or_default();
            if inner.contains(&b'\\') {
                Value::Text(Text::Escaped(inner))
            } else {
                Value::Text(Text::Plain(inner))
            }
        }
        Some(b'{' | b'[') => Value::Json(json),
        Some(_) => Value::Number(json),
    }
}

/// How two values order; `None` when the answer is unknown.
pub fn compare(left: &Value<'_>, right: &Value<'_>) -> Option<Ordering> {
    match (left, right) {
        (Value::Bool(left), Value::Bool(right)) => Some(left.cmp(right)),
        (Value::Number(left), Value::Number(right)) => decimal::compare(left, right),
        (Value::Number(_), Value::Text(text)) => Some(0.cmp(&special_rank(text)?)),
        (Value::Text(text), Value::Number(_)) => Some(special_rank(text)?.cmp(&0)),
        (Value::Text(_) | Value::Json(_), Value::Text(_) | Value::Json(_)) => {
            compare_text(&as_text(left)?, &as_text(right)?)
        }
        _ => None,
    }
}

/// Where NaN and the infinities (JSON strings) rank against finite numbers
/// (rank 0), as PostgreSQL orders float8 and numeric.
fn special_rank(text: &Text<'_>) -> Option<i8> {
    match text {
        Text::Plain(b"-Infinity") => Some(-1),
        Text::Plain(b"Infinity") => Some(1),
        Text::Plain(b"NaN") => Some(2),
        _ => None,
    }
}

pub fn as_text<'a>(value: &Value<'a>) -> Option<Text<'a>> {
    match value {
        Value::Text(text) => Some(*text),
        Value::Json(json) | Value::Number(json) => Some(Text::Plain(json)),
        Value::Bool(true) => Some(Text::Plain(b"true")),
        Value::Bool(false) => Some(Text::Plain(b"false")),
        Value::Null | Value::Missing => None,
    }
}

/// Code point order (UTF-8 byte order is code point order).
pub fn compare_text(left: &Text<'_>, right: &Text<'_>) -> Option<Ordering> {
    match (left, right) {
        (Text::Plain(left), Text::Plain(right)) => Some(left.cmp(right)),
        _ => Some(chars(left)?.cmp(chars(right)?)),
    }
}

pub fn chars<'a>(text: &Text<'a>) -> Option<TextChars<'a>> {
    Some(match text {
        Text::Plain(bytes) => TextChars::Plain(std::str::from_utf8(bytes).ok()?.chars()),
        Text::Escaped(bytes) => TextChars::Escaped(std::str::from_utf8(bytes).ok()?.chars()),
    })
}

/// The characters of a text, JSON escapes undone on the fly.
#[derive(Debug, Clone)]
pub enum TextChars<'a> {
    Plain(std::str::Chars<'a>),
    Escaped(std::str::Chars<'a>),
}

impl Iterator for TextChars<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        match self {
            TextChars::Plain(chars) => chars.next(),
            TextChars::Escaped(chars) => {
                let c = chars.next()?;
                if c != '\\' {
                    return Some(c);
                }
                Some(match chars.next()? {
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'u' => unicode_escape(chars),
                    other => other,
                })
            }
        }
    }
}

/// The character of a `\uXXXX` escape (the `\u` already read), joining a
/// surrogate pair; U+FFFD for anything malformed.
fn unicode_escape(chars: &mut std::str::Chars<'_>) -> char {
    let Some(high) = hex4(chars) else {
        return char::REPLACEMENT_CHARACTER;
    };
    if (0xD800..0xDC00).contains(&high) {
        let mut ahead = chars.clone();
        if ahead.next() == Some('\\')
            && ahead.next() == Some('u')
            && let Some(low) = hex4(&mut ahead)
            && (0xDC00..0xE000).contains(&low)
        {
            *chars = ahead;
            let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
            return char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
        }
    }
    char::from_u32(high).unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut code = 0;
    for _ in 0..4 {
        code = code * 16 + chars.next()?.to_digit(16)?;
    }
    Some(code)
}

/// SQL's `IS DISTINCT FROM` over two rendered values: equal text is equal,
/// numbers compare by value (`1.0` and `1.00` are not distinct) and strings
/// by their characters (a JSON escape and the character it stands for are
/// the same).
pub fn distinct(old: &[u8], new: &[u8]) -> bool {
    if old == new {
        return false;
    }
    match (classify(old), classify(new)) {
        (Value::Number(old), Value::Number(new)) => {
            decimal::compare(old, new) != Some(Ordering::Equal)
        }
        (Value::Text(old), Value::Text(new)) => compare_text(&old, &new) != Some(Ordering::Equal),
        _ => true,
    }
}

/// [`distinct`] for values that may be absent (not sent): two absent values
/// are not distinct, an absent and a present one are.
pub fn is_distinct(new: Option<&[u8]>, old: Option<&[u8]>) -> bool {
    match (new, old) {
        (Some(new), Some(old)) => distinct(old, new),
        (new, old) => new != old,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_is_by_value() {
        assert!(!distinct(b"1.0", b"1.00"));
        assert!(distinct(b"1", b"2"));
        assert!(!distinct(b"null", b"null"));
        assert!(distinct(b"null", b"1"));
        assert!(distinct(b"\"a\"", b"null"));
        assert!(!distinct(br#""\u00e9""#, "\"é\"".as_bytes()));
        assert!(distinct(b"true", b"false"));
        assert!(!distinct(br#""NaN""#, br#""NaN""#));
    }
}
