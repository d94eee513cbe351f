//! A policy directory: every `*.toml` file in it, parsed, checked, and checked against the
//! others.
//!
//! Invariants:
//! - A directory that does not exist is an empty set (a fresh appliance has no policies); one
//!   that exists but cannot be listed, or a file that cannot be read, is an `Io` error. An
//!   unreadable file never hides the errors of the others.
//! - Files are read in file-name order (byte order), only regular files (symlinks followed)
//!   whose name ends in `.toml`; subdirectories are not searched. The set keeps that order.
//! - The set is all or nothing: one error in any file refuses the whole set, and the `Err`
//!   carries every error of every file and every warning.
//! - Two policies may not claim one cluster at the same precedence: two equal exact names, or
//!   two globs that are equal or both match a cluster the appliance knows (and that no policy
//!   names exactly). An exact name beats a
//!   glob, so naming a cluster in one policy while another covers it by glob is an override,
//!   not a conflict. The conflict is reported at the later file's pattern, naming the earlier
//!   file's line and column. Two policies may not share a name either.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{sort_warnings, ErrorKind, Errors, PolicyError, Pos, Warning};
use crate::model::{Context, PolicySet};
use crate::parse::{parse_bytes, Outcome};
use crate::select::NamePattern;

/// Loads and checks every policy file of `dir`.
pub fn load_dir(dir: &Path, ctx: &Context) -> Result<PolicySet, Errors> {
    let io_error = |file: &Path, message: String| PolicyError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        message,
        suggestion: None,
        kind: ErrorKind::Io,
    };
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PolicySet::default()),
        Err(e) => {
            let message = format!("cannot read the policy directory: {e}");
            return Err(Errors::sorted(vec![io_error(dir, message)], Vec::new()));
        }
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in listing {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let message = format!("cannot read the policy directory: {e}");
                return Err(Errors::sorted(vec![io_error(dir, message)], Vec::new()));
            }
        };
        let path = dir.join(entry.file_name());
        let is_toml = path.extension().is_some_and(|x| x == "toml");
        // `metadata` follows symlinks; a dangling one is reported when it is read.
        if is_toml && fs::metadata(&path).map_or(true, |m| m.is_file()) {
            paths.push(path);
        }
    }
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    let mut io_errors = Vec::new();
    for path in paths {
        match fs::read(&path) {
            Ok(bytes) => files.push((path, bytes)),
            Err(e) => io_errors.push(io_error(&path, format!("cannot read the file: {e}"))),
        }
    }
    let outcomes = files
        .iter()
        .map(|(path, bytes)| parse_bytes(path, bytes, ctx))
        .collect();
    finish(outcomes, io_errors, ctx)
}

/// Parses and checks a set of policy files given as (name, bytes), as [`load_dir`] does with
/// the files of a directory (the order given is the set's order).
pub fn parse_set<'a, I>(files: I, ctx: &Context) -> Result<PolicySet, Errors>
where
    I: IntoIterator<Item = (&'a Path, &'a [u8])>,
{
    let outcomes = files
        .into_iter()
        .map(|(path, bytes)| parse_bytes(path, bytes, ctx))
        .collect();
    finish(outcomes, Vec::new(), ctx)
}

fn finish(
    outcomes: Vec<Outcome>,
    mut errors: Vec<PolicyError>,
    ctx: &Context,
) -> Result<PolicySet, Errors> {
    errors.extend(conflicts(&outcomes, &contested(&outcomes, ctx)));
    let mut warnings: Vec<Warning> = Vec::new();
    let mut policies = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        errors.extend(o.errors);
        warnings.extend(o.warnings);
        policies.extend(o.policy);
    }
    if errors.is_empty() {
        sort_warnings(&mut warnings);
        Ok(PolicySet { policies, warnings })
    } else {
        Err(Errors::sorted(errors, warnings))
    }
}

/// The known clusters that only globs can claim: a cluster some policy names exactly goes to
/// that policy, however many globs match it.
fn contested(outcomes: &[Outcome], ctx: &Context) -> Vec<String> {
    let named = |c: &String| {
        outcomes
            .iter()
            .flat_map(|o| o.clusters.iter().flatten())
            .any(|p| matches!(p, NamePattern::Exact(e) if e == c))
    };
    ctx.clusters.iter().filter(|c| !named(c)).cloned().collect()
}

fn at(o: &Outcome, path: &str) -> Pos {
    o.marks
        .get(path)
        .copied()
        .unwrap_or(Pos { line: 1, column: 1 })
}

fn conflict(later: &Outcome, at: Pos, message: String) -> PolicyError {
    PolicyError {
        file: later.file.clone(),
        line: at.line,
        column: at.column,
        message,
        suggestion: None,
        kind: ErrorKind::Conflict,
    }
}

fn conflicts(outcomes: &[Outcome], contested: &[String]) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    let mut names: HashMap<&str, &Outcome> = HashMap::new();
    for (j, later) in outcomes.iter().enumerate() {
        if let Some(name) = later.name.as_deref() {
            if let Some(first) = names.get(name) {
                let message = format!(
                    "policy name `{name}` is already used by {}",
                    first.file.display()
                );
                errors.push(conflict(later, at(later, "name"), message));
            } else {
                names.insert(name, later);
            }
        }
        let Some(patterns) = &later.clusters else {
            continue;
        };
        for earlier in &outcomes[..j] {
            let Some(theirs) = &earlier.clusters else {
                continue;
            };
            for (k, pb) in patterns.iter().enumerate() {
                let Some((i, pa, cluster)) = clash(theirs, pb, contested) else {
                    continue;
                };
                let there = at(earlier, &format!("clusters[{}]", i + 1));
                let place = format!("{}:{}:{}", earlier.file.display(), there.line, there.column);
                let message = match cluster {
                    None => format!("`{pb}` is also claimed by {place}"),
                    Some(c) => format!(
                        "`{pb}` and `{pa}` in {place} both claim cluster `{c}`: name it exactly \
                         in one policy to choose"
                    ),
                };
                errors.push(conflict(
                    later,
                    at(later, &format!("clusters[{}]", k + 1)),
                    message,
                ));
            }
        }
    }
    errors
}

/// The first pattern of `theirs` that claims what `pb` claims at the same precedence, with
/// the known cluster both match (`None` when the patterns are equal).
fn clash<'p>(
    theirs: &'p [NamePattern],
    pb: &NamePattern,
    contested: &[String],
) -> Option<(usize, &'p NamePattern, Option<String>)> {
    theirs.iter().enumerate().find_map(|(i, pa)| {
        if pa == pb {
            return Some((i, pa, None));
        }
        let (NamePattern::Glob(_), NamePattern::Glob(_)) = (pa, pb) else {
            return None;
        };
        contested
            .iter()
            .find(|c| pa.matches(c) && pb.matches(c))
            .map(|c| (i, pa, Some(c.clone())))
    })
}
