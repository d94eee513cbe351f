//! `[schedules]`: `image`, `verify` and `drill`, each a cron string or a table.
//!
//! Invariants:
//! - A schedule without a time zone of its own uses the policy's `timezone` (UTC by default).
//! - `image` and `verify` always exist (defaults `@daily` and `@weekly`); `drill` only when
//!   written.
//! - In a table, the cron expression is judged even when another key of the table is bad,
//!   so one run reports both.

use std::time::Duration;

use chrono_tz::Tz;

use super::{section, SCHEDULES};
use crate::error::Pos;
use crate::model::{defaults, Schedules};
use crate::parse::timezone;
use crate::read::{Fields, Reader};
use crate::schedule::Schedule;
use crate::tree::{Node, Value};

const SCHEDULE: &[&str] = &["cron", "timezone", "jitter", "max_concurrent"];
/// The most runs of one schedule that may be allowed at once.
pub const MAX_CONCURRENT: u32 = 1000;

pub(crate) fn schedules(r: &mut Reader, root: &Fields, tz: Tz) -> Option<Schedules> {
    let fields = section(r, root, "schedules", SCHEDULES).ok()?;
    let mut read = |key: &str, default: Option<&str>| -> Option<Option<Schedule>> {
        match fields.as_ref().and_then(|f| f.entry(key)) {
            Some(entry) => {
                let at = r.pos(&entry.key_span);
                let path = format!("schedules.{key}");
                schedule(r, &path, at, &entry.node, tz).map(Some)
            }
            None => Some(default.and_then(|d| {
                Schedule::new(d, tz, defaults::JITTER, defaults::MAX_CONCURRENT).ok()
            })),
        }
    };
    let image = read("image", Some(defaults::IMAGE));
    let verify = read("verify", Some(defaults::VERIFY));
    let drill = read("drill", None);
    Some(Schedules {
        image: image??,
        verify: verify??,
        drill: drill?,
    })
}

/// A schedule: a cron string, or a table with `cron` and the optional keys.
fn schedule(r: &mut Reader, path: &str, key_at: Pos, node: &Node, tz: Tz) -> Option<Schedule> {
    match &node.value {
        Value::String(_) => {
            let expr = r.string(path, node)?;
            let at = r.pos(&node.span);
            new_schedule(
                r,
                path,
                at,
                expr,
                tz,
                defaults::JITTER,
                defaults::MAX_CONCURRENT,
            )
        }
        Value::Table(_) => {
            let fields = r.table(path, Some(key_at), node, SCHEDULE)?;
            r.mark(path, key_at);
            let tz = match fields.get("timezone") {
                Some(n) => timezone(r, &fields.path_of("timezone"), n),
                None => Some(tz),
            };
            let jitter = match fields.get("jitter") {
                Some(n) => r.duration(&fields.path_of("jitter"), n, false),
                None => Some(defaults::JITTER),
            };
            let max = match fields.get("max_concurrent") {
                Some(n) => r.count(&fields.path_of("max_concurrent"), n, 1, MAX_CONCURRENT),
                None => Some(defaults::MAX_CONCURRENT),
            };
            let cron_path = fields.path_of("cron");
            let Some(cron) = fields.get("cron") else {
                r.missing(&fields, "cron");
                return None;
            };
            let expr = r.string(&cron_path, cron)?;
            let at = r.pos(&cron.span);
            // The expression is judged even if another key of the table was bad.
            let schedule = new_schedule(
                r,
                &cron_path,
                at,
                expr,
                tz.unwrap_or(Tz::UTC),
                jitter.unwrap_or(defaults::JITTER),
                max.unwrap_or(defaults::MAX_CONCURRENT),
            );
            (tz.is_some() && jitter.is_some() && max.is_some())
                .then_some(schedule)
                .flatten()
        }
        _ => {
            r.wrong_type(path, node, "a cron string or a table");
            None
        }
    }
}

fn new_schedule(
    r: &mut Reader,
    path: &str,
    at: Pos,
    expr: &str,
    tz: Tz,
    jitter: Duration,
    max_concurrent: u32,
) -> Option<Schedule> {
    match Schedule::new(expr, tz, jitter, max_concurrent) {
        Ok(s) => Some(s),
        Err(e) => {
            r.bad(at, format!("`{path}`: {e}"));
            None
        }
    }
}
