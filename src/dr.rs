//! Disaster recovery: `catalog rebuild` (an empty appliance from one region and the recovery
//! kit, fenced) and `catalog promote` (the rebuilt appliance takes over).

use std::path::PathBuf;

use anyhow::Result;
use cairn_backup::keys::Identity;
use cairn_backup::kit::RecoveryKit;
use clap::Subcommand;

use crate::args::Global;
use crate::open::open;
use crate::output::{bytes, print_json};

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// Rebuild an empty appliance's catalog (and layers) from one region and a recovery kit.
    /// The rebuilt appliance is fenced: it restores and verifies but writes nothing to the
    /// regions until `cairn catalog promote`.
    #[command(
        after_help = "Examples:\n  cairn catalog rebuild --from-region region-b --recovery-kit /secure/cairn.kit\n  \
        cairn catalog rebuild --from-region region-b --recovery-kit cairn-public.kit --identity /secure/escrow.age\n\n\
        Configure the region in HOME/regions.toml first (same name, URL and credentials). Only \
        indexes signed by a key of the kit are believed, and the keyring is the kit's: nothing \
        read from the region adds a key."
    )]
    Rebuild {
        #[arg(long, value_name = "REGION")]
        from_region: String,
        /// The recovery kit of the appliance that wrote the region (`cairn key export-recovery-kit`).
        #[arg(long, value_name = "FILE")]
        recovery_kit: PathBuf,
        /// An age identity that opens the data keys (an escrow key), when the kit has none; it
        /// is used in memory only, never stored.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// End the fence of a rebuilt appliance: it takes over shipping, indexes, garbage
    /// collection and adopted sources from the appliance it was rebuilt from.
    #[command(after_help = "Examples:\n  cairn catalog promote\n\n\
        Promote only when the old appliance is gone for good (or stopped): from now on this \
        one's indexes supersede its indexes in every region, and it streams from the adopted \
        sources' replication slots. Export a new recovery kit afterwards.")]
    Promote,
}

pub async fn catalog(g: &Global, cmd: CatalogCmd) -> Result<()> {
    match cmd {
        CatalogCmd::Rebuild {
            from_region,
            recovery_kit,
            identity,
        } => rebuild(g, &from_region, &recovery_kit, identity.as_deref()).await,
        CatalogCmd::Promote => {
            let app = open(g).await?;
            let p = app.protection();
            let generation = p.promote().await?;
            if g.json {
                return print_json(
                    &serde_json::json!({"promoted": true, "generation": generation}),
                );
            }
            println!(
                "promoted: this appliance now ships and writes generation {generation}, which \
                 supersedes the indexes of the appliance it was rebuilt from"
            );
            println!("export a new recovery kit now: cairn key export-recovery-kit --out FILE");
            Ok(())
        }
    }
}

async fn rebuild(
    g: &Global,
    from_region: &str,
    kit: &std::path::Path,
    identity: Option<&std::path::Path>,
) -> Result<()> {
    let kit = RecoveryKit::load(kit)?;
    let id = identity.map(Identity::load).transpose()?;
    let app = open(g).await?;
    let p = app.protection();
    let r = p.rebuild(from_region, &kit, id.as_ref()).await?;
    if g.json {
        return print_json(&r);
    }
    for x in &r.rejected {
        println!("set aside: {x}");
    }
    for x in &r.unknown_recipients {
        println!(
            "WARNING: the region lists recipient {x}, which the recovery kit's keyring does not \
             hold; it was NOT added (someone who can write the region may have planted it)"
        );
    }
    if r.keyring_differs {
        println!(
            "note: the region's signed state names another keyring than the kit's (was the kit \
             exported before the last keyring change?); the kit's keyring is used"
        );
    }
    println!(
        "rebuilt {} cluster(s) ({}), {} branch(es), {} layer(s), {} from region '{from_region}'",
        r.clusters.len(),
        r.clusters.join(", "),
        r.branches,
        r.layers,
        bytes(r.bytes)
    );
    println!(
        "trusted signers {}; this appliance will write generation {}",
        r.signers.join(", "),
        r.generation
    );
    println!(
        "FENCED: it restores and verifies but writes nothing to the regions and takes over no \
         source until `cairn catalog promote`"
    );
    Ok(())
}
