//! The protection layer of one appliance: its keys, its trust state and its regions, opened
//! together ([`Protection::open`]), and the data keys of the objects it ships.
//!
//! Invariants:
//! - Keys and trust are reloaded when another cairn process changed them ([`Protection::refresh`]):
//!   a running `cairn up` follows `cairn key ...` without a restart.
//! - Every change of the keyring, every new data key and every key object put into a region
//!   happens under the keyring lock, an inter-process `flock` ([`lock_keyring`]).
//! - A data key is created once per object, random, wrapped for the whole keyring; its
//!   commitment (and, for WAL layers, the digest of the metadata tail) is recorded with it, for
//!   the signed indexes. New content under the same name gets a new data key.
//! - A fenced appliance refuses everything that writes to a region ([`Protection::require_unfenced`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;

use cairn_engine::catalog::{now_us, LayerRow};
use cairn_engine::home::LockGuard;
use cairn_engine::layer::file::tail_digest;
use cairn_engine::layer::LayerKind;
use cairn_engine::Engine;

use crate::crypto::keyobj::KeyObject;
use crate::crypto::stream::{Opener, CHUNK_SIZE};
use crate::crypto::{dek_commitment, random};
use crate::error::{Error, Result};
use crate::keys::{Generated, Identity, KeyFiles, RecipientEntry, Signer};
use crate::kit::keyring_fingerprint;
use crate::region::{keys, Region, RegionSet};
use crate::state::{ObjectKeyRow, State};
use crate::trust::TrustState;

/// Takes the keyring lock of `engine`'s home: every change of the keyring, every new data key
/// and every key object put into a region happen under it, across processes.
pub async fn lock_keyring(engine: &Engine) -> Result<LockGuard> {
    let deadline = std::time::Instant::now() + KEYRING_WAIT;
    let mut told = false;
    loop {
        match engine.home.lock("keyring", "the keyring", Duration::ZERO) {
            Ok(g) => return Ok(g),
            Err(cairn_engine::Error::Busy(_)) if std::time::Instant::now() < deadline => {
                if !told {
                    tracing::info!("waiting for another cairn process to finish a keyring change");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a region is doing, for `backup list`, the API and progress bars.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RegionStatus {
    pub region: String,
    pub pending_objects: u64,
    pub pending_bytes: u64,
    pub shipped_bytes: u64,
    pub current: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at_us: Option<i64>,
    pub last_success_at_us: Option<i64>,
}

/// The protection layer of one appliance.
pub struct Protection {
    pub engine: Arc<Engine>,
    pub regions: RegionSet,
    pub key_files: KeyFiles,
    keys: RwLock<Keys>,
    pub(crate) signer: Signer,
    pub generation: u64,
    pub(crate) status: Mutex<BTreeMap<String, RegionStatus>>,
    key_lock: tokio::sync::Mutex<()>,
}

/// The identities and trust state as last loaded from `HOME/keys`.
#[derive(Clone)]
struct Keys {
    identities: Vec<Identity>,
    trust: TrustState,
}

/// How long a key command or a shipper waits for another process's keyring change.
const KEYRING_WAIT: Duration = Duration::from_secs(600);

impl Protection {
    /// Opens the protection layer: keys (created on first use), trust state, regions.
    pub async fn open(engine: Arc<Engine>) -> Result<(Protection, Generated)> {
        engine.catalog.migrate(&crate::schema::COMPONENT).await?;
        let key_files = KeyFiles::new(&engine.home.root);
        let generated = key_files.ensure()?;
        let signer = key_files.signer()?;
        let st = State {
            cat: &engine.catalog,
        };
        let (generation, catalog_signers) = st.appliance(&signer.public()).await?;
        let regions = RegionSet::open(&engine.home.root)?;
        let status = regions
            .regions
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    RegionStatus {
                        region: r.name.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let _lock = lock_keyring(&engine).await?;
        let trust = match TrustState::load(&key_files.trust_path(), &signer)? {
            Some(t) => t,
            None => {
                // First start of this version: the keyring and signers move out of the
                // catalog into the signed trust file (once; the catalog is not read again).
                let mut recipients = Vec::new();
                for r in st.legacy_recipients().await? {
                    match r.validate() {
                        Ok(()) => recipients.push(r),
                        Err(e) => tracing::warn!(recipient = %r.id(), error = %e,
                            "keyring entry of the catalog left out of the trust file"),
                    }
                }
                let others: Vec<[u8; 32]> = catalog_signers
                    .into_iter()
                    .filter(|s| *s != signer.public())
                    .collect();
                let mut t = TrustState::new(recipients, &others, false);
                t.sequence = 1;
                t.written_at_us = now_us();
                t
            }
        };
        let identities = key_files.all_identities();
        let current = identities
            .first()
            .ok_or_else(|| Error::Refused("the appliance identity is missing".into()))?
            .clone();
        let mut fresh = trust.clone();
        if !fresh
            .recipients
            .iter()
            .any(|r| r.recipient == current.recipient)
        {
            fresh.recipients.push(RecipientEntry {
                recipient: current.recipient.clone(),
                role: "appliance".into(),
                label: format!("appliance identity {}", current.id()),
            });
        }
        if fresh != trust || !key_files.trust_path().exists() {
            fresh.sequence += 1;
            fresh.written_at_us = now_us();
            fresh.save(&key_files.trust_path(), &signer)?;
        }
        Ok((
            Protection {
                engine,
                regions,
                key_files,
                keys: RwLock::new(Keys {
                    identities,
                    trust: fresh,
                }),
                signer,
                generation,
                status: Mutex::new(status),
                key_lock: tokio::sync::Mutex::new(()),
            },
            generated,
        ))
    }

    pub fn state(&self) -> State<'_> {
        State {
            cat: &self.engine.catalog,
        }
    }

    fn keys(&self) -> Keys {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current appliance identity.
    pub fn identity(&self) -> Identity {
        self.keys().identities[0].clone()
    }

    /// Every identity of this appliance (current first, then retired ones).
    pub fn identities(&self) -> Vec<Identity> {
        self.keys().identities
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The keyring: every data key is wrapped for these recipients.
    pub fn recipients(&self) -> Vec<RecipientEntry> {
        self.keys().trust.recipients
    }

    /// Fingerprint of the keyring ([`crate::kit::keyring_fingerprint`]).
    pub fn keyring_fingerprint(&self) -> String {
        keyring_fingerprint(&self.recipients())
    }

    /// Signing keys whose indexes, states and manifests this appliance believes: its own,
    /// then those of the trust file.
    pub fn trusted(&self) -> Vec<[u8; 32]> {
        let mut v = vec![self.signer.public()];
        for s in self.keys().trust.signer_keys() {
            if !v.contains(&s) {
                v.push(s);
            }
        }
        v
    }

    /// Whether this appliance is fenced (rebuilt and not promoted): it writes to no region.
    pub fn fenced(&self) -> bool {
        self.keys().trust.fenced
    }

    /// Refuses `what` on a fenced appliance, naming the way out.
    pub fn require_unfenced(&self, what: &str) -> Result<()> {
        if self.fenced() {
            return Err(Error::Fenced(format!(
                "this appliance was rebuilt from a region and is fenced: it restores and verifies \
                 but does not {what}, so that it cannot overwrite the regions or take over the \
                 sources of the appliance it was rebuilt from. When that appliance is gone for \
                 good, run `cairn catalog promote`"
            )));
        }
        Ok(())
    }

    /// Reloads identities and trust state when another process changed them (`cairn key ...`
    /// while `cairn up` runs). Returns whether anything changed.
    pub fn refresh(&self) -> Result<bool> {
        let loaded = TrustState::load(&self.key_files.trust_path(), &self.signer)?;
        let current_identity = self.key_files.identity()?.recipient;
        let k = self.keys();
        let changed = loaded
            .as_ref()
            .is_some_and(|t| t.sequence != k.trust.sequence)
            || current_identity != k.identities[0].recipient;
        if changed {
            let mut w = self.keys.write().unwrap_or_else(|e| e.into_inner());
            w.identities = self.key_files.all_identities();
            if let Some(t) = loaded {
                w.trust = t;
            }
            tracing::info!("reloaded the keys and keyring changed by another cairn process");
        }
        Ok(changed)
    }

    /// Takes the keyring lock (shared by every cairn process of this home).
    pub async fn lock_keyring(&self) -> Result<LockGuard> {
        lock_keyring(&self.engine).await
    }

    /// Changes the trust state: under the keyring lock (held by the caller), from what is on
    /// disk now, saved with the next sequence. Returns the new state.
    pub(crate) fn change_trust(
        &self,
        f: impl FnOnce(&mut TrustState) -> Result<()>,
    ) -> Result<TrustState> {
        self.refresh()?;
        let mut t = self.keys().trust;
        f(&mut t)?;
        t.sequence += 1;
        t.written_at_us = now_us();
        t.save(&self.key_files.trust_path(), &self.signer)?;
        let mut w = self.keys.write().unwrap_or_else(|e| e.into_inner());
        w.trust = t.clone();
        w.identities = self.key_files.all_identities();
        Ok(t)
    }

    /// [`Self::change_trust`], taking the keyring lock for the change.
    pub(crate) async fn change_trust_locked(
        &self,
        f: impl FnOnce(&mut TrustState) -> Result<()>,
    ) -> Result<TrustState> {
        let _keyring = self.lock_keyring().await?;
        self.change_trust(f)
    }

    pub fn status(&self) -> Vec<RegionStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn update(&self, region: &str, f: impl FnOnce(&mut RegionStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = s.get_mut(region) {
            f(st);
        }
    }

    /// Opens a data key with this appliance's identities, reloading them once if another
    /// process rotated the key meanwhile.
    pub(crate) fn unwrap_key(&self, ko: &KeyObject, what: &str) -> Result<[u8; 32]> {
        let ids = self.identities();
        let refs: Vec<&Identity> = ids.iter().collect();
        match ko.unwrap(&refs, what) {
            Err(Error::WrongKey { .. }) if self.refresh()? => {
                let ids = self.identities();
                let refs: Vec<&Identity> = ids.iter().collect();
                ko.unwrap(&refs, what)
            }
            r => r,
        }
    }

    /// The data key of a layer (its file at `path`), creating it (and its key object) on first
    /// use.
    pub async fn ensure_key(
        &self,
        layer: &LayerRow,
        path: &std::path::Path,
    ) -> Result<(ObjectKeyRow, [u8; 32])> {
        let path = path.to_path_buf();
        let tail = match layer.kind {
            LayerKind::Wal => {
                let (len, sha) = tokio::task::spawn_blocking(move || tail_digest(&path))
                    .await
                    .map_err(|e| {
                        Error::io("read a layer", std::io::Error::other(e.to_string()))
                    })??;
                Some((len, hex::encode(sha)))
            }
            LayerKind::Image => None,
        };
        self.ensure_object_key(
            &layer.id.to_string(),
            layer.id.0,
            &layer.cluster_id.to_string(),
            Opener::sealed_len(CHUNK_SIZE, layer.file_size),
            tail,
        )
        .await
    }

    /// The data key of object `name`, creating it (and its key object) on first use. A row
    /// whose key belongs to another object id (the secrets changed) is replaced.
    pub async fn ensure_object_key(
        &self,
        name: &str,
        object_id: [u8; 32],
        cluster_id: &str,
        sealed_size: u64,
        tail: Option<(u64, String)>,
    ) -> Result<(ObjectKeyRow, [u8; 32])> {
        let _g = self.key_lock.lock().await;
        let st = self.state();
        let what = format!("data key of {name}");
        if let Some(k) = st.object_key(name).await? {
            let ko = KeyObject::decode(&k.key_object, &what)?;
            if ko.object_id == object_id {
                let dek = self.unwrap_key(&ko, &what)?;
                return Ok((k, dek));
            }
            // New content under the same name: a new data key, never the old one again.
            st.delete_object_key(name).await?;
        }
        let _keyring = self.lock_keyring().await?;
        if self.shred_due(cluster_id).await? {
            return Err(Error::Refused(format!(
                "cluster {cluster_id} is being shredded: no data key of it is created any more"
            )));
        }
        self.refresh()?;
        let dek: [u8; 32] = random();
        let key_id: [u8; 16] = random();
        let ko = KeyObject::wrap(&dek, object_id, key_id, &self.recipients())?;
        let row = ObjectKeyRow {
            object: name.to_string(),
            cluster_id: cluster_id.to_string(),
            key_id: hex::encode(key_id),
            key_object: ko.encode(),
            object_sha256: None,
            object_size: sealed_size,
            dek_commitment: Some(dek_commitment(&object_id, &key_id, &dek)),
            tail,
        };
        st.insert_object_key(&row).await?;
        Ok((row, dek))
    }

    /// Puts the current key object of `object` into `region`, under the keyring lock so that
    /// a concurrent keyring change (which rewrites key objects) cannot be overtaken by a stale
    /// copy.
    pub(crate) async fn put_key_object_of(
        &self,
        region: &Region,
        cluster: &str,
        object: &str,
    ) -> Result<()> {
        let _keyring = self.lock_keyring().await?;
        if self.shred_due(cluster).await? {
            return Err(Error::Refused(format!(
                "cluster {cluster} is being shredded: no key object of it is written any more"
            )));
        }
        let row = self.state().object_key(object).await?.ok_or_else(|| {
            Error::tampered("catalog", format!("the data key of {object} disappeared"))
        })?;
        let key = keys::key_of(cluster, object);
        region.put_verified(&key, Bytes::from(row.key_object)).await
    }
}
