//! The events (commits, aborts, restore points) of WAL layers held in memory, for point
//! resolution ([`crate::wal_index`]).
//!
//! Invariants:
//! - Registered events (a restore's staging engine registers the events of layers whose files
//!   are not local yet, checked against a signed index) are kept for the engine's lifetime;
//!   besides them only the last [`RECENT`] layers read from files are kept, so memory stays
//!   bounded by what the caller registers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::ids::LayerId;
use crate::wal::WalEvent;

/// How many decoded layers [`WalEvents`] keeps besides the registered ones.
const RECENT: usize = 4;

/// Events of WAL layers held in memory: those registered by whoever holds them before the
/// layer files are local (a restore's staging engine), and the few last read from files.
#[derive(Default)]
pub struct WalEvents {
    registered: Mutex<HashMap<LayerId, Arc<[WalEvent]>>>,
    recent: Mutex<VecDeque<(LayerId, Arc<[WalEvent]>)>>,
}

impl WalEvents {
    /// Makes `events` the events of `layer` for this engine's resolutions. The caller vouches
    /// for them (metadata checked against a signed index).
    pub fn register(&self, layer: LayerId, events: Vec<WalEvent>) {
        if let Ok(mut m) = self.registered.lock() {
            m.insert(layer, events.into());
        }
    }

    pub(crate) fn get(&self, layer: LayerId) -> Option<Arc<[WalEvent]>> {
        if let Some(e) = self.registered.lock().ok()?.get(&layer) {
            return Some(e.clone());
        }
        let recent = self.recent.lock().ok()?;
        recent
            .iter()
            .find(|(id, _)| *id == layer)
            .map(|(_, e)| e.clone())
    }

    pub(crate) fn remember(&self, layer: LayerId, events: Arc<[WalEvent]>) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.retain(|(id, _)| *id != layer);
            if recent.len() >= RECENT {
                recent.pop_front();
            }
            recent.push_back((layer, events));
        }
    }
}
