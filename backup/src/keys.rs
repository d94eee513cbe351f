//! The appliance's keys: an age X25519 identity (opens data keys), an Ed25519 signing key
//! (signs indexes), and the keyring of recipients every data key is wrapped for.
//!
//! Invariants:
//! - Key files live in `HOME/keys/` (mode 0700), each of mode 0600, written atomically; their
//!   contents never reach logs or errors. A key id is the first 8 bytes of the SHA-256 of the
//!   public key, in hex: safe to show, enough to tell keys apart — but never enough to trust
//!   one: a signer is pinned by its full public key ([`SignerPin`]), a keyring by its 256-bit
//!   fingerprint ([`crate::kit::keyring_fingerprint`]).
//! - The keyring always holds the current appliance recipient; escrow recipients are added and
//!   removed by the operator. Rotation replaces the appliance identity and keeps the old one as
//!   `appliance-<date>.retired` until the operator deletes it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Short, stable id of a public key (age recipient string or Ed25519 public key bytes), for
/// display only.
pub fn key_id(public: &[u8]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// The 256-bit fingerprint of a public key (SHA-256, hex).
pub fn fingerprint(public: &[u8]) -> String {
    hex::encode(Sha256::digest(public))
}

/// A signing key the operator pins: its full Ed25519 public key, 64 hex digits. Short key
/// ids are refused: 64 bits can be matched by brute force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignerPin(pub [u8; 32]);

impl SignerPin {
    pub fn parse(s: &str) -> Result<SignerPin> {
        let s = s.trim();
        let bytes = hex::decode(s).ok().filter(|b| b.len() == 32);
        match bytes {
            Some(b) => Ok(SignerPin(b.try_into().expect("32"))),
            None => Err(Error::Refused(format!(
                "'{s}' is not a signing key: give the full Ed25519 public key (64 hex digits; \
                 `cairn key export-public` prints it), or --recovery-kit FILE"
            ))),
        }
    }
}

/// Longest label a recipient may carry (bytes).
pub const MAX_LABEL: usize = 256;
/// Most recipients a keyring may hold.
pub const MAX_RECIPIENTS: usize = 256;

/// A recipient a data key is wrapped for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecipientEntry {
    /// `age1...`
    pub recipient: String,
    /// `appliance` or `escrow`.
    pub role: String,
    pub label: String,
}

impl RecipientEntry {
    pub fn id(&self) -> String {
        key_id(self.recipient.as_bytes())
    }

    pub fn describe(&self) -> String {
        format!("{} key {} ({})", self.role, self.id(), self.label)
    }

    pub fn parse(&self) -> Result<age::x25519::Recipient> {
        parse_recipient(&self.recipient)
    }

    /// Checks what a keyring entry may hold: an age X25519 recipient, role `appliance` or
    /// `escrow`, a label of at most [`MAX_LABEL`] bytes without control characters.
    pub fn validate(&self) -> Result<()> {
        self.parse()?;
        if self.role != "appliance" && self.role != "escrow" {
            return Err(Error::Refused(format!(
                "keyring role '{}' is neither 'appliance' nor 'escrow'",
                self.role
            )));
        }
        validate_label(&self.label)
    }
}

/// A recipient's label: at most [`MAX_LABEL`] bytes, no control characters (labels are
/// printed, and written one per line in recovery kits).
pub fn validate_label(label: &str) -> Result<()> {
    if label.len() > MAX_LABEL {
        return Err(Error::Refused(format!(
            "a key label may be at most {MAX_LABEL} bytes; this one has {}",
            label.len()
        )));
    }
    if label.chars().any(char::is_control) {
        return Err(Error::Refused(
            "a key label may not contain control characters (newlines, tabs, escapes)".into(),
        ));
    }
    Ok(())
}

pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient> {
    age::x25519::Recipient::from_str(s.trim()).map_err(|e| {
        Error::Refused(format!(
            "'{}' is not an age X25519 recipient ({e}); it looks like age1... (see `age-keygen` \
             or `cairn key export-public`)",
            s.trim()
        ))
    })
}

/// An identity that can open data keys, with the id of its recipient.
#[derive(Clone)]
pub struct Identity {
    pub inner: age::x25519::Identity,
    pub recipient: String,
}

/// Shows the recipient only: the secret never reaches a log.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.recipient)
    }
}

impl Identity {
    pub fn id(&self) -> String {
        key_id(self.recipient.as_bytes())
    }

    /// Reads an age identity file (the `AGE-SECRET-KEY-1...` line; comments are ignored).
    pub fn load(path: &Path) -> Result<Identity> {
        let text = fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read identity file {}", path.display()), e))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .ok_or_else(|| {
                Error::Refused(format!(
                    "{} holds no age identity (a line AGE-SECRET-KEY-1...)",
                    path.display()
                ))
            })?;
        let inner = age::x25519::Identity::from_str(line).map_err(|e| {
            Error::Refused(format!(
                "{}: not a valid age identity ({e})",
                path.display()
            ))
        })?;
        let recipient = inner.to_public().to_string();
        Ok(Identity { inner, recipient })
    }
}

/// The Ed25519 key that signs index objects.
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    pub fn public(&self) -> [u8; 32] {
        self.pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes")
    }

    pub fn id(&self) -> String {
        key_id(&self.public())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.pair
            .sign(msg)
            .as_ref()
            .try_into()
            .expect("Ed25519 signatures are 64 bytes")
    }

    pub fn from_pkcs8(doc: &[u8]) -> Result<Signer> {
        Ed25519KeyPair::from_pkcs8(doc)
            .map(|pair| Signer { pair })
            .map_err(|_| Error::Refused("the signing key file is not an Ed25519 PKCS#8 key".into()))
    }

    pub fn generate() -> (Signer, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("system random source");
        let signer = Signer::from_pkcs8(doc.as_ref()).expect("fresh key parses");
        (signer, doc.as_ref().to_vec())
    }
}

/// Checks an Ed25519 signature.
pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public)
        .verify(msg, sig)
        .is_ok()
}

/// Length of a signed blob's prefix: magic, version, signer, signature.
pub const SIGNED_PREFIX_LEN: usize = 8 + 2 + 32 + 64;

fn signed_message(magic: &[u8; 8], version: u16, signer: &[u8; 32], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_PREFIX_LEN + body.len());
    m.extend_from_slice(magic);
    m.extend_from_slice(&version.to_le_bytes());
    m.extend_from_slice(signer);
    m.extend_from_slice(body);
    m
}

/// Signs `body` as a blob: `magic | version u16 | signer [32] | signature [64] | body`, the
/// signature covering `magic || version || signer || body` (indexes, export manifests).
pub fn sign_blob(magic: &[u8; 8], version: u16, signer: &Signer, body: &[u8]) -> Vec<u8> {
    let public = signer.public();
    let sig = signer.sign(&signed_message(magic, version, &public, body));
    let mut out = Vec::with_capacity(SIGNED_PREFIX_LEN + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&public);
    out.extend_from_slice(&sig);
    out.extend_from_slice(body);
    out
}

/// Checks a signed blob's magic, version and signature (not whether the signer is trusted:
/// see [`require_trusted`]); returns the signer and the body. `kind` names the blob in errors.
pub fn open_blob<'a>(
    magic: &[u8; 8],
    version: u16,
    bytes: &'a [u8],
    what: &str,
    kind: &str,
) -> Result<([u8; 32], &'a [u8])> {
    open_blob_versions(magic, &[version], bytes, what, kind).map(|(_, s, b)| (s, b))
}

/// [`open_blob`] for a blob that may be of any of `versions`; returns the version too.
pub fn open_blob_versions<'a>(
    magic: &[u8; 8],
    versions: &[u16],
    bytes: &'a [u8],
    what: &str,
    kind: &str,
) -> Result<(u16, [u8; 32], &'a [u8])> {
    if bytes.len() < SIGNED_PREFIX_LEN || &bytes[..8] != magic {
        return Err(Error::tampered(
            what,
            format!("not a signed cairn {kind} (unsigned or damaged)"),
        ));
    }
    let v = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !versions.contains(&v) {
        return Err(Error::tampered(
            what,
            format!(
                "{kind} format version {v} is not one this cairn reads ({})",
                versions
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let signer: [u8; 32] = bytes[10..42].try_into().expect("32");
    let body = &bytes[SIGNED_PREFIX_LEN..];
    if !verify(
        &signer,
        &signed_message(magic, v, &signer, body),
        &bytes[42..106],
    ) {
        return Err(Error::tampered(
            what,
            "signature does not verify (modified after signing)",
        ));
    }
    Ok((v, signer, body))
}

/// Opens a signed blob whose body is JSON: magic, version and signature checked, the signer
/// required to be in `trusted`, the body parsed. Returns the body and the signer.
pub fn open_signed_json<T: serde::de::DeserializeOwned>(
    magic: &[u8; 8],
    version: u16,
    bytes: &[u8],
    trusted: &[[u8; 32]],
    what: &str,
    kind: &str,
) -> Result<(T, [u8; 32])> {
    let (signer, body) = open_blob(magic, version, bytes, what, kind)?;
    require_trusted(&signer, trusted, what)?;
    let v = serde_json::from_slice(body)
        .map_err(|e| Error::tampered(what, format!("body does not parse: {e}")))?;
    Ok((v, signer))
}

/// Refuses a blob signed by a key outside `trusted`, naming both and the way out.
pub fn require_trusted(signer: &[u8; 32], trusted: &[[u8; 32]], what: &str) -> Result<()> {
    if trusted.contains(signer) {
        return Ok(());
    }
    Err(Error::tampered(
        what,
        format!(
            "signed by key {} ({}), which is not a trusted appliance signing key (trusted: {}); \
             trust comes from the operator, never from a region: pass the recovery kit of the \
             appliance that wrote it (--recovery-kit FILE), or --trust-signer with its full key \
             if you know that key",
            key_id(signer),
            hex::encode(signer),
            if trusted.is_empty() {
                "none".to_string()
            } else {
                trusted
                    .iter()
                    .map(|s| key_id(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
    ))
}

/// The key files of an appliance.
pub struct KeyFiles {
    pub dir: PathBuf,
}

/// What [`KeyFiles::ensure`] did.
pub struct Generated {
    pub identity: Option<PathBuf>,
    pub signing: Option<PathBuf>,
}

fn write_secret_file(path: &Path, data: &[u8]) -> Result<()> {
    cairn_engine::fsutil::write_atomic(path, data, 0o600)
        .map_err(|e| Error::io(format!("write key file {}", path.display()), e))
}

impl KeyFiles {
    pub fn new(home: &Path) -> KeyFiles {
        KeyFiles {
            dir: home.join("keys"),
        }
    }

    pub fn identity_path(&self) -> PathBuf {
        self.dir.join("appliance.age")
    }

    pub fn signing_path(&self) -> PathBuf {
        self.dir.join("signing.ed25519")
    }

    /// The signed trust state ([`crate::trust`]).
    pub fn trust_path(&self) -> PathBuf {
        self.dir.join("trust")
    }

    /// Creates the identity and signing key on first use. Two processes starting at once
    /// cannot both generate one: each key file is linked into place only if it does not
    /// exist yet, and the loser uses the winner's. Refuses key files others can read.
    pub fn ensure(&self) -> Result<Generated> {
        if !self.dir.exists() {
            cairn_engine::fsutil::create_dir_mode(&self.dir, 0o700)
                .map_err(|e| Error::io(format!("create {}", self.dir.display()), e))?;
        }
        let mut g = Generated {
            identity: None,
            signing: None,
        };
        if !self.identity_path().exists()
            && self.write_identity_new(&age::x25519::Identity::generate(), &self.identity_path())?
        {
            g.identity = Some(self.identity_path());
        }
        if !self.signing_path().exists() {
            let (_, doc) = Signer::generate();
            if cairn_engine::fsutil::write_new(&self.signing_path(), &doc, 0o600).map_err(|e| {
                Error::io(
                    format!("write key file {}", self.signing_path().display()),
                    e,
                )
            })? {
                g.signing = Some(self.signing_path());
            }
        }
        let dir_mode = fs::metadata(&self.dir)
            .map_err(|e| Error::io(format!("stat {}", self.dir.display()), e))?
            .permissions()
            .mode();
        if dir_mode & 0o077 != 0 {
            return Err(Error::Refused(format!(
                "key directory {} has mode {:o}: others can reach the keys; run chmod 700 {}",
                self.dir.display(),
                dir_mode & 0o777,
                self.dir.display()
            )));
        }
        let mut files = vec![self.identity_path(), self.signing_path()];
        files.extend(self.retired_paths());
        for p in files {
            let mode = fs::metadata(&p)
                .map_err(|e| Error::io(format!("stat {}", p.display()), e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(Error::Refused(format!(
                    "key file {} has mode {:o}: others can read it; run chmod 600 {}",
                    p.display(),
                    mode & 0o777,
                    p.display()
                )));
            }
        }
        Ok(g)
    }

    fn identity_text(id: &age::x25519::Identity) -> String {
        format!(
            "# cairn appliance identity, created {}\n# public key: {}\n{}\n",
            chrono::Utc::now().to_rfc3339(),
            id.to_public(),
            id.to_string().expose_secret()
        )
    }

    /// Writes a new identity file; `false` when one appeared meanwhile.
    fn write_identity_new(&self, id: &age::x25519::Identity, path: &Path) -> Result<bool> {
        cairn_engine::fsutil::write_new(path, Self::identity_text(id).as_bytes(), 0o600)
            .map_err(|e| Error::io(format!("write key file {}", path.display()), e))
    }

    /// Retired identity files, newest first.
    fn retired_paths(&self) -> Vec<PathBuf> {
        let mut retired: Vec<PathBuf> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "retired"))
            .collect();
        retired.sort();
        retired.reverse();
        retired
    }

    fn write_identity(&self, id: &age::x25519::Identity, path: &Path) -> Result<()> {
        write_secret_file(path, Self::identity_text(id).as_bytes())
    }

    /// Makes `id` this appliance's identity (a rebuild from a recovery kit, on an empty
    /// appliance whose freshly generated identity has wrapped nothing yet).
    pub fn install_identity(&self, id: &Identity) -> Result<()> {
        self.write_identity(&id.inner, &self.identity_path())
    }

    pub fn identity(&self) -> Result<Identity> {
        Identity::load(&self.identity_path())
    }

    pub fn signer(&self) -> Result<Signer> {
        let doc = fs::read(self.signing_path()).map_err(|e| {
            Error::io(
                format!("read signing key {}", self.signing_path().display()),
                e,
            )
        })?;
        Signer::from_pkcs8(&doc)
    }

    /// Replaces the appliance identity; the old one is kept as `appliance-<stamp>.retired`.
    /// Returns (old, new).
    pub fn rotate(&self) -> Result<(Identity, Identity)> {
        let old = self.identity()?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f");
        let retired = self.dir.join(format!("appliance-{stamp}.retired"));
        let text = fs::read(self.identity_path())
            .map_err(|e| Error::io("read the appliance identity", e))?;
        write_secret_file(&retired, &text)?;
        let fresh = age::x25519::Identity::generate();
        self.write_identity(&fresh, &self.identity_path())?;
        Ok((old, self.identity()?))
    }

    /// Every identity file this appliance has (current first, then retired ones).
    pub fn all_identities(&self) -> Vec<Identity> {
        let mut v = Vec::new();
        if let Ok(i) = self.identity() {
            v.push(i);
        }
        v.extend(
            self.retired_paths()
                .iter()
                .filter_map(|p| Identity::load(p).ok()),
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let k = KeyFiles::new(dir.path());
        let g = k.ensure().unwrap();
        assert!(g.identity.is_some() && g.signing.is_some());
        let id = k.identity().unwrap();
        let g = k.ensure().unwrap();
        assert!(g.identity.is_none() && g.signing.is_none());
        assert_eq!(k.identity().unwrap().recipient, id.recipient);
        for p in [k.identity_path(), k.signing_path()] {
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            fs::metadata(&k.dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(k.signing_path(), fs::Permissions::from_mode(0o644)).unwrap();
        let e = k.ensure().err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn signatures_verify_only_with_the_right_key() {
        let (s, _) = Signer::generate();
        let (other, _) = Signer::generate();
        let sig = s.sign(b"index");
        assert!(verify(&s.public(), b"index", &sig));
        assert!(!verify(&other.public(), b"index", &sig));
        assert!(!verify(&s.public(), b"index!", &sig));
        assert_eq!(s.id().len(), 16);
    }

    #[test]
    fn rotation_keeps_the_old_identity() {
        let dir = tempfile::tempdir().unwrap();
        let k = KeyFiles::new(dir.path());
        k.ensure().unwrap();
        let (old, new) = k.rotate().unwrap();
        assert_ne!(old.recipient, new.recipient);
        let all = k.all_identities();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].recipient, new.recipient);
        assert_eq!(all[1].recipient, old.recipient);
        assert!(parse_recipient("nonsense").is_err());
        assert!(parse_recipient(&new.recipient).is_ok());
    }
}
