//! End to end over loopback: a tonic client -> the gateway -> the emulator, through the real SDK,
//! SigV4 and all. One test per behaviour of docs/design.md §1 to §3.

mod common;

use std::time::{Duration, Instant};

use chime_gateway::{
    emulator::{DEMO_ACCOUNT_ID, Emulator, EmulatorConfig, Fault, TypeLocation},
    error::{GATEWAY_DOMAIN, UPSTREAM_DOMAIN},
    pb::chime::v1::{
        AlexaForBusinessMetadata, CreateUserRequest, LicenseType, UserInvitationStatus,
        UserRegistrationStatus, UserType,
    },
};
use common::{Gateway, create, emulator, policy, request, request_id, stack};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn creates_a_private_user_end_to_end() {
    let (emu, gw) = stack().await;
    let response = create(&gw, request(Some("jane@example.com"), UserType::PrivateUser))
        .await
        .unwrap();
    let id = request_id(response.metadata()).expect("x-amzn-requestid in initial metadata");
    assert_eq!(id.len(), 36, "{id}");
    let user = response.into_inner().user.unwrap();
    assert_eq!(user.user_id.len(), 36);
    assert_eq!(user.account_id.as_deref(), Some(DEMO_ACCOUNT_ID));
    assert_eq!(user.primary_email.as_deref(), Some("jane@example.com"));
    assert_eq!(user.user_type(), UserType::PrivateUser);
    assert_eq!(user.license_type(), LicenseType::Pro);
    assert_eq!(
        user.user_registration_status(),
        UserRegistrationStatus::Unregistered
    );
    assert_eq!(user.user_invitation_status(), UserInvitationStatus::Pending);
    assert!(user.invited_on.is_some());
    assert!(user.registered_on.is_none());
    assert_eq!(user.primary_provisioned_number, None);
    assert_eq!(user.personal_pin, None);
    assert_eq!(user.display_name, None);
    let alexa = AlexaForBusinessMetadata {
        is_alexa_for_business_enabled: Some(false),
        alexa_for_business_room_arn: None,
    };
    assert_eq!(user.alexa_for_business_metadata, Some(alexa));
    assert_eq!(emu.user_count(DEMO_ACCOUNT_ID), Some(1));
}

#[tokio::test]
async fn creates_a_registered_shared_device() {
    let (_emu, gw) = stack().await;
    let mut req = request(Some("room@example.com"), UserType::SharedDevice);
    req.username = Some("room device".into());
    let user = create(&gw, req).await.unwrap().into_inner().user.unwrap();
    assert_eq!(user.user_type(), UserType::SharedDevice);
    assert_eq!(
        user.user_registration_status(),
        UserRegistrationStatus::Registered
    );
    assert_eq!(user.user_invitation_status(), UserInvitationStatus::Unspecified);
    assert_eq!(user.display_name.as_deref(), Some("room device"));
    let registered = user.registered_on.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((registered.seconds - now).abs() < 60);
    assert_eq!(registered.nanos % 1_000_000, 0, "millisecond precision");
    assert!(user.invited_on.is_none());
}

#[tokio::test]
async fn the_sdk_request_follows_the_rest_binding() {
    let (emu, gw) = stack().await;
    let account = "acct 1/ü";
    emu.add_account(account);
    let req = CreateUserRequest {
        account_id: account.into(),
        email: Some("jane@example.com".into()),
        username: None,
        user_type: UserType::SharedDevice as i32,
        request_id: String::new(),
    };
    create(&gw, req).await.unwrap();
    let sent = emu.requests();
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/accounts/acct%201%2F%C3%BC/users?operation=create");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"Email": "jane@example.com", "UserType": "SharedDevice"})
    );
    let auth = r.header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/"),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/chime/aws4_request"), "{auth}");
}

#[tokio::test]
async fn unset_request_fields_are_not_sent() {
    let (emu, gw) = stack().await;
    create(&gw, request(None, UserType::Unspecified)).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&emu.requests()[0].body).unwrap();
    assert_eq!(body, serde_json::json!({}));
}

#[tokio::test]
async fn a_present_empty_username_is_sent_as_empty() {
    let (emu, gw) = stack().await;
    let mut req = request(None, UserType::Unspecified);
    req.username = Some(String::new());
    let user = create(&gw, req).await.unwrap().into_inner().user.unwrap();
    let body: serde_json::Value = serde_json::from_str(&emu.requests()[0].body).unwrap();
    assert_eq!(body, serde_json::json!({"Username": ""}));
    assert_eq!(
        user.display_name.as_deref(),
        Some(""),
        "\"\" stays a present empty string"
    );
}

async fn assert_invalid_without_upstream_call(req: CreateUserRequest, field: &str) {
    let (emu, gw) = stack().await;
    let status = create(&gw, req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("BadRequest detail").field_violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, field);
    assert_eq!(details.error_info().unwrap().domain, GATEWAY_DOMAIN);
    assert!(emu.requests().is_empty(), "no upstream request may be made");
}

#[tokio::test]
async fn an_empty_account_id_is_rejected_before_any_upstream_call() {
    let mut req = request(None, UserType::Unspecified);
    req.account_id = String::new();
    assert_invalid_without_upstream_call(req, "account_id").await;
}

#[tokio::test]
async fn a_blank_account_id_is_rejected_before_any_upstream_call() {
    let mut req = request(None, UserType::Unspecified);
    req.account_id = "   ".into();
    assert_invalid_without_upstream_call(req, "account_id").await;
}

#[tokio::test]
async fn a_malformed_email_is_rejected_before_any_upstream_call() {
    assert_invalid_without_upstream_call(request(Some("jane.example.com"), UserType::Unspecified), "email")
        .await;
}

#[tokio::test]
async fn an_empty_email_is_rejected_before_any_upstream_call() {
    assert_invalid_without_upstream_call(request(Some(""), UserType::Unspecified), "email").await;
}

#[tokio::test]
async fn an_unknown_user_type_is_rejected_before_any_upstream_call() {
    let mut req = request(None, UserType::Unspecified);
    req.user_type = 42;
    assert_invalid_without_upstream_call(req, "user_type").await;
}

/// The status for one call after `fault` was scripted `times` times, and the attempts made.
///
/// The request has no email, so the gateway never looks a user up: these are the rules of
/// docs/design.md §3 alone (tests/reconciliation.rs has what §7 adds).
async fn status_after(fault: Fault, times: u32) -> (tonic::Status, usize) {
    let (emu, gw) = stack().await;
    emu.inject(fault, times);
    let status = create(&gw, request(None, UserType::PrivateUser))
        .await
        .unwrap_err();
    (status, emu.requests().len())
}

fn info(status: &tonic::Status) -> tonic_types::ErrorInfo {
    status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo on every error")
}

async fn check_documented(http: u16, error_type: &str, code: Code, reason: &str, retried: bool) {
    let (status, attempts) = status_after(Fault::error(http, error_type), 3).await;
    assert_eq!(status.code(), code, "{http}: {status:?}");
    let info = info(&status);
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        (UPSTREAM_DOMAIN, reason)
    );
    assert_eq!(info.metadata["http_status"], http.to_string());
    assert_eq!(info.metadata["aws_error_type"], error_type);
    assert_eq!(attempts, if retried { 3 } else { 1 }, "attempts for {http}");
    assert_eq!(info.metadata["attempts"], attempts.to_string());
    assert_eq!(status.get_error_details().retry_info().is_some(), retried);
    let id = request_id(status.metadata()).expect("x-amzn-requestid in trailers");
    assert_eq!(status.get_error_details().request_info().unwrap().request_id, id);
}

#[tokio::test]
async fn bad_request_is_invalid_argument() {
    check_documented(
        400,
        "BadRequestException",
        Code::InvalidArgument,
        "BAD_REQUEST",
        false,
    )
    .await;
}

#[tokio::test]
async fn unauthorized_is_unauthenticated() {
    check_documented(
        401,
        "UnauthorizedClientException",
        Code::Unauthenticated,
        "UNAUTHORIZED",
        false,
    )
    .await;
}

#[tokio::test]
async fn forbidden_is_permission_denied() {
    check_documented(
        403,
        "ForbiddenException",
        Code::PermissionDenied,
        "FORBIDDEN",
        false,
    )
    .await;
}

#[tokio::test]
async fn not_found_is_not_found() {
    check_documented(404, "NotFoundException", Code::NotFound, "NOT_FOUND", false).await;
}

#[tokio::test]
async fn conflict_is_already_exists() {
    check_documented(409, "ConflictException", Code::AlreadyExists, "CONFLICT", false).await;
}

#[tokio::test]
async fn throttling_is_resource_exhausted_and_retried() {
    check_documented(
        429,
        "ThrottledClientException",
        Code::ResourceExhausted,
        "THROTTLED",
        true,
    )
    .await;
}

#[tokio::test]
async fn service_failure_is_internal_and_not_retried() {
    check_documented(
        500,
        "ServiceFailureException",
        Code::Internal,
        "SERVICE_FAILURE",
        false,
    )
    .await;
}

#[tokio::test]
async fn service_unavailable_is_unavailable_and_retried() {
    check_documented(
        503,
        "ServiceUnavailableException",
        Code::Unavailable,
        "SERVICE_UNAVAILABLE",
        true,
    )
    .await;
}

#[tokio::test]
async fn undocumented_statuses_map_by_status_without_retry() {
    for (http, code) in [
        (408, Code::DeadlineExceeded),
        (412, Code::FailedPrecondition),
        (422, Code::InvalidArgument),
        (499, Code::Cancelled),
        (501, Code::Unimplemented),
        (502, Code::Unavailable),
        (504, Code::DeadlineExceeded),
        (418, Code::Unknown),
    ] {
        let fault = Fault::Error {
            status: http,
            error_type: None,
            type_in: TypeLocation::Nowhere,
            retry_after: None,
        };
        let (status, attempts) = status_after(fault, 3).await;
        assert_eq!(status.code(), code, "{http}");
        assert_eq!(attempts, 1, "{http} is not retried");
        assert_eq!(info(&status).metadata["http_status"], http.to_string());
    }
}

#[tokio::test]
async fn the_error_type_may_come_in_the_body_only() {
    let fault = Fault::Error {
        status: 409,
        error_type: Some("ConflictException".into()),
        type_in: TypeLocation::Body,
        retry_after: None,
    };
    let (status, _) = status_after(fault, 1).await;
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(info(&status).metadata["aws_error_type"], "ConflictException");
}

#[tokio::test]
async fn a_missing_error_type_still_maps_by_status() {
    let fault = Fault::Error {
        status: 404,
        error_type: None,
        type_in: TypeLocation::Nowhere,
        retry_after: None,
    };
    let (status, _) = status_after(fault, 1).await;
    assert_eq!(status.code(), Code::NotFound);
    let info = info(&status);
    assert_eq!(info.reason, "NOT_FOUND");
    assert!(!info.metadata.contains_key("aws_error_type"));
}

#[tokio::test]
async fn retry_after_becomes_the_retry_delay() {
    let emu = emulator().await;
    let gw = Gateway::in_front_of(&emu, common::CallPolicyExt::attempts(1)).await;
    let fault = Fault::Error {
        status: 429,
        error_type: Some("ThrottledClientException".into()),
        type_in: TypeLocation::Header,
        retry_after: Some(4),
    };
    emu.inject(fault, 1);
    let status = create(&gw, request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let delay = status.get_error_details().retry_info().unwrap().retry_delay;
    assert_eq!(delay, Some(Duration::from_secs(4)));
}

// Found by the upstream_error fuzzer: a Retry-After of u64::MAX seconds overflowed the
// gateway's clock arithmetic (a panic in the call) and reached RetryInfo as 10,000 years.
#[tokio::test]
async fn an_absurd_retry_after_is_read_as_a_day_and_not_waited_for() {
    let (emu, gw) = stack().await;
    let fault = Fault::Error {
        status: 429,
        error_type: Some("ThrottledClientException".into()),
        type_in: TypeLocation::Header,
        retry_after: Some(u64::MAX),
    };
    emu.inject(fault, 1);
    let status = create(&gw, request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay = status.get_error_details().retry_info().unwrap().retry_delay;
    assert_eq!(delay, Some(Duration::from_secs(24 * 60 * 60)));
    assert_eq!(emu.requests().len(), 1);
}

#[tokio::test]
async fn a_throttled_attempt_is_retried_after_retry_after_and_succeeds() {
    let (emu, gw) = stack().await;
    let fault = Fault::Error {
        status: 429,
        error_type: Some("ThrottledClientException".into()),
        type_in: TypeLocation::Header,
        retry_after: Some(1),
    };
    emu.inject(fault, 1);
    let started = Instant::now();
    create(&gw, request(Some("jane@example.com"), UserType::PrivateUser))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    assert_eq!(emu.requests().len(), 2);
    assert_eq!(emu.user_count(DEMO_ACCOUNT_ID), Some(1));
}

#[tokio::test]
async fn a_reset_after_sending_is_unavailable_and_not_retried() {
    let (status, attempts) = status_after(Fault::Reset, 3).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(info(&status).reason, "UPSTREAM_CONNECTION_LOST");
    assert!(status.get_error_details().retry_info().is_none());
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn a_success_status_with_a_malformed_body_is_unknown() {
    let (status, attempts) = status_after(Fault::MalformedBody, 3).await;
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    let info = info(&status);
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        (GATEWAY_DOMAIN, "UPSTREAM_BAD_RESPONSE")
    );
    assert_eq!(info.metadata["http_status"], "201");
    assert!(request_id(status.metadata()).is_some());
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn an_attempt_that_times_out_is_deadline_exceeded_and_not_retried() {
    let emu = emulator().await;
    let mut policy = policy();
    policy.upstream_timeout = Duration::from_millis(200);
    let gw = Gateway::in_front_of(&emu, policy).await;
    emu.inject(Fault::Latency { millis: 2_000 }, 3);
    let started = Instant::now();
    let status = create(&gw, request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1_500));
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(info(&status).reason, "UPSTREAM_TIMEOUT");
    assert_eq!(emu.requests().len(), 1);
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_call() {
    let (emu, gw) = stack().await;
    emu.inject(Fault::Latency { millis: 3_000 }, 1);
    let mut req = tonic::Request::new(request(None, UserType::Unspecified));
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = gw.client().await.create_user(req).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1_500));
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The gateway's own answer (with details), not tonic's CANCELLED or a client-side timeout.
    let info = info(&status);
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        (GATEWAY_DOMAIN, "DEADLINE_EXCEEDED")
    );
}

#[tokio::test]
async fn the_default_deadline_applies_when_the_caller_sets_none() {
    let emu = emulator().await;
    let mut policy = policy();
    policy.default_deadline = Duration::from_millis(300);
    let gw = Gateway::in_front_of(&emu, policy).await;
    emu.inject(Fault::Latency { millis: 3_000 }, 1);
    let status = create(&gw, request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(info(&status).reason, "DEADLINE_EXCEEDED");
}

#[tokio::test]
async fn a_refused_connection_is_unavailable_and_retried() {
    // Bound but never listening: connections are refused, and while the socket lives no other
    // test's server can take the port (a dropped listener's port could be reused meanwhile).
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    let gw = Gateway::at_endpoint(&url, "AKIAIOSFODNN7EXAMPLE", "secret", policy()).await;
    let status = create(&gw, request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = info(&status);
    assert_eq!(info.reason, "UPSTREAM_UNREACHABLE");
    assert_eq!(info.metadata["attempts"], "3");
    assert!(status.get_error_details().retry_info().is_some());
}

#[tokio::test]
async fn an_unresolvable_host_is_unavailable_and_retried() {
    let gw = Gateway::at_endpoint("http://chime.invalid", "AKIAIOSFODNN7EXAMPLE", "secret", policy()).await;
    let status = create(&gw, request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(info(&status).reason, "UPSTREAM_UNREACHABLE");
    assert_eq!(info(&status).metadata["attempts"], "3");
}

#[tokio::test]
async fn a_wrong_secret_is_permission_denied() {
    let emu = emulator().await;
    let gw = Gateway::at_endpoint(
        &emu.endpoint_url(),
        "AKIAIOSFODNN7EXAMPLE",
        "not-the-secret",
        policy(),
    )
    .await;
    let status = create(&gw, request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = info(&status);
    assert_eq!(info.metadata["aws_error_type"], "InvalidSignatureException");
    assert_eq!(info.reason, "INVALID_SIGNATURE");
}

#[tokio::test]
async fn an_unknown_account_is_not_found() {
    let (_emu, gw) = stack().await;
    let mut req = request(None, UserType::Unspecified);
    req.account_id = "no-such-account".into();
    let status = create(&gw, req).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(info(&status).metadata["aws_error_type"], "NotFoundException");
}

#[tokio::test]
async fn a_duplicate_email_is_already_exists() {
    let (_emu, gw) = stack().await;
    create(&gw, request(Some("dup@example.com"), UserType::PrivateUser))
        .await
        .unwrap();
    let status = create(&gw, request(Some("DUP@example.com"), UserType::PrivateUser))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(info(&status).reason, "CONFLICT");
}

#[tokio::test]
async fn emulator_throttling_reaches_the_caller_after_the_retries() {
    let config = EmulatorConfig {
        throttle_rps: Some(1),
        ..Default::default()
    };
    let emu = Emulator::start(config).await.unwrap();
    let gw = Gateway::in_front_of(&emu, common::CallPolicyExt::attempts(1)).await;
    create(&gw, request(None, UserType::Unspecified)).await.unwrap();
    let status = create(&gw, request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        info(&status).metadata["aws_error_type"],
        "ThrottledClientException"
    );
    assert_eq!(
        status.get_error_details().retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(1))
    );
}

/// A credential chain that finds nothing, as on a machine with no AWS identity.
#[derive(Debug)]
struct NoCredentials;

impl aws_credential_types::provider::ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let error =
            aws_credential_types::provider::error::CredentialsError::not_loaded("no credentials here");
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(error))
    }
}

#[tokio::test]
async fn missing_credentials_are_unavailable_and_nothing_is_sent() {
    let emu = emulator().await;
    let config = aws_sdk_chime::Config::builder()
        .behavior_version(aws_sdk_chime::config::BehaviorVersion::latest())
        .region(aws_sdk_chime::config::Region::from_static("us-east-1"))
        .endpoint_url(emu.endpoint_url())
        .credentials_provider(NoCredentials);
    let upstream = chime_gateway::chime::SdkUpstream::from_builder(config);
    let gw = Gateway::start(upstream, policy(), 8, Duration::from_secs(1)).await;
    let status = create(&gw, request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = info(&status);
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        (GATEWAY_DOMAIN, "NO_CREDENTIALS")
    );
    assert_eq!(info.metadata["attempts"], "1", "not retried");
    assert!(emu.requests().is_empty());
}
