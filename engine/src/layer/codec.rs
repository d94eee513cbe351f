//! Little-endian binary encoding used by layer metadata (see docs/FORMAT.md).

/// Appends fields to a buffer.
#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// A length-prefixed (u32) UTF-8 string.
    pub fn str(&mut self, v: &str) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v.as_bytes());
    }
}

/// Reads fields from a buffer; every read is bounds-checked.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Metadata that does not decode: the file is damaged or of an unknown version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                DecodeError(format!(
                    "truncated metadata reading {what} at byte {}",
                    self.pos
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2"),
        ))
    }
    pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    pub fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    pub fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    pub fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N, what)?.try_into().expect("N"))
    }
    pub fn str(&mut self, what: &str) -> Result<String, DecodeError> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError(format!("{what} is not UTF-8")))
    }
    /// A count of items, each at least `min_item` bytes long (guards allocations).
    pub fn count(&mut self, what: &str, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item.max(1)) > self.buf.len() - self.pos {
            return Err(DecodeError(format!("implausible {what} count {n}")));
        }
        Ok(n)
    }
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "{} unexpected trailing bytes in metadata",
                self.buf.len() - self.pos
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut e = Enc::default();
        e.u8(1);
        e.u16(2);
        e.u32(3);
        e.u64(4);
        e.i64(-5);
        e.str("base/5/1259");
        e.bytes(&[9; 4]);
        let mut d = Dec::new(&e.buf);
        assert_eq!(d.u8("a").unwrap(), 1);
        assert_eq!(d.u16("b").unwrap(), 2);
        assert_eq!(d.u32("c").unwrap(), 3);
        assert_eq!(d.u64("d").unwrap(), 4);
        assert_eq!(d.i64("e").unwrap(), -5);
        assert_eq!(d.str("f").unwrap(), "base/5/1259");
        assert_eq!(d.array::<4>("g").unwrap(), [9; 4]);
        d.finish().unwrap();
        assert!(d.clone_at_end_fails());
        let mut short = Dec::new(&e.buf[..3]);
        short.u8("a").unwrap();
        assert!(short.u32("c").is_err());
    }

    impl Dec<'_> {
        fn clone_at_end_fails(&self) -> bool {
            Dec {
                buf: self.buf,
                pos: self.pos,
            }
            .u8("x")
            .is_err()
        }
    }
}

/// Decompresses zstd data, refusing to produce more than `limit` bytes: a frame that inflates
/// further (a zstd bomb, or metadata that cannot be this layer's) is an error, not an
/// allocation.
pub fn decompress_bounded(compressed: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut d = zstd::stream::read::Decoder::new(compressed)?;
    let mut out = Vec::new();
    (&mut d).take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "inflates to more than {limit} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod bounded_tests {
    #[test]
    fn decompression_stops_at_the_limit() {
        let bomb = zstd::encode_all(&vec![0u8; 10 << 20][..], 3).unwrap();
        assert!(bomb.len() < 4096);
        let e = super::decompress_bounded(&bomb, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        assert_eq!(
            super::decompress_bounded(&bomb, 10 << 20).unwrap().len(),
            10 << 20
        );
    }
}
