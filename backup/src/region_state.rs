//! Region state objects: the appliance's signed account of what one region holds.
//!
//! ```text
//! state/state-GGGGGGGGGGGGGGGG   signed blob: "CAIRNRST" | version u16 = 1 | signer [32]
//!                                | signature [64] | JSON body (RegionState)
//! ```
//!
//! After every round that changed an index in a region, the appliance rewrites its state object
//! there (its own generation only, with a growing sequence): the keyring its data keys are
//! wrapped for, and for every timeline the (generation, sequence) of the newest index it wrote.
//!
//! Invariants:
//! - These are high-water marks. A reader that finds a timeline's newest valid index older
//!   than the region's newest valid state says (or missing), reports a rollback instead of
//!   restoring from it: replaying one old index is detected; rolling a region back as a whole
//!   needs every object of an older moment, and the report then shows when that moment was.
//! - The keyring here is informational for readers (a rebuild lists what differs from the
//!   recovery kit); it never adds a recipient anywhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{open_signed_json, sign_blob, RecipientEntry, Signer};

pub const MAGIC: &[u8; 8] = b"CAIRNRST";
pub const VERSION: u16 = 1;
/// The largest state object a reader fetches.
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// The state object of `generation`.
pub fn state_key(generation: u64) -> String {
    format!("state/state-{generation:016x}")
}

/// The generation in a state object's name.
pub fn generation_of(name: &str) -> Option<u64> {
    let g = name.rsplit('/').next()?.strip_prefix("state-")?;
    (g.len() == 16 && g.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(g, 16).ok())
        .flatten()
}

/// The newest index of one timeline the appliance wrote to this region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineMark {
    pub cluster: String,
    pub generation: u64,
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    pub format: u32,
    /// The object key it is stored under (bound by the signature).
    pub path: String,
    /// The region's name in the writing appliance's configuration (informational).
    pub region: String,
    pub generation: u64,
    pub sequence: u64,
    pub written_at_us: i64,
    pub keyring: Vec<RecipientEntry>,
    pub keyring_fingerprint: String,
    /// Timeline id -> the newest index written.
    pub timelines: BTreeMap<String, TimelineMark>,
}

impl RegionState {
    pub fn encode_signed(&self, signer: &Signer) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("state serialises");
        sign_blob(MAGIC, VERSION, signer, &body)
    }

    /// Decodes and verifies a state object read from `name` in `region`.
    pub fn decode_verified(
        bytes: &[u8],
        name: &str,
        region: &str,
        signers: &[[u8; 32]],
    ) -> Result<RegionState> {
        let what = format!("region '{region}', state {name}");
        let (s, _): (RegionState, _) =
            open_signed_json(MAGIC, VERSION, bytes, signers, &what, "region state")?;
        if s.format != 1 {
            return Err(Error::tampered(
                &what,
                format!("unknown state format {}", s.format),
            ));
        }
        if s.path != name || state_key(s.generation) != name {
            return Err(Error::tampered(
                &what,
                format!("was signed for {} (moved, or an old one replayed)", s.path),
            ));
        }
        Ok(s)
    }

    /// (generation, sequence) the region's newest index of `timeline` must reach.
    pub fn mark(&self, timeline: &str) -> Option<(u64, u64)> {
        self.timelines
            .get(timeline)
            .map(|m| (m.generation, m.sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_objects_bind_their_path_and_signer() {
        let (me, _) = Signer::generate();
        let (other, _) = Signer::generate();
        let mut s = RegionState {
            format: 1,
            path: state_key(4),
            region: "a".into(),
            generation: 4,
            sequence: 9,
            written_at_us: 1,
            keyring: vec![],
            keyring_fingerprint: "00".into(),
            timelines: BTreeMap::new(),
        };
        s.timelines.insert(
            "t".into(),
            TimelineMark {
                cluster: "c".into(),
                generation: 4,
                sequence: 3,
            },
        );
        let b = s.encode_signed(&me);
        let back = RegionState::decode_verified(&b, &state_key(4), "a", &[me.public()]).unwrap();
        assert_eq!(back.mark("t"), Some((4, 3)));
        assert_eq!(back.mark("u"), None);
        let e = |bytes: &[u8], name: &str| {
            RegionState::decode_verified(bytes, name, "a", &[me.public()])
                .unwrap_err()
                .to_string()
        };
        assert!(e(&b, &state_key(5)).contains("signed for"));
        assert!(e(&s.encode_signed(&other), &state_key(4)).contains("not a trusted"));
        assert_eq!(generation_of(&state_key(4)), Some(4));
        assert_eq!(generation_of("state/state-zz"), None);
    }
}
