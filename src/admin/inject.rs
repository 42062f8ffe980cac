//! `POST /api/inject/v1` (tokens of scope `inject` or `admin`): the JSON request, gzip'd or
//! not, to the [`Injector`](crate::inject::Injector).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;

use crate::admin::auth::{Caller, Scope};
use crate::inject::{InjectError, Injector, Sender, request::InjectRequest};
use crate::metrics;

pub async fn inject_v1(
    State(injector): State<Option<Arc<Injector>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(injector) = injector else {
        return text(
            StatusCode::NOT_FOUND,
            "HTTP injection is disabled ([inject] enabled = false)",
        );
    };
    let limit = injector.config.max_request_size;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    let json = if gzip {
        let mut out = Vec::new();
        let read = flate2::read::GzDecoder::new(&body[..]).take(limit + 1).read_to_end(&mut out);
        match read {
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("gzip: {e}")),
            Ok(n) if n as u64 > limit => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "request larger than {limit} bytes once decompressed ([inject] max_request_size)"
                    ),
                );
            }
            Ok(_) => Bytes::from(out),
        }
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(&json);
    let req: InjectRequest = match serde_path_to_error::deserialize(de) {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            let what = if path == "." { String::new() } else { format!("{path}: ") };
            metrics::INJECT_REQUESTS.with_label_values(&["bad_request"]).inc();
            return text(StatusCode::BAD_REQUEST, &format!("{what}{}", e.inner()));
        }
    };
    // The guard put the caller here; without it (no guard in front) nothing is allowed.
    let Some(Extension(caller)) = caller else {
        return text(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    };
    let who =
        Sender { name: caller.name, admin: caller.scope == Scope::Admin, tenants: caller.tenants };
    let answer = injector.inject(req, peer.ip(), &who).await;
    let result = match &answer {
        Ok(_) => "ok",
        Err(InjectError::BadRequest(_)) => "bad_request",
        Err(InjectError::Template(_)) => "template",
        Err(InjectError::Forbidden(_)) => "forbidden",
        Err(InjectError::Quota(_)) => "quota",
        Err(InjectError::CircuitOpen(_)) => "circuit_open",
        Err(InjectError::Unavailable(_)) => "unavailable",
    };
    metrics::INJECT_REQUESTS.with_label_values(&[result]).inc();
    match answer {
        Ok(resp) => Json(resp).into_response(),
        Err(e @ (InjectError::BadRequest(_) | InjectError::Template(_))) => {
            text(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e @ InjectError::Forbidden(_)) => text(StatusCode::FORBIDDEN, &e.to_string()),
        Err(InjectError::Quota(e)) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, e.retry_after.to_string())],
            format!("{e}\n"),
        )
            .into_response(),
        Err(e @ InjectError::CircuitOpen(_)) => text(StatusCode::TOO_MANY_REQUESTS, &e.to_string()),
        Err(e @ InjectError::Unavailable(_)) => {
            text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

fn text(status: StatusCode, msg: &str) -> Response {
    (status, format!("{msg}\n")).into_response()
}
