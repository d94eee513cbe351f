//! Cairn's protection layer: every sealed layer is shipped, envelope-encrypted, to several
//! object-store regions, and indexed so that any one region plus a key restores everything.
//!
//! Invariants (DESIGN.md principles 2–5):
//! - Objects are immutable and named by the SHA-256 of their plaintext; a region never holds a
//!   payload it could read: each object has its own random data key, and only key objects —
//!   the data key wrapped for the keyring's age recipients — can open it.
//! - A timeline's index object is written to a region only after every object it names is
//!   durable in `min_copies` regions; it is signed with the appliance's Ed25519 key, binds its
//!   own path, its layers' sizes, hashes and data key commitments, and carries a generation;
//!   a reader refuses an unsigned, wrongly signed, moved or older index.
//! - A region is untrusted storage: what decides trust (signing keys, keyring) comes from the
//!   operator's recovery kit and the signed trust file, never from region data ([`kit`],
//!   [`trust`], [`view`]).
//! - Changing recipients rewrites key objects only; payload objects never change.
//! - Deletion goes through a queue: only objects no durable index references, after a delay.

pub mod check;
pub mod crypto;
pub mod error;
pub mod export;
pub mod fetch;
pub mod gc;
pub mod index;
pub mod keyring;
pub mod keys;
pub mod kit;
pub mod protection;
pub mod publish;
pub mod rebuild;
pub mod region;
pub mod region_state;
pub mod schema;
pub mod ship;
pub mod shred;
pub mod state;
pub mod trust;
pub mod view;

pub use error::{Error, Result};
pub use protection::Protection;
