//! One column value, from its pgoutput text to the JSON `to_jsonb` gives.
//!
//! [`write_json`] appends the JSON for one non-null value, given its type oid
//! and the text the walsender sent (a session with `TimeZone=UTC`,
//! `DateStyle=ISO,YMD`, `IntervalStyle=postgres`, `extra_float_digits=1`,
//! `bytea_output=hex`). It follows `datum_to_jsonb` in PostgreSQL's jsonb.c
//! category by category ([`JsonKind`]): numbers keep their digits (but a
//! float's `-0` is `0`, as `numeric_in` makes every number), timestamps
//! take the XSD `T` form, json is normalised as jsonb would store it, arrays
//! and composites are parsed from their text output and rendered element by
//! element. It never fails and never panics: text it cannot interpret becomes
//! a JSON string of that text (invalid UTF-8 replaced lossily).
//!
//! It does not handle nulls or unchanged-TOAST markers (the caller writes
//! those), does not load type facts (see `catalog`), and writes float
//! exponents as sent (`1e+30`) where `to_jsonb` spells out the digits: the
//! same number.

use std::borrow::Cow;

pub mod compare;
mod decimal;
pub mod escape;

use crate::catalog::{JsonKind, TypeRegistry};
pub use escape::write_string;

/// Appends the JSON rendering of one non-null value of type `type_oid`.
/// Returns false when the text was not what the type's output gives and the
/// value went out as a JSON string of its text instead.
pub fn write_json(out: &mut Vec<u8>, type_oid: u32, text: &[u8], types: &TypeRegistry) -> bool {
    let start = out.len();
    if render(out, type_oid, text, types, 0).is_err() {
        out.truncate(start);
        write_string(out, text);
        return false;
    }
    true
}

/// The text was not what the type's output function produces.
#[derive(Debug)]
struct Malformed;

/// Nested arrays, composites and domains deeper than this are not followed
/// (PostgreSQL types cannot nest without end; this guards a broken catalog).
const MAX_TYPE_DEPTH: usize = 64;
/// PostgreSQL arrays have at most six dimensions (MAXDIM).
const MAX_ARRAY_DIMS: usize = 6;

fn render(
    out: &mut Vec<u8>,
    oid: u32,
    text: &[u8],
    types: &TypeRegistry,
    depth: usize,
) -> Result<(), Malformed> {
    if depth > MAX_TYPE_DEPTH {
        return Err(Malformed);
    }
    match types.kind(oid) {
        JsonKind::Bool => match text {
            b"t" => out.extend_from_slice(b"true"),
            b"f" => out.extend_from_slice(b"false"),
            _ => write_string(out, text),
        },
        JsonKind::Number => {
            if !is_json_number(text) {
                write_string(out, text);
            } else if is_negative_zero(text) {
                // float4/float8 print -0; to_jsonb reads every number with
                // numeric_in, which has no negative zero, and gives 0.
                json::write_numeric(out, text);
            } else {
                out.extend_from_slice(text);
            }
        }
        JsonKind::Date | JsonKind::Text => write_string(out, text),
        JsonKind::Timestamp => write_timestamp(out, text, false),
        JsonKind::TimestampTz => write_timestamp(out, text, true),
        JsonKind::Json => json::normalise(out, text)?,
        JsonKind::Jsonb => {
            json::parse(text)?;
            out.extend_from_slice(text);
        }
        JsonKind::Array { element, delimiter } => {
            write_array(out, text, *element, *delimiter, types, depth)?
        }
        JsonKind::Composite { fields } => write_composite(out, text, fields, types, depth)?,
        JsonKind::Hstore => write_hstore(out, text)?,
    }
    Ok(())
}

/// An `hstore` as `hstore_to_json` and then jsonb give it: `{"k": "v"}`
/// with null for NULL values, keys in jsonb's order (shorter first, then
/// bytewise). The text is `hstore_out`'s: `"k"=>"v", "k2"=>NULL`, with `"`
/// and `\` escaped by a backslash inside the quotes.
fn write_hstore(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Malformed> {
    let mut cursor = Cursor { s: text, pos: 0 };
    let mut pairs: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    cursor.skip_space();
    while cursor.peek().is_some() {
        if !pairs.is_empty() {
            cursor.expect(b',')?;
            cursor.skip_space();
        }
        let key = hstore_quoted(&mut cursor)?;
        cursor.expect(b'=')?;
        cursor.expect(b'>')?;
        let value = if cursor.peek() == Some(b'"') {
            Some(hstore_quoted(&mut cursor)?)
        } else if cursor.s.get(cursor.pos..cursor.pos + 4) == Some(b"NULL") {
            cursor.pos += 4;
            None
        } else {
            return Err(Malformed);
        };
        pairs.push((key, value));
        cursor.skip_space();
    }
    pairs.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
    out.push(b'{');
    for (index, (key, value)) in pairs.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        match value {
            Some(value) => write_string(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    Ok(())
}

/// One double-quoted hstore key or value, unescaped.
fn hstore_quoted(cursor: &mut Cursor<'_>) -> Result<Vec<u8>, Malformed> {
    cursor.expect(b'"')?;
    let mut unquoted = Vec::new();
    loop {
        match cursor.next()? {
            b'"' => return Ok(unquoted),
            b'\\' => unquoted.push(cursor.next()?),
            byte => unquoted.push(byte),
        }
    }
}

/// The JSON number grammar (RFC 8259), which is also PostgreSQL's
/// `IsValidJsonNumber`.
fn is_json_number(text: &[u8]) -> bool {
    number_end(text, 0) == Some(text.len())
}

/// A JSON number whose digits are all zero and that has a minus sign
/// (`-0`, `-0.0`, `-0e5`).
fn is_negative_zero(number: &[u8]) -> bool {
    match number.split_first() {
        Some((b'-', rest)) => rest
            .iter()
            .take_while(|&&byte| byte != b'e' && byte != b'E')
            .all(|&byte| byte == b'0' || byte == b'.'),
        _ => false,
    }
}

/// Where the JSON number starting at `start` ends, if one starts there.
fn number_end(s: &[u8], start: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let from = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let mut i = start;
    if s.get(i) == Some(&b'-') {
        i += 1;
    }
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i)?,
        _ => return None,
    }
    if s.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

/// `2026-11-27 08:00:00.5+00` → `"2026-11-27T08:00:00.5+00:00"`, as
/// `to_jsonb` prints timestamps (XSD style); `infinity` stays as it is, a BC
/// suffix stays after the offset.
fn write_timestamp(out: &mut Vec<u8>, text: &[u8], with_zone: bool) {
    // ISO output is digits, separators and perhaps " BC": nothing to escape,
    // so it is written straight into `out`. Anything else goes out as text.
    let plain = text
        .iter()
        .all(|&byte| (byte.is_ascii_graphic() || byte == b' ') && byte != b'"' && byte != b'\\');
    let Some(space) = text.iter().position(|&byte| byte == b' ') else {
        return write_string(out, text);
    };
    let (date, rest) = (&text[..space], &text[space + 1..]);
    if !plain
        || !date.first().is_some_and(u8::is_ascii_digit)
        || !rest.first().is_some_and(u8::is_ascii_digit)
    {
        return write_string(out, text);
    }
    out.reserve(text.len() + 6);
    out.push(b'"');
    out.extend_from_slice(date);
    out.push(b'T');
    match rest
        .iter()
        .position(|&byte| byte == b'+' || byte == b'-')
        .filter(|_| with_zone)
    {
        None => out.extend_from_slice(rest),
        Some(at) => {
            let (time, zone) = rest.split_at(at);
            let offset_end = zone
                .iter()
                .position(|&byte| byte == b' ')
                .unwrap_or(zone.len());
            let (offset, suffix) = zone.split_at(offset_end);
            out.extend_from_slice(time);
            out.extend_from_slice(offset);
            // ISO prints "+00" and "+05:30"; XSD always has the minutes.
            if !offset.contains(&b':') {
                out.extend_from_slice(b":00");
            }
            out.extend_from_slice(suffix);
        }
    }
    out.push(b'"');
}

/// `array_in`'s notion of white space.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// A cursor over an array's or a record's text output.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn next(&mut self) -> Result<u8, Malformed> {
        let byte = self.peek().ok_or(Malformed)?;
        self.pos += 1;
        Ok(byte)
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), Malformed> {
        if self.next()? == byte {
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn at_end_after_space(&mut self) -> Result<(), Malformed> {
        self.skip_space();
        if self.pos == self.s.len() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }
}

/// Renders an array's text output (`{1,NULL,"a b"}`, `[0:1]={1,2}`,
/// `{{1,2},{3,4}}`) as nested JSON arrays; the bounds decoration is dropped,
/// as `to_jsonb` drops it.
fn write_array(
    out: &mut Vec<u8>,
    text: &[u8],
    element: u32,
    delimiter: u8,
    types: &TypeRegistry,
    depth: usize,
) -> Result<(), Malformed> {
    let mut cursor = Cursor { s: text, pos: 0 };
    cursor.skip_space();
    if delimiter == b' ' && !matches!(cursor.peek(), Some(b'{' | b'[')) {
        // int2vector and oidvector: "1 2 3".
        out.push(b'[');
        for (i, item) in text
            .split(|&b| is_space(b))
            .filter(|item| !item.is_empty())
            .enumerate()
        {
            if i > 0 {
                out.push(b',');
            }
            render(out, element, item, types, depth + 1)?;
        }
        out.push(b']');
        return Ok(());
    }
    if cursor.peek() == Some(b'[') {
        // Dimension decoration: [lo:hi][lo:hi]=
        while cursor.peek() == Some(b'[') {
            cursor.pos += 1;
            loop {
                match cursor.next()? {
                    b']' => break,
                    b'0'..=b'9' | b'-' | b'+' | b':' => {}
                    byte if is_space(byte) => {}
                    _ => return Err(Malformed),
                }
            }
            cursor.skip_space();
        }
        cursor.expect(b'=')?;
        cursor.skip_space();
    }
    cursor.expect(b'{')?;
    let array = ArrayText {
        element,
        delimiter,
        types,
        depth,
    };
    array.level(out, &mut cursor, 1)?;
    cursor.at_end_after_space()
}

struct ArrayText<'t> {
    element: u32,
    delimiter: u8,
    types: &'t TypeRegistry,
    depth: usize,
}

impl ArrayText<'_> {
    /// One `{...}` level; the cursor is just past its `{`.
    fn level(&self, out: &mut Vec<u8>, cursor: &mut Cursor, dims: usize) -> Result<(), Malformed> {
        out.push(b'[');
        cursor.skip_space();
        if cursor.peek() == Some(b'}') {
            cursor.pos += 1;
            out.push(b']');
            return Ok(());
        }
        let mut first = true;
        loop {
            if !first {
                out.push(b',');
            }
            first = false;
            cursor.skip_space();
            if cursor.peek() == Some(b'{') {
                if dims >= MAX_ARRAY_DIMS {
                    return Err(Malformed);
                }
                cursor.pos += 1;
                self.level(out, cursor, dims + 1)?;
            } else {
                match self.element_text(cursor)? {
                    None => out.extend_from_slice(b"null"),
                    Some(text) => render(out, self.element, &text, self.types, self.depth + 1)?,
                }
            }
            cursor.skip_space();
            match cursor.next()? {
                b'}' => break,
                byte if byte == self.delimiter => {}
                _ => return Err(Malformed),
            }
        }
        out.push(b']');
        Ok(())
    }

    /// One element's text, unquoted and unescaped; `None` for `NULL`.
    fn element_text<'a>(
        &self,
        cursor: &mut Cursor<'a>,
    ) -> Result<Option<Cow<'a, [u8]>>, Malformed> {
        let start = cursor.pos;
        let mut buf = Vec::new();
        let mut plain = true; // no quotes or escapes: the bytes are the text
        let mut significant = 0; // length of `buf` without unquoted trailing space
        loop {
            match cursor.peek().ok_or(Malformed)? {
                b'"' => {
                    plain = false;
                    cursor.pos += 1;
                    loop {
                        match cursor.next()? {
                            b'"' => break,
                            b'\\' => buf.push(cursor.next()?),
                            byte => buf.push(byte),
                        }
                    }
                    significant = buf.len();
                }
                b'\\' => {
                    plain = false;
                    cursor.pos += 1;
                    buf.push(cursor.next()?);
                    significant = buf.len();
                }
                b'{' => return Err(Malformed),
                byte if byte == self.delimiter || byte == b'}' => break,
                byte => {
                    cursor.pos += 1;
                    buf.push(byte);
                    if !is_space(byte) {
                        significant = buf.len();
                    }
                }
            }
        }
        buf.truncate(significant);
        if plain {
            if buf.is_empty() {
                return Err(Malformed);
            }
            if buf.eq_ignore_ascii_case(b"NULL") {
                return Ok(None);
            }
            return Ok(Some(Cow::Borrowed(&cursor.s[start..start + buf.len()])));
        }
        Ok(Some(Cow::Owned(buf)))
    }
}

/// Renders a record's text output (`(1,"a b",,"(2,x)")`) as an object with
/// the attribute names, each field by its type; an empty unquoted field is
/// null.
fn write_composite(
    out: &mut Vec<u8>,
    text: &[u8],
    fields: &[(String, u32)],
    types: &TypeRegistry,
    depth: usize,
) -> Result<(), Malformed> {
    let mut cursor = Cursor { s: text, pos: 0 };
    cursor.skip_space();
    cursor.expect(b'(')?;
    out.push(b'{');
    for (i, (name, oid)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, name.as_bytes());
        out.push(b':');
        let mut buf = Vec::new();
        let mut null = true;
        loop {
            match cursor.peek().ok_or(Malformed)? {
                b',' | b')' => break,
                b'"' => {
                    null = false;
                    cursor.pos += 1;
                    loop {
                        match cursor.next()? {
                            b'"' if cursor.peek() == Some(b'"') => {
                                cursor.pos += 1;
                                buf.push(b'"');
                            }
                            b'"' => break,
                            b'\\' => buf.push(cursor.next()?),
                            byte => buf.push(byte),
                        }
                    }
                }
                b'\\' => {
                    null = false;
                    cursor.pos += 1;
                    buf.push(cursor.next()?);
                }
                byte => {
                    null = false;
                    cursor.pos += 1;
                    buf.push(byte);
                }
            }
        }
        if null {
            out.extend_from_slice(b"null");
        } else {
            render(out, *oid, &buf, types, depth + 1)?;
        }
        cursor.expect(if i + 1 == fields.len() { b')' } else { b',' })?;
    }
    if fields.is_empty() {
        cursor.expect(b')')?;
    }
    out.push(b'}');
    cursor.at_end_after_space()
}

mod json;

#[cfg(test)]
mod tests {
    use super::escape::write_str;
    use super::*;

    fn json(oid: u32, text: &str) -> String {
        json_with(&TypeRegistry::new(), oid, text)
    }

    fn json_with(types: &TypeRegistry, oid: u32, text: &str) -> String {
        let mut out = Vec::new();
        write_json(&mut out, oid, text.as_bytes(), types);
        let rendered = String::from_utf8_lossy(&out).into_owned();
        assert!(
            serde_json::from_slice::<serde_json::Value>(&out).is_ok(),
            "not JSON: {rendered}"
        );
        rendered
    }

    fn normalised(text: &str) -> String {
        json(114, text)
    }

    const BOOL: u32 = 16;
    const INT4: u32 = 23;
    const NUMERIC: u32 = 1700;
    const FLOAT8: u32 = 701;
    const TEXT: u32 = 25;
    const DATE: u32 = 1082;
    const TIMESTAMP: u32 = 1114;
    const TIMESTAMPTZ: u32 = 1184;
    const JSONB: u32 = 3802;

    #[test]
    fn scalars() {
        assert_eq!(json(BOOL, "t"), "true");
        assert_eq!(json(BOOL, "f"), "false");
        assert_eq!(json(BOOL, "yes"), r#""yes""#);
        assert_eq!(json(NUMERIC, "12.50"), "12.50");
        assert_eq!(json(NUMERIC, "-0.000001"), "-0.000001");
        assert_eq!(json(NUMERIC, "NaN"), r#""NaN""#);
        assert_eq!(json(FLOAT8, "-Infinity"), r#""-Infinity""#);
        assert_eq!(json(FLOAT8, "1e+300"), "1e+300");
        assert_eq!(json(INT4, "007"), r#""007""#);
        assert_eq!(json(DATE, "0044-03-15 BC"), r#""0044-03-15 BC""#);
        assert_eq!(json(26, "12"), r#""12""#, "oid is text");
        assert_eq!(json(17, r"\x00ff"), r#""\\x00ff""#);
    }

    #[test]
    fn hstore_text_that_is_not_hstore_out_stays_a_string() {
        let hstore = |text: &str| {
            let mut out = Vec::new();
            match write_hstore(&mut out, text.as_bytes()) {
                Ok(()) => String::from_utf8(out).unwrap(),
                Err(Malformed) => "malformed".to_owned(),
            }
        };
        assert_eq!(hstore(r#""b"=>"1", "a"=>NULL"#), r#"{"a":null,"b":"1"}"#);
        assert_eq!(hstore(""), "{}");
        for broken in [
            r#""a"=>"#,
            r#""a"#,
            "a=>b",
            r#""a"=>"1" "b"=>"2""#,
            r#""a"=>Nul"#,
        ] {
            assert_eq!(hstore(broken), "malformed", "{broken}");
        }
    }

    #[test]
    fn fast_escaping_matches_byte_by_byte_escaping() {
        // The eight-bytes-at-a-time skip must never miss a byte to escape,
        // wherever it sits in a word.
        let reference = |text: &str| {
            let mut out = String::from("\"");
            for c in text.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = [
            'a', 'Z', '"', '\\', '\n', '\u{1}', '\u{1f}', ' ', '~', 'é', '\u{7f}', '🎉',
        ];
        for length in 0..40 {
            for _ in 0..50 {
                let text: String = (0..length)
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect();
                let mut out = Vec::new();
                write_str(&mut out, &text);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    reference(&text),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn strings_are_escaped_like_escape_json() {
        assert_eq!(
            json(TEXT, "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é/"),
            "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f}é/\""
        );
        let mut out = Vec::new();
        write_json(&mut out, TEXT, b"bad \xff utf8", &TypeRegistry::new());
        assert_eq!(String::from_utf8_lossy(&out), "\"bad \u{fffd} utf8\"");
    }

    #[test]
    fn every_ascii_byte_escapes_like_serde_json_wherever_it_sits() {
        // The escaper reads eight bytes at a time and the rest one by one:
        // put each byte at each offset (the last one included) of strings
        // that end inside and outside a word, next to plain text and to
        // another escape.
        for byte in 0u8..0x80 {
            for length in 1..=19 {
                for at in 0..length {
                    let mut text = vec![b'a'; length];
                    if length > 2 {
                        text[(at + length / 2) % length] = b'"';
                    }
                    text[at] = byte;
                    let text = String::from_utf8(text).unwrap_or_default();
                    let mut out = Vec::new();
                    write_str(&mut out, &text);
                    let expected = serde_json::to_string(&text).unwrap_or_default();
                    assert_eq!(String::from_utf8_lossy(&out), expected, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn timestamps_take_the_xsd_form() {
        assert_eq!(
            json(TIMESTAMP, "2026-11-27 08:00:00.123456"),
            r#""2026-11-27T08:00:00.123456""#
        );
        assert_eq!(json(TIMESTAMP, "infinity"), r#""infinity""#);
        assert_eq!(
            json(TIMESTAMP, "0044-03-15 10:00:00 BC"),
            r#""0044-03-15T10:00:00 BC""#
        );
        assert_eq!(
            json(TIMESTAMPTZ, "2026-11-27 02:30:00.123456+00"),
            r#""2026-11-27T02:30:00.123456+00:00""#
        );
        assert_eq!(
            json(TIMESTAMPTZ, "0044-03-15 10:00:00+00 BC"),
            r#""0044-03-15T10:00:00+00:00 BC""#
        );
        assert_eq!(
            json(TIMESTAMPTZ, "2026-11-27 02:30:00-05:30"),
            r#""2026-11-27T02:30:00-05:30""#
        );
        assert_eq!(json(TIMESTAMPTZ, "-infinity"), r#""-infinity""#);
        assert_eq!(json(TIMESTAMPTZ, "garbage text"), r#""garbage text""#);
    }

    #[test]
    fn json_is_normalised_like_jsonb() {
        assert_eq!(
            normalised(r#" {"b":1, "a":2, "aa": 3, "a": 4} "#),
            r#"{"a":4,"b":1,"aa":3}"#
        );
        assert_eq!(
            normalised("[1e2, 1.50, 1.5e1, -0, 0.0, -0.0, 1E-2, 12e-1, 0e5, 1.0e1, -1.0E-0]"),
            "[100,1.50,15,0,0.0,0.0,0.01,1.2,0,10,-1.0]"
        );
        assert_eq!(
            normalised("123456789012345678901234567890e-10"),
            "12345678901234567890.1234567890"
        );
        assert_eq!(
            normalised(r#""\u00e9\"\\\/\b\f\n\r\t\u0001\u001f\ud83d\ude00""#),
            "\"é\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f😀\""
        );
        assert_eq!(
            normalised(r#"{"":1," ":2,"é":3,"z":4,"aa":5}"#),
            r#"{"":1," ":2,"z":4,"aa":5,"é":3}"#
        );
        assert_eq!(
            normalised(r#"{"a":{"b":[1,{"d":1,"c":2}]},"a":null}"#),
            r#"{"a":null}"#
        );
        assert_eq!(normalised("[]"), "[]");
        assert_eq!(normalised(" {} "), "{}");
        assert_eq!(normalised("null"), "null");
    }

    #[test]
    fn numbers_beyond_numeric_are_kept_as_written() {
        // serde_json cannot hold these as f64, so no JSON check here.
        let raw = |text: &str| {
            let mut out = Vec::new();
            write_json(&mut out, 114, text.as_bytes(), &TypeRegistry::new());
            String::from_utf8_lossy(&out).into_owned()
        };
        assert_eq!(raw("1e131072"), "1e131072");
        assert_eq!(raw("1e131071").len(), 131_072);
        assert_eq!(raw("1.5e-16383"), "1.5e-16383");
        assert_eq!(raw("1e-16383").len(), 16_385);
        assert_eq!(raw("0e999999"), "0");
        assert_eq!(raw("1e99999999999999999999"), "1e99999999999999999999");
    }

    #[test]
    fn deep_json_does_not_recurse() {
        // serde_json stops at 128 levels, so compare the bytes directly.
        let depth = 200_000;
        for text in [
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
            format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth)),
        ] {
            let mut out = Vec::new();
            write_json(&mut out, 114, text.as_bytes(), &TypeRegistry::new());
            assert!(out == text.as_bytes(), "deep json changed");
        }
    }

    #[test]
    fn invalid_json_falls_back_to_a_string() {
        for bad in [
            "",
            "{",
            "[1,]",
            r#"{"a"}"#,
            "01",
            "1.",
            "tru",
            "truex",
            r#""\ud83d""#,
            r#""\q""#,
            "\"a\nb\"",
            "[1] x",
            r#"{"a":1,}"#,
            "-",
            "1e",
        ] {
            assert_eq!(
                normalised(bad),
                String::from_utf8_lossy(&{
                    let mut out = Vec::new();
                    write_string(&mut out, bad.as_bytes());
                    out
                }),
                "{bad:?}"
            );
        }
        // \u0000 cannot be in jsonb; walhook keeps it escaped.
        assert_eq!(normalised(r#""a\u0000""#), r#""a\u0000""#);
    }

    #[test]
    fn jsonb_is_embedded_verbatim() {
        assert_eq!(
            json(JSONB, r#"{"a": 1, "b": [1.50]}"#),
            r#"{"a": 1, "b": [1.50]}"#
        );
        assert_eq!(json(JSONB, "{oops"), r#""{oops""#);
    }

    #[test]
    fn arrays() {
        assert_eq!(json(1007, "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(json(1007, "{}"), "[]");
        assert_eq!(json(1007, "[0:1]={1,2}"), "[1,2]");
        assert_eq!(json(1007, "[1:1][-1:0]={{5,6}}"), "[[5,6]]");
        assert_eq!(json(1007, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(
            json(
                1009,
                r#"{"a,b","{x}","NULL",""," sp ","q\"uo\\te",NULL,null,é}"#
            ),
            r#"["a,b","{x}","NULL",""," sp ","q\"uo\\te",null,null,"é"]"#
        );
        assert_eq!(json(1009, "{ a b , c }"), r#"["a b","c"]"#);
        assert_eq!(
            json(199, r#"{"{\"b\":1,\"a\":2}",[1e2]}"#),
            r#"[{"a":2,"b":1},[100]]"#
        );
        assert_eq!(
            json(1185, r#"{"2026-11-27 08:00:00+00",infinity}"#),
            r#"["2026-11-27T08:00:00+00:00","infinity"]"#
        );
        assert_eq!(json(1000, "{t,f,NULL}"), "[true,false,null]");
        assert_eq!(
            json(1020, "{(1,1),(0,0);(3,3),(2,2)}"),
            r#"["(1,1),(0,0)","(3,3),(2,2)"]"#
        );
        assert_eq!(json(22, "1 2"), "[1,2]");
        assert_eq!(json(30, "1 2"), r#"["1","2"]"#);
    }

    #[test]
    fn negative_zero_is_zero_as_to_jsonb_gives_it() {
        // float4/float8 print -0 as "-0"; to_jsonb passes every number
        // through numeric_in, which has no negative zero (PostgreSQL 15:
        // to_jsonb('-0'::float8) is 0, also in arrays and composites).
        const FLOAT4: u32 = 700;
        assert_eq!(json(FLOAT4, "-0"), "0");
        assert_eq!(json(FLOAT8, "-0"), "0");
        assert_eq!(json(1021, "{-0,0,-1.5}"), "[0,0,-1.5]", "float4[]");
        assert_eq!(json(1022, "{{-0,1},{2,-0}}"), "[[0,1],[2,0]]", "float8[]");
        // Only zero loses its sign, and a zero keeps its scale, as
        // numeric_in gives them.
        assert_eq!(json(FLOAT8, "-1e-50"), "-1e-50");
        assert_eq!(json(FLOAT8, "-0.5"), "-0.5");
        assert_eq!(json(NUMERIC, "-0.0"), "0.0");
        assert_eq!(json(NUMERIC, "0"), "0");

        use crate::catalog::TypeFacts;
        let mut types = TypeRegistry::new();
        types.insert_for_test(TypeFacts {
            oid: 50_010,
            namespace: "public".into(),
            name: "fz".into(),
            base_oid: 50_010,
            kind: JsonKind::Composite {
                fields: vec![
                    ("a".into(), FLOAT4),
                    ("b".into(), FLOAT8),
                    ("c".into(), NUMERIC),
                ],
            },
        });
        assert_eq!(
            json_with(&types, 50_010, "(-0,-0,0)"),
            r#"{"a":0,"b":0,"c":0}"#
        );
    }

    #[test]
    fn malformed_arrays_fall_back_to_a_string() {
        for bad in [
            "{1,2",
            "{1,2}}",
            r#"{"abc}"#,
            "{1,,2}",
            "{,}",
            "1,2",
            "[0:1]{1,2}",
            "{{1},2",
            "{1}x",
            "{a\\",
            "{{{{{{{1}}}}}}}",
            "{1{2}}",
            "[0:1",
        ] {
            assert_eq!(json(1007, bad), json(TEXT, bad), "{bad:?}");
        }
    }

    #[test]
    fn composites_and_domains() {
        use crate::catalog::TypeFacts;
        let mut types = TypeRegistry::new();
        let mut add = |oid, base_oid, kind| {
            types.insert_for_test(TypeFacts {
                oid,
                namespace: "public".into(),
                name: format!("t{oid}"),
                base_oid,
                kind,
            })
        };
        add(
            50_001,
            50_001,
            JsonKind::Composite {
                fields: vec![("x".into(), INT4), ("label".into(), TEXT)],
            },
        );
        add(
            50_002,
            50_002,
            JsonKind::Composite {
                fields: vec![
                    ("id".into(), 20),
                    ("name".into(), TEXT),
                    ("inner_v".into(), 50_001),
                    ("tags".into(), 1009),
                    ("at".into(), TIMESTAMPTZ),
                    ("j".into(), 114),
                ],
            },
        );
        add(
            50_003,
            50_003,
            JsonKind::Array {
                element: 50_001,
                delimiter: b',',
            },
        );
        add(50_004, NUMERIC, JsonKind::Number);
        add(50_005, 50_005, JsonKind::Composite { fields: vec![] });
        assert_eq!(
            json_with(
                &types,
                50_002,
                r#"(1,"a ""q"" b,c","(2,)","{x,""y z""}","2026-01-01 00:00:00+00","{""z"":1,""a"":2}")"#
            ),
            r#"{"id":1,"name":"a \"q\" b,c","inner_v":{"x":2,"label":null},"tags":["x","y z"],"at":"2026-01-01T00:00:00+00:00","j":{"a":2,"z":1}}"#
        );
        assert_eq!(
            json_with(&types, 50_002, r#"(,"",,{},,)"#),
            r#"{"id":null,"name":"","inner_v":null,"tags":[],"at":null,"j":null}"#
        );
        assert_eq!(
            json_with(
                &types,
                50_003,
                r#"{"(1,\"a b\")","(2,\"back\\\\slash\")",NULL}"#
            ),
            r#"[{"x":1,"label":"a b"},{"x":2,"label":"back\\slash"},null]"#
        );
        assert_eq!(json_with(&types, 50_004, "12.50"), "12.50");
        assert_eq!(json_with(&types, 50_005, "()"), "{}");
        for bad in [
            "(1,2",
            "(1)",
            "(1,2,3)",
            "1,2",
            r#"(1,"x)"#,
            "(1,x) y",
            "(1,\\",
        ] {
            assert_eq!(json_with(&types, 50_001, bad), json(TEXT, bad), "{bad:?}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_text() {
        let types = TypeRegistry::new();
        let mut rng = fastrand::Rng::with_seed(11);
        let alphabet = b"{}[]()\",\\:;=-+.eE0123456789 tfnulNUL\n\xff";
        for _ in 0..20_000 {
            let len = rng.usize(0..24);
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            for oid in [
                BOOL,
                INT4,
                TIMESTAMPTZ,
                114,
                JSONB,
                1007,
                1009,
                199,
                22,
                1020,
            ] {
                let mut out = Vec::new();
                write_json(&mut out, oid, &text, &types);
                assert!(
                    serde_json::from_slice::<serde_json::Value>(&out).is_ok()
                        || String::from_utf8_lossy(&out).contains("\\u0000"),
                    "{oid} {text:?} → {}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
}
