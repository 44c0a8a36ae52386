//! A TOML document as a tree in which every key and value remembers its byte span.
//!
//! `toml::Spanned<T>` would do this, but it fails outright wherever the parser has no span to
//! give (keys of dotted tables, implicit tables), so a file that is valid TOML would be rejected
//! with a confusing message. These types ask for a span through the same private serde protocol
//! `toml::Spanned` uses and accept a value without one.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::ops::Range;

// The protocol between `serde_spanned` and `toml`'s deserializer (stable within toml 0.8): a
// struct with this name and these fields is answered with a map of start, end and value.
// `spans_are_found` in the tests fails if a toml upgrade changes it.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const START: &str = "$__serde_spanned_private_start";
const END: &str = "$__serde_spanned_private_end";
const VALUE: &str = "$__serde_spanned_private_value";
const FIELDS: &[&str] = &[START, END, VALUE];
// How toml hands a datetime to `deserialize_any`: a one-entry map.
const DATETIME: &str = "$__toml_private_datetime";

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
pub(crate) fn parse(source: &str) -> Result<Node, toml::de::Error> {
    toml::from_str(source)
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_struct(SPANNED, FIELDS, NodeVisitor)
    }
}

/// Deserializes the value inside a span wrapper; asking for a span again would recurse forever.
struct Bare;

impl<'de> DeserializeSeed<'de> for Bare {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

fn bare(kind: Kind) -> Node {
    Node { span: None, kind }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(bare(Kind::Str(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(bare(Kind::Str(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(bare(Kind::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(|v| bare(Kind::Int(v)))
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(bare(Kind::Float))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(bare(Kind::Bool))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(bare(Kind::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Key>()? {
            if entries.is_empty() && key.name == START {
                return spanned_value(map);
            }
            if entries.is_empty() && key.name == DATETIME {
                map.next_value::<de::IgnoredAny>()?;
                return Ok(bare(Kind::Datetime));
            }
            entries.push(Entry {
                key: key.name,
                key_span: key.span,
                value: map.next_value()?,
            });
        }
        Ok(bare(Kind::Table(entries)))
    }
}

/// The rest of a span wrapper whose start key was just read.
fn spanned_value<'de, A: MapAccess<'de>>(mut map: A) -> Result<Node, A::Error> {
    let start: usize = map.next_value()?;
    let mut end = start;
    let mut node = None;
    while let Some(key) = map.next_key::<Key>()? {
        match key.name.as_str() {
            END => end = map.next_value()?,
            VALUE => node = Some(map.next_value_seed(Bare)?),
            _ => map.next_value::<de::IgnoredAny>().map(drop)?,
        }
    }
    let mut node = node.ok_or_else(|| de::Error::missing_field(VALUE))?;
    node.span = Some(start..end.max(start));
    Ok(node)
}

/// A table key and its span, when the parser knows it.
struct Key {
    span: Option<Range<usize>>,
    name: String,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_struct(SPANNED, FIELDS, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key {
            span: None,
            name: v.to_owned(),
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let (mut start, mut end, mut name) = (0, 0, None);
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                START => start = map.next_value()?,
                END => end = map.next_value()?,
                _ => name = Some(map.next_value::<String>()?),
            }
        }
        Ok(Key {
            span: Some(start..end.max(start)),
            name: name.ok_or_else(|| de::Error::missing_field(VALUE))?,
        })
    }
}
