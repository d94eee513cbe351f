//! Cairn's verifier: a backup is proven only by restoring it. A verification run restores a
//! recovery point from a region into scratch, starts PostgreSQL on it in isolation, checks the
//! data, tears the scratch down, and leaves a signed report chained to the one before.
//!
//! [`run`] carries out one verification; [`report`] is what it leaves (model, canonical signed
//! form, the chain and its check, the HTML page) and [`store`] where that is kept (the
//! catalog's chain, copied to every region).
//!
//! Invariants:
//! - Reports are append-only: each names the digest of the one before it; the catalog holds
//!   the chain (one sequence across every appliance node sharing it) and every region a copy,
//!   so that losing the appliance loses no evidence, and editing a region's copy is found by
//!   `cairn report verify`.
//! - Trust comes from the appliance's trust state (its signing keys), never from a region.

pub mod coverage;
pub mod error;
pub mod report;
pub mod run;
pub mod schema;
pub mod store;

pub use error::{Error, Result};
