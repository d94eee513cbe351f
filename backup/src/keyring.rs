//! Keyring changes: adding and removing recipients, rotating the appliance identity.
//!
//! Every change re-wraps each data key for the new recipient set and rewrites the key objects
//! in every region that holds the object. Payload objects are never touched. A region that
//! cannot be reached forgets the shipment of the affected objects, so the shipper puts their
//! (new) key objects there when it is back — finding the payload already present, it does not
//! upload it again.
//!
//! Invariants:
//! - A change holds the keyring lock from the trust file update to the last key object put:
//!   a running `cairn up` creates no data key and puts no key object meanwhile, and afterwards
//!   reloads the keyring (and, after a rotation, the identities) before its next one. So no
//!   key object wrapped for a removed recipient survives a change, and a rotation never
//!   leaves the daemon unable to open a key.
//! - Labels and roles are validated before anything changes; an invalid entry never reaches a
//!   key object.
//! - A fenced appliance re-wraps its catalog only; the regions belong to the appliance it was
//!   rebuilt from until it is promoted.

use bytes::Bytes;

use crate::crypto::keyobj::KeyObject;
use crate::error::{Error, Result};
use crate::keys::{parse_recipient, validate_label, RecipientEntry};
use crate::protection::Protection;
use crate::region::keys;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RewrapReport {
    pub keys: usize,
    pub key_objects_written: usize,
    /// Regions that could not be updated now (they catch up through the shipper).
    pub deferred: Vec<String>,
}

impl Protection {
    /// Re-wraps every data key for the current keyring and updates the regions. The caller
    /// holds the keyring lock.
    async fn rewrap_locked(&self) -> Result<RewrapReport> {
        let st = self.state();
        let recipients = self.recipients();
        let shipments = st.shipments().await?;
        let mut report = RewrapReport::default();
        let fenced = self.fenced();
        for k in st.object_keys().await? {
            if k.key_object == b"shredded" {
                continue;
            }
            let what = format!("data key of {}", k.object);
            let old = KeyObject::decode(&k.key_object, &what)?;
            let dek = self.unwrap_key(&old, &what)?;
            let fresh = KeyObject::wrap(&dek, old.object_id, old.key_id, &recipients)?.encode();
            st.set_key_object(&k.object, &fresh).await?;
            report.keys += 1;
            for (obj, region, _) in shipments.iter().filter(|(o, _, _)| *o == k.object) {
                if fenced {
                    if !report.deferred.contains(region) {
                        report.deferred.push(region.clone());
                    }
                    continue;
                }
                let r = self.regions.get(region)?;
                let key = keys::key_of(&k.cluster_id, obj);
                match r.put(&key, Bytes::from(fresh.clone())).await {
                    Ok(()) => report.key_objects_written += 1,
                    Err(e) => {
                        tracing::warn!(region, error = %e, "key object update deferred");
                        st.forget_shipment(obj, region).await?;
                        if !report.deferred.contains(region) {
                            report.deferred.push(region.clone());
                        }
                    }
                }
            }
            cairn_engine::failpoint::hit("rewrap-key");
        }
        Ok(report)
    }

    /// Re-wraps every data key for the current keyring and updates the regions.
    pub async fn rewrap_all(&self) -> Result<RewrapReport> {
        let _keyring = self.lock_keyring().await?;
        self.refresh()?;
        self.rewrap_locked().await
    }

    /// Adds an escrow recipient and re-wraps every data key for it.
    pub async fn add_recipient(&self, recipient: &str, label: &str) -> Result<RewrapReport> {
        parse_recipient(recipient)?;
        validate_label(label)?;
        let _keyring = self.lock_keyring().await?;
        self.change_trust(|t| {
            if t.recipients.iter().any(|r| r.recipient == recipient.trim()) {
                return Err(Error::Refused(format!(
                    "{} is already in the keyring",
                    recipient.trim()
                )));
            }
            t.recipients.push(RecipientEntry {
                recipient: recipient.trim().to_string(),
                role: "escrow".into(),
                label: label.to_string(),
            });
            Ok(())
        })?;
        self.rewrap_locked().await
    }

    /// Removes an escrow recipient and re-wraps every data key without it.
    pub async fn remove_recipient(&self, recipient: &str) -> Result<RewrapReport> {
        let _keyring = self.lock_keyring().await?;
        self.change_trust(|t| {
            let Some(pos) = t
                .recipients
                .iter()
                .position(|r| r.recipient == recipient.trim() || r.id() == recipient.trim())
            else {
                return Err(Error::Refused(format!(
                    "'{}' is not in the keyring; it holds: {}",
                    recipient.trim(),
                    t.recipients
                        .iter()
                        .map(|r| r.describe())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            if t.recipients[pos].role == "appliance" {
                return Err(Error::Refused(
                    "the appliance's own key cannot be removed; use `cairn key rotate` to \
                     replace it"
                        .into(),
                ));
            }
            t.recipients.remove(pos);
            Ok(())
        })?;
        self.rewrap_locked().await
    }

    /// Replaces the appliance identity and re-wraps every data key for the new keyring.
    /// Returns (old key id, new key id, report).
    pub async fn rotate(&self) -> Result<(String, String, RewrapReport)> {
        let _keyring = self.lock_keyring().await?;
        self.refresh()?;
        let (old, new) = self.key_files.rotate()?;
        self.change_trust(|t| {
            t.recipients.retain(|r| r.role != "appliance");
            t.recipients.push(RecipientEntry {
                recipient: new.recipient.clone(),
                role: "appliance".into(),
                label: format!("appliance identity {}", new.id()),
            });
            Ok(())
        })?;
        let report = self.rewrap_locked().await?;
        Ok((old.id(), new.id(), report))
    }
}
