//! Envelope encryption: [`stream`] seals payload objects with per-object data keys.

pub mod keyobj;
pub mod stream;

/// Fresh random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    cairn_engine::ids::random_bytes(&mut b);
    b
}

/// The commitment to an object's data key that signed indexes carry:
/// SHA-256("cairn-dek-v1" | object id | key id | data key), hex. A key object that unwraps to
/// any other key — a forged one, wrapped for the appliance's public recipient — is refused,
/// and the commitment reveals nothing of the key.
pub fn dek_commitment(object_id: &[u8; 32], key_id: &[u8; 16], dek: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"cairn-dek-v1");
    h.update(object_id);
    h.update(key_id);
    h.update(dek);
    hex::encode(h.finalize())
}
