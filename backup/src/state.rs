//! The protection layer's rows in the catalog (tables of migrations 2 and 4): data keys (and
//! what indexes bind of them), shipments, index and region state writes, the appliance's
//! generation, the deletion queue and scheduled shreds. All statements are parameterised.
//!
//! The catalog decides nothing about trust: the keyring and the trusted signers live in the
//! signed trust file ([`crate::trust`]); the `key_recipients` table and the `trusted_signers`
//! column are read once, to create that file on an appliance that predates it.

use sqlx::any::AnyRow;
use sqlx::Row;

use cairn_engine::catalog::{now_us, Catalog};

use crate::error::{Error, Result};
use crate::keys::RecipientEntry;

fn get<T>(row: &AnyRow, col: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col)
        .map_err(|e| Error::catalog(&format!("read column {col}"), e))
}

/// The data key of one object, wrapped (a key object), and what sealing it produced.
#[derive(Debug, Clone)]
pub struct ObjectKeyRow {
    pub object: String,
    pub cluster_id: String,
    pub key_id: String,
    pub key_object: Vec<u8>,
    pub object_sha256: Option<String>,
    pub object_size: u64,
    /// What a signed index binds of the data key ([`crate::crypto::dek_commitment`]).
    pub dek_commitment: Option<String>,
    /// WAL layers: (length, SHA-256 hex) of the plaintext tail (metadata and trailer).
    pub tail: Option<(u64, String)>,
}

/// One object held by one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipment {
    pub object: String,
    pub region: String,
    pub sha256: String,
    pub shipped_at_us: i64,
}

fn key_row(r: &AnyRow) -> Result<ObjectKeyRow> {
    let hexed: String = get(r, "key_object")?;
    let tail_len: Option<i64> = get(r, "tail_len")?;
    let tail_sha: Option<String> = get(r, "tail_sha256")?;
    Ok(ObjectKeyRow {
        object: get(r, "layer_id")?,
        cluster_id: get(r, "cluster_id")?,
        key_id: get(r, "key_id")?,
        key_object: hex::decode(hexed)
            .map_err(|_| Error::tampered("catalog", "a key object is not hex"))?,
        object_sha256: get(r, "object_sha256")?,
        object_size: get::<i64>(r, "object_size")? as u64,
        dek_commitment: get(r, "dek_commitment")?,
        tail: tail_len.zip(tail_sha).map(|(l, s)| (l as u64, s)),
    })
}

#[derive(Debug, Clone)]
pub struct IndexWrite {
    pub generation: u64,
    pub sequence: u64,
    pub layers: u64,
    pub digest: String,
    pub written_at_us: i64,
}

#[derive(Debug, Clone)]
pub struct Deletion {
    pub region: String,
    pub object_key: String,
    pub reason: String,
    pub not_before_us: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Shred {
    pub cluster_id: String,
    pub cluster_name: String,
    pub requested_at_us: i64,
    pub due_at_us: i64,
}

/// Typed access to the protection tables.
pub struct State<'a> {
    pub cat: &'a Catalog,
}

macro_rules! exec {
    ($self:ident, $ctx:expr, $sql:expr $(, $b:expr)*) => {
        sqlx::query($sql)$(.bind($b))*
            .execute($self.cat.pool())
            .await
            .map_err(|e| Error::catalog($ctx, e))
    };
}

impl State<'_> {
    // ---- appliance ----

    /// (generation, trusted signer public keys); created on first use with `own_signer`.
    pub async fn appliance(&self, own_signer: &[u8; 32]) -> Result<(u64, Vec<[u8; 32]>)> {
        let row = sqlx::query("SELECT * FROM appliance WHERE id = 'self'")
            .fetch_optional(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read appliance", e))?;
        let (generation, signers) = match row {
            Some(r) => (
                get::<i64>(&r, "generation")? as u64,
                get::<String>(&r, "trusted_signers")?,
            ),
            None => {
                let s = hex::encode(own_signer);
                exec!(
                    self,
                    "create appliance",
                    "INSERT INTO appliance (id, generation, trusted_signers, created_at)
                     VALUES ('self', 1, $1, $2)",
                    s.clone(),
                    now_us()
                )?;
                (1, s)
            }
        };
        let mut out: Vec<[u8; 32]> = signers
            .split(',')
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect();
        if !out.contains(own_signer) {
            out.push(*own_signer);
        }
        Ok((generation, out))
    }

    pub async fn set_generation(&self, generation: u64) -> Result<()> {
        exec!(
            self,
            "update appliance",
            "UPDATE appliance SET generation = $1 WHERE id = 'self'",
            generation as i64
        )?;
        Ok(())
    }

    // ---- keyring (before the trust file) ----

    /// The keyring rows of an appliance that predates the trust file (read once, to create
    /// it; never consulted afterwards).
    pub async fn legacy_recipients(&self) -> Result<Vec<RecipientEntry>> {
        let rows = sqlx::query("SELECT * FROM key_recipients ORDER BY added_at, recipient")
            .fetch_all(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read the keyring", e))?;
        rows.iter()
            .map(|r| {
                Ok(RecipientEntry {
                    recipient: get(r, "recipient")?,
                    role: get(r, "role")?,
                    label: get(r, "label")?,
                })
            })
            .collect()
    }

    // ---- object keys ----

    pub async fn object_key(&self, object: &str) -> Result<Option<ObjectKeyRow>> {
        let row = sqlx::query("SELECT * FROM layer_keys WHERE layer_id = $1")
            .bind(object)
            .fetch_optional(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read a data key", e))?;
        row.as_ref().map(key_row).transpose()
    }

    pub async fn object_keys(&self) -> Result<Vec<ObjectKeyRow>> {
        let rows = sqlx::query("SELECT * FROM layer_keys ORDER BY created_at")
            .fetch_all(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read data keys", e))?;
        rows.iter().map(key_row).collect()
    }

    /// Every data key, by the name of its object.
    pub async fn object_keys_by_name(
        &self,
    ) -> Result<std::collections::HashMap<String, ObjectKeyRow>> {
        Ok(self
            .object_keys()
            .await?
            .into_iter()
            .map(|k| (k.object.clone(), k))
            .collect())
    }

    pub async fn insert_object_key(&self, k: &ObjectKeyRow) -> Result<()> {
        exec!(
            self,
            "record a data key",
            "INSERT INTO layer_keys (layer_id, cluster_id, key_id, key_object, object_sha256,
                                     object_size, created_at, dek_commitment, tail_len,
                                     tail_sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            k.object.clone(),
            k.cluster_id.clone(),
            k.key_id.clone(),
            hex::encode(&k.key_object),
            k.object_sha256.clone(),
            k.object_size as i64,
            now_us(),
            k.dek_commitment.clone(),
            k.tail.as_ref().map(|t| t.0 as i64),
            k.tail.as_ref().map(|t| t.1.clone())
        )?;
        Ok(())
    }

    /// Records what indexes bind of an object's key (rows written before migration 4).
    pub async fn set_bindings(
        &self,
        object: &str,
        dek_commitment: &str,
        tail: Option<&(u64, String)>,
    ) -> Result<()> {
        exec!(
            self,
            "record a data key commitment",
            "UPDATE layer_keys SET dek_commitment = $1, tail_len = $2, tail_sha256 = $3
              WHERE layer_id = $4",
            dek_commitment.to_string(),
            tail.map(|t| t.0 as i64),
            tail.map(|t| t.1.clone()),
            object.to_string()
        )?;
        Ok(())
    }

    pub async fn set_object_sha(&self, object: &str, sha: &str) -> Result<()> {
        exec!(
            self,
            "record an object hash",
            "UPDATE layer_keys SET object_sha256 = $1 WHERE layer_id = $2 AND object_sha256 IS NULL",
            sha.to_string(),
            object.to_string()
        )?;
        Ok(())
    }

    pub async fn set_key_object(&self, object: &str, key_object: &[u8]) -> Result<()> {
        exec!(
            self,
            "replace a key object",
            "UPDATE layer_keys SET key_object = $1 WHERE layer_id = $2",
            hex::encode(key_object),
            object.to_string()
        )?;
        Ok(())
    }

    pub async fn delete_object_key(&self, object: &str) -> Result<()> {
        exec!(
            self,
            "forget a data key",
            "DELETE FROM layer_keys WHERE layer_id = $1",
            object.to_string()
        )?;
        exec!(
            self,
            "forget shipments",
            "DELETE FROM shipments WHERE layer_id = $1",
            object.to_string()
        )?;
        Ok(())
    }

    // ---- shipments ----

    /// Every (object, region) that is durable.
    pub async fn shipments(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT layer_id, region, object_sha256 FROM shipments")
            .fetch_all(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read shipments", e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "layer_id")?,
                    get(r, "region")?,
                    get(r, "object_sha256")?,
                ))
            })
            .collect()
    }

    /// Every durable (object, region), with its ciphertext hash and when it was shipped (its
    /// upload was read back then: the first proof that the region holds it).
    pub async fn shipments_with_times(&self) -> Result<Vec<Shipment>> {
        let rows = sqlx::query("SELECT layer_id, region, object_sha256, shipped_at FROM shipments")
            .fetch_all(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read shipments", e))?;
        rows.iter()
            .map(|r| {
                Ok(Shipment {
                    object: get(r, "layer_id")?,
                    region: get(r, "region")?,
                    sha256: get(r, "object_sha256")?,
                    shipped_at_us: get(r, "shipped_at")?,
                })
            })
            .collect()
    }

    pub async fn record_shipment(&self, object: &str, region: &str, sha: &str) -> Result<()> {
        exec!(
            self,
            "record a shipment",
            "INSERT INTO shipments (layer_id, region, object_sha256, shipped_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (layer_id, region) DO NOTHING",
            object.to_string(),
            region.to_string(),
            sha.to_string(),
            now_us()
        )?;
        Ok(())
    }

    /// Whether `object` is recorded as durable in `region`.
    pub async fn shipped_to(&self, object: &str, region: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM shipments WHERE layer_id = $1 AND region = $2")
            .bind(object)
            .bind(region)
            .fetch_optional(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read shipments", e))?;
        Ok(row.is_some())
    }

    pub async fn forget_shipment(&self, object: &str, region: &str) -> Result<()> {
        exec!(
            self,
            "forget a shipment",
            "DELETE FROM shipments WHERE layer_id = $1 AND region = $2",
            object.to_string(),
            region.to_string()
        )?;
        Ok(())
    }

    // ---- indexes ----

    pub async fn index_write(&self, timeline: &str, region: &str) -> Result<Option<IndexWrite>> {
        let row = sqlx::query("SELECT * FROM index_writes WHERE timeline_id = $1 AND region = $2")
            .bind(timeline)
            .bind(region)
            .fetch_optional(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read index writes", e))?;
        row.map(|r| {
            Ok(IndexWrite {
                generation: get::<i64>(&r, "generation")? as u64,
                sequence: get::<i64>(&r, "sequence")? as u64,
                layers: get::<i64>(&r, "layers")? as u64,
                digest: get(&r, "digest")?,
                written_at_us: get(&r, "written_at")?,
            })
        })
        .transpose()
    }

    /// Every recorded index write: (timeline, cluster, region).
    pub async fn index_writes(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT timeline_id, cluster_id, region FROM index_writes")
            .fetch_all(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read index writes", e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "timeline_id")?,
                    get(r, "cluster_id")?,
                    get(r, "region")?,
                ))
            })
            .collect()
    }

    /// Records an index write (one statement: a crash leaves the old row or the new one).
    pub async fn record_index_write(
        &self,
        timeline: &str,
        cluster: &str,
        region: &str,
        w: &IndexWrite,
    ) -> Result<()> {
        exec!(
            self,
            "record an index write",
            "INSERT INTO index_writes (timeline_id, cluster_id, region, generation, sequence,
                                       layers, digest, written_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (timeline_id, region) DO UPDATE SET
                 cluster_id = excluded.cluster_id, generation = excluded.generation,
                 sequence = excluded.sequence, layers = excluded.layers,
                 digest = excluded.digest, written_at = excluded.written_at",
            timeline.to_string(),
            cluster.to_string(),
            region.to_string(),
            w.generation as i64,
            w.sequence as i64,
            w.layers as i64,
            w.digest.clone(),
            w.written_at_us
        )?;
        Ok(())
    }

    /// Makes the next round rewrite a region's indexes (with a higher sequence: sequences
    /// never go back, or readers would take the rewritten index for a replayed one).
    pub async fn invalidate_index_writes(&self, region: &str) -> Result<()> {
        exec!(
            self,
            "invalidate index writes",
            "UPDATE index_writes SET digest = '' WHERE region = $1",
            region.to_string()
        )?;
        exec!(
            self,
            "invalidate the region state",
            "UPDATE region_states SET digest = '' WHERE region = $1",
            region.to_string()
        )?;
        Ok(())
    }

    /// Every index write recorded for `region`: (timeline, cluster, write).
    pub async fn index_writes_in(&self, region: &str) -> Result<Vec<(String, String, IndexWrite)>> {
        let rows = sqlx::query("SELECT * FROM index_writes WHERE region = $1 ORDER BY timeline_id")
            .bind(region)
            .fetch_all(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read index writes", e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "timeline_id")?,
                    get(r, "cluster_id")?,
                    IndexWrite {
                        generation: get::<i64>(r, "generation")? as u64,
                        sequence: get::<i64>(r, "sequence")? as u64,
                        layers: get::<i64>(r, "layers")? as u64,
                        digest: get(r, "digest")?,
                        written_at_us: get(r, "written_at")?,
                    },
                ))
            })
            .collect()
    }

    // ---- region states ----

    /// (generation, sequence, digest) of the last state object written to `region`.
    pub async fn region_state(&self, region: &str) -> Result<Option<(u64, u64, String)>> {
        let row = sqlx::query("SELECT * FROM region_states WHERE region = $1")
            .bind(region)
            .fetch_optional(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read region states", e))?;
        row.map(|r| {
            Ok((
                get::<i64>(&r, "generation")? as u64,
                get::<i64>(&r, "sequence")? as u64,
                get(&r, "digest")?,
            ))
        })
        .transpose()
    }

    pub async fn record_region_state(
        &self,
        region: &str,
        generation: u64,
        sequence: u64,
        digest: &str,
    ) -> Result<()> {
        exec!(
            self,
            "record a region state",
            "INSERT INTO region_states (region, generation, sequence, digest, written_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (region) DO UPDATE SET generation = excluded.generation,
                 sequence = excluded.sequence, digest = excluded.digest,
                 written_at = excluded.written_at",
            region.to_string(),
            generation as i64,
            sequence as i64,
            digest.to_string(),
            now_us()
        )?;
        Ok(())
    }

    pub async fn forget_index_write(&self, timeline: &str, region: &str) -> Result<()> {
        exec!(
            self,
            "forget an index write",
            "DELETE FROM index_writes WHERE timeline_id = $1 AND region = $2",
            timeline.to_string(),
            region.to_string()
        )?;
        Ok(())
    }

    // ---- deletion queue ----

    pub async fn queue_deletion(
        &self,
        region: &str,
        key: &str,
        reason: &str,
        delay_us: i64,
    ) -> Result<()> {
        exec!(
            self,
            "queue a deletion",
            "INSERT INTO deletions (region, object_key, reason, queued_at, not_before)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (region, object_key) DO NOTHING",
            region.to_string(),
            key.to_string(),
            reason.to_string(),
            now_us(),
            now_us().saturating_add(delay_us)
        )?;
        Ok(())
    }

    pub async fn deletions(&self) -> Result<Vec<Deletion>> {
        let rows = sqlx::query("SELECT * FROM deletions ORDER BY not_before")
            .fetch_all(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read the deletion queue", e))?;
        rows.iter()
            .map(|r| {
                Ok(Deletion {
                    region: get(r, "region")?,
                    object_key: get(r, "object_key")?,
                    reason: get(r, "reason")?,
                    not_before_us: get(r, "not_before")?,
                })
            })
            .collect()
    }

    pub async fn done_deletion(&self, region: &str, key: &str) -> Result<()> {
        exec!(
            self,
            "complete a deletion",
            "DELETE FROM deletions WHERE region = $1 AND object_key = $2",
            region.to_string(),
            key.to_string()
        )?;
        Ok(())
    }

    // ---- shreds ----

    pub async fn shreds(&self) -> Result<Vec<Shred>> {
        let rows = sqlx::query("SELECT * FROM shreds ORDER BY due_at")
            .fetch_all(self.cat.pool())
            .await
            .map_err(|e| Error::catalog("read scheduled shreds", e))?;
        rows.iter()
            .map(|r| {
                Ok(Shred {
                    cluster_id: get(r, "cluster_id")?,
                    cluster_name: get(r, "cluster_name")?,
                    requested_at_us: get(r, "requested_at")?,
                    due_at_us: get(r, "due_at")?,
                })
            })
            .collect()
    }

    pub async fn schedule_shred(&self, s: &Shred) -> Result<()> {
        exec!(
            self,
            "schedule a shred",
            "INSERT INTO shreds (cluster_id, cluster_name, requested_at, due_at) VALUES ($1, $2, $3, $4)",
            s.cluster_id.clone(),
            s.cluster_name.clone(),
            s.requested_at_us,
            s.due_at_us
        )?;
        Ok(())
    }

    pub async fn cancel_shred(&self, cluster_id: &str) -> Result<bool> {
        let r = exec!(
            self,
            "cancel a shred",
            "DELETE FROM shreds WHERE cluster_id = $1",
            cluster_id.to_string()
        )?;
        Ok(r.rows_affected() > 0)
    }
}
