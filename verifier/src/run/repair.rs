//! Repairing what a verification found: a region that could not serve an object intact (the
//! restore took a good copy from another region) is checked in full and repaired — damaged or
//! missing objects copied from a region holding a good copy, else written again from this
//! appliance; replayed or damaged indexes rewritten. The report records each repair.
//!
//! Invariants: only regions the restore found wanting are checked and repaired; a damaged
//! copy is replaced, never deleted first (`cairn_backup::check`); what cannot be repaired is
//! reported, not hidden.

use std::collections::BTreeSet;

use cairn_backup::Protection;
use cairn_restore::RestoreReport;

use crate::report::Repair;

/// Repairs the regions `r` found wanting; the repairs, and what could not be repaired.
pub async fn repair_found(p: &Protection, r: &RestoreReport) -> (Vec<Repair>, Vec<String>) {
    let regions: BTreeSet<&str> = r
        .substitutions
        .iter()
        .filter(|s| s.served_by.is_some())
        .map(|s| s.region.as_str())
        .collect();
    let (mut repairs, mut left) = (Vec::new(), Vec::new());
    for region in regions {
        let found = match p.check_regions(true, Some(region), None).await {
            Ok(c) => c,
            Err(e) => {
                left.push(format!(
                    "region {region} could not be checked for repair: {e}"
                ));
                continue;
            }
        };
        match p.repair_regions(&found).await {
            Ok(done) => {
                repairs.extend(done.repaired.into_iter().map(|x| Repair {
                    region: x.region,
                    object: x.object,
                    from: x.from,
                    reason: x.reason,
                }));
                left.extend(
                    done.unrepaired
                        .into_iter()
                        .map(|u| format!("not repaired: {u}")),
                );
            }
            Err(e) => left.push(format!("region {region} could not be repaired: {e}")),
        }
    }
    (repairs, left)
}
