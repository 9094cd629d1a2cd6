//! Evaluates a bound filter over one change, in SQL's three-valued logic,
//! reading the values straight from the change's rendered JSON.
//!
//! A cell's JSON decides how it compares: numbers by exact decimal value
//! (`decimal`), strings by code point after undoing JSON escapes (lazily,
//! character by character: nothing is allocated), `true`/`false` as
//! booleans (false < true), JSON objects and arrays as their JSON text.
//! `null` is SQL NULL. A value that was not sent (a column outside a key-only
//! old row, an unchanged TOAST value, the old row of an UPDATE that sent
//! none) is unknown to every predicate, `is null` included. The old row of an
//! INSERT and the new row of a DELETE do not exist, so their columns are
//! NULL. Float and numeric NaN and ±Infinity arrive as the JSON strings
//! `"NaN"`, `"Infinity"`, `"-Infinity"`; against a number they rank as
//! PostgreSQL ranks them: -Infinity < every number < Infinity < NaN, and NaN
//! equals NaN. Values of kinds that cannot be compared (only possible after a
//! schema change the start-up check did not see) compare as unknown.
//!
//! It does not parse or bind filters, and never fails: the worst outcome is
//! unknown, which does not match.

use std::cmp::Ordering;

use super::decimal;
use super::syntax::{CompareOp, Expr, LikePattern, Literal, Operand, PatternItem, Side};
use crate::config::EventKind;
use crate::event::Change;

/// A column bound to its index in the table's current shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundColumn {
    pub side: Side,
    pub index: usize,
}

/// SQL's three truth values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn from_bool(value: bool) -> Truth {
        if value { Truth::True } else { Truth::False }
    }

    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }

    fn negate_if(self, negated: bool) -> Truth {
        if negated { self.not() } else { self }
    }
}

/// Evaluates `expr` for `change`.
pub fn eval(expr: &Expr<BoundColumn>, change: &Change) -> Truth {
    match expr {
        Expr::And(parts) => {
            let mut outcome = Truth::True;
            for part in parts {
                match eval(part, change) {
                    Truth::False => return Truth::False,
                    Truth::Unknown => outcome = Truth::Unknown,
                    Truth::True => {}
                }
            }
            outcome
        }
        Expr::Or(parts) => {
            let mut outcome = Truth::False;
            for part in parts {
                match eval(part, change) {
                    Truth::True => return Truth::True,
                    Truth::Unknown => outcome = Truth::Unknown,
                    Truth::False => {}
                }
            }
            outcome
        }
        Expr::Not(inner) => eval(inner, change).not(),
        Expr::Compare { left, op, right } => {
            let (left, right) = (operand(left, change), operand(right, change));
            match compare(&left, &right) {
                None => Truth::Unknown,
                Some(ordering) => Truth::from_bool(match op {
                    CompareOp::Eq => ordering.is_eq(),
                    CompareOp::Ne => ordering.is_ne(),
                    CompareOp::Lt => ordering.is_lt(),
                    CompareOp::Le => ordering.is_le(),
                    CompareOp::Gt => ordering.is_gt(),
                    CompareOp::Ge => ordering.is_ge(),
                }),
            }
        }
        Expr::In {
            operand: value,
            list,
            negated,
        } => {
            let value = operand(value, change);
            let mut outcome = Truth::False;
            for item in list {
                match compare(&value, &literal(item)) {
                    Some(Ordering::Equal) => {
                        outcome = Truth::True;
                        break;
                    }
                    None => outcome = Truth::Unknown,
                    Some(_) => {}
                }
            }
            outcome.negate_if(*negated)
        }
        Expr::IsNull {
            operand: value,
            negated,
        } => match operand(value, change) {
            Value::Missing => Truth::Unknown,
            Value::Null => Truth::from_bool(!negated),
            _ => Truth::from_bool(*negated),
        },
        Expr::Like {
            operand: value,
            pattern,
            negated,
        } => match like(&operand(value, change), pattern) {
            None => Truth::Unknown,
            Some(matched) => Truth::from_bool(matched != *negated),
        },
        Expr::Changed(column) => changed(change, column.index),
        Expr::Truth(value) => match operand(value, change) {
            Value::Bool(value) => Truth::from_bool(value),
            _ => Truth::Unknown,
        },
    }
}

/// A value as a filter sees it, borrowed from the change or the filter.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
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
enum Text<'a> {
    Plain(&'a [u8]),
    /// The inside of a JSON string that holds at least one backslash.
    Escaped(&'a [u8]),
}

fn operand<'a>(operand: &'a Operand<BoundColumn>, change: &'a Change) -> Value<'a> {
    match operand {
        Operand::Literal(value) => literal(value),
        Operand::Column(column) => column_value(change, *column),
    }
}

fn literal(literal: &Literal) -> Value<'_> {
    match literal {
        Literal::Number(text) => Value::Number(text.as_bytes()),
        Literal::String(text) => Value::Text(Text::Plain(text.as_bytes())),
        Literal::Bool(value) => Value::Bool(*value),
        Literal::Null => Value::Null,
    }
}

fn column_value(change: &Change, column: BoundColumn) -> Value<'_> {
    let side = match (column.side, change.kind) {
        (Side::Bare, EventKind::Delete) => Side::Old,
        (Side::Bare, _) => Side::New,
        (side, _) => side,
    };
    let (row, row_does_not_exist) = match side {
        Side::Old => (change.old.as_ref(), change.kind == EventKind::Insert),
        _ => (change.new.as_ref(), change.kind == EventKind::Delete),
    };
    match row {
        None if row_does_not_exist => Value::Null,
        None => Value::Missing,
        Some(row) => row.value(column.index).map_or(Value::Missing, classify),
    }
}

/// What a cell's JSON text is.
fn classify(json: &[u8]) -> Value<'_> {
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
fn compare(left: &Value<'_>, right: &Value<'_>) -> Option<Ordering> {
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

fn as_text<'a>(value: &Value<'a>) -> Option<Text<'a>> {
    match value {
        Value::Text(text) => Some(*text),
        Value::Json(json) | Value::Number(json) => Some(Text::Plain(json)),
        Value::Bool(true) => Some(Text::Plain(b"true")),
        Value::Bool(false) => Some(Text::Plain(b"false")),
        Value::Null | Value::Missing => None,
    }
}

/// Code point order (UTF-8 byte order is code point order).
fn compare_text(left: &Text<'_>, right: &Text<'_>) -> Option<Ordering> {
    match (left, right) {
        (Text::Plain(left), Text::Plain(right)) => Some(left.cmp(right)),
        _ => Some(chars(left)?.cmp(chars(right)?)),
    }
}

fn chars<'a>(text: &Text<'a>) -> Option<TextChars<'a>> {
    Some(match text {
        Text::Plain(bytes) => TextChars::Plain(std::str::from_utf8(bytes).ok()?.chars()),
        Text::Escaped(bytes) => TextChars::Escaped(std::str::from_utf8(bytes).ok()?.chars()),
    })
}

/// The characters of a text, JSON escapes undone on the fly.
#[derive(Debug, Clone)]
enum TextChars<'a> {
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

/// `like`: `None` when the value is NULL or not sent. Numbers, booleans and
/// JSON match as their JSON text.
fn like(value: &Value<'_>, pattern: &LikePattern) -> Option<bool> {
    Some(like_chars(chars(&as_text(value)?)?, &pattern.0))
}

/// Matches with one backtrack point: the latest `%` absorbs one more
/// character on each mismatch. O(text × pattern), no allocation.
fn like_chars(mut text: TextChars<'_>, pattern: &[PatternItem]) -> bool {
    let mut at = 0;
    let mut backtrack: Option<(usize, TextChars<'_>)> = None;
    loop {
        let mut after = text.clone();
        let next = after.next();
        match (pattern.get(at), next) {
            (Some(PatternItem::Many), _) => {
                at += 1;
                backtrack = Some((at, text.clone()));
                continue;
            }
            (Some(PatternItem::One), Some(_)) => {
                at += 1;
                text = after;
                continue;
            }
            (Some(PatternItem::Char(expected)), Some(c)) if *expected == c => {
                at += 1;
                text = after;
                continue;
            }
            (None, None) => return true,
            _ => {}
        }
        let Some((resume, from)) = &mut backtrack else {
            return false;
        };
        if from.next().is_none() {
            return false;
        }
        at = *resume;
        text = from.clone();
    }
}

/// `changed(col)`: true for an INSERT, false for a DELETE, and for an UPDATE
/// whether the old and new values are distinct (numbers by value); unknown
/// when either value was not sent.
fn changed(change: &Change, index: usize) -> Truth {
    match change.kind {
        EventKind::Insert => Truth::True,
        EventKind::Delete => Truth::False,
        EventKind::Truncate => Truth::Unknown,
        EventKind::Update => {
            let old = change.old.as_ref().and_then(|row| row.value(index));
            let new = change.new.as_ref().and_then(|row| row.value(index));
            match (old, new) {
                (Some(old), Some(new)) => Truth::from_bool(distinct(old, new)),
                _ => Truth::Unknown,
            }
        }
    }
}

/// `IS DISTINCT FROM` over two cells' JSON.
fn distinct(old: &[u8], new: &[u8]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(json: &str) -> String {
        let Value::Text(text) = classify(json.as_bytes()) else {
            panic!("{json} is not a string");
        };
        chars(&text).unwrap().collect()
    }

    #[test]
    fn json_escapes_are_undone() {
        assert_eq!(text_of(r#""plain""#), "plain");
        assert_eq!(text_of(r#""a\"b\\c\/d""#), "a\"b\\c/d");
        assert_eq!(text_of(r#""\b\f\n\r\t""#), "\u{8}\u{c}\n\r\t");
        assert_eq!(text_of(r#""\u00e9\u0001""#), "é\u{1}");
        assert_eq!(text_of(r#""\ud83d\ude00!""#), "😀!");
        assert_eq!(text_of(r#""\ud83dx""#), "\u{FFFD}x");
        assert_eq!(text_of(r#""\uzz""#), "\u{FFFD}z");
    }

    fn cmp(left: &str, right: &str) -> Option<Ordering> {
        compare(&classify(left.as_bytes()), &classify(right.as_bytes()))
    }

    #[test]
    fn values_compare_by_kind() {
        assert_eq!(cmp("12.50", "12.5"), Some(Ordering::Equal));
        assert_eq!(cmp(r#""a\"b""#, "\"a\\u0022b\""), Some(Ordering::Equal));
        assert_eq!(cmp(r#""é""#, r#""z""#), Some(Ordering::Greater));
        assert_eq!(cmp(r#""\u00e9""#, r#""z""#), Some(Ordering::Greater));
        // Code points, not UTF-16 units: U+FFFF < U+1F600.
        assert_eq!(
            cmp("\"\u{FFFF}\"", r#""\ud83d\ude00""#),
            Some(Ordering::Less)
        );
        assert_eq!(cmp("false", "true"), Some(Ordering::Less));
        assert_eq!(cmp("null", "null"), None);
        assert_eq!(cmp("1", "null"), None);
        assert_eq!(cmp("1", "true"), None);
        assert_eq!(cmp("1", r#""1""#), None);
        assert_eq!(cmp(r#"{"a":1}"#, r#""{\"a\":1}""#), Some(Ordering::Equal));
    }

    #[test]
    fn nan_and_infinities_rank_as_postgres_ranks_them() {
        assert_eq!(cmp(r#""NaN""#, "1e300"), Some(Ordering::Greater));
        assert_eq!(cmp("1e300", r#""Infinity""#), Some(Ordering::Less));
        assert_eq!(cmp(r#""-Infinity""#, "-1e300"), Some(Ordering::Less));
        assert_eq!(cmp(r#""NaN""#, r#""NaN""#), Some(Ordering::Equal));
        assert_eq!(cmp(r#""Infinity""#, r#""NaN""#), Some(Ordering::Less));
        assert_eq!(cmp(r#""-Infinity""#, r#""Infinity""#), Some(Ordering::Less));
    }

    fn matches(text: &str, pattern: &str) -> bool {
        let Expr::Like { pattern, .. } =
            super::super::syntax::parse(&format!("a like '{}'", pattern.replace('\'', "''")))
                .unwrap()
        else {
            panic!("not a like");
        };
        let json = serde_json::to_string(text).unwrap();
        like(&classify(json.as_bytes()), &pattern).unwrap()
    }

    #[test]
    fn like_with_wildcards_and_escapes() {
        for (text, pattern, expected) in [
            ("abc", "abc", true),
            ("abc", "ab", false),
            ("abc", "a%", true),
            ("abc", "%c", true),
            ("abc", "%b%", true),
            ("abc", "%", true),
            ("", "%", true),
            ("", "_", false),
            ("abc", "a_c", true),
            ("abc", "___", true),
            ("abc", "____", false),
            ("abc", "A%", false),
            ("a%c", "a\\%c", true),
            ("abc", "a\\%c", false),
            ("a_c", "a\\_c", true),
            ("abc", "a\\_c", false),
            ("a\\c", "a\\\\c", true),
            ("abc", "\\a\\b\\c", true),
            ("é😀x", "__x", true),
            ("aXbXc", "%X%X%", true),
            ("aXbXc", "%X%X%X%", false),
            ("mississippi", "%iss%ppi", true),
            ("mississippi", "m%ss%ss%", true),
            ("mississippi", "m%ss%ss%ss%", false),
            ("quote\"d", "%\"_", true),
            ("line\nbreak", "line_break", true),
        ] {
            assert_eq!(
                matches(text, pattern),
                expected,
                "{text:?} like {pattern:?}"
            );
        }
        let pattern = LikePattern(vec![PatternItem::Many]);
        assert_eq!(like(&Value::Null, &pattern), None);
        assert_eq!(like(&Value::Missing, &pattern), None);
        assert_eq!(
            like(
                &classify(b"12.50"),
                &LikePattern(vec![
                    PatternItem::Many,
                    PatternItem::Char('5'),
                    PatternItem::Char('0'),
                ])
            ),
            Some(true)
        );
    }

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
