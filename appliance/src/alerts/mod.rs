//! Alerts: an objective a cluster does not keep, raised when the condition starts and cleared
//! when it ends, each with its reason and since when.
//!
//! Invariants:
//! - One alert per kind and cluster: raising an active alert keeps its `since` and updates its
//!   reason and value; clearing an alert that is not active does nothing. [`Alerts::set`]
//!   returns the transition, so each is logged and delivered exactly once.
//! - Every alert carries the cluster and the policy; the log lines and webhook payloads carry
//!   them as fields.
//! - Webhooks are delivered in the background with a timeout; a webhook that fails is logged
//!   and never holds up the run.
//! - The active alerts outlive the run: each transition is recorded in the catalog
//!   ([`record`]) and the run that becomes active loads them, so a restart or a failover
//!   neither raises an alert twice nor forgets to clear one.

pub mod record;

use std::collections::BTreeMap;
use std::time::Duration;

/// What is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Exposure exceeds the policy's RPO.
    RpoExceeded,
    /// The predicted restore time exceeds the policy's RTO.
    RtoExceeded,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::RpoExceeded => "rpo_exceeded",
            AlertKind::RtoExceeded => "rto_exceeded",
        }
    }
}

/// An active (or just cleared) alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub cluster: String,
    pub policy: String,
    /// When the condition started (Unix µs).
    pub since_us: i64,
    pub reason: String,
    /// The measured value and its target (seconds for RPO).
    pub value: f64,
    pub target: f64,
}

/// A change of an alert's state.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Transition {
    Raised { alert: Alert },
    Cleared { alert: Alert, at_us: i64 },
}

/// The condition behind an alert, when it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub reason: String,
    pub value: f64,
    pub target: f64,
}

/// The active alerts.
#[derive(Debug, Default)]
pub struct Alerts {
    active: BTreeMap<(AlertKind, String), Alert>,
}

impl Alerts {
    /// Records whether `kind` holds for `cluster` (under `policy`) at `now_us`; the transition
    /// if the alert was raised or cleared.
    pub fn set(
        &mut self,
        kind: AlertKind,
        cluster: &str,
        policy: &str,
        now_us: i64,
        condition: Option<Condition>,
    ) -> Option<Transition> {
        let key = (kind, cluster.to_string());
        match (condition, self.active.get_mut(&key)) {
            (Some(c), Some(a)) => {
                a.reason = c.reason;
                a.value = c.value;
                a.target = c.target;
                None
            }
            (Some(c), None) => {
                let alert = Alert {
                    kind,
                    cluster: cluster.to_string(),
                    policy: policy.to_string(),
                    since_us: now_us,
                    reason: c.reason,
                    value: c.value,
                    target: c.target,
                };
                self.active.insert(key, alert.clone());
                Some(Transition::Raised { alert })
            }
            (None, Some(_)) => self.active.remove(&key).map(|alert| Transition::Cleared {
                alert,
                at_us: now_us,
            }),
            (None, None) => None,
        }
    }

    /// Clears every alert of `kind` whose cluster is not in `seen` (a cluster deleted or no
    /// longer governed).
    pub fn retain_clusters(
        &mut self,
        kind: AlertKind,
        seen: &[String],
        now_us: i64,
    ) -> Vec<Transition> {
        let gone: Vec<_> = self
            .active
            .keys()
            .filter(|(k, c)| *k == kind && !seen.contains(c))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|(k, c)| self.set(k, &c, "", now_us, None))
            .collect()
    }

    /// Takes `alert` as active, as recorded before ([`record::load`]).
    pub fn restore(&mut self, alert: Alert) {
        self.active
            .insert((alert.kind, alert.cluster.clone()), alert);
    }

    /// The active alerts, by kind and cluster.
    pub fn active(&self) -> Vec<Alert> {
        self.active.values().cloned().collect()
    }
}

/// Logs a transition with its ids.
pub fn log(t: &Transition) {
    match t {
        Transition::Raised { alert: a } => tracing::warn!(
            alert = a.kind.as_str(), cluster = %a.cluster, policy = %a.policy,
            value = a.value, target = a.target, reason = %a.reason, "alert raised"
        ),
        Transition::Cleared { alert: a, at_us } => tracing::info!(
            alert = a.kind.as_str(), cluster = %a.cluster, policy = %a.policy,
            since_us = a.since_us, cleared_us = at_us, "alert cleared"
        ),
    }
}

/// Posts `t` as JSON to every webhook, in the background.
pub fn deliver(webhooks: &[String], t: &Transition) {
    for url in webhooks {
        let url = url.clone();
        let body = serde_json::to_vec(t).unwrap_or_default();
        tokio::spawn(async move {
            let client = match reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the webhook client");
                    return;
                }
            };
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => {}
                Ok(resp) => {
                    tracing::warn!(webhook = %redact(&url), status = %resp.status(), "alert webhook refused")
                }
                Err(e) => {
                    tracing::warn!(webhook = %redact(&url), error = %e, "alert webhook failed")
                }
            }
        });
    }
}

/// A webhook URL without its query and credentials (they often hold a token).
pub fn redact(url: &str) -> String {
    let base = url.split(['?', '#']).next().unwrap_or(url);
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{rest}")
        }
        None => base.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(v: f64) -> Option<Condition> {
        Some(Condition {
            reason: format!("exposure {v}"),
            value: v,
            target: 30.0,
        })
    }

    #[test]
    fn raised_once_kept_with_its_since_and_cleared_once() {
        let mut a = Alerts::default();
        let k = AlertKind::RpoExceeded;
        assert_eq!(a.set(k, "shop", "p", 1, None), None);
        let Some(Transition::Raised { alert }) = a.set(k, "shop", "p", 10, cond(31.0)) else {
            panic!("raised");
        };
        assert_eq!((alert.since_us, alert.value), (10, 31.0));
        assert_eq!(a.set(k, "shop", "p", 20, cond(45.0)), None);
        assert_eq!(a.active()[0].since_us, 10, "since is kept");
        assert_eq!(a.active()[0].value, 45.0, "value is updated");
        // Another cluster is its own alert.
        assert!(a.set(k, "ledger", "p", 21, cond(40.0)).is_some());
        let Some(Transition::Cleared { alert, at_us }) = a.set(k, "shop", "p", 30, None) else {
            panic!("cleared");
        };
        assert_eq!((alert.since_us, at_us), (10, 30));
        assert_eq!(a.set(k, "shop", "p", 31, None), None);
        // A cluster no longer governed: its alert is cleared.
        let t = a.retain_clusters(k, &["shop".into()], 40);
        assert_eq!(t.len(), 1);
        assert!(a.active().is_empty());
    }

    #[test]
    fn webhook_urls_are_logged_without_credentials_or_query() {
        assert_eq!(
            redact("https://user:secret@hooks.example.com/x?token=abc"),
            "https://hooks.example.com/x"
        );
        assert_eq!(redact("http://127.0.0.1:9/h"), "http://127.0.0.1:9/h");
    }
}
