//! Commands of the protection layer: `key`, `regions`, `backup`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cairn_appliance::backup::ImageStep;
use cairn_appliance::points::PointStatus;
use cairn_backup::keys::Identity;
use cairn_backup::kit::RecoveryKit;
use cairn_engine::engine::fmt_time;
use cairn_engine::progress::Progress;
use cairn_units::{fmt_duration, parse_duration};
use clap::Subcommand;

use crate::args::ClusterOpt;
use crate::args::Global;
use crate::bar::with_progress;
use crate::open::open;
use crate::output::{bytes, print_json, table};

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Print the appliance's public key (its age recipient) and signing key id.
    #[command(
        after_help = "Examples:\n  cairn key export-public\n  cairn key export-public --json"
    )]
    ExportPublic,
    /// Show the keyring (every recipient data keys are wrapped for) and the trusted signers.
    #[command(after_help = "Examples:\n  cairn key list")]
    List,
    /// Write the recovery kit: what disaster recovery needs besides one region (the signing
    /// keys to trust, the keyring, the appliance identity). Keep it offline.
    #[command(
        after_help = "Examples:\n  cairn key export-recovery-kit --out /secure/cairn.kit\n  \
        cairn key export-recovery-kit --out cairn-public.kit --without-identity\n\n\
        With the kit and any one region:\n  \
        cairn restore shop --to-datadir DIR --region NAME --recovery-kit cairn.kit\n  \
        cairn catalog rebuild --from-region NAME --recovery-kit cairn.kit\n\n\
        The kit holds the appliance's secret key unless --without-identity: whoever holds it and \
        can read a region can decrypt every backup. Keep it offline (a safe, a password manager), \
        apart from the appliance and the regions, and export a new one after every key change."
    )]
    ExportRecoveryKit {
        /// The file to write (mode 0600; it must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Leave the secret identity out: a restore then needs --identity (an escrow key) too.
        #[arg(long)]
        without_identity: bool,
    },
    /// Write a new age identity file (mode 0600) for an escrow key holder; prints its recipient.
    #[command(
        after_help = "Examples:\n  cairn key new-identity --out /secure/escrow.age\n  \
        cairn key add-recipient \"$(grep -o 'age1.*' /secure/escrow.age | head -1)\""
    )]
    NewIdentity {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Wrap every data key for one more age recipient (an escrow key). Payloads are unchanged.
    #[command(
        after_help = "Examples:\n  cairn key add-recipient age1qyqs... --label \"vault escrow\""
    )]
    AddRecipient {
        recipient: String,
        #[arg(long, default_value = "escrow")]
        label: String,
    },
    /// Stop wrapping data keys for a recipient (by age1... or key id). Payloads are unchanged.
    #[command(after_help = "Examples:\n  cairn key remove-recipient 1a2b3c4d5e6f7a8b")]
    RemoveRecipient { recipient: String },
    /// Replace the appliance identity; every data key is re-wrapped, payloads stay byte for byte.
    #[command(
        after_help = "Examples:\n  cairn key rotate\n\nThe old identity is kept in HOME/keys as \
        appliance-<time>.retired; delete it once you are sure."
    )]
    Rotate,
    /// Crypto-shred a cluster: after a grace period its key objects are destroyed in every region.
    #[command(after_help = "Examples:\n  cairn key shred old-shop --grace 7d\n  \
        cairn key shred old-shop --cancel\n  cairn key shred scratch --grace 0s --yes")]
    Shred {
        cluster: String,
        /// Time before the shred happens (s, m, h, d; at most 3650d); it can be cancelled
        /// until then.
        #[arg(long, default_value = "7d")]
        grace: String,
        /// Cancel a scheduled shred.
        #[arg(long)]
        cancel: bool,
        /// Confirm a shred with no grace period (it happens now).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegionsCmd {
    /// List the configured regions (HOME/regions.toml) and what they hold.
    #[command(after_help = "Examples:\n  cairn regions list")]
    List,
    /// Find missing or corrupt objects in each region (HEAD/list; --full reads and decrypts all).
    #[command(
        after_help = "Examples:\n  cairn regions check\n  cairn regions check --full --region s3-eu\n  \
        cairn regions check --full --identity /secure/escrow.age"
    )]
    Check {
        /// Read every object back: ciphertext hash, key unwrap, every chunk, plaintext hash.
        #[arg(long)]
        full: bool,
        #[arg(long)]
        region: Option<String>,
        /// Open data keys with this age identity instead of the appliance's.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Carry out due shreds, queue objects the catalog no longer has and delete those that are
    /// due (`cairn up` does this every 30 s).
    #[command(
        after_help = "Examples:\n  cairn regions gc\n\nObjects wait `deletion_delay` (regions.toml) \
        and are deleted only when no index in their region names them."
    )]
    Gc,
    /// Copy good objects from a healthy region over missing or corrupt ones.
    #[command(
        after_help = "Examples:\n  cairn regions repair\n  cairn regions repair --region s3-eu"
    )]
    Repair {
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Take an image layer now and ship everything until it is durable in min_copies regions.
    #[command(
        after_help = "Examples:\n  cairn backup now\n  cairn backup now --cluster shop --no-image"
    )]
    Now {
        #[command(flatten)]
        cluster: ClusterOpt,
        /// Ship what exists (and the WAL of running computes) without taking a new image first.
        #[arg(long)]
        no_image: bool,
    },
    /// Recovery points per branch and region: what each region can restore.
    #[command(after_help = "Examples:\n  cairn backup list\n  cairn backup list --json")]
    List {
        #[command(flatten)]
        cluster: ClusterOpt,
    },
}

pub async fn key(g: &Global, cmd: KeyCmd) -> Result<()> {
    if let KeyCmd::NewIdentity { out } = &cmd {
        if out.exists() {
            bail!("{} already exists; pick another file", out.display());
        }
        let id = age::x25519::Identity::generate();
        let text = format!(
            "# cairn escrow identity, created {}\n# public key: {}\n{}\n",
            chrono::Utc::now().to_rfc3339(),
            id.to_public(),
            age::secrecy::ExposeSecret::expose_secret(&id.to_string())
        );
        cairn_engine::fsutil::write_atomic(out, text.as_bytes(), 0o600)
            .with_context(|| format!("write {}", out.display()))?;
        println!("{}", id.to_public());
        return Ok(());
    }
    let app = open(g).await?;
    let p = app.protection();
    match cmd {
        KeyCmd::ExportPublic => {
            let v = serde_json::json!({
                "recipient": p.identity().recipient,
                "key_id": p.identity().id(),
                "signing_key_id": p.signer().id(),
                "signing_public_key": hex::encode(p.signer().public()),
            });
            if g.json {
                return print_json(&v);
            }
            println!("{}", p.identity().recipient);
            eprintln!(
                "key id {}, signing key id {} ({})",
                p.identity().id(),
                p.signer().id(),
                hex::encode(p.signer().public())
            );
        }
        KeyCmd::List => {
            let r = p.recipients();
            let signers: Vec<String> = p.trusted().iter().map(hex::encode).collect();
            if g.json {
                return print_json(&serde_json::json!({
                    "recipients": r,
                    "keyring_fingerprint": p.keyring_fingerprint(),
                    "trusted_signers": signers,
                    "fenced": p.fenced(),
                }));
            }
            table(
                &["KEY ID", "ROLE", "LABEL", "RECIPIENT"],
                r.iter()
                    .map(|e| vec![e.id(), e.role.clone(), e.label.clone(), e.recipient.clone()])
                    .collect(),
            );
            println!("keyring fingerprint {}", p.keyring_fingerprint());
            for s in signers {
                println!("trusted signing key {s}");
            }
            if p.fenced() {
                println!("FENCED: rebuilt and not promoted (`cairn catalog promote`)");
            }
        }
        KeyCmd::ExportRecoveryKit {
            out,
            without_identity,
        } => {
            let kit = RecoveryKit {
                signers: p.trusted(),
                keyring: p.recipients(),
                identity: (!without_identity).then(|| p.identity()),
            };
            kit.write(&out)?;
            if g.json {
                return print_json(&serde_json::json!({
                    "kit": out,
                    "keyring_fingerprint": p.keyring_fingerprint(),
                    "signers": kit.signers.iter().map(hex::encode).collect::<Vec<_>>(),
                    "identity": !without_identity,
                }));
            }
            println!("wrote the recovery kit {} (mode 0600)", out.display());
            if without_identity {
                println!(
                    "it holds no secret key: a restore needs it plus an identity (--identity)"
                );
            } else {
                println!(
                    "it holds the appliance's SECRET key: keep it offline (a safe, a password \
                     manager), apart from this machine and from the regions"
                );
            }
            println!(
                "disaster recovery: `cairn catalog rebuild --from-region NAME --recovery-kit {}`",
                out.display()
            );
        }
        KeyCmd::AddRecipient { recipient, label } => {
            let r = p.add_recipient(&recipient, &label).await?;
            report_rewrap(g, "added the recipient", &r)?;
        }
        KeyCmd::RemoveRecipient { recipient } => {
            let r = p.remove_recipient(&recipient).await?;
            report_rewrap(g, "removed the recipient", &r)?;
        }
        KeyCmd::Rotate => {
            let (old, new, r) = p.rotate().await?;
            report_rewrap(g, &format!("rotated the appliance key {old} -> {new}"), &r)?;
        }
        KeyCmd::Shred {
            cluster,
            grace,
            cancel,
            yes,
        } => {
            if cancel {
                p.cancel_shred(&cluster).await?;
                println!("cancelled the shred of cluster '{cluster}'");
                return Ok(());
            }
            let grace = parse_duration(&grace).map_err(anyhow::Error::msg)?;
            if grace > MAX_GRACE {
                bail!(
                    "--grace {} is longer than the longest grace cairn accepts (3650d); to keep \
                     a cluster, do not shred it",
                    fmt_duration(grace)
                );
            }
            if grace.is_zero() && !yes {
                bail!(
                    "a shred without grace destroys cluster '{cluster}' and makes its backups \
                     unreadable now; add --yes to confirm"
                );
            }
            let grace_us = i64::try_from(grace.as_micros())
                .map_err(|_| anyhow::anyhow!("--grace is out of range"))?;
            let s = p.schedule_shred(&cluster, grace_us).await?;
            if grace.is_zero() {
                let done = p.run_due_shreds().await?;
                if done.contains(&cluster) {
                    println!(
                        "shredded cluster '{cluster}': its key objects are gone from every region"
                    );
                } else {
                    bail!("the shred of '{cluster}' could not reach every region yet; `cairn up` retries it");
                }
            } else {
                println!(
                    "cluster '{cluster}' will be shredded at {} (cancel with `cairn key shred {cluster} --cancel`)",
                    fmt_time(s.due_at_us)
                );
            }
        }
        KeyCmd::NewIdentity { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn report_rewrap(g: &Global, what: &str, r: &cairn_backup::keyring::RewrapReport) -> Result<()> {
    if g.json {
        return print_json(r);
    }
    println!(
        "{what}: {} data key(s) re-wrapped, {} key object(s) rewritten in the regions; payload \
         objects unchanged",
        r.keys, r.key_objects_written
    );
    if !r.deferred.is_empty() {
        println!(
            "regions not reachable now: {} (updated when they are back)",
            r.deferred.join(", ")
        );
    }
    Ok(())
}

pub async fn regions(g: &Global, cmd: RegionsCmd) -> Result<()> {
    let app = open(g).await?;
    let p = app.protection();
    match cmd {
        RegionsCmd::List => {
            let ships = p.state().shipments().await?;
            let rows: Vec<serde_json::Value> = p
                .regions
                .regions
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name,
                        "url": r.url,
                        "tags": r.tags,
                        "objects": ships.iter().filter(|(_, x, _)| *x == r.name).count(),
                    })
                })
                .collect();
            if g.json {
                return print_json(&serde_json::json!({
                    "min_copies": p.regions.min_copies, "regions": rows
                }));
            }
            table(
                &["REGION", "URL", "OBJECTS", "TAGS"],
                rows.iter()
                    .map(|v| {
                        vec![
                            v["name"].as_str().unwrap_or_default().into(),
                            v["url"].as_str().unwrap_or_default().into(),
                            v["objects"].to_string(),
                            v["tags"].to_string(),
                        ]
                    })
                    .collect(),
            );
            println!("min_copies = {}", p.regions.min_copies);
        }
        RegionsCmd::Check {
            full,
            region,
            identity,
        } => {
            let id = identity.as_deref().map(Identity::load).transpose()?;
            let r = p
                .check_regions(full, region.as_deref(), id.as_ref())
                .await?;
            if g.json {
                print_json(&r)?;
            } else {
                for x in &r.problems {
                    println!("PROBLEM {x}");
                }
                println!(
                    "checked {} object(s) and {} index(es){}: {}",
                    r.objects,
                    r.indexes,
                    if full { ", reading every byte" } else { "" },
                    if r.problems.is_empty() {
                        "all present and intact".to_string()
                    } else {
                        format!(
                            "{} problem(s); `cairn regions repair` fixes them",
                            r.problems.len()
                        )
                    }
                );
            }
            if !r.problems.is_empty() {
                bail!("{} problem(s) found in the regions", r.problems.len());
            }
        }
        RegionsCmd::Gc => {
            for c in p.run_due_shreds().await? {
                println!("shredded cluster '{c}'");
            }
            let queued = p.queue_garbage().await?;
            let r = p.process_deletions().await?;
            if g.json {
                return print_json(&serde_json::json!({"queued": queued, "result": r}));
            }
            println!(
                "queued {queued} object(s); deleted {}, kept {} still named by an index",
                r.deleted, r.kept_referenced
            );
            if !r.failed.is_empty() {
                bail!(
                    "{} deletion(s) failed: {}",
                    r.failed.len(),
                    r.failed.join("; ")
                );
            }
        }
        RegionsCmd::Repair { region } => {
            let r = p.check_regions(true, region.as_deref(), None).await?;
            let fixed = p.repair_regions(&r).await?;
            if g.json {
                return print_json(&fixed);
            }
            for c in &fixed.copied {
                println!("repaired {c}");
            }
            for c in &fixed.reshipped {
                println!("shipped again {c}");
            }
            for c in &fixed.unrepaired {
                println!("NOT REPAIRED {c}");
            }
            println!(
                "{} problem(s) found, {} repaired",
                r.problems.len(),
                fixed.copied.len() + fixed.reshipped.len()
            );
            if !fixed.unrepaired.is_empty() {
                bail!(
                    "{} problem(s) could not be repaired",
                    fixed.unrepaired.len()
                );
            }
        }
    }
    Ok(())
}

pub async fn backup(g: &Global, cmd: BackupCmd) -> Result<()> {
    let a = open(g).await?;
    match cmd {
        BackupCmd::Now { cluster, no_image } => {
            for c in a.backup_targets(cluster.cluster.as_deref()).await? {
                let progress = Arc::new(Progress::new());
                let r = with_progress(&progress, !g.json, a.backup_now(&c, no_image, &progress))
                    .await?;
                if g.json {
                    print_json(&r)?;
                } else {
                    if r.image == ImageStep::AdoptedShipsLatest {
                        eprintln!(
                            "cluster '{}' is adopted: shipping its latest image and WAL",
                            c.name
                        );
                    }
                    for s in &r.regions {
                        match (&s.shipped, &s.error) {
                            (Some(n), _) => {
                                println!("region {}: {n} object(s) shipped, up to date", s.region)
                            }
                            (None, e) => println!(
                                "region {}: FAILED: {}",
                                s.region,
                                e.as_deref().unwrap_or("?")
                            ),
                        }
                    }
                }
                r.require_durable()?;
                if !g.json {
                    println!(
                        "cluster '{}' is durable in at least {} regions",
                        c.name, r.min_copies
                    );
                }
            }
        }
        BackupCmd::List { cluster } => {
            let clusters = a.clusters(cluster.cluster.as_deref()).await?;
            let list = a.recovery_points(&clusters).await?;
            if g.json {
                return print_json(&list);
            }
            let names = a.protection().regions.names();
            let mut headers = vec!["CLUSTER", "BRANCH", "HEAD", "STATUS", "STORED"];
            headers.extend(names.iter().map(String::as_str));
            table(
                &headers,
                list.iter()
                    .map(|b| {
                        let mut row = vec![
                            b.cluster.clone(),
                            b.branch.clone(),
                            b.head.to_string(),
                            match b.status {
                                PointStatus::Ok => "ok".to_string(),
                                PointStatus::Degraded => "degraded".to_string(),
                            },
                            bytes(b.stored_bytes),
                        ];
                        for n in &names {
                            row.push(
                                b.regions
                                    .get(n)
                                    .and_then(|r| r.restorable_to)
                                    .map_or_else(|| "-".into(), |l| l.to_string()),
                            );
                        }
                        row
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}

/// The longest shred grace accepted.
const MAX_GRACE: Duration = Duration::from_secs(3650 * 86400);
