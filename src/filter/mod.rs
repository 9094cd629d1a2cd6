//! Subscription filters (docs/filters.md): a small SQL-like
//! condition over a change's new and old row, parsed once at start-up,
//! checked against the catalog by `catalog_check`, bound to column indexes
//! for each table shape, and evaluated for every change without allocating.
//!
//! Semantics, where SQL leaves a choice:
//! - `col` reads the new row, or the old row of a DELETE; the old row of an
//!   INSERT and the new row of a DELETE are all NULL.
//! - SQL three-valued logic: a change matches only when the filter is TRUE.
//!   A value the change did not carry (outside a key-only old row, unchanged
//!   TOAST) is unknown to every predicate, `is null` included.
//! - Numbers compare by exact decimal value (`12.50 = 12.5`), never through
//!   floating point; float columns compare by the shortest decimal text
//!   PostgreSQL prints for them. NaN and ±Infinity (JSON strings in the
//!   payload) rank -Infinity < numbers < Infinity < NaN, NaN = NaN, as
//!   PostgreSQL ranks them.
//! - Text compares by code point; `like` is case-sensitive with `%`, `_` and
//!   backslash escapes. Booleans compare with true/false (false < true).
//!   Other types (dates, timestamps, uuid, json, arrays, composites…) compare
//!   as the text of their JSON rendering: a timestamp as its ISO 8601 string,
//!   jsonb as its JSON text.
//! - `changed(col)`: true for INSERT, false for DELETE; for UPDATE,
//!   `IS DISTINCT FROM` between the old and the new value (numbers by value),
//!   unknown when the old value was not sent.
//!
//! It does not read the catalog (`catalog_check` does, and calls
//! [`Filter::check_types`]) nor decide which events a subscription takes
//! (`rules`): TRUNCATE bypasses filters there.

mod eval;
mod syntax;

use std::fmt;

use crate::event::{Change, TableInfo};
use eval::BoundColumn;
pub use eval::Truth;
pub use syntax::{ColumnRef, Location, ParseError, Side};
use syntax::{Expr, Literal, Operand};

/// A parsed filter, its columns named as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    source: String,
    expr: Expr<ColumnRef>,
}

/// A filter bound to one shape of a table: columns are indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundFilter {
    expr: Expr<BoundColumn>,
}

/// How a filter uses a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnUse {
    /// Its value (`new.col`, `old.col`, `col`).
    Value,
    /// `changed(col)`: both its old and new value for an UPDATE.
    Changed,
}

/// The kind of value a column holds, as far as comparisons go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueClass {
    /// int2/4/8, float4/8, numeric (a JSON number).
    Number,
    Bool,
    /// Anything rendered as a JSON string: text, varchar, dates, timestamps,
    /// uuid, enums…
    Text,
    /// json, jsonb, arrays, composites: rendered as JSON, compared as its
    /// text.
    Json,
}

impl ValueClass {
    fn describe(self) -> &'static str {
        match self {
            ValueClass::Number => "a number",
            ValueClass::Bool => "a boolean",
            ValueClass::Text => "text",
            ValueClass::Json => "JSON",
        }
    }
}

/// A filter compares values of kinds that do not compare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TypeError {
    /// Character offset (0-based) of the offending operand.
    pub position: usize,
    pub message: String,
}

impl Filter {
    /// Parses a filter.
    pub fn parse(source: &str) -> Result<Filter, ParseError> {
        Ok(Filter {
            source: source.to_owned(),
            expr: syntax::parse(source)?,
        })
    }

    /// The filter as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every column reference, in the order written.
    pub fn columns(&self) -> Vec<(&ColumnRef, ColumnUse)> {
        let mut columns = Vec::new();
        collect_columns(&self.expr, &mut columns);
        columns
    }

    /// Binds column names to `table`'s current shape; the first column the
    /// table does not have is the error.
    pub fn bind(&self, table: &TableInfo) -> Result<BoundFilter, &ColumnRef> {
        let index = |column: &ColumnRef| {
            table
                .columns
                .iter()
                .position(|info| info.name == column.name)
        };
        let mut missing = None;
        let expr = map(&self.expr, &mut |column: &ColumnRef| match index(column) {
            Some(index) => BoundColumn {
                side: column.side,
                index,
            },
            None => {
                missing.get_or_insert(column);
                BoundColumn {
                    side: column.side,
                    index: usize::MAX,
                }
            }
        });
        match missing {
            Some(column) => Err(column),
            None => Ok(BoundFilter { expr }),
        }
    }

    /// Checks that every comparison, `in`, `like` and bare condition
    /// compares values of one kind, given each column's kind and type name
    /// (`None` for a column the table does not have: not checked here).
    pub fn check_types(
        &self,
        column_type: &dyn Fn(&str) -> Option<(ValueClass, String)>,
    ) -> Result<(), TypeError> {
        let mut outcome = Ok(());
        visit(&self.expr, &mut |expr| {
            if outcome.is_ok() {
                outcome = check_one(expr, column_type);
            }
        });
        outcome
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl BoundFilter {
    /// The filter's truth value for `change`.
    pub fn eval(&self, change: &Change) -> Truth {
        eval::eval(&self.expr, change)
    }

    /// Whether `change` passes: the filter is TRUE for it.
    pub fn matches(&self, change: &Change) -> bool {
        self.eval(change) == Truth::True
    }
}

fn collect_columns<'a>(expr: &'a Expr<ColumnRef>, out: &mut Vec<(&'a ColumnRef, ColumnUse)>) {
    let operand = |operand: &'a Operand<ColumnRef>, out: &mut Vec<_>| {
        if let Operand::Column(column) = operand {
            out.push((column, ColumnUse::Value));
        }
    };
    match expr {
        Expr::And(parts) | Expr::Or(parts) => {
            for part in parts {
                collect_columns(part, out);
            }
        }
        Expr::Not(inner) => collect_columns(inner, out),
        Expr::Compare { left, right, .. } => {
            operand(left, out);
            operand(right, out);
        }
        Expr::In { operand: value, .. }
        | Expr::IsNull { operand: value, .. }
        | Expr::Like { operand: value, .. }
        | Expr::Truth(value) => operand(value, out),
        Expr::Changed(column) => out.push((column, ColumnUse::Changed)),
    }
}

/// Calls `f` on every node, parents first.
fn visit<C>(expr: &Expr<C>, f: &mut dyn FnMut(&Expr<C>)) {
    f(expr);
    match expr {
        Expr::And(parts) | Expr::Or(parts) => {
            for part in parts {
                visit(part, f);
            }
        }
        Expr::Not(inner) => visit(inner, f),
        _ => {}
    }
}

/// The same tree with every column replaced by `f(column)`.
fn map<'a, C, D>(expr: &'a Expr<C>, f: &mut dyn FnMut(&'a C) -> D) -> Expr<D> {
    let operand = |operand: &'a Operand<C>, f: &mut dyn FnMut(&'a C) -> D| match operand {
        Operand::Column(column) => Operand::Column(f(column)),
        Operand::Literal(literal) => Operand::Literal(literal.clone()),
    };
    match expr {
        Expr::And(parts) => Expr::And(parts.iter().map(|part| map(part, f)).collect()),
        Expr::Or(parts) => Expr::Or(parts.iter().map(|part| map(part, f)).collect()),
        Expr::Not(inner) => Expr::Not(Box::new(map(inner, f))),
        Expr::Compare { left, op, right } => Expr::Compare {
            left: operand(left, f),
            op: *op,
            right: operand(right, f),
        },
        Expr::In {
            operand: value,
            list,
            negated,
        } => Expr::In {
            operand: operand(value, f),
            list: list.clone(),
            negated: *negated,
        },
        Expr::IsNull {
            operand: value,
            negated,
        } => Expr::IsNull {
            operand: operand(value, f),
            negated: *negated,
        },
        Expr::Like {
            operand: value,
            pattern,
            negated,
        } => Expr::Like {
            operand: operand(value, f),
            pattern: pattern.clone(),
            negated: *negated,
        },
        Expr::Changed(column) => Expr::Changed(f(column)),
        Expr::Truth(value) => Expr::Truth(operand(value, f)),
    }
}

/// An operand's kind for type checking: `None` for NULL (fits anything) and
/// for columns the table does not have.
struct Typed {
    class: Option<ValueClass>,
    /// How to name it in a message.
    name: String,
    literal: bool,
    position: usize,
}

fn typed(
    operand: &Operand<ColumnRef>,
    column_type: &dyn Fn(&str) -> Option<(ValueClass, String)>,
) -> Typed {
    match operand {
        Operand::Column(column) => match column_type(&column.name) {
            Some((class, type_name)) => Typed {
                class: Some(class),
                name: format!("column {column} ({type_name})"),
                literal: false,
                position: column.position,
            },
            None => Typed {
                class: None,
                name: column.to_string(),
                literal: false,
                position: column.position,
            },
        },
        Operand::Literal(literal) => typed_literal(literal, 0),
    }
}

fn typed_literal(literal: &Literal, position: usize) -> Typed {
    Typed {
        class: match literal {
            Literal::Number(_) => Some(ValueClass::Number),
            Literal::String(_) => Some(ValueClass::Text),
            Literal::Bool(_) => Some(ValueClass::Bool),
            Literal::Null => None,
        },
        name: literal.to_string(),
        literal: true,
        position,
    }
}

/// Whether two operands compare; the message when they do not.
fn fits(left: &Typed, right: &Typed) -> Result<(), TypeError> {
    let (Some(mine), Some(theirs)) = (left.class, right.class) else {
        return Ok(());
    };
    // A string literal compares with JSON's text.
    let string_with_json = |a: &Typed, b: &Typed| {
        a.literal && a.class == Some(ValueClass::Text) && b.class == Some(ValueClass::Json)
    };
    if mine == theirs || string_with_json(left, right) || string_with_json(right, left) {
        return Ok(());
    }
    // Blame the literal when there is one: that is what to change.
    let (column, culprit) = if left.literal && !right.literal {
        (right, left)
    } else {
        (left, right)
    };
    let fix = match (column.class, culprit.literal, culprit.class) {
        (Some(ValueClass::Number), true, Some(ValueClass::Text)) => {
            "; write the number without quotes"
        }
        (Some(ValueClass::Text | ValueClass::Json), true, Some(ValueClass::Number)) => {
            "; quote the literal to compare text, e.g. '42'"
        }
        (Some(ValueClass::Bool), true, _) => "; compare it with true or false",
        _ => "; compare values of the same kind",
    };
    Err(TypeError {
        position: culprit.position,
        message: format!(
            "{} is {} but {} is {}{fix}",
            column.name,
            column.class.map_or("null", ValueClass::describe),
            culprit.name,
            culprit.class.map_or("null", ValueClass::describe),
        ),
    })
}

fn check_one(
    expr: &Expr<ColumnRef>,
    column_type: &dyn Fn(&str) -> Option<(ValueClass, String)>,
) -> Result<(), TypeError> {
    match expr {
        Expr::Compare { left, right, .. } => {
            let (mut left_typed, mut right_typed) =
                (typed(left, column_type), typed(right, column_type));
            // Literals carry no position of their own: use the other side's.
            if left_typed.literal {
                left_typed.position = right_typed.position;
            }
            if right_typed.literal {
                right_typed.position = left_typed.position;
            }
            fits(&left_typed, &right_typed)
        }
        Expr::In { operand, list, .. } => {
            let value = typed(operand, column_type);
            for item in list {
                fits(&value, &typed_literal(item, value.position))?;
            }
            Ok(())
        }
        Expr::Like { operand, .. } => {
            let value = typed(operand, column_type);
            match value.class {
                Some(ValueClass::Number | ValueClass::Bool) => Err(TypeError {
                    position: value.position,
                    message: format!(
                        "like needs text but {} is {}; use = or a comparison",
                        value.name,
                        value.class.map_or("null", ValueClass::describe)
                    ),
                }),
                _ => Ok(()),
            }
        }
        Expr::Truth(operand) => {
            let value = typed(operand, column_type);
            match value.class {
                Some(ValueClass::Bool) | None => Ok(()),
                Some(class) => Err(TypeError {
                    position: value.position,
                    message: format!(
                        "{} is {}, not a condition; compare it, e.g. `{} = …` or `{} is not null`",
                        value.name,
                        class.describe(),
                        operand_text(operand),
                        operand_text(operand),
                    ),
                }),
            }
        }
        Expr::And(_) | Expr::Or(_) | Expr::Not(_) | Expr::IsNull { .. } | Expr::Changed(_) => {
            Ok(())
        }
    }
}

fn operand_text(operand: &Operand<ColumnRef>) -> String {
    match operand {
        Operand::Column(column) => column.to_string(),
        Operand::Literal(literal) => literal.to_string(),
    }
}

/// The line of `text` holding character `position`, with a caret under it.
pub fn pointer(text: &str, position: usize) -> String {
    let location = Location::of(position, text);
    let line = text.lines().nth(location.line - 1).unwrap_or("");
    let indent: String = line
        .chars()
        .take(location.column - 1)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!("\n    {line}\n    {indent}^")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::fixtures::{self, row};
    use crate::event::{EventKind, Row};

    /// Columns: a, b (numbers), s, t (text), flag (bool).
    fn table() -> Arc<TableInfo> {
        fixtures::table(
            "t",
            &[("a", 23), ("b", 1700), ("s", 25), ("t", 25), ("flag", 16)],
            true,
        )
    }

    fn change(kind: EventKind, new: Option<Row>, old: Option<Row>) -> Change {
        fixtures::change(table(), kind, new, old)
    }

    fn insert(cells: &[Option<&str>]) -> Change {
        change(EventKind::Insert, Some(row(cells)), None)
    }

    fn eval(filter: &str, change: &Change) -> Truth {
        Filter::parse(filter)
            .unwrap_or_else(|error| panic!("{filter}: {error}"))
            .bind(&change.table)
            .unwrap_or_else(|column| panic!("{filter}: no column {column}"))
            .eval(change)
    }

    const T: Truth = Truth::True;
    const F: Truth = Truth::False;
    const U: Truth = Truth::Unknown;

    /// A row whose `flag` is true, false or null, to drive truth tables.
    fn with_flag(truth: Truth) -> Change {
        let flag = match truth {
            T => "true",
            F => "false",
            U => "null",
        };
        insert(&[
            Some("1"),
            Some("1"),
            Some("\"x\""),
            Some("\"y\""),
            Some(flag),
        ])
    }

    #[test]
    fn three_valued_truth_tables() {
        // Each side is driven by a condition with that truth value.
        let side = |truth: Truth| match truth {
            T => "1 = 1",
            F => "1 = 2",
            U => "1 = null",
        };
        let change = with_flag(T);
        for (left, right, and, or) in [
            (T, T, T, T),
            (T, F, F, T),
            (T, U, U, T),
            (F, T, F, T),
            (F, F, F, F),
            (F, U, F, U),
            (U, T, U, T),
            (U, F, F, U),
            (U, U, U, U),
        ] {
            let (l, r) = (side(left), side(right));
            assert_eq!(eval(&format!("{l} and {r}"), &change), and, "{l} and {r}");
            assert_eq!(eval(&format!("{l} or {r}"), &change), or, "{l} or {r}");
        }
        for (value, negated) in [(T, F), (F, T), (U, U)] {
            assert_eq!(eval(&format!("not ({})", side(value)), &change), negated);
            // A boolean column as the condition.
            assert_eq!(eval("flag", &with_flag(value)), value);
            assert_eq!(eval("not flag", &with_flag(value)), negated);
        }
    }

    #[test]
    fn only_true_matches() {
        let filter = Filter::parse("flag").unwrap().bind(&table()).unwrap();
        assert!(filter.matches(&with_flag(T)));
        assert!(!filter.matches(&with_flag(F)));
        assert!(!filter.matches(&with_flag(U)));
    }

    #[test]
    fn comparisons_with_null_are_unknown() {
        let change = insert(&[
            Some("1"),
            Some("null"),
            Some("null"),
            Some("\"y\""),
            Some("true"),
        ]);
        for filter in [
            "b = 1",
            "b <> 1",
            "b < 1",
            "s = 'x'",
            "s <> 'x'",
            "a = null",
            "null = null",
            "b in (1, 2)",
            "b not in (1, 2)",
            "a in (2, null)",
            "a not in (2, null)",
            "s like '%'",
            "s not like '%'",
        ] {
            assert_eq!(eval(filter, &change), U, "{filter}");
        }
        assert_eq!(eval("a in (1, null)", &change), T);
        assert_eq!(eval("a not in (1, null)", &change), F);
        assert_eq!(eval("b is null", &change), T);
        assert_eq!(eval("b is not null", &change), F);
        assert_eq!(eval("a is null", &change), F);
        assert_eq!(eval("null is null", &change), T);
        assert_eq!(eval("not b is null", &change), F);
    }

    #[test]
    fn numbers_compare_exactly() {
        let big = "1234567890123456789012345678901234567890";
        let cells = [
            Some("-7"),
            Some("12.50"),
            Some("\"x\""),
            Some("\"y\""),
            Some("true"),
        ];
        let change = insert(&cells);
        for (filter, expected) in [
            ("b = 12.5", T),
            ("b = 12.500", T),
            ("b = 1.25e1", T),
            ("b <> 12.5", F),
            ("b > 12.49999999999999999999999999", T),
            ("b < 12.50000000000000000000000001", T),
            ("a < 0", T),
            ("a = -7.0", T),
            ("a > -7.000000000000000000001", T),
            ("a in (1, -7)", T),
            ("a not in (1, 7)", T),
            ("b >= a", T),
            ("a != b", T),
        ] {
            assert_eq!(eval(filter, &change), expected, "{filter}");
        }
        let big_row = format!("{big}1");
        let change = insert(&[
            Some(&big_row),
            Some(big),
            Some("\"x\""),
            Some("\"y\""),
            Some("true"),
        ]);
        assert_eq!(eval(&format!("b = {big}"), &change), T);
        assert_eq!(eval(&format!("b < {big}0"), &change), T);
        assert_eq!(eval(&format!("a > {big}0"), &change), T);
        assert_eq!(
            eval(&format!("b = {big}.0000000000000000000000000001"), &change),
            F
        );
    }

    #[test]
    fn nan_and_infinity_against_numbers() {
        let change = insert(&[
            Some("1"),
            Some("\"NaN\""),
            Some("\"x\""),
            Some("\"y\""),
            Some("true"),
        ]);
        assert_eq!(eval("b > 1e300", &change), T);
        assert_eq!(eval("b = 1", &change), F);
        assert_eq!(eval("b in (1, 2)", &change), F);
        assert_eq!(eval("b = b", &change), T);
        let change = insert(&[
            Some("1"),
            Some("\"-Infinity\""),
            Some("\"x\""),
            Some("\"y\""),
            Some("true"),
        ]);
        assert_eq!(eval("b < -1e300", &change), T);
        assert_eq!(eval("b < a", &change), T);
    }

    #[test]
    fn text_compares_by_code_point_after_unescaping() {
        let change = insert(&[
            Some("1"),
            Some("1"),
            Some(r#""it's \"quoted\" \\ \u00e9""#),
            Some("\"Zebra\""),
            Some("true"),
        ]);
        for (filter, expected) in [
            (r#"s = 'it''s "quoted" \ é'"#, T),
            ("s like 'it''s%é'", T),
            ("s like '%\\\\%'", T),
            ("s like 'IT%'", F),
            ("t < 'a'", T),
            ("t > 'Z'", T),
            ("t = 'zebra'", F),
            ("t in ('Zebra', 'x')", T),
            ("t not like 'Z_bra'", F),
            ("s > t", T),
        ] {
            assert_eq!(eval(filter, &change), expected, "{filter}");
        }
    }

    #[test]
    fn sides_and_event_kinds() {
        let new = || {
            Some(row(&[
                Some("1"),
                Some("2"),
                Some("\"paid\""),
                Some("\"y\""),
                Some("true"),
            ]))
        };
        let old = || {
            Some(row(&[
                Some("1"),
                Some("2"),
                Some("\"pending\""),
                Some("\"y\""),
                Some("true"),
            ]))
        };
        let paid = "new.status = 'paid' and (old.status is null or old.status <> 'paid')"
            .replace("status", "s");
        // Insert: no old row, its columns are NULL.
        let inserted = change(EventKind::Insert, new(), None);
        assert_eq!(eval(&paid, &inserted), T);
        assert_eq!(eval("old.s is null", &inserted), T);
        assert_eq!(eval("s = 'paid'", &inserted), T);
        // Update that pays; update that was already paid.
        let update = change(EventKind::Update, new(), old());
        assert_eq!(eval(&paid, &update), T);
        assert_eq!(eval("s = 'paid' and old.s = 'pending'", &update), T);
        let again = change(EventKind::Update, new(), new());
        assert_eq!(eval(&paid, &again), F);
        // Delete: bare columns read the old row; new is NULL.
        let delete = change(EventKind::Delete, None, old());
        assert_eq!(eval("s = 'pending'", &delete), T);
        assert_eq!(eval("new.s is null", &delete), T);
        assert_eq!(eval(&paid, &delete), U);
        // An update without an old row: old values are unknown, not NULL.
        let update_no_old = change(EventKind::Update, new(), None);
        assert_eq!(eval("old.s is null", &update_no_old), U);
        assert_eq!(eval(&paid, &update_no_old), U);
        // A key-only old row: the key is known, the rest is not.
        let key_only = change(
            EventKind::Delete,
            None,
            Some(row(&[
                Some("1"),
                Some("-"),
                Some("-"),
                Some("-"),
                Some("-"),
            ])),
        );
        assert_eq!(eval("a = 1", &key_only), T);
        assert_eq!(eval("s is null", &key_only), U);
        assert_eq!(eval("s is not null", &key_only), U);
        // Unchanged TOAST in the new row: unknown.
        let toasted = change(
            EventKind::Update,
            Some(row(&[
                Some("1"),
                Some("2"),
                None,
                Some("\"y\""),
                Some("true"),
            ])),
            None,
        );
        assert_eq!(eval("s like '%'", &toasted), U);
        assert_eq!(eval("t = 'y'", &toasted), T);
    }

    #[test]
    fn changed_is_distinctness_of_old_and_new() {
        let cells = |b: &str, s: &str| {
            Some(row(&[
                Some("1"),
                Some(b),
                Some(s),
                Some("\"y\""),
                Some("true"),
            ]))
        };
        let update = change(
            EventKind::Update,
            cells("1.0", "\"a\""),
            cells("1.00", "null"),
        );
        assert_eq!(eval("changed(b)", &update), F);
        assert_eq!(eval("changed(s)", &update), T);
        assert_eq!(eval("changed(a)", &update), F);
        assert_eq!(eval("not changed(a) and changed(s)", &update), T);
        let update = change(EventKind::Update, cells("2", "null"), cells("1", "null"));
        assert_eq!(eval("changed(b)", &update), T);
        assert_eq!(eval("changed(s)", &update), F);
        let escaped = change(
            EventKind::Update,
            cells("1", r#""\u00e9""#),
            cells("1", "\"é\""),
        );
        assert_eq!(eval("changed(s)", &escaped), F);
        assert_eq!(
            eval(
                "changed(s)",
                &change(EventKind::Insert, cells("1", "null"), None)
            ),
            T
        );
        assert_eq!(
            eval(
                "changed(s)",
                &change(EventKind::Delete, None, cells("1", "null"))
            ),
            F
        );
        assert_eq!(
            eval(
                "changed(s)",
                &change(EventKind::Update, cells("1", "null"), None)
            ),
            U
        );
    }

    #[test]
    fn binding_names_the_first_missing_column() {
        let filter = Filter::parse("a = 1 and new.nope = 2 or changed(gone)").unwrap();
        let missing = filter.bind(&table()).unwrap_err();
        assert_eq!((missing.name.as_str(), missing.position), ("nope", 10));
        let filter = Filter::parse("\"A\" = 1").unwrap();
        assert_eq!(filter.bind(&table()).unwrap_err().name, "A");
        assert!(Filter::parse("A = 1").unwrap().bind(&table()).is_ok());
    }

    #[test]
    fn columns_lists_every_use() {
        let filter =
            Filter::parse("new.a = old.b and (s like 'x' or changed(t)) and not flag").unwrap();
        let columns: Vec<String> = filter
            .columns()
            .iter()
            .map(|(column, usage)| format!("{column}:{usage:?}"))
            .collect();
        assert_eq!(
            columns,
            [
                "new.a:Value",
                "old.b:Value",
                "s:Value",
                "t:Changed",
                "flag:Value"
            ]
        );
    }

    fn type_check(filter: &str) -> Result<(), TypeError> {
        let kinds = |name: &str| {
            Some(match name {
                "n" => (ValueClass::Number, "numeric".to_owned()),
                "s" => (ValueClass::Text, "text".to_owned()),
                "flag" => (ValueClass::Bool, "boolean".to_owned()),
                "doc" => (ValueClass::Json, "jsonb".to_owned()),
                _ => return None,
            })
        };
        Filter::parse(filter).unwrap().check_types(&kinds)
    }

    #[test]
    fn type_mismatches_are_found_and_explained() {
        for filter in [
            "n = 1",
            "n > -1.5e3",
            "s = 'x'",
            "'x' = s",
            "flag = true",
            "flag",
            "not flag",
            "n = null",
            "s in ('a', null)",
            "n in (1, 2)",
            "s like 'a%'",
            "doc = '{}'",
            "doc like '%a%'",
            "n = old.n",
            "s < new.s",
            "s is null",
            "n is not null",
            "changed(n)",
            "1 = 2",
            "true",
            "null",
            "unknown = 1",
        ] {
            assert_eq!(type_check(filter), Ok(()), "{filter}");
        }
        for (filter, position, needle) in [
            (
                "n = 'x'",
                0,
                "column n (numeric) is a number but 'x' is text; write the number without quotes",
            ),
            (
                "s = 5",
                0,
                "column s (text) is text but 5 is a number; quote the literal",
            ),
            ("x = 1 or s > 5", 9, "quote the literal"),
            ("5 = s", 4, "quote the literal"),
            ("n in (1, 'two')", 0, "'two' is text"),
            ("flag = 'yes'", 0, "true or false"),
            (
                "n like '1%'",
                0,
                "like needs text but column n (numeric) is a number",
            ),
            ("n", 0, "not a condition; compare it, e.g. `n = …`"),
            (
                "s = n",
                4,
                "column s (text) is text but column n (numeric) is a number",
            ),
            ("doc = s", 6, "compare values of the same kind"),
            ("doc = 1", 0, "quote the literal"),
            ("'a' = 1", 0, "'a' is text"),
        ] {
            let error = type_check(filter).unwrap_err();
            assert!(
                error.message.contains(needle),
                "{filter}: {}",
                error.message
            );
            assert_eq!(error.position, position, "{filter}: {}", error.message);
        }
    }
    #[test]
    fn pointer_puts_a_caret_under_the_failure() {
        assert_eq!(pointer("a = )", 4), "\n    a = )\n        ^");
        assert_eq!(pointer("a = 1\nand )", 10), "\n    and )\n        ^");
        assert_eq!(pointer("", 0), "\n    \n    ^");
    }
}
