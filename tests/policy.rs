//! `cairn policy check` on a real appliance: the example policies pass against regions tagged
//! as they expect and govern the clusters they name; broken files are refused with every
//! problem located (file, line, column) and a suggestion, and nothing else is printed as valid.

mod common;

use common::*;

/// Three file regions tagged by tier and provider, as the example policies expect.
fn tagged_regions(env: &Env) {
    let mut toml = String::from("min_copies = 2\n");
    for (name, tier, provider) in [
        ("eu-1", "hot", "aws"),
        ("eu-2", "hot", "gcp"),
        ("us-1", "cold", "aws"),
    ] {
        toml.push_str(&env.file_region(name));
        toml.push_str(&format!(
            "tags = {{ tier = \"{tier}\", provider = \"{provider}\" }}\n"
        ));
    }
    env.write_regions(&toml);
}

fn copy_examples(env: &Env) -> std::path::PathBuf {
    let dir = env.home.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples");
    let mut n = 0;
    for e in std::fs::read_dir(examples).unwrap().flatten() {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        n += 1;
    }
    assert!(n >= 4, "{n} example policies");
    dir
}

#[test]
fn every_example_policy_passes_and_governs_the_clusters_it_names() {
    let env = Env::new();
    tagged_regions(&env);
    env.ok(&["cluster", "create", "prod-eu"]);
    copy_examples(&env);
    let report = env.json(&["policy", "check"]);
    let policies = report["policies"].as_array().unwrap();
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["analytics-warehouse", "finance", "dev", "production"],
        "{report}"
    );
    // Patterns that govern nothing here are warned about, not refused.
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("analytics.toml:4:13: warning: `analytics-*` matches no cluster"),
        "{warnings}"
    );
    let production = &policies[3];
    assert_eq!(production["governs"], serde_json::json!(["prod-eu"]));
    assert_eq!(production["rpo_seconds"], 30);
    // `tag:tier=hot` and `us-1`, in the order of regions.toml.
    assert_eq!(
        production["regions"],
        serde_json::json!(["eu-1", "eu-2", "us-1"])
    );
    assert_eq!(production["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(report["unprotected"], serde_json::json!([]));
    let text = env.ok(&["policy", "check"]);
    assert!(
        text.contains("4 policies in") && text.contains("governs prod-eu"),
        "{text}"
    );
    // A cluster no policy names is reported as unprotected.
    env.ok(&["cluster", "create", "orphan"]);
    let report = env.json(&["policy", "check"]);
    assert_eq!(report["unprotected"], serde_json::json!(["orphan"]));
}

#[test]
fn broken_policies_are_refused_with_every_problem_located() {
    let env = Env::new();
    tagged_regions(&env);
    let dir = copy_examples(&env);
    std::fs::write(
        dir.join("typo.toml"),
        "clusters = [\"ops\"]\n[objectives]\nrpo = \"1m\"\nrto = \"1h\"\n[regions]\nuse = [\"eu-9\"]\nmin_copy = 1\n",
    )
    .unwrap();
    let err = env.fail(&["policy", "check"]);
    let path = dir.join("typo.toml");
    let path = path.display();
    assert!(
        err.contains(&format!("2 problem(s) in the policies of {}", dir.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}:7:1: unknown key `min_copy` in [regions] (did you mean `min_copies`?)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:6:8: ")) && err.contains("eu-9"),
        "{err}"
    );
    // Fixed, the set passes again; an empty directory is an empty set, not an error.
    std::fs::remove_file(dir.join("typo.toml")).unwrap();
    env.ok(&["policy", "check"]);
    let empty = env.dir.path().join("no-policies");
    let text = env.ok(&["policy", "check", "--policies", empty.to_str().unwrap()]);
    assert!(text.contains("0 policies in"), "{text}");
}
