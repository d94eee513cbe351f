//! The demo cluster of `cairn up --demo`: a managed cluster with a table of sample rows and a
//! restore point, so that branching from the past can be tried at once.

use std::sync::Arc;

use cairn_engine::progress::Progress;
use cairn_engine::Engine;

use crate::error::{Error, Result};

/// Creates the managed cluster `demo` with sample data on branch `main`, its compute running;
/// returns the compute's connection URL.
pub async fn demo(engine: &Engine) -> Result<String> {
    let progress = Arc::new(Progress::new());
    engine.create_cluster("demo", &progress).await?;
    let c = engine.resolve_cluster(Some("demo")).await?;
    let info = engine.compute_start(&c, "main", None, &progress).await?;
    // The demo data belongs to the owner role, as an application's would.
    let client = cairn_engine::pg::server::connect(info.port, &info.login, "postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL);
             INSERT INTO accounts SELECT g, 'owner ' || g, (g * 37) % 1000
               FROM generate_series(1, 10000) g;
             SELECT pg_create_restore_point('demo_loaded');",
        )
        .await
        .map_err(|e| Error::Refused(format!("loading the demo data: {e}")))?;
    engine.compute_sync(&c, info.timeline).await?;
    Ok(info.url)
}
