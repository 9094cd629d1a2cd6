//! JSON string escaping and lowercase hex: the byte-level writing that
//! payloads, values and ids share.
//!
//! [`write_string`] escapes as PostgreSQL's `escape_json` does (`"`, `\\` and
//! the control characters, nothing else), so that text walhook writes is
//! byte for byte what `to_jsonb` would print. It imports nothing of walhook's
//! and knows nothing of types or payloads.

/// Appends `text` as a JSON string, escaped as PostgreSQL's `escape_json`
/// does: `"` `\` and the control characters, nothing else.
pub fn write_string(out: &mut Vec<u8>, text: &[u8]) {
    // Valid UTF-8 is the rule: check it once, fast, and only fall back to the
    // lossy (allocating) path when it is not.
    match std::str::from_utf8(text) {
        Ok(_) => write_escaped(out, text),
        Err(_) => write_escaped(out, String::from_utf8_lossy(text).as_bytes()),
    }
}

/// Whether any of eight bytes is a control character, `"` or `\\`
/// (the classic "has a zero byte" test, applied three times).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |value: u64| value.wrapping_sub(ONES) & !value & HIGHS;
    // Bytes below 0x20: subtracting 0x20 borrows into the high bit of any
    // byte that was smaller (and not already >= 0x80).
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    // One test of the three, not three branches.
    control
        | zero_bytes(word ^ (ONES * u64::from(b'"')))
        | zero_bytes(word ^ (ONES * u64::from(b'\\')))
        != 0
}

/// Appends a Rust string as a JSON string (it is UTF-8 already).
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    write_escaped(out, text.as_bytes());
}

/// Escapes UTF-8 `text` into `out` between quotes, copying runs of bytes
/// that need no escape in one go.
fn write_escaped(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    let mut index = 0;
    while index < text.len() {
        // Skip eight plain bytes at a time; most text has nothing to escape.
        if let Some(chunk) = text.get(index..index + 8)
            && let Ok(chunk) = <[u8; 8]>::try_from(chunk)
            && !needs_escape(u64::from_le_bytes(chunk))
        {
            index += 8;
            continue;
        }
        let byte = text[index];
        index += 1;
        if !ESCAPED[usize::from(byte)] {
            continue;
        }
        out.extend_from_slice(&text[run_start..index - 1]);
        run_start = index;
        if let Some(escape) = escape_of(byte) {
            escape.write(out);
        }
    }
    out.extend_from_slice(&text[run_start..]);
    out.push(b'"');
}

/// The bytes a JSON string cannot hold as themselves (those `escape_of`
/// escapes): one look-up a byte where eight-at-a-time does not apply.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = escape_of(byte as u8).is_some();
        byte += 1;
    }
    table
};

/// How JSON writes a byte that cannot appear as itself in a string.
enum Escape {
    Short(&'static [u8]),
    Unicode(u8),
}

impl Escape {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Escape::Short(text) => out.extend_from_slice(text),
            Escape::Unicode(byte) => {
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&hex_pair(*byte));
            }
        }
    }
}

const fn escape_of(byte: u8) -> Option<Escape> {
    Some(match byte {
        b'"' => Escape::Short(b"\\\""),
        b'\\' => Escape::Short(b"\\\\"),
        b'\n' => Escape::Short(b"\\n"),
        b'\r' => Escape::Short(b"\\r"),
        b'\t' => Escape::Short(b"\\t"),
        0x08 => Escape::Short(b"\\b"),
        0x0c => Escape::Short(b"\\f"),
        0x00..0x20 => Escape::Unicode(byte),
        _ => return None,
    })
}

/// Appends `bytes` as lowercase hex.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    for &byte in bytes {
        let [high, low] = hex_pair(byte);
        out.push(char::from(high));
        out.push(char::from(low));
    }
}

/// One byte as two lowercase hex digits (ids, bytea, `\u00XX` escapes).
pub const fn hex_pair(byte: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[(byte >> 4) as usize], DIGITS[(byte & 0x0f) as usize]]
}
