//! `[verification]`: which checks run, at which point, how long the scratch branch is kept,
//! how long a run may take, and the policy's own SQL probes.
//!
//! Invariants:
//! - Checks come from the fixed set [`Check::ALL`], each at most once, and are kept in that
//!   set's order whatever order the file lists them in.
//! - Without `checks`, the default checks run, plus `probes` when probes are defined.
//! - Probe names are unique within a policy.

use super::{section, VERIFICATION};
use crate::error::{ErrorKind, Pos};
use crate::model::{defaults, Check, Probe, Verification, VerifyPoint};
use crate::read::{time_text, utc_time, Fields, Reader};
use crate::suggest::did_you_mean;
use crate::tree::Node;

const PROBE: &[&str] = &["name", "sql"];

pub(crate) fn verification(r: &mut Reader, root: &Fields) -> Option<Verification> {
    let f = section(r, root, "verification", VERIFICATION).ok()?;
    let get = |key: &str| f.as_ref().and_then(|f| f.get(key));
    let checks = get("checks").map(|n| checks(r, n));
    let point = match get("point") {
        Some(n) => point(r, n),
        None => Some(VerifyPoint::Latest),
    };
    let window = match get("window") {
        Some(n) => r.duration("verification.window", n, true),
        None => Some(defaults::WINDOW),
    };
    let time_limit = match get("time_limit") {
        Some(n) => r.duration("verification.time_limit", n, true),
        None => Some(defaults::TIME_LIMIT),
    };
    let probes = match get("probes") {
        Some(n) => probes(r, n),
        None => Some(Vec::new()),
    };
    let probes = probes?;
    let checks = match checks {
        Some(c) => c?,
        None if probes.is_empty() => Check::DEFAULT.to_vec(),
        None => Check::DEFAULT.into_iter().chain([Check::Probes]).collect(),
    };
    Some(Verification {
        checks,
        point: point?,
        window: window?,
        time_limit: time_limit?,
        probes,
    })
}

fn checks(r: &mut Reader, node: &Node) -> Option<Vec<Check>> {
    let hint = "remove the key to run the default checks";
    let items = r.strings("verification.checks", node, Some(hint))?;
    let mut checks = Vec::with_capacity(items.len());
    let mut clean = true;
    for (i, (text, at)) in items.into_iter().enumerate() {
        match Check::from_name(text) {
            Some(c) if checks.contains(&c) => {
                r.bad(
                    at,
                    format!("`verification.checks[{}]` repeats `{text}`", i + 1),
                );
                clean = false;
            }
            Some(c) => checks.push(c),
            None => {
                let hint = did_you_mean(text, Check::ALL.iter().map(|c| c.name()));
                let message = format!("unknown verification check `{text}`");
                r.error_with(ErrorKind::BadValue, at, message, hint);
                clean = false;
            }
        }
    }
    checks.sort();
    clean.then_some(checks)
}

fn point(r: &mut Reader, node: &Node) -> Option<VerifyPoint> {
    let path = "verification.point";
    let Some(text) = time_text(node) else {
        r.wrong_type(path, node, "`latest`, `random:DURATION` or a time");
        return None;
    };
    let at = r.pos(&node.span);
    r.mark(path, at);
    if text == "latest" {
        return Some(VerifyPoint::Latest);
    }
    if let Some(d) = text.strip_prefix("random:") {
        let within = r.parse_duration(path, d, at, false)?;
        if within.is_zero() {
            r.bad(
                at,
                format!("`{path}`: `{text}` needs a window greater than 0"),
            );
            return None;
        }
        return Some(VerifyPoint::Random { within });
    }
    if let Some(t) = utc_time(text) {
        return Some(VerifyPoint::At(t));
    }
    let message = format!(
        "`{path}`: `{text}` is not a restore point: use `latest`, `random:DURATION` \
         (e.g. `random:7d`) or an RFC 3339 time (e.g. 2026-11-01T00:00:00Z)"
    );
    let hint = did_you_mean(text, ["latest"]);
    r.error_with(ErrorKind::BadValue, at, message, hint);
    None
}

fn probes(r: &mut Reader, node: &Node) -> Option<Vec<Probe>> {
    let items = r.array("verification.probes", node, "an array of tables", None)?;
    let mut probes: Option<Vec<Probe>> = Some(Vec::with_capacity(items.len()));
    let mut seen: Vec<(String, Pos)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("verification.probes[{}]", i + 1);
        let probe = r.table(&path, None, item, PROBE).and_then(|p| {
            let mut read = |key: &str| match p.get(key) {
                Some(n) => r.string(&p.path_of(key), n),
                None => {
                    r.missing(&p, key);
                    None
                }
            };
            let (name, sql) = (read("name"), read("sql"));
            let name = name?;
            let at = r.mark_of(&p.path_of("name"))?;
            if let Some((_, first)) = seen.iter().find(|(n, _)| n == name) {
                let message = format!(
                    "`{path}.name`: a probe named `{name}` is already defined at line {}",
                    first.line
                );
                r.bad(at, message);
                return None;
            }
            seen.push((name.to_string(), at));
            Some(Probe {
                name: name.to_string(),
                sql: sql?.to_string(),
            })
        });
        match (probe, probes.as_mut()) {
            (Some(p), Some(v)) => v.push(p),
            _ => probes = None,
        }
    }
    probes
}
