//! Helpers the appliance's tests share: an appliance (over file regions, when given), cluster
//! 'shop' with main's compute running, a one-value SQL query, the files of a file region.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use cairn_appliance::{Appliance, ApplianceOptions};
use cairn_engine::catalog::ClusterRow;
use cairn_engine::compute::ComputeInfo;
use cairn_engine::progress::Progress;
use cairn_engine::Engine;

/// A `[[region]]` entry of regions.toml for a file region in `dir`.
pub fn file_region(name: &str, dir: &Path) -> String {
    format!(
        "[[region]]\nname = \"{name}\"\nurl = \"file://{}\"\n",
        dir.display()
    )
}

/// Opens the appliance of `home`, first writing `regions` (a regions.toml, mode 0600) when
/// given; without it the embedded default regions are used.
pub async fn open(home: &Path, regions: Option<&str>) -> Appliance {
    std::fs::create_dir_all(home).unwrap();
    if let Some(toml) = regions {
        let cfg = home.join("regions.toml");
        std::fs::write(&cfg, toml).unwrap();
        std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    Appliance::open(&ApplianceOptions {
        home: home.to_path_buf(),
        catalog_url: None,
        pg_bin: None,
    })
    .await
    .expect("open the appliance")
    .0
}

/// Creates cluster 'shop' in `app` and starts main's compute.
pub async fn start_shop(app: &Appliance) -> (Arc<Engine>, ClusterRow, ComputeInfo, Arc<Progress>) {
    let engine = app.engine().clone();
    let progress = Arc::new(Progress::new());
    engine.create_cluster("shop", &progress).await.unwrap();
    let shop = engine.resolve_cluster(Some("shop")).await.unwrap();
    let info = engine
        .compute_start(&shop, "main", None, &progress)
        .await
        .unwrap();
    (engine, shop, info, progress)
}

/// Runs `q` and returns the first column of its first row as a number (0 without rows).
pub async fn sql(url: &str, q: &str) -> i64 {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = c.simple_query(q).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap_or(0)
}

/// Every file under `dir`, as paths.
pub fn region_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path().to_string_lossy().into_owned());
            }
        }
    }
    out
}
