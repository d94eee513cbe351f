//! Cairn's restore: any retained point of any branch, from any region, onto a new branch of
//! this appliance or into a plain PostgreSQL data directory — on an empty machine too.
//!
//! Invariants:
//! - A restore reads the region, never the local layer cache: the cluster's history comes from
//!   the region's signed indexes, the layers from its objects, each verified end to end (AEAD
//!   per chunk, plaintext SHA-256 = layer id, ciphertext size and hash = the index's). A region
//!   plus an identity is enough (DESIGN.md principle 2).
//! - A missing or damaged object in one region is fetched from the next; the report lists
//!   every such substitution with its reason.
//! - Nothing is written to the target before every refusal has been checked (point outside the
//!   region's windows, non-empty target, wrong PostgreSQL major version, too little disk), and
//!   a failed restore removes what it wrote.
//! - Memory is bounded by `parallel` downloads of at most eight 1 MiB chunks each; the data
//!   directory is written straight from the staged layers.
//! - Every restore, successful or not, is recorded in the catalog with its phase timings.
//! - An export (`pg_dump` of one database at a point) is taken from a scratch copy that is
//!   removed afterwards, and leaves the machine only sealed (see [`export`]).

pub mod execute;
pub mod export;
pub mod history;
pub mod logins;
pub mod plan;
pub mod recovery;
pub mod report;
pub mod request;
pub mod restore;
pub mod schema;
pub mod source;
pub mod space;
pub mod staging;
pub mod tablespaces;

pub use execute::execute;
pub use export::{export, Destination, ExportReport, ExportRequest};
pub use plan::{plan, PlanSummary, RestorePlan};
pub use report::{Phases, RestoreReport};
pub use request::{RestoreRequest, Target};
pub use restore::restore;
pub use source::{RegionProbe, Substitution};
pub use tablespaces::TablespaceMap;
