//! The suppression list over the admin API (what `sluice suppression` uses when the daemon runs).
//!
//! | path | answer |
//! |---|---|
//! | `GET /api/suppression[?tenant=T]` | JSON array of entries (`tenant=` with no value: the global ones) |
//! | `POST /api/suppression` | JSON `{address, tenant?, reason?, detail?}`: add one |
//! | `DELETE /api/suppression/{address}[?tenant=T]` | remove one (404 if absent) |
//! | `GET /api/suppression/export[?tenant=T]` | CSV (`address,tenant,reason,time`) |
//! | `POST /api/suppression/import[?tenant=T]` | CSV or one address per line; one transaction |

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::bounce::suppression::{self, NewEntry, Suppressions};

#[derive(Deserialize)]
pub struct TenantQuery {
    tenant: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    address: String,
    tenant: Option<String>,
    reason: Option<String>,
    detail: Option<String>,
}

type List = Option<Arc<Suppressions>>;

fn disabled() -> Response {
    (StatusCode::NOT_FOUND, "the suppression list is disabled ([suppression] enabled = false)\n")
        .into_response()
}

fn failed(e: impl std::fmt::Display, status: StatusCode) -> Response {
    (status, format!("{e}\n")).into_response()
}

/// Runs a blocking list operation (redb commits fsync) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, suppression::SuppressionError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e @ suppression::SuppressionError::BadAddress(_))) => {
            Err(failed(e, StatusCode::BAD_REQUEST))
        }
        Ok(Err(e)) => Err(failed(e, StatusCode::INTERNAL_SERVER_ERROR)),
        Err(e) => Err(failed(e, StatusCode::INTERNAL_SERVER_ERROR)),
    }
}

pub async fn list(State(list): State<List>, Query(q): Query<TenantQuery>) -> Response {
    let Some(list) = list else { return disabled() };
    match blocking(move || list.list(q.tenant.as_deref())).await {
        Ok(entries) => Json(entries).into_response(),
        Err(r) => r,
    }
}

pub async fn add(State(list): State<List>, Json(b): Json<AddBody>) -> Response {
    let Some(list) = list else { return disabled() };
    let reason = match b.reason.as_deref().unwrap_or("manual").parse() {
        Ok(r) => r,
        Err(e) => return failed(e, StatusCode::BAD_REQUEST),
    };
    let entry = NewEntry { address: b.address, tenant: b.tenant, reason, detail: b.detail };
    match blocking(move || list.add(&[entry])).await {
        Ok(new) => Json(json!({ "added": new })).into_response(),
        Err(r) => r,
    }
}

pub async fn remove(
    State(list): State<List>,
    Path(address): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Response {
    let Some(list) = list else { return disabled() };
    let a = address.clone();
    match blocking(move || list.remove(q.tenant.as_deref(), &a)).await {
        Ok(true) => Json(json!({ "removed": address })).into_response(),
        Ok(false) => (StatusCode::NOT_FOUND, "not on the list\n").into_response(),
        Err(r) => r,
    }
}

pub async fn export(State(list): State<List>, Query(q): Query<TenantQuery>) -> Response {
    let Some(list) = list else { return disabled() };
    match blocking(move || list.list(q.tenant.as_deref())).await {
        Ok(entries) => {
            ([(header::CONTENT_TYPE, "text/csv")], suppression::to_csv(&entries)).into_response()
        }
        Err(r) => r,
    }
}

pub async fn import(
    State(list): State<List>,
    Query(q): Query<TenantQuery>,
    body: String,
) -> Response {
    let Some(list) = list else { return disabled() };
    let entries = match suppression::from_csv(&body, q.tenant.as_deref()) {
        Ok(e) => e,
        Err(e) => return failed(e, StatusCode::BAD_REQUEST),
    };
    let n = entries.len();
    match blocking(move || list.add(&entries)).await {
        Ok(new) => Json(json!({ "imported": n, "new": new })).into_response(),
        Err(r) => r,
    }
}
