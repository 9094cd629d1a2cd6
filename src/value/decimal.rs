//! Exact comparison of decimal numbers written as text: JSON numbers as
//! `to_jsonb` renders int, numeric and float columns, and the number literals
//! of a filter.
//!
//! Numbers are compared by value, digit by digit, never through `f64`:
//! `12.50 = 12.5`, `1e3 = 1000`, `-0 = 0`, and 40-digit values keep every
//! digit. It does not know about NaN or the infinities (those arrive as JSON
//! strings; `eval` ranks them) and it allocates nothing.

use std::cmp::Ordering;

/// Exponents beyond this are clamped: far past any value PostgreSQL's
/// numeric can hold, and small enough that adding digit counts cannot
/// overflow.
const MAX_EXPONENT: i64 = 1_000_000_000_000;

/// A decimal number as it is written, normalised for comparison.
#[derive(Debug, Clone, Copy)]
struct Decimal<'a> {
    negative: bool,
    /// The significant digits, without leading zeros: the integer part's
    /// remaining digits, then the fraction's, trailing zeros removed. Both
    /// empty means zero.
    int: &'a [u8],
    frac: &'a [u8],
    /// The value is `0.<digits> × 10^point`.
    point: i64,
}

/// Whether `text` is a number this module reads: an optional sign, digits
/// with an optional decimal point (at least one digit in all), an optional
/// exponent.
#[cfg(test)]
fn is_number(text: &[u8]) -> bool {
    parse(text).is_some()
}

/// Compares two numbers by value; `None` when either is not a number.
pub fn compare(left: &[u8], right: &[u8]) -> Option<Ordering> {
    Some(parse(left)?.cmp_value(&parse(right)?))
}

fn parse(text: &[u8]) -> Option<Decimal<'_>> {
    let (negative, rest) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (int, rest) = rest.split_at(int_len);
    let (frac, rest) = match rest.split_first() {
        Some((b'.', after)) => {
            let frac_len = after.iter().take_while(|b| b.is_ascii_digit()).count();
            after.split_at(frac_len)
        }
        _ => (&rest[..0], rest),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let exponent = match rest.split_first() {
        None => 0,
        Some((b'e' | b'E', after)) => {
            let (exp_negative, digits) = match after.split_first() {
                Some((b'-', digits)) => (true, digits),
                Some((b'+', digits)) => (false, digits),
                _ => (false, after),
            };
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let magnitude = digits.iter().fold(0i64, |value, digit| {
                (value * 10 + i64::from(digit - b'0')).min(MAX_EXPONENT)
            });
            if exp_negative { -magnitude } else { magnitude }
        }
        Some(_) => return None,
    };
    // 0.<int><frac> × 10^(len(int) + exponent), then drop leading zeros
    // (each moves the point left) and trailing zeros (no effect).
    let mut point = int.len() as i64 + exponent;
    let int_zeros = int.iter().take_while(|&&b| b == b'0').count();
    let mut int = &int[int_zeros..];
    point -= int_zeros as i64;
    let mut frac = frac;
    if int.is_empty() {
        let frac_zeros = frac.iter().take_while(|&&b| b == b'0').count();
        frac = &frac[frac_zeros..];
        point -= frac_zeros as i64;
    }
    let frac_trailing = frac.iter().rev().take_while(|&&b| b == b'0').count();
    frac = &frac[..frac.len() - frac_trailing];
    if frac.is_empty() {
        let int_trailing = int.iter().rev().take_while(|&&b| b == b'0').count();
        int = &int[..int.len() - int_trailing];
    }
    Some(Decimal {
        negative,
        int,
        frac,
        point,
    })
}

impl Decimal<'_> {
    fn is_zero(&self) -> bool {
        self.int.is_empty() && self.frac.is_empty()
    }

    /// -1, 0 or 1.
    fn sign(&self) -> i8 {
        match (self.is_zero(), self.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }

    fn cmp_magnitude(&self, other: &Decimal<'_>) -> Ordering {
        self.point.cmp(&other.point).then_with(|| {
            // Same position of the first digit: the digits decide, and a
            // shorter run (its trailing zeros dropped) is the smaller.
            let mine = self.int.iter().chain(self.frac);
            let theirs = other.int.iter().chain(other.frac);
            mine.cmp(theirs)
        })
    }

    fn cmp_value(&self, other: &Decimal<'_>) -> Ordering {
        let (mine, theirs) = (self.sign(), other.sign());
        if mine != theirs || mine == 0 {
            return mine.cmp(&theirs);
        }
        let magnitude = self.cmp_magnitude(other);
        if mine < 0 {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(left: &str, right: &str) -> Ordering {
        compare(left.as_bytes(), right.as_bytes()).unwrap()
    }

    #[test]
    fn equal_values_written_differently() {
        for (left, right) in [
            ("12.50", "12.5"),
            ("1e3", "1000"),
            ("1000", "1.000e3"),
            ("-0", "0"),
            ("0.000", "0e5"),
            ("+7", "7"),
            ("007.10", "7.1"),
            (".5", "0.5"),
            ("5.", "5"),
            ("1E-2", "0.01"),
            ("1e+30", "1000000000000000000000000000000"),
        ] {
            assert_eq!(cmp(left, right), Ordering::Equal, "{left} = {right}");
        }
    }

    #[test]
    fn order_is_by_value() {
        for (left, right) in [
            ("1", "2"),
            ("-2", "-1"),
            ("-1", "0"),
            ("0", "0.0001"),
            ("9", "10"),
            ("0.12", "0.123"),
            ("-0.123", "-0.12"),
            ("99.99", "100"),
            ("1e-5", "1e-4"),
            ("-1e10", "-1e9"),
            // 40 digits that differ only in the last one.
            (
                "1234567890123456789012345678901234567890",
                "1234567890123456789012345678901234567891",
            ),
            (
                "0.1234567890123456789012345678901234567890",
                "0.12345678901234567890123456789012345678901",
            ),
            ("-99999999999999999999999999999999999999999", "-1"),
        ] {
            assert_eq!(cmp(left, right), Ordering::Less, "{left} < {right}");
            assert_eq!(cmp(right, left), Ordering::Greater, "{right} > {left}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_number() {
        for text in [
            "", "-", ".", "e5", "1e", "1e+", "1.2.3", "abc", "1x", "--1", "NaN", "Infinity",
        ] {
            assert!(!is_number(text.as_bytes()), "{text:?}");
        }
        assert!(compare(b"1", b"x").is_none());
    }

    #[test]
    fn huge_exponents_saturate_instead_of_overflowing() {
        assert_eq!(
            cmp("1e99999999999999999999999", "1e999999"),
            Ordering::Greater
        );
        assert_eq!(cmp("1e-99999999999999999999999", "0"), Ordering::Greater);
    }
}
