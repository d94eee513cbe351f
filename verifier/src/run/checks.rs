//! The checks of a verification run, each returning its [`CheckResult`]: what it counted,
//! what failed (naming the object, file, block, table or probe), how long it took.
//!
//! - `object_integrity` and `wal_continuity` are the restore's own verifications, reported:
//!   the restore reads every object of the point from the region through the AEAD of every
//!   chunk and the SHA-256 of the plaintext, and stages the WAL from the image to the point only
//!   as a chain without gaps; a restore that fails is classified here ([`restore_failed`]).
//! - `page_checksums`: `pg_checksums --check` over the restored data directory, stopped.
//! - `recovery_target`: recovery ended at the point; the server answers with the cluster's
//!   system identifier and timeline and is out of recovery.
//! - `amcheck`: `pg_amcheck --heapallindexed` over every database.
//! - `fingerprint`: [`super::fingerprint`].
//! - `probes`: each policy probe's query returns true, run as a reading role that is no
//!   superuser ([`probe_role`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use cairn_engine::catalog::ClusterRow;
use cairn_engine::pg::binaries::PgBinaries;
use cairn_engine::pg::process::OsUser;
use cairn_policies::{Check, Probe};
use cairn_restore::RestoreReport;

use super::conn::Server;
use crate::report::{CheckResult, Outcome};

/// A check's result, timed from `started`.
pub fn result(
    check: Check,
    outcome: Outcome,
    started: Instant,
    counts: BTreeMap<String, u64>,
    details: Vec<String>,
) -> CheckResult {
    CheckResult {
        name: check.name().into(),
        outcome,
        duration_ms: started.elapsed().as_millis() as u64,
        counts,
        details,
    }
}

/// A check not run, and why.
pub fn skipped(check: Check, why: &str) -> CheckResult {
    result(
        check,
        Outcome::Skipped,
        Instant::now(),
        BTreeMap::new(),
        vec![why.into()],
    )
}

fn counts<const N: usize>(c: [(&str, u64); N]) -> BTreeMap<String, u64> {
    c.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Objects read from the region, and those it could not serve intact.
pub fn object_integrity(r: &RestoreReport, started: Instant) -> CheckResult {
    let details: Vec<String> = r
        .substitutions
        .iter()
        .map(|s| {
            format!(
                "{} in region {}: {}{}",
                s.object,
                s.region,
                s.reason,
                s.served_by
                    .as_ref()
                    .map(|b| format!(" (a good copy came from {b})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let outcome = if details.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed
    };
    result(
        Check::ObjectIntegrity,
        outcome,
        started,
        counts([
            ("layers", r.layers.len() as u64),
            ("layers_fetched", r.layers_fetched as u64),
            ("bytes_fetched", r.bytes_fetched),
            ("bad_copies", r.substitutions.len() as u64),
        ]),
        details,
    )
}

/// The WAL from the image to the point, as the restore staged and replayed it.
pub fn wal_continuity(r: &RestoreReport, started: Instant) -> CheckResult {
    result(
        Check::WalContinuity,
        Outcome::Passed,
        started,
        counts([
            ("wal_segments", r.wal_segments),
            ("replay_bytes", r.replay_bytes),
        ]),
        vec![],
    )
}

/// The checks a failed restore decides: the failure goes to the check it belongs to (a WAL
/// object no region could serve, or recovery short of the point: `wal_continuity`; anything
/// else: `object_integrity`), the other restore check is skipped.
pub fn restore_failed(e: &cairn_backup::Error, started: Instant) -> [CheckResult; 2] {
    let msg = e.to_string();
    let failed = |c| {
        result(
            c,
            Outcome::Failed,
            started,
            BTreeMap::new(),
            vec![msg.clone()],
        )
    };
    let not_reached = "not reached: the restore failed";
    if e.is_wal_chain() {
        [
            skipped(Check::ObjectIntegrity, not_reached),
            failed(Check::WalContinuity),
        ]
    } else {
        [
            failed(Check::ObjectIntegrity),
            skipped(Check::WalContinuity, not_reached),
        ]
    }
}

/// `pg_checksums --check` over a stopped data directory.
pub async fn page_checksums(bins: &PgBinaries, user: &OsUser, datadir: &Path) -> CheckResult {
    let started = Instant::now();
    let mut cmd = user.command(&bins.bin("pg_checksums"));
    cmd.arg("--check").arg("-D").arg(datadir);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await;
    let out = match out {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return result(
                Check::PageChecksums,
                Outcome::Failed,
                started,
                BTreeMap::new(),
                vec![format!("cannot run pg_checksums: {e}")],
            )
        }
        Err(e) => {
            return result(
                Check::PageChecksums,
                Outcome::Failed,
                started,
                BTreeMap::new(),
                vec![format!("pg_checksums task: {e}")],
            )
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("data checksums are not enabled") {
        return skipped(
            Check::PageChecksums,
            "data checksums are not enabled in this cluster (initdb --data-checksums)",
        );
    }
    let field = |name: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let c = counts([
        ("files", field("Files scanned:")),
        ("blocks", field("Blocks scanned:")),
        ("bad_checksums", field("Bad checksums:")),
    ]);
    if out.status.success() {
        return result(Check::PageChecksums, Outcome::Passed, started, c, vec![]);
    }
    // Files named inside the data directory: the scratch path is gone once the run ends.
    let scratch = format!("{}/", datadir.display());
    let mut details: Vec<String> = stderr
        .lines()
        .map(|l| {
            l.trim_start_matches("pg_checksums: ")
                .trim_start_matches("error: ")
                .replace(&scratch, "")
        })
        .filter(|l| !l.is_empty())
        .take(100)
        .collect();
    if details.is_empty() {
        details.push(format!("pg_checksums failed ({})", out.status));
    }
    result(Check::PageChecksums, Outcome::Failed, started, c, details)
}

/// The relation file a `pg_checksums` line names: `file "base/DB/NODE[.SEG][_FORK]"` gives
/// (Some(DB), NODE), as does `pg_tblspc/TS/VERSION/DB/NODE`; `file "global/NODE..."` gives
/// (None, NODE); other lines none.
pub fn damaged_file(line: &str) -> Option<(Option<u32>, u32)> {
    let path = line.split("file \"").nth(1)?.split('"').next()?;
    let node = |s: &str| -> Option<u32> { s.split(['.', '_']).next()?.parse().ok() };
    match path.split('/').collect::<Vec<_>>()[..] {
        ["base", db, file] | ["pg_tblspc", _, _, db, file] => {
            Some((Some(db.parse().ok()?), node(file)?))
        }
        ["global", file] => Some((None, node(file)?)),
        _ => None,
    }
}

/// Adds to each failed `page_checksums` line the relation and database its file belongs to,
/// asked of the restored server (over a connection with a pinned `search_path`, so names come
/// out schema-qualified). A file it cannot name stays as `pg_checksums` said it.
pub async fn name_damaged_relations(server: &Server, check: &mut CheckResult) {
    if check.outcome != Outcome::Failed {
        return;
    }
    let Ok(postgres) = server.connect_control("postgres").await else {
        return;
    };
    for line in check.details.iter_mut() {
        let Some((db, node)) = damaged_file(line) else {
            continue;
        };
        let datname = match db {
            None => "postgres".to_string(),
            Some(oid) => match postgres
                .query_opt(
                    "SELECT datname::text FROM pg_database WHERE oid = $1",
                    &[&oid],
                )
                .await
            {
                Ok(Some(row)) => row.get(0),
                _ => continue,
            },
        };
        let Ok(c) = server.connect_control(&datname).await else {
            continue;
        };
        if let Ok(Some(row)) = c
            .query_opt(
                "SELECT c.oid::regclass::text FROM pg_class c \
                 WHERE pg_relation_filenode(c.oid) = $1",
                &[&node],
            )
            .await
        {
            let name: String = row.get(0);
            let shared = if db.is_none() { "shared " } else { "" };
            line.push_str(&format!(" ({shared}relation {name} in database {datname})"));
        }
    }
}

/// A role made in the restored copy for the probes: it logs in, reads every table of
/// database `postgres` (row-level security bypassed, so a probe sees every row) and is no
/// superuser, so nothing the copy's owner planted where a probe's names resolve (a function
/// that beats a built-in for a column's type, an operator) runs with more than a reader's
/// rights. Its name is random, so the owner cannot have made it first.
async fn probe_role(server: &Server) -> Result<String, String> {
    let mut b = [0u8; 8];
    cairn_engine::ids::random_bytes(&mut b);
    let role = format!("cairn_probe_{}", hex::encode(b));
    let c = server.connect_control("postgres").await?;
    let fail = |what: &str, e: tokio_postgres::Error| format!("{what} for the probes: {e}");
    c.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION BYPASSRLS"
    ))
    .await
    .map_err(|e| fail("create a reading role", e))?;
    let schemas = c
        .query(
            "SELECT pg_catalog.quote_ident(nspname) FROM pg_catalog.pg_namespace \
             WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'",
            &[],
        )
        .await
        .map_err(|e| fail("list the schemas", e))?;
    for s in schemas {
        let s: String = s.get(0);
        c.batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {s} TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {role}"
        ))
        .await
        .map_err(|e| fail(&format!("grant reading schema {s}"), e))?;
    }
    Ok(role)
}

/// Recovery ended at the point; the server is the cluster's and accepts connections.
pub async fn recovery_target(
    server: &Server,
    r: &RestoreReport,
    cluster: &ClusterRow,
    started: Instant,
) -> CheckResult {
    let mut details = Vec::new();
    match r.recovery_ended_at {
        Some(end) if end >= r.lsn && end.0 <= r.lsn.0 + cairn_engine::wal::LONG_PHD => {}
        Some(end) => details.push(format!(
            "recovery ended at {end}, not at the point {}",
            r.lsn
        )),
        None => details.push("the restore did not report where recovery ended".into()),
    }
    let mut timeline = 0;
    match server.connect_control("postgres").await {
        Err(e) => details.push(format!(
            "the restored server does not accept connections: {e}"
        )),
        Ok(c) => {
            let q = "SELECT s.system_identifier::text, k.timeline_id::bigint, pg_is_in_recovery()
                     FROM pg_control_system() s, pg_control_checkpoint() k";
            match c.query_one(q, &[]).await {
                Err(e) => details.push(format!("read pg_control: {e}")),
                Ok(row) => {
                    let sysid: String = row.get(0);
                    timeline = row.get::<_, i64>(1);
                    let in_recovery: bool = row.get(2);
                    if sysid != cluster.system_id.to_string() {
                        details.push(format!(
                            "system identifier {sysid}, not the cluster's {}",
                            cluster.system_id
                        ));
                    }
                    if timeline != i64::from(cluster.tli) {
                        details.push(format!(
                            "timeline {timeline}, not the cluster's {}",
                            cluster.tli
                        ));
                    }
                    if in_recovery {
                        details.push("the server is still in recovery".into());
                    }
                }
            }
        }
    }
    let outcome = if details.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed
    };
    result(
        Check::RecoveryTarget,
        outcome,
        started,
        counts([("timeline", timeline.max(0) as u64)]),
        details,
    )
}

/// `pg_amcheck --heapallindexed` over every database of the restored server.
pub async fn amcheck(bins: &PgBinaries, user: &OsUser, server: &Server) -> CheckResult {
    let started = Instant::now();
    let Server::Socket {
        dir,
        port,
        user: role,
    } = server
    else {
        return skipped(Check::Amcheck, "amcheck runs on the restored copy only");
    };
    let mut cmd = user.command(&bins.bin("pg_amcheck"));
    cmd.arg("--host")
        .arg(dir)
        .arg("--port")
        .arg(port.to_string())
        .arg("--username")
        .arg(role)
        .args([
            "--no-password",
            "--all",
            "--heapallindexed",
            "--install-missing",
        ]);
    let out = match tokio::task::spawn_blocking(move || cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return result(
                Check::Amcheck,
                Outcome::Failed,
                started,
                BTreeMap::new(),
                vec![format!("cannot run pg_amcheck: {e}")],
            )
        }
        Err(e) => {
            return result(
                Check::Amcheck,
                Outcome::Failed,
                started,
                BTreeMap::new(),
                vec![format!("pg_amcheck task: {e}")],
            )
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut details: Vec<String> = stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(100)
        .map(str::to_string)
        .collect();
    let outcome = if out.status.success() && details.is_empty() {
        Outcome::Passed
    } else {
        if details.is_empty() {
            details.push(format!("pg_amcheck failed ({})", out.status));
        }
        Outcome::Failed
    };
    let problems = stdout
        .lines()
        .filter(|l| l.starts_with("heap table") || l.starts_with("btree index"))
        .count();
    result(
        Check::Amcheck,
        outcome,
        started,
        counts([("problems", problems as u64)]),
        details,
    )
}

/// Each probe's query, in database `postgres`, must return true.
pub async fn probes(server: &Server, probes: &[Probe]) -> CheckResult {
    let started = Instant::now();
    let mut details = Vec::new();
    let mut passed = 0u64;
    let session = match probe_role(server).await {
        Ok(role) => server.connect_as("postgres", &role).await,
        Err(e) => Err(e),
    };
    match session {
        Err(e) => details.push(e),
        Ok(c) => {
            // A probe reads; it changes nothing, even in a scratch copy.
            if let Err(e) = c
                .batch_execute("SET default_transaction_read_only = on")
                .await
            {
                details.push(format!("make the probes' session read-only: {e}"));
            }
            for p in probes {
                match c.simple_query(&p.sql).await {
                    Err(e) => details.push(format!("probe '{}' failed: {e}", p.name)),
                    Ok(msgs) => {
                        let first = msgs.iter().find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => {
                                Some(r.get(0).map(str::to_string))
                            }
                            _ => None,
                        });
                        match first {
                            Some(Some(v)) if v == "t" => passed += 1,
                            other => details.push(format!(
                                "probe '{}' ({}) returned {}, not true",
                                p.name,
                                p.sql,
                                match other {
                                    None => "no row".to_string(),
                                    Some(None) => "NULL".to_string(),
                                    Some(Some(v)) => format!("'{v}'"),
                                }
                            )),
                        }
                    }
                }
            }
        }
    }
    let outcome = if details.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed
    };
    result(
        Check::Probes,
        outcome,
        started,
        counts([("probes", probes.len() as u64), ("passed", passed)]),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::{damaged_file, restore_failed};
    use crate::report::Outcome;
    use cairn_backup::error::Holds;
    use cairn_backup::Error;
    use cairn_engine::layer_map::Unreconstructible;
    use cairn_engine::{Lsn, TimelineId};

    /// Which check a failed restore fails, by the error's kind, never by its words (a WAL
    /// layer's wrong key mentions WAL but is an integrity failure).
    #[test]
    fn a_failed_restore_fails_the_check_its_error_belongs_to() {
        let unreconstructible = |cause| {
            Error::Engine(cairn_engine::Error::Unreconstructible {
                what: "branch 'main' at 0/3000000".into(),
                cause,
                windows: "no point of it is reconstructible".into(),
            })
        };
        let cases = [
            (
                Error::Unfetchable {
                    object: "wal layer ab12".into(),
                    holds: Holds::Wal,
                    detail: "region-a: missing".into(),
                },
                "wal_continuity",
            ),
            (
                Error::Unfetchable {
                    object: "image layer ab12".into(),
                    holds: Holds::Data,
                    detail: "region-a: missing".into(),
                },
                "object_integrity",
            ),
            (
                unreconstructible(Unreconstructible::WalGap {
                    timeline: TimelineId::generate(),
                    from: Lsn(0x100),
                    to: Lsn(0x200),
                }),
                "wal_continuity",
            ),
            (
                unreconstructible(Unreconstructible::NoImage {
                    lsn: Lsn(0x100),
                    earliest: None,
                }),
                "object_integrity",
            ),
            (
                Error::RecoveryEnded {
                    datadir: "/h/verify/data-1".into(),
                    ended_at: "0/2000000".into(),
                    target: "0/3000000".into(),
                },
                "wal_continuity",
            ),
            (
                Error::WrongKey {
                    object: "region 'region-a', metadata of WAL layer ab12".into(),
                    given: "key 1".into(),
                    can_open: "appliance key 2 (elsewhere)".into(),
                },
                "object_integrity",
            ),
            (
                Error::tampered("WAL layer ab12", "fails authentication"),
                "object_integrity",
            ),
        ];
        for (e, check) in cases {
            let msg = e.to_string();
            let [integrity, wal] = restore_failed(&e, std::time::Instant::now());
            let (failed, skipped) = if check == "wal_continuity" {
                (wal, integrity)
            } else {
                (integrity, wal)
            };
            assert_eq!(failed.name, check, "{msg}");
            assert_eq!(failed.outcome, Outcome::Failed, "{msg}");
            assert_eq!(failed.details, std::slice::from_ref(&msg));
            assert_eq!(skipped.outcome, Outcome::Skipped, "{msg}");
        }
    }

    #[test]
    fn the_file_of_a_bad_checksum_line_is_read() {
        let l = |f: &str| {
            format!("checksum verification failed in file \"{f}\", block 0: calculated checksum 22E6 but block contains D9BF")
        };
        assert_eq!(damaged_file(&l("base/5/16389")), Some((Some(5), 16389)));
        assert_eq!(damaged_file(&l("base/5/16389.2")), Some((Some(5), 16389)));
        assert_eq!(
            damaged_file(&l("base/16384/2619_fsm")),
            Some((Some(16384), 2619))
        );
        assert_eq!(damaged_file(&l("global/1262")), Some((None, 1262)));
        assert_eq!(
            damaged_file(&l("pg_tblspc/16390/PG_15_202209061/5/16391")),
            Some((Some(5), 16391))
        );
        assert_eq!(damaged_file(&l("pg_wal/000000010000000000000001")), None);
        assert_eq!(damaged_file(&l("base/x/16389")), None);
        assert_eq!(damaged_file("pg_checksums failed (exit status: 1)"), None);
    }
}
