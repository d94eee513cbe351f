//! Where WAL bytes come from: a `pg_wal`-style directory of segment files, or memory.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::XLOG_BLCKSZ;
use crate::ids::Lsn;

/// Random access to WAL pages by LSN.
pub trait WalSource {
    /// Reads the page starting at `page` (a multiple of 8 KiB) into `buf` and returns how many
    /// leading bytes of it are available (0 when the page is not there at all).
    fn read_page(&mut self, page: Lsn, buf: &mut [u8]) -> io::Result<usize>;
}

/// PostgreSQL's name for a segment file: timeline, then the segment number split in two.
pub fn segment_file_name(tli: u32, segno: u64, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000u64 / segment_size;
    format!("{:08X}{:08X}{:08X}", tli, segno / per_id, segno % per_id)
}

/// Segment files in a directory (a server's `pg_wal`, or a `pg_receivewal` spool where the
/// segment being written carries a `.partial` suffix).
pub struct DirSource {
    dir: PathBuf,
    tli: u32,
    segment_size: u64,
    open: HashMap<u64, Option<File>>,
}

impl DirSource {
    pub fn new(dir: &Path, tli: u32, segment_size: u64) -> DirSource {
        DirSource {
            dir: dir.to_path_buf(),
            tli,
            segment_size,
            open: HashMap::new(),
        }
    }

    /// The path of the segment holding `lsn`, whether or not it exists.
    pub fn segment_path(&self, lsn: Lsn) -> PathBuf {
        self.dir.join(segment_file_name(
            self.tli,
            lsn.segment_number(self.segment_size),
            self.segment_size,
        ))
    }

    fn file(&mut self, segno: u64) -> io::Result<Option<&File>> {
        if !self.open.contains_key(&segno) {
            if self.open.len() > 4 {
                self.open.clear();
            }
            let name = segment_file_name(self.tli, segno, self.segment_size);
            let mut found = None;
            for candidate in [name.clone(), format!("{name}.partial")] {
                match File::open(self.dir.join(&candidate)) {
                    Ok(f) => {
                        found = Some(f);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            self.open.insert(segno, found);
        }
        Ok(self.open.get(&segno).and_then(|f| f.as_ref()))
    }

    /// Forgets open files so that segments that appeared since are seen.
    pub fn refresh(&mut self) {
        self.open.clear();
    }
}

impl WalSource for DirSource {
    fn read_page(&mut self, page: Lsn, buf: &mut [u8]) -> io::Result<usize> {
        let segno = page.segment_number(self.segment_size);
        let off = page.segment_offset(self.segment_size);
        let Some(f) = self.file(segno)? else {
            return Ok(0);
        };
        let want = XLOG_BLCKSZ as usize;
        let mut got = 0;
        while got < want {
            let n = f.read_at(&mut buf[got..want], off + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }
}

/// WAL bytes held in memory: `data[0]` is the byte at `start`.
pub struct MemSource<'a> {
    pub start: Lsn,
    pub data: &'a [u8],
}

impl WalSource for MemSource<'_> {
    fn read_page(&mut self, page: Lsn, buf: &mut [u8]) -> io::Result<usize> {
        let page_end = page.0 + XLOG_BLCKSZ;
        let data_end = self.start.0 + self.data.len() as u64;
        if page_end <= self.start.0 || page.0 >= data_end {
            return Ok(0);
        }
        // Bytes before `start` are unknown: treat the page as unavailable unless it starts
        // inside our data (callers always hand page-aligned buffers).
        if page.0 < self.start.0 {
            return Ok(0);
        }
        let from = (page.0 - self.start.0) as usize;
        let to = (page_end.min(data_end) - self.start.0) as usize;
        buf[..to - from].copy_from_slice(&self.data[from..to]);
        Ok(to - from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_match_postgres() {
        let seg = 16 << 20;
        assert_eq!(segment_file_name(1, 2, seg), "000000010000000000000002");
        assert_eq!(segment_file_name(1, 0x100, seg), "000000010000000100000000");
        assert_eq!(segment_file_name(3, 0x1FF, seg), "0000000300000001000000FF");
        assert_eq!(segment_file_name(1, 5, 1 << 30), "000000010000000100000001");
    }

    #[test]
    fn mem_source_reports_partial_pages() {
        let data = vec![7u8; 8192 + 100];
        let mut s = MemSource {
            start: Lsn(0x2000),
            data: &data,
        };
        let mut buf = vec![0u8; 8192];
        assert_eq!(s.read_page(Lsn(0x2000), &mut buf).unwrap(), 8192);
        assert_eq!(s.read_page(Lsn(0x4000), &mut buf).unwrap(), 100);
        assert_eq!(s.read_page(Lsn(0x6000), &mut buf).unwrap(), 0);
        assert_eq!(s.read_page(Lsn(0), &mut buf).unwrap(), 0);
    }
}
