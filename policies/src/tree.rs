//! A TOML document as a tree of spanned nodes, so every key and value keeps its byte range.
//!
//! Invariants:
//! - Every [`Node`] carries the byte range of its value in the source text and every [`Entry`]
//!   the byte range of its key, so every later error can name a line and column.
//! - Entries keep the order they had in the file; TOML itself refuses duplicate keys, so a
//!   table never holds one key twice.
//! - Nothing is interpreted here: strings stay strings and datetimes stay their TOML text;
//!   giving them meaning is `parse`'s job.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// One TOML value with the byte range it occupies in the file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub span: Range<usize>,
    pub value: Value,
}

/// A TOML value; tables keep their entries in file order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// A TOML datetime literal, as written (`2027-01-01T00:00:00Z`).
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

/// A key of a table, the byte range of the key itself, and its value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_span: Range<usize>,
    pub node: Node,
}

impl Value {
    /// The TOML type's name, as error messages say it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

/// Parses a whole document into its root table's entries.
pub(crate) fn parse(text: &str) -> Result<Vec<Entry>, toml::de::Error> {
    match toml::from_str::<Value>(text)? {
        Value::Table(entries) => Ok(entries),
        // The root of a TOML document is always a table.
        other => Ok(vec![Entry {
            key: String::new(),
            key_span: 0..0,
            node: Node {
                span: 0..text.len(),
                value: other,
            },
        }]),
    }
}

/// The key under which the `toml` crate hands a datetime to `deserialize_any`.
const DATETIME_KEY: &str = "$__toml_private_datetime";
/// The struct name and fields through which the `toml` crate hands out spans (the same
/// protocol [`toml::Spanned`] uses). A key asks for them itself because a datetime's private
/// key must also be accepted, and it has no span; `tree::tests` fails if the protocol changes.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_FIELDS: &[&str] = &[
    "$__serde_spanned_private_start",
    "$__serde_spanned_private_end",
    "$__serde_spanned_private_value",
];

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let Some(first) = map.next_key::<Key>()? else {
                    return Ok(Node::implicit(Value::Table(Vec::new())));
                };
                if first.name != SPANNED_FIELDS[0] {
                    // A table without a span of its own (the `a` of `[a.b]`): plain entries.
                    let value = read_table(first, &mut map)?;
                    return Ok(Node::implicit(value));
                }
                let start = map.next_value::<usize>()?;
                let mut end = start;
                let mut value = None;
                while let Some(field) = map.next_key::<Key>()? {
                    if field.name == SPANNED_FIELDS[1] {
                        end = map.next_value::<usize>()?;
                    } else if field.name == SPANNED_FIELDS[2] {
                        value = Some(map.next_value::<Value>()?);
                    } else {
                        return Err(de::Error::unknown_field(&field.name, SPANNED_FIELDS));
                    }
                }
                let value = value.ok_or_else(|| de::Error::missing_field(SPANNED_FIELDS[2]))?;
                Ok(Node {
                    span: start..end,
                    value,
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::implicit(Value::String(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::implicit(Value::Integer(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                Ok(Node::implicit(Value::Float(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::implicit(Value::Boolean(v)))
            }
        }
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, NodeVisitor)
    }
}

impl Node {
    /// A node the `toml` crate gave no span (an implicit table); its parent fills one in.
    fn implicit(value: Value) -> Node {
        Node { span: 0..0, value }
    }
}

/// The entries of a table whose first key has been read already.
fn read_table<'de, A: MapAccess<'de>>(first: Key, map: &mut A) -> Result<Value, A::Error> {
    if first.name == DATETIME_KEY {
        return Ok(Value::Datetime(map.next_value::<String>()?));
    }
    let mut entries = Vec::new();
    let mut key = Some(first);
    while let Some(k) = key {
        let mut node = map.next_value::<Node>()?;
        if node.span == (0..0) {
            node.span = k.span.clone();
        }
        entries.push(Entry {
            key: k.name,
            key_span: k.span,
            node,
        });
        key = map.next_key::<Key>()?;
    }
    Ok(Value::Table(entries))
}

struct Key {
    name: String,
    span: Range<usize>,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key {
                    name: v.to_string(),
                    span: 0..0,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
                let (mut start, mut end, mut name) = (None, None, None);
                while let Some(field) = map.next_key::<String>()? {
                    match field.as_str() {
                        f if f == SPANNED_FIELDS[0] => start = Some(map.next_value::<usize>()?),
                        f if f == SPANNED_FIELDS[1] => end = Some(map.next_value::<usize>()?),
                        f if f == SPANNED_FIELDS[2] => name = Some(map.next_value::<String>()?),
                        other => return Err(de::Error::unknown_field(other, SPANNED_FIELDS)),
                    }
                }
                match (start, end, name) {
                    (Some(start), Some(end), Some(name)) => Ok(Key {
                        name,
                        span: start..end,
                    }),
                    _ => Err(de::Error::custom("a key without its span")),
                }
            }
        }
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::String(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::String(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Integer(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Integer)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Boolean(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Node>()? {
                    items.push(item);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                match map.next_key::<Key>()? {
                    Some(first) => read_table(first, &mut map),
                    None => Ok(Value::Table(Vec::new())),
                }
            }
        }
        d.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(key text, value text)` of every entry, recursively, as the spans cut them out.
    fn cuts(text: &str, entries: &[Entry], out: &mut Vec<(String, String)>) {
        for e in entries {
            out.push((
                text[e.key_span.clone()].to_string(),
                text[e.node.span.clone()].to_string(),
            ));
            walk(text, &e.node, out);
        }
    }

    fn walk(text: &str, node: &Node, out: &mut Vec<(String, String)>) {
        match &node.value {
            Value::Table(entries) => cuts(text, entries, out),
            Value::Array(items) => items.iter().for_each(|n| walk(text, n, out)),
            _ => {}
        }
    }

    fn spans(text: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        cuts(text, &parse(text).unwrap(), &mut out);
        out
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn keys_and_values_keep_their_spans() {
        let text = "a = 1\nb = [\"x\", 2]\nt = 2026-01-01T00:00:00Z\n";
        assert_eq!(
            spans(text),
            pairs(&[
                ("a", "1"),
                ("b", "[\"x\", 2]"),
                ("t", "2026-01-01T00:00:00Z")
            ])
        );
        let entries = parse(text).unwrap();
        let Value::Array(items) = &entries[1].node.value else {
            panic!("not an array")
        };
        assert_eq!(&text[items[0].span.clone()], "\"x\"");
        assert_eq!(items[1].value, Value::Integer(2));
        assert_eq!(
            entries[2].node.value,
            Value::Datetime("2026-01-01T00:00:00Z".into())
        );
    }

    #[test]
    fn tables_of_every_form_have_spans() {
        assert_eq!(
            spans("[tab]\nk = 'v'\n"),
            pairs(&[("tab", "[tab]\nk = 'v'"), ("k", "'v'")])
        );
        assert_eq!(
            spans("[inl]\ny = {z = 1}\n"),
            pairs(&[("inl", "[inl]\ny = {z = 1}"), ("y", "{z = 1}"), ("z", "1")])
        );
        // A table with no span of its own (the `a` of `[a.b]`, a dotted key) gets its key's.
        assert_eq!(
            spans("[a.b]\nc=1\n"),
            pairs(&[("a", "a"), ("b", "[a.b]\nc=1"), ("c", "1")])
        );
        assert_eq!(
            spans("\"q k\".r = 3\n"),
            pairs(&[("\"q k\"", "\"q k\""), ("r", "3")])
        );
        let text = "[[arr]]\nq = 1\n[[arr]]\nq = 2\n";
        let entries = parse(text).unwrap();
        let Value::Array(items) = &entries[0].node.value else {
            panic!("not an array")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(&text[items[1].span.clone()], "[[arr]]\nq = 2");
    }

    #[test]
    fn entries_keep_file_order_and_errors_have_spans() {
        let keys: Vec<String> = parse("z = 1\na = 2\nm = 3\n")
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["z", "a", "m"]);
        let e = parse("a = 1\na = 2\n").unwrap_err();
        assert!(e.message().contains("duplicate key"), "{}", e.message());
        assert!(e.span().is_some());
    }
}
