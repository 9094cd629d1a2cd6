//! The filter language's text: a hand-written lexer and recursive-descent
//! parser that turn a filter into its typed tree ([`Expr`]), once, at
//! start-up.
//!
//! Precedence, loosest first: `or`, `and`, `not`, then one predicate
//! (`a = b`, `a [not] in (…)`, `a [not] like '…'`, `a is [not] null`,
//! `changed(col)`, a bare boolean operand) or a parenthesised expression.
//! Keywords are case-insensitive; unquoted identifiers fold to lower case as
//! in SQL and "double-quoted" ones keep their case. A [`ParseError`] gives the
//! 0-based character offset where parsing failed and what was expected there.
//!
//! It does not look at tables or types (`Filter::bind`, `catalog_check`) and
//! never evaluates anything.

use std::fmt;

/// Parentheses and `not`s nest at most this deep, so that hostile input
/// cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// A parsed filter, generic over how it names columns: [`ColumnRef`] as
/// written, or column indexes once bound to a table shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr<C> {
    /// Every part true (two or more parts).
    And(Vec<Expr<C>>),
    /// Some part true (two or more parts).
    Or(Vec<Expr<C>>),
    Not(Box<Expr<C>>),
    Compare {
        left: Operand<C>,
        op: CompareOp,
        right: Operand<C>,
    },
    In {
        operand: Operand<C>,
        list: Vec<Literal>,
        negated: bool,
    },
    IsNull {
        operand: Operand<C>,
        negated: bool,
    },
    Like {
        operand: Operand<C>,
        pattern: LikePattern,
        negated: bool,
    },
    /// `changed(col)`.
    Changed(C),
    /// A bare operand used as a condition (a boolean column, `true`).
    Truth(Operand<C>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand<C> {
    Column(C),
    Literal(Literal),
}

/// A literal as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// The number's text, validated (sign, digits, point, exponent).
    Number(String),
    /// The string's contents, quotes undone.
    String(String),
    Bool(bool),
    Null,
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Number(text) => f.write_str(text),
            Literal::String(text) => write!(f, "'{}'", text.replace('\'', "''")),
            Literal::Bool(value) => write!(f, "{value}"),
            Literal::Null => f.write_str("null"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Which row a column is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// `new.col`.
    New,
    /// `old.col`.
    Old,
    /// `col`: the new row, or the old row of a DELETE.
    Bare,
}

/// A column as the filter names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRef {
    pub side: Side,
    pub name: String,
    /// Character offset (0-based) of the reference in the filter.
    pub position: usize,
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.side {
            Side::New => write!(f, "new.{}", self.name),
            Side::Old => write!(f, "old.{}", self.name),
            Side::Bare => f.write_str(&self.name),
        }
    }
}

/// A compiled `like` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LikePattern(pub Vec<PatternItem>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternItem {
    /// This character, exactly.
    Char(char),
    /// `_`: any one character.
    One,
    /// `%`: any run of characters, the empty run included.
    Many,
}

impl LikePattern {
    /// Compiles `%`, `_` and backslash escapes; `None` when the pattern ends
    /// in a lone backslash.
    fn compile(text: &str) -> Option<LikePattern> {
        let mut items = Vec::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let item = match c {
                '\\' => PatternItem::Char(chars.next()?),
                '%' => PatternItem::Many,
                '_' => PatternItem::One,
                c => PatternItem::Char(c),
            };
            // `%%` matches what `%` matches.
            if !(item == PatternItem::Many && items.last() == Some(&PatternItem::Many)) {
                items.push(item);
            }
        }
        Some(LikePattern(items))
    }
}

/// Why a filter did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {} expected {expected}, found {found}", Location::of(*.position, text))]
pub struct ParseError {
    /// Character offset (0-based) where parsing failed.
    pub position: usize,
    pub expected: String,
    pub found: String,
    /// The filter text, to say where the position is.
    pub text: String,
}

impl ParseError {
    /// 1-based line and column of the failure.
    pub fn location(&self) -> Location {
        Location::of(self.position, &self.text)
    }
}

/// A 1-based line and column in a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    /// Whether the filter has more than one line.
    multiline: bool,
}

impl Location {
    /// Where character `position` of `source` is.
    pub fn of(position: usize, source: &str) -> Location {
        let mut line = 1;
        let mut column = 1;
        for c in source.chars().take(position) {
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        Location {
            line,
            column,
            multiline: source.contains('\n'),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.multiline {
            write!(f, "line {}, column {}", self.line, self.column)
        } else {
            write!(f, "column {}", self.column)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An unquoted word, folded to lower case.
    Word(String),
    /// A "double-quoted" identifier.
    Quoted(String),
    Number(String),
    String(String),
    LParen,
    RParen,
    Comma,
    Dot,
    Op(CompareOp),
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(word) => format!("`{word}`"),
            Token::Quoted(name) => format!("\"{name}\""),
            Token::Number(text) => format!("the number {text}"),
            Token::String(text) => format!("the string '{}'", text.replace('\'', "''")),
            Token::LParen => "`(`".into(),
            Token::RParen => "`)`".into(),
            Token::Comma => "`,`".into(),
            Token::Dot => "`.`".into(),
            Token::Op(op) => format!("`{}`", op_text(*op)),
            Token::End => "the end of the filter".into(),
        }
    }

    fn is_word(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(word) if word == keyword)
    }
}

fn op_text(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Eq => "=",
        CompareOp::Ne => "<>",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
    }
}

/// Words that cannot name a column unless double-quoted.
const RESERVED: &[&str] = &[
    "and", "or", "not", "in", "is", "null", "like", "true", "false",
];

/// A token and the character offset where it starts.
type Spanned = (Token, usize);

/// Reads a token quoted by `quote` starting at `open` (SQL style: a doubled
/// quote stands for one). Returns the text and the index after the closing
/// quote, or `None` when the quote is never closed.
fn quoted(chars: &[char], open: usize, quote: char) -> Option<(String, usize)> {
    let mut text = String::new();
    let mut i = open + 1;
    loop {
        match chars.get(i) {
            None => return None,
            Some(&c) if c == quote && chars.get(i + 1) == Some(&quote) => {
                text.push(quote);
                i += 2;
            }
            Some(&c) if c == quote => return Some((text, i + 1)),
            Some(&c) => {
                text.push(c);
                i += 1;
            }
        }
    }
}

fn lex(source: &str) -> Result<Vec<Spanned>, ParseError> {
    let chars: Vec<char> = source.chars().collect();
    let error = |position: usize, expected: &str, found: String| ParseError {
        position,
        expected: expected.into(),
        found,
        text: source.into(),
    };
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let next = chars.get(i + 1).copied();
        let token = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => Token::LParen,
            ')' => Token::RParen,
            ',' => Token::Comma,
            '=' => Token::Op(CompareOp::Eq),
            '<' => match next {
                Some('>') => Token::Op(CompareOp::Ne),
                Some('=') => Token::Op(CompareOp::Le),
                _ => Token::Op(CompareOp::Lt),
            },
            '>' => match next {
                Some('=') => Token::Op(CompareOp::Ge),
                _ => Token::Op(CompareOp::Gt),
            },
            '!' if next == Some('=') => Token::Op(CompareOp::Ne),
            '\'' => {
                let Some((text, next)) = quoted(&chars, i, '\'') else {
                    return Err(error(
                        start,
                        "a closing `'` for this string",
                        "the end of the filter".into(),
                    ));
                };
                i = next;
                tokens.push((Token::String(text), start));
                continue;
            }
            '"' => {
                let Some((name, next)) = quoted(&chars, i, '"') else {
                    return Err(error(
                        start,
                        "a closing `\"` for this identifier",
                        "the end of the filter".into(),
                    ));
                };
                i = next;
                if name.is_empty() {
                    return Err(error(
                        start,
                        "a column name between the quotes",
                        "\"\"".into(),
                    ));
                }
                tokens.push((Token::Quoted(name), start));
                continue;
            }
            '+' | '-' | '.' | '0'..='9' => {
                let signed = matches!(c, '+' | '-');
                let mut end = i + usize::from(signed);
                let digits_at = |at: usize| chars.get(at).is_some_and(char::is_ascii_digit);
                let starts_number =
                    digits_at(end) || (chars.get(end) == Some(&'.') && digits_at(end + 1));
                if !starts_number {
                    if c == '.' {
                        tokens.push((Token::Dot, start));
                        i += 1;
                        continue;
                    }
                    return Err(error(
                        start,
                        "a number after the sign (no space between)",
                        format!("`{c}`"),
                    ));
                }
                while digits_at(end) {
                    end += 1;
                }
                if chars.get(end) == Some(&'.') {
                    end += 1;
                    while digits_at(end) {
                        end += 1;
                    }
                }
                if matches!(chars.get(end), Some('e' | 'E')) {
                    let mut exp_end = end + 1;
                    if matches!(chars.get(exp_end), Some('+' | '-')) {
                        exp_end += 1;
                    }
                    if !digits_at(exp_end) {
                        return Err(error(
                            exp_end,
                            "the digits of the exponent",
                            describe_char(chars.get(exp_end)),
                        ));
                    }
                    while digits_at(exp_end) {
                        exp_end += 1;
                    }
                    end = exp_end;
                }
                if chars
                    .get(end)
                    .is_some_and(|&c| c.is_alphanumeric() || c == '_' || c == '.')
                {
                    return Err(error(
                        end,
                        "the end of the number",
                        describe_char(chars.get(end)),
                    ));
                }
                let text: String = chars[i..end].iter().collect();
                i = end;
                tokens.push((Token::Number(text), start));
                continue;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut end = i + 1;
                while chars
                    .get(end)
                    .is_some_and(|&c| c.is_alphanumeric() || c == '_' || c == '$')
                {
                    end += 1;
                }
                let word: String = chars[i..end].iter().map(char::to_ascii_lowercase).collect();
                i = end;
                tokens.push((Token::Word(word), start));
                continue;
            }
            other => {
                return Err(error(
                    start,
                    "a column, a literal, an operator, `(` or `)`",
                    format!("`{other}`"),
                ));
            }
        };
        i += match token {
            Token::Op(CompareOp::Ne | CompareOp::Le | CompareOp::Ge) => 2,
            _ => 1,
        };
        tokens.push((token, start));
    }
    tokens.push((Token::End, chars.len()));
    Ok(tokens)
}

fn describe_char(c: Option<&char>) -> String {
    match c {
        Some(c) => format!("`{c}`"),
        None => "the end of the filter".into(),
    }
}

/// Parses a filter into its tree of named columns.
pub fn parse(source: &str) -> Result<Expr<ColumnRef>, ParseError> {
    let tokens = lex(source)?;
    let mut parser = Parser {
        source,
        tokens,
        at: 0,
        depth: 0,
    };
    let expr = parser.or()?;
    parser.expect_end()?;
    Ok(expr)
}

struct Parser<'a> {
    source: &'a str,
    tokens: Vec<Spanned>,
    at: usize,
    depth: usize,
}

const EXPECT_OPERAND: &str = "a column or a literal (a number, 'string', true, false, null)";
const EXPECT_CONDITION: &str = "a condition: a column, a literal, `not`, `changed(column)` or `(`";

impl Parser<'_> {
    fn peek(&self) -> &Token {
        self.tokens
            .get(self.at)
            .map_or(&Token::End, |(token, _)| token)
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        self.tokens
            .get(self.at + ahead)
            .map_or(&Token::End, |(token, _)| token)
    }

    fn position(&self) -> usize {
        self.tokens
            .get(self.at)
            .or(self.tokens.last())
            .map_or(0, |(_, position)| *position)
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        self.at = (self.at + 1).min(self.tokens.len());
        token
    }

    fn fail<T>(&self, expected: &str) -> Result<T, ParseError> {
        Err(ParseError {
            position: self.position(),
            expected: expected.into(),
            found: self.peek().describe(),
            text: self.source.into(),
        })
    }

    fn eat_word(&mut self, keyword: &str) -> bool {
        if self.peek().is_word(keyword) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: Token, expected: &str) -> Result<(), ParseError> {
        if *self.peek() == token {
            self.at += 1;
            Ok(())
        } else {
            self.fail(expected)
        }
    }

    fn expect_end(&mut self) -> Result<(), ParseError> {
        match self.peek() {
            Token::End => Ok(()),
            Token::RParen => {
                self.fail("`and`, `or` or the end of the filter (this `)` has no `(`)")
            }
            _ => self.fail("`and`, `or` or the end of the filter"),
        }
    }

    fn nest(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(&format!(
                "at most {MAX_DEPTH} levels of parentheses and `not`"
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr<ColumnRef>, ParseError> {
        let mut parts = vec![self.and()?];
        while self.eat_word("or") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Expr<ColumnRef>, ParseError> {
        let mut parts = vec![self.not()?];
        while self.eat_word("and") {
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }

    fn not(&mut self) -> Result<Expr<ColumnRef>, ParseError> {
        if self.peek().is_word("not") {
            self.nest()?;
            self.at += 1;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr<ColumnRef>, ParseError> {
        if *self.peek() == Token::LParen {
            self.nest()?;
            self.at += 1;
            let inner = self.or()?;
            self.expect(Token::RParen, "`)`, `and` or `or`")?;
            self.depth -= 1;
            return Ok(inner);
        }
        if self.peek().is_word("changed") && *self.peek_at(1) == Token::LParen {
            self.at += 2;
            let position = self.position();
            let name = match self.advance() {
                Token::Word(word) if !RESERVED.contains(&word.as_str()) => word,
                Token::Quoted(name) => name,
                _ => {
                    self.at -= 1;
                    return self
                        .fail("a column name (changed() takes a plain column, no new./old.)");
                }
            };
            if *self.peek() == Token::Dot {
                return self.fail("`)` (changed() takes a plain column, no new./old.)");
            }
            self.expect(Token::RParen, "`)`")?;
            return Ok(Expr::Changed(ColumnRef {
                side: Side::Bare,
                name,
                position,
            }));
        }
        let operand = self.operand(EXPECT_CONDITION)?;
        let negated = self.eat_word("not");
        match self.peek().clone() {
            Token::Op(op) if !negated => {
                self.at += 1;
                let right = self.operand(EXPECT_OPERAND)?;
                Ok(Expr::Compare {
                    left: operand,
                    op,
                    right,
                })
            }
            Token::Word(word) if word == "in" => {
                self.at += 1;
                self.expect(Token::LParen, "`(` to open the list")?;
                let mut list = vec![self.literal()?];
                while *self.peek() == Token::Comma {
                    self.at += 1;
                    list.push(self.literal()?);
                }
                self.expect(Token::RParen, "`,` or `)` to close the list")?;
                Ok(Expr::In {
                    operand,
                    list,
                    negated,
                })
            }
            Token::Word(word) if word == "like" => {
                self.at += 1;
                let position = self.position();
                let Token::String(text) = self.advance() else {
                    self.at -= 1;
                    return self.fail("a 'pattern' string after like");
                };
                let Some(pattern) = LikePattern::compile(&text) else {
                    return Err(ParseError {
                        position,
                        expected: "a pattern that does not end in a lone backslash \
                                   (write \\\\ for a backslash)"
                            .into(),
                        found: Token::String(text).describe(),
                        text: self.source.into(),
                    });
                };
                Ok(Expr::Like {
                    operand,
                    pattern,
                    negated,
                })
            }
            Token::Word(word) if word == "is" && !negated => {
                self.at += 1;
                let negated = self.eat_word("not");
                if !self.eat_word("null") {
                    return self.fail(if negated {
                        "`null`"
                    } else {
                        "`null` or `not null`"
                    });
                }
                Ok(Expr::IsNull { operand, negated })
            }
            _ if negated => self.fail("`in` or `like` after `not`"),
            _ => Ok(Expr::Truth(operand)),
        }
    }

    fn operand(&mut self, expected: &str) -> Result<Operand<ColumnRef>, ParseError> {
        let position = self.position();
        match self.peek().clone() {
            Token::Word(word)
                if matches!(word.as_str(), "new" | "old") && *self.peek_at(1) == Token::Dot =>
            {
                self.at += 2;
                let side = if word == "new" { Side::New } else { Side::Old };
                let name = match self.advance() {
                    Token::Word(name) if !RESERVED.contains(&name.as_str()) => name,
                    Token::Quoted(name) => name,
                    _ => {
                        self.at -= 1;
                        return self.fail(&format!(
                            "a column name after `{word}.` (double-quote a name that is a keyword)"
                        ));
                    }
                };
                Ok(Operand::Column(ColumnRef {
                    side,
                    name,
                    position,
                }))
            }
            Token::Word(word) if !RESERVED.contains(&word.as_str()) => {
                self.at += 1;
                if *self.peek() == Token::Dot {
                    return self.fail(&format!(
                        "an operator: only `new.` and `old.` may qualify a column, not `{word}.`"
                    ));
                }
                Ok(Operand::Column(ColumnRef {
                    side: Side::Bare,
                    name: word,
                    position,
                }))
            }
            Token::Quoted(name) => {
                self.at += 1;
                Ok(Operand::Column(ColumnRef {
                    side: Side::Bare,
                    name,
                    position,
                }))
            }
            _ => self.literal_or(expected).map(Operand::Literal),
        }
    }

    fn literal(&mut self) -> Result<Literal, ParseError> {
        self.literal_or("a literal (a number, 'string', true, false or null)")
    }

    fn literal_or(&mut self, expected: &str) -> Result<Literal, ParseError> {
        let literal = match self.peek() {
            Token::Number(text) => Literal::Number(text.clone()),
            Token::String(text) => Literal::String(text.clone()),
            Token::Word(word) if word == "true" => Literal::Bool(true),
            Token::Word(word) if word == "false" => Literal::Bool(false),
            Token::Word(word) if word == "null" => Literal::Null,
            _ => return self.fail(expected),
        };
        self.at += 1;
        Ok(literal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(side: Side, name: &str, position: usize) -> Operand<ColumnRef> {
        Operand::Column(ColumnRef {
            side,
            name: name.into(),
            position,
        })
    }

    fn num(text: &str) -> Operand<ColumnRef> {
        Operand::Literal(Literal::Number(text.into()))
    }

    fn string(text: &str) -> Operand<ColumnRef> {
        Operand::Literal(Literal::String(text.into()))
    }

    /// The tree as a compact string, to assert structure and precedence.
    fn shape(expr: &Expr<ColumnRef>) -> String {
        fn operand(operand: &Operand<ColumnRef>) -> String {
            match operand {
                Operand::Column(column) => column.to_string(),
                Operand::Literal(literal) => literal.to_string(),
            }
        }
        let join = |parts: &[Expr<ColumnRef>], word: &str| {
            let parts: Vec<String> = parts.iter().map(shape).collect();
            format!("({})", parts.join(&format!(" {word} ")))
        };
        match expr {
            Expr::And(parts) => join(parts, "and"),
            Expr::Or(parts) => join(parts, "or"),
            Expr::Not(inner) => format!("(not {})", shape(inner)),
            Expr::Compare { left, op, right } => {
                format!("[{} {} {}]", operand(left), op_text(*op), operand(right))
            }
            Expr::In {
                operand: value,
                list,
                negated,
            } => {
                let list: Vec<String> = list.iter().map(Literal::to_string).collect();
                let not = if *negated { "not " } else { "" };
                format!("[{} {not}in {}]", operand(value), list.join(","))
            }
            Expr::IsNull {
                operand: value,
                negated,
            } => {
                let not = if *negated { "not " } else { "" };
                format!("[{} is {not}null]", operand(value))
            }
            Expr::Like {
                operand: value,
                pattern,
                negated,
            } => {
                let not = if *negated { "not " } else { "" };
                format!("[{} {not}like {:?}]", operand(value), pattern.0)
            }
            Expr::Changed(column) => format!("changed({column})"),
            Expr::Truth(value) => format!("[{}]", operand(value)),
        }
    }

    fn parsed(source: &str) -> String {
        shape(&parse(source).unwrap_or_else(|error| panic!("{source}: {error}")))
    }

    #[test]
    fn comparisons_keep_columns_literals_and_positions() {
        let expr = parse("new.status = 'paid'").unwrap();
        assert_eq!(
            expr,
            Expr::Compare {
                left: col(Side::New, "status", 0),
                op: CompareOp::Eq,
                right: string("paid"),
            }
        );
        let expr = parse("  amount>=-12.50e+3").unwrap();
        assert_eq!(
            expr,
            Expr::Compare {
                left: col(Side::Bare, "amount", 2),
                op: CompareOp::Ge,
                right: num("-12.50e+3"),
            }
        );
        for (text, op) in [
            ("=", "="),
            ("<>", "<>"),
            ("!=", "<>"),
            ("<", "<"),
            ("<=", "<="),
            (">", ">"),
            (">=", ">="),
        ] {
            assert_eq!(parsed(&format!("a {text} 1")), format!("[a {op} 1]"));
            assert_eq!(parsed(&format!("a{text}1")), format!("[a {op} 1]"));
        }
        assert_eq!(parsed("old.a = new.b"), "[old.a = new.b]");
        assert_eq!(parsed("1 < +2"), "[1 < +2]");
        assert_eq!(parsed(".5 = 5."), "[.5 = 5.]");
    }

    #[test]
    fn literals_of_every_kind() {
        assert_eq!(parsed("a = 'it''s'"), "[a = 'it''s']");
        assert_eq!(
            parse("a = 'it''s'").unwrap(),
            Expr::Compare {
                left: col(Side::Bare, "a", 0),
                op: CompareOp::Eq,
                right: string("it's"),
            }
        );
        assert_eq!(parsed("a = ''"), "[a = '']");
        assert_eq!(parsed("a = TRUE"), "[a = true]");
        assert_eq!(parsed("a = False"), "[a = false]");
        assert_eq!(parsed("a = NULL"), "[a = null]");
        assert_eq!(parsed("a = 1E-3"), "[a = 1E-3]");
        assert_eq!(parsed("a = 'é \\ %'"), "[a = 'é \\ %']");
        assert_eq!(
            parsed("a = 1234567890123456789012345678901234567890"),
            "[a = 1234567890123456789012345678901234567890]"
        );
    }

    #[test]
    fn every_predicate() {
        assert_eq!(parsed("a in (1, 2.5, null)"), "[a in 1,2.5,null]");
        assert_eq!(parsed("a NOT IN ('x')"), "[a not in 'x']");
        assert_eq!(parsed("a is null"), "[a is null]");
        assert_eq!(parsed("old.a IS NOT NULL"), "[old.a is not null]");
        assert_eq!(
            parsed("a like 'x%_\\%'"),
            "[a like [Char('x'), Many, One, Char('%')]]"
        );
        assert_eq!(parsed("a not like '%%'"), "[a not like [Many]]");
        assert_eq!(parsed("changed(status)"), "changed(status)");
        assert_eq!(parsed("CHANGED ( \"Status\" )"), "changed(Status)");
        assert_eq!(parsed("active"), "[active]");
        assert_eq!(parsed("true"), "[true]");
        assert_eq!(parsed("not new.active"), "(not [new.active])");
    }

    #[test]
    fn identifiers_fold_unless_quoted() {
        assert_eq!(parsed("NEW.Status = 'x'"), "[new.status = 'x']");
        assert_eq!(parsed("new.\"Status\" = 'x'"), "[new.Status = 'x']");
        assert_eq!(parsed("\"and\" = 1"), "[and = 1]");
        assert_eq!(parsed("\"a\"\"b\" = 1"), "[a\"b = 1]");
        // `new`, `old` and `changed` are column names when not followed by
        // `.` or `(`.
        assert_eq!(
            parsed("new = 1 and changed = 2"),
            "([new = 1] and [changed = 2])"
        );
        assert_eq!(parsed("_x$1 = 1"), "[_x$1 = 1]");
    }

    #[test]
    fn precedence_not_then_and_then_or() {
        assert_eq!(parsed("a or b and c"), "([a] or ([b] and [c]))");
        assert_eq!(parsed("a and b or c"), "(([a] and [b]) or [c])");
        assert_eq!(parsed("not a and b"), "((not [a]) and [b])");
        assert_eq!(parsed("not a or b"), "((not [a]) or [b])");
        assert_eq!(parsed("not not a"), "(not (not [a]))");
        assert_eq!(parsed("not a = 1"), "(not [a = 1])");
        assert_eq!(parsed("(a or b) and c"), "(([a] or [b]) and [c])");
        assert_eq!(parsed("a or b or c"), "([a] or [b] or [c])");
        assert_eq!(
            parsed("a and b and c or d"),
            "(([a] and [b] and [c]) or [d])"
        );
        assert_eq!(parsed("not (a or b)"), "(not ([a] or [b]))");
        assert_eq!(parsed("((a))"), "[a]");
        assert_eq!(
            parsed("new.status = 'paid' and (old.status is null or old.status <> 'paid')"),
            "([new.status = 'paid'] and ([old.status is null] or [old.status <> 'paid']))"
        );
    }

    fn error(source: &str) -> ParseError {
        match parse(source) {
            Ok(expr) => panic!("{source:?} parsed as {}", shape(&expr)),
            Err(error) => error,
        }
    }

    #[test]
    fn errors_give_the_column_and_what_was_expected() {
        for (source, column, expected) in [
            ("", 1, "a condition"),
            ("new.status = ", 14, "a column or a literal"),
            ("new.status = )", 14, "a column or a literal"),
            ("a = 1 b", 7, "`and`, `or`"),
            ("a = 1)", 6, "this `)` has no `(`"),
            ("(a = 1", 7, "`)`"),
            ("a = 'open", 5, "closing `'`"),
            ("\"open = 1", 1, "closing `\"`"),
            ("\"\" = 1", 1, "column name"),
            ("a in 1", 6, "`(`"),
            ("a in (1 2)", 9, "`,` or `)`"),
            ("a in (b)", 7, "a literal"),
            ("a in ()", 7, "a literal"),
            ("a like b", 8, "'pattern'"),
            ("a like 'x\\'", 8, "lone backslash"),
            ("a is 1", 6, "`null` or `not null`"),
            ("a is not 1", 10, "`null`"),
            ("a not = 1", 7, "`in` or `like`"),
            ("a = = 1", 5, "a column or a literal"),
            ("mid.a = 1", 4, "only `new.` and `old.`"),
            ("new. = 1", 6, "a column name after `new.`"),
            ("new.and = 1", 5, "keyword"),
            ("changed(new.a)", 12, "plain column"),
            ("changed(a", 10, "`)`"),
            ("a = 1e", 7, "exponent"),
            ("a = 12abc", 7, "end of the number"),
            ("a = - 1", 5, "a number after the sign"),
            ("a = 1 and", 10, "a condition"),
            ("a ~ 1", 3, "a column, a literal, an operator"),
            ("a = 1 and = 2", 11, "a condition"),
            ("a = 1 or or", 10, "a condition"),
            ("é = 'x' and ) ", 13, "a condition"),
        ] {
            let error = error(source);
            assert_eq!(error.location().column, column, "{source:?}: {error}");
            assert!(error.to_string().contains(expected), "{source:?}: {error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("at column {column} expected")),
                "{error}"
            );
        }
    }

    #[test]
    fn multi_line_errors_give_line_and_column() {
        let error = error("a = 1\n  and b =\n");
        assert_eq!((error.location().line, error.location().column), (3, 1));
        assert!(
            error.to_string().starts_with("at line 3, column 1"),
            "{error}"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(error(&deep).expected.contains("levels"));
        let nots = format!("{}a", "not ".repeat(10_000));
        assert!(error(&nots).expected.contains("levels"));
        let shallow = format!("{}a{}", "(".repeat(60), ")".repeat(60));
        assert_eq!(parsed(&shallow), "[a]");
        // Long chains are flat, not deep.
        let chain = vec!["a = 1"; 10_000].join(" and ");
        assert!(matches!(parse(&chain).unwrap(), Expr::And(parts) if parts.len() == 10_000));
    }
}
