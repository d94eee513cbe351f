//! The chain of reports: each names the digest of the one before it, in sequence from 1.
//! [`verify_chain`] reads a stored chain (the catalog's, or a region's copy, where anyone who
//! can write the region may have edited it) and names the first broken link.
//!
//! Invariants:
//! - Pure: the stored reports, the trusted signers and the expected head come in as arguments.
//! - A stored report is named `report-<sequence, 10 digits>.json`; it must hold the report of
//!   that sequence. So an edited byte (seal), a report removed from the middle (a gap), two
//!   reports swapped (a name holding another sequence) and a report put back in another
//!   chain's place (`previous` mismatch) are each found at their position; reports removed
//!   from the end are found against the expected head, when the caller knows it.

use super::seal::{open, SealedReport};

/// Where a report of sequence `n` is stored, in a region or an export.
pub fn file_name(sequence: u64) -> String {
    format!("report-{sequence:010}.json")
}

/// The sequence a stored report's name gives, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let n = name.strip_prefix("report-")?.strip_suffix(".json")?;
    (n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// The first broken link of a chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokenLink {
    /// The stored report (its name) where the chain breaks.
    pub at: String,
    pub why: String,
}

/// What a chain check found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainStatus {
    /// Reports that passed, from the first, before any broken link.
    pub good: usize,
    /// The newest good report: (sequence, digest).
    pub head: Option<(u64, String)>,
    pub broken: Option<BrokenLink>,
}

/// Checks `stored` (name, bytes), in any order, as one chain signed by `trusted`. With
/// `expected_head` (the sequence and digest the appliance recorded last), the chain must reach
/// it and end with exactly that report.
pub fn verify_chain(
    stored: &[(String, Vec<u8>)],
    trusted: &[[u8; 32]],
    expected_head: Option<(u64, &str)>,
) -> ChainStatus {
    let mut items: Vec<(u64, &String, &Vec<u8>)> = Vec::new();
    let mut status = ChainStatus {
        good: 0,
        head: None,
        broken: None,
    };
    for (name, bytes) in stored {
        match parse_file_name(name) {
            Some(n) => items.push((n, name, bytes)),
            None => {
                status.broken = Some(BrokenLink {
                    at: name.clone(),
                    why: "not the name of a stored report (report-NNNNNNNNNN.json)".into(),
                });
                return status;
            }
        }
    }
    items.sort_by_key(|(n, _, _)| *n);
    let mut prev: Option<SealedReport> = None;
    for (n, name, bytes) in items {
        let why = match open(bytes, trusted) {
            Err(why) => Some(why),
            Ok(r) => link_problem(n, &r, prev.as_ref()).or_else(|| {
                prev = Some(r);
                None
            }),
        };
        if let Some(why) = why {
            status.broken = Some(BrokenLink {
                at: name.clone(),
                why,
            });
            return status;
        }
        status.good += 1;
    }
    status.head = prev.as_ref().map(|p| (p.report.sequence, p.digest.clone()));
    if let Some((seq, digest)) = expected_head {
        let why = match &status.head {
            None => Some(format!("no report is stored; report {seq} was the newest")),
            Some((n, _)) if *n < seq => Some(format!(
                "the chain ends at report {n}; reports {}..={seq} are missing",
                n + 1
            )),
            Some((n, _)) if *n > seq => Some(format!(
                "the chain goes on to report {n}, beyond report {seq}, the newest recorded"
            )),
            Some((_, d)) if d != digest => Some(format!(
                "report {seq} is not the one recorded (digest {}, recorded {})",
                &d[..16],
                &digest[..digest.len().min(16)]
            )),
            Some(_) => None,
        };
        if let Some(why) = why {
            status.broken = Some(BrokenLink {
                at: file_name(seq),
                why,
            });
        }
    }
    status
}

/// What is wrong with report `r`, stored as sequence `n`, following `prev`.
fn link_problem(n: u64, r: &SealedReport, prev: Option<&SealedReport>) -> Option<String> {
    let seq = r.report.sequence;
    if seq != n {
        return Some(format!(
            "holds report {seq}, not report {n}: reports were moved or swapped"
        ));
    }
    match prev {
        None if seq != 1 => Some(format!(
            "the chain starts at report {seq}: reports 1..={} are missing",
            seq - 1
        )),
        None if r.report.previous.is_some() => {
            Some("report 1 names a previous report: it is not the start of this chain".into())
        }
        None => None,
        Some(p) if p.report.sequence == seq => Some(format!("a second report {seq}")),
        Some(p) if p.report.sequence + 1 != seq => Some(format!(
            "follows report {}: reports {}..={} are missing",
            p.report.sequence,
            p.report.sequence + 1,
            seq - 1
        )),
        Some(p) if r.report.previous.as_deref() != Some(p.digest.as_str()) => Some(format!(
            "does not follow report {}: it names {} as the previous report, which hashes to {}",
            p.report.sequence,
            r.report
                .previous
                .as_deref()
                .map_or("none", |d| &d[..d.len().min(16)]),
            &p.digest[..16]
        )),
        Some(_) => None,
    }
}
