//! Malformed policies and the exact messages an operator sees for them: `FILE:LINE:COLUMN:
//! MESSAGE (did you mean `X`?)`, one per problem, sorted by position, every problem of every
//! file at once. Each case is a set of files; most have one.

mod common;

use std::path::Path;

use cairn_policies::{parse_set, ErrorKind, ErrorKind::*};

/// Lines 1-4 of most cases: a cluster and the required objectives; the case goes on at line 5.
macro_rules! head {
    () => {
        "clusters = [\"prod-eu\"]\n[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n"
    };
}

struct Case {
    files: Vec<(&'static str, &'static str)>,
    errors: Vec<(ErrorKind, &'static str)>,
    warnings: Vec<&'static str>,
}

fn one(file: &'static str, text: &'static str, errors: &[(ErrorKind, &'static str)]) -> Case {
    Case {
        files: vec![(file, text)],
        errors: errors.to_vec(),
        warnings: Vec::new(),
    }
}

fn cases() -> Vec<Case> {
    vec![
        // --- syntax
        one(
            "syntax.toml",
            "clusters = [\"prod-eu\"\n[objectives]\n",
            &[(Syntax, "syntax.toml:2:1: invalid TOML: invalid array: expected `]`")],
        ),
        one(
            "duplicate_key.toml",
            concat!(head!(), "rpo = \"1m\"\n"),
            &[(Syntax, "duplicate_key.toml:5:1: invalid TOML: duplicate key `rpo` in table `objectives`")],
        ),
        // --- unknown keys
        one(
            "unknown_objectives_key.toml",
            concat!(head!(), "rtoo = \"1h\"\n"),
            &[(UnknownKey, "unknown_objectives_key.toml:5:1: unknown key `rtoo` in [objectives] (did you mean `rto`?)")],
        ),
        one(
            "misplaced_key.toml",
            "clusters = [\"prod-eu\"]\ncluster = \"x\"\npitr = \"7d\"\n[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n",
            &[
                (UnknownKey, "misplaced_key.toml:2:1: unknown top-level key `cluster` (did you mean `clusters`?)"),
                (UnknownKey, "misplaced_key.toml:3:1: unknown top-level key `pitr` (did you mean `retention.pitr`?)"),
            ],
        ),
        one(
            "unknown_section_key.toml",
            concat!(head!(), "[regions]\nmin_copy = 1\n"),
            &[(UnknownKey, "unknown_section_key.toml:6:1: unknown key `min_copy` in [regions] (did you mean `min_copies`?)")],
        ),
        one(
            "unknown_schedule_key.toml",
            concat!(head!(), "[schedules]\nimage = { cron = \"@daily\", jiter = \"5m\" }\n"),
            &[(UnknownKey, "unknown_schedule_key.toml:6:28: unknown key `jiter` in [schedules.image] (did you mean `jitter`?)")],
        ),
        one(
            "unknown_hold_key.toml",
            concat!(
                head!(),
                "[[retention.legal_holds]]\npoint = \"2026-11-01T00:00:00Z\"\nreason = \"audit\"\nuntil = \"2027-01-01\"\n"
            ),
            &[(UnknownKey, "unknown_hold_key.toml:8:1: unknown key `until` in [[retention.legal_holds]]")],
        ),
        // --- wrong types
        one(
            "wrong_type_integer.toml",
            concat!(head!(), "[regions]\nmin_copies = \"2\"\n"),
            &[(WrongType, "wrong_type_integer.toml:6:14: `regions.min_copies` must be an integer, found a string")],
        ),
        one(
            "wrong_type_duration.toml",
            "clusters = [\"prod-eu\"]\n[objectives]\nrpo = 30\nrto = \"15m\"\n",
            &[(WrongType, "wrong_type_duration.toml:3:7: `objectives.rpo` must be a duration string such as \"30s\", found an integer")],
        ),
        one(
            "clusters_not_a_list.toml",
            "clusters = \"prod-eu\"\n[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n",
            &[(WrongType, "clusters_not_a_list.toml:1:12: `clusters` must be an array of strings, found a string")],
        ),
        one(
            "cluster_not_a_string.toml",
            "clusters = [\"prod-eu\", 7]\n[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n",
            &[(WrongType, "cluster_not_a_string.toml:1:24: `clusters[2]` must be a string, found an integer")],
        ),
        one(
            "section_not_a_table.toml",
            "clusters = [\"prod-eu\"]\nobjectives = \"fast\"\n",
            &[(WrongType, "section_not_a_table.toml:2:14: `objectives` must be a table, found a string")],
        ),
        one(
            "schedule_wrong_type.toml",
            concat!(head!(), "[schedules]\nimage = 5\n"),
            &[(WrongType, "schedule_wrong_type.toml:6:9: `schedules.image` must be a cron string or a table, found an integer")],
        ),
        one(
            "jitter_wrong_type.toml",
            concat!(head!(), "[schedules]\nimage = { cron = \"@daily\", jitter = 300 }\n"),
            &[(WrongType, "jitter_wrong_type.toml:6:37: `schedules.image.jitter` must be a duration string such as \"30s\", found an integer")],
        ),
        // --- missing keys
        one(
            "missing_clusters.toml",
            "[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n",
            &[(MissingKey, "missing_clusters.toml:1:1: missing required key `clusters`")],
        ),
        one(
            "missing_objectives.toml",
            "clusters = [\"prod-eu\"]\n",
            &[(MissingKey, "missing_objectives.toml:1:1: missing required table [objectives] (with `rpo` and `rto`)")],
        ),
        one(
            "missing_rto.toml",
            "clusters = [\"prod-eu\"]\n[objectives]\nrpo = \"30s\"\n",
            &[(MissingKey, "missing_rto.toml:2:2: missing required key `objectives.rto`")],
        ),
        one(
            "missing_cron.toml",
            concat!(head!(), "[schedules.verify]\njitter = \"5m\"\n"),
            &[(MissingKey, "missing_cron.toml:5:12: missing required key `schedules.verify.cron`")],
        ),
        // --- bad values
        one(
            "empty_clusters.toml",
            "clusters = []\n[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n",
            &[(BadValue, "empty_clusters.toml:1:12: `clusters` is empty: name at least one cluster or glob")],
        ),
        one(
            "repeated_cluster.toml",
            "clusters = [\"prod-eu\", \"prod-eu\"]\n[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n",
            &[(BadValue, "repeated_cluster.toml:1:24: `clusters[2]` repeats `prod-eu`")],
        ),
        one(
            "bad_name.toml",
            concat!("name = \"my policy\"\n", head!()),
            &[(BadValue, "bad_name.toml:1:8: `name` may contain only letters, digits, `-`, `_` and `.`, found `my policy`")],
        ),
        one(
            "bad_duration.toml",
            "clusters = [\"prod-eu\"]\n[objectives]\nrpo = \"30s\"\nrto = \"15x\"\n",
            &[(BadValue, "bad_duration.toml:4:7: `objectives.rto`: '15x': unknown unit (use s, m, h, d or w)")],
        ),
        one(
            "zero_rpo.toml",
            "clusters = [\"prod-eu\"]\n[objectives]\nrpo = \"0s\"\nrto = \"15m\"\n",
            &[(BadValue, "zero_rpo.toml:3:7: `objectives.rpo` must be greater than 0")],
        ),
        one(
            "bad_cron_field.toml",
            concat!(head!(), "[schedules]\nimage = \"61 3 * * *\"\n"),
            &[(BadValue, "bad_cron_field.toml:6:9: `schedules.image`: `61 3 * * *` is not a cron expression: its minute field `61` is not valid (0-59)")],
        ),
        one(
            "ambiguous_cron.toml",
            concat!(head!(), "[schedules]\nimage = \"0 3 1 * 1\"\n"),
            &[(BadValue, "ambiguous_cron.toml:6:9: `schedules.image`: `0 3 1 * 1` restricts both day-of-month and day-of-week, which cron implementations read differently (either or both); restrict only one of them")],
        ),
        one(
            "cron_field_count.toml",
            concat!(head!(), "[schedules]\nverify = { cron = \"0 3 * *\" }\n"),
            &[(BadValue, "cron_field_count.toml:6:19: `schedules.verify.cron`: `0 3 * *` has 4 fields: a cron expression has 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)")],
        ),
        one(
            "bad_timezone.toml",
            "clusters = [\"prod-eu\"]\ntimezone = \"Europe/Berln\"\n[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n",
            &[(BadValue, "bad_timezone.toml:2:12: `timezone`: unknown time zone `Europe/Berln` (did you mean `Europe/Berlin`?)")],
        ),
        one(
            "bad_schedule_timezone.toml",
            concat!(head!(), "[schedules]\ndrill = { cron = \"0 10 1 * *\", timezone = \"Mars/Olympus\" }\n"),
            &[(BadValue, "bad_schedule_timezone.toml:6:43: `schedules.drill.timezone`: unknown time zone `Mars/Olympus`")],
        ),
        one(
            "max_concurrent_zero.toml",
            concat!(head!(), "[schedules]\nimage = { cron = \"@daily\", max_concurrent = 0 }\n"),
            &[(BadValue, "max_concurrent_zero.toml:6:45: `schedules.image.max_concurrent` must be between 1 and 1000, found 0")],
        ),
        one(
            "gfs_out_of_range.toml",
            concat!(head!(), "[retention]\ndaily = -1\nweekly = 1.5\n"),
            &[
                (BadValue, "gfs_out_of_range.toml:6:9: `retention.daily` must be between 0 and 10000, found -1"),
                (WrongType, "gfs_out_of_range.toml:7:10: `retention.weekly` must be an integer, found a float"),
            ],
        ),
        one(
            "bad_hold_time.toml",
            concat!(head!(), "[retention]\nlegal_holds = [{ point = \"yesterday\", reason = \"audit\" }]\n"),
            &[(BadValue, "bad_hold_time.toml:6:26: `retention.legal_holds[1].point`: `yesterday` is neither a time nor an LSN: write an RFC 3339 time (2026-11-01T00:00:00Z) or lsn:HI/LO (lsn:0/16B3748)")],
        ),
        one(
            "bad_hold_lsn.toml",
            concat!(head!(), "[retention]\nlegal_holds = [{ point = \"lsn:0/XYZ\" }]\n"),
            &[
                (MissingKey, "bad_hold_lsn.toml:6:16: missing required key `retention.legal_holds[1].reason`"),
                (BadValue, "bad_hold_lsn.toml:6:26: `retention.legal_holds[1].point`: `lsn:0/XYZ` is not an LSN: write lsn:HI/LO in hexadecimal (e.g. lsn:0/16B3748)"),
            ],
        ),
        one(
            "empty_reason.toml",
            concat!(head!(), "[retention]\nlegal_holds = [{ point = \"lsn:0/1\", reason = \"\" }]\n"),
            &[(BadValue, "empty_reason.toml:6:46: `retention.legal_holds[1].reason` is an empty string")],
        ),
        one(
            "bad_tag_syntax.toml",
            concat!(head!(), "[regions]\nuse = [\"tag:tier\"]\n"),
            &[(BadValue, "bad_tag_syntax.toml:6:8: `regions.use[1]`: `tag:tier` is not a tag selector: write `tag:KEY=VALUE` (e.g. `tag:zone=eu`)")],
        ),
        one(
            "empty_region_list.toml",
            concat!(head!(), "[regions]\nuse = []\n"),
            &[(BadValue, "empty_region_list.toml:6:7: `regions.use` is empty: select at least one region, or remove the key to use every region")],
        ),
        one(
            "bad_recipient.toml",
            concat!(head!(), "[encryption]\nrecipients = [\"age1xyz\"]\n"),
            &[(BadValue, "bad_recipient.toml:6:15: `encryption.recipients[1]`: `age1xyz` is not an age X25519 recipient (invalid Bech32 encoding)")],
        ),
        one(
            "secret_key_as_recipient.toml",
            concat!(
                head!(),
                "[encryption]\nrecipients = [\"AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX\"]\n"
            ),
            &[(BadValue, "secret_key_as_recipient.toml:6:15: `encryption.recipients[1]` is an age secret key, not a recipient: write its public key (age1...) and keep the secret key out of policy files")],
        ),
        one(
            "repeated_recipient.toml",
            concat!(
                head!(),
                "[encryption]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\", \"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n"
            ),
            &[(BadValue, "repeated_recipient.toml:6:81: `encryption.recipients[2]` repeats the recipient `age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p`")],
        ),
        one(
            "unknown_check.toml",
            concat!(head!(), "[verification]\nchecks = [\"object_integrity\", \"amchek\"]\n"),
            &[(BadValue, "unknown_check.toml:6:31: unknown verification check `amchek` (did you mean `amcheck`?)")],
        ),
        one(
            "empty_checks.toml",
            concat!(head!(), "[verification]\nchecks = []\n"),
            &[(BadValue, "empty_checks.toml:6:10: `verification.checks` is empty: remove the key to run the default checks")],
        ),
        one(
            "bad_point.toml",
            concat!(head!(), "[verification]\npoint = \"lastest\"\n"),
            &[(BadValue, "bad_point.toml:6:9: `verification.point`: `lastest` is not a restore point: use `latest`, `random:DURATION` (e.g. `random:7d`) or an RFC 3339 time (e.g. 2026-11-01T00:00:00Z) (did you mean `latest`?)")],
        ),
        one(
            "zero_window.toml",
            concat!(head!(), "[verification]\nwindow = \"0s\"\n"),
            &[(BadValue, "zero_window.toml:6:10: `verification.window` must be greater than 0")],
        ),
        one(
            "zero_time_limit.toml",
            concat!(head!(), "[verification]\ntime_limit = \"0s\"\n"),
            &[(BadValue, "zero_time_limit.toml:6:14: `verification.time_limit` must be greater than 0")],
        ),
        one(
            "duplicate_probe.toml",
            concat!(
                head!(),
                "[[verification.probes]]\nname = \"orders\"\nsql = \"SELECT true\"\n[[verification.probes]]\nname = \"orders\"\n"
            ),
            &[
                (MissingKey, "duplicate_probe.toml:8:1: missing required key `verification.probes[2].sql`"),
                (BadValue, "duplicate_probe.toml:9:8: `verification.probes[2].name`: a probe named `orders` is already defined at line 6"),
            ],
        ),
        // --- regions the appliance does not have
        one(
            "unknown_region.toml",
            concat!(head!(), "[regions]\nuse = [\"eu-3\"]\n"),
            &[(UnknownRegion, "unknown_region.toml:6:8: unknown region `eu-3` in `regions.use` (did you mean `eu-1`?)")],
        ),
        one(
            "glob_matches_no_region.toml",
            concat!(head!(), "[regions]\nuse = [\"eu-1\", \"ap-*\"]\n"),
            &[(UnknownRegion, "glob_matches_no_region.toml:6:16: `ap-*` in `regions.use` matches no region")],
        ),
        one(
            "unknown_tag.toml",
            concat!(head!(), "[regions]\nuse = [\"tag:teir=cold\"]\n"),
            &[(UnknownRegion, "unknown_tag.toml:6:8: `tag:teir=cold` in `regions.use` matches no region (did you mean `tag:tier=cold`?)")],
        ),
        // --- semantics
        one(
            "rpo_below_ship_interval.toml",
            "clusters = [\"prod-eu\"]\n[objectives]\nrpo = \"5s\"\nrto = \"15m\"\n",
            &[(Semantic, "rpo_below_ship_interval.toml:3:7: `objectives.rpo` is 5s, but WAL is shipped every 10s: no RPO can be shorter than the ship interval")],
        ),
        one(
            "pitr_shorter_than_images.toml",
            concat!(head!(), "[schedules]\nimage = \"@weekly\"\n[retention]\npitr = \"3d\"\n"),
            &[(Semantic, "pitr_shorter_than_images.toml:8:8: `retention.pitr` is 3d, shorter than the longest gap between image backups (1w with `@weekly`): points early in the window would need an image older than the window")],
        ),
        one(
            "default_pitr_monthly_images.toml",
            concat!(head!(), "[schedules]\nimage = \"@monthly\"\n"),
            &[(Semantic, "default_pitr_monthly_images.toml:6:9: `retention.pitr` is 1w (the default), shorter than the longest gap between image backups (31d with `@monthly`): points early in the window would need an image older than the window")],
        ),
        one(
            "never_fires.toml",
            concat!(head!(), "[schedules]\ndrill = \"0 0 30 2 *\"\n"),
            &[(Semantic, "never_fires.toml:6:9: `schedules.drill` (`0 0 30 2 *`) never fires")],
        ),
        one(
            "too_many_copies.toml",
            concat!(head!(), "[regions]\nuse = [\"eu-1\", \"eu-2\"]\nmin_copies = 3\n"),
            &[(Semantic, "too_many_copies.toml:7:14: `regions.min_copies` is 3, but `regions.use` selects 2 regions (eu-1, eu-2)")],
        ),
        one(
            "default_copies_one_region.toml",
            concat!(head!(), "[regions]\nuse = [\"us-1\"]\n"),
            &[(Semantic, "default_copies_one_region.toml:6:7: `regions.min_copies` is 2 (the default), but `regions.use` selects 1 region (us-1)")],
        ),
        one(
            "zero_copies.toml",
            concat!(head!(), "[regions]\nmin_copies = 0\n"),
            &[(Semantic, "zero_copies.toml:6:14: `regions.min_copies` is 0: every backup needs at least 1 copy")],
        ),
        one(
            "random_point_beyond_pitr.toml",
            concat!(head!(), "[verification]\npoint = \"random:30d\"\n"),
            &[(Semantic, "random_point_beyond_pitr.toml:6:9: `verification.point` picks points up to 30d back, beyond the 1w of `retention.pitr`")],
        ),
        one(
            "probes_check_without_probes.toml",
            concat!(head!(), "[verification]\nchecks = [\"probes\"]\n"),
            &[(Semantic, "probes_check_without_probes.toml:6:10: `verification.checks` lists `probes`, but no [[verification.probes]] is defined")],
        ),
        // --- many problems in one file, reported together and in order
        Case {
            files: vec![(
                "multiple_errors.toml",
                "clusters = [\"prod-eu\", \"staging-*\"]\n[objectives]\nrpo = \"5s\"\nrto = \"15m\"\n[schedules]\nimage = { cron = \"0 3 * * *\", timezon = \"UTC\" }\nverify = 7\n[regions]\nuse = [\"eu-1\", \"eu-9\"]\nmin_copies = -3\n[encryption]\nrecipient = []\n",
            )],
            errors: vec![
                (Semantic, "multiple_errors.toml:3:7: `objectives.rpo` is 5s, but WAL is shipped every 10s: no RPO can be shorter than the ship interval"),
                (UnknownKey, "multiple_errors.toml:6:31: unknown key `timezon` in [schedules.image] (did you mean `timezone`?)"),
                (WrongType, "multiple_errors.toml:7:10: `schedules.verify` must be a cron string or a table, found an integer"),
                (UnknownRegion, "multiple_errors.toml:9:16: unknown region `eu-9` in `regions.use` (did you mean `eu-1`?)"),
                (BadValue, "multiple_errors.toml:10:14: `regions.min_copies` must be between 0 and 100, found -3"),
                (UnknownKey, "multiple_errors.toml:12:1: unknown key `recipient` in [encryption] (did you mean `recipients`?)"),
            ],
            warnings: vec!["multiple_errors.toml:1:24: warning: `staging-*` matches no cluster the appliance knows"],
        },
        // --- conflicts between files, and errors of several files at once
        Case {
            files: vec![
                ("a.toml", concat!("clusters = [\"prod-*\"]\n", "[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n")),
                ("b.toml", concat!("clusters = [\"prod-eu\", \"prod-*\"]\n", "[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n")),
            ],
            errors: vec![(Conflict, "b.toml:1:24: `prod-*` is also claimed by a.toml:1:13")],
            warnings: vec![],
        },
        Case {
            files: vec![
                ("a.toml", concat!("clusters = [\"prod-*\"]\n", "[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n")),
                ("c.toml", concat!("clusters = [\"*-us\"]\n", "[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n")),
            ],
            errors: vec![(Conflict, "c.toml:1:13: `*-us` and `prod-*` in a.toml:1:13 both claim cluster `prod-us`: name it exactly in one policy to choose")],
            warnings: vec![],
        },
        Case {
            files: vec![
                ("a.toml", concat!("name = \"main\"\nclusters = [\"dev-alice\"]\n", "[objectives]\nrpo = \"30s\"\nrto = \"15m\"\n")),
                ("b.toml", concat!("name = \"main\"\nclusters = [\"dev-bob\"]\n", "[objectives]\nrpo = \"30s\"\nrto = \"1m\"\nrto = \"2m\"\n")),
                ("c.toml", concat!("name = \"main\"\nclusters = [\"dev-alice\"]\n", "[objectives]\nrpo = \"30s\"\nrto = \"15m\"\nretention = 1\n")),
            ],
            errors: vec![
                (Syntax, "b.toml:6:1: invalid TOML: duplicate key `rto` in table `objectives`"),
                (Conflict, "c.toml:1:8: policy name `main` is already used by a.toml"),
                (Conflict, "c.toml:2:13: `dev-alice` is also claimed by a.toml:2:13"),
                (UnknownKey, "c.toml:6:1: unknown key `retention` in [objectives]"),
            ],
            warnings: vec![],
        },
    ]
}

#[test]
fn every_malformed_policy_gets_its_exact_messages() {
    let ctx = common::context();
    let cases = cases();
    assert!(cases.len() >= 35, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let files: Vec<(&Path, &[u8])> = case
            .files
            .iter()
            .map(|(f, t)| (Path::new(*f), t.as_bytes()))
            .collect();
        let errors = match parse_set(files, &ctx) {
            Ok(_) => {
                failures.push(format!("{}: accepted", case.files[0].0));
                continue;
            }
            Err(e) => e,
        };
        let got: Vec<(ErrorKind, String)> =
            errors.iter().map(|e| (e.kind, e.to_string())).collect();
        let want: Vec<(ErrorKind, String)> = case
            .errors
            .iter()
            .map(|(k, m)| (*k, m.to_string()))
            .collect();
        if got != want {
            failures.push(format!(
                "{}:\n  got  {got:#?}\n  want {want:#?}",
                case.files[0].0
            ));
        }
        // `Errors` prints one error per line, in the same order.
        let printed: Vec<String> = case.errors.iter().map(|(_, m)| m.to_string()).collect();
        if errors.to_string() != printed.join("\n") {
            failures.push(format!("{}: Display differs", case.files[0].0));
        }
        let warnings: Vec<String> = errors.warnings.iter().map(|w| w.to_string()).collect();
        if warnings != case.warnings {
            failures.push(format!("{}: warnings {warnings:#?}", case.files[0].0));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn text_that_is_not_utf8_is_a_syntax_error_at_the_first_bad_byte() {
    let bytes: &[u8] = b"clusters = [\"prod-eu\"]\n# caf\xe9\n";
    let e = parse_set([(Path::new("latin1.toml"), bytes)], &common::context()).unwrap_err();
    assert_eq!(e.to_string(), "latin1.toml:2:6: the file is not UTF-8 text");
    assert_eq!(e.errors[0].kind, Syntax);
}

#[test]
fn a_secret_key_is_never_quoted_back() {
    let secret = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";
    let text = format!("{}[encryption]\nrecipients = [\"{secret}\"]\n", head!());
    let e = parse_set([(Path::new("s.toml"), text.as_bytes())], &common::context()).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(
        !format!("{e}{e:?}").contains(&secret[15..]),
        "the key leaked: {e}"
    );
}
