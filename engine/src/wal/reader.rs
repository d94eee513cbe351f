//! The record chain parser: walks WAL records from a known boundary, validating as it goes.

use std::io;

use super::page::{PageHeader, XLP_LONG_HEADER};
use super::record::{event_of, is_switch, WalEvent};
use super::source::WalSource;
use super::tablespace::{tablespace_of, TablespaceRecord};
use super::{page_header_size, MAX_RECORD, RECORD_HEADER, XLOG_BLCKSZ};
use crate::ids::Lsn;

/// What the WAL is expected to look like. Fields left `None` are learnt from the first page.
#[derive(Debug, Clone)]
pub struct WalParser {
    pub segment_size: u64,
    pub major: u32,
    pub tli: Option<u32>,
    pub system_id: Option<u64>,
    pub magic: Option<u16>,
}

/// Where parsing may stop.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseLimits {
    /// Accept only records whose bytes all lie before this position (a server's flush LSN).
    pub end: Option<Lsn>,
    /// Stop at the first record boundary after this many bytes.
    pub max_bytes: Option<u64>,
    /// Record a resume point (see [`ParseOutcome::resume_points`]) in every window of this many
    /// bytes, counted from `start` rounded down to a page.
    pub resume_every: Option<u64>,
}

/// Why parsing stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The next record would cross [`ParseLimits::end`].
    Limit,
    /// [`ParseLimits::max_bytes`] was reached at a record boundary.
    MaxBytes,
    /// The source has no more bytes at `at`.
    EndOfAvailable { at: Lsn },
    /// The bytes at `at` are not a valid continuation of the chain. At the end of a cleanly
    /// written WAL this is the normal end (zeroes or a recycled segment); before a known flush
    /// position it is corruption or a gap.
    Invalid { at: Lsn, reason: String },
}

/// The result of a parse: the accepted chain `[start, end)`.
#[derive(Debug, Clone)]
pub struct ParseOutcome {
    pub start: Lsn,
    /// End of the last accepted record (`start` when none was accepted).
    pub end: Lsn,
    /// Start of the last accepted record (the `xl_prev` the next record must carry).
    pub last_record: Option<Lsn>,
    pub records: u64,
    pub events: Vec<WalEvent>,
    /// Tablespace creates and drops, in order.
    pub tablespaces: Vec<TablespaceRecord>,
    pub stop: StopReason,
    /// (record boundary, start of the record ending there): the first boundary reached in each
    /// `resume_every` window, from which a later reader can parse without starting over.
    pub resume_points: Vec<(Lsn, Lsn)>,
}

enum Halt {
    Stop(StopReason),
    Io(io::Error),
}

impl From<io::Error> for Halt {
    fn from(e: io::Error) -> Self {
        Halt::Io(e)
    }
}

fn invalid(at: u64, reason: String) -> Halt {
    Halt::Stop(StopReason::Invalid {
        at: Lsn(at),
        reason,
    })
}

struct PageCache {
    lsn: Option<u64>,
    buf: Vec<u8>,
    valid: usize,
}

impl WalParser {
    /// Walks records from `start` (a record boundary) whose predecessor began at `prev`.
    ///
    /// Returns the chain it could validate; I/O errors from the source are returned as errors,
    /// anything wrong with the bytes ends the chain and is described in the stop reason.
    pub fn parse(
        &mut self,
        src: &mut dyn WalSource,
        start: Lsn,
        prev: Option<Lsn>,
        limits: ParseLimits,
    ) -> io::Result<ParseOutcome> {
        let mut out = ParseOutcome {
            start,
            end: start,
            last_record: prev,
            records: 0,
            events: Vec::new(),
            tablespaces: Vec::new(),
            stop: StopReason::Limit,
            resume_points: Vec::new(),
        };
        let base = start.align_down(XLOG_BLCKSZ).0;
        let mut last_window = None;
        let mut cache = PageCache {
            lsn: None,
            buf: vec![0u8; XLOG_BLCKSZ as usize],
            valid: 0,
        };
        let mut rec = Vec::with_capacity(8192);
        loop {
            if let Some(max) = limits.max_bytes {
                if out.end.0 - start.0 >= max {
                    out.stop = StopReason::MaxBytes;
                    return Ok(out);
                }
            }
            match self.read_record(
                src,
                &mut cache,
                out.end.0,
                out.last_record,
                limits,
                &mut rec,
            ) {
                Ok((rec_start, rec_end)) => {
                    if let Some(ev) = event_of(&rec, out.end, Lsn(rec_end), self.major) {
                        out.events.push(ev);
                    }
                    if let Some(t) = tablespace_of(&rec, Lsn(rec_start), self.major) {
                        out.tablespaces.push(t);
                    }
                    out.records += 1;
                    out.last_record = Some(Lsn(rec_start));
                    out.end = Lsn(rec_end);
                    if let Some(every) = limits.resume_every {
                        let w = (rec_end - base) / every;
                        if last_window != Some(w) {
                            last_window = Some(w);
                            out.resume_points.push((Lsn(rec_end), Lsn(rec_start)));
                        }
                    }
                }
                Err(Halt::Stop(reason)) => {
                    out.stop = reason;
                    return Ok(out);
                }
                Err(Halt::Io(e)) => return Err(e),
            }
        }
    }

    fn load_page(
        &mut self,
        src: &mut dyn WalSource,
        cache: &mut PageCache,
        page: u64,
    ) -> Result<(), Halt> {
        if cache.lsn == Some(page) {
            return Ok(());
        }
        cache.lsn = None;
        let valid = src.read_page(Lsn(page), &mut cache.buf)?;
        let hdr_size = page_header_size(page, self.segment_size) as usize;
        if valid == 0 {
            return Err(Halt::Stop(StopReason::EndOfAvailable { at: Lsn(page) }));
        }
        if valid < hdr_size {
            return Err(Halt::Stop(StopReason::EndOfAvailable { at: Lsn(page) }));
        }
        let h = PageHeader::decode(&cache.buf[..hdr_size])
            .ok_or_else(|| invalid(page, "truncated page header".into()))?;
        match self.magic {
            Some(m) if m != h.magic => {
                return Err(invalid(
                    page,
                    format!("invalid magic number {:04X} in WAL page", h.magic),
                ))
            }
            None => {
                if ![0xD10D, 0xD110, 0xD113, 0xD116].contains(&h.magic) {
                    return Err(invalid(
                        page,
                        format!("invalid magic number {:04X} in WAL page", h.magic),
                    ));
                }
                self.magic = Some(h.magic);
            }
            _ => {}
        }
        if h.has_unknown_flags() {
            return Err(invalid(page, format!("invalid info bits {:04X}", h.info)));
        }
        if h.pageaddr != page {
            return Err(invalid(
                page,
                format!(
                    "unexpected page address {} (a recycled or foreign segment)",
                    Lsn(h.pageaddr)
                ),
            ));
        }
        match self.tli {
            Some(t) if t != h.tli => {
                return Err(invalid(
                    page,
                    format!("unexpected timeline ID {} (expected {t})", h.tli),
                ))
            }
            None => self.tli = Some(h.tli),
            _ => {}
        }
        let want_long = page.is_multiple_of(self.segment_size);
        if want_long != (h.info & XLP_LONG_HEADER != 0) {
            return Err(invalid(page, "long page header flag is wrong".into()));
        }
        if let Some((sysid, seg, blck)) = h.long {
            if seg as u64 != self.segment_size || blck as u64 != XLOG_BLCKSZ {
                return Err(invalid(
                    page,
                    format!("segment size {seg} / block size {blck} do not match the cluster"),
                ));
            }
            match self.system_id {
                Some(s) if s != sysid => {
                    return Err(invalid(
                        page,
                        format!("WAL belongs to database system {sysid}, expected {s}"),
                    ))
                }
                None => self.system_id = Some(sysid),
                _ => {}
            }
        }
        cache.lsn = Some(page);
        cache.valid = valid;
        Ok(())
    }

    /// Appends `n` record bytes from position `*p` to `rec`, crossing pages as needed.
    #[allow(clippy::too_many_arguments)]
    fn read_bytes(
        &mut self,
        src: &mut dyn WalSource,
        cache: &mut PageCache,
        p: &mut u64,
        mut n: usize,
        total: Option<u32>,
        limits: ParseLimits,
        rec: &mut Vec<u8>,
    ) -> Result<(), Halt> {
        while n > 0 {
            let page = *p - *p % XLOG_BLCKSZ;
            let hdr = page_header_size(page, self.segment_size);
            if *p == page {
                // A continuation page.
                self.load_page(src, cache, page)?;
                let h = PageHeader::decode(&cache.buf[..hdr as usize])
                    .ok_or_else(|| invalid(page, "truncated page header".into()))?;
                if !h.is_contrecord() {
                    return Err(invalid(page, "there is no contrecord flag".into()));
                }
                if let Some(t) = total {
                    let remaining = t as u64 - rec.len() as u64;
                    if h.rem_len as u64 != remaining {
                        return Err(invalid(
                            page,
                            format!(
                                "invalid contrecord length {} (expected {remaining})",
                                h.rem_len
                            ),
                        ));
                    }
                }
                *p += hdr;
            } else {
                self.load_page(src, cache, page)?;
            }
            let off = (*p - page) as usize;
            let in_page = XLOG_BLCKSZ as usize - off;
            let take = n.min(in_page);
            if let Some(end) = limits.end {
                if *p + take as u64 > end.0 {
                    return Err(Halt::Stop(StopReason::Limit));
                }
            }
            if off + take > cache.valid {
                return Err(Halt::Stop(StopReason::EndOfAvailable {
                    at: Lsn(page + cache.valid as u64),
                }));
            }
            rec.extend_from_slice(&cache.buf[off..off + take]);
            *p += take as u64;
            n -= take;
        }
        Ok(())
    }

    /// Reads and validates the record that starts at boundary `pos`; returns (start, end).
    fn read_record(
        &mut self,
        src: &mut dyn WalSource,
        cache: &mut PageCache,
        pos: u64,
        prev: Option<Lsn>,
        limits: ParseLimits,
        rec: &mut Vec<u8>,
    ) -> Result<(u64, u64), Halt> {
        rec.clear();
        let mut p = pos;
        let page = p - p % XLOG_BLCKSZ;
        let hdr = page_header_size(page, self.segment_size);
        self.load_page(src, cache, page)?;
        if p == page {
            let h = PageHeader::decode(&cache.buf[..hdr as usize])
                .ok_or_else(|| invalid(page, "truncated page header".into()))?;
            if h.is_contrecord() && h.rem_len > 0 {
                return Err(invalid(
                    page,
                    "a record continues here, but a new record was expected".into(),
                ));
            }
            p += hdr;
        } else if p < page + hdr {
            return Err(invalid(p, "position lies inside a page header".into()));
        }
        if !p.is_multiple_of(8) {
            return Err(invalid(p, "record position is not MAXALIGNed".into()));
        }
        let start = p;
        // xl_tot_len is always on the first page (at least 8 bytes remain on it).
        self.read_bytes(src, cache, &mut p, 4, None, limits, rec)?;
        let tot_len = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        if (tot_len as usize) < RECORD_HEADER {
            return Err(invalid(
                start,
                format!("invalid record length: wanted {RECORD_HEADER}, got {tot_len}"),
            ));
        }
        if tot_len > MAX_RECORD {
            return Err(invalid(
                start,
                format!("record length {tot_len} is too large"),
            ));
        }
        self.read_bytes(
            src,
            cache,
            &mut p,
            RECORD_HEADER - 4,
            Some(tot_len),
            limits,
            rec,
        )?;
        let xl_prev = u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes"));
        if let Some(expected) = prev {
            if xl_prev != expected.0 {
                return Err(invalid(
                    start,
                    format!(
                        "record with incorrect prev-link {} (expected {expected})",
                        Lsn(xl_prev)
                    ),
                ));
            }
        }
        self.read_bytes(
            src,
            cache,
            &mut p,
            tot_len as usize - RECORD_HEADER,
            Some(tot_len),
            limits,
            rec,
        )?;
        let stored_crc = u32::from_le_bytes(rec[20..24].try_into().expect("4 bytes"));
        let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[RECORD_HEADER..]), &rec[..20]);
        if crc != stored_crc {
            return Err(invalid(
                start,
                "incorrect resource manager data checksum in record".into(),
            ));
        }
        let mut end = Lsn(p).maxalign().0;
        if is_switch(rec) && !end.is_multiple_of(self.segment_size) {
            end += self.segment_size - end % self.segment_size;
        }
        Ok((start, end))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::page::XLP_FIRST_IS_CONTRECORD;
    use super::super::source::MemSource;
    use super::*;

    pub const SEG: u64 = 1 << 20;

    /// Builds a syntactically valid WAL stream from `start` (a segment boundary) holding the
    /// given record bodies, the way PostgreSQL lays records out across pages.
    pub struct WalBuilder {
        pub start: u64,
        pub bytes: Vec<u8>,
        pub prev: u64,
        pub ends: Vec<u64>,
        pub starts: Vec<u64>,
    }

    impl WalBuilder {
        pub fn new(start: u64) -> WalBuilder {
            assert_eq!(start % SEG, 0);
            let mut b = WalBuilder {
                start,
                bytes: Vec::new(),
                prev: 0,
                ends: Vec::new(),
                starts: Vec::new(),
            };
            b.page_header(0);
            b
        }

        fn pos(&self) -> u64 {
            self.start + self.bytes.len() as u64
        }

        fn page_header(&mut self, rem_len: u32) {
            let page = self.pos();
            let long = page.is_multiple_of(SEG);
            let mut info = if rem_len > 0 {
                XLP_FIRST_IS_CONTRECORD
            } else {
                0
            };
            if long {
                info |= XLP_LONG_HEADER;
            }
            let h = PageHeader {
                magic: 0xD110,
                info,
                tli: 1,
                pageaddr: page,
                rem_len,
                long: long.then_some((42, SEG as u32, 8192)),
            };
            self.bytes.extend_from_slice(&h.encode());
        }

        pub fn record(&mut self, rmid: u8, info: u8, body: &[u8]) -> u64 {
            let mut rec = vec![0u8; RECORD_HEADER];
            rec.extend_from_slice(body);
            let tot = rec.len() as u32;
            rec[0..4].copy_from_slice(&tot.to_le_bytes());
            rec[8..16].copy_from_slice(&self.prev.to_le_bytes());
            rec[16] = info;
            rec[17] = rmid;
            let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[RECORD_HEADER..]), &rec[..20]);
            rec[20..24].copy_from_slice(&crc.to_le_bytes());
            if self.pos().is_multiple_of(XLOG_BLCKSZ) {
                self.page_header(0);
            }
            let start = self.pos();
            let mut written = 0;
            while written < rec.len() {
                if self.pos().is_multiple_of(XLOG_BLCKSZ) {
                    self.page_header((rec.len() - written) as u32);
                }
                let room = (XLOG_BLCKSZ - self.pos() % XLOG_BLCKSZ) as usize;
                let take = room.min(rec.len() - written);
                self.bytes.extend_from_slice(&rec[written..written + take]);
                written += take;
            }
            while !self.bytes.len().is_multiple_of(8) {
                self.bytes.push(0);
            }
            self.prev = start;
            self.starts.push(start);
            self.ends.push(self.pos());
            self.pos()
        }
    }

    fn parser() -> WalParser {
        WalParser {
            segment_size: SEG,
            major: 15,
            tli: None,
            system_id: None,
            magic: None,
        }
    }

    fn build(sizes: &[usize]) -> WalBuilder {
        let mut b = WalBuilder::new(SEG);
        for (i, s) in sizes.iter().enumerate() {
            b.record(10, 0, &vec![i as u8; *s]);
        }
        b
    }

    #[test]
    fn parses_records_across_pages_and_stops_at_zeroes() {
        let sizes = [10, 5000, 9000, 3, 20000, 8, 8130, 100];
        let mut b = build(&sizes);
        let end = b.pos();
        b.bytes.resize(b.bytes.len() + 3 * 8192, 0);
        let mut src = MemSource {
            start: Lsn(SEG),
            data: &b.bytes,
        };
        let out = parser()
            .parse(&mut src, Lsn(SEG), None, ParseLimits::default())
            .unwrap();
        assert_eq!(out.records, sizes.len() as u64);
        assert_eq!(out.end, Lsn(end));
        assert_eq!(out.last_record, Some(Lsn(*b.starts.last().unwrap())));
        assert!(matches!(out.stop, StopReason::Invalid { at, .. } if at == Lsn(end)));
    }

    #[test]
    fn limit_accepts_only_whole_records() {
        let b = build(&[100, 100, 100]);
        for cut in [b.ends[1], b.ends[1] + 5, b.ends[2] - 8] {
            let mut src = MemSource {
                start: Lsn(SEG),
                data: &b.bytes,
            };
            let out = parser()
                .parse(
                    &mut src,
                    Lsn(SEG),
                    None,
                    ParseLimits {
                        end: Some(Lsn(cut)),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(out.end, Lsn(b.ends[1]), "cut at {cut:x}");
            assert_eq!(out.stop, StopReason::Limit);
        }
    }

    #[test]
    fn resumes_from_a_middle_boundary_with_prev_link() {
        let b = build(&[100, 9000, 100, 50]);
        let mut src = MemSource {
            start: Lsn(SEG),
            data: &b.bytes,
        };
        let out = parser()
            .parse(
                &mut src,
                Lsn(b.ends[1]),
                Some(Lsn(b.starts[1])),
                ParseLimits::default(),
            )
            .unwrap();
        assert_eq!(out.records, 2);
        assert_eq!(out.end, Lsn(b.ends[3]));
        // A wrong predecessor is refused at once.
        let out = parser()
            .parse(
                &mut src,
                Lsn(b.ends[1]),
                Some(Lsn(b.starts[0])),
                ParseLimits::default(),
            )
            .unwrap();
        assert_eq!(out.records, 0);
        assert!(
            matches!(&out.stop, StopReason::Invalid { reason, .. } if reason.contains("prev-link"))
        );
    }

    #[test]
    fn detects_corruption_and_truncation() {
        let b = build(&[100, 3000, 100]);
        // Flip a bit in the second record's payload.
        let mut bad = b.bytes.clone();
        let off = (b.starts[1] - SEG) as usize + 40;
        bad[off] ^= 1;
        let mut src = MemSource {
            start: Lsn(SEG),
            data: &bad,
        };
        let out = parser()
            .parse(&mut src, Lsn(SEG), None, ParseLimits::default())
            .unwrap();
        assert_eq!(out.records, 1);
        assert!(
            matches!(&out.stop, StopReason::Invalid { at, reason } if *at == Lsn(b.starts[1]) && reason.contains("checksum"))
        );
        // Truncated source: end of available bytes, not a corruption.
        let short = &b.bytes[..(b.ends[1] - SEG) as usize - 5];
        let mut src = MemSource {
            start: Lsn(SEG),
            data: short,
        };
        let out = parser()
            .parse(&mut src, Lsn(SEG), None, ParseLimits::default())
            .unwrap();
        assert_eq!(out.records, 1);
        assert!(matches!(out.stop, StopReason::EndOfAvailable { .. }));
    }

    #[test]
    fn recycled_page_is_end_of_wal() {
        // One record filling the first page exactly, so the next record starts a new page.
        let mut b = build(&[8192 - 40 - 24]);
        let end = b.pos();
        assert_eq!(end % 8192, 0);
        // That page carries an old page address, as a recycled segment would.
        let page = end;
        let h = PageHeader {
            magic: 0xD110,
            info: 0,
            tli: 1,
            pageaddr: page - SEG,
            rem_len: 0,
            long: None,
        };
        b.bytes.extend_from_slice(&h.encode());
        b.bytes.resize(b.bytes.len() + 8192, 0xAB);
        let mut src = MemSource {
            start: Lsn(SEG),
            data: &b.bytes,
        };
        let out = parser()
            .parse(
                &mut src,
                Lsn(end),
                Some(Lsn(b.starts[0])),
                ParseLimits::default(),
            )
            .unwrap();
        assert_eq!(out.records, 0);
        assert_eq!(out.end, Lsn(end));
    }
}
