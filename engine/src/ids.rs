//! Identifier newtypes: [`Lsn`], [`ClusterId`], [`TimelineId`], [`LayerId`].
//!
//! Invariants:
//! - An [`Lsn`] is a byte position in a cluster's WAL stream; it prints and parses in
//!   PostgreSQL's `X/Y` notation so values can be pasted between `psql` and `cairn`.
//! - Cluster and timeline ids are 128 random bits printed as 32 lowercase hex characters; they
//!   never change and are safe to use as directory names.
//! - A [`LayerId`] is the SHA-256 of a layer file's bytes: two files with the same id are the
//!   same file. It is the file name of the layer on disk.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A position in the WAL (PostgreSQL's `XLogRecPtr`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    /// Rounds down to a multiple of `align` (a power of two).
    pub fn align_down(self, align: u64) -> Lsn {
        Lsn(self.0 & !(align - 1))
    }

    /// Rounds up to a multiple of 8, PostgreSQL's `MAXALIGN` on 64-bit platforms.
    pub fn maxalign(self) -> Lsn {
        Lsn((self.0 + 7) & !7)
    }

    pub fn segment_number(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }

    pub fn segment_offset(self, segment_size: u64) -> u64 {
        self.0 % segment_size
    }

    /// The LSN as a non-negative `i64`, the form the SQL catalog stores.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    pub fn from_i64(v: i64) -> Lsn {
        Lsn(u64::try_from(v).unwrap_or(0))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || {
            format!(
                "'{s}' is not an LSN: expected PostgreSQL's notation such as 0/16B3748 \
                 (what pg_current_wal_lsn() prints)"
            )
        };
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl From<Lsn> for String {
    fn from(l: Lsn) -> String {
        l.to_string()
    }
}

impl TryFrom<String> for Lsn {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Fills `buf` with random bytes from the operating system.
pub fn random_bytes(buf: &mut [u8]) {
    // The OS random source failing is not recoverable for an appliance that generates ids.
    getrandom::fill(buf).expect("operating system random source unavailable");
}

macro_rules! hex_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A ", $what, " id: 128 random bits, printed as 32 hex characters.")]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(into = "String", try_from = "String")]
        pub struct $name(pub [u8; 16]);

        impl $name {
            pub fn generate() -> Self {
                let mut b = [0u8; 16];
                random_bytes(&mut b);
                $name(b)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut b = [0u8; 16];
                hex::decode_to_slice(s, &mut b)
                    .map_err(|_| format!("'{s}' is not a {} id (32 hex characters)", $what))?;
                Ok($name(b))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.to_string()
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    };
}

hex_id!(ClusterId, "cluster");
hex_id!(TimelineId, "timeline");

/// The SHA-256 of a layer file: its name and its integrity check.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct LayerId(pub [u8; 32]);

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &hex::encode(self.0)[..12])
    }
}

impl FromStr for LayerId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b)
            .map_err(|_| format!("'{s}' is not a layer id (64 hex characters)"))?;
        Ok(LayerId(b))
    }
}

impl From<LayerId> for String {
    fn from(v: LayerId) -> String {
        v.to_string()
    }
}

impl TryFrom<String> for LayerId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_postgres_notation() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn lsn_alignment() {
        assert_eq!(Lsn(0x30000E2).maxalign(), Lsn(0x30000E8));
        assert_eq!(Lsn(0x30000E8).maxalign(), Lsn(0x30000E8));
        assert_eq!(Lsn(0x3001234).align_down(8192), Lsn(0x3000000));
    }

    #[test]
    fn ids_round_trip() {
        let t = TimelineId::generate();
        assert_eq!(t.to_string().parse::<TimelineId>().unwrap(), t);
        assert_ne!(TimelineId::generate(), t);
        assert!("zz".parse::<ClusterId>().is_err());
    }
}
