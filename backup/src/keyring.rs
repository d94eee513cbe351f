//! Keyring changes: adding and removing recipients, rotating the appliance identity.
//!
//! Every change re-wraps each data key for the new recipient set and rewrites the key objects
//! in every region that holds the object. Payload objects are never touched. A region that
//! cannot be reached forgets the shipment of the affected objects, so the shipper puts their
//! (new) key objects there when it is back — finding the payload already present, it does not
//! upload it again.

use bytes::Bytes;

use crate::crypto::keyobj::KeyObject;
use crate::error::{Error, Result};
use crate::keys::{parse_recipient, KeyFiles, RecipientEntry};
use crate::region::keys;
use crate::ship::Protection;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RewrapReport {
    pub keys: usize,
    pub key_objects_written: usize,
    /// Regions that could not be updated now (they catch up through the shipper).
    pub deferred: Vec<String>,
}

impl Protection {
    /// Re-wraps every data key for the current keyring and updates the regions.
    pub async fn rewrap_all(&self) -> Result<RewrapReport> {
        let st = self.state();
        let recipients = st.recipients().await?;
        let shipments = st.shipments().await?;
        let mut report = RewrapReport::default();
        let identities = self.identities();
        for k in st.object_keys().await? {
            let what = format!("data key of {}", k.object);
            let old = KeyObject::decode(&k.key_object, &what)?;
            let dek = old.unwrap(&identities, &what)?;
            let fresh = KeyObject::wrap(&dek, old.object_id, old.key_id, &recipients)?.encode();
            st.set_key_object(&k.object, &fresh).await?;
            report.keys += 1;
            for (obj, region, _) in shipments.iter().filter(|(o, _, _)| *o == k.object) {
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
        }
        Ok(report)
    }

    /// Adds an escrow recipient and re-wraps every data key for it.
    pub async fn add_recipient(&self, recipient: &str, label: &str) -> Result<RewrapReport> {
        parse_recipient(recipient)?;
        let st = self.state();
        if st
            .recipients()
            .await?
            .iter()
            .any(|r| r.recipient == recipient.trim())
        {
            return Err(Error::Refused(format!(
                "{} is already in the keyring",
                recipient.trim()
            )));
        }
        st.add_recipient(&RecipientEntry {
            recipient: recipient.trim().to_string(),
            role: "escrow".into(),
            label: label.to_string(),
        })
        .await?;
        self.rewrap_all().await
    }

    /// Removes an escrow recipient and re-wraps every data key without it.
    pub async fn remove_recipient(&self, recipient: &str) -> Result<RewrapReport> {
        let st = self.state();
        let all = st.recipients().await?;
        let Some(entry) = all
            .iter()
            .find(|r| r.recipient == recipient.trim() || r.id() == recipient.trim())
        else {
            return Err(Error::Refused(format!(
                "'{}' is not in the keyring; it holds: {}",
                recipient.trim(),
                all.iter()
                    .map(|r| r.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if entry.role == "appliance" {
            return Err(Error::Refused(
                "the appliance's own key cannot be removed; use `cairn key rotate` to replace it"
                    .into(),
            ));
        }
        st.remove_recipient(&entry.recipient).await?;
        self.rewrap_all().await
    }

    /// Replaces the appliance identity and re-wraps every data key for the new keyring.
    /// Returns (old key id, new key id, report).
    pub async fn rotate(&mut self) -> Result<(String, String, RewrapReport)> {
        let (old, new) = self.key_files.rotate()?;
        let st = self.state();
        for r in st.recipients().await? {
            if r.role == "appliance" {
                st.remove_recipient(&r.recipient).await?;
            }
        }
        st.add_recipient(&RecipientEntry {
            recipient: new.recipient.clone(),
            role: "appliance".into(),
            label: format!("appliance identity {}", new.id()),
        })
        .await?;
        self.reload_identities();
        let report = self.rewrap_all().await?;
        Ok((old.id(), new.id(), report))
    }

    fn reload_identities(&mut self) {
        self.set_identities(KeyFiles::new(&self.engine.home.root).all_identities());
    }
}
