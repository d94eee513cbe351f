//! Reading typed values out of the spanned TOML tree, reporting every problem with its place.
//!
//! Invariants:
//! - A reader never stops at the first problem: each helper reports what is wrong with its own
//!   value and returns `None`, and the caller goes on with the next key. A section is built
//!   only if all of its values read cleanly, so later checks never see a half-read section.
//! - Positions: an unknown key is reported at the key; a wrong type or a bad value at the
//!   value (for a list, at the element at fault); a missing key at the key of the table that
//!   lacks it (the start of the element for a table in an array, 1:1 at the top level).
//! - Paths in messages are dotted from the top of the file (`regions.min_copies`), with a
//!   1-based index for array elements (`clusters[2]`, `retention.legal_holds[1].reason`).
//! - Every value that was read leaves a mark (its path and position), so checks that run
//!   later (semantics within a file, conflicts between files) can point at it.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use crate::error::{ErrorKind, Pos, Report};
use crate::model::Context;
use crate::suggest::did_you_mean;
use crate::tree::{Entry, Node, Value};

/// One file being read: its report, the context, and the marks left so far.
pub(crate) struct Reader<'c> {
    pub report: Report,
    pub ctx: &'c Context,
    marks: HashMap<String, Pos>,
}

/// The entries of one table, after its unknown keys have been reported.
pub(crate) struct Fields<'t> {
    /// Dotted path of the table; empty at the top level.
    pub path: String,
    /// Where a missing key of this table is reported.
    pub at: Pos,
    entries: &'t [Entry],
}

impl<'t> Fields<'t> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'t Node> {
        self.entry(key).map(|e| &e.node)
    }

    /// The entry of `key` (its own span and its value), if present.
    pub fn entry(&self, key: &str) -> Option<&'t Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// The dotted path of `key` in this table.
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

/// `[a.b]` for a table, `[[a.b]]` for a table in an array (whose path ends in `[N]`).
fn label(path: &str) -> String {
    match path.rsplit_once('[') {
        Some((base, _)) if path.ends_with(']') => format!("[[{base}]]"),
        _ => format!("[{path}]"),
    }
}

impl<'c> Reader<'c> {
    pub fn new(report: Report, ctx: &'c Context) -> Reader<'c> {
        Reader {
            report,
            ctx,
            marks: HashMap::new(),
        }
    }

    pub fn pos(&self, span: &Range<usize>) -> Pos {
        self.report.pos(span.start)
    }

    pub fn mark(&mut self, path: &str, at: Pos) {
        self.marks.insert(path.to_string(), at);
    }

    /// Where the value at `path` was read, if it was.
    pub fn mark_of(&self, path: &str) -> Option<Pos> {
        self.marks.get(path).copied()
    }

    pub fn into_parts(self) -> (Report, HashMap<String, Pos>) {
        (self.report, self.marks)
    }

    pub fn error(&mut self, kind: ErrorKind, at: Pos, message: String) {
        self.report.error(kind, at, message, None);
    }

    pub fn error_with(&mut self, kind: ErrorKind, at: Pos, message: String, hint: Option<String>) {
        self.report.error(kind, at, message, hint);
    }

    pub fn bad(&mut self, at: Pos, message: String) {
        self.report.error(ErrorKind::BadValue, at, message, None);
    }

    pub fn wrong_type(&mut self, path: &str, node: &Node, expected: &str) {
        let at = self.pos(&node.span);
        let found = node.value.type_name();
        self.error(
            ErrorKind::WrongType,
            at,
            format!("`{path}` must be {expected}, found {found}"),
        );
    }

    /// The top-level table; unknown keys are reported (with a hint at the section a known
    /// key belongs in, when one was written at the top level by mistake).
    pub fn root<'t>(
        &mut self,
        entries: &'t [Entry],
        known: &[&str],
        sections: &[(&str, &[&str])],
    ) -> Fields<'t> {
        for e in entries {
            if known.contains(&e.key.as_str()) {
                continue;
            }
            let hint = did_you_mean(&e.key, known.iter().copied()).or_else(|| {
                sections
                    .iter()
                    .find(|(_, keys)| keys.contains(&e.key.as_str()))
                    .map(|(section, _)| format!("{section}.{}", e.key))
            });
            let at = self.pos(&e.key_span);
            let message = format!("unknown top-level key `{}`", e.key);
            self.error_with(ErrorKind::UnknownKey, at, message, hint);
        }
        Fields {
            path: String::new(),
            at: Pos { line: 1, column: 1 },
            entries,
        }
    }

    /// The table at `path` (whose key, if it has one, is at `key_at`); unknown keys are
    /// reported with a did-you-mean among `known`.
    pub fn table<'t>(
        &mut self,
        path: &str,
        key_at: Option<Pos>,
        node: &'t Node,
        known: &[&str],
    ) -> Option<Fields<'t>> {
        let Value::Table(entries) = &node.value else {
            self.wrong_type(path, node, "a table");
            return None;
        };
        for e in entries {
            if known.contains(&e.key.as_str()) {
                continue;
            }
            let hint = did_you_mean(&e.key, known.iter().copied());
            let at = self.pos(&e.key_span);
            let message = format!("unknown key `{}` in {}", e.key, label(path));
            self.error_with(ErrorKind::UnknownKey, at, message, hint);
        }
        let at = key_at.unwrap_or_else(|| self.pos(&node.span));
        Some(Fields {
            path: path.to_string(),
            at,
            entries,
        })
    }

    /// The sub-table `key` of `parent`, if present.
    pub fn sub_table<'t>(
        &mut self,
        parent: &Fields<'t>,
        key: &str,
        known: &[&str],
    ) -> Option<Option<Fields<'t>>> {
        let entry = parent.entry(key)?;
        let at = self.pos(&entry.key_span);
        let path = parent.path_of(key);
        self.mark(&path, at);
        Some(self.table(&path, Some(at), &entry.node, known))
    }

    pub fn missing(&mut self, fields: &Fields, key: &str) {
        let message = format!("missing required key `{}`", fields.path_of(key));
        self.error(ErrorKind::MissingKey, fields.at, message);
    }

    /// A non-empty string.
    pub fn string<'t>(&mut self, path: &str, node: &'t Node) -> Option<&'t str> {
        let Value::String(s) = &node.value else {
            self.wrong_type(path, node, "a string");
            return None;
        };
        let at = self.pos(&node.span);
        self.mark(path, at);
        if s.trim().is_empty() {
            self.bad(at, format!("`{path}` is an empty string"));
            return None;
        }
        Some(s)
    }

    /// A duration string (`30s`, `15m`, `7d`), read by `cairn_units::parse_duration`; with
    /// `positive`, zero is refused.
    pub fn duration(&mut self, path: &str, node: &Node, positive: bool) -> Option<Duration> {
        let Value::String(s) = &node.value else {
            self.wrong_type(path, node, "a duration string such as \"30s\"");
            return None;
        };
        let at = self.pos(&node.span);
        self.mark(path, at);
        self.parse_duration(path, s, at, positive)
    }

    /// The text of a duration, reported at `at` under `path` if it is bad.
    pub fn parse_duration(
        &mut self,
        path: &str,
        text: &str,
        at: Pos,
        positive: bool,
    ) -> Option<Duration> {
        match cairn_units::parse_duration(text) {
            Ok(d) if positive && d.is_zero() => {
                self.bad(at, format!("`{path}` must be greater than 0"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.bad(at, format!("`{path}`: {e}"));
                None
            }
        }
    }

    /// An integer in `lo..=hi`.
    pub fn integer(&mut self, path: &str, node: &Node, lo: i64, hi: i64) -> Option<i64> {
        let Value::Integer(n) = node.value else {
            self.wrong_type(path, node, "an integer");
            return None;
        };
        let at = self.pos(&node.span);
        self.mark(path, at);
        if n < lo || n > hi {
            self.bad(
                at,
                format!("`{path}` must be between {lo} and {hi}, found {n}"),
            );
            return None;
        }
        Some(n)
    }

    /// An integer in `lo..=hi` as a `u32`.
    pub fn count(&mut self, path: &str, node: &Node, lo: u32, hi: u32) -> Option<u32> {
        let n = self.integer(path, node, i64::from(lo), i64::from(hi))?;
        u32::try_from(n).ok()
    }

    /// The elements of an array; with `non_empty`, an empty array is refused with `hint`.
    pub fn array<'t>(
        &mut self,
        path: &str,
        node: &'t Node,
        expected: &str,
        non_empty: Option<&str>,
    ) -> Option<&'t [Node]> {
        let Value::Array(items) = &node.value else {
            self.wrong_type(path, node, expected);
            return None;
        };
        let at = self.pos(&node.span);
        self.mark(path, at);
        if let (Some(hint), true) = (non_empty, items.is_empty()) {
            self.bad(at, format!("`{path}` is empty: {hint}"));
            return None;
        }
        Some(items)
    }

    /// An array of non-empty strings, each with its position; `None` if any element is bad.
    pub fn strings<'t>(
        &mut self,
        path: &str,
        node: &'t Node,
        non_empty: Option<&str>,
    ) -> Option<Vec<(&'t str, Pos)>> {
        let items = self.array(path, node, "an array of strings", non_empty)?;
        let mut out = Vec::with_capacity(items.len());
        let mut clean = true;
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{}]", i + 1);
            match self.string(&item_path, item) {
                Some(s) => out.push((s, self.pos(&item.span))),
                None => clean = false,
            }
        }
        clean.then_some(out)
    }
}

/// The text of a time: a TOML datetime or a string (`None` for other types).
pub(crate) fn time_text(node: &Node) -> Option<&str> {
    match &node.value {
        Value::String(s) | Value::Datetime(s) => Some(s),
        _ => None,
    }
}

/// A time read by `cairn_units::parse_time` (RFC 3339, or PostgreSQL's format; no zone means
/// UTC) as a UTC time.
pub(crate) fn utc_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let us = cairn_units::parse_time(text).ok()?;
    chrono::DateTime::from_timestamp_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_say_table_or_array_of_tables() {
        assert_eq!(label("objectives"), "[objectives]");
        assert_eq!(label("schedules.image"), "[schedules.image]");
        assert_eq!(label("verification.probes[2]"), "[[verification.probes]]");
    }
}
