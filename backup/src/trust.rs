//! The appliance's trust state: whom data keys are wrapped for, whose signatures are believed,
//! and whether the appliance may write to its regions.
//!
//! ```text
//! HOME/keys/trust   signed blob (keys::sign_blob): "CAIRNTRS" | version u16 = 1 | signer [32]
//!                   | signature [64] | JSON body (TrustState), mode 0600
//! ```
//!
//! Invariants:
//! - Trust never lives in the catalog: a catalog can be a remote PostgreSQL database whose
//!   administrators are not the appliance's. The keyring and the trusted signers live here,
//!   next to the keys, signed with the appliance's own signing key; a file that does not verify
//!   under that key is refused, never repaired.
//! - Every change goes through [`crate::Protection`] under the `keyring` lock (an inter-process
//!   `flock`), bumps `sequence`, and is written atomically; a running `cairn up` notices the new
//!   sequence and reloads keys and keyring before it wraps or unwraps another data key.
//! - `fenced`: an appliance rebuilt from a region reads and restores but writes nothing to any
//!   region (no shipping, indexes, key objects, deletions or shreds) and takes over no source,
//!   until the operator promotes it (`cairn catalog promote`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{open_blob, sign_blob, RecipientEntry, Signer, MAX_RECIPIENTS};

pub const MAGIC: &[u8; 8] = b"CAIRNTRS";
pub const VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustState {
    pub format: u32,
    /// Bumped by every change; a process that loaded an older sequence reloads.
    pub sequence: u64,
    pub written_at_us: i64,
    /// The keyring: every data key is wrapped for exactly these recipients.
    pub recipients: Vec<RecipientEntry>,
    /// Ed25519 public keys (hex) believed besides the appliance's own: earlier appliances'
    /// keys, from a recovery kit.
    pub signers: Vec<String>,
    /// Rebuilt and not promoted yet: nothing is written to the regions.
    pub fenced: bool,
}

impl TrustState {
    pub fn new(recipients: Vec<RecipientEntry>, signers: &[[u8; 32]], fenced: bool) -> Self {
        TrustState {
            format: 1,
            sequence: 0,
            written_at_us: 0,
            recipients,
            signers: signers.iter().map(hex::encode).collect(),
            fenced,
        }
    }

    /// The signers as keys (the file was verified, so every entry parses).
    pub fn signer_keys(&self) -> Vec<[u8; 32]> {
        self.signers
            .iter()
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect()
    }

    pub fn add_signer(&mut self, key: &[u8; 32]) {
        let h = hex::encode(key);
        if !self.signers.contains(&h) {
            self.signers.push(h);
        }
    }

    pub fn validate(&self, what: &str) -> Result<()> {
        if self.recipients.len() > MAX_RECIPIENTS {
            return Err(Error::Refused(format!(
                "{what}: the keyring may hold at most {MAX_RECIPIENTS} recipients"
            )));
        }
        for r in &self.recipients {
            r.validate()
                .map_err(|e| Error::Refused(format!("{what}: {e}")))?;
        }
        if self.signer_keys().len() != self.signers.len() {
            return Err(Error::Refused(format!(
                "{what}: a trusted signer is not a 32-byte key"
            )));
        }
        Ok(())
    }

    /// Reads and verifies the trust file; `None` when there is none yet.
    pub fn load(path: &Path, own: &Signer) -> Result<Option<TrustState>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        let what = path.display().to_string();
        let refuse = |reason: String| {
            Error::Refused(format!(
                "{what}: {reason}; the keyring and trusted signers cannot be believed. It was \
                 changed outside cairn or belongs to another signing key: restore it (and \
                 keys/signing.ed25519) from a backup of this appliance, or rebuild the appliance \
                 from a region and its recovery kit"
            ))
        };
        let (signer, body) = open_blob(MAGIC, VERSION, &bytes, &what, "trust file")
            .map_err(|e| refuse(e.to_string()))?;
        if signer != own.public() {
            return Err(refuse(
                "it is signed by another key than this appliance's".into(),
            ));
        }
        let t: TrustState =
            serde_json::from_slice(body).map_err(|e| refuse(format!("does not parse: {e}")))?;
        if t.format != 1 {
            return Err(refuse(format!("unknown format {}", t.format)));
        }
        t.validate(&what)?;
        Ok(Some(t))
    }

    /// Signs and writes the trust file atomically (mode 0600).
    pub fn save(&self, path: &Path, own: &Signer) -> Result<()> {
        self.validate(&path.display().to_string())?;
        let body = serde_json::to_vec(self).expect("trust state serialises");
        let blob = sign_blob(MAGIC, VERSION, own, &body);
        cairn_engine::fsutil::write_atomic(path, &blob, 0o600)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trust_file_verifies_under_the_own_key_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("trust");
        let (me, _) = Signer::generate();
        let (other, _) = Signer::generate();
        assert!(TrustState::load(&p, &me).unwrap().is_none());
        let id = age::x25519::Identity::generate();
        let t = TrustState::new(
            vec![RecipientEntry {
                recipient: id.to_public().to_string(),
                role: "appliance".into(),
                label: "me".into(),
            }],
            &[other.public()],
            false,
        );
        t.save(&p, &me).unwrap();
        assert_eq!(TrustState::load(&p, &me).unwrap().unwrap(), t);
        let e = TrustState::load(&p, &other).unwrap_err().to_string();
        assert!(e.contains("another key"), "{e}");
        // One byte changed in the body (say, an injected recipient): refused.
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 3] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let e = TrustState::load(&p, &me).unwrap_err().to_string();
        assert!(e.contains("signature does not verify"), "{e}");
    }
}
