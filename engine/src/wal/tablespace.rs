//! Tablespace records in the WAL: `XLOG_TBLSPC_CREATE` and `XLOG_TBLSPC_DROP`.
//!
//! Redo of a create record with a path makes `pg_tblspc/OID` a link to that absolute path and
//! writes there: replaying a source's WAL on the appliance would share the source's (or
//! another compute's) directory. Redo of a create record whose path is *empty* makes an
//! in-place tablespace instead, and keeps a link that already sits at `pg_tblspc/OID`. So
//! every WAL Cairn hands to PostgreSQL has the paths of its create records blanked
//! ([`TablespaceRecord::blanked`]): the bytes of the path become NUL and the record's CRC is
//! computed again. Lengths, LSNs and the chain of `xl_prev` stay as they were, and blanking is
//! idempotent. What is stored in layers and regions is the WAL as PostgreSQL wrote it.

use super::record::main_data;
use super::{page_header_size, RECORD_HEADER, XLOG_BLCKSZ};
use crate::ids::Lsn;

pub const RM_TBLSPC_ID: u8 = 5;
const XLOG_TBLSPC_CREATE: u8 = 0x00;
const XLOG_TBLSPC_DROP: u8 = 0x10;

/// A tablespace create or drop, found at `lsn` (the start of its record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceRecord {
    pub lsn: Lsn,
    pub oid: u32,
    /// For a create: the location the source gave (empty for an in-place tablespace).
    pub create: Option<String>,
    /// For a create: the record's bytes, header included (to blank it).
    pub raw: Vec<u8>,
}

/// Describes a complete record (header included) that creates or drops a tablespace.
pub fn tablespace_of(rec: &[u8], start: Lsn, major: u32) -> Option<TablespaceRecord> {
    if rec.get(17) != Some(&RM_TBLSPC_ID) {
        return None;
    }
    let info = rec[16] & 0xF0;
    let data = main_data(rec, major)?;
    let oid = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
    match info {
        XLOG_TBLSPC_CREATE => {
            let raw_path = data.get(4..)?;
            let n = raw_path
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(raw_path.len());
            Some(TablespaceRecord {
                lsn: start,
                oid,
                create: Some(String::from_utf8_lossy(&raw_path[..n]).into_owned()),
                raw: rec.to_vec(),
            })
        }
        XLOG_TBLSPC_DROP => Some(TablespaceRecord {
            lsn: start,
            oid,
            create: None,
            raw: Vec::new(),
        }),
        _ => None,
    }
}

/// CRC-32C of a record as PostgreSQL computes it: the data after the header, then the header
/// up to the CRC field.
pub fn record_crc(rec: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&rec[RECORD_HEADER..]), &rec[..20])
}

/// The WAL position of byte `i` of a record that starts at `start`: records continue on the
/// next page after its header (long at a segment start, short elsewhere).
pub fn byte_position(start: Lsn, i: u64, segment_size: u64) -> Lsn {
    let mut pos = start.0;
    let mut left = i;
    loop {
        let page_end = pos - pos % XLOG_BLCKSZ + XLOG_BLCKSZ;
        let room = page_end - pos;
        if left < room {
            return Lsn(pos + left);
        }
        left -= room;
        pos = page_end + page_header_size(page_end, segment_size);
    }
}

impl TablespaceRecord {
    /// The bytes to write so that this create record carries an empty path: (position, byte)
    /// for each byte that changes. Empty for a drop, or a create already blank.
    pub fn blanked(&self, major: u32, segment_size: u64) -> Vec<(Lsn, u8)> {
        let Some(path) = &self.create else {
            return vec![];
        };
        if path.is_empty() {
            return vec![];
        }
        let Some(main_len) = main_data(&self.raw, major).map(<[u8]>::len) else {
            return vec![];
        };
        let mut rec = self.raw.clone();
        let path_at = rec.len() - main_len + 4;
        for b in &mut rec[path_at..] {
            *b = 0;
        }
        let crc = record_crc(&rec);
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
        rec.iter()
            .zip(&self.raw)
            .enumerate()
            .filter(|(_, (new, old))| new != old)
            .map(|(i, (new, _))| (byte_position(self.lsn, i as u64, segment_size), *new))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::reader::tests::{WalBuilder, SEG};
    use super::super::reader::{ParseLimits, WalParser};
    use super::super::source::MemSource;
    use super::*;

    fn create_body(oid: u32, path: &str) -> Vec<u8> {
        let mut main = oid.to_le_bytes().to_vec();
        main.extend_from_slice(path.as_bytes());
        main.push(0);
        let mut body = vec![255u8, main.len() as u8];
        body.extend_from_slice(&main);
        body
    }

    fn parse(bytes: &[u8]) -> Vec<TablespaceRecord> {
        let mut p = WalParser {
            segment_size: SEG,
            major: 15,
            tli: None,
            system_id: None,
            magic: None,
        };
        let mut src = MemSource {
            start: Lsn(SEG),
            data: bytes,
        };
        let out = p
            .parse(&mut src, Lsn(SEG + 40), None, ParseLimits::default())
            .unwrap();
        out.tablespaces
    }

    /// A create record placed across a page boundary (and one across a segment boundary) is
    /// found, blanked byte by byte at its physical positions, and then parses with a valid CRC
    /// and an empty path; blanking again changes nothing.
    #[test]
    fn create_records_are_blanked_across_pages_and_segments() {
        let mut b = WalBuilder::new(SEG);
        // Fill so that the next record straddles the first page boundary.
        b.record(0, 0, &vec![0u8; 8192 - 40 - 24 - 24 - 16]);
        b.record(
            RM_TBLSPC_ID,
            XLOG_TBLSPC_CREATE,
            &create_body(16384, "/srv/ts/one"),
        );
        // And one straddling the segment boundary.
        while (b.start + b.bytes.len() as u64) < 2 * SEG - 8192 {
            b.record(0, 0, &[0u8; 4000]);
        }
        let room = 2 * SEG - (b.start + b.bytes.len() as u64);
        b.record(0, 0, &vec![0u8; room as usize - 24 - 40 - 24]);
        let long_path = "/srv/".to_string() + &"x".repeat(120);
        b.record(
            RM_TBLSPC_ID,
            XLOG_TBLSPC_CREATE,
            &create_body(16390, &long_path),
        );
        let mut drop = vec![255u8, 4];
        drop.extend_from_slice(&16384u32.to_le_bytes());
        b.record(RM_TBLSPC_ID, XLOG_TBLSPC_DROP, &drop);
        let found = parse(&b.bytes);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].create.as_deref(), Some("/srv/ts/one"));
        assert_eq!(found[1].create.as_deref(), Some(long_path.as_str()));
        assert_eq!((found[2].oid, found[2].create.clone()), (16384, None));
        // The records really cross: the first a page, the second a segment.
        let end0 = byte_position(found[0].lsn, found[0].raw.len() as u64 - 1, SEG);
        assert_ne!(found[0].lsn.0 / 8192, end0.0 / 8192);
        let end1 = byte_position(found[1].lsn, found[1].raw.len() as u64 - 1, SEG);
        assert_ne!(found[1].lsn.0 / SEG, end1.0 / SEG);
        let mut bytes = b.bytes.clone();
        for r in &found {
            for (at, v) in r.blanked(15, SEG) {
                bytes[(at.0 - SEG) as usize] = v;
            }
        }
        let again = parse(&bytes);
        assert_eq!(again.len(), 3, "the chain still parses after blanking");
        assert_eq!(again[0].create.as_deref(), Some(""));
        assert_eq!(again[1].create.as_deref(), Some(""));
        assert_eq!(again[0].oid, 16384);
        assert_eq!(again[1].oid, 16390);
        assert!(again.iter().all(|r| r.blanked(15, SEG).is_empty()));
        // Nothing but path bytes and CRCs changed.
        let changed = bytes.iter().zip(&b.bytes).filter(|(a, b)| a != b).count();
        assert!(
            changed <= "/srv/ts/one".len() + long_path.len() + 8,
            "{changed}"
        );
    }
}
