//! `cairn export`: a logical copy (`pg_dump` custom format) of one database at any point,
//! sealed like any other object, to a file or to regions.
//!
//! Invariants:
//! - The dump is taken from a scratch copy at the point, never from a branch in use: a scratch
//!   branch of this appliance (from the local layers), or a data directory restored from a
//!   region (on a machine whose catalog lacks the cluster, or with `from_regions`). The scratch
//!   copy is removed afterwards, whether the export succeeded or not.
//! - The plaintext dump exists only in `HOME/export/work-ID` (mode 0700), and only until it is
//!   sealed; what leaves the machine is the sealed object, its key object and a signed manifest
//!   (see `cairn_backup::export`).
//! - A region export is complete when its manifest is listed; an export file appears under its
//!   name only once fully written and synced.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use cairn_backup::export::{new_id, Manifest};
use cairn_backup::keys::Identity;
use cairn_backup::{Error, Protection, Result};
use cairn_engine::branch::PointSpec;
use cairn_engine::catalog::ClusterRow;
use cairn_engine::engine::fmt_time;
use cairn_engine::pg::binaries::PgBinaries;
use cairn_engine::progress::Progress;

use crate::recovery::PrivateServer;
use crate::report::RestoreReport;
use crate::request::{RestoreRequest, Target};

/// Where an export goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A self-contained export file (which must not exist yet).
    File(PathBuf),
    /// These regions of the appliance.
    Regions(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub cluster: String,
    pub branch: String,
    pub point: PointSpec,
    pub database: String,
    pub dest: Destination,
    /// Read the point from the regions even when the cluster is in the local catalog.
    pub from_regions: bool,
    /// With a region source: the region to read first.
    pub region: Option<String>,
    pub cluster_id: Option<String>,
    pub identity: Option<Identity>,
    /// Signing keys trusted besides the appliance's (a recovery kit's, `--trust-signer`).
    pub signers: Vec<[u8; 32]>,
    pub parallel: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportPhases {
    /// Bringing the scratch copy up at the point (branch + compute, or a restore).
    pub scratch: f64,
    pub dump: f64,
    /// Hashing and sealing (digest pass).
    pub seal: f64,
    /// Writing the file or uploading to the regions.
    pub write: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub manifest: Manifest,
    /// The signing key of the manifest, in full (`export decrypt --trust-signer` elsewhere).
    pub signer: String,
    /// The file written, or `region NAME` for each region.
    pub destinations: Vec<String>,
    /// The restore that produced the scratch copy, when the point came from a region.
    pub restore: Option<RestoreReport>,
    pub phases: ExportPhases,
    pub total_seconds: f64,
}

/// How `pg_dump` reaches the scratch copy.
struct DumpFrom {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
}

fn pg_dump_bin(bins: &PgBinaries) -> Result<PathBuf> {
    let p = bins.bin("pg_dump");
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Refused(format!(
            "pg_dump is not in {}: install the PostgreSQL {} client programs (Debian: \
             postgresql-client-{})",
            bins.bindir.display(),
            bins.major,
            bins.major
        )))
    }
}

fn pg_dump_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| Error::io(format!("run {}", bin.display()), e))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A `.pgpass` line's field: `:` and `\` are escaped.
fn pgpass_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// A database name handed to `pg_dump --dbname`: libpq would read one holding `=` or a URI
/// scheme as a whole connection string (another host, another user), so such names are
/// refused.
pub fn validate_database(name: &str) -> Result<()> {
    let lower = name.to_ascii_lowercase();
    if name.is_empty()
        || name.len() > 63
        || name.contains('=')
        || lower.starts_with("postgres://")
        || lower.starts_with("postgresql://")
        || name.chars().any(char::is_control)
    {
        return Err(Error::Refused(format!(
            "'{name}' cannot be exported by name: a database name for --database must be 1 to 63 \
             characters without '=', control characters or a postgres:// prefix"
        )));
    }
    Ok(())
}

/// Runs `pg_dump -Fc` of `database` into `out`. The password goes through a 0600 password
/// file, never the command line or the environment, and only for this host and port.
fn run_pg_dump(bin: &Path, from: &DumpFrom, database: &str, work: &Path, out: &Path) -> Result<()> {
    validate_database(database)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--format=custom")
        .arg("--no-password")
        .arg("--host")
        .arg(&from.host)
        .arg("--port")
        .arg(from.port.to_string())
        .arg("--username")
        .arg(&from.user)
        .arg("--file")
        .arg(out)
        .arg("--dbname")
        .arg(database)
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE");
    if let Some(pw) = &from.password {
        let pass = work.join("pgpass");
        cairn_engine::fsutil::write_atomic(
            &pass,
            format!(
                "{}:{}:*:{}:{}\n",
                // libpq matches a socket directory against "localhost".
                if from.host.starts_with('/') {
                    "localhost".to_string()
                } else {
                    pgpass_field(&from.host)
                },
                from.port,
                pgpass_field(&from.user),
                pgpass_field(pw)
            )
            .as_bytes(),
            0o600,
        )
        .map_err(|e| Error::io(format!("write {}", pass.display()), e))?;
        cmd.env("PGPASSFILE", &pass);
    }
    let outp = cmd
        .output()
        .map_err(|e| Error::io(format!("run {}", bin.display()), e))?;
    if !outp.status.success() {
        return Err(Error::Refused(format!(
            "pg_dump of database '{database}' failed ({}): {}",
            outp.status,
            String::from_utf8_lossy(&outp.stderr).trim()
        )));
    }
    Ok(())
}

fn scratch_suffix() -> String {
    cairn_engine::TimelineId::generate().to_string()[..12].to_string()
}

/// Exports `req`: scratch copy, `pg_dump`, seal, write or upload.
pub async fn export(
    p: &Protection,
    req: &ExportRequest,
    progress: &Arc<Progress>,
) -> Result<ExportReport> {
    let t0 = Instant::now();
    let engine = &p.engine;
    // Refusals before any work.
    validate_database(&req.database)?;
    match &req.dest {
        Destination::File(f) => {
            if f.exists() {
                return Err(Error::Refused(format!(
                    "{} already exists: choose another name or remove it first",
                    f.display()
                )));
            }
        }
        Destination::Regions(names) => {
            if names.is_empty() {
                return Err(Error::Refused("name at least one region".into()));
            }
            for n in names {
                p.regions.get(n)?;
            }
        }
    }
    let local = engine.catalog.cluster_by_name(&req.cluster).await?;
    let id = new_id();
    engine.home.sweep_scratch();
    // HOME/export is 0711: the postgres OS user reaches the scratch data directory in it.
    let work = engine
        .home
        .scratch_dir("export", &format!("work-{id}"), 0o711, 0o700)?;
    let dump = work.path.join("dump");
    let mut phases = ExportPhases::default();

    let (cluster, lsn, point_time, source, restore) = match local {
        Some(c) if !req.from_regions => {
            let (lsn, time) =
                dump_local(p, &c, req, &work.path, &dump, progress, &mut phases).await?;
            (c, lsn, time, "local layers".to_string(), None)
        }
        _ => {
            let r = dump_from_region(p, req, &work.path, &dump, progress, &mut phases).await?;
            let c = r
                .cluster_row
                .clone()
                .ok_or_else(|| Error::Refused("the restore did not name its cluster".into()))?;
            (
                c,
                r.lsn.to_string(),
                r.point_time.clone(),
                format!("region {}", r.region),
                Some(r),
            )
        }
    };

    let t = Instant::now();
    // The plaintext dump is on disk, not yet sealed.
    cairn_engine::failpoint::hit("export-before-seal");
    progress.phase("seal", 0);
    let bin = pg_dump_bin(engine.bins_for(&cluster)?)?;
    let manifest = Manifest {
        format: 1,
        id: id.clone(),
        cluster_id: cluster.id.to_string(),
        cluster: cluster.name.clone(),
        branch: req.branch.clone(),
        database: req.database.clone(),
        point: match &req.point {
            PointSpec::Head => "latest".into(),
            other => other.to_string(),
        },
        lsn,
        point_time,
        pg_major: cluster.pg_major,
        pg_dump: pg_dump_version(&bin)?,
        source,
        created_at: fmt_time(cairn_engine::catalog::now_us()),
        dump_bytes: 0,
        dump_sha256: String::new(),
        sealed_bytes: 0,
        sealed_sha256: String::new(),
        key_id: String::new(),
    };
    let for_regions = matches!(req.dest, Destination::Regions(_));
    let prepared = p.prepare_export(&dump, manifest, for_regions).await?;
    phases.seal = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut destinations = Vec::new();
    match &req.dest {
        Destination::File(f) => {
            progress.phase("write", prepared.manifest.sealed_bytes);
            p.write_export_file(&prepared, &dump, f, Some(progress.clone()))
                .await?;
            destinations.push(f.display().to_string());
        }
        Destination::Regions(names) => {
            for n in names {
                progress.phase(&format!("upload to {n}"), 0);
                let region = p.regions.get(n)?;
                p.put_export(region, &prepared, &dump).await?;
                destinations.push(format!("region {n}"));
            }
        }
    }
    phases.write = t.elapsed().as_secs_f64();
    drop(work);
    let report = ExportReport {
        manifest: prepared.manifest.clone(),
        signer: hex::encode(p.signer().public()),
        destinations,
        restore,
        phases,
        total_seconds: t0.elapsed().as_secs_f64(),
    };
    tracing::info!(export = %report.manifest.id, cluster = %report.manifest.cluster, database = %report.manifest.database, lsn = %report.manifest.lsn, "export written");
    Ok(report)
}

/// The local route: a scratch branch at the point, a compute on it, `pg_dump`, and the branch
/// removed again. Returns the point's LSN and time.
async fn dump_local(
    p: &Protection,
    c: &ClusterRow,
    req: &ExportRequest,
    work: &Path,
    dump: &Path,
    progress: &Arc<Progress>,
    phases: &mut ExportPhases,
) -> Result<(String, Option<String>)> {
    let engine = &p.engine;
    let bin = pg_dump_bin(engine.bins_for(c)?)?;
    let t = Instant::now();
    progress.phase("scratch branch", 0);
    let scratch = format!(
        "{}{}",
        cairn_engine::branch::SCRATCH_PREFIX,
        scratch_suffix()
    );
    // Held while the scratch branch lives: a sweep of another process leaves it alone.
    let _lock = engine.home.lock(
        &format!("scratch-branch-{scratch}"),
        "an export's scratch branch",
        std::time::Duration::ZERO,
    )?;
    let info = engine
        .branch_create(c, &scratch, &req.branch, &req.point)
        .await
        .map_err(|e| {
            Error::Refused(format!(
                "{e}\n(the point may still be in a region: add --from-regions to export from there)"
            ))
        })?;
    let result = async {
        let ci = engine.compute_start(c, &scratch, None, progress).await?;
        phases.scratch = t.elapsed().as_secs_f64();
        let creds = engine.credentials(c)?;
        let from = DumpFrom {
            host: "127.0.0.1".into(),
            port: ci.port,
            user: creds.user.clone(),
            password: Some(creds.password.clone()),
        };
        let t = Instant::now();
        progress.phase("pg_dump", 0);
        let (b, w, d, db) = (
            bin.clone(),
            work.to_path_buf(),
            dump.to_path_buf(),
            req.database.clone(),
        );
        tokio::task::spawn_blocking(move || run_pg_dump(&b, &from, &db, &w, &d))
            .await
            .map_err(|e| Error::io("pg_dump task", std::io::Error::other(e.to_string())))??;
        phases.dump = t.elapsed().as_secs_f64();
        Ok::<_, Error>(())
    }
    .await;
    // The scratch branch goes whatever happened.
    if let Err(e) = engine.compute_stop(c, &scratch).await {
        tracing::warn!(branch = %scratch, error = %e, "could not stop the export's scratch compute");
    }
    if let Err(e) = engine.branch_delete(c, &scratch).await {
        tracing::warn!(branch = %scratch, error = %e, "could not delete the export's scratch branch");
    }
    result?;
    let lsn = info.branch_lsn.unwrap_or(info.head).to_string();
    Ok((lsn, info.branch_time_us.map(fmt_time)))
}

/// The region route: restore the point into a scratch data directory, start a private server
/// on it, `pg_dump`, stop it, remove the directory.
async fn dump_from_region(
    p: &Protection,
    req: &ExportRequest,
    work: &Path,
    dump: &Path,
    progress: &Arc<Progress>,
    phases: &mut ExportPhases,
) -> Result<RestoreReport> {
    let t = Instant::now();
    // Beside the work directory: the postgres OS user must reach it (HOME/export is 0711).
    let data = p.engine.home.scratch_dir(
        "export",
        &format!("data-{}", scratch_suffix()),
        0o711,
        0o700,
    )?;
    // Its tablespaces, removed with it.
    let ts = p.engine.home.scratch_dir(
        "export",
        &format!("tablespaces-{}", scratch_suffix()),
        0o711,
        0o711,
    )?;
    let rreq = RestoreRequest {
        cluster: req.cluster.clone(),
        branch: req.branch.clone(),
        point: req.point.clone(),
        target: Target::Datadir {
            dir: data.path.clone(),
            recover: true,
            delta: false,
            tablespaces: crate::TablespaceMap {
                entries: vec![],
                root: Some(ts.path.clone()),
            },
        },
        region: req.region.clone(),
        cluster_id: req.cluster_id.clone(),
        identity: req.identity.clone(),
        signers: req.signers.clone(),
        parallel: req.parallel,
    };
    let report = crate::restore(p, &rreq, progress).await?;
    let cluster = report
        .cluster_row
        .clone()
        .ok_or_else(|| Error::Refused("the restore did not name its cluster".into()))?;
    let bin = pg_dump_bin(p.engine.bins_for(&cluster)?)?;
    let server = PrivateServer::start(&p.engine, &cluster, &data.path)?;
    phases.scratch = t.elapsed().as_secs_f64();
    let from = DumpFrom {
        host: server.socket_dir().display().to_string(),
        port: server.port,
        user: server.user.clone(),
        password: None,
    };
    let t = Instant::now();
    progress.phase("pg_dump", 0);
    let (w, d, db) = (work.to_path_buf(), dump.to_path_buf(), req.database.clone());
    let dumped = tokio::task::spawn_blocking(move || run_pg_dump(&bin, &from, &db, &w, &d))
        .await
        .map_err(|e| Error::io("pg_dump task", std::io::Error::other(e.to_string())));
    let stopped = server.stop();
    dumped??;
    stopped?;
    phases.dump = t.elapsed().as_secs_f64();
    drop(data);
    drop(ts);
    Ok(report)
}
