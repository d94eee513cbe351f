//! The protection layer against a real S3-compatible server (Garage, started here on loopback):
//! multipart uploads of a layer larger than the part size (seen in the objects' ETags), a
//! shipment killed in the middle of one and then finished, restore (full and delta), export and
//! repair against S3, a catalog rebuilt from S3 alone, and region outages — a file region made unwritable and the S3 server killed mid-run — during which
//! `cairn up` keeps shipping to the others, reports the backup degraded with the reason, and
//! catches up by itself once the regions are back.

mod common;

use std::os::unix::process::ExitStatusExt;

use common::garage::Garage;
use common::*;
use serde_json::Value;

/// ~12 MiB of incompressible data: the image layer exceeds the 5 MiB part size.
const RANDOM_TABLE: &str =
    "CREATE TABLE r AS SELECT g, decode(string_agg(md5(random()::text || g), ''), 'hex') AS b
   FROM generate_series(1, 3000) g, generate_series(1, 250) x GROUP BY g";

#[tokio::test(flavor = "multi_thread")]
async fn s3_multipart_upload_and_restore_from_s3_alone() {
    let env = Env::new();
    let garage = Garage::start(&env.dir.path().join("garage"));
    env.write_regions(&format!(
        "min_copies = 2\npart_size = \"5MiB\"\n{}\n{}",
        env.file_region("local"),
        garage.region_toml("s3", "prod")
    ));
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute(RANDOM_TABLE).await.unwrap();
    let sum = table_checksum(&c, "r").await;
    drop(c);
    env.ok(&["backup", "now"]);
    let big = env
        .layers()
        .into_iter()
        .map(|l| l["file_size"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        big > 6 << 20,
        "a layer of {big} bytes needs several 5 MiB parts"
    );
    let list = env.json(&["backup", "list"]);
    assert_eq!(list[0]["status"], "ok");
    assert_eq!(list[0]["regions"]["s3"]["restorable_to"], list[0]["head"]);
    // Read every object back from S3 and decrypt it.
    env.ok(&["regions", "check", "--full", "--region", "s3"]);
    env.stop_all();

    // A new appliance with only the S3 region and the identity.
    let dr = Env::new();
    dr.write_regions(&format!(
        "min_copies = 1\n{}",
        garage.region_toml("s3", "prod")
    ));
    let kit = env.recovery_kit();
    dr.ok(&[
        "catalog",
        "rebuild",
        "--from-region",
        "s3",
        "--recovery-kit",
        kit.to_str().unwrap(),
    ]);
    let c = connect(&dr.start("main")).await;
    assert_eq!(table_checksum(&c, "r").await, sum);
    drop(c);
    dr.stop_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_multipart_upload_then_restore_export_and_repair_on_s3() {
    let env = Env::new();
    let garage = Garage::start(&env.dir.path().join("garage"));
    env.write_regions(&format!(
        "min_copies = 2\npart_size = \"5MiB\"\ndeletion_delay = \"0s\"\n{}\n{}",
        env.file_region("local"),
        garage.region_toml("s3", "prod")
    ));
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute(RANDOM_TABLE).await.unwrap();
    let sum = table_checksum(&c, "r").await;
    drop(c);
    env.ok(&["image", "create", "main"]);
    env.stop_all();
    let big = env
        .layers()
        .into_iter()
        .max_by_key(|l| l["file_size"].as_u64().unwrap())
        .unwrap();
    let big_id = big["id"].as_str().unwrap().to_string();
    assert!(big["file_size"].as_u64().unwrap() > 11 << 20, "{big}");

    // Killed after the first part of a multipart upload to S3 (the only region for this run,
    // so the kill cannot land in another region's upload).
    let both = std::fs::read_to_string(env.home.join("regions.toml")).unwrap();
    env.write_regions(&format!(
        "min_copies = 1\npart_size = \"5MiB\"\n{}",
        garage.region_toml("s3", "prod")
    ));
    let out = env
        .command(&["backup", "now", "--no-image"])
        .env("CAIRN_FAILPOINT", "ship-mid-upload")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the kill landed mid-upload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // S3 as anyone holding its credentials sees it, through cairn's own region client.
    let region =
        cairn_backup::region::Region::connect(&garage.region_config("s3", "prod")).unwrap();
    let key_of = |objects: &[(String, u64)], id: &str| {
        objects
            .iter()
            .find(|(k, _)| k.ends_with(&format!("layers/{id}")))
            .map(|(k, _)| k.clone())
    };
    // Whatever the kill interrupted is not an object, and every index names only what is there.
    let listed = region.list("clusters").await.unwrap();
    if let Some(k) = key_of(&listed, &big_id) {
        panic!("a half-uploaded object is visible: {k}");
    }
    env.ok(&["regions", "check"]);
    env.write_regions(&both);
    // The next shipment finishes the job, in several parts.
    env.ok(&["backup", "now", "--no-image"]);
    env.ok(&["regions", "check", "--full", "--region", "s3"]);
    let listed = region.list("clusters").await.unwrap();
    let key = key_of(&listed, &big_id).expect("the big layer is in S3");
    let etag = region.etag(&key).await.unwrap().expect("an ETag");
    let parts: u32 = etag
        .trim_matches('"')
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("{key}: ETag {etag} is not a multipart upload's"));
    assert!(parts >= 2, "{key}: {parts} part(s)");

    // Restore from S3 alone: full, then delta after a change.
    let target = env.dir.path().join("from-s3");
    let r = env.json(&[
        "restore",
        "shop",
        "--region",
        "s3",
        "--to-datadir",
        target.to_str().unwrap(),
    ]);
    assert_eq!(r["region"], "s3");
    assert!(r["substitutions"].as_array().unwrap().is_empty(), "{r}");
    let url = env.start("main");
    let login = login_of(&url);
    let c = connect(&url).await;
    c.batch_execute("UPDATE r SET b = '\\x00' WHERE g <= 10")
        .await
        .unwrap();
    let changed = table_checksum(&c, "r").await;
    drop(c);
    env.stop_all();
    env.ok(&["backup", "now", "--no-image"]);
    {
        let server = Plain::start(&target);
        let c = connect(&server.url_as(&login)).await;
        assert_eq!(table_checksum(&c, "r").await, sum);
    }
    let d = env.json(&[
        "restore",
        "shop",
        "--region",
        "s3",
        "--to-datadir",
        target.to_str().unwrap(),
        "--delta",
    ]);
    assert_eq!(d["region"], "s3");
    {
        let server = Plain::start(&target);
        let c = connect(&server.url_as(&login)).await;
        assert_eq!(table_checksum(&c, "r").await, changed);
    }

    // Export into S3, listed there, and one read back from S3 into a file that decrypts.
    let e = env.json(&["export", "shop", "--to-region", "s3"]);
    let id = e["manifest"]["id"].as_str().unwrap().to_string();
    let exports = env.json(&["export", "list"]);
    assert!(
        exports
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["manifest"]["id"] == id.as_str() && x["region"] == "s3"),
        "{exports}"
    );
    let file = env.dir.path().join("from-s3.export");
    env.ok(&[
        "export",
        "shop",
        "--from-regions",
        "--region",
        "s3",
        "--to",
        file.to_str().unwrap(),
    ]);
    let dump = env.dir.path().join("from-s3.dump");
    env.decrypt_export(&file, &dump);
    let out = std::process::Command::new(pg_bin().join("pg_restore"))
        .arg("-l")
        .arg(&dump)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("TABLE DATA public r"));

    // Repair: an object lost from S3 is found and put back from the other region.
    region.delete(&key).await.unwrap();
    let out = env.run(&["regions", "check", "--region", "s3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&big_id),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    env.ok(&["regions", "repair", "--region", "s3"]);
    env.ok(&["regions", "check", "--full", "--region", "s3"]);
    assert!(region.etag(&key).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn outages_degrade_the_backup_and_shipping_catches_up_by_itself() {
    let env = Env::new();
    let mut garage = Garage::start(&env.dir.path().join("garage"));
    env.write_regions(&format!(
        "min_copies = 2\n{}\n{}\n{}",
        env.file_region("a"),
        env.file_region("b"),
        garage.region_toml("s3", "prod")
    ));
    env.ok(&["cluster", "create", "shop"]);
    // The API's port is the one the daemon bound and logged (no port race).
    let (up, port) = env.spawn_up(&["--sync-interval", "0.5", "--ship-interval", "0.5"]);
    let mut up = KillOnDrop(up);
    wait_for("the API", 60, || api(port, "/api/health"));
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t (i int)").await.unwrap();
    wait_for("first shipment everywhere", 60, || {
        let b = api(port, "/api/backups")?;
        (b[0]["status"] == "ok" && b[0]["regions"]["s3"]["restorable_to"].is_string()).then_some(())
    });

    // Outage: region b becomes unwritable (its directory turns into a file) and S3 dies.
    let b_dir = env.dir.path().join("regions/b");
    let b_moved = env.dir.path().join("regions/b.away");
    std::fs::rename(&b_dir, &b_moved).unwrap();
    std::fs::write(&b_dir, b"not a directory").unwrap();
    garage.stop();
    c.batch_execute("INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    let during = scalar(&c, "SELECT pg_current_wal_lsn()::text").await;

    // Region a keeps receiving; the backup is reported degraded, with the reasons.
    let health = wait_for("degraded health", 90, || {
        let h = api(port, "/api/health")?;
        let regions = h["regions"].as_array()?.clone();
        let failing: Vec<&Value> = regions
            .iter()
            .filter(|r| r["last_error"].is_string())
            .collect();
        (h["status"] == "degraded" && failing.len() == 2).then_some(h)
    });
    let text = health.to_string();
    assert!(
        text.contains("region 'b'") || text.contains("\"region\":\"b\""),
        "{text}"
    );
    let lsn = |s: &str| {
        let (hi, lo) = s.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    // The WAL written during the outage reaches region a: the layer that holds `during` is
    // stored there while b and s3 are down ...
    let layer = wait_for("a WAL layer holding the outage's writes", 90, || {
        env.layers()
            .into_iter()
            .find(|l| {
                l["kind"] == "wal" && l["end"].as_str().is_some_and(|e| lsn(e) >= lsn(&during))
            })
            .map(|l| l["id"].as_str().unwrap().to_string())
    });
    wait_for("region a to store it", 90, || {
        env.region_objects("a")
            .iter()
            .any(|k| k.ends_with(&format!("layers/{layer}")))
            .then_some(())
    });
    assert!(
        !env.region_objects("b")
            .iter()
            .any(|k| k.ends_with(&format!("layers/{layer}"))),
        "region b is down"
    );
    // ... and from region a alone the outage's writes are restorable, while b and s3 stay
    // behind and the backup as a whole (min_copies = 2) is degraded.
    let b = wait_for("region a restorable past the outage's writes", 90, || {
        let b = api(port, "/api/backups")?;
        let a = b[0]["regions"]["a"]["restorable_to"].as_str()?.to_string();
        (lsn(&a) >= lsn(&during)).then_some(b)
    });
    assert_eq!(b[0]["status"], "degraded", "{b}");
    for r in ["b", "s3"] {
        let to = b[0]["regions"][r]["restorable_to"]
            .as_str()
            .unwrap_or("0/0");
        assert!(lsn(to) < lsn(&during), "region {r} is down: {b}");
    }

    // Recovery, without any operator action on cairn.
    std::fs::remove_file(&b_dir).unwrap();
    std::fs::rename(&b_moved, &b_dir).unwrap();
    garage.restart();
    wait_for("catching up in every region", 120, || {
        let b = api(port, "/api/backups")?;
        let ok = b[0]["status"] == "ok"
            && ["a", "b", "s3"].iter().all(|r| {
                b[0]["regions"][r]["restorable_to"]
                    .as_str()
                    .is_some_and(|x| lsn(x) >= lsn(&during))
            });
        let h = api(port, "/api/health")?;
        (ok && h["status"] == "ok").then_some(())
    });
    drop(c);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(up.0.id() as i32, libc::SIGTERM);
    }
    assert!(up.0.wait().unwrap().success());
    env.ok(&["regions", "check", "--full"]);
    env.stop_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_that_stores_other_bytes_never_counts_toward_min_copies() {
    let env = Env::new();
    let garage = Garage::start(&env.dir.path().join("garage"));
    let liar = common::liar::Liar::start(garage.s3_port);
    env.write_regions(&format!(
        "min_copies = 2\n{}\n{}",
        env.file_region("local"),
        liar.region_toml(&garage, "liar", "prod")
    ));
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute("CREATE TABLE t AS SELECT generate_series(1, 10000) g")
        .await
        .unwrap();
    drop(c);
    env.stop_all();
    // Garage acknowledges every write; the region hands back other bytes: not durable.
    let out = env.run(&["backup", "now"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("DEGRADED"), "{stderr}");
    assert!(
        stdout.contains("region liar: FAILED")
            && stdout.contains("does not keep what it acknowledges"),
        "{stdout}"
    );
    let list = env.json(&["backup", "list"]);
    assert_eq!(list[0]["status"], "degraded", "{list}");
    assert!(
        list[0]["regions"]["liar"]["restorable_to"].is_null(),
        "{list}"
    );
    // No index names anything in the lying region (or anywhere: nothing is in 2 regions).
    let s3 = cairn_backup::region::Region::connect(&garage.region_config("s3", "prod")).unwrap();
    let objects = s3.list("clusters").await.unwrap();
    assert!(
        !objects.iter().any(|(k, _)| k.contains("/timelines/")),
        "{objects:?}"
    );
    // With two honest regions the backup is durable, and the liar is still reported.
    env.write_regions(&format!(
        "min_copies = 2\n{}\n{}\n{}",
        env.file_region("local"),
        env.file_region("local-2"),
        liar.region_toml(&garage, "liar", "prod")
    ));
    let out = env.ok(&["backup", "now", "--no-image"]);
    assert!(out.contains("region liar: FAILED"), "{out}");
    assert!(out.contains("durable in at least 2 regions"), "{out}");
    let list = env.json(&["backup", "list"]);
    assert_eq!(list[0]["status"], "ok", "{list}");
    assert!(
        list[0]["regions"]["liar"]["restorable_to"].is_null(),
        "{list}"
    );
}
