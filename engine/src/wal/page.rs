//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData`).

pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_ALL_FLAGS: u16 = 0x000F;

/// A decoded page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: u32,
    pub pageaddr: u64,
    pub rem_len: u32,
    /// Long headers only: (system identifier, segment size, block size).
    pub long: Option<(u64, u32, u32)>,
}

impl PageHeader {
    /// Decodes the header at the start of `page` (at least 40 bytes when it is long).
    pub fn decode(page: &[u8]) -> Option<PageHeader> {
        if page.len() < 20 {
            return None;
        }
        let magic = u16::from_le_bytes([page[0], page[1]]);
        let info = u16::from_le_bytes([page[2], page[3]]);
        let tli = u32::from_le_bytes(page[4..8].try_into().ok()?);
        let pageaddr = u64::from_le_bytes(page[8..16].try_into().ok()?);
        let rem_len = u32::from_le_bytes(page[16..20].try_into().ok()?);
        let long = if info & XLP_LONG_HEADER != 0 {
            if page.len() < 40 {
                return None;
            }
            Some((
                u64::from_le_bytes(page[24..32].try_into().ok()?),
                u32::from_le_bytes(page[32..36].try_into().ok()?),
                u32::from_le_bytes(page[36..40].try_into().ok()?),
            ))
        } else {
            None
        };
        Some(PageHeader {
            magic,
            info,
            tli,
            pageaddr,
            rem_len,
            long,
        })
    }

    pub fn has_unknown_flags(&self) -> bool {
        self.info & !XLP_ALL_FLAGS != 0
    }

    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// Encodes a header; used by tests that build synthetic WAL.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&self.magic.to_le_bytes());
        v.extend_from_slice(&self.info.to_le_bytes());
        v.extend_from_slice(&self.tli.to_le_bytes());
        v.extend_from_slice(&self.pageaddr.to_le_bytes());
        v.extend_from_slice(&self.rem_len.to_le_bytes());
        v.extend_from_slice(&[0u8; 4]);
        if let Some((sysid, seg, blck)) = self.long {
            v.extend_from_slice(&sysid.to_le_bytes());
            v.extend_from_slice(&seg.to_le_bytes());
            v.extend_from_slice(&blck.to_le_bytes());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = PageHeader {
            magic: 0xD110,
            info: XLP_LONG_HEADER | 0x0004,
            tli: 1,
            pageaddr: 0x300_0000,
            rem_len: 0,
            long: Some((7_300_000_000_000_000_001, 16 << 20, 8192)),
        };
        let b = h.encode();
        assert_eq!(b.len(), 40);
        assert_eq!(PageHeader::decode(&b), Some(h));
        let s = PageHeader {
            info: XLP_FIRST_IS_CONTRECORD,
            long: None,
            rem_len: 77,
            ..h
        };
        assert_eq!(s.encode().len(), 24);
        assert_eq!(PageHeader::decode(&s.encode()), Some(s));
        assert!(s.is_contrecord());
        assert!(!s.has_unknown_flags());
    }
}
