//! The restore's table in the catalog: every restore with its target, outcome and report.
//!
//! Invariants:
//! - This migration is the restore crate's own ([`cairn_engine::catalog::schema`] states the
//!   rules: append, never edit; version numbers unique across crates). It is applied before a
//!   restore is first recorded ([`crate::history`]).

use cairn_engine::catalog::schema::{Component, Migration};

/// The restore's share of the catalog.
pub const COMPONENT: Component = Component {
    name: "restore",
    migrations: MIGRATIONS,
};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 3,
    description: "restore: every restore with its target, outcome and phase timings",
    statements: &[
        // No foreign key to clusters: a restore onto an empty appliance has no cluster row.
        "CREATE TABLE restores (
                id TEXT PRIMARY KEY,
                cluster_name TEXT NOT NULL,
                branch TEXT NOT NULL,
                point TEXT NOT NULL,
                lsn BIGINT,
                target TEXT NOT NULL,
                region TEXT,
                ok BIGINT NOT NULL,
                error TEXT,
                report TEXT NOT NULL,
                started_at BIGINT NOT NULL,
                finished_at BIGINT NOT NULL
            )",
        "CREATE INDEX restores_cluster ON restores(cluster_name, started_at)",
    ],
}];
