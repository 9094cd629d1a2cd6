//! The names a configuration uses for tables: a table (`schema.table`, or
//! `table` in `public`) or a whole schema (`schema.*`), and how they are
//! quoted for SQL.

use std::fmt;

/// A table named by a rule: `schema.table` or `table` in `public`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn parse(text: &str) -> Result<TableName, &'static str> {
        match TableSelector::parse(text)? {
            TableSelector::Table(table) => Ok(table),
            TableSelector::Schema(_) => Err("names a whole schema, not one table"),
        }
    }

    /// The name quoted for SQL, e.g. `"public"."orders"`.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            quote_identifier(&self.schema),
            quote_identifier(&self.name)
        )
    }
}

/// One entry of a subscription's `tables`: a table, or every table of a
/// schema, those that exist and those created later (`schema.*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableSelector {
    Table(TableName),
    Schema(String),
}

impl TableSelector {
    /// `schema.table`, `table` (schema `public`) or `schema.*`.
    pub fn parse(text: &str) -> Result<TableSelector, &'static str> {
        const SHAPE: &str = "is not a table name of the form schema.table, table or schema.*";
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (schema, name),
            None => ("public", text),
        };
        if schema.is_empty() || name.is_empty() || name.contains('.') || schema.contains('*') {
            return Err(SHAPE);
        }
        // Control characters would forge log lines and are never meant.
        if text.chars().any(char::is_control) {
            return Err("contains a control character");
        }
        match name {
            "*" if text.contains('.') => Ok(TableSelector::Schema(schema.to_owned())),
            _ if name.contains('*') => Err(SHAPE),
            _ => Ok(TableSelector::Table(TableName {
                schema: schema.to_owned(),
                name: name.to_owned(),
            })),
        }
    }

    /// Whether the table `schema.name` is one this entry selects.
    pub fn selects(&self, schema: &str, name: &str) -> bool {
        match self {
            TableSelector::Table(table) => table.schema == schema && table.name == name,
            TableSelector::Schema(selected) => selected == schema,
        }
    }
}

impl fmt::Display for TableSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableSelector::Table(table) => table.fmt(f),
            TableSelector::Schema(schema) => write!(f, "{schema}.*"),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes an SQL identifier.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
