//! `[retention]`: the PITR window, grandfather-father-son counts, the floor, legal holds and
//! the cooling-off period.
//!
//! Invariants:
//! - `pitr` must be positive; `min_retention` and `cooling_off` may be 0 (a zero cooling-off
//!   is warned about in `check`).
//! - A legal hold names a point as a time (RFC 3339 string or TOML datetime; no zone is UTC)
//!   or an LSN `lsn:HI/LO` (two hexadecimal 32-bit halves, as PostgreSQL prints it), and
//!   always a non-empty reason.

use super::{section, RETENTION};
use crate::model::{defaults, Gfs, HoldPoint, LegalHold, Retention};
use crate::read::{time_text, utc_time, Fields, Reader};
use crate::tree::Node;

const HOLD: &[&str] = &["point", "reason"];
/// The most images one grandfather-father-son count may keep.
pub const MAX_GFS: u32 = 10_000;

pub(crate) fn retention(r: &mut Reader, root: &Fields) -> Option<Retention> {
    let Some(f) = section(r, root, "retention", RETENTION).ok()? else {
        return Some(Retention {
            pitr: defaults::PITR,
            gfs: Gfs::default(),
            min_retention: defaults::MIN_RETENTION,
            legal_holds: Vec::new(),
            cooling_off: defaults::COOLING_OFF,
        });
    };
    let mut duration = |key: &str, default, positive| match f.get(key) {
        Some(n) => r.duration(&f.path_of(key), n, positive),
        None => Some(default),
    };
    let pitr = duration("pitr", defaults::PITR, true);
    let min_retention = duration("min_retention", defaults::MIN_RETENTION, false);
    let cooling_off = duration("cooling_off", defaults::COOLING_OFF, false);
    let mut count = |key: &str| match f.get(key) {
        Some(n) => r.count(&f.path_of(key), n, 0, MAX_GFS),
        None => Some(0),
    };
    let (hourly, daily, weekly) = (count("hourly"), count("daily"), count("weekly"));
    let (monthly, yearly) = (count("monthly"), count("yearly"));
    let legal_holds = legal_holds(r, &f);
    Some(Retention {
        pitr: pitr?,
        gfs: Gfs {
            hourly: hourly?,
            daily: daily?,
            weekly: weekly?,
            monthly: monthly?,
            yearly: yearly?,
        },
        min_retention: min_retention?,
        legal_holds: legal_holds?,
        cooling_off: cooling_off?,
    })
}

fn legal_holds(r: &mut Reader, f: &Fields) -> Option<Vec<LegalHold>> {
    let Some(node) = f.get("legal_holds") else {
        return Some(Vec::new());
    };
    let items = r.array("retention.legal_holds", node, "an array of tables", None)?;
    let mut holds = Some(Vec::with_capacity(items.len()));
    for (i, item) in items.iter().enumerate() {
        let path = format!("retention.legal_holds[{}]", i + 1);
        let hold = r.table(&path, None, item, HOLD).and_then(|h| {
            let point = match h.get("point") {
                Some(n) => hold_point(r, &h.path_of("point"), n),
                None => {
                    r.missing(&h, "point");
                    None
                }
            };
            let reason = match h.get("reason") {
                Some(n) => r.string(&h.path_of("reason"), n),
                None => {
                    r.missing(&h, "reason");
                    None
                }
            };
            Some(LegalHold {
                point: point?,
                reason: reason?.to_string(),
            })
        });
        match (hold, holds.as_mut()) {
            (Some(h), Some(v)) => v.push(h),
            _ => holds = None,
        }
    }
    holds
}

fn hold_point(r: &mut Reader, path: &str, node: &Node) -> Option<HoldPoint> {
    let Some(text) = time_text(node) else {
        r.wrong_type(path, node, "a time or an LSN string");
        return None;
    };
    let at = r.pos(&node.span);
    r.mark(path, at);
    if let Some(lsn) = text.strip_prefix("lsn:") {
        let Some(lsn) = parse_lsn(lsn) else {
            r.bad(
                at,
                format!(
                    "`{path}`: `{text}` is not an LSN: write lsn:HI/LO in hexadecimal \
                     (e.g. lsn:0/16B3748)"
                ),
            );
            return None;
        };
        return Some(HoldPoint::Lsn(lsn));
    }
    let Some(t) = utc_time(text) else {
        r.bad(
            at,
            format!(
                "`{path}`: `{text}` is neither a time nor an LSN: write an RFC 3339 time \
                 (2026-11-01T00:00:00Z) or lsn:HI/LO (lsn:0/16B3748)"
            ),
        );
        return None;
    };
    Some(HoldPoint::Time(t))
}

/// `HI/LO`, both hexadecimal 32-bit numbers, as PostgreSQL prints an LSN.
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let part = |p: &str| -> Option<u64> {
        if p.is_empty() || p.len() > 8 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(p, 16).ok()
    };
    Some(part(hi)? << 32 | part(lo)?)
}
