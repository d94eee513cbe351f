//! Crypto-shredding: destroying every copy of a cluster's key material the appliance can reach,
//! so that its backups can never be opened again, with any key.
//!
//! ```text
//! clusters/CLUSTER/shredded   signed blob: "CAIRNSHR" | version u16 = 1 | signer [32]
//!                             | signature [64] | JSON body (ShredRecord)
//! ```
//!
//! `cairn key shred CLUSTER --grace 7d` schedules a shred (cancellable until it is due; graces
//! are parsed with overflow checks and capped). When it is due:
//! 1. Under the keyring lock — so no shipper creates a data key or puts a key object meanwhile,
//!    and none does afterwards: both refuse a cluster whose shred is due — a signed record of
//!    the shred is written to every configured region, then every key object of the cluster
//!    (layers, secrets, exports) is deleted there. A region that cannot be reached keeps the
//!    shred pending; it is retried until every region is done.
//! 2. The catalog's wrapped keys of the cluster are overwritten, and the embedded catalog is
//!    scrubbed (`secure_delete`, a truncating WAL checkpoint and `VACUUM`), so no old page holds
//!    them; the cluster, its layers, computes and secrets are deleted locally.
//! 3. What remains in the regions (payloads, indexes, manifests) is unreadable; it is queued
//!    for deletion like any garbage. Readers that find the record refuse the cluster, naming
//!    the shred.
//!
//! Outside its reach, and documented as such (docs/SECURITY.md): export files handed out,
//! regions no longer configured, object versions a bucket keeps, backups of a PostgreSQL
//! catalog, and anyone who copied key objects while holding an identity of the keyring.

use serde::{Deserialize, Serialize};

use cairn_engine::catalog::{now_us, Backend};

use crate::error::{Error, Result};
use crate::keys::{open_signed_json, sign_blob, Signer};
use crate::protection::Protection;
use crate::state::Shred;

pub const MAGIC: &[u8; 8] = b"CAIRNSHR";
pub const VERSION: u16 = 1;
/// The largest shred record a reader fetches.
pub const MAX_RECORD_BYTES: u64 = 64 << 10;

/// Where a cluster's shred record lives.
pub fn record_key(cluster: &str) -> String {
    format!("clusters/{cluster}/shredded")
}

/// The signed record of a shred, left in every region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShredRecord {
    pub format: u32,
    pub path: String,
    pub cluster_id: String,
    pub cluster_name: String,
    pub requested_at_us: i64,
    pub shredded_at_us: i64,
}

impl ShredRecord {
    pub fn encode_signed(&self, signer: &Signer) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("shred record serialises");
        sign_blob(MAGIC, VERSION, signer, &body)
    }

    pub fn decode_verified(
        bytes: &[u8],
        name: &str,
        region: &str,
        signers: &[[u8; 32]],
    ) -> Result<ShredRecord> {
        let what = format!("region '{region}', {name}");
        let (r, _): (ShredRecord, _) =
            open_signed_json(MAGIC, VERSION, bytes, signers, &what, "shred record")?;
        if r.format != 1 || r.path != name || record_key(&r.cluster_id) != name {
            return Err(Error::tampered(&what, "not the shred record of this name"));
        }
        Ok(r)
    }

    /// How a reader refuses a shredded cluster.
    pub fn refusal(&self) -> Error {
        Error::Refused(format!(
            "cluster '{}' ({}) was crypto-shredded at {}: its data keys were destroyed in every \
             region, so none of its backups can be opened again",
            self.cluster_name,
            self.cluster_id,
            cairn_engine::engine::fmt_time(self.shredded_at_us)
        ))
    }
}

impl Protection {
    /// Schedules the crypto-shredding of a cluster after `grace_us`.
    pub async fn schedule_shred(&self, cluster: &str, grace_us: i64) -> Result<Shred> {
        let c = self.engine.resolve_cluster(Some(cluster)).await?;
        let st = self.state();
        if st
            .shreds()
            .await?
            .iter()
            .any(|s| s.cluster_id == c.id.to_string())
        {
            return Err(Error::Refused(format!(
                "cluster '{cluster}' is already scheduled for shredding; `cairn key shred \
                 {cluster} --cancel` cancels it"
            )));
        }
        let now = now_us();
        let s = Shred {
            cluster_id: c.id.to_string(),
            cluster_name: c.name.clone(),
            requested_at_us: now,
            due_at_us: now.checked_add(grace_us).ok_or_else(|| {
                Error::Refused(format!("a grace of {grace_us} µs is out of range"))
            })?,
        };
        st.schedule_shred(&s).await?;
        Ok(s)
    }

    pub async fn cancel_shred(&self, cluster: &str) -> Result<()> {
        let st = self.state();
        let found = st
            .shreds()
            .await?
            .into_iter()
            .find(|s| s.cluster_name == cluster || s.cluster_id == cluster);
        match found {
            Some(s) if s.due_at_us <= now_us() => Err(Error::Refused(format!(
                "the shred of cluster '{cluster}' is already due and under way; it cannot be \
                 cancelled any more"
            ))),
            Some(s) => {
                st.cancel_shred(&s.cluster_id).await?;
                Ok(())
            }
            None => Err(Error::Refused(format!(
                "no shred of cluster '{cluster}' is scheduled"
            ))),
        }
    }

    /// Whether a shred of `cluster_id` is due: from then on nothing of it is shipped.
    pub async fn shred_due(&self, cluster_id: &str) -> Result<bool> {
        Ok(self
            .state()
            .shreds()
            .await?
            .iter()
            .any(|s| s.cluster_id == cluster_id && s.due_at_us <= now_us()))
    }

    /// Carries out the shreds that are due; returns the clusters shredded.
    pub async fn run_due_shreds(&self) -> Result<Vec<String>> {
        self.require_unfenced("shred in the regions")?;
        let st = self.state();
        let mut done = Vec::new();
        for s in st.shreds().await? {
            if s.due_at_us > now_us() {
                continue;
            }
            if self.shred_one(&s).await? {
                done.push(s.cluster_name);
            }
        }
        Ok(done)
    }

    /// Shreds one cluster; `false` when a region could not be reached (retried later).
    async fn shred_one(&self, s: &Shred) -> Result<bool> {
        let st = self.state();
        let cid: cairn_engine::ClusterId = s
            .cluster_id
            .parse()
            .map_err(|e: String| Error::tampered("catalog", e))?;
        // 1. The record, then the key objects, in every region — under the keyring lock, so
        //    that no key object of the cluster is put behind the shred's back.
        let keyring = self.lock_keyring().await?;
        let record = ShredRecord {
            format: 1,
            path: record_key(&s.cluster_id),
            cluster_id: s.cluster_id.clone(),
            cluster_name: s.cluster_name.clone(),
            requested_at_us: s.requested_at_us,
            shredded_at_us: now_us(),
        };
        let blob = bytes::Bytes::from(record.encode_signed(self.signer()));
        let mut all_regions_done = true;
        for r in &self.regions.regions {
            let result = async {
                r.put_verified(&record.path, blob.clone()).await?;
                for (k, _) in r.list(&format!("clusters/{}/keys", s.cluster_id)).await? {
                    r.delete(&k).await?;
                }
                Ok::<(), Error>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(region = %r.name, error = %e, "shred deferred");
                all_regions_done = false;
            }
        }
        if !all_regions_done {
            return Ok(false);
        }
        // 2. The wrapped keys here, and every old page that held them.
        for k in st.object_keys().await? {
            if k.cluster_id == s.cluster_id {
                st.set_key_object(&k.object, b"shredded").await?;
            }
        }
        drop(keyring);
        self.scrub_catalog().await?;
        if self.engine.catalog.cluster(cid).await.is_ok() {
            for c in self.engine.catalog.computes().await? {
                if c.cluster_id == cid {
                    self.engine.force_stop_compute(cid, c.timeline_id).await?;
                }
            }
            self.engine.delete_cluster(&s.cluster_name).await?;
        }
        // 3. What remains in the regions is unreadable garbage: queue it.
        self.queue_garbage().await?;
        st.cancel_shred(&s.cluster_id).await?;
        Ok(true)
    }

    /// Leaves no old copy of overwritten rows in the embedded catalog's files: the WAL is
    /// checkpointed and truncated and the database rebuilt (with `secure_delete` on, freed
    /// pages are zeroed). A PostgreSQL catalog is vacuumed; its WAL and backups are out of
    /// reach (docs/SECURITY.md).
    async fn scrub_catalog(&self) -> Result<()> {
        let pool = self.engine.catalog.pool();
        let statements: &[&str] = match self.engine.catalog.backend() {
            Backend::Sqlite => &[
                "PRAGMA wal_checkpoint(TRUNCATE)",
                "VACUUM",
                "PRAGMA wal_checkpoint(TRUNCATE)",
            ],
            Backend::Postgres => &["VACUUM layer_keys"],
        };
        for sql in statements {
            sqlx::query(sql)
                .execute(pool)
                .await
                .map_err(|e| Error::catalog("scrub the catalog after a shred", e))?;
        }
        Ok(())
    }
}
