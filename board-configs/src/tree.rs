//! A TOML document as a tree in which every key and value remembers its byte span.
//!
//! `toml_edit` parses the document; an [`ImDocument`] keeps the span of every key and value it
//! parsed, through its public `span()` accessors. This module copies what the schema needs into
//! plain owned types, keeping a span wherever the parser has one. Some keys and values have
//! none (implicit tables such as `a` in `[a.b]`, tables made by dotted keys), so a span is
//! optional and `read` falls back to an enclosing one.

use std::ops::Range;
use toml_edit::{ImDocument, Item, Key, Table, TomlError, Value};

/// A value and where it is in the source, when the parser knows.
#[derive(Debug)]
pub(crate) struct Node {
    pub span: Option<Range<usize>>,
    pub kind: Kind,
}

/// The shape of a value; the schema has no use for floats, booleans or datetimes beyond naming
/// them in an error.
#[derive(Debug)]
pub(crate) enum Kind {
    Str(String),
    Int(i64),
    Float,
    Bool,
    Datetime,
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

/// One `key = value` of a table, in file order.
#[derive(Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub key_span: Option<Range<usize>>,
    pub value: Node,
}

impl Kind {
    /// "a string", "an integer", ... for error messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float => "a float",
            Kind::Bool => "a boolean",
            Kind::Datetime => "a datetime",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

/// Parses a whole document; the root is always a table.
pub(crate) fn parse(source: &str) -> Result<Node, TomlError> {
    let doc = ImDocument::parse(source)?;
    Ok(item(doc.as_item()))
}

/// One entry of a table: its key's span comes from the `Key` the table stores for it.
fn entry(key: Option<&Key>, name: &str, value: Node) -> Entry {
    Entry {
        key: name.to_owned(),
        key_span: key.and_then(Key::span),
        value,
    }
}

fn item(item: &Item) -> Node {
    match item {
        // A parsed document never holds an empty item; treat one as an empty table.
        Item::None => Node {
            span: None,
            kind: Kind::Table(Vec::new()),
        },
        Item::Value(v) => value(v),
        Item::Table(t) => table(t),
        Item::ArrayOfTables(a) => Node {
            span: a.span(),
            kind: Kind::Array(a.iter().map(table).collect()),
        },
    }
}

/// A `[header]` table, an `[[array]]` element, or a table made by dotted keys or headers below
/// it (those have no span of their own).
fn table(t: &Table) -> Node {
    Node {
        span: t.span(),
        kind: Kind::Table(
            t.iter()
                .map(|(name, v)| entry(t.key(name), name, item(v)))
                .collect(),
        ),
    }
}

fn value(v: &Value) -> Node {
    let kind = match v {
        Value::String(s) => Kind::Str(s.value().clone()),
        Value::Integer(i) => Kind::Int(*i.value()),
        Value::Float(_) => Kind::Float,
        Value::Boolean(_) => Kind::Bool,
        Value::Datetime(_) => Kind::Datetime,
        Value::Array(a) => Kind::Array(a.iter().map(value).collect()),
        Value::InlineTable(t) => Kind::Table(
            t.iter()
                .map(|(name, v)| entry(t.key(name), name, value(v)))
                .collect(),
        ),
    };
    Node {
        span: v.span(),
        kind,
    }
}
