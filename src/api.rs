//! The JSON API of `cairn up` (read-only for now): health, clusters, branches, computes.
//! It binds to 127.0.0.1 by default and carries no secrets (connection URLs are omitted).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::daemon::Daemon;

pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/clusters", get(clusters))
        .route("/api/branches", get(branches))
        .route("/api/computes", get(computes))
        .route("/api/regions", get(regions))
        .route("/api/backups", get(backups))
        .with_state(d)
}

fn fail(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": e.to_string()})),
    )
        .into_response()
}

async fn health(State(d): State<Arc<Daemon>>) -> Response {
    let st = d.status.lock().unwrap_or_else(|e| e.into_inner());
    let uptime = st.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let regions = d.protection.status();
    let region_trouble = regions.iter().any(|r| r.last_error.is_some());
    Json(json!({
        "status": if d.protection.fenced() {
            "fenced"
        } else if st.errors.is_empty() && !region_trouble {
            "ok"
        } else {
            "degraded"
        },
        "fenced": d.protection.fenced(),
        "regions": regions,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": uptime,
        "rounds": st.rounds,
        "recent_errors": st.errors.iter().map(|(t, m)| json!({"time_us": t, "message": m})).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn clusters(State(d): State<Arc<Daemon>>) -> Response {
    match d.engine.cluster_summaries().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

async fn branches(State(d): State<Arc<Daemon>>) -> Response {
    let clusters = match d.engine.catalog.clusters().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut all = Vec::new();
    for c in clusters {
        match d.engine.branch_list(&c).await {
            Ok(v) => all.extend(v),
            Err(e) => return fail(e),
        }
    }
    Json(all).into_response()
}

async fn computes(State(d): State<Arc<Daemon>>) -> Response {
    match d.engine.compute_list().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

async fn regions(State(d): State<Arc<Daemon>>) -> Response {
    Json(json!({
        "min_copies": d.protection.regions.min_copies,
        "regions": d.protection.status(),
    }))
    .into_response()
}

async fn backups(State(d): State<Arc<Daemon>>) -> Response {
    let clusters = match d.engine.catalog.clusters().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match crate::protect::recovery_points(&d.protection, &clusters).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}
