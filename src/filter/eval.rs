//! Evaluates a bound filter over one change, in SQL's three-valued logic,
//! reading the values straight from the change's rendered JSON.
//!
//! A cell's JSON decides how it compares (`value::compare`: numbers by exact
//! decimal value, strings by code point, booleans, JSON as its text).
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

use super::syntax::{CompareOp, Expr, LikePattern, Literal, Operand, PatternItem, Side};
use crate::event::Change;
use crate::event::EventKind;
use crate::value::compare::{Text, TextChars, Value, as_text, chars, classify, compare, distinct};

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
        // A backfilled row has no old row, as an inserted one.
        Side::Old => (
            change.old.as_ref(),
            matches!(change.kind, EventKind::Insert | EventKind::Read),
        ),
        _ => (change.new.as_ref(), change.kind == EventKind::Delete),
    };
    match row {
        None if row_does_not_exist => Value::Null,
        None => Value::Missing,
        Some(row) => row.value(column.index).map_or(Value::Missing, classify),
    }
}

/// `like`: `None` when the value is NULL or not sent. Numbers, booleans and
/// JSON match as their JSON text.
fn like(value: &Value<'_>, pattern: &LikePattern) -> Option<bool> {
    let text = as_text(value)?;
    if pattern
        .0
        .iter()
        .any(|item| matches!(item, PatternItem::One))
    {
        return Some(like_chars(chars(&text)?, &pattern.0));
    }
    // Only literals and `%`: each literal run is found with a linear
    // substring search, so a large value costs O(text), not O(text ×
    // pattern) (a 1 MB value once took 3.9 s of CPU).
    let plain;
    let collected: String;
    let text: &str = match &text {
        Text::Plain(bytes) => {
            plain = std::str::from_utf8(bytes).ok()?;
            plain
        }
        Text::Escaped(_) => {
            collected = chars(&text)?.collect();
            &collected
        }
    };
    Some(like_literal_runs(text, &pattern.0))
}

/// `like` for a pattern of literal characters and `%` only: the first run
/// is anchored at the start, the last at the end, and each one between is
/// taken at its leftmost place after the one before (which never rules out
/// a match that a later place would allow).
fn like_literal_runs(text: &str, pattern: &[PatternItem]) -> bool {
    let runs: Vec<String> = pattern
        .split(|item| matches!(item, PatternItem::Many))
        .map(|run| {
            run.iter()
                .filter_map(|item| match item {
                    PatternItem::Char(c) => Some(*c),
                    PatternItem::One | PatternItem::Many => None,
                })
                .collect()
        })
        .collect();
    let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
        return text.is_empty();
    };
    if runs.len() == 1 {
        return text == first;
    }
    let Some(mut rest) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    for run in &runs[1..runs.len() - 1] {
        match rest.find(run.as_str()) {
            Some(at) => rest = &rest[at + run.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last.as_str())
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

/// `changed(col)`: true for an INSERT, false for a DELETE and a backfilled
/// row (READ: nothing changed, it was read), and for an UPDATE
/// whether the old and new values are distinct (numbers by value); unknown
/// when either value was not sent.
fn changed(change: &Change, index: usize) -> Truth {
    match change.kind {
        EventKind::Insert => Truth::True,
        EventKind::Delete | EventKind::Read => Truth::False,
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
    fn literal_runs_match_as_the_general_matcher_does() {
        // Every pattern of `a`, `b` and `%` up to 5 items against every
        // text of `a` and `b` up to 6 characters: the linear search for
        // literal runs agrees with the backtracking matcher.
        let alphabet = [
            PatternItem::Char('a'),
            PatternItem::Char('b'),
            PatternItem::Many,
        ];
        let mut patterns: Vec<Vec<PatternItem>> = vec![Vec::new()];
        for _ in 0..5 {
            let longer: Vec<Vec<PatternItem>> = patterns
                .iter()
                .filter(|pattern| pattern.len() == patterns.last().map_or(0, Vec::len))
                .flat_map(|pattern| {
                    alphabet.iter().map(move |item| {
                        let mut next = pattern.clone();
                        next.push(*item);
                        next
                    })
                })
                .collect();
            patterns.extend(longer);
        }
        let mut texts = vec![String::new()];
        for length in 1..=6 {
            for bits in 0..(1u32 << length) {
                texts.push(
                    (0..length)
                        .map(|bit| if bits & (1 << bit) == 0 { 'a' } else { 'b' })
                        .collect(),
                );
            }
        }
        for pattern in &patterns {
            for text in &texts {
                let json = serde_json::to_string(text).unwrap();
                let Some(reference) = chars(&Text::Plain(&json.as_bytes()[1..json.len() - 1]))
                else {
                    panic!("text {text:?}");
                };
                assert_eq!(
                    like_literal_runs(text, pattern),
                    like_chars(reference, pattern),
                    "{text:?} like {pattern:?}"
                );
            }
        }
    }

    #[test]
    fn a_long_run_missing_from_a_large_value_is_not_found() {
        // The backtracking matcher's worst case: it would try the run at
        // every position and walk it each time (4 MB of `a` against
        // `%aaaa…ab%`, 2,000 characters: some 8 billion steps). What this
        // checks is the answer; the cost shows in the bench, not here.
        let text = "a".repeat(4 << 20);
        let mut pattern = vec![PatternItem::Many];
        pattern.extend(std::iter::repeat_n(PatternItem::Char('a'), 1999));
        pattern.push(PatternItem::Char('b'));
        pattern.push(PatternItem::Many);
        assert!(!like_literal_runs(&text, &pattern));
    }
}
