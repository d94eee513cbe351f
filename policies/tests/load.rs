//! Loading a policy directory: what counts as a policy file, I/O errors, all-or-nothing sets,
//! precedence between exact names and globs, and warnings.

mod common;

use std::fs;
use std::path::Path;

use cairn_policies::{load_dir, parse_set, parse_str, ErrorKind};

const OBJECTIVES: &str = "[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n";

fn policy(clusters: &str) -> String {
    format!("clusters = {clusters}\n{OBJECTIVES}")
}

#[test]
fn a_missing_directory_is_an_empty_set() {
    let dir = tempfile::tempdir().unwrap();
    let set = load_dir(&dir.path().join("absent"), &common::context()).unwrap();
    assert!(set.is_empty());
    assert_eq!(set.for_cluster("prod-eu"), None);
}

#[test]
fn a_directory_that_cannot_be_read_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies");
    fs::write(&file, "not a directory").unwrap();
    let e = load_dir(&file, &common::context()).unwrap_err();
    assert_eq!(e.len(), 1);
    let err = &e.errors[0];
    assert_eq!((err.kind, err.line, err.column), (ErrorKind::Io, 0, 0));
    assert_eq!(err.file, file);
    let printed = err.to_string();
    let prefix = format!("{}: cannot read the policy directory: ", file.display());
    assert!(printed.starts_with(&prefix), "{printed}");
}

#[test]
fn only_toml_files_count_and_an_unreadable_one_is_reported_with_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("a.toml"), policy("[\"prod-*\"]")).unwrap();
    fs::write(d.join("notes.txt"), "not a policy").unwrap();
    fs::write(d.join("b.toml.bak"), "not a policy either").unwrap();
    fs::create_dir(d.join("old.toml")).unwrap();
    fs::write(d.join("old.toml").join("x.toml"), "not searched").unwrap();
    let set = load_dir(d, &common::context()).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.policies[0].name, "a");
    assert_eq!(set.policies[0].file, d.join("a.toml"));

    std::os::unix::fs::symlink(d.join("gone.toml"), d.join("dangling.toml")).unwrap();
    fs::write(d.join("z.toml"), "clusters = [\"ledger\"]\n").unwrap();
    let e = load_dir(d, &common::context()).unwrap_err();
    let got: Vec<(ErrorKind, String)> = e.iter().map(|e| (e.kind, e.to_string())).collect();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0].0, ErrorKind::Io);
    let dangling = format!(
        "{}: cannot read the file: ",
        d.join("dangling.toml").display()
    );
    assert!(got[0].1.starts_with(&dangling), "{}", got[0].1);
    assert_eq!(
        got[1],
        (
            ErrorKind::MissingKey,
            format!(
                "{}:1:1: missing required table [objectives] (with `rpo` and `rto`)",
                d.join("z.toml").display()
            )
        )
    );
}

#[test]
fn an_exact_name_overrides_a_glob_without_conflict() {
    let a = policy("[\"prod-*\"]");
    let b = policy("[\"prod-eu\"]");
    let set = parse_set(
        [
            (Path::new("a.toml"), a.as_bytes()),
            (Path::new("b.toml"), b.as_bytes()),
        ],
        &common::context(),
    )
    .unwrap();
    let owner = |c: &str| set.for_cluster(c).map(|p| p.name.as_str());
    assert_eq!(owner("prod-eu"), Some("b"));
    assert_eq!(owner("prod-us"), Some("a"));
    assert_eq!(
        owner("prod-new"),
        Some("a"),
        "a glob covers clusters not known yet"
    );
    assert_eq!(owner("billing"), None);

    // Two globs over a known cluster conflict, unless a third policy names it exactly.
    let c = policy("[\"*-eu\"]");
    let files = |extra: &[(&'static str, &str)]| {
        let mut v: Vec<(&Path, Vec<u8>)> = vec![(Path::new("a.toml"), a.clone().into_bytes())];
        v.extend(
            extra
                .iter()
                .map(|(f, t)| (Path::new(*f), t.as_bytes().to_vec())),
        );
        v
    };
    let parse = |v: &[(&Path, Vec<u8>)]| {
        parse_set(
            v.iter().map(|(p, b)| (*p, b.as_slice())),
            &common::context(),
        )
    };
    let e = parse(&files(&[("c.toml", &c)])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "c.toml:1:13: `*-eu` and `prod-*` in a.toml:1:13 both claim cluster `prod-eu`: name it \
         exactly in one policy to choose"
    );
    assert!(parse(&files(&[("b.toml", &b), ("c.toml", &c)])).is_ok());
}

#[test]
fn warnings_do_not_refuse_a_policy() {
    let text = format!(
        "clusters = [\"biling\", \"staging-*\"]\n{OBJECTIVES}[retention]\ncooling_off = \"0s\"\n\
         [verification]\nchecks = [\"amcheck\"]\n[[verification.probes]]\nname = \"p\"\nsql = \"SELECT 1\"\n"
    );
    let (policy, warnings) = parse_str(Path::new("w.toml"), &text, &common::context()).unwrap();
    assert_eq!(policy.name, "w");
    let warnings: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "w.toml:1:13: warning: cluster `biling` is not known to the appliance (did you mean \
             `billing`?)",
            "w.toml:1:23: warning: `staging-*` matches no cluster the appliance knows",
            "w.toml:6:15: warning: `retention.cooling_off` is 0: destructive changes take effect \
             at once",
            "w.toml:8:10: warning: [[verification.probes]] are defined, but \
             `verification.checks` does not list `probes`: they will not run",
        ]
    );
    // A set carries the warnings of its files.
    let set = parse_set([(Path::new("w.toml"), text.as_bytes())], &common::context()).unwrap();
    assert_eq!(set.warnings.len(), 4);
}

#[test]
fn a_set_is_all_or_nothing_and_keeps_every_warning() {
    let good = policy("[\"biling\"]");
    let bad = policy("[\"ledger\"]").replace("15m", "15 minutes");
    let e = parse_set(
        [
            (Path::new("good.toml"), good.as_bytes()),
            (Path::new("bad.toml"), bad.as_bytes()),
        ],
        &common::context(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad.toml:4:7: `objectives.rto`: '15 minutes': unknown unit (use s, m, h, d or w)"
    );
    assert_eq!(e.warnings.len(), 1);
    assert!(e.warnings[0]
        .to_string()
        .starts_with("good.toml:1:13: warning: "));
}

#[test]
fn the_name_comes_from_the_file_unless_given_and_must_be_safe() {
    let text = policy("[\"ledger\"]");
    let ctx = common::context();
    let (p, _) = parse_str(Path::new("dir/ledger-eu.toml"), &text, &ctx).unwrap();
    assert_eq!(p.name, "ledger-eu");
    let named = format!("name = \"books\"\n{text}");
    let (p, _) = parse_str(Path::new("dir/ledger-eu.toml"), &named, &ctx).unwrap();
    assert_eq!(p.name, "books");
    let e = parse_str(Path::new("dir/my ledger.toml"), &text, &ctx).unwrap_err();
    assert_eq!(
        e.to_string(),
        "dir/my ledger.toml:1:1: the file name makes the policy name `my ledger`, but a name may \
         contain only letters, digits, `-`, `_` and `.`: rename the file or set `name`"
    );
}

#[test]
fn sha256_is_of_the_exact_bytes() {
    let ctx = common::context();
    let a = policy("[\"ledger\"]");
    let b = format!("{a}\n# a comment changes the hash, not the meaning\n");
    let (pa, _) = parse_str(Path::new("a.toml"), &a, &ctx).unwrap();
    let (pb, _) = parse_str(Path::new("a.toml"), &b, &ctx).unwrap();
    assert_eq!(pa.sha256.len(), 64);
    assert_ne!(pa.sha256, pb.sha256);
    assert_eq!(pa.objectives, pb.objectives);
    use sha2::{Digest, Sha256};
    assert_eq!(pa.sha256, hex::encode(Sha256::digest(a.as_bytes())));
}
