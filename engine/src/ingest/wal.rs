//! Building WAL layers from a directory of segments.
//!
//! Ingest is two passes. [`scan`] validates the whole chain that is available (from the
//! timeline's head to the server's flush position, or to the end of valid WAL after a clean
//! shutdown) and fails — writing nothing — when the chain breaks before the position the
//! server vouches for. [`write_layer`] then copies a validated range into a layer file.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ids::{LayerId, Lsn, TimelineId};
use crate::layer::file::{LayerKind, LayerWriter};
use crate::layer::wal::{WalChunk, WalMeta, CHUNK};
use crate::wal::{
    segment_file_name, ParseLimits, ParseOutcome, StopReason, WalParser, WalSource, XLOG_BLCKSZ,
};

/// Identity of the WAL stream being ingested.
#[derive(Debug, Clone)]
pub struct WalStream {
    pub timeline: TimelineId,
    pub system_id: u64,
    pub pg_major: u32,
    pub tli: u32,
    pub segment_size: u64,
}

impl WalStream {
    pub fn parser(&self) -> WalParser {
        WalParser {
            segment_size: self.segment_size,
            major: self.pg_major,
            tli: Some(self.tli),
            system_id: Some(self.system_id),
            magic: None,
        }
    }
}

/// Validates the chain from `start` (whose predecessor began at `prev`).
///
/// With `vouched = Some(l)` the server has flushed WAL up to `l` (records are accepted only up
/// to there), so anything that stops the chain before `l` is an error: a missing segment (a
/// gap) or a broken record (corruption). With `None` the chain ends where valid WAL ends, but
/// it must still contain the record starting at `must_reach` when that is given (a stopped
/// server's last checkpoint, from its control file).
#[allow(clippy::too_many_arguments)]
pub fn scan(
    stream: &WalStream,
    src: &mut dyn WalSource,
    source_desc: &Path,
    start: Lsn,
    prev: Option<Lsn>,
    vouched: Option<Lsn>,
    must_reach: Option<Lsn>,
    max_bytes: Option<u64>,
) -> Result<ParseOutcome> {
    let mut parser = stream.parser();
    let out = parser
        .parse(
            src,
            start,
            prev,
            ParseLimits {
                end: vouched,
                max_bytes,
                resume_every: Some(CHUNK),
            },
        )
        .map_err(|e| Error::io(format!("read WAL from {}", source_desc.display()), e))?;
    let required = match (vouched, must_reach) {
        (Some(v), _) => Some(v),
        // The record starting at `m` must be in the chain: its start lies below the end.
        (None, Some(m)) if max_bytes.is_none() && out.last_record.is_none_or(|r| r < m) => {
            Some(Lsn(m.0 + 1))
        }
        _ => None,
    };
    if let Some(limit) = required {
        let seg = |l: Lsn| {
            source_desc.join(segment_file_name(
                stream.tli,
                l.segment_number(stream.segment_size),
                stream.segment_size,
            ))
        };
        match &out.stop {
            StopReason::EndOfAvailable { at } if *at < limit => {
                return Err(Error::corrupt(
                    format!("WAL segment {}", seg(*at).display()),
                    format!(
                        "missing or short: WAL is needed from {at} up to {limit}, which the \
                         server reports as written, but the segment holding {at} is not there \
                         (a gap in the WAL). Nothing was ingested. If the segment was removed \
                         by hand, take a new image (cairn image create) to restart the chain"
                    ),
                ));
            }
            StopReason::Invalid { at, reason } if *at < limit => {
                return Err(Error::corrupt(
                    format!("WAL segment {}", seg(*at).display()),
                    format!(
                        "the record chain breaks at {at} ({reason}) although the server reports \
                         WAL written up to {limit}: the WAL is corrupt or has a gap. Nothing \
                         was ingested"
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A durable WAL layer file.
pub struct BuiltWal {
    pub id: LayerId,
    pub file_size: u64,
    pub path: PathBuf,
    pub meta: WalMeta,
}

/// Copies the validated range of `out` into a new WAL layer under `out_dir`.
pub fn write_layer(
    out_dir: &Path,
    stream: &WalStream,
    src: &mut dyn WalSource,
    out: &ParseOutcome,
    prev: Option<Lsn>,
    created_at_us: i64,
) -> Result<BuiltWal> {
    let data_start = out.start.align_down(XLOG_BLCKSZ);
    let end = out.end;
    let mut w = LayerWriter::create(out_dir, LayerKind::Wal)?;
    let mut chunks = Vec::new();
    let mut page = vec![0u8; XLOG_BLCKSZ as usize];
    let mut at = data_start;
    while at < end {
        let chunk_end = Lsn((at.0 + CHUNK).min(end.0));
        let mut raw = Vec::with_capacity((chunk_end.0 - at.0) as usize);
        let mut p = at;
        while p < chunk_end {
            let page_start = p.align_down(XLOG_BLCKSZ);
            let n = src
                .read_page(page_start, &mut page)
                .map_err(|e| Error::io(format!("read WAL at {page_start}"), e))?;
            // Past the available bytes lies only the padding after a segment switch.
            page[n..].fill(0);
            let from = (p.0 - page_start.0) as usize;
            let to = ((page_start.0 + XLOG_BLCKSZ).min(chunk_end.0) - page_start.0) as usize;
            raw.extend_from_slice(&page[from..to]);
            p = Lsn(page_start.0 + to as u64);
        }
        let compressed = zstd::bulk::compress(&raw, 1).map_err(|e| Error::io("compress WAL", e))?;
        let offset = w.append_blob(&compressed)?;
        chunks.push(WalChunk {
            lsn: at,
            raw_len: raw.len() as u32,
            offset,
            clen: compressed.len() as u32,
            hash: Sha256::digest(&raw).into(),
        });
        at = chunk_end;
    }
    let meta = WalMeta {
        system_id: stream.system_id,
        pg_major: stream.pg_major,
        tli: stream.tli,
        segment_size: stream.segment_size,
        timeline: stream.timeline,
        data_start,
        start: out.start,
        end,
        prev_record: prev,
        last_record: out.last_record.unwrap_or(Lsn(0)),
        created_at_us,
        chunks,
        events: out.events.clone(),
        resume_points: out.resume_points.clone(),
    };
    crate::failpoint::hit("wal-layer-mid-write");
    let (id, file_size, path) = w.finish(&meta.encode())?;
    Ok(BuiltWal {
        id,
        file_size,
        path,
        meta,
    })
}

/// Reads `[from, to)` of a WAL layer file into `buf` at offset `from - buf_start`.
pub fn read_range(
    file: &crate::layer::LayerFile,
    meta: &WalMeta,
    from: Lsn,
    to: Lsn,
    buf: &mut [u8],
    buf_start: Lsn,
) -> Result<()> {
    for c in &meta.chunks {
        let c_end = Lsn(c.lsn.0 + c.raw_len as u64);
        if c_end <= from || c.lsn >= to {
            continue;
        }
        let raw = file.read_blob(c.offset, c.clen, c.raw_len, &c.hash)?;
        let lo = from.max(c.lsn);
        let hi = to.min(c_end);
        let src = &raw[(lo.0 - c.lsn.0) as usize..(hi.0 - c.lsn.0) as usize];
        let dst = (lo.0 - buf_start.0) as usize;
        buf[dst..dst + src.len()].copy_from_slice(src);
    }
    Ok(())
}

/// WAL pages served from a WAL layer file, one decompressed chunk cached.
pub struct LayerWalSource<'a> {
    pub file: &'a crate::layer::LayerFile,
    pub meta: &'a WalMeta,
    cached: Option<(Lsn, Vec<u8>)>,
}

impl<'a> LayerWalSource<'a> {
    pub fn new(file: &'a crate::layer::LayerFile, meta: &'a WalMeta) -> Self {
        LayerWalSource {
            file,
            meta,
            cached: None,
        }
    }
}

impl crate::wal::WalSource for LayerWalSource<'_> {
    fn read_page(&mut self, page: Lsn, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut got = 0;
        let want = XLOG_BLCKSZ as usize;
        while got < want {
            let at = Lsn(page.0 + got as u64);
            let Some(c) = self
                .meta
                .chunks
                .iter()
                .find(|c| c.lsn <= at && at.0 < c.lsn.0 + c.raw_len as u64)
            else {
                break;
            };
            if self.cached.as_ref().map(|(l, _)| *l) != Some(c.lsn) {
                let raw = self
                    .file
                    .read_blob(c.offset, c.clen, c.raw_len, &c.hash)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                self.cached = Some((c.lsn, raw));
            }
            let (base, raw) = self.cached.as_ref().expect("cached");
            let from = (at.0 - base.0) as usize;
            let n = (want - got).min(raw.len() - from);
            buf[got..got + n].copy_from_slice(&raw[from..from + n]);
            got += n;
        }
        Ok(got)
    }
}
