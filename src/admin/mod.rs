//! The admin HTTP endpoint: `/metrics`, `/health` and the queue API that `sluice queue` uses.
//!
//! | path | answer |
//! |---|---|
//! | `GET /health` | `ok` (200), or 503 while stopping |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /api/queue` | JSON array of queued messages (see [`message_json`]) |
//! | `GET /api/queue/stats` | JSON counters |
//! | `GET /api/queue/{id}` | one message's JSON |
//! | `GET /api/queue/{id}/message` | the stored message (trace header + body) |
//! | `POST /api/queue/flush[?domain=D]` | make queued recipients due now |
//! | `DELETE /api/queue/{id}` | delete a message (no bounce) |
//! | `POST /api/queue/{id}/bounce` | bounce a message's queued recipients to its sender, then delete it |
//! | `GET /api/circuits` | the open reputation circuit breakers |
//! | `POST /api/tenant/{name}/resume` | close a tenant's circuit breaker, release its mail |
//! | `POST /api/campaign/{name}/resume[?tenant=T]` | close a campaign's circuit breaker(s) |
//! | `/api/suppression...` | the suppression list ([`suppression`]) |
//! | `POST /api/inject/v1` | HTTP injection ([`inject`]; tokens of scope `inject` too) |
//!
//! Every path but `/health` (and `/metrics`, unless `[admin] metrics_need_token`) needs a bearer
//! token, and the `Host` header must name this listener ([`auth`]).

pub mod auth;
pub mod inject;
pub mod suppression;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::delivery::dispatch::Dispatcher;
use crate::metrics;
use crate::spool::{Envelope, QueueId, Spool, SpoolError};

#[derive(Clone)]
struct AppState {
    spool: Arc<dyn Spool>,
    dispatcher: Arc<Dispatcher>,
    stopping: CancellationToken,
}

/// What the admin API serves.
pub struct AdminContext {
    pub spool: Arc<dyn Spool>,
    pub dispatcher: Arc<Dispatcher>,
    pub stopping: CancellationToken,
    pub guard: Arc<auth::Guard>,
    pub suppressions: Option<Arc<crate::bounce::suppression::Suppressions>>,
    pub injector: Option<Arc<crate::inject::Injector>>,
}

pub fn router(ctx: AdminContext) -> Router {
    let AdminContext { spool, dispatcher, stopping, guard, suppressions, injector } = ctx;
    let limit = injector.as_ref().map_or(0, |i| i.config.max_request_size as usize);
    let inject = Router::new()
        .route("/api/inject/v1", post(inject::inject_v1))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(injector);
    let suppression = Router::new()
        .route("/api/suppression", get(suppression::list).post(suppression::add))
        .route("/api/suppression/export", get(suppression::export))
        .route("/api/suppression/import", post(suppression::import))
        .route("/api/suppression/{address}", axum::routing::delete(suppression::remove))
        .with_state(suppressions);
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/api/queue", get(queue_list))
        .route("/api/queue/stats", get(queue_stats))
        .route("/api/queue/destinations", get(queue_destinations))
        .route("/api/queue/flush", post(queue_flush))
        .route("/api/queue/{id}", get(queue_show).delete(queue_delete))
        .route("/api/queue/{id}/message", get(queue_message))
        .route("/api/queue/{id}/bounce", post(queue_bounce))
        .route("/api/circuits", get(circuits_list))
        .route("/api/tenant/{name}/resume", post(tenant_resume))
        .route("/api/campaign/{name}/resume", post(campaign_resume))
        .with_state(AppState { spool, dispatcher, stopping })
        .merge(suppression)
        .merge(inject)
        .layer(axum::middleware::from_fn_with_state(guard, auth::guard))
}

#[derive(serde::Deserialize)]
struct FlushQuery {
    domain: Option<String>,
}

async fn queue_flush(State(st): State<AppState>, Query(q): Query<FlushQuery>) -> Response {
    match st.dispatcher.flush(q.domain.as_deref()).await {
        Ok(n) => axum::Json(json!({ "flushed_recipients": n })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn circuits_list(State(st): State<AppState>) -> Response {
    let open = st.dispatcher.recorder.circuits.as_ref().map(|c| c.list()).unwrap_or_default();
    axum::Json(json!(open)).into_response()
}

#[derive(serde::Deserialize)]
struct ResumeQuery {
    tenant: Option<String>,
}

async fn resume(st: &AppState, kind: &str, name: &str, tenant: Option<&str>) -> Response {
    match st.dispatcher.resume_circuit(kind, name, tenant).await {
        Ok(closed) if closed.is_empty() => {
            (StatusCode::NOT_FOUND, format!("no open circuit breaker for {kind} {name}\n"))
                .into_response()
        }
        Ok(closed) => {
            tracing::warn!(kind, name, "circuit breaker resumed by the operator");
            axum::Json(json!({ "resumed": closed })).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn tenant_resume(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    resume(&st, "tenant", &name, None).await
}

async fn campaign_resume(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ResumeQuery>,
) -> Response {
    resume(&st, "campaign", &name, q.tenant.as_deref()).await
}

async fn queue_delete(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    // Through the dispatcher: an attempt in flight finishes (and is recorded) first.
    match st.dispatcher.delete(id).await {
        Ok(false) => (StatusCode::NOT_FOUND, "no such message\n").into_response(),
        Ok(true) => {
            tracing::warn!(%id, "message deleted by the operator");
            axum::Json(json!({ "deleted": id.to_string() })).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn queue_bounce(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match st.dispatcher.bounce(id).await {
        Ok(Some(n)) => {
            axum::Json(json!({ "bounced": id.to_string(), "recipients": n })).into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, "no such message\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn health(State(st): State<AppState>) -> Response {
    if st.stopping.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    // Queue gauges are kept by the spool as records are applied: a scrape costs nothing more
    // with a million messages queued.
    let _ = &st;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render()).into_response()
}

async fn queue_list(State(st): State<AppState>) -> Response {
    let list: Vec<Value> = st.spool.list().iter().map(message_json).collect();
    axum::Json(list).into_response()
}

async fn queue_stats(State(st): State<AppState>) -> Response {
    axum::Json(st.spool.stats()).into_response()
}

#[derive(serde::Deserialize)]
struct DestinationsQuery {
    limit: Option<usize>,
}

/// The destinations in use, busiest first (`?limit=N`, default 1000).
async fn queue_destinations(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<DestinationsQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(1000).min(100_000);
    axum::Json(st.dispatcher.destinations(limit)).into_response()
}

fn parse_id(id: &str) -> Result<QueueId, Box<Response>> {
    id.parse().map_err(|_| Box::new((StatusCode::BAD_REQUEST, "bad queue id\n").into_response()))
}

async fn queue_show(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match st.spool.get(id) {
        Some(env) => axum::Json(message_json(&env)).into_response(),
        None => (StatusCode::NOT_FOUND, "no such message\n").into_response(),
    }
}

async fn queue_message(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let spool = st.spool.clone();
    match tokio::task::spawn_blocking(move || spool.read_message(id)).await {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "message/rfc822")], bytes).into_response(),
        Ok(Err(SpoolError::NotFound)) => {
            (StatusCode::NOT_FOUND, "no such message\n").into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn rfc3339(millis: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(millis)).to_string()
}

/// The queue's JSON form of a message, shared by the API and `sluice queue list --json`.
/// `next_attempt` is null when the recipient is due as soon as possible.
pub fn message_json(env: &Envelope) -> Value {
    let mut v = json!({
        "id": env.id.to_string(),
        "message_id": env.message_id,
        "sender": env.sender,
        "recipients": env.recipients.iter().map(|r| json!({
            "address": r.address,
            "state": r.state.label(),
            "attempts": r.attempts,
            "next_attempt": (r.next_attempt != 0).then(|| rfc3339(r.next_attempt)),
            "last_reply": r.last_reply,
            "notify": r.notify.map(|n| if n.is_never() { "NEVER".to_string() } else {
                [("SUCCESS", n.success), ("FAILURE", n.failure), ("DELAY", n.delay)]
                    .iter().filter(|x| x.1).map(|x| x.0).collect::<Vec<_>>().join(",")
            }),
            "orcpt": r.orcpt,
        })).collect::<Vec<_>>(),
        "size": env.size,
        "received_at": rfc3339(env.received_at),
        "client_ip": env.client_ip.to_string(),
        "helo": env.helo,
        "body": env.body_type.map(|b| b.label()),
        "smtputf8": env.smtputf8,
        "ret": env.ret.map(|r| format!("{r:?}").to_uppercase()),
        "envid": env.envid,
    });
    // Only when present, so the JSON of untagged mail is what it always was.
    if let Some(t) = &env.tags {
        v["tenant"] = json!(t.tenant);
        v["campaign"] = json!(t.campaign);
        v["meta"] = t.meta.as_deref().map_or(Value::Null, |m| {
            serde_json::from_str(m).unwrap_or_else(|_| Value::String(m.to_string()))
        });
        if let Some(p) = &t.pool {
            v["pool"] = json!(p);
        }
        if let Some(p) = t.priority {
            v["priority"] = json!(p.label());
        }
    }
    v
}
