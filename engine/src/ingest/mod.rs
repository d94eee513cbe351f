//! Ingest: turning a running server's data files and WAL into layers.
//!
//! - [`image`] reads a data directory between `pg_backup_start` and `pg_backup_stop` (or a base
//!   backup stream), verifies every page checksum, deduplicates pages against the images of the
//!   timeline's ancestry, and writes an image layer.
//! - [`dedup`] decides which stored pieces a new image may reference: those of images the
//!   newest one still mostly reads, so that old images do not stay forever for a few pages.
//! - [`wal`] reads WAL from a directory of segments (a compute's `pg_wal`, or a
//!   `pg_receivewal` spool), validates the record chain and writes WAL layers.
//!
//! Neither touches the catalog: callers commit the layers they return, which keeps the
//! write-file-then-commit order in one place per operation.

pub mod dedup;
pub mod image;
pub mod wal;
