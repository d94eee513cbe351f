//! Shipping: sealed layers go to every region; indexes follow once layers are durable.
//!
//! For each layer the first shipment creates its data key (random, 256 bits) and key object
//! (wrapped for the keyring) and records both in the catalog; sealing is deterministic for a
//! given data key, so every region receives byte-identical objects and a region that was down
//! catches up later without any copy kept aside. A region upload is: look the object up (an
//! object of the expected size is already complete: object stores publish whole objects only),
//! else stream it up — one part in memory at a time, multipart above the part size — then the
//! key object, then the shipment row. Each region is shipped independently, so a slow or dead
//! region holds up only itself.
//!
//! A timeline's index in a region names exactly the layers that are durable there *and* in
//! `min_copies` regions (an image only together with the layers its pieces live in). It is
//! rewritten when that set changes, never before its layers are durable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use object_store::PutPayload;
use sha2::{Digest, Sha256};

use cairn_engine::catalog::{now_us, ClusterRow, LayerRow, TimelineRow};
use cairn_engine::home::LockGuard;
use cairn_engine::layer::file::tail_digest;
use cairn_engine::layer::LayerKind;
use cairn_engine::{ClusterId, Engine};

use crate::crypto::keyobj::KeyObject;
use crate::crypto::stream::{Compression, Header, ObjectKind, Opener, Sealer, CHUNK_SIZE};
use crate::crypto::{dek_commitment, random};
use crate::error::{Error, Result};
use crate::index::{
    index_key, BranchName, ClusterInfo, IndexedLayer, PolicySnapshot, SealedRef, TimelineIndex,
    TimelineInfo, WalTail,
};
use crate::keys::{Generated, Identity, KeyFiles, RecipientEntry, Signer};
use crate::kit::keyring_fingerprint;
use crate::region::{keys, Region, RegionSet};
use crate::region_state::{state_key, RegionState, TimelineMark};
use crate::state::{IndexWrite, ObjectKeyRow, State};
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
    signer: Signer,
    pub generation: u64,
    status: Mutex<BTreeMap<String, RegionStatus>>,
    key_lock: tokio::sync::Mutex<()>,
}

/// The identities and trust state as last loaded from `HOME/keys`.
#[derive(Clone)]
struct Keys {
    identities: Vec<Identity>,
    trust: TrustState,
}

/// Retries of one upload before the region is reported failing for this round.
const ATTEMPTS: u32 = 3;

/// How long a key command or a shipper waits for another process's keyring change.
const KEYRING_WAIT: Duration = Duration::from_secs(600);

impl Protection {
    /// Opens the protection layer: keys (created on first use), trust state, regions.
    pub async fn open(engine: Arc<Engine>) -> Result<(Protection, Generated)> {
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

    fn update(&self, region: &str, f: impl FnOnce(&mut RegionStatus)) {
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

    /// The data key of a layer, creating it (and its key object) on first use.
    pub async fn ensure_key(&self, layer: &LayerRow) -> Result<(ObjectKeyRow, [u8; 32])> {
        let path = self.engine.layer_path(layer);
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

    /// The secrets of a cluster as shipped: JSON of its superuser and source passwords. A
    /// secret that exists but cannot be read is an error (shipping `null` would lose it).
    fn secrets_body(&self, c: &ClusterRow) -> Result<Vec<u8>> {
        let home = &self.engine.home;
        let read = |what: &str| -> Result<Option<String>> {
            let p = home.root.join("secrets").join(format!("{}.{what}", c.id));
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(Some(s.trim().to_string())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
            }
        };
        Ok(serde_json::json!({
            "password": read("password")?,
            "source_password": read("source-password")?,
        })
        .to_string()
        .into_bytes())
    }

    /// Ships a cluster's secrets (superuser and source passwords) to a region, sealed like any
    /// other object and named by its content, so that a region and a key are enough to log
    /// into restored computes. Changed secrets get a new data key.
    async fn ship_secrets(&self, region: &Region, c: &ClusterRow) -> Result<()> {
        let name = keys::secrets_object(&c.id.to_string());
        let body = self.secrets_body(c)?;
        let object_id: [u8; 32] = Sha256::digest(&body).into();
        let (key, dek) = self
            .ensure_object_key(
                &name,
                object_id,
                &c.id.to_string(),
                Opener::sealed_len(CHUNK_SIZE, body.len() as u64),
                None,
            )
            .await?;
        if key.object_sha256.is_some() && self.state().shipped_to(&name, &region.name).await? {
            return Ok(());
        }
        let header = Header {
            kind: ObjectKind::Secrets,
            compression: Compression::None,
            chunk_size: CHUNK_SIZE,
            object_id,
            key_id: hex::decode(&key.key_id)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::tampered("catalog", format!("bad key id of {name}")))?,
        };
        let sealed = crate::crypto::stream::seal_all(&dek, &header, &body);
        let sha = hex::encode(Sha256::digest(&sealed));
        let cid = c.id.to_string();
        let size = sealed.len() as u64;
        region
            .put(&keys::secrets(&cid), Bytes::from(sealed))
            .await?;
        region
            .verify_stored(&keys::secrets(&cid), size, &sha)
            .await?;
        self.put_key_object_of(region, &cid, &name).await?;
        let st = self.state();
        st.set_object_sha(&name, &sha).await?;
        st.record_shipment(&name, &region.name, &sha).await
    }

    /// Puts the current key object of every export this region holds but whose shipment was
    /// forgotten (a keyring change could not reach the region): otherwise its old key object,
    /// wrapped for a removed recipient, would stay there.
    async fn restore_export_keys(
        &self,
        region: &Region,
        shredding: &HashSet<ClusterId>,
    ) -> Result<()> {
        let st = self.state();
        for k in st.object_keys().await? {
            let Some(id) = k.object.strip_prefix("export-") else {
                continue;
            };
            if k.key_object == b"shredded"
                || shredding.iter().any(|c| c.to_string() == k.cluster_id)
                || st.shipped_to(&k.object, &region.name).await?
            {
                continue;
            }
            let Some(sha) = k.object_sha256.clone() else {
                continue;
            };
            if region
                .head(&keys::export_manifest(&k.cluster_id, id))
                .await?
                .is_none()
            {
                continue;
            }
            self.put_key_object_of(region, &k.cluster_id, &k.object)
                .await?;
            st.record_shipment(&k.object, &region.name, &sha).await?;
        }
        Ok(())
    }

    /// Layers of `filter` (or every cluster) not yet shipped to `region`, oldest first.
    async fn pending(&self, region: &str, filter: Option<ClusterId>) -> Result<Vec<LayerRow>> {
        let shipped: HashSet<String> = self
            .state()
            .shipments()
            .await?
            .into_iter()
            .filter(|(_, r, _)| r == region)
            .map(|(l, _, _)| l)
            .collect();
        let mut out = Vec::new();
        for c in self.engine.catalog.clusters().await? {
            if filter.is_some_and(|f| f != c.id) {
                continue;
            }
            let scratch = self.scratch_timelines(&c).await?;
            let mut layers = self.engine.catalog.layers(c.id).await?;
            layers.retain(|l| {
                !shipped.contains(&l.id.to_string()) && !scratch.contains(&l.timeline_id)
            });
            out.extend(layers);
        }
        out.sort_by_key(|l| l.created_at_us);
        Ok(out)
    }

    /// Seals a layer file (or computes what sealing produces) and returns (sha256, size).
    pub(crate) fn seal_digest(
        path: &std::path::Path,
        header: Header,
        dek: [u8; 32],
    ) -> Result<(String, u64)> {
        let mut r = SealedReader::open(path, header, dek)?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(part) = r.next_part(8 << 20)? {
            h.update(&part);
            n += part.len() as u64;
        }
        Ok((hex::encode(h.finalize()), n))
    }

    /// Ships one layer to one region (object, then key object, then the shipment row).
    async fn ship_layer(&self, region: &Region, layer: &LayerRow) -> Result<u64> {
        let (key, dek) = self.ensure_key(layer).await?;
        let cluster = layer.cluster_id.to_string();
        let name = layer.id.to_string();
        let obj_key = keys::layer(&cluster, &name);
        let path = self.engine.layer_path(layer);
        let header = Header {
            kind: ObjectKind::Layer,
            compression: Compression::None,
            chunk_size: CHUNK_SIZE,
            object_id: layer.id.0,
            key_id: hex::decode(&key.key_id)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::tampered("catalog", format!("bad key id of {name}")))?,
        };
        let expected = key.object_size;
        // An object already there (an interrupted run, another appliance) counts only once its
        // bytes are proven to be the ones this appliance seals; otherwise it is replaced.
        let present = match (region.head(&obj_key).await?, &key.object_sha256) {
            (Some(size), Some(sha)) if size == expected => {
                match region.verify_stored(&obj_key, expected, sha).await {
                    Ok(()) => Some(sha.clone()),
                    Err(e) if e.retryable() => return Err(e),
                    Err(e) => {
                        tracing::warn!(region = %region.name, error = %e, "replacing a bad copy");
                        None
                    }
                }
            }
            _ => None,
        };
        let sha = match present {
            Some(sha) => sha,
            None => {
                let sha = self
                    .upload(region, &obj_key, &path, header, dek, expected)
                    .await?;
                if let Some(recorded) = &key.object_sha256 {
                    if *recorded != sha {
                        return Err(Error::tampered(
                            format!("local layer {}", path.display()),
                            "sealed to other bytes than for an earlier region: the file \
                             changed on disk; run `cairn check --full`",
                        ));
                    }
                }
                region.verify_stored(&obj_key, expected, &sha).await?;
                sha
            }
        };
        cairn_engine::failpoint::hit("ship-before-key-object");
        self.put_key_object_of(region, &cluster, &name).await?;
        let st = self.state();
        st.set_object_sha(&name, &sha).await?;
        st.record_shipment(&name, &region.name, &sha).await?;
        Ok(expected)
    }

    /// The catalog row of layer `id`, when this appliance still has its file.
    pub(crate) async fn local_layer(&self, id: &str) -> Result<Option<LayerRow>> {
        for c in self.engine.catalog.clusters().await? {
            if let Some(l) = self
                .engine
                .catalog
                .layers(c.id)
                .await?
                .into_iter()
                .find(|l| l.id.to_string() == id)
            {
                return Ok(self.engine.layer_path(&l).exists().then_some(l));
            }
        }
        Ok(None)
    }

    /// Ships a layer to `region` again (repair): the copy there is replaced by a proven one.
    pub(crate) async fn ship_layer_again(&self, region: &Region, layer: &LayerRow) -> Result<()> {
        self.require_unfenced("repair the regions")?;
        self.state()
            .forget_shipment(&layer.id.to_string(), &region.name)
            .await?;
        self.ship_layer(region, layer).await.map(|_| ())
    }

    pub(crate) async fn upload(
        &self,
        region: &Region,
        obj_key: &str,
        path: &std::path::Path,
        header: Header,
        dek: [u8; 32],
        expected: u64,
    ) -> Result<String> {
        let part_size = self.regions.part_size as usize;
        let p = path.to_path_buf();
        let mut reader = tokio::task::spawn_blocking(move || SealedReader::open(&p, header, dek))
            .await
            .map_err(|e| Error::io("seal", std::io::Error::other(e.to_string())))??;
        let next = |mut r: SealedReader| async move {
            tokio::task::spawn_blocking(move || {
                let part = r.next_part(part_size);
                (r, part)
            })
            .await
            .map_err(|e| Error::io("seal", std::io::Error::other(e.to_string())))
        };
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        let object_id = header.object_id;
        let damaged = |path: &std::path::Path| {
            Error::tampered(
                format!("local file {}", path.display()),
                "does not hash to its id (damaged on disk): not shipped; run `cairn check --full`",
            )
        };
        if expected <= part_size as u64 {
            let (r, part) = next(reader).await?;
            let part = part?.unwrap_or_default();
            if r.plain_digest() != Some(object_id) {
                return Err(damaged(path));
            }
            hasher.update(&part);
            sent += part.len() as u64;
            region.put(obj_key, Bytes::from(part)).await?;
            self.update(&region.name, |s| s.shipped_bytes += sent);
        } else {
            let mut up = region.put_multipart(obj_key).await?;
            loop {
                let (r, part) = next(reader).await?;
                reader = r;
                let part = match part {
                    Ok(Some(p)) => p,
                    Ok(None) => {
                        if reader.plain_digest() != Some(object_id) {
                            let _ = up.abort().await;
                            return Err(damaged(path));
                        }
                        break;
                    }
                    Err(e) => {
                        let _ = up.abort().await;
                        return Err(e);
                    }
                };
                hasher.update(&part);
                sent += part.len() as u64;
                let n = part.len() as u64;
                if let Err(e) = up.put_part(PutPayload::from(part)).await {
                    let _ = up.abort().await;
                    return Err(Error::region(
                        &region.name,
                        format!("upload part of {obj_key}"),
                        e,
                    ));
                }
                self.update(&region.name, |s| s.shipped_bytes += n);
                cairn_engine::failpoint::hit("ship-mid-upload");
            }
            if let Err(e) = up.complete().await {
                let _ = up.abort().await;
                return Err(Error::region(
                    &region.name,
                    format!("complete {obj_key}"),
                    e,
                ));
            }
            region.sync(obj_key)?;
        }
        if sent != expected {
            return Err(Error::io(
                format!("seal {}", path.display()),
                std::io::Error::other(format!(
                    "sealed {sent} bytes, expected {expected} (the layer file changed?)"
                )),
            ));
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Ships every pending layer to `region` and rewrites its indexes. Errors are recorded in
    /// the region's status and returned.
    pub async fn ship_region(&self, region: &Region, filter: Option<ClusterId>) -> Result<usize> {
        let r = self.ship_region_inner(region, filter).await;
        match &r {
            Ok(_) => self.update(&region.name, |s| {
                s.last_success_at_us = Some(now_us());
                s.last_error = None;
                s.current = None;
            }),
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(region = %region.name, error = %msg, "shipping failed");
                self.update(&region.name, |s| {
                    s.last_error = Some(msg);
                    s.last_error_at_us = Some(now_us());
                    s.current = None;
                })
            }
        }
        r
    }

    async fn ship_region_inner(&self, region: &Region, filter: Option<ClusterId>) -> Result<usize> {
        self.require_unfenced("ship to the regions")?;
        self.refresh()?;
        let mut shredding = HashSet::new();
        for c in self.engine.catalog.clusters().await? {
            if self.shred_due(&c.id.to_string()).await? {
                shredding.insert(c.id);
                continue;
            }
            if filter.is_none_or(|f| f == c.id) {
                self.ship_secrets(region, &c).await?;
            }
        }
        self.restore_export_keys(region, &shredding).await?;
        let mut pending = self.pending(&region.name, filter).await?;
        pending.retain(|l| !shredding.contains(&l.cluster_id));
        self.update(&region.name, |s| {
            s.pending_objects = pending.len() as u64;
            s.pending_bytes = pending.iter().map(|l| l.file_size).sum();
        });
        let mut shipped = 0;
        for layer in &pending {
            self.update(&region.name, |s| s.current = Some(layer.id.to_string()));
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.ship_layer(region, layer).await {
                    Ok(_) => {
                        shipped += 1;
                        self.update(&region.name, |s| {
                            s.pending_objects = s.pending_objects.saturating_sub(1);
                            s.pending_bytes = s.pending_bytes.saturating_sub(layer.file_size);
                        });
                        break;
                    }
                    Err(e) if e.retryable() && attempt < ATTEMPTS => {
                        tracing::debug!(region = %region.name, error = %e, attempt, "retrying");
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.write_indexes(region, filter).await?;
        Ok(shipped)
    }

    /// Ships to every region at once; returns each region's outcome.
    pub async fn ship_all(&self, filter: Option<ClusterId>) -> Vec<(String, Result<usize>)> {
        let futs = self
            .regions
            .regions
            .iter()
            .map(|r| async move { (r.name.clone(), self.ship_region(r, filter).await) });
        let mut results = futures::future::join_all(futs).await;
        // A region that finished first wrote its indexes before the others made its layers
        // durable in min_copies regions: now they are, so its indexes can name them.
        for (r, (name, res)) in self.regions.regions.iter().zip(results.iter_mut()) {
            debug_assert_eq!(&r.name, name);
            if res.is_ok() {
                if let Err(e) = self.write_indexes(r, filter).await {
                    *res = Err(e);
                }
            }
        }
        results
    }

    /// Timelines of an export's scratch branches: never shipped or indexed.
    async fn scratch_timelines(&self, c: &ClusterRow) -> Result<HashSet<cairn_engine::TimelineId>> {
        Ok(self
            .engine
            .catalog
            .branches(c.id)
            .await?
            .into_iter()
            .filter(|b| b.name.starts_with(cairn_engine::branch::SCRATCH_PREFIX))
            .map(|b| b.timeline_id)
            .collect())
    }

    /// (object -> regions holding it) from the catalog.
    pub async fn copies(&self) -> Result<HashMap<String, HashSet<String>>> {
        let mut m: HashMap<String, HashSet<String>> = HashMap::new();
        for (l, r, _) in self.state().shipments().await? {
            m.entry(l).or_default().insert(r);
        }
        Ok(m)
    }

    /// Layers of `tl` an index in `region` may name now.
    fn eligible<'a>(
        &self,
        layers: &'a [LayerRow],
        refs: &HashMap<String, Vec<String>>,
        copies: &HashMap<String, HashSet<String>>,
        region: &str,
    ) -> Vec<&'a LayerRow> {
        let durable = |id: &str| {
            copies
                .get(id)
                .is_some_and(|rs| rs.contains(region) && rs.len() as u32 >= self.regions.min_copies)
        };
        layers
            .iter()
            .filter(|l| {
                let id = l.id.to_string();
                durable(&id) && refs.get(&id).into_iter().flatten().all(|r| durable(r))
            })
            .collect()
    }

    /// Fills in what format-2 indexes bind (data key commitment, WAL tail) for key rows
    /// written before migration 4.
    async fn fill_bindings(&self) -> Result<()> {
        let st = self.state();
        let missing: Vec<ObjectKeyRow> = st
            .object_keys()
            .await?
            .into_iter()
            .filter(|k| k.dek_commitment.is_none() && k.key_object != b"shredded")
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut layers: HashMap<String, LayerRow> = HashMap::new();
        for c in self.engine.catalog.clusters().await? {
            for l in self.engine.catalog.layers(c.id).await? {
                layers.insert(l.id.to_string(), l);
            }
        }
        for k in missing {
            let what = format!("data key of {}", k.object);
            let ko = KeyObject::decode(&k.key_object, &what)?;
            let dek = self.unwrap_key(&ko, &what)?;
            let commitment = dek_commitment(&ko.object_id, &ko.key_id, &dek);
            let mut tail = None;
            if let Some(layer) = layers.get(&k.object).filter(|l| l.kind == LayerKind::Wal) {
                let path = self.engine.layer_path(layer);
                let (len, sha) = tokio::task::spawn_blocking(move || tail_digest(&path))
                    .await
                    .map_err(|e| {
                        Error::io("read a layer", std::io::Error::other(e.to_string()))
                    })??;
                tail = Some((len, hex::encode(sha)));
            }
            st.set_bindings(&k.object, &commitment, tail.as_ref())
                .await?;
        }
        Ok(())
    }

    /// Writes (or rewrites) the index of every timeline whose durable layer set changed, then
    /// the region's state object when any index changed.
    pub async fn write_indexes(&self, region: &Region, filter: Option<ClusterId>) -> Result<usize> {
        self.require_unfenced("write indexes to the regions")?;
        self.fill_bindings().await?;
        let copies = self.copies().await?;
        let st = self.state();
        let keys = st.object_keys_by_name().await?;
        let keyring = self.keyring_fingerprint();
        let mut written = 0;
        for c in self.engine.catalog.clusters().await? {
            if filter.is_some_and(|f| f != c.id) {
                continue;
            }
            let layers = self.engine.catalog.layers(c.id).await?;
            let refs = self.layer_refs(&c).await?;
            let branches = self.engine.catalog.branches(c.id).await?;
            let secrets = self.secrets_ref(&c, &region.name, &keys).await?;
            let scratch = self.scratch_timelines(&c).await?;
            for tl in self.engine.catalog.timelines(c.id).await? {
                if scratch.contains(&tl.id) {
                    continue;
                }
                let own: Vec<LayerRow> = layers
                    .iter()
                    .filter(|l| l.timeline_id == tl.id)
                    .cloned()
                    .collect();
                let chosen = self.eligible(&own, &refs, &copies, &region.name);
                let branch = branches.iter().find(|b| b.timeline_id == tl.id);
                let idx = self.build_index(
                    &c,
                    &tl,
                    branch,
                    &chosen,
                    &refs,
                    &keys,
                    secrets.clone(),
                    &keyring,
                )?;
                let digest = index_digest(&idx);
                let prev = st.index_write(&tl.id.to_string(), &region.name).await?;
                if prev
                    .as_ref()
                    .is_some_and(|p| p.digest == digest && p.generation == self.generation)
                {
                    continue;
                }
                let sequence = match &prev {
                    Some(p) if p.generation == self.generation => p.sequence + 1,
                    _ => 1,
                };
                let idx = TimelineIndex { sequence, ..idx };
                let bytes = idx.encode_signed(&self.signer);
                region.put_verified(&idx.path, Bytes::from(bytes)).await?;
                st.record_index_write(
                    &tl.id.to_string(),
                    &c.id.to_string(),
                    &region.name,
                    &IndexWrite {
                        generation: self.generation,
                        sequence,
                        layers: idx.layers.len() as u64,
                        digest,
                        written_at_us: idx.written_at_us,
                    },
                )
                .await?;
                written += 1;
            }
        }
        self.write_state(region).await?;
        Ok(written)
    }

    /// Rewrites the region's signed state object when its content changed: the keyring and
    /// the newest index of every timeline written there (high-water marks for readers).
    async fn write_state(&self, region: &Region) -> Result<()> {
        let st = self.state();
        let mut timelines = BTreeMap::new();
        for (tl, cluster, w) in st.index_writes_in(&region.name).await? {
            if w.generation == self.generation {
                timelines.insert(
                    tl,
                    TimelineMark {
                        cluster,
                        generation: w.generation,
                        sequence: w.sequence,
                    },
                );
            }
        }
        let keyring = self.recipients();
        let fingerprint = keyring_fingerprint(&keyring);
        let digest = hex::encode(Sha256::digest(
            serde_json::json!({"keyring": fingerprint, "timelines": timelines})
                .to_string()
                .as_bytes(),
        ));
        let prev = st.region_state(&region.name).await?;
        if prev
            .as_ref()
            .is_some_and(|(g, _, d)| *g == self.generation && *d == digest)
        {
            return Ok(());
        }
        let sequence = match prev {
            Some((g, s, _)) if g == self.generation => s + 1,
            _ => 1,
        };
        let state = RegionState {
            format: 1,
            path: state_key(self.generation),
            region: region.name.clone(),
            generation: self.generation,
            sequence,
            written_at_us: now_us(),
            keyring,
            keyring_fingerprint: fingerprint,
            timelines,
        };
        region
            .put_verified(&state.path, Bytes::from(state.encode_signed(&self.signer)))
            .await?;
        st.record_region_state(&region.name, self.generation, sequence, &digest)
            .await
    }

    /// What an index of cluster `c` in `region` says of its secrets object.
    async fn secrets_ref(
        &self,
        c: &ClusterRow,
        region: &str,
        keys: &HashMap<String, ObjectKeyRow>,
    ) -> Result<Option<SealedRef>> {
        let name = keys::secrets_object(&c.id.to_string());
        let Some(k) = keys.get(&name) else {
            return Ok(None);
        };
        if !self.state().shipped_to(&name, region).await? {
            return Ok(None);
        }
        let (Some(sha), Some(commitment)) = (&k.object_sha256, &k.dek_commitment) else {
            return Ok(None);
        };
        let ko = KeyObject::decode(&k.key_object, &format!("data key of {name}"))?;
        Ok(Some(SealedRef {
            object_id: hex::encode(ko.object_id),
            object_size: k.object_size,
            object_sha256: sha.clone(),
            dek_commitment: commitment.clone(),
        }))
    }

    /// Which layers each image layer references (from the catalog).
    async fn layer_refs(&self, c: &ClusterRow) -> Result<HashMap<String, Vec<String>>> {
        let rows = sqlx::query(
            "SELECT r.layer_id, r.ref_layer_id FROM layer_refs r JOIN layers l ON l.id = r.layer_id
              WHERE l.cluster_id = $1",
        )
        .bind(c.id.to_string())
        .fetch_all(self.engine.catalog.pool())
        .await
        .map_err(|e| Error::catalog("read layer references", e))?;
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for r in rows {
            use sqlx::Row;
            let l: String = r
                .try_get(0)
                .map_err(|e| Error::catalog("read layer references", e))?;
            let t: String = r
                .try_get(1)
                .map_err(|e| Error::catalog("read layer references", e))?;
            m.entry(l).or_default().push(t);
        }
        Ok(m)
    }

    #[allow(clippy::too_many_arguments)]
    fn build_index(
        &self,
        c: &ClusterRow,
        tl: &TimelineRow,
        branch: Option<&cairn_engine::catalog::BranchRow>,
        layers: &[&LayerRow],
        refs: &HashMap<String, Vec<String>>,
        keys: &HashMap<String, ObjectKeyRow>,
        secrets: Option<SealedRef>,
        keyring_fingerprint: &str,
    ) -> Result<TimelineIndex> {
        let mut ls: Vec<IndexedLayer> = Vec::with_capacity(layers.len());
        for l in layers {
            let id = l.id.to_string();
            let k = keys.get(&id).ok_or_else(|| {
                Error::tampered(
                    "catalog",
                    format!("layer {id} was shipped without a data key"),
                )
            })?;
            let (Some(sha), Some(commitment)) = (&k.object_sha256, &k.dek_commitment) else {
                return Err(Error::tampered(
                    "catalog",
                    format!("layer {id} was shipped without its hash or key commitment"),
                ));
            };
            let tail = match (l.kind, &k.tail) {
                (LayerKind::Wal, Some((len, sha))) => Some(WalTail {
                    len: *len,
                    sha256: sha.clone(),
                }),
                (LayerKind::Wal, None) => {
                    return Err(Error::tampered(
                        "catalog",
                        format!("WAL layer {id} has no recorded tail digest"),
                    ))
                }
                (LayerKind::Image, _) => None,
            };
            ls.push(IndexedLayer {
                kind: l.kind.as_str().into(),
                start: l.start.to_string(),
                end: l.end.to_string(),
                file_size: l.file_size,
                logical_size: l.logical_size,
                stored_bytes: l.stored_bytes,
                created_at_us: l.created_at_us,
                object_size: k.object_size,
                object_sha256: sha.clone(),
                key_id: k.key_id.clone(),
                dek_commitment: commitment.clone(),
                tail,
                refs: refs.get(&id).cloned().unwrap_or_default(),
                id,
            });
        }
        ls.sort_by(|a, b| (&a.kind, &a.start, &a.id).cmp(&(&b.kind, &b.start, &b.id)));
        let head = layers
            .iter()
            .filter(|l| l.kind == LayerKind::Wal)
            .map(|l| l.end)
            .max()
            .unwrap_or(tl.ancestor.map_or(tl.head, |a| a.1));
        let cid = c.id.to_string();
        let tid = tl.id.to_string();
        Ok(TimelineIndex {
            format: 2,
            path: index_key(&cid, &tid, self.generation),
            generation: self.generation,
            sequence: 0,
            written_at_us: now_us(),
            cluster: ClusterInfo {
                id: cid,
                name: c.name.clone(),
                kind: c.kind.as_str().into(),
                pg_major: c.pg_major,
                system_id: c.system_id.to_string(),
                segment_size: c.segment_size,
                tli: c.tli,
                created_at_us: c.created_at_us,
                source: c.source.clone(),
                slot: c.slot.clone(),
                secrets,
            },
            timeline: TimelineInfo {
                id: tid,
                ancestor: tl.ancestor.map(|(t, l)| (t.to_string(), l.to_string())),
                head: head.to_string(),
                ancestor_prev: tl.ancestor_prev.map(|l| l.to_string()),
                created_at_us: tl.created_at_us,
                branch: branch.map(|b| BranchName {
                    name: b.name.clone(),
                    protected: b.protected,
                }),
            },
            layers: ls,
            policy: PolicySnapshot {
                min_copies: self.regions.min_copies,
                regions: self.regions.names(),
            },
            keyring_fingerprint: keyring_fingerprint.to_string(),
        })
    }
}

/// What distinguishes one index from another (everything but sequence and time).
fn index_digest(idx: &TimelineIndex) -> String {
    let v = serde_json::json!({
        "format": idx.format, "cluster": idx.cluster, "timeline": idx.timeline,
        "layers": idx.layers, "policy": idx.policy, "keyring": idx.keyring_fingerprint
    });
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// Reads a layer file and yields its sealed form part by part, hashing the plaintext on the
/// way (so that a file damaged on disk is never shipped as if it were its id).
pub struct SealedReader {
    file: File,
    sealer: Sealer,
    header_sent: bool,
    chunk_size: usize,
    remaining: u64,
    finished: bool,
    plain: Sha256,
}

impl SealedReader {
    pub fn open(path: &std::path::Path, header: Header, dek: [u8; 32]) -> Result<SealedReader> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let remaining = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        Ok(SealedReader {
            file,
            sealer: Sealer::new(&dek, &header),
            header_sent: false,
            chunk_size: header.chunk_size as usize,
            remaining,
            finished: false,
            plain: Sha256::new(),
        })
    }

    /// The SHA-256 of the plaintext, once every part was read.
    pub fn plain_digest(&self) -> Option<[u8; 32]> {
        self.finished.then(|| self.plain.clone().finalize().into())
    }

    /// The next part of about `max` bytes (whole chunks), or `None` at the end.
    pub fn next_part(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        if self.finished {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(max + self.chunk_size + 64);
        if !self.header_sent {
            out.extend_from_slice(self.sealer.header());
            self.header_sent = true;
        }
        while out.len() < max && !self.finished {
            let n = (self.remaining as usize).min(self.chunk_size);
            let mut chunk = vec![0u8; n];
            self.file
                .read_exact(&mut chunk)
                .map_err(|e| Error::io("read a layer file", e))?;
            self.remaining -= n as u64;
            let last = self.remaining == 0;
            self.plain.update(&chunk);
            self.sealer.seal(&mut chunk, last);
            out.extend_from_slice(&chunk);
            self.finished = last;
        }
        Ok(Some(out))
    }
}
