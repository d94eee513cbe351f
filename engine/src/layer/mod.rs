//! Layers: the immutable files that hold a timeline's history.
//!
//! - An [`image`] layer is a full copy of a data directory at a consistent LSN: relation files
//!   as 8 KiB pages, other files as chunks, every piece addressed by its SHA-256. A piece
//!   already stored in an earlier layer of the cluster is *referenced* (layer id, offset), not
//!   stored again, so a second image of a barely-changed cluster costs only its changed pages.
//! - A [`wal`] layer is a validated, contiguous range of WAL plus the timestamped events in it.
//!
//! Both share the [`file`] container: content-hash named, written to a temporary name, fsynced
//! and renamed. A layer never changes after it is written; see docs/FORMAT.md for the bytes.

pub mod codec;
pub mod file;
pub mod image;
pub mod wal;

pub use file::{LayerFile, LayerKind, LayerWriter};
