//! The JSON API of `cairn up` (read-only for now): health, clusters, branches, computes,
//! regions, backups; and `/metrics` in the Prometheus text format ([`crate::metrics`]).
//! It binds to 127.0.0.1 by default and carries no secrets (connection URLs are omitted).
//!
//! Access ([`Access`]): a request must name this server in its `Host` header (a loopback
//! name, the address it listens on, or a name given with `--api-host`), so that a web page
//! cannot read the API through DNS rebinding; with `--api-token-file`, every request must carry
//! `Authorization: Bearer TOKEN`. Listening beyond loopback without a token is refused.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::runner::state::Daemon;

pub fn router(d: Arc<Daemon>, access: Arc<Access>) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/clusters", get(clusters))
        .route("/api/branches", get(branches))
        .route("/api/computes", get(computes))
        .route("/api/regions", get(regions))
        .route("/api/backups", get(backups))
        .route("/api/jobs", get(jobs))
        .route("/api/objectives", get(objectives))
        .route("/api/alerts", get(alerts))
        .route("/metrics", get(metrics))
        .with_state(d)
        .layer(axum::middleware::from_fn_with_state(access, guard))
}

/// Who may call the API.
pub struct Access {
    token: Option<String>,
    hosts: Vec<String>,
}

impl Access {
    /// Refuses to serve beyond loopback without a token.
    pub fn new(
        listen: std::net::SocketAddr,
        token: Option<String>,
        extra_hosts: &[String],
    ) -> Result<Access, String> {
        if !listen.ip().is_loopback() && token.is_none() {
            return Err(format!(
                "refusing to serve the API on {listen} without --api-token-file: anyone who can \
                 reach that address could read it; keep the default 127.0.0.1 or give a token"
            ));
        }
        let mut hosts = vec!["127.0.0.1".to_string(), "localhost".into(), "[::1]".into()];
        if !listen.ip().is_loopback() {
            hosts.push(match listen.ip() {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                ip => ip.to_string(),
            });
        }
        hosts.extend(extra_hosts.iter().map(|h| h.to_ascii_lowercase()));
        Ok(Access { token, hosts })
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        // "name" or "name:port" (an IPv6 literal keeps its brackets).
        let name = match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => n,
            _ => host.as_str(),
        };
        self.hosts.iter().any(|h| h == name)
    }

    fn token_ok(&self, header: Option<&str>) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let given = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("")
            .as_bytes();
        let expected = expected.as_bytes();
        // Constant time in the token's content.
        given.len() == expected.len()
            && given
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

async fn guard(
    State(access): State<Arc<Access>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !access.host_allowed(host) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            Json(json!({"error": format!(
                "Host '{host}' is not this appliance's (add it with --api-host if it is)"
            )})),
        )
            .into_response();
    }
    let auth = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if !access.token_ok(auth) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "an API token is required: Authorization: Bearer TOKEN"})),
        )
            .into_response();
    }
    next.run(req).await
}

/// An error as the API answers it: the status code of its kind, the kind, and the message.
fn fail(e: impl Into<crate::Error>) -> Response {
    let e = e.into();
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({"error": e.to_string(), "kind": e.kind()})),
    )
        .into_response()
}

async fn health(State(d): State<Arc<Daemon>>) -> Response {
    let st = d.status.lock().unwrap_or_else(|e| e.into_inner());
    let uptime = st.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let regions = d.app.protection().status();
    let region_trouble = regions.iter().any(|r| r.last_error.is_some());
    let active = d.active.load(std::sync::atomic::Ordering::Relaxed);
    let lease = d.lease.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let active_node = match &lease.role {
        Some(crate::nodes::Role::Standby(h)) => json!(h),
        _ if active => json!({ "node": d.node }),
        _ => json!(null),
    };
    Json(json!({
        "node": d.node,
        "role": if active { "active" } else { "standby" },
        "active_node": active_node,
        "lease_error": lease.error,
        "status": if d.app.protection().fenced() {
            "fenced"
        } else if st.errors.is_empty() && !region_trouble {
            "ok"
        } else {
            "degraded"
        },
        "fenced": d.app.protection().fenced(),
        "regions": regions,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": uptime,
        "rounds": st.rounds,
        "recent_errors": st.errors.iter().map(|(t, m)| json!({"time_us": t, "message": m})).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn clusters(State(d): State<Arc<Daemon>>) -> Response {
    match d.app.engine().cluster_summaries().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

async fn branches(State(d): State<Arc<Daemon>>) -> Response {
    let clusters = match d.app.engine().catalog.clusters().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut all = Vec::new();
    for c in clusters {
        match d.app.engine().branch_list(&c).await {
            Ok(v) => all.extend(v),
            Err(e) => return fail(e),
        }
    }
    Json(all).into_response()
}

async fn computes(State(d): State<Arc<Daemon>>) -> Response {
    match d.app.engine().compute_list().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

async fn regions(State(d): State<Arc<Daemon>>) -> Response {
    Json(json!({
        "min_copies": d.app.protection().regions.min_copies,
        "regions": d.app.protection().status(),
    }))
    .into_response()
}

async fn backups(State(d): State<Arc<Daemon>>) -> Response {
    let clusters = match d.app.engine().catalog.clusters().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match d.app.recovery_points(&clusters).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

/// Each governed cluster's RPO exposure and predicted restore time, as last computed.
async fn objectives(State(d): State<Arc<Daemon>>) -> Response {
    let rpo = d.rpo.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let rto = d.rto.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(json!({ "rpo": rpo, "rto": rto })).into_response()
}

/// The active alerts.
async fn alerts(State(d): State<Arc<Daemon>>) -> Response {
    let a = d.alerts.lock().unwrap_or_else(|e| e.into_inner()).active();
    Json(a).into_response()
}

/// The latest runs of scheduled jobs, newest first.
async fn jobs(State(d): State<Arc<Daemon>>) -> Response {
    match crate::jobs::record::list(&d.app.engine().catalog, None, 200).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

/// The run's state for Prometheus (see [`crate::metrics`]).
async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    let (rounds, recent_errors, uptime_seconds) = {
        let st = d.status.lock().unwrap_or_else(|e| e.into_inner());
        (
            st.rounds,
            st.errors.len(),
            st.started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        )
    };
    let p = d.app.protection();
    let regions = p
        .status()
        .into_iter()
        .map(|r| crate::metrics::RegionMetrics {
            failing: r.last_error.is_some(),
            region: r.region,
            pending_objects: r.pending_objects,
            pending_bytes: r.pending_bytes,
            shipped_bytes: r.shipped_bytes,
            last_success_at_us: r.last_success_at_us,
        })
        .collect();
    let mut clusters = Vec::new();
    let rows = match d.app.engine().catalog.clusters().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    for c in rows {
        let layers = match d.app.engine().catalog.layers(c.id).await {
            Ok(l) => l,
            Err(e) => return fail(e),
        };
        clusters.push(crate::metrics::ClusterMetrics {
            cluster: c.name,
            layers: layers.len() as u64,
            stored_bytes: layers.iter().map(|l| l.file_size).sum(),
            newest_layer_at_us: layers.iter().map(|l| l.created_at_us).max(),
        });
    }
    let jobs = match crate::jobs::record::totals(&d.app.engine().catalog).await {
        Ok(j) => j,
        Err(e) => return fail(e),
    };
    let rpo = d.rpo.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let rto = d.rto.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let alerts = d.alerts.lock().unwrap_or_else(|e| e.into_inner()).active();
    let text = crate::metrics::render(&crate::metrics::Snapshot {
        rounds,
        jobs,
        rpo,
        rto,
        alerts,
        recent_errors,
        fenced: p.fenced(),
        uptime_seconds,
        regions,
        clusters,
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
