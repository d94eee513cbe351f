//! The active alerts in the catalog, on SQLite and on PostgreSQL: a raised alert is loaded
//! back as it was (its since, reason, value and target), raising it again keeps one row, and a
//! cleared one is gone.

use cairn_appliance::alerts::{record, AlertKind, Alerts, Condition, Transition};
use cairn_appliance::CATALOG_COMPONENTS;
use cairn_engine::catalog::Catalog;
use cairn_engine::pg::scratch::ScratchServer;

fn cond(v: f64) -> Option<Condition> {
    Some(Condition {
        reason: format!("exposure {v}s"),
        value: v,
        target: 30.0,
    })
}

async fn scenario(url: &str) {
    let cat = Catalog::connect(url).await.unwrap();
    for c in CATALOG_COMPONENTS {
        cat.migrate(c).await.unwrap();
    }
    let mut live = Alerts::default();
    let save = |t: Option<Transition>| {
        let t = t.expect("a transition");
        let cat = &cat;
        async move { record::save(cat, &t).await.unwrap() }
    };
    save(live.set(AlertKind::RpoExceeded, "shop", "p", 10, cond(31.5))).await;
    save(live.set(AlertKind::RtoExceeded, "shop", "p", 11, cond(99.0))).await;
    save(live.set(AlertKind::RpoExceeded, "mill", "q", 12, cond(40.0))).await;
    let loaded = record::load(&cat).await.unwrap();
    assert_eq!(loaded.active(), live.active());
    assert_eq!(loaded.active().len(), 3);

    // Loaded, the alert is not raised again; its since stays.
    let mut after = record::load(&cat).await.unwrap();
    assert_eq!(
        after.set(AlertKind::RpoExceeded, "shop", "p", 50, cond(45.0)),
        None
    );
    assert_eq!(after.active()[1].since_us, 10, "{:?}", after.active());
    // Saving a raise twice keeps one row.
    let raised = Transition::Raised {
        alert: live.active()[0].clone(),
    };
    record::save(&cat, &raised).await.unwrap();
    assert_eq!(record::load(&cat).await.unwrap().active().len(), 3);

    // Cleared: gone from the catalog.
    save(after.set(AlertKind::RpoExceeded, "shop", "p", 60, None)).await;
    let left: Vec<(AlertKind, String)> = record::load(&cat)
        .await
        .unwrap()
        .active()
        .into_iter()
        .map(|a| (a.kind, a.cluster))
        .collect();
    assert_eq!(
        left,
        [
            (AlertKind::RpoExceeded, "mill".to_string()),
            (AlertKind::RtoExceeded, "shop".to_string())
        ]
    );
    cat.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn active_alerts_are_kept_in_a_sqlite_catalog() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&Catalog::sqlite_url(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn active_alerts_are_kept_in_a_postgres_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScratchServer::start(&dir.path().join("pg"), &[]).expect("start PostgreSQL");
    scenario(&server.url("postgres")).await;
}
