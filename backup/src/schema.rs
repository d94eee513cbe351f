//! The protection layer's tables in the catalog: data keys, shipments, index writes, the
//! keyring, the appliance's identity and trust, the deletion queue, shreds and region states.
//!
//! Invariants:
//! - These migrations are the backup crate's own ([`cairn_engine::catalog::schema`] states the
//!   rules: append, never edit; version numbers unique across crates). They are applied when
//!   the protection layer opens ([`crate::Protection::open`]).

use cairn_engine::catalog::schema::{Component, Migration};

/// The protection layer's share of the catalog.
pub const COMPONENT: Component = Component {
    name: "backup",
    migrations: MIGRATIONS,
};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2,
        description: "protection: data keys, shipments, index writes, keyring, deletion queue",
        statements: &[
            // No foreign keys to layers: a deleted layer's rows drive the deletion of its
            // objects in the regions.
            "CREATE TABLE layer_keys (
                layer_id TEXT PRIMARY KEY,
                cluster_id TEXT NOT NULL,
                key_id TEXT NOT NULL,
                key_object TEXT NOT NULL,
                object_sha256 TEXT,
                object_size BIGINT NOT NULL,
                created_at BIGINT NOT NULL
            )",
            "CREATE TABLE shipments (
                layer_id TEXT NOT NULL,
                region TEXT NOT NULL,
                object_sha256 TEXT NOT NULL,
                shipped_at BIGINT NOT NULL,
                PRIMARY KEY (layer_id, region)
            )",
            "CREATE TABLE index_writes (
                timeline_id TEXT NOT NULL,
                cluster_id TEXT NOT NULL,
                region TEXT NOT NULL,
                generation BIGINT NOT NULL,
                sequence BIGINT NOT NULL,
                layers BIGINT NOT NULL,
                digest TEXT NOT NULL,
                written_at BIGINT NOT NULL,
                PRIMARY KEY (timeline_id, region)
            )",
            "CREATE TABLE key_recipients (
                recipient TEXT PRIMARY KEY,
                role TEXT NOT NULL,
                label TEXT NOT NULL,
                added_at BIGINT NOT NULL
            )",
            "CREATE TABLE appliance (
                id TEXT PRIMARY KEY,
                generation BIGINT NOT NULL,
                trusted_signers TEXT NOT NULL,
                created_at BIGINT NOT NULL
            )",
            "CREATE TABLE deletions (
                region TEXT NOT NULL,
                object_key TEXT NOT NULL,
                reason TEXT NOT NULL,
                queued_at BIGINT NOT NULL,
                not_before BIGINT NOT NULL,
                PRIMARY KEY (region, object_key)
            )",
            "CREATE TABLE shreds (
                cluster_id TEXT PRIMARY KEY,
                cluster_name TEXT NOT NULL,
                requested_at BIGINT NOT NULL,
                due_at BIGINT NOT NULL
            )",
        ],
    },
    Migration {
        version: 4,
        description: "untrusted regions: data key commitments, WAL tails, region state objects",
        statements: &[
            // What format-2 indexes bind for each object (filled in lazily for older rows).
            "ALTER TABLE layer_keys ADD COLUMN dek_commitment TEXT",
            "ALTER TABLE layer_keys ADD COLUMN tail_len BIGINT",
            "ALTER TABLE layer_keys ADD COLUMN tail_sha256 TEXT",
            // The last state object written to each region (high-water marks of its indexes).
            "CREATE TABLE region_states (
                region TEXT PRIMARY KEY,
                generation BIGINT NOT NULL,
                sequence BIGINT NOT NULL,
                digest TEXT NOT NULL,
                written_at BIGINT NOT NULL
            )",
        ],
    },
];
