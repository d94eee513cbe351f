//! A report's stored form: canonical JSON of an envelope holding the report, the signer's
//! Ed25519 public key and the signature (`docs/FORMAT.md`, "Verification reports").
//!
//! ```text
//! {"format":"cairn-verification-report","report":{...},"signature":"<128 hex>","signer":"<64 hex>","version":1}
//! ```
//!
//! Invariants:
//! - Canonical JSON: object keys sorted, no whitespace, serde_json's escaping, integers only,
//!   signer and signature in lowercase hex. A stored report whose bytes are not the canonical
//!   encoding of what they parse to is refused, so no byte of it can change unnoticed
//!   (whitespace and the case of a hex digit included).
//! - The signature covers `cairn verification report v1\n` followed by the canonical JSON of
//!   the report alone; the signer must be one the caller trusts (from the recovery kit or the
//!   trust state, never from the stored report).
//! - A report's digest, which the next report names, is the SHA-256 of its whole stored form.

use serde::Serialize;
use sha2::{Digest, Sha256};

use cairn_backup::keys::{verify, Signer};

use super::{Report, FORMAT_VERSION};

/// The `format` field of every stored report.
pub const FORMAT_NAME: &str = "cairn-verification-report";

/// What the signature covers before the report's canonical JSON.
const DOMAIN: &[u8] = b"cairn verification report v1\n";

/// A report as stored, with what its stored form proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedReport {
    pub report: Report,
    /// Who signed it.
    pub signer: [u8; 32],
    /// The stored form.
    pub bytes: Vec<u8>,
    /// SHA-256 (hex) of the stored form: what the next report names as `previous`.
    pub digest: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: String,
    version: u32,
    report: serde_json::Value,
    signer: String,
    signature: String,
}

/// The canonical JSON of `v` (sorted keys, compact).
pub fn canonical<T: Serialize>(v: &T) -> Vec<u8> {
    let value = serde_json::to_value(v).expect("reports serialise to JSON");
    serde_json::to_vec(&value).expect("a JSON value encodes")
}

/// SHA-256 (hex) of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn message(report_json: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + report_json.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(report_json);
    m
}

/// Signs `report` with `signer`: its stored form.
pub fn seal(report: &Report, signer: &Signer) -> SealedReport {
    let report_json = canonical(report);
    let signature = signer.sign(&message(&report_json));
    let envelope = Envelope {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        report: serde_json::to_value(report).expect("reports serialise to JSON"),
        signer: hex::encode(signer.public()),
        signature: hex::encode(signature),
    };
    let bytes = canonical(&envelope);
    SealedReport {
        report: report.clone(),
        signer: signer.public(),
        digest: digest(&bytes),
        bytes,
    }
}

/// Reads a stored report: canonical form, format, a signature by one of `trusted`. The error
/// says what is wrong with it.
pub fn open(bytes: &[u8], trusted: &[[u8; 32]]) -> Result<SealedReport, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON report ({e})"))?;
    if serde_json::to_vec(&value).ok().as_deref() != Some(bytes) {
        return Err("not in canonical form: its bytes were edited".into());
    }
    let env: Envelope = serde_json::from_value(value)
        .map_err(|e| format!("not a verification report envelope ({e})"))?;
    if env.format != FORMAT_NAME {
        return Err(format!("format '{}', not '{FORMAT_NAME}'", env.format));
    }
    if env.version != FORMAT_VERSION {
        return Err(format!(
            "report format version {} (this cairn reads version {FORMAT_VERSION}): upgrade cairn",
            env.version
        ));
    }
    // Lowercase hex only: `AB` decodes as `ab` does, and a stored form with two spellings
    // could be edited without its signature noticing.
    let signer: [u8; 32] = hex::decode(&env.signer)
        .ok()
        .filter(|b| hex::encode(b) == env.signer)
        .and_then(|b| b.try_into().ok())
        .ok_or("its signer is not an Ed25519 public key in lowercase hex")?;
    let signature = hex::decode(&env.signature)
        .ok()
        .filter(|b| hex::encode(b) == env.signature)
        .ok_or("its signature is not in lowercase hex")?;
    if !trusted.contains(&signer) {
        return Err(format!(
            "signed by {}, which is not a trusted signer of this appliance",
            &env.signer[..16]
        ));
    }
    let report_json = serde_json::to_vec(&env.report).expect("a JSON value encodes");
    if !verify(&signer, &message(&report_json), &signature) {
        return Err("its signature does not match its content".into());
    }
    let report: Report = serde_json::from_value(env.report)
        .map_err(|e| format!("signed, but not a report this cairn reads ({e})"))?;
    if report.format != FORMAT_VERSION {
        return Err(format!("report format {}", report.format));
    }
    Ok(SealedReport {
        report,
        signer,
        bytes: bytes.to_vec(),
        digest: digest(bytes),
    })
}
