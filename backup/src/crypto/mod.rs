//! Envelope encryption: [`stream`] seals payload objects with per-object data keys.

pub mod keyobj;
pub mod stream;

/// Fresh random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    cairn_engine::ids::random_bytes(&mut b);
    b
}
