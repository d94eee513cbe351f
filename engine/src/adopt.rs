//! Adopted clusters: protecting a running PostgreSQL that Cairn did not create.
//!
//! Nothing is installed on the source. Cairn takes a base backup over the replication
//! protocol (`pg_basebackup`) into an image layer and receives WAL through a physical
//! replication slot (`pg_receivewal`) into a spool directory, from which WAL layers are cut
//! exactly as for a compute. The slot is created before the base backup, so the WAL the image
//! needs is retained on the source until it is in a layer. Spool files are deleted only after
//! the layers holding them are committed.
//!
//! The source needs:
//! - a role with the REPLICATION attribute (and its password);
//! - `wal_level = replica` (or `logical`), two free `max_wal_senders` and
//!   `max_replication_slots`;
//! - `pg_hba.conf` lines allowing that role a `replication` connection and a normal one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use crate::catalog::{now_us, ClusterKind, ClusterRow, TimelineRow};
use crate::cluster::ClusterSummary;
use crate::engine::{remove_tree, validate_name, Engine};
use crate::error::{Error, IoContext, Result};
use crate::ids::{ClusterId, Lsn, TimelineId};
use crate::ingest::image::{self, DedupIndex, ImageInput};
use crate::layer::image::ImageMeta;
use crate::pg::process::run;
use crate::progress::Progress;

/// What `cluster adopt` tells an operator the source needs.
pub const SOURCE_REQUIREMENTS: &str = "the source needs a role with REPLICATION \
    (CREATE ROLE cairn LOGIN REPLICATION PASSWORD '...'), wal_level = replica or logical, two \
    free max_wal_senders and max_replication_slots, and pg_hba.conf lines allowing that role a \
    'replication' connection and a normal one from this host (e.g. 'host replication cairn \
    10.0.0.5/32 scram-sha-256')";

pub use crate::access::{source_user, write_compute_hba};
pub use crate::pg::url::PgUrl as SourceUrl;

fn advise(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Refused(format!("{context}: {e}; {SOURCE_REQUIREMENTS}"))
}

/// Cairn's own connection to a source: TLS as its URL asks, no password in clear.
async fn connect_source(src: &SourceUrl) -> Result<tokio_postgres::Client> {
    let (mut cfg, policy) = src.config()?;
    cfg.application_name("cairn")
        .connect_timeout(std::time::Duration::from_secs(15));
    let (host, port) = src.host_port()?;
    crate::pg::tls::connect(cfg, &host, port, &policy, &src.public)
        .await
        .map_err(|e| advise("cannot connect to the source", e))
}

/// A `pg_*` client program pointed at the source, with the password in its environment.
fn client_command(program: &Path, src: &SourceUrl) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            c.env_remove(&k);
        }
    }
    if let Some(pw) = &src.password {
        c.env("PGPASSWORD", pw);
    }
    c.env("LC_ALL", "C");
    c
}

/// Facts about the source gathered before adopting it.
struct SourceFacts {
    major: u32,
    system_id: u64,
    segment_size: u64,
    tli: u32,
    /// Whether the source's pages carry checksums to verify.
    checksums: bool,
}

async fn inspect_source(client: &tokio_postgres::Client, major_here: u32) -> Result<SourceFacts> {
    let q = |sql: &'static str| async move {
        client
            .query_one(sql, &[])
            .await
            .map_err(|e| advise(&format!("cannot inspect the source ({sql})"), e))
    };
    let wal_level: String = q("SHOW wal_level").await?.get(0);
    if wal_level != "replica" && wal_level != "logical" {
        return Err(Error::Refused(format!(
            "the source has wal_level = {wal_level}; set wal_level = replica (ALTER SYSTEM SET \
             wal_level = replica; then restart it) so that its WAL can restore it"
        )));
    }
    let can: bool =
        q("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")
            .await?
            .get(0);
    if !can {
        return Err(Error::Refused(format!(
            "the role in the URL lacks the REPLICATION attribute (ALTER ROLE ... REPLICATION); {SOURCE_REQUIREMENTS}"
        )));
    }
    let num: String = q("SHOW server_version_num").await?.get(0);
    let major = num.parse::<u32>().unwrap_or(0) / 10000;
    if major != major_here {
        return Err(Error::Refused(format!(
            "the source runs PostgreSQL {major}, but the binaries here are PostgreSQL \
             {major_here}; point --pg-bin at PostgreSQL {major} binaries"
        )));
    }
    let sysid: String = q("SELECT system_identifier::text FROM pg_control_system()")
        .await?
        .get(0);
    let seg: String = q("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        .await?
        .get(0);
    let tli: i32 = q("SELECT timeline_id FROM pg_control_checkpoint()")
        .await?
        .get(0);
    let checksums: String = q("SHOW data_checksums").await?.get(0);
    if checksums != "on" {
        tracing::warn!(
            "the source runs without data checksums: its pages cannot be verified on ingest \
             (enable them with pg_checksums --enable while it is stopped)"
        );
    }
    let segment_size = seg.parse::<u64>().unwrap_or(16 << 20);
    // An in-place tablespace (a directory inside pg_tblspc) is left out of a tar-format base
    // backup without a word: refuse before anything is copied.
    let spaces = client
        .query(
            "SELECT spcname::text, pg_tablespace_location(oid) FROM pg_tablespace \
             WHERE spcname NOT IN ('pg_default', 'pg_global')",
            &[],
        )
        .await
        .map_err(|e| advise("cannot list the source's tablespaces", e))?;
    let in_place: Vec<String> = spaces
        .iter()
        .filter(|r| !r.get::<_, String>(1).starts_with('/'))
        .map(|r| r.get::<_, String>(0))
        .collect();
    if !in_place.is_empty() {
        return Err(Error::Refused(format!(
            "the source has in-place tablespaces ({}), which a base backup leaves out: move \
             their relations to a tablespace with an absolute location (ALTER TABLE ... SET \
             TABLESPACE) and drop them; nothing was copied",
            in_place.join(", ")
        )));
    }
    Ok(SourceFacts {
        major,
        system_id: sysid
            .parse()
            .map_err(|_| Error::postgres("read the system identifier", sysid))?,
        // PostgreSQL reports wal_segment_size in bytes since version 11.
        segment_size,
        tli: tli as u32,
        checksums: checksums == "on",
    })
}

/// The LSNs of a base backup: (start, end), from its manifest (in `tars`), and the backup
/// label of the unpacked data directory.
fn backup_range(datadir: &Path, tars: &Path) -> Result<(Lsn, Lsn, String)> {
    let label_path = datadir.join("backup_label");
    let label = std::fs::read_to_string(&label_path).ctx("read", &label_path)?;
    let manifest_path = tars.join("backup_manifest");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).ctx("read", &manifest_path)?)
            .map_err(|e| Error::corrupt(format!("{}", manifest_path.display()), e.to_string()))?;
    let range = manifest["WAL-Ranges"]
        .as_array()
        .and_then(|a| a.last())
        .ok_or_else(|| Error::corrupt(format!("{}", manifest_path.display()), "no WAL-Ranges"))?;
    let lsn = |k: &str| -> Result<Lsn> {
        range[k]
            .as_str()
            .unwrap_or("")
            .parse()
            .map_err(|e: String| Error::corrupt(format!("{}", manifest_path.display()), e))
    };
    Ok((lsn("Start-LSN")?, lsn("End-LSN")?, label))
}

/// Unpacks `pg_basebackup -Ft` output: `base.tar` into `datadir`, each `<OID>.tar` into
/// `ts_root/<OID>` with `pg_tblspc/<OID>` linked to it (so the image walk finds it by OID).
/// Each archive is removed once unpacked.
fn unpack_base_backup(tars: &Path, datadir: &Path, ts_root: &Path) -> Result<()> {
    let base = tars.join("base.tar");
    let st = crate::pg::tar::unpack(&base, datadir)?;
    if st.skipped > 0 {
        tracing::debug!(
            skipped = st.skipped,
            "base.tar members that are not files or directories"
        );
    }
    std::fs::remove_file(&base).ctx("remove", &base)?;
    let placement = crate::tablespace::Placement::under(ts_root.to_path_buf());
    for e in std::fs::read_dir(tars).ctx("read directory", tars)? {
        let e = e.ctx("read directory", tars)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(oid) = name
            .strip_suffix(".tar")
            .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|o| o.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = crate::tablespace::link(datadir, &placement, oid)?;
        crate::pg::tar::unpack(&e.path(), &dir)?;
        std::fs::remove_file(e.path()).ctx("remove", &e.path())?;
    }
    Ok(())
}

/// A running `pg_receivewal` for an adopted cluster.
pub struct Receiver {
    child: Child,
    pub cluster: ClusterId,
}

impl Receiver {
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stop(mut self) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Engine {
    fn source_of(&self, c: &ClusterRow) -> Result<SourceUrl> {
        let public = c.source.clone().ok_or_else(|| {
            Error::Refused(format!("cluster '{}' is not an adopted cluster", c.name))
        })?;
        let password = self
            .home
            .read_secret(c.id, "source-password")
            .ok()
            .filter(|p| !p.is_empty());
        Ok(SourceUrl { public, password })
    }

    /// Connects to an adopted cluster's source as Cairn does (TLS per its URL, no password in
    /// clear) and disconnects: run before a libpq tool is pointed at it.
    pub async fn vet_source(&self, c: &ClusterRow) -> Result<()> {
        connect_source(&self.source_of(c)?).await.map(|_| ())
    }

    /// Starts streaming WAL of an adopted cluster into its spool (until `endpos`, if given).
    pub fn start_receiver(&self, c: &ClusterRow, endpos: Option<Lsn>) -> Result<Receiver> {
        let src = self.source_of(c)?;
        let bins = self.bins_for(c)?;
        let prog = bins.require("pg_receivewal")?;
        let spool = self.home.spool_dir(c.id);
        std::fs::create_dir_all(&spool).ctx("create directory", &spool)?;
        let slot = c.slot.clone().unwrap_or_default();
        let mut cmd = client_command(&prog, &src);
        cmd.arg("-d")
            .arg(src.libpq()?)
            .arg("-D")
            .arg(&spool)
            .args(["--slot", &slot, "--synchronous", "--no-loop", "-w"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(e) = endpos {
            cmd.arg(format!("--endpos={e}"));
        }
        let child = cmd.spawn().map_err(|e| {
            Error::postgres(
                format!("start pg_receivewal for '{}'", c.name),
                e.to_string(),
            )
        })?;
        Ok(Receiver {
            child,
            cluster: c.id,
        })
    }

    /// Ingests whatever the spool holds past the head; removes spool segments that are
    /// entirely in committed layers.
    pub async fn ingest_spool(&self, c: &ClusterRow) -> Result<crate::timeline::SyncReport> {
        let (_, tl) = self.resolve_branch(c, "main").await?;
        let _g = self
            .home
            .lock_timeline(tl.id, &format!("cluster '{}'", c.name))?;
        self.recover_timeline(c, tl.id).await?;
        let tl = self.catalog.timeline(tl.id).await?;
        let spool = self.home.spool_dir(c.id);
        let built = self.write_wal_layers(c, &tl, &spool, None, None).await?;
        let (head, _) = self.commit_layers(c, &tl, None, &built).await?;
        // Segments wholly before the head are in layers now.
        if let Ok(rd) = std::fs::read_dir(&spool) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    continue;
                }
                let Ok(segno_hi) = u64::from_str_radix(&name[8..16], 16) else {
                    continue;
                };
                let Ok(segno_lo) = u64::from_str_radix(&name[16..24], 16) else {
                    continue;
                };
                let per_id = 0x1_0000_0000u64 / c.segment_size;
                let segno = segno_hi * per_id + segno_lo;
                if (segno + 1) * c.segment_size <= head.0 {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(crate::timeline::SyncReport {
            timeline: tl.id,
            from: tl.head,
            to: head,
            layers: built.len(),
        })
    }

    /// Receives the source's WAL up to its current flush position and ingests it.
    pub async fn sync_adopted(&self, c: &ClusterRow) -> Result<crate::timeline::SyncReport> {
        let src = self.source_of(c)?;
        let client = connect_source(&src).await?;
        let flush: String = client
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .map_err(|e| advise("cannot read the source's WAL position", e))?
            .get(0);
        let flush: Lsn = flush
            .parse()
            .map_err(|e: String| Error::postgres("flush lsn", e))?;
        let (_, tl) = self.resolve_branch(c, "main").await?;
        if flush > tl.head {
            let r = self.start_receiver(c, Some(flush))?;
            let status = tokio::task::spawn_blocking(move || r.child.wait_with_output())
                .await
                .map_err(|e| Error::io("pg_receivewal", std::io::Error::other(e.to_string())))?
                .map_err(|e| Error::io("pg_receivewal", e))?;
            if !status.status.success() {
                return Err(advise(
                    "pg_receivewal failed",
                    String::from_utf8_lossy(&status.stderr).trim(),
                ));
            }
        }
        self.ingest_spool(c).await
    }

    /// Adopts a running server: slot, base backup, first WAL, catalog.
    pub async fn adopt_cluster(
        &self,
        name: &str,
        src: SourceUrl,
        slot: Option<&str>,
        progress: &Arc<Progress>,
    ) -> Result<ClusterSummary> {
        validate_name("cluster", name)?;
        let _g = self.home.lock_clusters()?;
        if self.catalog.cluster_by_name(name).await?.is_some() {
            return Err(Error::Refused(format!("cluster '{name}' already exists")));
        }
        let bins = self.bins()?.clone();
        let basebackup = bins.require("pg_basebackup")?;
        bins.require("pg_receivewal")?;
        let client = connect_source(&src).await?;
        let facts = inspect_source(&client, bins.major).await?;
        let slot = slot
            .map(str::to_string)
            .unwrap_or_else(|| format!("cairn_{}", name.replace('-', "_")));
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&slot],
            )
            .await
            .map_err(|e| {
                Error::Refused(format!(
                    "cannot create replication slot '{slot}' on the source ({e}); if a previous \
                     adoption left it, drop it there (SELECT pg_drop_replication_slot('{slot}')) \
                     or pass --slot"
                ))
            })?;
        let cid = ClusterId::generate();
        let tid = TimelineId::generate();
        let cluster = ClusterRow {
            id: cid,
            name: name.to_string(),
            kind: ClusterKind::Adopted,
            pg_major: facts.major,
            system_id: facts.system_id,
            segment_size: facts.segment_size,
            tli: facts.tli,
            source: Some(src.public.clone()),
            slot: Some(slot.clone()),
            created_at_us: now_us(),
        };
        let res = self
            .adopt_inner(
                &cluster,
                tid,
                &src,
                &client,
                &basebackup,
                facts.checksums,
                progress,
            )
            .await;
        if let Err(e) = res {
            let _ = client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await;
            let _ = remove_tree(&self.home.cluster_dir(cid));
            let _ = remove_tree(&self.home.spool_dir(cid));
            self.home.remove_secrets(cid);
            return Err(e);
        }
        let c = self.resolve_cluster(Some(name)).await?;
        self.cluster_summary(&c).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn adopt_inner(
        &self,
        cluster: &ClusterRow,
        tid: TimelineId,
        src: &SourceUrl,
        client: &tokio_postgres::Client,
        basebackup: &Path,
        checksums: bool,
        progress: &Arc<Progress>,
    ) -> Result<()> {
        let work: PathBuf = self.home.spool_dir(cluster.id).join("basebackup");
        remove_tree(&work)?;
        let (tars, staging) = (work.join("tar"), work.join("pgdata"));
        std::fs::create_dir_all(&tars).ctx("create directory", &tars)?;
        progress.phase("base backup", 0);
        // Tar format: every byte lands in `tars`, whatever tablespaces the source has or
        // creates meanwhile (plain format would write each at the source's path, here).
        let mut cmd = client_command(basebackup, src);
        cmd.arg("-d")
            .arg(src.libpq()?)
            .arg("-D")
            .arg(&tars)
            .args(["-Ft", "-X", "none", "-c", "fast", "--no-sync", "-w", "-l"])
            .arg(format!("cairn {}", cluster.name));
        tokio::task::spawn_blocking(move || run(&mut cmd, "pg_basebackup"))
            .await
            .map_err(|e| Error::io("pg_basebackup", std::io::Error::other(e.to_string())))?
            .map_err(|e| advise("the base backup failed", e))?;
        let (t, d) = (tars.clone(), staging.clone());
        let ts_root = work.join("tablespaces");
        let tr = ts_root.clone();
        tokio::task::spawn_blocking(move || unpack_base_backup(&t, &d, &tr))
            .await
            .map_err(|e| Error::io("unpack task", std::io::Error::other(e.to_string())))??;
        let tablespaces = crate::compute_image::tablespaces(client).await?;
        let (start, end, label) = backup_range(&staging, &tars)?;
        let tl = TimelineRow {
            id: tid,
            cluster_id: cluster.id,
            ancestor: None,
            ancestor_prev: None,
            head: start,
            head_prev: None,
            created_at_us: now_us(),
        };
        let out_dir = self.home.timeline_dir(cluster.id, tid);
        progress.phase("image", image::estimate_size(&staging));
        let p = progress.clone();
        let st = staging.clone();
        let draft = tokio::task::spawn_blocking(move || {
            image::build(
                &out_dir,
                &ImageInput {
                    datadir: &st,
                    backup_start: start,
                    checksums,
                },
                &DedupIndex::default(),
                &p.done,
            )
        })
        .await
        .map_err(|e| Error::io("image task", std::io::Error::other(e.to_string())))?
        .map_err(|e| match e {
            Ok(page) => page.into_error(None),
            Err(e) => e,
        })?;
        let mut meta = ImageMeta::of_backup(cluster, tid, start, end, label);
        meta.tablespaces = tablespaces;
        let img = tokio::task::spawn_blocking(move || draft.finish(meta))
            .await
            .map_err(|e| Error::io("image task", std::io::Error::other(e.to_string())))??;
        remove_tree(&work)?;
        // The WAL the image needs, through the slot.
        progress.phase("WAL", 0);
        if let Some(pw) = &src.password {
            self.home.write_secret(cluster.id, "source-password", pw)?;
        }
        let r = self.start_receiver(cluster, Some(end))?;
        let out = tokio::task::spawn_blocking(move || r.child.wait_with_output())
            .await
            .map_err(|e| Error::io("pg_receivewal", std::io::Error::other(e.to_string())))?
            .map_err(|e| Error::io("pg_receivewal", e))?;
        if !out.status.success() {
            return Err(advise(
                "receiving WAL failed",
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        let wals = self
            .write_wal_layers(
                cluster,
                &tl,
                &self.home.spool_dir(cluster.id),
                None,
                Some(end),
            )
            .await?;
        let head = wals.last().map_or(tl.head, |w| w.meta.end);
        if head < end {
            return Err(Error::postgres(
                "receive the base backup's WAL",
                format!("WAL reached {head}, the image needs it up to {end}"),
            ));
        }
        self.commit_new_cluster(cluster, &tl, &img, &wals).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_split_from_urls() {
        let s = SourceUrl::parse("postgres://cairn:p%40ss@db1:5432/postgres").unwrap();
        assert_eq!(s.public, "postgres://cairn@db1:5432/postgres");
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        assert!(!format!("{s:?}").contains("p@ss"));
        assert_eq!(source_user(&s.public).as_deref(), Some("cairn"));
        assert!(SourceUrl::parse("host=x user=y").is_err());
        let n = SourceUrl::parse("postgresql://db1/postgres").unwrap();
        assert!(n.password.is_none());
        // A password given as a parameter is taken out of the stored URL too.
        let q =
            SourceUrl::parse("postgres://cairn@db1/postgres?password=s3cret&sslmode=verify-full")
                .unwrap();
        assert_eq!(q.password.as_deref(), Some("s3cret"));
        assert_eq!(
            q.public,
            "postgres://cairn@db1/postgres?sslmode=verify-full"
        );
        assert!(q.libpq().unwrap().ends_with("?sslmode=verify-full"));
        // An '@' in the query names no host.
        let at = SourceUrl::parse("postgres://cairn@db1/postgres?application_name=a@evil").unwrap();
        assert_eq!(at.host_port().unwrap(), ("db1".to_string(), 5432));
        // Non-ASCII after '%' is kept as it is, not a panic.
        let u = SourceUrl::parse("postgres://cairn:%a\u{e9}x@db1/postgres").unwrap();
        assert_eq!(u.password.as_deref(), Some("%a\u{e9}x"));
        // A remote source without sslmode: TLS is required of the tools too.
        assert!(n.libpq().unwrap().ends_with("?sslmode=require"));
        let local = SourceUrl::parse("postgres://cairn@127.0.0.1:5433/postgres").unwrap();
        assert!(local.libpq().unwrap().ends_with("?sslmode=disable"));
    }
}
