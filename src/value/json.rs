//! json → jsonb normalisation, without recursion (PostgreSQL accepts json
//! nested thousands of levels deep).
//!
//! It does not render other types; `value` does.

use super::{Malformed, number_end, write_string};

enum Node {
    Null,
    True,
    False,
    /// A range of the input holding a valid JSON number.
    Number(usize, usize),
    /// Unescaped UTF-8.
    String(Vec<u8>),
    Array(Vec<usize>),
    Object(Vec<(Vec<u8>, usize)>),
}

/// A parsed document: nodes refer to their children by index, so that
/// neither parsing, printing nor dropping recurses.
pub(super) struct Document<'a> {
    text: &'a [u8],
    nodes: Vec<Node>,
    root: usize,
}

/// Parses `text` as json input does; an error for anything jsonb would
/// reject, except `\u0000`, which is kept (and printed escaped).
pub(super) fn parse(text: &[u8]) -> Result<Document<'_>, Malformed> {
    let mut p = Parser {
        s: text,
        pos: 0,
        nodes: Vec::new(),
    };
    // Open containers: (node, key awaiting its value).
    let mut stack: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
    loop {
        p.skip_space();
        let mut done = match p.peek().ok_or(Malformed)? {
            b'{' => {
                p.pos += 1;
                let node = p.push(Node::Object(Vec::new()));
                p.skip_space();
                if p.peek() == Some(b'}') {
                    p.pos += 1;
                    node
                } else {
                    let key = p.key()?;
                    stack.push((node, Some(key)));
                    continue;
                }
            }
            b'[' => {
                p.pos += 1;
                let node = p.push(Node::Array(Vec::new()));
                p.skip_space();
                if p.peek() == Some(b']') {
                    p.pos += 1;
                    node
                } else {
                    stack.push((node, None));
                    continue;
                }
            }
            b'"' => {
                let string = p.string()?;
                p.push(Node::String(string))
            }
            b't' => p.literal(b"true", Node::True)?,
            b'f' => p.literal(b"false", Node::False)?,
            b'n' => p.literal(b"null", Node::Null)?,
            _ => {
                let end = number_end(p.s, p.pos).ok_or(Malformed)?;
                if p.s.get(end).is_some_and(u8::is_ascii_alphanumeric) {
                    return Err(Malformed);
                }
                let node = p.push(Node::Number(p.pos, end));
                p.pos = end;
                node
            }
        };
        // A value is complete: attach it and close what it completes.
        loop {
            let Some((parent, key)) = stack.last_mut() else {
                p.skip_space();
                if p.pos != p.s.len() {
                    return Err(Malformed);
                }
                let mut doc = Document {
                    text,
                    nodes: p.nodes,
                    root: done,
                };
                doc.normalise_objects();
                return Ok(doc);
            };
            let parent = *parent;
            let key = key.take();
            let is_object = match (&mut p.nodes[parent], key) {
                (Node::Object(members), Some(key)) => {
                    members.push((key, done));
                    true
                }
                (Node::Array(items), None) => {
                    items.push(done);
                    false
                }
                _ => return Err(Malformed),
            };
            p.skip_space();
            match (p.peek().ok_or(Malformed)?, is_object) {
                (b',', _) => {
                    p.pos += 1;
                    if is_object {
                        p.skip_space();
                        let key = p.key()?;
                        if let Some(last) = stack.last_mut() {
                            last.1 = Some(key);
                        }
                    }
                    break;
                }
                (b'}', true) | (b']', false) => {
                    p.pos += 1;
                    stack.pop();
                    done = parent;
                }
                _ => return Err(Malformed),
            }
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8], node: Node) -> Result<usize, Malformed> {
        let end = self.pos + word.len();
        if self.s.get(self.pos..end) != Some(word)
            || self.s.get(end).is_some_and(u8::is_ascii_alphanumeric)
        {
            return Err(Malformed);
        }
        self.pos = end;
        Ok(self.push(node))
    }

    /// An object key and its colon.
    fn key(&mut self) -> Result<Vec<u8>, Malformed> {
        if self.peek() != Some(b'"') {
            return Err(Malformed);
        }
        let key = self.string()?;
        self.skip_space();
        if self.peek() != Some(b':') {
            return Err(Malformed);
        }
        self.pos += 1;
        Ok(key)
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let digits = self.s.get(self.pos..self.pos + 4).ok_or(Malformed)?;
        let digits = std::str::from_utf8(digits).map_err(|_| Malformed)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Malformed);
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).map_err(|_| Malformed)
    }

    /// A string starting at its opening quote, unescaped.
    fn string(&mut self) -> Result<Vec<u8>, Malformed> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let byte = self.peek().ok_or(Malformed)?;
            self.pos += 1;
            match byte {
                b'"' => break,
                0..0x20 => return Err(Malformed),
                b'\\' => {
                    let escaped = self.peek().ok_or(Malformed)?;
                    self.pos += 1;
                    let plain = match escaped {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xd800..0xdc00).contains(&code) {
                                if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(Malformed);
                                }
                                self.pos += 2;
                                let low = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&low) {
                                    return Err(Malformed);
                                }
                                code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                            }
                            let c = char::from_u32(code).ok_or(Malformed)?;
                            let mut utf8 = [0; 4];
                            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                            continue;
                        }
                        _ => return Err(Malformed),
                    };
                    out.push(plain);
                }
                byte => out.push(byte),
            }
        }
        std::str::from_utf8(&out).map_err(|_| Malformed)?;
        Ok(out)
    }
}

impl Document<'_> {
    /// jsonb's object rules: keys ordered by length, then bytes; of
    /// duplicate keys the last one wins.
    fn normalise_objects(&mut self) {
        for node in &mut self.nodes {
            if let Node::Object(members) = node {
                // Stable: equal keys stay in input order.
                members.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
                members.reverse();
                members.dedup_by(|later, earlier| later.0 == earlier.0);
                members.reverse();
            }
        }
    }

    /// Prints compact JSON with jsonb's numbers and string escapes.
    fn write(&self, out: &mut Vec<u8>) {
        enum Task {
            Value(usize),
            Byte(u8),
            Key(usize, usize),
        }
        let mut tasks = vec![Task::Value(self.root)];
        while let Some(task) = tasks.pop() {
            let node = match task {
                Task::Byte(byte) => {
                    out.push(byte);
                    continue;
                }
                Task::Key(object, member) => {
                    if let Some(Node::Object(members)) = self.nodes.get(object)
                        && let Some((key, _)) = members.get(member)
                    {
                        write_string(out, key);
                        out.push(b':');
                    }
                    continue;
                }
                Task::Value(node) => node,
            };
            match self.nodes.get(node) {
                None | Some(Node::Null) => out.extend_from_slice(b"null"),
                Some(Node::True) => out.extend_from_slice(b"true"),
                Some(Node::False) => out.extend_from_slice(b"false"),
                Some(Node::Number(start, end)) => {
                    write_numeric(out, &self.text[*start..*end]);
                }
                Some(Node::String(text)) => write_string(out, text),
                Some(Node::Array(items)) => {
                    out.push(b'[');
                    tasks.push(Task::Byte(b']'));
                    for (i, item) in items.iter().enumerate().rev() {
                        tasks.push(Task::Value(*item));
                        if i > 0 {
                            tasks.push(Task::Byte(b','));
                        }
                    }
                }
                Some(Node::Object(members)) => {
                    out.push(b'{');
                    tasks.push(Task::Byte(b'}'));
                    for (i, (_, value)) in members.iter().enumerate().rev() {
                        tasks.push(Task::Value(*value));
                        tasks.push(Task::Key(node, i));
                        if i > 0 {
                            tasks.push(Task::Byte(b','));
                        }
                    }
                }
            }
        }
    }
}

/// Re-emits json text the way `to_jsonb(text::json)` prints it.
pub(super) fn normalise(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Malformed> {
    parse(text)?.write(out);
    Ok(())
}

/// The numeric type's limits: digits after the point, digits before it.
const MAX_DSCALE: i64 = 0x3fff;
const MAX_INTEGER_DIGITS: i64 = 131_072;

/// Writes a JSON number as `numeric_out(numeric_in(text))`: exponents
/// spelled out, the scale kept (`1.50` stays, `1.5e1` is `15`, `1e-2` is
/// `0.01`), no negative zero. Numbers beyond numeric's range (which
/// jsonb rejects) are written as they are.
pub(super) fn write_numeric(out: &mut Vec<u8>, text: &[u8]) {
    let (negative, unsigned) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let (mantissa, exponent) = match unsigned.iter().position(|&b| b == b'e' || b == b'E') {
        Some(at) => (&unsigned[..at], &unsigned[at + 1..]),
        None => (unsigned, &b""[..]),
    };
    let (integer, fraction) = match mantissa.iter().position(|&b| b == b'.') {
        Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
        None => (mantissa, &b""[..]),
    };
    let exponent: i64 = if exponent.is_empty() {
        0
    } else {
        let (sign, digits) = match exponent.split_first() {
            Some((b'-', digits)) => (-1, digits),
            Some((b'+', digits)) => (1, digits),
            _ => (1, exponent),
        };
        let mut value: i64 = 0;
        for &digit in digits {
            value = value
                .saturating_mul(10)
                .saturating_add(i64::from(digit.wrapping_sub(b'0')));
        }
        sign * value
    };
    let as_is = |out: &mut Vec<u8>| out.extend_from_slice(text);
    if exponent.abs() >= i64::from(i32::MAX / 2) {
        return as_is(out);
    }
    let digits: Vec<u8> = integer.iter().chain(fraction).copied().collect();
    let len = digits.len() as i64;
    let point = integer.len() as i64 + exponent;
    let scale = (fraction.len() as i64 - exponent).max(0);
    let first_nonzero = digits.iter().position(|&d| d != b'0');
    if scale > MAX_DSCALE {
        return as_is(out);
    }
    if let Some(first) = first_nonzero
        && point - first as i64 > MAX_INTEGER_DIGITS
    {
        return as_is(out);
    }
    let digit = |i: i64| {
        if (0..len).contains(&i) {
            digits[i as usize]
        } else {
            b'0'
        }
    };
    if negative && first_nonzero.is_some() {
        out.push(b'-');
    }
    // Integer part: from the first non-zero digit before the point.
    let integer_start = first_nonzero.map_or(point, |first| first as i64);
    if integer_start >= point {
        out.push(b'0');
    } else {
        out.extend((integer_start..point).map(digit));
    }
    if scale > 0 {
        out.push(b'.');
        out.extend((point..point + scale).map(digit));
    }
}
