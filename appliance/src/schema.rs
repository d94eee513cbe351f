//! The appliance's tables in the catalog: policy changes (the audit log of `cairn policy
//! apply`), the policy files each change put in force, the runs of scheduled jobs (and the
//! totals of those pruned from the history), the lease of the active node, and the active
//! alerts.
//!
//! Invariants:
//! - These migrations are the appliance crate's own ([`cairn_engine::catalog::schema`] states
//!   the rules: append, never edit; version numbers unique across crates). They are applied
//!   when the appliance opens ([`crate::Appliance::open`]).

use cairn_engine::catalog::schema::{Component, Migration};

/// The appliance's share of the catalog.
pub const COMPONENT: Component = Component {
    name: "appliance",
    migrations: MIGRATIONS,
};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 6,
        description: "appliance: policy changes (audit log) and the policy files they put in force",
        statements: &[
            // One row per `policy apply`; a change is in force from `effective_at` unless
            // cancelled, until a later change is.
            "CREATE TABLE policy_changes (
            id TEXT PRIMARY KEY,
            requested_at BIGINT NOT NULL,
            requested_by TEXT NOT NULL,
            dir TEXT NOT NULL,
            destructive BIGINT NOT NULL,
            confirmed BIGINT NOT NULL,
            effective_at BIGINT NOT NULL,
            cancelled_at BIGINT,
            cancelled_by TEXT,
            summary TEXT NOT NULL
        )",
            "CREATE TABLE policy_files (
            change_id TEXT NOT NULL,
            name TEXT NOT NULL,
            file TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            content TEXT NOT NULL,
            PRIMARY KEY (change_id, name)
        )",
        ],
    },
    Migration {
        version: 7,
        description: "appliance: runs of scheduled jobs, each claimed by one node under a lease",
        statements: &[
            // One row per attempt at one fire of one job. The unique key is the claim: of two
            // nodes inserting the same attempt, one fails. A run without `ended_at` whose lease
            // passed belongs to a dead node: it is marked abandoned and the fire is tried again.
            "CREATE TABLE job_runs (
                id TEXT PRIMARY KEY,
                policy TEXT NOT NULL,
                cluster TEXT NOT NULL,
                kind TEXT NOT NULL,
                fire_at BIGINT NOT NULL,
                attempt BIGINT NOT NULL,
                start_at BIGINT NOT NULL,
                late BIGINT NOT NULL,
                missed BIGINT NOT NULL,
                policy_change TEXT NOT NULL,
                node TEXT NOT NULL,
                claimed_at BIGINT NOT NULL,
                lease_until BIGINT NOT NULL,
                ended_at BIGINT,
                outcome TEXT,
                detail TEXT NOT NULL,
                UNIQUE (policy, cluster, kind, fire_at, attempt)
            )",
            "CREATE INDEX job_runs_by_job ON job_runs (policy, cluster, kind, fire_at)",
        ],
    },
    Migration {
        version: 8,
        description: "appliance: the lease of the node that runs the appliance's work",
        statements: &[
            // One row per role (only `active` so far). A node holds the role while its lease
            // has not passed; taking it is a conditional update, so of two nodes one wins.
            "CREATE TABLE node_leases (
                role TEXT PRIMARY KEY,
                node TEXT NOT NULL,
                since BIGINT NOT NULL,
                lease_until BIGINT NOT NULL
            )",
        ],
    },
    Migration {
        version: 9,
        description: "appliance: totals of the job runs pruned from the history",
        statements: &[
            // What `job_runs` held before the history period pruned it, per cluster, kind and
            // outcome: the job outcome counters stay monotonic.
            "CREATE TABLE job_run_totals (
                cluster TEXT NOT NULL,
                kind TEXT NOT NULL,
                outcome TEXT NOT NULL,
                runs BIGINT NOT NULL,
                last_ended_at BIGINT NOT NULL,
                PRIMARY KEY (cluster, kind, outcome)
            )",
        ],
    },
    Migration {
        version: 10,
        description: "appliance: the active alerts",
        statements: &[
            // One row per active alert (kind and cluster), from its raise until it clears:
            // a restarted appliance or a new active node carries on with them.
            "CREATE TABLE alerts (
                kind TEXT NOT NULL,
                cluster TEXT NOT NULL,
                policy TEXT NOT NULL,
                since BIGINT NOT NULL,
                reason TEXT NOT NULL,
                value DOUBLE PRECISION NOT NULL,
                target DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (kind, cluster)
            )",
        ],
    },
];
