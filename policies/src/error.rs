//! What a refused policy looks like: one error per problem, each with file, line and column.
//!
//! Invariants:
//! - Every error names the file as it was given (the policy directory joined with the file
//!   name) and, except for I/O errors, the 1-based line and column (counted in characters) of
//!   the key or value at fault. I/O errors have line and column 0 and print without them.
//! - Display is `FILE:LINE:COLUMN: MESSAGE`, followed by `` (did you mean `X`?)`` when a
//!   suggestion exists; `Errors` prints one error per line, sorted by file, line and column.
//! - Warnings never refuse a policy set; they print as `FILE:LINE:COLUMN: warning: MESSAGE`.

use std::fmt;
use std::path::{Path, PathBuf};

/// What kind of problem an error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file is not valid TOML (or not UTF-8).
    Syntax,
    /// A key that this table does not have.
    UnknownKey,
    /// A value of the wrong TOML type (a string where an integer belongs, ...).
    WrongType,
    /// A required key or table is absent.
    MissingKey,
    /// A value of the right type that cannot be used: a bad duration, cron expression, time
    /// zone, age key, check name, restore point, an empty list or string, a number out of range.
    BadValue,
    /// A region name or tag that matches no region of the appliance.
    UnknownRegion,
    /// Two policies claim the same cluster.
    Conflict,
    /// A policy that parses but cannot keep its promises (RPO below what WAL shipping
    /// achieves, a PITR window shorter than the image interval, more copies than regions, ...).
    Semantic,
    /// A file or the directory could not be read.
    Io,
}

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    /// 1-based; 0 for I/O errors.
    pub line: usize,
    /// 1-based, in characters; 0 for I/O errors.
    pub column: usize,
    pub message: String,
    /// The closest valid key or name, when one is close enough to be a likely typo.
    pub suggestion: Option<String>,
    pub kind: ErrorKind,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_located(f, &self.file, self.line, self.column)?;
        write!(f, "{}", self.message)?;
        write_suggestion(f, self.suggestion.as_deref())
    }
}

impl std::error::Error for PolicyError {}

/// Something worth an operator's attention that does not make a policy invalid (a cluster
/// name the appliance does not know yet, probes that no check runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub suggestion: Option<String>,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_located(f, &self.file, self.line, self.column)?;
        write!(f, "warning: {}", self.message)?;
        write_suggestion(f, self.suggestion.as_deref())
    }
}

fn write_located(
    f: &mut fmt::Formatter<'_>,
    file: &Path,
    line: usize,
    column: usize,
) -> fmt::Result {
    if line == 0 {
        write!(f, "{}: ", file.display())
    } else {
        write!(f, "{}:{line}:{column}: ", file.display())
    }
}

fn write_suggestion(f: &mut fmt::Formatter<'_>, suggestion: Option<&str>) -> fmt::Result {
    match suggestion {
        Some(s) => write!(f, " (did you mean `{s}`?)"),
        None => Ok(()),
    }
}

/// Sorts warnings by file, line and column (stable), as errors are.
pub(crate) fn sort_warnings(warnings: &mut [Warning]) {
    warnings.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
}

/// Every error found in a policy directory (never only the first), plus the warnings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Errors {
    /// Sorted by file, line and column; never empty when returned as an `Err`.
    pub errors: Vec<PolicyError>,
    pub warnings: Vec<Warning>,
}

impl Errors {
    /// Errors and warnings sorted by file, line and column (stable: one position keeps the
    /// order in which its problems were found).
    pub(crate) fn sorted(mut errors: Vec<PolicyError>, mut warnings: Vec<Warning>) -> Errors {
        errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        sort_warnings(&mut warnings);
        Errors { errors, warnings }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.errors.iter()
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

/// A line and column in a file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One file's text and name, turning byte offsets into positions and collecting its errors.
pub(crate) struct Report {
    pub file: PathBuf,
    line_starts: Vec<usize>,
    text: String,
    pub errors: Vec<PolicyError>,
    pub warnings: Vec<Warning>,
}

impl Report {
    pub fn new(file: &Path, text: &str) -> Report {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Report {
            file: file.to_path_buf(),
            line_starts,
            text: text.to_string(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The position of a byte offset (clamped to the text; never inside a character).
    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(1, |prefix| prefix.chars().count() + 1);
        Pos { line, column }
    }

    pub fn error(&mut self, kind: ErrorKind, at: Pos, message: String, suggestion: Option<String>) {
        self.errors.push(PolicyError {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            message,
            suggestion,
            kind,
        });
    }

    pub fn warning(&mut self, at: Pos, message: String, suggestion: Option<String>) {
        self.warnings.push(Warning {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            message,
            suggestion,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let r = Report::new(Path::new("p.toml"), "a = 1\nbé = \"x\"\n");
        assert_eq!(r.pos(0), Pos { line: 1, column: 1 });
        assert_eq!(r.pos(4), Pos { line: 1, column: 5 });
        assert_eq!(r.pos(6), Pos { line: 2, column: 1 });
        // `é` is two bytes but one column: byte 9 is the space after `bé`.
        assert_eq!(r.pos(9), Pos { line: 2, column: 3 });
        assert_eq!(r.pos(1000), Pos { line: 3, column: 1 });
    }

    #[test]
    fn display_has_the_documented_shape() {
        let e = PolicyError {
            file: PathBuf::from("dir/shop.toml"),
            line: 3,
            column: 7,
            message: "unknown key `min_copy` in [regions]".into(),
            suggestion: Some("min_copies".into()),
            kind: ErrorKind::UnknownKey,
        };
        assert_eq!(
            e.to_string(),
            "dir/shop.toml:3:7: unknown key `min_copy` in [regions] (did you mean `min_copies`?)"
        );
        let io = PolicyError {
            line: 0,
            column: 0,
            suggestion: None,
            message: "cannot read: denied".into(),
            kind: ErrorKind::Io,
            ..e
        };
        assert_eq!(io.to_string(), "dir/shop.toml: cannot read: denied");
        let w = Warning {
            file: PathBuf::from("a.toml"),
            line: 1,
            column: 2,
            message: "m".into(),
            suggestion: None,
        };
        assert_eq!(w.to_string(), "a.toml:1:2: warning: m");
    }
}
