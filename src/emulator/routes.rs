//! What the emulator does with one request, in AWS's order: record it, apply a fault that acts
//! before serving, verify SigV4, route, throttle, serve the operation (`create_user`,
//! `list_users`), then apply a fault that acts after serving.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, request::Parts};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use tokio::sync::Notify;

use super::{
    Fault, Operation, REGION, SERVICE, Shared, TypeLocation, admin, create_user, list_users,
    sigv4::Verifier,
    state::RecordedRequest,
    wire::{self, Body},
};

/// Bodies larger than this are refused with 413.
const MAX_BODY: usize = 64 * 1024;

/// Answers one request; every answer carries `x-amzn-RequestId`.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    reset: &Notify,
    request: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let mut response = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => respond(shared, reset, &parts, body.to_bytes()).await,
        Err(_) => wire::front_door_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            "Request body too large.",
        ),
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-RequestId", v);
    }
    response
}

async fn respond(shared: &Arc<Shared>, reset: &Notify, parts: &Parts, body: Bytes) -> Response<Body> {
    if parts.uri.path().starts_with(admin::PREFIX) {
        return admin::handle(shared, parts, &body);
    }
    shared.record(record(parts, &body));
    let route = route(parts);
    let Some(operation) = route.as_ref().map(|(op, _)| *op) else {
        return serve_chime(shared, reset, parts, body, route).await;
    };
    shared.stats.lock().unwrap().received(operation);
    let response = serve_chime(shared, reset, parts, body, route).await;
    let status = response.status().as_u16();
    shared.stats.lock().unwrap().answered(operation, status);
    response
}

/// A Chime request, with the fault it meets.
async fn serve_chime(
    shared: &Arc<Shared>,
    reset: &Notify,
    parts: &Parts,
    body: Bytes,
    route: Option<(Operation, String)>,
) -> Response<Body> {
    let fault = route.as_ref().and_then(|(op, _)| shared.next_fault(*op));
    match &fault {
        Some(Fault::Latency { millis }) => tokio::time::sleep(Duration::from_millis(*millis)).await,
        Some(Fault::Reset) => return reset_connection(reset).await,
        Some(Fault::MalformedBody) => return malformed_body(),
        Some(Fault::Error {
            status,
            error_type,
            type_in,
            retry_after,
        }) => return scripted_error(*status, error_type.as_deref(), *type_in, *retry_after),
        _ => {}
    }
    let response = serve(shared, parts, &body, route, SystemTime::now());
    match fault {
        Some(Fault::CommitThenReset) => reset_connection(reset).await,
        Some(Fault::CommitThenDelay { millis }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            response
        }
        Some(Fault::CommitThenError {
            status,
            error_type,
            type_in,
            retry_after,
        }) => scripted_error(status, error_type.as_deref(), type_in, retry_after),
        _ => response,
    }
}

/// Has the connection reset (RST) and never answers.
async fn reset_connection(reset: &Notify) -> Response<Body> {
    reset.notify_one();
    std::future::pending().await
}

fn malformed_body() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"User\": {\"UserId\": ")));
    *r.status_mut() = StatusCode::CREATED;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves a request as AWS does: SigV4 (checked against the clock reading `now`) first, then the
/// route, the account's throttle, and the operation itself.
pub(crate) fn serve(
    shared: &Shared,
    parts: &Parts,
    body: &[u8],
    route: Option<(Operation, String)>,
    now: SystemTime,
) -> Response<Body> {
    let config = &shared.config;
    let verifier = Verifier {
        access_key_id: &config.access_key_id,
        secret_access_key: &config.secret_access_key,
        region: REGION,
        service: SERVICE,
    };
    if let Err(e) = verifier.verify(parts, body, now) {
        return wire::front_door_error(StatusCode::FORBIDDEN, e.error_type(), &e.message());
    }
    let Some((operation, account_id)) = route else {
        return wire::front_door_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "Unknown operation.",
        );
    };
    if let Some(rps) = config.throttle_rps
        && let Err(wait) = shared
            .state
            .lock()
            .unwrap()
            .admit(&account_id, rps, Instant::now())
    {
        return throttled(wait);
    }
    match operation {
        Operation::CreateUser => create_user::serve(shared, &account_id, body),
        Operation::ListUsers => list_users::serve(shared, &account_id, parts.uri.query().unwrap_or("")),
    }
}

fn throttled(wait: Duration) -> Response<Body> {
    let mut r = wire::chime_error(
        StatusCode::TOO_MANY_REQUESTS,
        "ThrottledClientException",
        "Throttled",
        "Rate exceeded.",
    );
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(wait.as_secs_f64().ceil() as u64),
    );
    r
}

fn record(parts: &Parts, body: &[u8]) -> RecordedRequest {
    RecordedRequest {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(String::new, |pq| pq.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

fn scripted_error(
    status: u16,
    error_type: Option<&str>,
    type_in: TypeLocation,
    retry_after: Option<u64>,
) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = "Injected by the chime-emulator fault script.";
    let mut response = match (error_type, type_in) {
        (Some(t), TypeLocation::Header) => wire::chime_error(status, t, wire::code_of_type(t), message),
        (Some(t), TypeLocation::Body) => wire::json_response(
            status,
            &serde_json::json!({"__type": t, "Code": wire::code_of_type(t), "Message": message}),
        ),
        _ => wire::json_response(status, &serde_json::json!({"Message": message})),
    };
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The operation and decoded account id of a Chime path:
/// `POST /accounts/{accountId}/users?operation=create` (CreateUser) or
/// `GET /accounts/{accountId}/users` (ListUsers).
pub(crate) fn route(parts: &Parts) -> Option<(Operation, String)> {
    let rest = parts.uri.path().strip_prefix("/accounts/")?;
    let account = rest.strip_suffix("/users")?;
    if account.contains('/') {
        return None;
    }
    let query = parts.uri.query().unwrap_or("");
    let operation = match parts.method {
        Method::POST if query.split('&').any(|p| p == "operation=create") => Operation::CreateUser,
        Method::GET => Operation::ListUsers,
        _ => return None,
    };
    Some((
        operation,
        percent_decode_str(account).decode_utf8_lossy().into_owned(),
    ))
}
