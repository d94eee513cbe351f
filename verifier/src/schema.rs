//! The verifier's tables in the catalog: the chain of verification reports, and when each
//! object of each region was last read back ([`crate::coverage`]).
//!
//! Invariants:
//! - This migration is the verifier crate's own ([`cairn_engine::catalog::schema`] states the
//!   rules: append, never edit; version numbers unique across crates). They are applied
//!   before a report or a read is first read or written ([`crate::store`],
//!   [`crate::coverage`]).

use cairn_engine::catalog::schema::{Component, Migration};

/// The verifier's share of the catalog.
pub const COMPONENT: Component = Component {
    name: "verifier",
    migrations: MIGRATIONS,
};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 11,
        description: "verifier: the chain of signed verification reports",
        statements: &[
            // One row per report; the primary key on the sequence is what keeps one chain when
            // several nodes append: of two nodes writing the same sequence, one fails and retries.
            // `body` is the stored form (canonical JSON); the other columns are for listing and
            // for choosing the region a cluster's next verification reads.
            "CREATE TABLE verification_reports (
            sequence BIGINT PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            cluster TEXT NOT NULL,
            region TEXT NOT NULL,
            outcome TEXT NOT NULL,
            started_at BIGINT NOT NULL,
            digest TEXT NOT NULL,
            body TEXT NOT NULL
        )",
            "CREATE INDEX verification_reports_cluster ON verification_reports(cluster, sequence)",
        ],
    },
    Migration {
        version: 12,
        description: "verifier: when each object of each region was last read back and verified",
        statements: &[
            // One row per (region, object) read by a verification's coverage pass; rows of
            // objects no region holds any more are deleted by the next pass.
            "CREATE TABLE object_reads (
            region TEXT NOT NULL,
            object TEXT NOT NULL,
            read_at BIGINT NOT NULL,
            PRIMARY KEY (region, object)
        )",
        ],
    },
];
