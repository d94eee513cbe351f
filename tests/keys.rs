//! Keys end to end, on file regions: a wrong or missing identity names the keys that would
//! work; rotation and escrow rewrap keys without touching payloads; a shred leaves no key
//! material within reach and restores name it; key changes while `cairn up` ships take effect
//! without stalling any region.

mod common;

use common::protection::*;
use common::*;

/// Every file below `dir`, recursively.
fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(files_below(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// Files below `dirs` holding any of `needles`.
fn holders(dirs: &[&std::path::Path], needles: &[Vec<u8>]) -> Vec<String> {
    let mut out = Vec::new();
    for d in dirs {
        for f in files_below(d) {
            let Ok(b) = std::fs::read(&f) else { continue };
            if needles
                .iter()
                .any(|n| b.windows(n.len()).any(|w| w == n.as_slice()))
            {
                out.push(f.display().to_string());
            }
        }
    }
    out
}

fn lsn_value(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Waits until both regions can restore `main` up to at least `target`.
fn wait_shipped(env: &Env, target: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let list = env.json(&["backup", "list"]);
        let ok = ["region-a", "region-b"].iter().all(|r| {
            list[0]["regions"][r]["restorable_to"]
                .as_str()
                .is_some_and(|l| lsn_value(l) >= lsn_value(target))
        });
        if ok {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the regions did not reach {target}: {list}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_identity_names_the_keys_that_would_work() {
    let env = Env::new();
    two_regions(&env, "");
    backed_up_cluster(&env).await;
    env.stop_all();
    let stranger = env.dir.path().join("stranger.age");
    env.ok(&["key", "new-identity", "--out", stranger.to_str().unwrap()]);
    let own_id = env.json(&["key", "export-public"])["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.run(&[
        "regions",
        "check",
        "--full",
        "--region",
        "region-a",
        "--identity",
        stranger.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("cannot be opened with key"), "{text}");
    assert!(
        text.contains(&own_id),
        "names the key that can open it: {text}"
    );

    let dr = Env::new();
    dr.write_regions(&format!(
        "min_copies = 1\n[[region]]\nname = \"region-a\"\nurl = \"file://{}\"\n",
        env.dir.path().join("regions/region-a").display()
    ));
    let public_kit = env.dir.path().join("public.kit");
    env.ok(&[
        "key",
        "export-recovery-kit",
        "--without-identity",
        "--out",
        public_kit.to_str().unwrap(),
    ]);
    let err = dr.fail(&[
        "catalog",
        "rebuild",
        "--from-region",
        "region-a",
        "--recovery-kit",
        public_kit.to_str().unwrap(),
    ]);
    assert!(
        err.contains("--identity"),
        "a kit without identity needs one: {err}"
    );
    let err = dr.fail(&[
        "catalog",
        "rebuild",
        "--from-region",
        "region-a",
        "--recovery-kit",
        public_kit.to_str().unwrap(),
        "--identity",
        stranger.to_str().unwrap(),
    ]);
    assert!(
        err.contains("cannot be opened with key") && err.contains(&own_id),
        "{err}"
    );
    assert_eq!(
        dr.json(&["cluster", "list"]),
        serde_json::json!([]),
        "nothing half-rebuilt"
    );
    let err = dr.fail(&[
        "catalog",
        "rebuild",
        "--from-region",
        "region-a",
        "--recovery-kit",
        public_kit.to_str().unwrap(),
        "--identity",
        "/nonexistent/id.age",
    ]);
    assert!(err.contains("/nonexistent/id.age"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_and_escrow_rewrap_keys_without_touching_payloads() {
    let env = Env::new();
    two_regions(&env, "");
    backed_up_cluster(&env).await;
    env.stop_all();
    let before_a = payload_hashes(&env, "region-a");
    let before_b = payload_hashes(&env, "region-b");
    assert!(before_a.len() >= 3);
    let old_identity = env.dir.path().join("old-appliance.age");
    std::fs::copy(env.home.join("keys/appliance.age"), &old_identity).unwrap();

    let escrow = env.dir.path().join("escrow.age");
    let recipient = env.ok(&["key", "new-identity", "--out", escrow.to_str().unwrap()]);
    let out = env.ok(&["key", "add-recipient", recipient.trim(), "--label", "vault"]);
    assert!(out.contains("payload objects unchanged"), "{out}");
    let out = env.ok(&["key", "rotate"]);
    assert!(out.contains("rotated the appliance key"), "{out}");

    assert_eq!(
        payload_hashes(&env, "region-a"),
        before_a,
        "payloads byte for byte unchanged"
    );
    assert_eq!(payload_hashes(&env, "region-b"), before_b);
    let keyring = env.json(&["key", "list"]);
    assert_eq!(
        keyring["recipients"].as_array().unwrap().len(),
        2,
        "{keyring}"
    );
    // The new appliance key and the escrow key both open everything, in both regions.
    env.ok(&["regions", "check", "--full"]);
    env.ok(&[
        "regions",
        "check",
        "--full",
        "--identity",
        escrow.to_str().unwrap(),
    ]);
    // The old appliance key is no longer listed: it opens nothing any more.
    let out = env.run(&[
        "regions",
        "check",
        "--full",
        "--region",
        "region-b",
        "--identity",
        old_identity.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot be opened with key"));
    // Removing the escrow key: it stops opening anything too.
    env.ok(&["key", "remove-recipient", recipient.trim()]);
    let out = env.run(&[
        "regions",
        "check",
        "--full",
        "--region",
        "region-a",
        "--identity",
        escrow.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let own = env.json(&["key", "export-public"])["recipient"]
        .as_str()
        .unwrap()
        .to_string();
    let err = env.fail(&["key", "remove-recipient", &own]);
    assert!(err.contains("cannot be removed"), "{err}");
    assert_eq!(payload_hashes(&env, "region-a"), before_a);
    env.ok(&["regions", "check", "--full"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shred_leaves_no_key_material_within_reach_and_restores_name_it() {
    let env = Env::new();
    two_regions(&env, "");
    backed_up_cluster(&env).await;
    env.stop_all();
    env.ok(&["export", "shop", "--to-region", "region-a"]);
    let kit = env.recovery_kit();
    let identity = cairn_backup::keys::Identity::load(&kit).unwrap();
    let cid = env.json(&["cluster", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Every data key of the cluster, and a window of every wrapped key, raw and in hex.
    let mut needles: Vec<Vec<u8>> = Vec::new();
    let mut exports = 0;
    for r in ["region-a", "region-b"] {
        for k in env.region_objects(r) {
            if !k.starts_with(&format!("clusters/{cid}/keys/")) {
                continue;
            }
            exports += k.contains("/keys/export-") as usize;
            let b = std::fs::read(env.region_root(r).join(&k)).unwrap();
            let ko = cairn_backup::crypto::keyobj::KeyObject::decode(&b, &k).unwrap();
            let dek = ko.unwrap(&[&identity], &k).unwrap();
            let window = ko.wrapped[ko.wrapped.len() - 48..].to_vec();
            needles.push(dek.to_vec());
            needles.push(hex::encode(dek).into_bytes());
            needles.push(hex::encode(&window).into_bytes());
            needles.push(window);
        }
    }
    assert!(needles.len() >= 4 * 4 && exports == 1, "{needles:?}");
    let regions = env.dir.path().join("regions");
    let reach: [&std::path::Path; 2] = [&env.home, &regions];
    // The scan finds them before the shred (so it can fail).
    let before = holders(&reach, &needles);
    assert!(
        before.iter().any(|f| f.contains("catalog.db")),
        "{before:?}"
    );
    assert!(before.iter().any(|f| f.contains("/keys/")), "{before:?}");

    // Absurd graces are refused, not wrapped around into "now".
    for g in ["999999999d", "4000d"] {
        let err = env.fail(&["key", "shred", "shop", "--grace", g]);
        assert!(
            err.contains("100 years") || err.contains("3650d"),
            "{g}: {err}"
        );
    }
    // A cancelled shred does nothing, even after its due time.
    let out = env.ok(&["key", "shred", "shop", "--grace", "2s"]);
    assert!(out.contains("will be shredded"), "{out}");
    env.ok(&["key", "shred", "shop", "--cancel"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    env.ok(&["regions", "gc"]);
    assert_eq!(env.json(&["cluster", "list"])[0]["name"], "shop");
    for r in ["region-a", "region-b"] {
        assert!(
            env.region_objects(r)
                .iter()
                .any(|k| k.starts_with(&format!("clusters/{cid}/keys/"))),
            "a cancelled shred removed key objects from {r}"
        );
    }
    let err = env.fail(&["key", "shred", "shop", "--grace", "0s"]);
    assert!(err.contains("--yes"), "{err}");

    // The real one: after its grace, every copy within reach is gone.
    env.ok(&["key", "shred", "shop", "--grace", "2s"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = env.ok(&["regions", "gc"]);
    assert!(out.contains("shredded cluster 'shop'"), "{out}");
    assert_eq!(env.json(&["cluster", "list"]), serde_json::json!([]));
    let left = holders(&reach, &needles);
    assert!(
        left.is_empty(),
        "key material left after the shred: {left:?}"
    );

    // A restore from a region, with the kit that could open everything before, names the shred.
    let dr = Env::new();
    dr.write_regions(&format!(
        "min_copies = 1\n[[region]]\nname = \"region-a\"\nurl = \"file://{}\"\n",
        regions.join("region-a").display()
    ));
    let err = dr.fail(&[
        "restore",
        "shop",
        "--to-datadir",
        dr.dir.path().join("x").to_str().unwrap(),
        "--recovery-kit",
        kit.to_str().unwrap(),
    ]);
    assert!(err.contains("crypto-shredded"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_changes_while_up_ships_take_effect_without_stalling_any_region() {
    let env = Env::new();
    two_regions(&env, "");
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    let (mut up, port) = env.spawn_up(&["--sync-interval", "0.2", "--ship-interval", "0.2"]);
    let write = |k: i32| {
        format!(
            "CREATE TABLE IF NOT EXISTS t (k int, g int, h text);
             INSERT INTO t SELECT {k}, g, md5(g::text || '{k}') FROM generate_series(1, 3000) g"
        )
    };
    c.batch_execute(&write(1)).await.unwrap();
    wait_shipped(&env, &scalar(&c, "SELECT pg_current_wal_lsn()::text").await);

    // An escrow key added while the daemon ships: layers written afterwards are wrapped for it.
    let escrow = env.dir.path().join("escrow.age");
    let recipient = env.ok(&["key", "new-identity", "--out", escrow.to_str().unwrap()]);
    env.ok(&["key", "add-recipient", recipient.trim(), "--label", "vault"]);
    c.batch_execute(&write(2)).await.unwrap();
    wait_shipped(&env, &scalar(&c, "SELECT pg_current_wal_lsn()::text").await);

    // The appliance key rotated while the daemon ships: it reloads it and keeps going.
    let old = env.dir.path().join("old.age");
    std::fs::copy(env.home.join("keys/appliance.age"), &old).unwrap();
    env.ok(&["key", "rotate"]);
    c.batch_execute(&write(3)).await.unwrap();
    let after_rotation = scalar(&c, "SELECT pg_current_wal_lsn()::text").await;
    wait_shipped(&env, &after_rotation);
    c.batch_execute(&write(4)).await.unwrap();
    wait_shipped(&env, &scalar(&c, "SELECT pg_current_wal_lsn()::text").await);
    let health = api(port, "/api/health").expect("/api/health answers 200 with JSON");
    for r in health["regions"].as_array().unwrap() {
        assert!(r["last_error"].is_null(), "a region stalled: {health}");
        assert!(r["last_success_at_us"].is_i64(), "{health}");
    }
    drop(c);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    assert!(up.wait().unwrap().success());
    env.ok(&["backup", "now", "--no-image"]);
    // Everything opens with the new appliance key and with the escrow key; the old key no
    // longer opens everything.
    env.ok(&["regions", "check", "--full"]);
    env.ok(&[
        "regions",
        "check",
        "--full",
        "--identity",
        escrow.to_str().unwrap(),
    ]);
    let out = env.run(&[
        "regions",
        "check",
        "--full",
        "--identity",
        old.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
}
