//! Opening the appliance from the global options, and telling the operator about keys created
//! on first use.

use anyhow::{Context, Result};
use cairn_appliance::{Appliance, ApplianceOptions};
use cairn_backup::keys::Generated;
use cairn_engine::{Engine, EngineOptions};

use crate::args::Global;

/// Tells the operator about keys created on first use.
pub fn announce(g: &Generated) {
    if let Some(p) = &g.identity {
        eprintln!(
            "generated the appliance identity {}: back it up now, somewhere else; without it \
             (or an escrow key) no backup can be decrypted",
            p.display()
        );
    }
    if let Some(p) = &g.signing {
        eprintln!(
            "generated the index signing key {}: back it up with the identity",
            p.display()
        );
    }
}

/// Where the appliance lives, from the global options.
pub fn options(g: &Global) -> ApplianceOptions {
    ApplianceOptions {
        home: g.home.clone(),
        catalog_url: g.catalog.clone(),
        pg_bin: g.pg_bin.clone(),
    }
}

/// Opens the appliance (engine, keys, regions), announcing keys created on first use.
pub async fn open(g: &Global) -> Result<Appliance> {
    let (a, generated) = Appliance::open(&options(g)).await?;
    announce(&generated);
    Ok(a)
}

pub async fn open_engine(g: &Global) -> Result<Engine> {
    Engine::open(EngineOptions {
        home: g.home.clone(),
        catalog_url: g.catalog.clone(),
        pg_bin: g.pg_bin.clone(),
    })
    .await
    .with_context(|| format!("cannot open the data directory {}", g.home.display()))
}
