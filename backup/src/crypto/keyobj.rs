//! Key objects: one object's data key, wrapped for every recipient of the keyring with age.
//!
//! ```text
//! magic "CAIRNKEY" 8 | version u16 = 1 | object_id [32] | key_id [16]
//! recipients u16, each: recipient (u16 length + "age1..."), role (u16 + UTF-8), label (u16 + UTF-8)
//! wrapped u32 length + an age file (binary) whose payload is:
//!     version u8 = 1 | data key [32] | object_id [32] | key_id [16]
//! ```
//!
//! The recipient list is informational (so that a wrong key is reported with the keys that
//! would work) and never trusted: nothing read from it joins a keyring. The binding that
//! matters is inside the age payload, which repeats the object and key ids (a key object moved
//! to another object's name is refused), and the data key commitment in the signed index (a
//! key object forged for the appliance's public recipient is refused). Re-wrapping for a new
//! recipient set produces a new key object for the same data key; the payload never changes.
//! Entries are validated before wrapping (role, label length): every length fits its prefix.

use std::io::{Read, Write};

use crate::error::{Error, Result};
use crate::keys::{Identity, RecipientEntry, MAX_RECIPIENTS};

pub const MAGIC: &[u8; 8] = b"CAIRNKEY";
pub const VERSION: u16 = 1;

/// A decoded key object (the data key still wrapped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyObject {
    pub object_id: [u8; 32],
    pub key_id: [u8; 16],
    pub recipients: Vec<RecipientEntry>,
    pub wrapped: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.pos + n > self.b.len() {
            return Err(Error::tampered(self.what, "key object is truncated"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn str(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| Error::tampered(self.what, "key object holds invalid text"))
    }
}

impl KeyObject {
    /// Wraps `dek` for `recipients`.
    pub fn wrap(
        dek: &[u8; 32],
        object_id: [u8; 32],
        key_id: [u8; 16],
        recipients: &[RecipientEntry],
    ) -> Result<KeyObject> {
        if recipients.is_empty() {
            return Err(Error::Refused("the keyring has no recipients".into()));
        }
        if recipients.len() > MAX_RECIPIENTS {
            return Err(Error::Refused(format!(
                "the keyring has {} recipients; a key object holds at most {MAX_RECIPIENTS}",
                recipients.len()
            )));
        }
        // Every string is length-prefixed with a u16: an unchecked label would wrap around
        // and corrupt the key object (and with it every region's copy).
        for r in recipients {
            r.validate()?;
        }
        let parsed: Vec<age::x25519::Recipient> = recipients
            .iter()
            .map(|r| r.parse())
            .collect::<Result<_>>()?;
        let enc = age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| Error::Refused(format!("cannot wrap a data key: {e}")))?;
        let mut wrapped = Vec::new();
        let mut w = enc
            .wrap_output(&mut wrapped)
            .map_err(|e| Error::io("wrap a data key", e))?;
        let mut payload = vec![1u8];
        payload.extend_from_slice(dek);
        payload.extend_from_slice(&object_id);
        payload.extend_from_slice(&key_id);
        w.write_all(&payload)
            .and_then(|_| w.finish().map(|_| ()))
            .map_err(|e| Error::io("wrap a data key", e))?;
        Ok(KeyObject {
            object_id,
            key_id,
            recipients: recipients.to_vec(),
            wrapped,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wrapped.len() + 256);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.object_id);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&(self.recipients.len() as u16).to_le_bytes());
        for r in &self.recipients {
            put_str(&mut out, &r.recipient);
            put_str(&mut out, &r.role);
            put_str(&mut out, &r.label);
        }
        out.extend_from_slice(&(self.wrapped.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.wrapped);
        out
    }

    pub fn decode(b: &[u8], what: &str) -> Result<KeyObject> {
        let mut r = Reader { b, pos: 0, what };
        if r.take(8)? != MAGIC {
            return Err(Error::tampered(what, "not a cairn key object (bad magic)"));
        }
        let v = r.u16()?;
        if v != VERSION {
            return Err(Error::tampered(
                what,
                format!("key object version {v} is not one this cairn reads ({VERSION})"),
            ));
        }
        let object_id: [u8; 32] = r.take(32)?.try_into().expect("32");
        let key_id: [u8; 16] = r.take(16)?.try_into().expect("16");
        let n = r.u16()? as usize;
        let mut recipients = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            recipients.push(RecipientEntry {
                recipient: r.str()?,
                role: r.str()?,
                label: r.str()?,
            });
        }
        let len = u32::from_le_bytes(r.take(4)?.try_into().expect("4")) as usize;
        let wrapped = r.take(len)?.to_vec();
        if r.pos != b.len() {
            return Err(Error::tampered(what, "trailing bytes after the key object"));
        }
        Ok(KeyObject {
            object_id,
            key_id,
            recipients,
            wrapped,
        })
    }

    /// Unwraps the data key with the first identity that can, checking the bindings.
    pub fn unwrap(&self, identities: &[&Identity], what: &str) -> Result<[u8; 32]> {
        let dec = age::Decryptor::new_buffered(&self.wrapped[..])
            .map_err(|e| Error::tampered(what, format!("wrapped key does not parse: {e}")))?;
        let mut reader =
            match dec.decrypt(identities.iter().map(|i| &i.inner as &dyn age::Identity)) {
                Ok(r) => r,
                Err(age::DecryptError::NoMatchingKeys) => {
                    return Err(Error::WrongKey {
                        object: what.to_string(),
                        given: if identities.is_empty() {
                            "no identity".to_string()
                        } else {
                            identities
                                .iter()
                                .map(|i| format!("key {}", i.id()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                        can_open: self
                            .recipients
                            .iter()
                            .map(|r| r.describe())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
                Err(e) => {
                    return Err(Error::tampered(
                        what,
                        format!("wrapped key does not open: {e}"),
                    ))
                }
            };
        let mut payload = Vec::new();
        reader
            .read_to_end(&mut payload)
            .map_err(|e| Error::tampered(what, format!("wrapped key does not open: {e}")))?;
        if payload.len() != 81 || payload[0] != 1 {
            return Err(Error::tampered(what, "wrapped key has the wrong layout"));
        }
        if payload[33..65] != self.object_id || payload[65..81] != self.key_id {
            return Err(Error::tampered(
                what,
                "wrapped key belongs to another object (key objects swapped)",
            ));
        }
        Ok(payload[1..33].try_into().expect("32"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Identity;

    fn ident() -> Identity {
        let inner = age::x25519::Identity::generate();
        let recipient = inner.to_public().to_string();
        Identity { inner, recipient }
    }

    fn entry(i: &Identity, role: &str) -> RecipientEntry {
        RecipientEntry {
            recipient: i.recipient.clone(),
            role: role.into(),
            label: format!("{role} test"),
        }
    }

    #[test]
    fn wraps_for_every_recipient_and_names_them_on_failure() {
        let (a, b, stranger) = (ident(), ident(), ident());
        let dek = [9u8; 32];
        let k = KeyObject::wrap(
            &dek,
            [1; 32],
            [2; 16],
            &[entry(&a, "appliance"), entry(&b, "escrow")],
        )
        .unwrap();
        let bytes = k.encode();
        let k2 = KeyObject::decode(&bytes, "keys/x").unwrap();
        assert_eq!(k2, k);
        assert_eq!(k2.unwrap(&[&a], "keys/x").unwrap(), dek);
        assert_eq!(k2.unwrap(&[&b], "keys/x").unwrap(), dek);
        let e = k2.unwrap(&[&stranger], "keys/x").unwrap_err().to_string();
        assert!(e.contains(&stranger.id()), "{e}");
        assert!(e.contains(&a.id()) && e.contains(&b.id()), "{e}");
        assert!(e.contains("escrow"), "{e}");
        // Moved under another object's name: the binding inside refuses it.
        let mut moved = k2.clone();
        moved.object_id = [3; 32];
        let e = moved.unwrap(&[&a], "keys/y").unwrap_err().to_string();
        assert!(e.contains("another object"), "{e}");
        for cut in [0, 10, bytes.len() - 1] {
            assert!(KeyObject::decode(&bytes[..cut], "k").is_err());
        }
    }
}
