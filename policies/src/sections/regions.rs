//! `[regions]` and `[encryption]`: where copies go, how many, and who can decrypt them.
//!
//! Invariants:
//! - Region selectors are resolved here, against the context: a selector that matches no
//!   region is an error (`UnknownRegion`), never silently an empty selection. The default
//!   selection (`*`, every region) is exempt: with no region at all, the `min_copies` check
//!   reports it instead.
//! - `selected` lists each region once, in the context's order, however many selectors
//!   match it.
//! - A recipient that is an age *secret* key is refused without quoting it: secrets never
//!   reach logs, and an error message is a log line.

use super::{section, ENCRYPTION, REGIONS};
use crate::error::{ErrorKind, Pos};
use crate::model::{defaults, Encryption, Recipient, Regions};
use crate::read::{Fields, Reader};
use crate::select::{NamePattern, RegionSelector};
use crate::suggest::did_you_mean;
use crate::tree::Node;

/// The most copies `regions.min_copies` may ask for.
pub const MAX_COPIES: u32 = 100;

pub(crate) fn regions(r: &mut Reader, root: &Fields) -> Option<Regions> {
    let f = section(r, root, "regions", REGIONS).ok()?;
    let min_copies = match f.as_ref().and_then(|f| f.get("min_copies")) {
        Some(n) => r.count("regions.min_copies", n, 0, MAX_COPIES),
        None => Some(defaults::MIN_COPIES),
    };
    let selectors = match f.as_ref().and_then(|f| f.get("use")) {
        Some(n) => selectors(r, n),
        None => Some(vec![RegionSelector::Name(NamePattern::parse(
            defaults::REGIONS_USE,
        ))]),
    };
    let selectors = selectors?;
    let selected = r
        .ctx
        .regions
        .iter()
        .filter(|region| selectors.iter().any(|s| s.matches(region)))
        .map(|region| region.name.clone())
        .collect();
    Some(Regions {
        selectors,
        selected,
        min_copies: min_copies?,
    })
}

fn selectors(r: &mut Reader, node: &Node) -> Option<Vec<RegionSelector>> {
    let hint = "select at least one region, or remove the key to use every region";
    let items = r.strings("regions.use", node, Some(hint))?;
    let mut out: Vec<RegionSelector> = Vec::with_capacity(items.len());
    let mut clean = true;
    for (i, (text, at)) in items.into_iter().enumerate() {
        let selector = match RegionSelector::parse(text) {
            Ok(s) => s,
            Err(e) => {
                r.bad(at, format!("`regions.use[{}]`: {e}", i + 1));
                clean = false;
                continue;
            }
        };
        if out.contains(&selector) {
            r.bad(at, format!("`regions.use[{}]` repeats `{text}`", i + 1));
            clean = false;
            continue;
        }
        if !r.ctx.regions.iter().any(|region| selector.matches(region)) {
            unknown_region(r, &selector, at);
            clean = false;
            continue;
        }
        out.push(selector);
    }
    clean.then_some(out)
}

fn unknown_region(r: &mut Reader, selector: &RegionSelector, at: Pos) {
    let regions = &r.ctx.regions;
    let (message, hint) = match selector {
        RegionSelector::Name(NamePattern::Exact(name)) => (
            format!("unknown region `{name}` in `regions.use`"),
            did_you_mean(name, regions.iter().map(|g| g.name.as_str())),
        ),
        RegionSelector::Name(NamePattern::Glob(_)) => (
            format!("`{selector}` in `regions.use` matches no region"),
            None,
        ),
        RegionSelector::Tag { .. } => {
            let tags: Vec<String> = regions
                .iter()
                .flat_map(|g| g.tags.iter().map(|(k, v)| format!("tag:{k}={v}")))
                .collect();
            (
                format!("`{selector}` in `regions.use` matches no region"),
                did_you_mean(&selector.to_string(), tags.iter().map(String::as_str)),
            )
        }
    };
    r.error_with(ErrorKind::UnknownRegion, at, message, hint);
}

pub(crate) fn encryption(r: &mut Reader, root: &Fields) -> Option<Encryption> {
    let f = section(r, root, "encryption", ENCRYPTION).ok()?;
    let Some(node) = f.as_ref().and_then(|f| f.get("recipients")) else {
        return Some(Encryption::default());
    };
    let items = r.strings("encryption.recipients", node, None)?;
    let mut recipients: Vec<Recipient> = Vec::with_capacity(items.len());
    let mut clean = true;
    for (i, (text, at)) in items.into_iter().enumerate() {
        let path = format!("encryption.recipients[{}]", i + 1);
        let text = text.trim();
        if text.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
            let message = format!(
                "`{path}` is an age secret key, not a recipient: write its public key (age1...) \
                 and keep the secret key out of policy files"
            );
            r.bad(at, message);
            clean = false;
            continue;
        }
        match text.parse::<age::x25519::Recipient>() {
            Ok(key) if recipients.iter().any(|k| k.0 == key) => {
                r.bad(at, format!("`{path}` repeats the recipient `{text}`"));
                clean = false;
            }
            Ok(key) => recipients.push(Recipient(key)),
            Err(e) => {
                let message = format!("`{path}`: `{text}` is not an age X25519 recipient ({e})");
                r.bad(at, message);
                clean = false;
            }
        }
    }
    clean.then_some(Encryption { recipients })
}
