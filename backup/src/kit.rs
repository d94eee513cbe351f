//! The recovery kit: what an operator keeps offline so that one region is enough to restore.
//!
//! A region is untrusted storage: whoever can write to it can plant objects, but cannot decide
//! what Cairn trusts. Trust comes from the kit, a small text file the operator exports with
//! `cairn key export-recovery-kit` and keeps apart from the appliance and the regions:
//!
//! ```text
//! # comments (what the file is, how to use it, where to keep it)
//! cairn-recovery-kit 1
//! signer <Ed25519 public key, 64 hex>          one line per signing key to trust
//! recipient <appliance|escrow> <age1...> <label>   the keyring, one line per recipient
//! keyring-fingerprint <64 hex>                  SHA-256 of the keyring (see below)
//! AGE-SECRET-KEY-1...                           the appliance identity (optional)
//! ```
//!
//! Invariants:
//! - The kit is the only source of signing keys and keyring recipients for disaster recovery:
//!   nothing read from a region ever adds to either.
//! - The fingerprint covers the keyring's (role, recipient) pairs, sorted, one
//!   `role recipient\n` line each; a kit whose recipients do not hash to its fingerprint is
//!   refused (it was edited or damaged).
//! - The file is created with mode 0600 and never overwrites an existing file. Because its
//!   identity line is an ordinary age identity, the kit also works wherever an identity file
//!   is asked for.

use std::path::Path;

use age::secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::keys::{key_id, Identity, RecipientEntry, SignerPin};

pub const HEADER: &str = "cairn-recovery-kit 1";

/// The SHA-256 of a keyring's (role, recipient) pairs: what a kit pins and what region
/// state objects carry, so that a changed keyring is noticed.
pub fn keyring_fingerprint(entries: &[RecipientEntry]) -> String {
    let mut lines: Vec<String> = entries
        .iter()
        .map(|e| format!("{} {}\n", e.role, e.recipient.trim()))
        .collect();
    lines.sort();
    lines.dedup();
    hex::encode(Sha256::digest(lines.concat().as_bytes()))
}

/// A parsed recovery kit.
#[derive(Clone)]
pub struct RecoveryKit {
    /// Signing keys whose indexes and states are believed.
    pub signers: Vec<[u8; 32]>,
    /// The keyring as the appliance had it when the kit was written.
    pub keyring: Vec<RecipientEntry>,
    /// The appliance identity, unless the kit was written without it.
    pub identity: Option<Identity>,
}

impl std::fmt::Debug for RecoveryKit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryKit")
            .field(
                "signers",
                &self.signers.iter().map(|s| key_id(s)).collect::<Vec<_>>(),
            )
            .field("keyring", &self.keyring)
            .field("identity", &self.identity)
            .finish()
    }
}

impl RecoveryKit {
    /// The text of the kit, with the guidance that goes with it.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let main = self.signers.first().map(|s| key_id(s)).unwrap_or_default();
        out.push_str(&format!(
            "# Cairn recovery kit of the appliance with signing key {main}, written {}.\n",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        ));
        out.push_str(
            "# With this file and any one region, every backup of that appliance can be restored:\n\
             #   cairn restore CLUSTER --to-datadir DIR --region NAME --recovery-kit THIS_FILE\n\
             #   cairn catalog rebuild --from-region NAME --recovery-kit THIS_FILE\n\
             # It decides whose signatures and which keyring are trusted; nothing read from a\n\
             # region can change that.\n",
        );
        if self.identity.is_some() {
            out.push_str(
                "# It holds the appliance's SECRET key: anyone with it and read access to a region\n\
                 # can decrypt every backup. Keep it offline (a safe, a password manager, an HSM\n\
                 # export), apart from the appliance and from the regions.\n",
            );
        } else {
            out.push_str(
                "# It holds no secret key: restore with it plus an identity (--identity FILE).\n",
            );
        }
        out.push_str(
            "# Export a new kit after `cairn key rotate`, `cairn key add-recipient`,\n\
             # `cairn key remove-recipient` and `cairn catalog promote`.\n",
        );
        out.push_str(HEADER);
        out.push('\n');
        for s in &self.signers {
            out.push_str(&format!("signer {}\n", hex::encode(s)));
        }
        for r in &self.keyring {
            out.push_str(&format!(
                "recipient {} {} {}\n",
                r.role,
                r.recipient.trim(),
                r.label
            ));
        }
        out.push_str(&format!(
            "keyring-fingerprint {}\n",
            keyring_fingerprint(&self.keyring)
        ));
        if let Some(id) = &self.identity {
            out.push_str(id.inner.to_string().expose_secret());
            out.push('\n');
        }
        out
    }

    /// Parses a kit; `origin` names it in errors (with the line).
    pub fn parse(text: &str, origin: &str) -> Result<RecoveryKit> {
        let bad = |line: usize, m: String| {
            Error::Refused(format!(
                "{origin}, line {line}: {m} (is it a cairn recovery kit?)"
            ))
        };
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, l)) if l == HEADER => {}
            Some((n, l)) if l.starts_with("cairn-recovery-kit ") => {
                return Err(bad(
                    n,
                    format!("kit version '{l}' is not one this cairn reads ({HEADER})"),
                ))
            }
            Some((n, _)) => return Err(bad(n, format!("the first line must be '{HEADER}'"))),
            None => return Err(bad(1, "the file is empty".into())),
        }
        let mut kit = RecoveryKit {
            signers: vec![],
            keyring: vec![],
            identity: None,
        };
        let mut fingerprint: Option<String> = None;
        for (n, l) in lines {
            if l.starts_with("AGE-SECRET-KEY-1") {
                if kit.identity.is_some() {
                    return Err(bad(n, "a second identity".into()));
                }
                let inner: age::x25519::Identity = l
                    .parse()
                    .map_err(|e| bad(n, format!("not a valid age identity ({e})")))?;
                let recipient = inner.to_public().to_string();
                kit.identity = Some(Identity { inner, recipient });
                continue;
            }
            let (word, rest) = l.split_once(' ').unwrap_or((l, ""));
            match word {
                "signer" => {
                    let pin = SignerPin::parse(rest).map_err(|e| bad(n, e.to_string()))?;
                    kit.signers.push(pin.0);
                }
                "recipient" => {
                    let mut parts = rest.splitn(3, ' ');
                    let (role, recipient, label) = (
                        parts.next().unwrap_or_default(),
                        parts.next().unwrap_or_default(),
                        parts.next().unwrap_or_default(),
                    );
                    let e = RecipientEntry {
                        recipient: recipient.to_string(),
                        role: role.to_string(),
                        label: label.to_string(),
                    };
                    e.validate().map_err(|e| bad(n, e.to_string()))?;
                    kit.keyring.push(e);
                }
                "keyring-fingerprint" => fingerprint = Some(rest.trim().to_string()),
                other => return Err(bad(n, format!("unknown entry '{other}'"))),
            }
        }
        if kit.signers.is_empty() {
            return Err(bad(
                0,
                "it names no signing key ('signer ...' lines)".into(),
            ));
        }
        if kit.keyring.is_empty() {
            return Err(bad(0, "it names no keyring ('recipient ...' lines)".into()));
        }
        match fingerprint {
            Some(f) if f == keyring_fingerprint(&kit.keyring) => {}
            Some(_) => {
                return Err(bad(
                    0,
                    "its recipients do not match its keyring-fingerprint (edited or damaged)"
                        .into(),
                ))
            }
            None => return Err(bad(0, "it has no keyring-fingerprint line".into())),
        }
        Ok(kit)
    }

    pub fn load(path: &Path) -> Result<RecoveryKit> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read recovery kit {}", path.display()), e))?;
        let kit = RecoveryKit::parse(&text, &path.display().to_string())?;
        if kit.identity.is_some() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                tracing::warn!(
                    kit = %path.display(),
                    "the recovery kit holds a secret key and is readable by others (mode {:o}); chmod 600 it",
                    mode & 0o777
                );
            }
        }
        Ok(kit)
    }

    /// Writes the kit to a new file (mode 0600); an existing file is never replaced.
    pub fn write(&self, path: &Path) -> Result<()> {
        match cairn_engine::fsutil::write_new(path, self.encode().as_bytes(), 0o600) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Refused(format!(
                "{} already exists: a recovery kit is never overwritten; choose another name",
                path.display()
            ))),
            Err(e) => Err(Error::io(
                format!("write recovery kit {}", path.display()),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Signer;

    fn entry(role: &str, label: &str) -> (Identity, RecipientEntry) {
        let inner = age::x25519::Identity::generate();
        let recipient = inner.to_public().to_string();
        (
            Identity {
                inner,
                recipient: recipient.clone(),
            },
            RecipientEntry {
                recipient,
                role: role.into(),
                label: label.into(),
            },
        )
    }

    #[test]
    fn a_kit_round_trips_and_refuses_edits() {
        let (me, app) = entry("appliance", "appliance identity 1234");
        let (_, esc) = entry("escrow", "vault escrow");
        let (s, _) = Signer::generate();
        let kit = RecoveryKit {
            signers: vec![s.public()],
            keyring: vec![app.clone(), esc.clone()],
            identity: Some(me.clone()),
        };
        let text = kit.encode();
        let back = RecoveryKit::parse(&text, "kit").unwrap();
        assert_eq!(back.signers, vec![s.public()]);
        assert_eq!(back.keyring, vec![app.clone(), esc.clone()]);
        assert_eq!(back.identity.unwrap().recipient, me.recipient);
        // The fingerprint ignores order and labels, not roles or recipients.
        assert_eq!(
            keyring_fingerprint(&[esc.clone(), app.clone()]),
            keyring_fingerprint(&[app.clone(), esc.clone()])
        );
        let (_, other) = entry("escrow", "x");
        assert_ne!(
            keyring_fingerprint(&[app.clone(), other.clone()]),
            keyring_fingerprint(&[app.clone(), esc.clone()])
        );
        // An added recipient line: the fingerprint no longer matches.
        let injected = text.replace(
            "keyring-fingerprint",
            &format!(
                "recipient escrow {} evil\nkeyring-fingerprint",
                other.recipient
            ),
        );
        let e = RecoveryKit::parse(&injected, "kit")
            .unwrap_err()
            .to_string();
        assert!(e.contains("keyring-fingerprint"), "{e}");
        // A short signer id is not a pin.
        let short = text.replace(&hex::encode(s.public()), &s.id());
        let e = RecoveryKit::parse(&short, "kit").unwrap_err().to_string();
        assert!(e.contains("64 hex digits"), "{e}");
        assert!(RecoveryKit::parse("hello\n", "kit").is_err());
        // The kit also reads as an identity file.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kit");
        kit.write(&p).unwrap();
        assert_eq!(Identity::load(&p).unwrap().recipient, me.recipient);
        assert!(kit
            .write(&p)
            .unwrap_err()
            .to_string()
            .contains("never overwritten"));
    }
}
