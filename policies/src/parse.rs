//! One policy file: from bytes to a checked [`Policy`], or to every problem it has.
//!
//! Invariants:
//! - Reading goes on after a problem: every section is read and every key of it judged, so one
//!   run shows all errors of the file. Only a TOML syntax error (or text that is not UTF-8)
//!   stops early, since then there is no tree to read.
//! - Top-level keys (`name`, `clusters`, `timezone`) and the `[objectives]` section are read
//!   here; the other sections in `sections`; semantic checks in `check`, which see only
//!   sections that read cleanly.
//! - A [`Policy`] is returned only when the file produced no error at all; warnings never
//!   refuse a file.
//! - `sha256` is over the exact bytes given, so it identifies the file as it was read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use crate::error::{sort_warnings, ErrorKind, Errors, PolicyError, Pos, Report, Warning};
use crate::model::{Context, Draft, Objectives, Policy};
use crate::read::{Fields, Reader};
use crate::select::NamePattern;
use crate::suggest::did_you_mean;
use crate::tree::{self, Node};
use crate::{check, sections};

const ROOT: &[&str] = &[
    "name",
    "clusters",
    "timezone",
    "objectives",
    "schedules",
    "retention",
    "regions",
    "encryption",
    "verification",
];
const OBJECTIVES: &[&str] = &["rpo", "rto"];

/// The sections and their keys, for "did you mean" on a key written at the top level.
const SECTIONS: &[(&str, &[&str])] = &[
    ("objectives", OBJECTIVES),
    ("schedules", sections::SCHEDULES),
    ("retention", sections::RETENTION),
    ("regions", sections::REGIONS),
    ("encryption", sections::ENCRYPTION),
    ("verification", sections::VERIFICATION),
];

/// Parses and checks one policy file's text. `file` names it in errors and in the policy.
pub fn parse_str(file: &Path, text: &str, ctx: &Context) -> Result<(Policy, Vec<Warning>), Errors> {
    parse_bytes(file, text.as_bytes(), ctx).into_result()
}

/// What reading one file gave.
pub(crate) struct Outcome {
    pub file: PathBuf,
    pub policy: Option<Policy>,
    /// The name and cluster patterns, when they read cleanly (even if other keys did not).
    pub name: Option<String>,
    pub clusters: Option<Vec<NamePattern>>,
    pub errors: Vec<PolicyError>,
    pub warnings: Vec<Warning>,
    /// Where each value was read (see `read`), for checks across files.
    pub marks: HashMap<String, Pos>,
}

impl Outcome {
    fn into_result(self) -> Result<(Policy, Vec<Warning>), Errors> {
        match self.policy {
            Some(p) if self.errors.is_empty() => {
                let mut warnings = self.warnings;
                sort_warnings(&mut warnings);
                Ok((p, warnings))
            }
            _ => Err(Errors::sorted(self.errors, self.warnings)),
        }
    }
}

pub(crate) fn parse_bytes(file: &Path, bytes: &[u8], ctx: &Context) -> Outcome {
    let sha256 = hex::encode(Sha256::digest(bytes));
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let lossy = String::from_utf8_lossy(bytes);
            let mut report = Report::new(file, &lossy);
            let at = report.pos(e.valid_up_to());
            let message = "the file is not UTF-8 text".to_string();
            report.error(ErrorKind::Syntax, at, message, None);
            return failed(report);
        }
    };
    let mut report = Report::new(file, text);
    let entries = match tree::parse(text) {
        Ok(entries) => entries,
        Err(e) => {
            let at = report.pos(e.span().map_or(0, |s| s.start));
            // One error is one line: the parser's multi-line message is joined.
            let detail: Vec<&str> = e.message().lines().map(str::trim).collect();
            let detail = detail
                .into_iter()
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>();
            let message = format!("invalid TOML: {}", detail.join(": "));
            report.error(ErrorKind::Syntax, at, message, None);
            return failed(report);
        }
    };
    let mut r = Reader::new(report, ctx);
    let root = r.root(&entries, ROOT, SECTIONS);
    let timezone = match root.get("timezone") {
        Some(node) => timezone(&mut r, "timezone", node),
        None => Some(Tz::UTC),
    };
    let draft = Draft {
        name: name(&mut r, &root, file),
        clusters: clusters(&mut r, &root),
        timezone,
        objectives: objectives(&mut r, &root),
        schedules: sections::schedules(&mut r, &root, timezone.unwrap_or(Tz::UTC)),
        retention: sections::retention(&mut r, &root),
        regions: sections::regions(&mut r, &root),
        encryption: sections::encryption(&mut r, &root),
        verification: sections::verification(&mut r, &root),
    };
    check::semantics(&mut r, &draft);
    let (report, marks) = r.into_parts();
    let (name, clusters) = (draft.name.clone(), draft.clusters.clone());
    let policy = match draft {
        Draft {
            name: Some(name),
            clusters: Some(clusters),
            timezone: Some(timezone),
            objectives: Some(objectives),
            schedules: Some(schedules),
            retention: Some(retention),
            regions: Some(regions),
            encryption: Some(encryption),
            verification: Some(verification),
        } if report.errors.is_empty() => Some(Policy {
            name,
            file: file.to_path_buf(),
            sha256,
            clusters,
            timezone,
            objectives,
            schedules,
            retention,
            regions,
            encryption,
            verification,
        }),
        _ => None,
    };
    Outcome {
        file: file.to_path_buf(),
        policy,
        name,
        clusters,
        errors: report.errors,
        warnings: report.warnings,
        marks,
    }
}

fn failed(report: Report) -> Outcome {
    Outcome {
        file: report.file.clone(),
        policy: None,
        name: None,
        clusters: None,
        errors: report.errors,
        warnings: report.warnings,
        marks: HashMap::new(),
    }
}

/// Letters, digits, `-`, `_` and `.`: a policy name is safe in paths, URLs and reports.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn name(r: &mut Reader, root: &Fields, file: &Path) -> Option<String> {
    if let Some(node) = root.get("name") {
        let name = r.string("name", node)?;
        if !valid_name(name) {
            let at = r.pos(&node.span);
            r.bad(
                at,
                format!(
                    "`name` may contain only letters, digits, `-`, `_` and `.`, found `{name}`"
                ),
            );
            return None;
        }
        return Some(name.to_string());
    }
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !valid_name(&stem) {
        r.bad(
            root.at,
            format!(
                "the file name makes the policy name `{stem}`, but a name may contain only \
                 letters, digits, `-`, `_` and `.`: rename the file or set `name`"
            ),
        );
        return None;
    }
    Some(stem)
}

fn clusters(r: &mut Reader, root: &Fields) -> Option<Vec<NamePattern>> {
    let Some(node) = root.get("clusters") else {
        r.missing(root, "clusters");
        return None;
    };
    let items = r.strings("clusters", node, Some("name at least one cluster or glob"))?;
    let mut patterns: Vec<NamePattern> = Vec::with_capacity(items.len());
    let mut clean = true;
    for (i, (text, at)) in items.into_iter().enumerate() {
        let pattern = NamePattern::parse(text);
        if patterns.contains(&pattern) {
            r.bad(at, format!("`clusters[{}]` repeats `{text}`", i + 1));
            clean = false;
            continue;
        }
        let known = &r.ctx.clusters;
        if !known.iter().any(|c| pattern.matches(c)) {
            match &pattern {
                NamePattern::Exact(name) => {
                    let hint = did_you_mean(name, known.iter().map(String::as_str));
                    let message = format!("cluster `{name}` is not known to the appliance");
                    r.report.warning(at, message, hint);
                }
                NamePattern::Glob(_) => {
                    let message = format!("`{text}` matches no cluster the appliance knows");
                    r.report.warning(at, message, None);
                }
            }
        }
        patterns.push(pattern);
    }
    clean.then_some(patterns)
}

pub(crate) fn timezone(r: &mut Reader, path: &str, node: &Node) -> Option<Tz> {
    let name = r.string(path, node)?;
    match name.parse::<Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            let at = r.pos(&node.span);
            let hint = did_you_mean(name, chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()));
            let message = format!("`{path}`: unknown time zone `{name}`");
            r.error_with(ErrorKind::BadValue, at, message, hint);
            None
        }
    }
}

fn objectives(r: &mut Reader, root: &Fields) -> Option<Objectives> {
    let Some(fields) = r.sub_table(root, "objectives", OBJECTIVES) else {
        let message = "missing required table [objectives] (with `rpo` and `rto`)".to_string();
        r.error(ErrorKind::MissingKey, root.at, message);
        return None;
    };
    let fields = fields?;
    let mut read = |key: &str| match fields.get(key) {
        Some(node) => r.duration(&fields.path_of(key), node, true),
        None => {
            r.missing(&fields, key);
            None
        }
    };
    let rpo = read("rpo");
    let rto = read("rto");
    Some(Objectives {
        rpo: rpo?,
        rto: rto?,
    })
}
