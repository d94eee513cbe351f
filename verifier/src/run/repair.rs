//! Repairing what a verification found: a region that could not serve an object intact (the
//! restore took a good copy from another region) is checked in full, and it and the objects
//! the coverage reads found damaged are repaired — damaged or missing objects copied from a
//! region holding a good copy, else written again from this appliance; replayed or damaged
//! indexes rewritten. The report records each repair.
//!
//! Invariants: only regions the restore found wanting are checked in full; a damaged copy is
//! replaced, never deleted first (`cairn_backup::check`); what cannot be repaired is reported,
//! not hidden.

use std::collections::BTreeSet;

use cairn_backup::check::{CheckReport, Problem};
use cairn_backup::Protection;
use cairn_restore::RestoreReport;

use crate::report::Repair;

/// Repairs the regions `r` found wanting, and the objects the coverage reads found damaged
/// (`read`); the repairs, and what could not be repaired.
pub async fn repair_found(
    p: &Protection,
    r: &RestoreReport,
    read: Vec<Problem>,
) -> (Vec<Repair>, Vec<String>) {
    let regions: BTreeSet<&str> = r
        .substitutions
        .iter()
        .filter(|s| s.served_by.is_some())
        .map(|s| s.region.as_str())
        .collect();
    let (mut repairs, mut left) = (Vec::new(), Vec::new());
    let mut work: Vec<(String, CheckReport)> = Vec::new();
    for region in &regions {
        match p.check_regions(true, Some(region), None).await {
            Ok(c) => work.push((region.to_string(), c)),
            Err(e) => left.push(format!(
                "region {region} could not be checked for repair: {e}"
            )),
        }
    }
    // What the coverage reads found in regions not checked in full above.
    let read: Vec<Problem> = read
        .into_iter()
        .filter(|p| !regions.contains(p.region.as_str()))
        .collect();
    if !read.is_empty() {
        work.push((
            "read back".to_string(),
            CheckReport {
                problems: read,
                ..CheckReport::default()
            },
        ));
    }
    for (what, found) in work {
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
            Err(e) => left.push(format!("{what}: could not be repaired: {e}")),
        }
    }
    (repairs, left)
}
