//! What the emulator does with one request, in AWS's order: record it, apply a scripted fault,
//! verify SigV4, route, throttle, check the model's patterns, then create the user.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, request::Parts};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use time::OffsetDateTime;
use tokio::sync::Notify;

use super::{
    Fault, REGION, SERVICE, Shared, TypeLocation, admin,
    sigv4::Verifier,
    state::{RecordedRequest, Refusal},
    wire::{self, Body, CreateUserBody, NewUser},
};
use crate::validate::{ACCOUNT_ID_PATTERN, EMAIL_PATTERN};

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
    match shared.next_fault() {
        Some(Fault::Latency { millis }) => tokio::time::sleep(Duration::from_millis(millis)).await,
        Some(Fault::Reset) => {
            reset.notify_one();
            return std::future::pending().await;
        }
        Some(Fault::MalformedBody) => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"{\"User\": {\"UserId\": ")));
            *r.status_mut() = StatusCode::CREATED;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
        Some(Fault::Error {
            status,
            error_type,
            type_in,
            retry_after,
        }) => {
            return scripted_error(status, error_type.as_deref(), type_in, retry_after);
        }
        None => {}
    }
    create_user(shared, parts, &body)
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

fn create_user(shared: &Shared, parts: &Parts, body: &[u8]) -> Response<Body> {
    let config = &shared.config;
    let verifier = Verifier {
        access_key_id: &config.access_key_id,
        secret_access_key: &config.secret_access_key,
        region: REGION,
        service: SERVICE,
    };
    if let Err(e) = verifier.verify(parts, body, SystemTime::now()) {
        return wire::front_door_error(StatusCode::FORBIDDEN, e.error_type(), &e.message());
    }
    let Some(account_id) = route(parts) else {
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
        return r;
    }
    let input: CreateUserBody = match serde_json::from_slice(body) {
        Ok(input) => input,
        Err(_) if body.is_empty() => CreateUserBody::default(),
        Err(_) => return bad_request("The request body is not a valid CreateUser request."),
    };
    if let Some(message) = pattern_violation(&account_id, &input) {
        return bad_request(&message);
    }
    let email = input.email.as_deref();
    let created = shared.state.lock().unwrap().create(&account_id, email);
    match created {
        Ok(()) => {}
        Err(Refusal::UnknownAccount) => {
            return wire::chime_error(
                StatusCode::NOT_FOUND,
                "NotFoundException",
                "NotFound",
                &format!("The account {account_id} was not found."),
            );
        }
        Err(Refusal::DuplicateEmail) => {
            return wire::chime_error(
                StatusCode::CONFLICT,
                "ConflictException",
                "Conflict",
                "A user with this email address already exists in the account.",
            );
        }
    }
    let user_id = uuid::Uuid::new_v4().to_string();
    let user = NewUser {
        user_id: &user_id,
        account_id: &account_id,
        email,
        username: input.username.as_deref(),
        shared_device: input.user_type.as_deref() == Some("SharedDevice"),
        now: OffsetDateTime::now_utc(),
    };
    wire::json_response(StatusCode::CREATED, &wire::user_body(&user))
}

/// `POST /accounts/{accountId}/users?operation=create` -> the decoded account id.
fn route(parts: &Parts) -> Option<String> {
    if parts.method != Method::POST {
        return None;
    }
    let query = parts.uri.query().unwrap_or("");
    if !query.split('&').any(|p| p == "operation=create") {
        return None;
    }
    let rest = parts.uri.path().strip_prefix("/accounts/")?;
    let account = rest.strip_suffix("/users")?;
    if account.contains('/') {
        return None;
    }
    Some(percent_decode_str(account).decode_utf8_lossy().into_owned())
}

fn pattern_violation(account_id: &str, input: &CreateUserBody) -> Option<String> {
    use crate::validate::{ACCOUNT_ID, EMAIL};
    if !ACCOUNT_ID.is_match(account_id) {
        return Some(format!(
            "1 validation error detected: Value at 'accountId' failed to satisfy constraint: Member must satisfy regular expression pattern: {ACCOUNT_ID_PATTERN}"
        ));
    }
    if let Some(email) = &input.email
        && !EMAIL.is_match(email)
    {
        return Some(format!(
            "1 validation error detected: Value at 'email' failed to satisfy constraint: Member must satisfy regular expression pattern: {EMAIL_PATTERN}"
        ));
    }
    match input.user_type.as_deref() {
        None | Some("PrivateUser" | "SharedDevice") => None,
        Some(_) => Some("1 validation error detected: Value at 'userType' failed to satisfy constraint: Member must satisfy enum value set: [PrivateUser, SharedDevice]".to_owned()),
    }
}

fn bad_request(message: &str) -> Response<Body> {
    wire::chime_error(
        StatusCode::BAD_REQUEST,
        "BadRequestException",
        "BadRequest",
        message,
    )
}
