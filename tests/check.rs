//! `cairn check` is the oracle the crash and branching tests lean on: here it is shown to find
//! every kind of damage it claims to find, each named, with exit code 1, while the undamaged
//! copy of the same appliance passes.

mod common;

use std::path::Path;

use common::*;

fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Runs `check` (`--full` if asked) on `home`; returns (exit code, stdout).
fn check(env: &Env, home: &Path, full: bool) -> (Option<i32>, String) {
    let mut args = vec!["check"];
    if full {
        args.push("--full");
    }
    let out = env.command(&args).env("CAIRN_HOME", home).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

async fn sql(home: &Path, stmt: &str) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", home.join("catalog.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    // The damage a lost row does, not a well-formed deletion: rows that name it stay.
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query(stmt).execute(&mut c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn check_finds_every_kind_of_damage_it_claims_to_find() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute("CREATE TABLE t AS SELECT g, md5(g::text) v FROM generate_series(1, 20000) g")
        .await
        .unwrap();
    drop(c);
    env.ok(&["compute", "stop", "main"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g")
        .await
        .unwrap();
    drop(c);
    env.ok(&["compute", "stop", "main"]);
    // The pristine appliance passes, plain and full.
    assert_eq!(check(&env, &env.home, false).0, Some(0));
    assert_eq!(check(&env, &env.home, true).0, Some(0));
    let files = env.layer_files();
    let image = files.iter().find(|f| f.1 == "img").unwrap().clone();
    let wals: Vec<_> = files.iter().filter(|f| f.1 == "wal").cloned().collect();
    assert!(wals.len() >= 2, "two WAL layers at least: {files:?}");
    let rel = |p: &Path| p.strip_prefix(&env.home).unwrap().to_path_buf();

    // Each case damages its own copy of the home; `full` says whether only --full sees it.
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, bool, Damage, Vec<String>)> = vec![
        (
            "a flipped byte in a piece",
            true,
            {
                let r = rel(&image.2);
                Box::new(move |h: &Path| {
                    let p = h.join(&r);
                    let mut b = std::fs::read(&p).unwrap();
                    b[100] ^= 0x40;
                    std::fs::write(&p, b).unwrap();
                })
            },
            vec![image.0.clone()],
        ),
        (
            "a truncated layer",
            false,
            {
                let r = rel(&wals[0].2);
                Box::new(move |h: &Path| {
                    let p = h.join(&r);
                    let b = std::fs::read(&p).unwrap();
                    std::fs::write(&p, &b[..b.len() - 10]).unwrap();
                })
            },
            vec![wals[0].0.clone(), "trailer".into()],
        ),
        (
            "a missing layer file",
            false,
            {
                let r = rel(&wals[1].2);
                Box::new(move |h: &Path| std::fs::remove_file(h.join(&r)).unwrap())
            },
            vec![wals[1].0.clone()],
        ),
        (
            "a stray temporary file",
            false,
            {
                let r = rel(image.2.parent().unwrap()).join(".tmp-leftover");
                Box::new(move |h: &Path| std::fs::write(h.join(&r), b"partial").unwrap())
            },
            vec![".tmp-leftover".into(), "not in the catalog".into()],
        ),
        (
            "a layer renamed to another id",
            false,
            {
                let r = rel(&wals[0].2);
                Box::new(move |h: &Path| {
                    let p = h.join(&r);
                    let other = p.with_file_name(format!("{}.wal", "ab".repeat(32)));
                    std::fs::rename(&p, other).unwrap();
                })
            },
            vec![
                wals[0].0.clone(),
                "ab".repeat(32),
                "not in the catalog".into(),
            ],
        ),
        (
            "another layer's bytes under a layer's name",
            false,
            {
                let (a, b) = (rel(&wals[0].2), rel(&wals[1].2));
                Box::new(move |h: &Path| std::fs::copy(h.join(&b), h.join(&a)).map(|_| ()).unwrap())
            },
            vec![wals[0].0.clone(), "the catalog says".into()],
        ),
    ];
    for (i, (what, full_only, damage, named)) in cases.iter().enumerate() {
        let home = env.dir.path().join(format!("case-{i}"));
        copy_tree(&env.home, &home);
        damage(&home);
        if *full_only {
            assert_eq!(
                check(&env, &home, false).0,
                Some(0),
                "{what}: plain check reads no piece"
            );
        }
        let (code, out) = check(&env, &home, true);
        assert_eq!(code, Some(1), "{what}: check --full fails:\n{out}");
        for n in named {
            assert!(out.contains(n.as_str()), "{what}: names {n}:\n{out}");
        }
        assert!(out.contains("PROBLEM"), "{what}:\n{out}");
    }

    // Catalog damage: a WAL layer's row gone (a gap), a head beyond the stored WAL.
    let home = env.dir.path().join("case-gap");
    copy_tree(&env.home, &home);
    let mut chain: Vec<(String, String)> = env
        .layers()
        .iter()
        .filter(|l| l["kind"] == "wal")
        .map(|l| {
            (
                l["start"].as_str().unwrap().to_string(),
                l["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    chain.sort_by_key(|(start, _)| lsn(start));
    assert!(chain.len() >= 3, "a WAL layer with neighbours: {chain:?}");
    let middle = &chain[1].1;
    sql(&home, &format!("DELETE FROM layers WHERE id = '{middle}'")).await;
    let (code, out) = check(&env, &home, false);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("gap or overlap"), "{out}");
    assert!(
        out.contains(middle.as_str()),
        "the orphaned file is named:\n{out}"
    );
    let home = env.dir.path().join("case-head");
    copy_tree(&env.home, &home);
    sql(&home, "UPDATE timelines SET head = head + 8").await;
    let (code, out) = check(&env, &home, false);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("but its WAL ends at"), "{out}");
    // The original, untouched, still passes.
    assert_eq!(check(&env, &env.home, true).0, Some(0));
}
