//! Command handlers: parse what the user said, call the engine, print the result.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cairn_engine::branch::PointSpec;
use cairn_engine::progress::Progress;
use cairn_engine::Lsn;
use clap::{Args, Subcommand};

use crate::args::{parse_time, point, AtOpt, ClusterOpt, Global};
use crate::bar::with_progress;
use crate::open::open_engine;
use crate::output::{bytes, lsn_time, print_json, table};
use crate::{Cli, Command};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Create a managed cluster: initdb (data checksums on), first image, first WAL.
    #[command(
        after_help = "Examples:\n  cairn cluster create shop\n  cairn compute start main --cluster shop"
    )]
    Create {
        /// Cluster name: lowercase letters, digits, '-' and '_'.
        name: String,
    },
    /// Protect an existing, running PostgreSQL: base backup plus continuous WAL streaming.
    #[command(after_help = concat!(
        "Examples:\n  cairn cluster adopt erp --from 'postgres://cairn@db1.internal:5432/postgres?sslmode=verify-full&sslrootcert=/etc/cairn/db-ca.pem' --password-file /etc/cairn/erp.pw\n  \
         CAIRN_SOURCE_PASSWORD=... cairn cluster adopt erp --from postgres://cairn@127.0.0.1:5432/postgres\n\n",
        "Nothing is installed on the source. It needs: a role with REPLICATION \
         (CREATE ROLE cairn LOGIN REPLICATION PASSWORD '...'), wal_level = replica or logical, \
         two free max_wal_senders and max_replication_slots, and pg_hba.conf lines allowing \
         that role a 'replication' connection and a normal one from this host, e.g.\n  \
         host replication cairn 10.0.0.5/32 scram-sha-256\n  host postgres cairn 10.0.0.5/32 scram-sha-256\n\
         WAL then streams through a replication slot while `cairn up` runs."))]
    Adopt {
        /// Name for the cluster in Cairn.
        name: String,
        /// Connection URL of the source, without its password; `sslmode` and `sslrootcert`
        /// are honoured (default: disable on loopback, require elsewhere, where disable is
        /// refused; verify-full to authenticate the server).
        #[arg(long, value_name = "URL")]
        from: String,
        /// Replication slot to create on the source (default cairn_NAME).
        #[arg(long)]
        slot: Option<String>,
        /// A file holding the source role's password (else CAIRN_SOURCE_PASSWORD, else the
        /// URL's). It is stored in HOME/secrets, mode 0600.
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
    },
    /// List clusters.
    #[command(after_help = "Examples:\n  cairn cluster list\n  cairn cluster list --json")]
    List,
    /// Receive an adopted cluster's WAL up to the source's current position, now.
    #[command(
        after_help = "Examples:\n  cairn cluster sync erp\n\n`cairn up` does this continuously."
    )]
    Sync { name: String },
    /// Print the password of a role of the cluster: the owner role (cairn_owner) by default.
    /// The owner can create databases, roles (SELECT cairn.create_role(name, password)),
    /// schemas, tables and trusted extensions; it is not a superuser.
    #[command(after_help = "Examples:\n  cairn cluster password shop
  cairn cluster password shop --superuser

        --superuser is refused unless the computes' OS user reaches nothing but this cluster \
        (Cairn runs as root and holds one cluster); --source prints an adopted cluster's source \
        role password.")]
    Password {
        name: String,
        /// The superuser's password instead (same rule as `compute start --superuser`).
        #[arg(long, conflicts_with = "source")]
        superuser: bool,
        /// An adopted cluster's source role password instead.
        #[arg(long)]
        source: bool,
    },
    /// Delete a cluster and all its layers (its computes must be stopped).
    #[command(after_help = "Examples:\n  cairn cluster delete scratch --yes")]
    Delete {
        name: String,
        /// Confirm: every branch and layer of the cluster is removed.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BranchCmd {
    /// Create a branch from another one, at its head or any earlier point. O(1): no data copied.
    #[command(after_help = "Examples:\n  cairn branch create dev --from main\n  \
        cairn branch create before-deploy --from main --at-time 2026-11-23T09:00:00Z\n  \
        cairn branch create audit --from main --at 0/3000150\n  \
        cairn branch create pre-migration --from main --at-restore-point before_migration")]
    Create {
        name: String,
        /// The branch to copy.
        #[arg(long, default_value = "main")]
        from: String,
        #[command(flatten)]
        at: AtOpt,
        #[command(flatten)]
        cluster: ClusterOpt,
    },
    /// Show the branch tree: parent, branch point, head, size, compute.
    #[command(after_help = "Examples:\n  cairn branch list\n  cairn branch list --json")]
    List {
        #[command(flatten)]
        cluster: ClusterOpt,
    },
    /// Show one branch, with the windows of its history that can be reconstructed.
    #[command(after_help = "Examples:\n  cairn branch show main")]
    Show {
        name: String,
        #[command(flatten)]
        cluster: ClusterOpt,
    },
    /// Rewind a branch to an earlier point; its current state is kept as a backup branch.
    #[command(after_help = "Examples:\n  cairn branch reset dev --to 0/3000150\n  \
        cairn branch reset dev --to 2026-11-23T09:00:00Z")]
    Reset {
        name: String,
        /// An LSN (contains '/') or a timestamp.
        #[arg(long, value_name = "LSN|TIME")]
        to: String,
        #[command(flatten)]
        cluster: ClusterOpt,
    },
    /// Delete a branch (refused for protected branches and branches with children).
    #[command(after_help = "Examples:\n  cairn branch delete dev")]
    Delete {
        name: String,
        #[command(flatten)]
        cluster: ClusterOpt,
    },
    /// Protect a branch against deletion (main is protected from the start).
    #[command(
        after_help = "Examples:\n  cairn branch protect release\n  cairn branch protect release --off"
    )]
    Protect {
        name: String,
        /// Remove the protection instead.
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        cluster: ClusterOpt,
    },
}

#[derive(Subcommand, Debug)]
pub enum ComputeCmd {
    /// Start PostgreSQL on a branch's head; prints a connection string.
    #[command(
        after_help = "Examples:\n  cairn compute start main\n  cairn compute start dev --port 6543\n  \
        psql \"$(cairn compute start dev --url-only)\""
    )]
    Start {
        branch: String,
        /// Port on 127.0.0.1 (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Print only the connection URL.
        #[arg(long)]
        url_only: bool,
        /// Print a superuser URL instead of the owner role's. Refused unless the computes'
        /// OS user reaches nothing but this cluster (Cairn runs as root, one cluster).
        #[arg(long)]
        superuser: bool,
        #[command(flatten)]
        cluster: ClusterOpt,
    },
    /// Stop a branch's compute cleanly; the branch keeps everything written before the stop.
    #[command(after_help = "Examples:\n  cairn compute stop dev")]
    Stop {
        branch: String,
        #[command(flatten)]
        cluster: ClusterOpt,
    },
    /// Ingest a running compute's WAL into its branch now (cairn up does this continuously).
    #[command(after_help = "Examples:\n  cairn compute sync main")]
    Sync {
        branch: String,
        #[command(flatten)]
        cluster: ClusterOpt,
    },
    /// List computes.
    #[command(after_help = "Examples:\n  cairn compute list")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Take an image layer of a branch's running compute now.
    #[command(after_help = "Examples:\n  cairn image create main")]
    Create {
        branch: String,
        #[command(flatten)]
        cluster: ClusterOpt,
    },
}

#[derive(Subcommand, Debug)]
pub enum LayerCmd {
    /// List image and WAL layers with their LSN ranges and sizes.
    #[command(after_help = "Examples:\n  cairn layer list\n  cairn layer list --json")]
    List {
        #[command(flatten)]
        cluster: ClusterOpt,
    },
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also re-hash every layer file and every piece in it (reads everything).
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub cluster: ClusterOpt,
}

pub async fn run(cli: Cli) -> Result<()> {
    let g = cli.global.clone();
    match cli.command {
        Command::Up(args) => crate::daemon::up(&g, args).await,
        Command::Cluster(c) => cluster(&g, c).await,
        Command::Branch(c) => branch(&g, c).await,
        Command::Compute(c) => compute(&g, c).await,
        Command::Image(c) => image(&g, c).await,
        Command::Layer(c) => layer(&g, c).await,
        Command::Check(a) => check(&g, a).await,
        Command::Backup(c) => crate::protect::backup(&g, c).await,
        Command::Key(c) => crate::protect::key(&g, c).await,
        Command::Regions(c) => crate::protect::regions(&g, c).await,
        Command::Catalog(c) => crate::dr::catalog(&g, c).await,
        Command::Policy(c) => crate::policy::policy(&g, c).await,
        Command::Jobs(a) => crate::jobs::jobs(&g, a).await,
        Command::Report(c) => crate::report::report(&g, c).await,
        Command::Verify(a) => crate::verify::verify(&g, a).await,
        Command::Restore(a) => crate::restore::restore(&g, a).await,
        Command::Export(a) => crate::export::export(&g, a).await,
    }
}

async fn cluster(g: &Global, cmd: ClusterCmd) -> Result<()> {
    let engine = open_engine(g).await?;
    match cmd {
        ClusterCmd::Create { name } => {
            let progress = Arc::new(Progress::new());
            let s =
                with_progress(&progress, !g.json, engine.create_cluster(&name, &progress)).await?;
            if g.json {
                return print_json(&s);
            }
            println!(
                "created cluster '{}' (PostgreSQL {}, system {}), branch main at {}",
                s.name,
                s.pg_major,
                s.system_id,
                s.main_head.map(|l| l.to_string()).unwrap_or_default()
            );
            println!("next: cairn compute start main --cluster {}", s.name);
        }
        ClusterCmd::Adopt {
            name,
            from,
            slot,
            password_file,
        } => {
            let mut src = cairn_engine::adopt::SourceUrl::parse(&from)?;
            if src.password.is_some() {
                eprintln!(
                    "warning: a password in --from is visible to every local user while cairn \
                     runs (ps); prefer --password-file or CAIRN_SOURCE_PASSWORD"
                );
            }
            if let Some(f) = &password_file {
                let pw = std::fs::read_to_string(f)
                    .with_context(|| format!("read --password-file {}", f.display()))?;
                src.password = Some(pw.trim_end_matches(['\n', '\r']).to_string());
            } else if let Ok(pw) = std::env::var("CAIRN_SOURCE_PASSWORD") {
                src.password = Some(pw);
            }
            let progress = Arc::new(Progress::new());
            let s = with_progress(
                &progress,
                !g.json,
                engine.adopt_cluster(&name, src, slot.as_deref(), &progress),
            )
            .await?;
            if g.json {
                return print_json(&s);
            }
            println!(
                "adopted '{}' (PostgreSQL {}, system {}): image taken, main at {}",
                s.name,
                s.pg_major,
                s.system_id,
                s.main_head.map(|l| l.to_string()).unwrap_or_default()
            );
            println!("WAL keeps streaming while `cairn up` runs.");
        }
        ClusterCmd::List => {
            let all = engine.cluster_summaries().await?;
            if g.json {
                return print_json(&all);
            }
            if all.is_empty() {
                println!("no clusters yet: cairn cluster create NAME, or cairn up --demo");
                return Ok(());
            }
            table(
                &[
                    "NAME",
                    "KIND",
                    "PG",
                    "BRANCHES",
                    "LAYERS",
                    "STORED",
                    "MAIN HEAD",
                ],
                all.iter()
                    .map(|c| {
                        vec![
                            c.name.clone(),
                            c.kind.as_str().into(),
                            c.pg_major.to_string(),
                            c.branches.to_string(),
                            format!("{} img + {} wal", c.image_layers, c.wal_layers),
                            bytes(c.stored_bytes),
                            c.main_head.map(|l| l.to_string()).unwrap_or_default(),
                        ]
                    })
                    .collect(),
            );
        }
        ClusterCmd::Sync { name } => {
            let c = engine.resolve_cluster(Some(&name)).await?;
            let r = engine.sync_adopted(&c).await?;
            if g.json {
                return print_json(&r);
            }
            println!(
                "cluster '{name}' durable up to {} ({} new WAL layer(s))",
                r.to, r.layers
            );
        }
        ClusterCmd::Password {
            name,
            superuser,
            source,
        } => {
            let c = engine.resolve_cluster(Some(&name)).await?;
            let which = match (superuser, source) {
                (true, _) => cairn_engine::tenant::Login::Superuser,
                (_, true) => cairn_engine::tenant::Login::Source,
                _ => cairn_engine::tenant::Login::Owner,
            };
            let creds = engine.login(&c, which).await?;
            if g.json {
                return print_json(&serde_json::json!({
                    "role": creds.user, "password": creds.password
                }));
            }
            println!("{}", creds.password);
        }
        ClusterCmd::Delete { name, yes } => {
            if !yes {
                bail!("deleting cluster '{name}' removes every branch and layer of it; add --yes to confirm");
            }
            engine.delete_cluster(&name).await?;
            println!("deleted cluster '{name}'");
        }
    }
    Ok(())
}

async fn branch(g: &Global, cmd: BranchCmd) -> Result<()> {
    let engine = open_engine(g).await?;
    match cmd {
        BranchCmd::Create {
            name,
            from,
            at,
            cluster,
        } => {
            let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
            let spec = point(&at)?;
            let started = std::time::Instant::now();
            let b = engine.branch_create(&c, &name, &from, &spec).await?;
            if g.json {
                return print_json(&b);
            }
            println!(
                "created branch '{}' from '{from}' at {} in {:.0} ms (no data copied)",
                b.name,
                lsn_time(b.branch_lsn.unwrap_or(b.head), b.branch_time_us),
                started.elapsed().as_secs_f64() * 1000.0
            );
            println!("next: cairn compute start {} --cluster {}", b.name, c.name);
        }
        BranchCmd::List { cluster } => {
            let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
            let list = engine.branch_list(&c).await?;
            if g.json {
                return print_json(&list);
            }
            table(
                &[
                    "BRANCH",
                    "PARENT",
                    "BRANCH POINT",
                    "HEAD",
                    "SIZE",
                    "OWN LAYERS",
                    "COMPUTE",
                ],
                list.iter()
                    .map(|b| {
                        vec![
                            format!(
                                "{}{}{}",
                                "  ".repeat(b.depth),
                                b.name,
                                if b.protected { " (protected)" } else { "" }
                            ),
                            b.parent.clone().unwrap_or_else(|| "-".into()),
                            b.branch_lsn
                                .map(|l| lsn_time(l, b.branch_time_us))
                                .unwrap_or_else(|| "-".into()),
                            lsn_time(b.head, b.head_time_us),
                            bytes(b.logical_bytes),
                            bytes(b.own_bytes),
                            match (b.compute_port, b.compute_state.as_deref()) {
                                (Some(p), Some("running")) => format!("127.0.0.1:{p}"),
                                (Some(_), _) => "stopped".into(),
                                _ => "-".into(),
                            },
                        ]
                    })
                    .collect(),
            );
        }
        BranchCmd::Show { name, cluster } => {
            let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
            let b = engine.branch_info(&c, &name).await?;
            if g.json {
                return print_json(&b);
            }
            println!(
                "branch        {}{}",
                b.name,
                if b.protected { " (protected)" } else { "" }
            );
            println!("cluster       {}", b.cluster);
            println!("timeline      {}", b.timeline);
            println!(
                "parent        {}",
                b.parent.clone().unwrap_or_else(|| "-".into())
            );
            if let Some(l) = b.branch_lsn {
                println!("branch point  {}", lsn_time(l, b.branch_time_us));
            }
            println!("head          {}", lsn_time(b.head, b.head_time_us));
            println!("size          {}", bytes(b.logical_bytes));
            println!("own layers    {}", bytes(b.own_bytes));
            for (lo, hi) in &b.windows {
                println!("restorable    {lo} .. {hi}");
            }
            if let Some(p) = b.compute_port {
                println!(
                    "compute       127.0.0.1:{p} ({})",
                    b.compute_state.as_deref().unwrap_or("unknown")
                );
            }
        }
        BranchCmd::Reset { name, to, cluster } => {
            let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
            let spec = if to.contains('/') {
                PointSpec::Lsn(to.parse::<Lsn>().map_err(anyhow::Error::msg)?)
            } else {
                PointSpec::Time(parse_time(&to)?)
            };
            let (b, backup) = engine.branch_reset(&c, &name, &spec).await?;
            if g.json {
                return print_json(&serde_json::json!({"branch": b, "backup_branch": backup}));
            }
            println!(
                "reset branch '{}' to {}; its previous state is kept as branch '{backup}'",
                b.name,
                lsn_time(b.head, b.head_time_us)
            );
        }
        BranchCmd::Delete { name, cluster } => {
            let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
            engine.branch_delete(&c, &name).await?;
            println!("deleted branch '{name}'");
        }
        BranchCmd::Protect { name, off, cluster } => {
            let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
            engine.branch_protect(&c, &name, !off).await?;
            println!(
                "branch '{name}' is {}",
                if off {
                    "no longer protected"
                } else {
                    "protected"
                }
            );
        }
    }
    Ok(())
}

async fn compute(g: &Global, cmd: ComputeCmd) -> Result<()> {
    let engine = open_engine(g).await?;
    match cmd {
        ComputeCmd::Start {
            branch,
            port,
            url_only,
            superuser,
            cluster,
        } => {
            let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
            // Refused before anything starts.
            let su = match superuser {
                true => Some(engine.superuser_credentials(&c).await?),
                false => None,
            };
            let progress = Arc::new(Progress::new());
            let mut info = with_progress(
                &progress,
                !g.json && !url_only,
                engine.compute_start(&c, &branch, port, &progress),
            )
            .await?;
            if let Some(su) = su {
                info.login_as(su);
            }
            if url_only {
                println!("{}", info.url);
                return Ok(());
            }
            if g.json {
                let mut v = serde_json::to_value(&info)?;
                v["url"] = serde_json::Value::String(info.url.clone());
                return print_json(&v);
            }
            if info.already_running {
                println!(
                    "branch '{}' already has a compute on 127.0.0.1:{}",
                    info.branch, info.port
                );
            } else {
                println!(
                    "started branch '{}' at {} on 127.0.0.1:{}",
                    info.branch, info.head, info.port
                );
            }
            println!("connect: psql '{}'", info.url);
        }
        ComputeCmd::Stop { branch, cluster } => {
            let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
            let r = engine.compute_stop(&c, &branch).await?;
            if g.json {
                return print_json(&r);
            }
            println!(
                "stopped branch '{branch}'; its history is durable up to {} ({} new WAL layer(s))",
                r.to, r.layers
            );
        }
        ComputeCmd::Sync { branch, cluster } => {
            let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
            let (_, tl) = engine.resolve_branch(&c, &branch).await?;
            let r = engine.compute_sync(&c, tl.id).await?;
            if g.json {
                return print_json(&r);
            }
            println!(
                "branch '{branch}' durable up to {} ({} new WAL layer(s))",
                r.to, r.layers
            );
        }
        ComputeCmd::List => {
            let list = engine.compute_list().await?;
            if g.json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no computes; start one with cairn compute start BRANCH");
                return Ok(());
            }
            table(
                &["CLUSTER", "BRANCH", "ADDRESS", "PID", "STATE"],
                list.iter()
                    .map(|c| {
                        vec![
                            c.cluster.clone(),
                            c.branch.clone(),
                            format!("127.0.0.1:{}", c.port),
                            c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                            c.state.clone(),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}

async fn image(g: &Global, cmd: ImageCmd) -> Result<()> {
    let engine = open_engine(g).await?;
    let ImageCmd::Create { branch, cluster } = cmd;
    let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
    let progress = Arc::new(Progress::new());
    let r = with_progress(
        &progress,
        !g.json,
        engine.image_create(&c, &branch, &progress),
    )
    .await?;
    if g.json {
        return print_json(&r);
    }
    println!(
        "image of '{branch}' consistent at {}: {} of data, {} new ({} pieces deduplicated) in {:.1} s",
        r.end,
        bytes(r.logical_bytes),
        bytes(r.stored_bytes),
        r.stats.pieces - r.stats.new_pieces,
        r.seconds
    );
    Ok(())
}

async fn layer(g: &Global, cmd: LayerCmd) -> Result<()> {
    let engine = open_engine(g).await?;
    let LayerCmd::List { cluster } = cmd;
    let c = engine.resolve_cluster(cluster.cluster.as_deref()).await?;
    let layers = engine.catalog.layers(c.id).await?;
    if g.json {
        return print_json(&layers);
    }
    let branches = engine.catalog.branches(c.id).await?;
    let name_of = |t| {
        branches
            .iter()
            .find(|b| b.timeline_id == t)
            .map_or_else(|| "-".to_string(), |b| b.name.clone())
    };
    table(
        &[
            "KIND", "BRANCH", "START", "END", "LOGICAL", "STORED", "FILE", "ID",
        ],
        layers
            .iter()
            .map(|l| {
                vec![
                    l.kind.as_str().into(),
                    name_of(l.timeline_id),
                    l.start.to_string(),
                    l.end.to_string(),
                    bytes(l.logical_size),
                    bytes(l.stored_bytes),
                    bytes(l.file_size),
                    l.id.to_string()[..12].to_string(),
                ]
            })
            .collect(),
    );
    Ok(())
}

async fn check(g: &Global, args: CheckArgs) -> Result<()> {
    let engine = open_engine(g).await?;
    let clusters = match &args.cluster.cluster {
        Some(n) => vec![engine.resolve_cluster(Some(n)).await?],
        None => engine.catalog.clusters().await?,
    };
    let mut problems = Vec::new();
    let mut checked = 0;
    for c in &clusters {
        let r = engine.check_cluster(c, args.full).await?;
        checked += r.layers;
        problems.extend(r.problems);
    }
    if g.json {
        print_json(&serde_json::json!({"layers": checked, "problems": problems}))?;
    } else {
        for p in &problems {
            println!("PROBLEM {p}");
        }
        println!(
            "checked {checked} layer(s) in {} cluster(s): {}",
            clusters.len(),
            if problems.is_empty() {
                "catalog and layer files agree".to_string()
            } else {
                format!("{} problem(s)", problems.len())
            }
        );
    }
    if !problems.is_empty() {
        bail!("{} problem(s) found", problems.len());
    }
    Ok(())
}
