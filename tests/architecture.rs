//! The shape of the code, checked: crates depend only downwards, no file of a crate imports a
//! file that imports it back (directly or around a circle), and no source file outgrows the
//! budget of 800 lines (tests excluded).
//!
//! How imports are read: every `crate::a::b` path in a file's code (comments and its trailing
//! `#[cfg(test)] mod tests` block left out), including the items of `use crate::{a, b::c}`,
//! names the longest module prefix it has; that is an edge from the file's module to that
//! module. Files of tests (`tests.rs`, `*_tests.rs`, `tests/`) are not part of the graph.
//! Paths through `super::` (a submodule reaching its parent) are not edges: a parent and its
//! children are one room.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates in dependency order: a crate may depend only on crates of a lower rank.
const LAYERS: &[(&str, u32)] = &[
    ("cairn-units", 0),
    ("cairn-engine", 1),
    ("cairn-policies", 1),
    ("cairn-scheduler", 2),
    ("cairn-backup", 2),
    ("cairn-restore", 3),
    ("cairn-verifier", 4),
    ("cairn-appliance", 5),
    ("cairn", 6),
];

const MAX_LINES: usize = 800;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Workspace members' directories, from the root manifest.
fn members() -> Vec<PathBuf> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("members = [...] in Cargo.toml");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(|m| root().join(m))
        .collect()
}

fn package_name(manifest: &str) -> String {
    let pkg = manifest.split("[package]").nth(1).expect("[package]");
    pkg.lines()
        .find_map(|l| l.trim().strip_prefix("name = "))
        .expect("package name")
        .trim_matches('"')
        .to_string()
}

/// The `cairn-*` crates a manifest depends on (not dev-dependencies).
fn cairn_dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_deps = false;
    for l in manifest.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            in_deps = t == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = t.split_once(['=', '.']) {
                let name = name.trim();
                if name.starts_with("cairn-") {
                    out.push(name.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn crates_depend_only_downwards() {
    let rank: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    for dir in members() {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let name = package_name(&manifest);
        let own = *rank.get(name.as_str()).unwrap_or_else(|| {
            panic!("crate {name} has no place in LAYERS (tests/architecture.rs): add it")
        });
        for dep in cairn_dependencies(&manifest) {
            let r = rank.get(dep.as_str()).copied().unwrap_or(u32::MAX);
            assert!(
                r < own,
                "{name} (layer {own}) depends on {dep} (layer {r}): dependencies point down"
            );
        }
    }
}

/// Every `.rs` file of a crate's `src/` that is not a test file, by module path.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                if name != "tests" {
                    walk(&p, src, out);
                }
                continue;
            }
            let Some(stem) = name.strip_suffix(".rs") else {
                continue;
            };
            if stem == "tests" || stem.ends_with("_tests") {
                continue;
            }
            let rel = p.parent().unwrap().strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            if !matches!(stem, "lib" | "main" | "mod") {
                parts.push(stem.to_string());
            }
            out.insert(parts.join("::"), p);
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// A file's code: without its trailing test module and without comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string (a URL) is rare in code and never precedes `crate::`.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::` paths a piece of code names.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `cairn_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.push(path_prefix(item.trim()));
            }
        } else {
            out.push(path_prefix(rest));
        }
    }
    out
}

/// The leading `a::b::c` of a string.
fn path_prefix(s: &str) -> String {
    let mut end = 0;
    let b = s.as_bytes();
    while end < b.len() {
        let c = b[end];
        if c.is_ascii_alphanumeric() || c == b'_' {
            end += 1;
        } else if c == b':' && b.get(end + 1) == Some(&b':') {
            end += 2;
        } else {
            break;
        }
    }
    s[..end].trim_end_matches(':').to_string()
}

/// Module-to-module edges of one crate.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, path) in &mods {
        let text = std::fs::read_to_string(path).unwrap();
        let edges = graph.entry(m.clone()).or_default();
        if m.is_empty() {
            continue; // the crate root declares and re-exports every module
        }
        for p in crate_paths(&code(&text)) {
            let parts: Vec<&str> = p.split("::").collect();
            let target = (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find(|c| mods.contains_key(c));
            if let Some(t) = target {
                let own = t == *m || t.starts_with(&format!("{m}::"));
                if !own {
                    edges.insert(t);
                }
            }
        }
    }
    graph
}

/// Strongly connected components of more than one module (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_circle_finder_finds_a_circle_and_only_a_circle() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert!(circles(&g(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
    assert_eq!(
        circles(&g(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
    let text = "use crate::{a::B, c};\nlet x = crate::d::e::f(); // crate::g\n";
    assert_eq!(crate_paths(text), vec!["a::B", "c", "d::e::f", "g"]);
    assert_eq!(crate_paths(&code(text)), vec!["a::B", "c", "d::e::f"]);
    assert_eq!(
        crate_paths(&code(
            "x(); // crate::g\n#[cfg(test)]\nmod tests {\n crate::h\n}"
        )),
        Vec::<String>::new()
    );
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let mut found = Vec::new();
    let mut crates = 0;
    for dir in members() {
        let graph = import_graph(&dir.join("src"));
        assert!(!graph.is_empty(), "no modules read in {}", dir.display());
        crates += 1;
        for c in circles(&graph) {
            found.push(format!("{}: {}", dir.display(), c.join(" <-> ")));
        }
    }
    assert!(crates >= 6, "only {crates} crates read");
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn no_source_file_is_over_the_line_budget() {
    let mut over = Vec::new();
    for dir in members() {
        for path in modules(&dir.join("src")).values() {
            let text = std::fs::read_to_string(path).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests {") {
                Some(i) => &text[..i],
                None => &text,
            };
            let n = text.lines().count();
            if n > MAX_LINES {
                over.push(format!("{} ({n} lines)", path.display()));
            }
        }
    }
    assert!(
        over.is_empty(),
        "over {MAX_LINES} lines, split by concept: {over:?}"
    );
}
