//! PostgreSQL data page checksums (`pg_checksum_page`), verified on every page Cairn ingests.
//!
//! The algorithm is PostgreSQL's: 32 parallel FNV-1a-like lanes over the page read as
//! little-endian 32-bit words, two extra rounds of zeroes, the lanes xor-folded, the block
//! number mixed in, reduced to 16 bits with an offset of one. A page is new (and carries no
//! checksum) when `pd_upper` is zero.

use crate::ids::Lsn;

pub const BLCKSZ: usize = 8192;
const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline(always)]
fn comp(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// The checksum PostgreSQL stores in `pd_checksum` for `page` at block `blkno` of its fork.
pub fn page_checksum(page: &[u8], blkno: u32) -> u16 {
    debug_assert_eq!(page.len(), BLCKSZ);
    let mut sums = BASE_OFFSETS;
    for (row, chunk) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, w) in chunk.chunks_exact(4).enumerate() {
            let mut v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            // pd_checksum (bytes 8..10) counts as zero.
            if row == 0 && j == 2 {
                v &= 0xFFFF_0000;
            }
            sums[j] = comp(sums[j], v);
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            *s = comp(*s, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// The page header fields Cairn reads.
#[derive(Debug, Clone, Copy)]
pub struct PageInfo {
    pub lsn: Lsn,
    pub checksum: u16,
    pub upper: u16,
}

pub fn page_info(page: &[u8]) -> PageInfo {
    let hi = u32::from_le_bytes([page[0], page[1], page[2], page[3]]) as u64;
    let lo = u32::from_le_bytes([page[4], page[5], page[6], page[7]]) as u64;
    PageInfo {
        lsn: Lsn((hi << 32) | lo),
        checksum: u16::from_le_bytes([page[8], page[9]]),
        upper: u16::from_le_bytes([page[14], page[15]]),
    }
}

/// Outcome of checking one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    Ok,
    /// A new page (never initialised): PostgreSQL accepts it only if it is all zeroes.
    New,
    Mismatch {
        stored: u16,
        computed: u16,
    },
}

pub fn verify_page(page: &[u8], blkno: u32) -> PageCheck {
    let info = page_info(page);
    if info.upper == 0 {
        if page.iter().all(|&b| b == 0) {
            return PageCheck::New;
        }
        return PageCheck::Mismatch {
            stored: info.checksum,
            computed: 0,
        };
    }
    let computed = page_checksum(page, blkno);
    if computed == info.checksum {
        PageCheck::Ok
    } else {
        PageCheck::Mismatch {
            stored: info.checksum,
            computed,
        }
    }
}
