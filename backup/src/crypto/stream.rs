//! Envelope objects: a payload encrypted with its own data key in fixed-size AEAD chunks.
//!
//! ```text
//! header (64 bytes, authenticated as the AAD of every chunk)
//!   0  magic "CAIRNOBJ"      8
//!   8  version u16 = 1
//!  10  kind u8               1 layer, 2 secrets, 3 export
//!  11  compression u8        0 none, 1 zstd (of the whole payload, before encryption)
//!  12  chunk_size u32        plaintext bytes per chunk (the last chunk may be shorter or empty)
//!  16  object_id [32]        the object's name: SHA-256 of its plaintext
//!  48  key_id [16]           the data key's id (names the key object that wraps it)
//! chunks: AES-256-GCM(data key, nonce_i, chunk_i, aad = header) = ciphertext || 16-byte tag
//!   nonce_i = 11-byte big-endian counter i || 1 byte: 0x01 on the final chunk, else 0x00
//! ```
//!
//! The counter makes reordered or swapped chunks fail their tag; the final-chunk flag makes a
//! truncated object (its last chunk was not sealed as final) and an extended one (bytes after
//! the final chunk) fail; the header in the AAD binds every chunk to this object id and key, so
//! moving an object under another name fails too. Each data key encrypts exactly one object, so
//! counter nonces never repeat under a key.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"CAIRNOBJ";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 64;
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk written by this version.
pub const CHUNK_SIZE: u32 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Layer = 1,
    Secrets = 2,
    Export = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: ObjectKind,
    pub compression: Compression,
    pub chunk_size: u32,
    pub object_id: [u8; 32],
    pub key_id: [u8; 16],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10] = self.kind as u8;
        h[11] = self.compression as u8;
        h[12..16].copy_from_slice(&self.chunk_size.to_le_bytes());
        h[16..48].copy_from_slice(&self.object_id);
        h[48..64].copy_from_slice(&self.key_id);
        h
    }

    /// Decodes and sanity-checks a header; `what` names the object in errors.
    pub fn decode(b: &[u8], what: &str) -> Result<Header> {
        let bad = |reason: String| Error::tampered(what, reason);
        if b.len() < HEADER_LEN {
            return Err(bad(format!(
                "only {} bytes, shorter than a header",
                b.len()
            )));
        }
        if &b[..8] != MAGIC {
            return Err(bad("not a cairn object (bad magic)".into()));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(bad(format!(
                "object format version {version} is not one this cairn reads ({VERSION})"
            )));
        }
        let kind = match b[10] {
            1 => ObjectKind::Layer,
            2 => ObjectKind::Secrets,
            3 => ObjectKind::Export,
            k => return Err(bad(format!("unknown object kind {k}"))),
        };
        let compression = match b[11] {
            0 => Compression::None,
            1 => Compression::Zstd,
            c => return Err(bad(format!("unknown compression {c}"))),
        };
        let chunk_size = u32::from_le_bytes(b[12..16].try_into().expect("4"));
        if chunk_size == 0 || chunk_size > CHUNK_SIZE {
            // No version of cairn writes larger chunks; a reader sizes its reads from this
            // field before any tag is checked, so a larger one is refused, not trusted.
            return Err(bad(format!(
                "chunk size {chunk_size} is larger than cairn writes ({CHUNK_SIZE})"
            )));
        }
        Ok(Header {
            kind,
            compression,
            chunk_size,
            object_id: b[16..48].try_into().expect("32"),
            key_id: b[48..64].try_into().expect("16"),
        })
    }
}

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = last as u8;
    Nonce::assume_unique_for_key(n)
}

fn key(dek: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, dek).expect("32-byte key"))
}

/// Seals chunks in order.
pub struct Sealer {
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    counter: u64,
    done: bool,
}

impl Sealer {
    pub fn new(dek: &[u8; 32], header: &Header) -> Sealer {
        Sealer {
            key: key(dek),
            header: header.encode(),
            counter: 0,
            done: false,
        }
    }

    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// Encrypts the next chunk in place and appends its tag.
    pub fn seal(&mut self, chunk: &mut Vec<u8>, last: bool) {
        assert!(!self.done, "no chunk may follow the final one");
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.counter, last), Aad::from(&self.header), chunk)
            .expect("chunk within AES-GCM limits");
        chunk.extend_from_slice(tag.as_ref());
        self.counter += 1;
        self.done = last;
    }
}

/// Opens chunks; any chunk can be opened on its own, given its index.
pub struct Opener {
    key: LessSafeKey,
    pub header: Header,
    header_bytes: [u8; HEADER_LEN],
    what: String,
}

impl Opener {
    pub fn new(dek: &[u8; 32], header: Header, what: &str) -> Opener {
        Opener {
            key: key(dek),
            header_bytes: header.encode(),
            header,
            what: what.to_string(),
        }
    }

    /// Decrypts chunk `index` (ciphertext and tag) in place; returns the plaintext length.
    pub fn open(&self, index: u64, data: &mut [u8], last: bool) -> Result<usize> {
        let plain = self
            .key
            .open_in_place(nonce(index, last), Aad::from(&self.header_bytes), data)
            .map_err(|_| {
                Error::tampered(
                    &self.what,
                    format!(
                        "chunk {index} fails authentication{} (modified, reordered, truncated, \
                         or not this object)",
                        if last { " as the final chunk" } else { "" }
                    ),
                )
            })?;
        Ok(plain.len())
    }

    /// Sealed size of an object whose plaintext is `len` bytes.
    pub fn sealed_len(chunk_size: u32, len: u64) -> u64 {
        let cs = chunk_size as u64;
        let chunks = if len == 0 { 1 } else { len.div_ceil(cs) };
        HEADER_LEN as u64 + len + chunks * TAG_LEN as u64
    }
}

/// Encrypts a whole in-memory payload.
pub fn seal_all(dek: &[u8; 32], header: &Header, plaintext: &[u8]) -> Vec<u8> {
    let mut s = Sealer::new(dek, header);
    let cs = header.chunk_size as usize;
    let mut out =
        Vec::with_capacity(Opener::sealed_len(header.chunk_size, plaintext.len() as u64) as usize);
    out.extend_from_slice(s.header());
    let n = plaintext.len().div_ceil(cs).max(1);
    for i in 0..n {
        let mut c =
            plaintext[(i * cs).min(plaintext.len())..((i + 1) * cs).min(plaintext.len())].to_vec();
        s.seal(&mut c, i + 1 == n);
        out.extend_from_slice(&c);
    }
    out
}

/// Decrypts a whole object, checking that it is the object `expected_id` and is complete.
pub fn open_all(
    dek: &[u8; 32],
    bytes: &[u8],
    expected_id: &[u8; 32],
    what: &str,
) -> Result<Vec<u8>> {
    let header = Header::decode(bytes, what)?;
    if &header.object_id != expected_id {
        return Err(Error::tampered(
            what,
            format!(
                "holds object {} instead (objects swapped or misnamed)",
                hex::encode(&header.object_id[..8])
            ),
        ));
    }
    let o = Opener::new(dek, header, what);
    let sealed_chunk = header.chunk_size as usize + TAG_LEN;
    let body = &bytes[HEADER_LEN..];
    if body.len() < TAG_LEN {
        return Err(Error::tampered(what, "truncated: no final chunk"));
    }
    let n = body.len().div_ceil(sealed_chunk);
    let mut out = Vec::with_capacity(body.len());
    for i in 0..n {
        let mut c = body[i * sealed_chunk..((i + 1) * sealed_chunk).min(body.len())].to_vec();
        let last = i + 1 == n;
        if c.len() < TAG_LEN {
            return Err(Error::tampered(
                what,
                format!("chunk {i} is shorter than its tag"),
            ));
        }
        if !last && c.len() != sealed_chunk {
            return Err(Error::tampered(what, format!("chunk {i} is short")));
        }
        let len = o.open(i as u64, &mut c, last)?;
        out.extend_from_slice(&c[..len]);
    }
    match header.compression {
        Compression::None => Ok(out),
        Compression::Zstd => cairn_engine::layer::codec::decompress_bounded(&out, MAX_INFLATED)
            .map_err(|e| Error::tampered(what, format!("payload does not decompress: {e}"))),
    }
}

/// The most a whole-object decryption ([`open_all`]) inflates a compressed payload to: it is
/// used for small objects only, and a zstd bomb must not exhaust memory.
pub const MAX_INFLATED: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(id: u8) -> Header {
        Header {
            kind: ObjectKind::Layer,
            compression: Compression::None,
            chunk_size: 16,
            object_id: [id; 32],
            key_id: [7; 16],
        }
    }

    #[test]
    fn round_trip_any_length() {
        let dek = [3u8; 32];
        for len in [0usize, 1, 15, 16, 17, 32, 100] {
            let p: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let s = seal_all(&dek, &hdr(1), &p);
            assert_eq!(s.len() as u64, Opener::sealed_len(16, len as u64));
            assert_eq!(open_all(&dek, &s, &[1; 32], "o").unwrap(), p, "len {len}");
        }
    }

    #[test]
    fn every_kind_of_tampering_is_detected() {
        let dek = [3u8; 32];
        let p: Vec<u8> = (0..100u8).collect();
        let s = seal_all(&dek, &hdr(1), &p);
        let sc = 16 + TAG_LEN;
        let check = |bytes: &[u8], expect: &str| {
            let e = open_all(&dek, bytes, &[1; 32], "layers/x")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("layers/x") && e.contains(expect),
                "{expect}: {e}"
            );
        };
        let mut flip = s.clone();
        flip[HEADER_LEN + 5] ^= 1;
        check(&flip, "chunk 0 fails");
        check(
            &s[..s.len() - sc + 3],
            "fails authentication as the final chunk",
        );
        check(
            &s[..HEADER_LEN + 2 * sc],
            "chunk 1 fails authentication as the final chunk",
        );
        let mut longer = s.clone();
        longer.extend_from_slice(&[0u8; 40]);
        check(&longer, "fails");
        let mut swapped = s.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + sc);
        let chunk0 = s[a..a + sc].to_vec();
        swapped.copy_within(b..b + sc, a);
        swapped[b..b + sc].copy_from_slice(&chunk0);
        check(&swapped, "chunk 0 fails");
        let other = seal_all(&dek, &hdr(2), &p);
        check(&other, "objects swapped");
        // A chunk size above what cairn writes is refused before any read is sized by it.
        let mut big = hdr(1);
        big.chunk_size = CHUNK_SIZE + 1;
        let e = Header::decode(&big.encode(), "h").unwrap_err().to_string();
        assert!(e.contains("larger than cairn writes"), "{e}");
        let mut hdr_flip = s.clone();
        hdr_flip[12] ^= 1; // chunk size
        assert!(open_all(&dek, &hdr_flip, &[1; 32], "x").is_err());
        assert!(
            open_all(&[4u8; 32], &s, &[1; 32], "x").is_err(),
            "wrong key"
        );
    }

    #[test]
    fn the_largest_chunk_size_is_accepted_and_compressed_payloads_are_bounded() {
        let dek = [5u8; 32];
        // Chunks of exactly CHUNK_SIZE (what cairn writes) decode; one byte more is refused.
        let mut h = hdr(2);
        h.chunk_size = CHUNK_SIZE;
        let p = vec![7u8; CHUNK_SIZE as usize + 10];
        let sealed = seal_all(&dek, &h, &p);
        assert_eq!(open_all(&dek, &sealed, &[2; 32], "o").unwrap(), p);
        let mut big = h.encode();
        big[12..16].copy_from_slice(&(CHUNK_SIZE + 1).to_le_bytes());
        let e = Header::decode(&big, "o").unwrap_err().to_string();
        assert!(e.contains("larger than cairn writes"), "{e}");
        // A zstd payload inflates up to MAX_INFLATED, not beyond (a bomb of zeros).
        h.compression = Compression::Zstd;
        let small = vec![1u8; 1 << 20];
        let packed = zstd::bulk::compress(&small, 3).unwrap();
        let sealed = seal_all(&dek, &h, &packed);
        assert_eq!(open_all(&dek, &sealed, &[2; 32], "o").unwrap(), small);
        let bomb = vec![0u8; MAX_INFLATED as usize + 1];
        let packed = zstd::bulk::compress(&bomb, 3).unwrap();
        assert!(packed.len() < 1 << 20);
        let sealed = seal_all(&dek, &h, &packed);
        let e = open_all(&dek, &sealed, &[2; 32], "o")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not decompress"), "{e}");
    }
}
