//! Decoding the few record kinds Cairn cares about: transaction ends, restore points,
//! checkpoints and segment switches.

use serde::{Deserialize, Serialize};

use super::PG_EPOCH_OFFSET_US;
use crate::ids::Lsn;

pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;

pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub const XLOG_SWITCH: u8 = 0x40;
pub const XLOG_RESTORE_POINT: u8 = 0x70;
pub const XLOG_END_OF_RECOVERY: u8 = 0x90;

const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;

/// What happened at a point in the WAL that a person may want to return to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Commit,
    Abort,
    RestorePoint,
    Checkpoint,
    ShutdownCheckpoint,
    EndOfRecovery,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Commit => "commit",
            EventKind::Abort => "abort",
            EventKind::RestorePoint => "restore_point",
            EventKind::Checkpoint => "checkpoint",
            EventKind::ShutdownCheckpoint => "shutdown_checkpoint",
            EventKind::EndOfRecovery => "end_of_recovery",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "commit" => EventKind::Commit,
            "abort" => EventKind::Abort,
            "restore_point" => EventKind::RestorePoint,
            "checkpoint" => EventKind::Checkpoint,
            "shutdown_checkpoint" => EventKind::ShutdownCheckpoint,
            "end_of_recovery" => EventKind::EndOfRecovery,
            _ => return None,
        })
    }
}

/// A timestamped record. `before` is the record boundary just before it (the end of the
/// previous record), `end` the boundary just after it; a branch at `before` excludes the
/// event, a branch at `end` includes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalEvent {
    pub kind: EventKind,
    pub before: Lsn,
    pub end: Lsn,
    /// Unix time in microseconds (0 for checkpoints, whose records carry no precise time).
    pub time_us: i64,
    /// The restore point's name.
    pub name: Option<String>,
}

/// Returns the record's main data (the trailing payload that follows all block data).
pub fn main_data(rec: &[u8], major: u32) -> Option<&[u8]> {
    let total = rec.len();
    let mut pos = super::RECORD_HEADER;
    let mut datatotal: usize = 0;
    let mut main_len: usize = 0;
    let compressed_mask: u8 = if major >= 15 {
        0x04 | 0x08 | 0x10
    } else {
        0x02
    };
    let u16_at = |p: usize| -> Option<usize> {
        Some(u16::from_le_bytes(rec.get(p..p + 2)?.try_into().ok()?) as usize)
    };
    while total.checked_sub(pos)? > datatotal {
        let id = *rec.get(pos)?;
        pos += 1;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = *rec.get(pos)? as usize;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = u32::from_le_bytes(rec.get(pos..pos + 4)?.try_into().ok()?) as usize;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => pos += 2,
            XLR_BLOCK_ID_TOPLEVEL_XID => pos += 4,
            id if id <= XLR_MAX_BLOCK_ID => {
                let fork_flags = *rec.get(pos)?;
                datatotal += u16_at(pos + 1)?;
                pos += 3;
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let bimg_len = u16_at(pos)?;
                    let bimg_info = *rec.get(pos + 4)?;
                    pos += 5;
                    if bimg_info & BKPIMAGE_HAS_HOLE != 0 && bimg_info & compressed_mask != 0 {
                        pos += 2;
                    }
                    datatotal += bimg_len;
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    pos += 12;
                }
                pos += 4;
            }
            _ => return None,
        }
    }
    rec.get(total.checked_sub(main_len)?..)
}

fn pg_time_to_unix_us(raw: &[u8]) -> Option<i64> {
    let t = i64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
    Some(t.saturating_add(PG_EPOCH_OFFSET_US))
}

/// Describes a complete record (header included), or returns `None` when it is not an event.
pub fn event_of(rec: &[u8], before: Lsn, end: Lsn, major: u32) -> Option<WalEvent> {
    let info = rec[16];
    let rmid = rec[17];
    let mk = |kind, time_us, name| WalEvent {
        kind,
        before,
        end,
        time_us,
        name,
    };
    match rmid {
        RM_XACT_ID => {
            let kind = match info & XLOG_XACT_OPMASK {
                XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED => EventKind::Commit,
                XLOG_XACT_ABORT | XLOG_XACT_ABORT_PREPARED => EventKind::Abort,
                _ => return None,
            };
            let t = pg_time_to_unix_us(main_data(rec, major)?)?;
            Some(mk(kind, t, None))
        }
        RM_XLOG_ID => match info & 0xF0 {
            XLOG_RESTORE_POINT => {
                let d = main_data(rec, major)?;
                let t = pg_time_to_unix_us(d)?;
                let raw = d.get(8..)?;
                let n = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
                let name = String::from_utf8_lossy(&raw[..n]).into_owned();
                Some(mk(EventKind::RestorePoint, t, Some(name)))
            }
            XLOG_CHECKPOINT_ONLINE => Some(mk(EventKind::Checkpoint, 0, None)),
            XLOG_CHECKPOINT_SHUTDOWN => Some(mk(EventKind::ShutdownCheckpoint, 0, None)),
            XLOG_END_OF_RECOVERY => Some(mk(EventKind::EndOfRecovery, 0, None)),
            _ => None,
        },
        _ => None,
    }
}

/// True for `XLOG_SWITCH`, after which the rest of the segment is unused.
pub fn is_switch(rec: &[u8]) -> bool {
    rec[17] == RM_XLOG_ID && rec[16] & 0xF0 == XLOG_SWITCH
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(rmid: u8, info: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; 24];
        r[16] = info;
        r[17] = rmid;
        r.extend_from_slice(body);
        let len = r.len() as u32;
        r[0..4].copy_from_slice(&len.to_le_bytes());
        r
    }

    #[test]
    fn commit_time_is_read_from_main_data() {
        // One block reference with 10 bytes of data, then an 8-byte main data header.
        let pg_time: i64 = 817_000_000_000_000;
        let mut body = vec![0u8, 0x00, 10, 0];
        body.extend_from_slice(&[0u8; 12]); // RelFileLocator
        body.extend_from_slice(&[0u8; 4]); // block number
        body.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, 8]);
        body.extend_from_slice(&[9u8; 10]);
        body.extend_from_slice(&pg_time.to_le_bytes());
        let rec = record(RM_XACT_ID, 0x00, &body);
        let ev = event_of(&rec, Lsn(1), Lsn(2), 15).unwrap();
        assert_eq!(ev.kind, EventKind::Commit);
        assert_eq!(ev.time_us, pg_time + PG_EPOCH_OFFSET_US);
    }

    #[test]
    fn restore_point_name_is_read() {
        let mut main = 5i64.to_le_bytes().to_vec();
        let mut name = b"before-migration".to_vec();
        name.resize(64, 0);
        main.extend_from_slice(&name);
        let mut body = vec![XLR_BLOCK_ID_DATA_SHORT, main.len() as u8];
        body.extend_from_slice(&main);
        let rec = record(RM_XLOG_ID, XLOG_RESTORE_POINT, &body);
        let ev = event_of(&rec, Lsn(8), Lsn(16), 15).unwrap();
        assert_eq!(ev.kind, EventKind::RestorePoint);
        assert_eq!(ev.name.as_deref(), Some("before-migration"));
        assert!(event_of(&record(RM_XLOG_ID, XLOG_SWITCH, &[]), Lsn(0), Lsn(0), 15).is_none());
        assert!(is_switch(&record(RM_XLOG_ID, XLOG_SWITCH, &[])));
    }
}
