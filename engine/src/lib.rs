//! Cairn's branchable storage engine.
//!
//! A *cluster* is one PostgreSQL database system. Its history is a tree of *timelines*: each
//! timeline has an optional ancestor (timeline, LSN) and owns immutable *layers*: image layers
//! (a full copy of the data directory at a consistent LSN, page-deduplicated across the
//! cluster) and WAL layers (a validated, contiguous range of WAL). A *branch* is a name that
//! points at a timeline. The [`layer_map`] answers which layers reconstruct a (timeline, LSN),
//! and [`materialise`] writes that point as a data directory that a real `postgres` brings to
//! exactly that LSN by crash recovery.
//!
//! Crash consistency rests on one rule: layer files are written to a temporary name, fsynced,
//! renamed and their directory fsynced *before* the catalog transaction that names them
//! commits; files the catalog does not name are garbage and are removed under the owning
//! timeline's lock. Hence a crash leaves either the old state or the new one.

pub mod error;
pub mod fsutil;
pub mod ids;
pub mod layer;
pub mod pg;
pub mod wal;

pub use error::{Error, Result};
pub use ids::{ClusterId, LayerId, Lsn, TimelineId};
pub mod access;
pub mod adopt;
pub mod branch;
pub mod catalog;
pub mod cluster;
pub mod compact;
pub mod compute;
pub mod compute_image;
pub mod engine;
pub mod failpoint;
pub mod heartbeat;
pub mod home;
pub mod ingest;
pub mod kept;
pub mod layer_map;
pub mod materialise;
pub mod progress;
pub mod retire;
pub mod tablespace;
pub mod tenant;
pub mod timeline;
pub mod wal_events;
pub mod wal_index;

pub use engine::{Engine, EngineOptions};
pub mod check;
