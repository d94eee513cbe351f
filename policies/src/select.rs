//! Which clusters a policy covers and which regions hold its copies.
//!
//! Invariants:
//! - A name containing `*` or `?` is a glob, anything else an exact name; `*` matches any run
//!   of characters (also none), `?` exactly one character, every other character itself.
//!   There are no character classes and no escapes: `[` is an ordinary character.
//! - Matching is over whole names and never panics or backtracks exponentially: the matcher
//!   is iterative and remembers only the last `*` (linear space, O(pattern × name) time).
//! - A region selector is either a name pattern or `tag:KEY=VALUE`; a tag matches a region
//!   whose tag `KEY` has exactly the value `VALUE`.

use std::collections::BTreeMap;
use std::fmt;

/// A `*`/`?` glob over names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_matches(&self.0, name)
    }
}

/// Whether `name` matches the glob `pattern` as a whole.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // The last `*` seen and the name position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` swallow one more character and retry after it.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// An exact name or a glob, as written in `clusters` or `regions.use`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamePattern {
    Exact(String),
    Glob(Glob),
}

impl NamePattern {
    /// `*` or `?` anywhere makes a glob.
    pub fn parse(s: &str) -> NamePattern {
        if s.contains(['*', '?']) {
            NamePattern::Glob(Glob::new(s))
        } else {
            NamePattern::Exact(s.to_string())
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(e) => e == name,
            NamePattern::Glob(g) => g.matches(name),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            NamePattern::Exact(e) => e,
            NamePattern::Glob(g) => g.as_str(),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A region the appliance knows, with its tags (`zone = "eu"`, `tier = "hot"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    pub name: String,
    pub tags: BTreeMap<String, String>,
}

/// One entry of `regions.use`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegionSelector {
    Name(NamePattern),
    Tag { key: String, value: String },
}

impl RegionSelector {
    /// `tag:KEY=VALUE` or a region name (glob allowed).
    pub fn parse(s: &str) -> Result<RegionSelector, String> {
        let Some(tag) = s.strip_prefix("tag:") else {
            if s.is_empty() {
                return Err("a region selector is empty".into());
            }
            return Ok(RegionSelector::Name(NamePattern::parse(s)));
        };
        match tag.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok(RegionSelector::Tag {
                key: key.to_string(),
                value: value.to_string(),
            }),
            _ => Err(format!(
                "`{s}` is not a tag selector: write `tag:KEY=VALUE` (e.g. `tag:zone=eu`)"
            )),
        }
    }

    pub fn matches(&self, region: &RegionInfo) -> bool {
        match self {
            RegionSelector::Name(p) => p.matches(&region.name),
            RegionSelector::Tag { key, value } => region.tags.get(key) == Some(value),
        }
    }
}

impl fmt::Display for RegionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionSelector::Name(p) => write!(f, "{p}"),
            RegionSelector::Tag { key, value } => write!(f, "tag:{key}={value}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious recursive definition, exponential in the worst case: the reference.
    fn reference(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some('*'), _) => reference(&p[1..], n) || (!n.is_empty() && reference(p, &n[1..])),
            (Some(_), None) => false,
            (Some('?'), Some(_)) => reference(&p[1..], &n[1..]),
            (Some(a), Some(b)) => a == b && reference(&p[1..], &n[1..]),
        }
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_matches("analytics-*", "analytics-eu"));
        assert!(glob_matches("analytics-*", "analytics-"));
        assert!(!glob_matches("analytics-*", "analytics"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*-eu", "analytics-eu"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("*a*b*", "xxaxxbxx"));
        assert!(!glob_matches("*a*b", "xxaxxbxxc"));
        assert!(glob_matches("é?", "éü"));
        assert!(glob_matches("[x]", "[x]"), "no character classes");
        assert!(!glob_matches("", "a"));
    }

    #[test]
    fn region_selectors_parse_names_globs_and_tags() {
        assert_eq!(
            RegionSelector::parse("tag:zone=eu"),
            Ok(RegionSelector::Tag {
                key: "zone".into(),
                value: "eu".into()
            })
        );
        assert_eq!(
            RegionSelector::parse("region-*"),
            Ok(RegionSelector::Name(NamePattern::Glob(Glob::new(
                "region-*"
            ))))
        );
        assert!(RegionSelector::parse("tag:zone").is_err());
        assert!(RegionSelector::parse("tag:=eu").is_err());
        assert!(RegionSelector::parse("").is_err());
        let r = RegionInfo {
            name: "region-a".into(),
            tags: BTreeMap::from([("zone".into(), "eu".into())]),
        };
        assert!(RegionSelector::parse("tag:zone=eu").unwrap().matches(&r));
        assert!(!RegionSelector::parse("tag:zone=us").unwrap().matches(&r));
        assert!(RegionSelector::parse("region-?").unwrap().matches(&r));
        assert_eq!(
            RegionSelector::parse("tag:zone=eu").unwrap().to_string(),
            "tag:zone=eu"
        );
    }

    proptest! {
        #[test]
        fn iterative_matcher_agrees_with_the_recursive_reference(
            pattern in "[ab*?é]{0,8}",
            name in "[abcé]{0,10}",
        ) {
            let p: Vec<char> = pattern.chars().collect();
            let n: Vec<char> = name.chars().collect();
            prop_assert_eq!(glob_matches(&pattern, &name), reference(&p, &n));
        }
    }
}
