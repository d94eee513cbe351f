//! PostgreSQL write-ahead log: reading, validating and describing it — never replaying it.
//!
//! Cairn never re-implements redo (DESIGN.md principle 1): real `postgres` replays WAL. What
//! Cairn must do itself is *check* the WAL it keeps, so that a stored range is known to be
//! replayable before anyone needs it:
//!
//! - every page header is checked (magic, timeline, page address, system identifier and segment
//!   size on long headers), so a recycled or foreign segment is never mistaken for ours;
//! - every record's CRC-32C is checked, and its `xl_prev` must point at the record before it,
//!   so a range is a single unbroken chain;
//! - a record is only accepted when it ends at or before the limit the caller gives (the
//!   server's flush position), so a half-written record is never stored.
//!
//! Positions follow PostgreSQL's conventions: a record *ends* at `EndRecPtr`, the MAXALIGNed
//! position after its last byte (a switch record ends at the next segment boundary). Branch
//! points, layer boundaries and recovery targets are always such record ends: that is exactly
//! where a server doing crash recovery stops when the WAL after it is zeroed.
//!
//! While reading, the parser collects [`WalEvent`]s — commits, aborts, restore points and
//! checkpoints with their timestamps — so that a wall-clock time or a restore point name can
//! be turned into an LSN, and the tablespace records whose paths materialisation blanks.

mod page;
mod reader;
mod record;
mod source;
mod tablespace;

pub use page::{PageHeader, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER};
pub use reader::{ParseLimits, ParseOutcome, StopReason, WalParser};
pub use record::{EventKind, WalEvent};
pub use source::{segment_file_name, DirSource, MemSource, WalSource};
pub use tablespace::{byte_position, record_crc, TablespaceRecord};

/// WAL page size; Cairn only supports the default build of PostgreSQL.
pub const XLOG_BLCKSZ: u64 = 8192;
/// Size of a short page header, MAXALIGNed.
pub const SHORT_PHD: u64 = 24;
/// Size of the long page header at the start of every segment, MAXALIGNed.
pub const LONG_PHD: u64 = 40;
/// `SizeOfXLogRecord`.
pub const RECORD_HEADER: usize = 24;
/// Largest record PostgreSQL writes (`XLogRecordMaxSize` is a little under 1 GiB).
pub const MAX_RECORD: u32 = 1020 * 1024 * 1024;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Size of the page header of the page that starts at `page`.
pub fn page_header_size(page: u64, segment_size: u64) -> u64 {
    if page.is_multiple_of(segment_size) {
        LONG_PHD
    } else {
        SHORT_PHD
    }
}

/// The WAL page magic of each supported PostgreSQL major version.
pub fn page_magic_for_version(major: u32) -> Option<u16> {
    match major {
        14 => Some(0xD10D),
        15 => Some(0xD110),
        16 => Some(0xD113),
        17 => Some(0xD116),
        _ => None,
    }
}
