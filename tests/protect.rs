//! The protection layer end to end, on file regions: shipping, tampering detection and repair,
//! disaster recovery from one region, the deletion queue, kills during shipping and damaged
//! local layers. The keys (identities, rotation, escrow, shredding, key changes while `up`
//! ships) are in `tests/keys.rs`.

mod common;

use std::os::unix::process::ExitStatusExt;

use common::protection::*;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn backups_are_encrypted_in_two_regions_and_one_region_plus_a_key_restores() {
    let env = Env::new();
    two_regions(&env, "");
    let sum = backed_up_cluster(&env).await;
    let list = env.json(&["backup", "list"]);
    assert_eq!(list[0]["status"], "ok");
    let head = list[0]["head"].as_str().unwrap().to_string();
    assert_eq!(
        list[0]["regions"]["region-a"]["restorable_to"],
        head.as_str()
    );
    assert_eq!(
        list[0]["regions"]["region-b"]["restorable_to"],
        head.as_str()
    );
    // Nothing in a region is readable: none of the table's values, no PostgreSQL or layer-file
    // magic, and every payload object is as incompressible as ciphertext is.
    let c = connect(&env.start("main")).await;
    let mut needles: Vec<String> = c
        .query("SELECT h FROM t WHERE g IN (0, 7, 30000, 59999)", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(needles.len(), 4);
    drop(c);
    needles.push("PostgreSQL".into());
    needles.push("CAIRNEND".into());
    for region in ["region-a", "region-b"] {
        let objects = env.region_objects(region);
        let mut payloads = 0;
        for key in &objects {
            let b = std::fs::read(env.region_root(region).join(key)).unwrap();
            for n in &needles {
                assert!(
                    !b.windows(n.len()).any(|w| w == n.as_bytes()),
                    "'{n}' readable in {region}/{key}"
                );
            }
            if key.contains("/layers/") {
                assert!(b.starts_with(b"CAIRNOBJ"), "{key} is an envelope object");
                if b.len() > 4096 {
                    let packed = zstd::encode_all(&b[..], 3).unwrap();
                    assert!(
                        packed.len() as f64 > 0.97 * b.len() as f64,
                        "{region}/{key} compresses to {} of {} bytes: not ciphertext",
                        packed.len(),
                        b.len()
                    );
                    payloads += 1;
                }
            }
        }
        assert!(
            payloads >= 2,
            "{region}: {payloads} payload objects in {objects:?}"
        );
    }
    assert_eq!(
        payload_hashes(&env, "region-a"),
        payload_hashes(&env, "region-b")
    );
    env.ok(&["regions", "check", "--full"]);
    env.stop_all();

    // Disaster: a new, empty appliance with only region-b and the recovery kit.
    let kit = env.recovery_kit();
    let dr = env.disaster_recovery_from("region-b");
    let out = dr.ok(&[
        "catalog",
        "rebuild",
        "--from-region",
        "region-b",
        "--recovery-kit",
        kit.to_str().unwrap(),
    ]);
    assert!(out.contains("rebuilt 1 cluster(s) (shop)"), "{out}");
    let c = connect(&dr.start("main")).await;
    assert_eq!(
        table_checksum(&c, "t").await,
        sum,
        "the restored branch has the data"
    );
    drop(c);
    dr.stop_all();
    dr.ok(&["check", "--full"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_is_detected_with_region_object_and_reason_and_repaired() {
    let env = Env::new();
    two_regions(&env, "");
    // Large enough that its image object has several whole 1 MiB chunks to swap.
    backed_up_cluster_of(&env, 200_000).await;
    let root = env.region_root("region-a");
    let objects = env.region_objects("region-a");
    let mut layers: Vec<(String, u64)> = objects
        .iter()
        .filter(|k| k.contains("/layers/"))
        .map(|k| (k.clone(), std::fs::metadata(root.join(k)).unwrap().len()))
        .collect();
    layers.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let big = layers[0].0.clone(); // the image: three whole 1 MiB chunks at least
    let chunk = (1 << 20) + 16;
    assert!(
        layers[0].1 > 64 + 3 * chunk as u64,
        "need an object of three whole chunks, got {}",
        layers[0].1
    );
    let small = layers.last().unwrap().0.clone();
    let index = objects
        .iter()
        .find(|k| k.contains("/index-"))
        .unwrap()
        .clone();
    let old_index = std::fs::read(root.join(&index)).unwrap();

    // A newer index, so that the old one can be replayed.
    let c = connect(&env.start("main")).await;
    c.batch_execute("INSERT INTO t VALUES (-1, 'newer')")
        .await
        .unwrap();
    drop(c);
    env.ok(&["backup", "now", "--no-image"]);

    let check = |expect: &str, object: &str| {
        let out = env.run(&["regions", "check", "--full", "--region", "region-a"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "expected {expect}: {text}");
        let line = text
            .lines()
            .find(|l| l.contains("PROBLEM") && l.contains(object))
            .unwrap_or_else(|| panic!("no problem reported for {object}: {text}"));
        assert!(line.contains("region 'region-a'"), "{line}");
        assert!(line.contains(expect), "expected '{expect}': {line}");
    };
    let original = std::fs::read(root.join(&big)).unwrap();
    let restore = || std::fs::write(root.join(&big), &original).unwrap();
    let write = |bytes: &[u8]| std::fs::write(root.join(&big), bytes).unwrap();

    let mut b = original.clone();
    b[100_000] ^= 0x01;
    write(&b);
    check("chunk 0 fails authentication", &big);
    // Truncated or extended: refused from its size, before anything is read.
    write(&original[..original.len() - 1000]);
    check("truncated or extended", &big);
    let mut b = original.clone();
    b.extend_from_slice(&[0u8; 5000]);
    write(&b);
    check("truncated or extended", &big);
    // Whole chunks swapped, first and second, then second and third: each authenticates on its
    // own, but not at another position.
    for (i, expect) in [
        (0, "chunk 0 fails authentication"),
        (1, "chunk 1 fails authentication"),
    ] {
        let mut b = original.clone();
        let (x, y) = (64 + i * chunk, 64 + (i + 1) * chunk);
        let first = b[x..x + chunk].to_vec();
        let second = b[y..y + chunk].to_vec();
        b[x..x + chunk].copy_from_slice(&second);
        b[y..y + chunk].copy_from_slice(&first);
        write(&b);
        check(expect, &big);
    }
    restore();
    // Swap two objects: the small layer's bytes under the big one's name.
    std::fs::copy(root.join(&small), root.join(&big)).unwrap();
    check("objects swapped", &big);
    restore();
    // Replay the old index.
    let current = std::fs::read(root.join(&index)).unwrap();
    std::fs::write(root.join(&index), &old_index).unwrap();
    check("replayed", &index);
    std::fs::write(root.join(&index), &current).unwrap();
    // Sign with another key.
    let (other, _) = cairn_backup::keys::Signer::generate();
    let (idx, _) = cairn_backup::index::decode_verified(
        &current,
        &index,
        "region-a",
        &cairn_backup::index::Trust {
            signers: &[current[10..42].try_into().unwrap()],
            seen: None,
        },
    )
    .unwrap();
    std::fs::write(root.join(&index), idx.encode_signed(&other)).unwrap();
    check("not a trusted appliance signing key", &index);
    // Unsigned.
    std::fs::write(root.join(&index), serde_json::to_vec(&idx).unwrap()).unwrap();
    check("unsigned", &index);

    // Key objects swapped: the small layer's wrapped key under the big layer's key name. The
    // key object's own binding to its object refuses it (until now shown by a unit test only).
    let key_of = |layer: &str| layer.replace("/layers/", "/keys/");
    let big_id = big.rsplit('/').next().unwrap().to_string();
    let big_key = std::fs::read(root.join(key_of(&big))).unwrap();
    std::fs::copy(root.join(key_of(&small)), root.join(key_of(&big))).unwrap();
    check("another", &big_id);
    std::fs::write(root.join(key_of(&big)), &big_key).unwrap();

    // Damage in several places at once; repair restores every object from region-b.
    let mut b = original.clone();
    let at = 2_000_000.min(b.len() - 1);
    b[at] ^= 0x80;
    write(&b);
    std::fs::remove_file(root.join(&small)).unwrap();
    let out = env.ok(&["regions", "repair"]);
    assert!(out.contains("from 'region-b' to 'region-a'"), "{out}");
    env.ok(&["regions", "check", "--full"]);
    assert_eq!(std::fs::read(root.join(&big)).unwrap(), original);
    env.stop_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_branches_leave_the_regions_through_the_deletion_queue() {
    let env = Env::new();
    // A deletion delay, as in production (24 h by default), short enough to wait out here.
    env.write_regions(&format!(
        "min_copies = 2\ndeletion_delay = \"2s\"\n{}\n{}",
        env.file_region("region-a"),
        env.file_region("region-b")
    ));
    backed_up_cluster(&env).await;
    env.ok(&["branch", "create", "dev", "--from", "main"]);
    let c = connect(&env.start("dev")).await;
    c.batch_execute("CREATE TABLE d AS SELECT generate_series(1, 5000) g")
        .await
        .unwrap();
    drop(c);
    env.ok(&["compute", "stop", "dev"]);
    env.ok(&["backup", "now", "--no-image"]);
    let dev_tl = env.branch("dev")["timeline"].as_str().unwrap().to_string();
    let ids_of = |tl_is_dev: bool| -> Vec<String> {
        env.layers()
            .iter()
            .filter(|l| (l["timeline_id"] == dev_tl.as_str()) == tl_is_dev)
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (dev_layers, other_layers) = (ids_of(true), ids_of(false));
    assert!(!dev_layers.is_empty(), "dev wrote layers of its own");
    for r in ["region-a", "region-b"] {
        let before = env.region_objects(r);
        assert!(
            before.iter().any(|k| k.contains(&dev_tl)),
            "dev's index is in {r}"
        );
        for id in dev_layers.iter().chain(&other_layers) {
            assert!(
                before.iter().any(|k| k.contains(&format!("layers/{id}"))),
                "layer {id} is in {r}"
            );
        }
    }
    let dev_index = env
        .region_objects("region-a")
        .into_iter()
        .find(|k| k.contains(&dev_tl) && k.rsplit('/').next().unwrap().starts_with("index-"))
        .expect("dev's index in region-a");
    let dev_index_bytes = std::fs::read(env.region_root("region-a").join(&dev_index)).unwrap();
    let has_all = |r: &str, ids: &[String]| {
        let objects = env.region_objects(r);
        ids.iter().all(|id| {
            objects.iter().any(|k| k.contains(&format!("layers/{id}")))
                && objects.iter().any(|k| k.contains(&format!("keys/{id}")))
        })
    };
    let has_none = |r: &str, ids: &[String]| {
        let objects = env.region_objects(r);
        !objects
            .iter()
            .any(|k| ids.iter().any(|id| k.contains(id.as_str())) || k.contains(&dev_tl))
    };
    env.ok(&["branch", "delete", "dev"]);
    // Queued, not deleted: the delay has not passed.
    let gc = env.json(&["regions", "gc"]);
    assert!(gc["queued"].as_u64().unwrap() > 0, "{gc}");
    assert_eq!(gc["result"]["deleted"], 0, "{gc}");
    for r in ["region-a", "region-b"] {
        assert!(
            has_all(r, &dev_layers),
            "dev's objects wait out the delay in {r}"
        );
    }
    // A signed index naming dev's layers is still present in region-a (a copy under another
    // name): there, the due deletions of what it names are held back.
    let planted = dev_index.replace(dev_index.rsplit('/').next().unwrap(), "index-kept-by-test");
    std::fs::write(env.region_root("region-a").join(&planted), &dev_index_bytes).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let gc = env.json(&["regions", "gc"]);
    assert!(
        gc["result"]["kept_referenced"].as_u64().unwrap() >= dev_layers.len() as u64,
        "{gc}"
    );
    assert!(
        has_none("region-b", &dev_layers),
        "dev's objects gone from region-b"
    );
    assert!(
        dev_layers.iter().all(|id| env
            .region_objects("region-a")
            .iter()
            .any(|k| k.contains(&format!("layers/{id}")))),
        "region-a keeps the layers its remaining index names"
    );
    assert!(
        !env.region_objects("region-a").contains(&dev_index),
        "the queued index itself went first"
    );
    // Once nothing names them, the held-back deletions go through.
    std::fs::remove_file(env.region_root("region-a").join(&planted)).unwrap();
    let gc = env.json(&["regions", "gc"]);
    assert_eq!(gc["result"]["kept_referenced"], 0, "{gc}");
    for r in ["region-a", "region-b"] {
        assert!(has_none(r, &dev_layers), "dev's objects gone from {r}");
        assert!(
            has_all(r, &other_layers),
            "main's layers and keys stay in {r}"
        );
    }
    env.ok(&["regions", "check", "--full"]);
    env.stop_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_during_shipping_leave_every_index_naming_only_present_objects() {
    let env = Env::new();
    // Small parts so that the image goes up in several parts and a kill can land mid-upload.
    two_regions(&env, "part_size = \"5MiB\"");
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute(
        "CREATE TABLE r AS SELECT g, decode(string_agg(md5(random()::text || g), ''), 'hex') AS b
           FROM generate_series(1, 3000) g, generate_series(1, 250) x GROUP BY g",
    )
    .await
    .unwrap();
    let sum = table_checksum(&c, "r").await;
    drop(c);
    env.ok(&["image", "create", "main"]);
    for fp in [
        "ship-mid-upload",
        "ship-before-key-object",
        "ship-mid-upload@2",
    ] {
        let out = env
            .command(&["backup", "now", "--no-image"])
            .env("CAIRN_FAILPOINT", fp)
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{fp}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Whatever was interrupted, every index names only objects that are present.
        env.ok(&["regions", "check"]);
    }
    let mut rng = seeded_rng("kills_during_shipping_leave_every_index_naming_only_present_objects");
    for round in 0..3 {
        let trace = env.dir.path().join(format!("failpoints-{round}"));
        let mut child = env
            .command(&["backup", "now", "--no-image"])
            .env("CAIRN_FAILPOINT_TRACE", &trace)
            .spawn()
            .unwrap();
        let delay = std::time::Duration::from_millis(rand::Rng::random_range(&mut rng, 0..300));
        let hit = kill_after(&mut child, delay);
        let passed = std::fs::read_to_string(&trace).unwrap_or_default();
        eprintln!(
            "round {round}: after {delay:?}: {}",
            if hit {
                format!(
                    "killed after '{}'",
                    passed
                        .lines()
                        .last()
                        .unwrap_or("before the first failpoint")
                )
            } else {
                "had finished".to_string()
            }
        );
        env.ok(&["regions", "check"]);
    }
    env.ok(&["backup", "now", "--no-image"]);
    env.ok(&["regions", "check", "--full"]);
    env.stop_all();
    let dr = Env::new();
    dr.write_regions(&format!(
        "min_copies = 1\n[[region]]\nname = \"region-a\"\nurl = \"file://{}\"\n",
        env.dir.path().join("regions/region-a").display()
    ));
    let kit = env.recovery_kit();
    dr.ok(&[
        "catalog",
        "rebuild",
        "--from-region",
        "region-a",
        "--recovery-kit",
        kit.to_str().unwrap(),
    ]);
    let c = connect(&dr.start("main")).await;
    assert_eq!(table_checksum(&c, "r").await, sum);
    drop(c);
    dr.stop_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_damaged_on_the_appliance_disk_is_never_shipped() {
    let env = Env::new();
    two_regions(&env, "");
    env.ok(&["cluster", "create", "shop"]);
    let image = env
        .layers()
        .into_iter()
        .find(|l| l["kind"] == "image")
        .unwrap();
    let id = image["id"].as_str().unwrap().to_string();
    let path = env
        .home
        .join("layers")
        .join(image["cluster_id"].as_str().unwrap())
        .join(image["timeline_id"].as_str().unwrap())
        .join(format!("{id}.img"));
    assert!(path.exists(), "{}", path.display());
    // Bit rot in the middle of the file: same size, other bytes.
    let mut b = std::fs::read(&path).unwrap();
    let middle = b.len() / 2;
    b[middle] ^= 0x01;
    std::fs::write(&path, &b).unwrap();
    let out = env.run(&["backup", "now", "--no-image"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&id[..16]) || stdout.contains(path.to_str().unwrap()),
        "names the layer: {stdout}"
    );
    assert!(stdout.contains("damaged on disk"), "{stdout}");
    for r in ["region-a", "region-b"] {
        assert!(
            !env.region_objects(r)
                .iter()
                .any(|k| k.ends_with(&format!("layers/{id}"))),
            "the damaged layer reached {r}"
        );
    }
}
