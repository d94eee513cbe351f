//! WAL layer metadata: the LSN range, how the bytes are chunked, and the events inside.

use super::codec::{Dec, DecodeError, Enc};
use crate::ids::{Lsn, TimelineId};
use crate::wal::{EventKind, WalEvent};

/// Raw WAL bytes per chunk (each chunk is one zstd frame).
pub const CHUNK: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalChunk {
    pub lsn: Lsn,
    pub raw_len: u32,
    pub offset: u64,
    pub clen: u32,
    pub hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalMeta {
    pub system_id: u64,
    pub pg_major: u32,
    pub tli: u32,
    pub segment_size: u64,
    pub timeline: TimelineId,
    /// First byte held (a page boundary at or before `start`).
    pub data_start: Lsn,
    /// The record boundary this layer continues from.
    pub start: Lsn,
    /// The record boundary after its last record.
    pub end: Lsn,
    /// Start of the record before `start` (the first record's `xl_prev`), when known.
    pub prev_record: Option<Lsn>,
    /// Start of the last record.
    pub last_record: Lsn,
    pub created_at_us: i64,
    pub chunks: Vec<WalChunk>,
    pub events: Vec<WalEvent>,
    /// (record boundary, start of the record ending there), about one per chunk: where a
    /// reader looking for a boundary can start parsing instead of at `start`.
    pub resume_points: Vec<(Lsn, Lsn)>,
}

impl WalMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u64(self.system_id);
        e.u32(self.pg_major);
        e.u32(self.tli);
        e.u64(self.segment_size);
        e.bytes(&self.timeline.0);
        e.u64(self.data_start.0);
        e.u64(self.start.0);
        e.u64(self.end.0);
        e.u64(self.prev_record.map_or(0, |l| l.0));
        e.u64(self.last_record.0);
        e.i64(self.created_at_us);
        e.u32(self.chunks.len() as u32);
        for c in &self.chunks {
            e.u64(c.lsn.0);
            e.u32(c.raw_len);
            e.u64(c.offset);
            e.u32(c.clen);
            e.bytes(&c.hash);
        }
        e.u32(self.events.len() as u32);
        for ev in &self.events {
            e.u8(event_code(ev.kind));
            e.u64(ev.before.0);
            e.u64(ev.end.0);
            e.i64(ev.time_us);
            e.str(ev.name.as_deref().unwrap_or(""));
        }
        e.u32(self.resume_points.len() as u32);
        for (b, p) in &self.resume_points {
            e.u64(b.0);
            e.u64(p.0);
        }
        e.buf
    }

    pub fn decode(buf: &[u8]) -> Result<WalMeta, DecodeError> {
        let mut d = Dec::new(buf);
        let system_id = d.u64("system id")?;
        let pg_major = d.u32("pg major")?;
        let tli = d.u32("tli")?;
        let segment_size = d.u64("segment size")?;
        let timeline = TimelineId(d.array("timeline")?);
        let data_start = Lsn(d.u64("data start")?);
        let start = Lsn(d.u64("start")?);
        let end = Lsn(d.u64("end")?);
        let prev = d.u64("prev record")?;
        let last_record = Lsn(d.u64("last record")?);
        let created_at_us = d.i64("created at")?;
        let n = d.count("chunks", 56)?;
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push(WalChunk {
                lsn: Lsn(d.u64("chunk lsn")?),
                raw_len: d.u32("chunk raw length")?,
                offset: d.u64("chunk offset")?,
                clen: d.u32("chunk length")?,
                hash: d.array("chunk hash")?,
            });
        }
        let n = d.count("events", 29)?;
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let code = d.u8("event kind")?;
            let kind = event_kind(code)
                .ok_or_else(|| DecodeError(format!("unknown event kind {code}")))?;
            let before = Lsn(d.u64("event before")?);
            let end = Lsn(d.u64("event end")?);
            let time_us = d.i64("event time")?;
            let name = d.str("event name")?;
            events.push(WalEvent {
                kind,
                before,
                end,
                time_us,
                name: (!name.is_empty()).then_some(name),
            });
        }
        let n = d.count("resume points", 16)?;
        let mut resume_points = Vec::with_capacity(n);
        for _ in 0..n {
            resume_points.push((Lsn(d.u64("resume boundary")?), Lsn(d.u64("resume prev")?)));
        }
        d.finish()?;
        if data_start > start || start > end {
            return Err(DecodeError(format!(
                "inconsistent range {data_start}..{start}..{end}"
            )));
        }
        let mut at = data_start;
        for c in &chunks {
            if c.lsn != at {
                return Err(DecodeError(format!(
                    "chunk at {} leaves a gap after {at}",
                    c.lsn
                )));
            }
            at = Lsn(at.0.checked_add(c.raw_len as u64).ok_or_else(|| {
                DecodeError(format!("chunk at {} runs past the end of the WAL", c.lsn))
            })?);
        }
        if at != end {
            return Err(DecodeError(format!("chunks end at {at}, layer at {end}")));
        }
        // What a layer says happened must have happened inside it: an event or a resume point
        // outside its range would move a point in time that another layer holds.
        for ev in &events {
            if !(start <= ev.before && ev.before < ev.end && ev.end <= end) {
                return Err(DecodeError(format!(
                    "event {}..{} lies outside the layer's {start}..{end}",
                    ev.before, ev.end
                )));
            }
        }
        for (b, p) in &resume_points {
            if !(start <= *b && *b <= end && p < b) {
                return Err(DecodeError(format!(
                    "resume point {b} (prev {p}) lies outside the layer's {start}..{end}"
                )));
            }
        }
        Ok(WalMeta {
            system_id,
            pg_major,
            tli,
            segment_size,
            timeline,
            data_start,
            start,
            end,
            prev_record: (prev != 0).then_some(Lsn(prev)),
            last_record,
            created_at_us,
            chunks,
            events,
            resume_points,
        })
    }

    /// The latest place at or before `l` to start parsing from: (boundary, previous record).
    pub fn resume_before(&self, l: Lsn) -> (Lsn, Option<Lsn>) {
        match self.resume_points.iter().rev().find(|(b, _)| *b <= l) {
            Some((b, p)) => (*b, Some(*p)),
            None => (self.start, self.prev_record),
        }
    }
}

fn event_code(k: EventKind) -> u8 {
    match k {
        EventKind::Commit => 1,
        EventKind::Abort => 2,
        EventKind::RestorePoint => 3,
        EventKind::Checkpoint => 4,
        EventKind::ShutdownCheckpoint => 5,
        EventKind::EndOfRecovery => 6,
    }
}

fn event_kind(c: u8) -> Option<EventKind> {
    Some(match c {
        1 => EventKind::Commit,
        2 => EventKind::Abort,
        3 => EventKind::RestorePoint,
        4 => EventKind::Checkpoint,
        5 => EventKind::ShutdownCheckpoint,
        6 => EventKind::EndOfRecovery,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_checks_chunk_continuity() {
        let m = WalMeta {
            system_id: 1,
            pg_major: 15,
            tli: 1,
            segment_size: 16 << 20,
            timeline: TimelineId([7; 16]),
            data_start: Lsn(0x300_0000),
            start: Lsn(0x300_00E8),
            end: Lsn(0x300_0200),
            prev_record: Some(Lsn(0x300_00C0)),
            last_record: Lsn(0x300_0188),
            created_at_us: 5,
            chunks: vec![WalChunk {
                lsn: Lsn(0x300_0000),
                raw_len: 0x200,
                offset: 16,
                clen: 40,
                hash: [9; 32],
            }],
            events: vec![WalEvent {
                kind: EventKind::RestorePoint,
                before: Lsn(0x300_0150),
                end: Lsn(0x300_0188),
                time_us: 42,
                name: Some("rp".into()),
            }],
            resume_points: vec![(Lsn(0x300_0150), Lsn(0x300_0128))],
        };
        assert_eq!(WalMeta::decode(&m.encode()).unwrap(), m);
        let mut gap = m.clone();
        gap.chunks[0].raw_len = 0x100;
        assert!(WalMeta::decode(&gap.encode()).is_err());
        // Events planted outside the layer's range (to move a point in time) are refused.
        for (before, end) in [(0x300_0010, 0x300_0040), (0x300_0150, 0x300_0300)] {
            let mut planted = m.clone();
            planted.events[0].before = Lsn(before);
            planted.events[0].end = Lsn(end);
            let e = WalMeta::decode(&planted.encode()).unwrap_err();
            assert!(e.0.contains("outside"), "{}", e.0);
        }
        let mut wrapped = m.clone();
        wrapped.chunks[0].lsn = Lsn(u64::MAX - 4);
        wrapped.data_start = Lsn(u64::MAX - 4);
        wrapped.start = Lsn(u64::MAX - 4);
        wrapped.end = Lsn(u64::MAX - 2);
        wrapped.events.clear();
        wrapped.resume_points.clear();
        let e = WalMeta::decode(&wrapped.encode()).unwrap_err();
        assert!(e.0.contains("past the end"), "{}", e.0);
    }
}
