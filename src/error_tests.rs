//! One test per row of the contract's error table (docs/design.md §3), pure: no I/O.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use super::*;

fn response(status: u16, error_type: Option<&str>, code: Option<&str>) -> UpstreamError {
    UpstreamError::Response(ErrorResponse {
        status,
        error_type: error_type.map(str::to_owned),
        code: code.map(str::to_owned),
        message: Some("upstream says no".to_owned()),
        request_id: Some("req-123".to_owned()),
        retry_after: None,
    })
}

fn io_error() -> BoxError {
    Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
}

fn status_of(error: UpstreamError) -> Status {
    CallError::Upstream {
        error,
        attempts: 1,
        reconciliation: None,
        budget_exhausted: false,
    }
    .to_status()
}

/// Checks a status's code, ErrorInfo domain and reason, and whether RetryInfo is attached.
fn check(status: &Status, code: Code, domain: &str, reason: &str, retry_info: bool) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("every error carries ErrorInfo");
    assert_eq!(info.domain, domain);
    assert_eq!(info.reason, reason);
    assert_eq!(
        details.retry_info().is_some(),
        retry_info,
        "RetryInfo presence for {code:?}"
    );
}

fn check_upstream(status: u16, error_type: &str, code: &str, grpc: Code, reason: &str, retry: bool) {
    let error = response(status, Some(error_type), Some(code));
    assert_eq!(rule(&error).retryable, retry);
    let s = status_of(error);
    check(&s, grpc, UPSTREAM_DOMAIN, reason, retry);
    let info = s.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.metadata["http_status"], status.to_string());
    assert_eq!(info.metadata["aws_error_type"], error_type);
}

#[test]
fn bad_request_maps_to_invalid_argument() {
    check_upstream(
        400,
        "BadRequestException",
        "BadRequest",
        Code::InvalidArgument,
        "BAD_REQUEST",
        false,
    );
}

#[test]
fn unauthorized_maps_to_unauthenticated() {
    check_upstream(
        401,
        "UnauthorizedClientException",
        "Unauthorized",
        Code::Unauthenticated,
        "UNAUTHORIZED",
        false,
    );
}

#[test]
fn forbidden_maps_to_permission_denied() {
    check_upstream(
        403,
        "ForbiddenException",
        "Forbidden",
        Code::PermissionDenied,
        "FORBIDDEN",
        false,
    );
}

#[test]
fn sigv4_rejection_maps_to_permission_denied() {
    let s = status_of(response(403, Some("InvalidSignatureException"), None));
    check(
        &s,
        Code::PermissionDenied,
        UPSTREAM_DOMAIN,
        "INVALID_SIGNATURE",
        false,
    );
}

#[test]
fn not_found_maps_to_not_found() {
    check_upstream(
        404,
        "NotFoundException",
        "NotFound",
        Code::NotFound,
        "NOT_FOUND",
        false,
    );
}

#[test]
fn conflict_maps_to_already_exists() {
    check_upstream(
        409,
        "ConflictException",
        "Conflict",
        Code::AlreadyExists,
        "CONFLICT",
        false,
    );
}

#[test]
fn a_conflict_whose_lookup_did_not_settle_it_is_aborted_with_retry_info() {
    use Reconciliation::*;
    for (reconciliation, code, retry_info) in [
        (None, Code::AlreadyExists, false),
        (Some(NotFound), Code::AlreadyExists, false),
        (Some(Failed), Code::Aborted, true),
        (Some(Deferred), Code::Aborted, true),
        (Some(Skipped), Code::Aborted, true),
    ] {
        let error = CallError::Upstream {
            error: response(409, Some("ConflictException"), Some("Conflict")),
            attempts: 2,
            reconciliation,
            budget_exhausted: false,
        };
        assert_eq!(error.code(), code, "{reconciliation:?}");
        let s = error.to_status();
        check(&s, code, UPSTREAM_DOMAIN, "CONFLICT", retry_info);
        let info = s.get_error_details().error_info().cloned().unwrap();
        let expected = reconciliation.map(|r| r.as_str().to_owned());
        assert_eq!(info.metadata.get("reconciliation").cloned(), expected);
    }
    // Any other failure keeps its code whatever its lookup came to.
    let lost = CallError::Upstream {
        error: response(500, None, None),
        attempts: 1,
        reconciliation: Some(Failed),
        budget_exhausted: false,
    };
    assert_eq!(lost.code(), Code::Internal);
    assert_eq!(lost.to_status().code(), Code::Internal);
}

#[test]
fn throttled_maps_to_resource_exhausted_with_retry_info_and_is_retried() {
    check_upstream(
        429,
        "ThrottledClientException",
        "Throttled",
        Code::ResourceExhausted,
        "THROTTLED",
        true,
    );
}

#[test]
fn service_failure_maps_to_internal_and_is_not_retried() {
    check_upstream(
        500,
        "ServiceFailureException",
        "ServiceFailure",
        Code::Internal,
        "SERVICE_FAILURE",
        false,
    );
}

#[test]
fn service_unavailable_maps_to_unavailable_with_retry_info_and_is_retried() {
    check_upstream(
        503,
        "ServiceUnavailableException",
        "ServiceUnavailable",
        Code::Unavailable,
        "SERVICE_UNAVAILABLE",
        true,
    );
}

#[test]
fn undocumented_statuses_map_per_the_table() {
    for (status, code) in [
        (408, Code::DeadlineExceeded),
        (412, Code::FailedPrecondition),
        (422, Code::InvalidArgument),
        (499, Code::Cancelled),
        (501, Code::Unimplemented),
        (502, Code::Unavailable),
        (504, Code::DeadlineExceeded),
    ] {
        let error = response(status, None, None);
        assert!(!rule(&error).retryable, "{status}");
        assert_eq!(status_of(error).code(), code, "{status}");
    }
}

#[test]
fn any_other_status_maps_to_unknown() {
    for status in [302, 418, 451, 507, 599] {
        let s = status_of(response(status, None, None));
        check(
            &s,
            Code::Unknown,
            UPSTREAM_DOMAIN,
            &format!("HTTP_{status}"),
            false,
        );
    }
}

#[test]
fn mapping_is_by_status_even_when_the_type_disagrees() {
    let s = status_of(response(409, Some("SomethingNewException"), None));
    check(&s, Code::AlreadyExists, UPSTREAM_DOMAIN, "SOMETHING_NEW", false);
}

#[test]
fn a_missing_type_and_code_still_maps_by_status() {
    let s = status_of(response(404, None, None));
    check(&s, Code::NotFound, UPSTREAM_DOMAIN, "NOT_FOUND", false);
    let info = s.get_error_details().error_info().cloned().unwrap();
    assert!(!info.metadata.contains_key("aws_error_type"));
}

#[test]
fn never_sent_maps_to_unavailable_with_retry_info_and_is_retried() {
    let error = UpstreamError::NotSent(io_error());
    assert!(rule(&error).retryable);
    check(
        &status_of(error),
        Code::Unavailable,
        GATEWAY_DOMAIN,
        "UPSTREAM_UNREACHABLE",
        true,
    );
}

#[test]
fn connection_lost_after_sending_maps_to_unavailable_without_retry() {
    let error = UpstreamError::ConnectionLost(io_error());
    assert!(!rule(&error).retryable);
    check(
        &status_of(error),
        Code::Unavailable,
        GATEWAY_DOMAIN,
        "UPSTREAM_CONNECTION_LOST",
        false,
    );
}

#[test]
fn attempt_timeout_maps_to_deadline_exceeded_without_retry() {
    let error = UpstreamError::AttemptTimeout;
    assert!(!rule(&error).retryable);
    check(
        &status_of(error),
        Code::DeadlineExceeded,
        GATEWAY_DOMAIN,
        "UPSTREAM_TIMEOUT",
        false,
    );
}

#[test]
fn unparseable_success_body_maps_to_unknown() {
    let error = UpstreamError::Unparseable {
        status: 201,
        request_id: Some("r".into()),
        source: io_error(),
    };
    assert!(!rule(&error).retryable);
    let s = status_of(error);
    check(&s, Code::Unknown, GATEWAY_DOMAIN, "UPSTREAM_BAD_RESPONSE", false);
    assert_eq!(
        s.get_error_details().error_info().unwrap().metadata["http_status"],
        "201"
    );
    assert_eq!(s.metadata().get(REQUEST_ID_KEY).unwrap(), "r");
}

#[test]
fn missing_credentials_map_to_unavailable_without_retry() {
    let error = UpstreamError::NoCredentials(io_error());
    assert!(!rule(&error).retryable);
    check(
        &status_of(error),
        Code::Unavailable,
        GATEWAY_DOMAIN,
        "NO_CREDENTIALS",
        false,
    );
}

#[test]
fn overload_maps_to_unavailable_with_retry_info() {
    check(
        &CallError::Overloaded.to_status(),
        Code::Unavailable,
        GATEWAY_DOMAIN,
        "OVERLOADED",
        true,
    );
}

#[test]
fn shutting_down_maps_to_unavailable_with_retry_info() {
    check(
        &CallError::ShuttingDown.to_status(),
        Code::Unavailable,
        GATEWAY_DOMAIN,
        "SHUTTING_DOWN",
        true,
    );
}

#[test]
fn the_callers_deadline_maps_to_deadline_exceeded() {
    let s = CallError::DeadlineExceeded { attempts: 2 }.to_status();
    check(
        &s,
        Code::DeadlineExceeded,
        GATEWAY_DOMAIN,
        "DEADLINE_EXCEEDED",
        false,
    );
}

#[test]
fn a_deadline_spent_waiting_for_an_upstream_connection_says_so() {
    let s = CallError::UpstreamBusy { attempts: 1 }.to_status();
    check(&s, Code::DeadlineExceeded, GATEWAY_DOMAIN, "UPSTREAM_BUSY", false);
    assert!(
        s.message().contains("every upstream connection was busy"),
        "{}",
        s.message()
    );
}

#[test]
fn a_create_the_throttle_refused_is_resource_exhausted_saying_so_with_when_to_come_back() {
    let retry_after = Duration::from_millis(1250);
    let s = CallError::RateLimited { retry_after }.to_status();
    check(
        &s,
        Code::ResourceExhausted,
        GATEWAY_DOMAIN,
        "ADAPTIVE_THROTTLE",
        true,
    );
    let details = s.get_error_details();
    assert_eq!(details.error_info().unwrap().metadata["operation"], "create_user");
    assert_eq!(details.retry_info().unwrap().retry_delay, Some(retry_after));
}

fn stopped(status: u16, reconciliation: Option<Reconciliation>, budget_exhausted: bool) -> Status {
    CallError::Upstream {
        error: response(status, None, None),
        attempts: 1,
        reconciliation,
        budget_exhausted,
    }
    .to_status()
}

#[test]
fn a_call_the_retry_budget_stopped_says_so_with_a_spread_retry_delay() {
    let mut delays = Vec::new();
    for _ in 0..50 {
        let s = stopped(503, None, true);
        check(
            &s,
            Code::Unavailable,
            UPSTREAM_DOMAIN,
            "SERVICE_UNAVAILABLE",
            true,
        );
        let details = s.get_error_details();
        assert_eq!(
            details.error_info().unwrap().metadata["retry_budget"],
            "exhausted"
        );
        let delay = details.retry_info().unwrap().retry_delay.unwrap();
        assert!(
            (DEFAULT_RETRY_DELAY..=DEFAULT_RETRY_DELAY * 2).contains(&delay),
            "{delay:?}"
        );
        delays.push(delay);
    }
    delays.dedup();
    assert!(delays.len() > 1, "spread, not one delay for every caller");
    // An error without RetryInfo of its own gets one when the budget stopped it.
    let s = stopped(500, Some(Reconciliation::NotFound), true);
    check(&s, Code::Internal, UPSTREAM_DOMAIN, "SERVICE_FAILURE", true);
    // Retry-After still wins.
    let mut throttled = response(429, None, None);
    if let UpstreamError::Response(r) = &mut throttled {
        r.retry_after = Some(Duration::from_secs(3));
    }
    let s = CallError::Upstream {
        error: throttled,
        attempts: 2,
        reconciliation: None,
        budget_exhausted: true,
    }
    .to_status();
    let details = s.get_error_details();
    assert_eq!(
        details.retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(3))
    );
    // Not stopped: no such key.
    let s = stopped(503, None, false);
    let info = s.get_error_details().error_info().cloned().unwrap();
    assert!(!info.metadata.contains_key("retry_budget"));
}

#[test]
fn a_deferred_lookup_is_the_original_status_with_retry_info() {
    let s = stopped(500, Some(Reconciliation::Deferred), false);
    check(&s, Code::Internal, UPSTREAM_DOMAIN, "SERVICE_FAILURE", true);
    let info = s.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.metadata["reconciliation"], "deferred");
    let s = stopped(500, Some(Reconciliation::Skipped), true);
    let info = s.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.metadata["reconciliation"], "skipped");
    assert_eq!(info.metadata["retry_budget"], "exhausted");
    assert_eq!(Reconciliation::Deferred.as_str(), "deferred");
    assert_eq!(Reconciliation::Skipped.as_str(), "skipped");
}

#[test]
fn validation_failures_carry_bad_request_field_violations() {
    let violations = vec![
        FieldViolation {
            field: "account_id",
            description: "required".into(),
        },
        FieldViolation {
            field: "email",
            description: "pattern".into(),
        },
    ];
    let s = CallError::Invalid(violations).to_status();
    check(
        &s,
        Code::InvalidArgument,
        GATEWAY_DOMAIN,
        "INVALID_REQUEST",
        false,
    );
    let details = s.get_error_details();
    let fields: Vec<_> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, ["account_id", "email"]);
}

#[test]
fn retry_after_sets_the_retry_delay() {
    let error = UpstreamError::Response(ErrorResponse {
        status: 429,
        retry_after: Some(Duration::from_secs(7)),
        ..Default::default()
    });
    let s = status_of(error);
    assert_eq!(
        s.get_error_details().retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(7))
    );
}

#[test]
fn without_retry_after_the_default_delay_is_given() {
    let s = status_of(response(503, None, None));
    assert_eq!(
        s.get_error_details().retry_info().unwrap().retry_delay,
        Some(DEFAULT_RETRY_DELAY)
    );
}

#[test]
fn the_request_id_is_returned_as_request_info_and_metadata() {
    let s = status_of(response(409, Some("ConflictException"), Some("Conflict")));
    assert_eq!(
        s.get_error_details().request_info().unwrap().request_id,
        "req-123"
    );
    assert_eq!(s.metadata().get(REQUEST_ID_KEY).unwrap(), "req-123");
}

#[test]
fn the_upstream_message_reaches_the_caller() {
    let s = status_of(response(409, Some("ConflictException"), Some("Conflict")));
    assert!(s.message().contains("409"), "{}", s.message());
    assert!(s.message().contains("ConflictException"));
    assert!(s.message().contains("upstream says no"));
}

#[test]
fn upper_snake_handles_camel_case_and_acronyms() {
    assert_eq!(upper_snake("Conflict"), "CONFLICT");
    assert_eq!(upper_snake("ServiceUnavailable"), "SERVICE_UNAVAILABLE");
    assert_eq!(
        upper_snake("VoiceConnectorGroupAssociationsExist"),
        "VOICE_CONNECTOR_GROUP_ASSOCIATIONS_EXIST"
    );
    assert_eq!(upper_snake("AccessDenied"), "ACCESS_DENIED");
    assert_eq!(upper_snake("HTTPError"), "HTTP_ERROR");
}

#[test]
fn the_reason_prefers_the_body_code_then_the_type_then_the_status() {
    let r = |t: Option<&str>, c: Option<&str>, s: u16| ErrorResponse {
        status: s,
        error_type: t.map(str::to_owned),
        code: c.map(str::to_owned),
        ..Default::default()
    };
    assert_eq!(
        upstream_reason(&r(Some("ThrottledClientException"), Some("Throttling"), 429)),
        "THROTTLING"
    );
    assert_eq!(
        upstream_reason(&r(Some("ThrottledClientException"), None, 429)),
        "THROTTLED"
    );
    assert_eq!(upstream_reason(&r(None, None, 429)), "THROTTLED");
}

#[test]
fn with_neither_code_nor_type_the_reason_comes_from_the_status() {
    for (status, reason) in [
        (400, "BAD_REQUEST"),
        (401, "UNAUTHORIZED"),
        (403, "FORBIDDEN"),
        (404, "NOT_FOUND"),
        (409, "CONFLICT"),
        (412, "PRECONDITION_FAILED"),
        (422, "UNPROCESSABLE"),
        (429, "THROTTLED"),
        (500, "SERVICE_FAILURE"),
        (503, "SERVICE_UNAVAILABLE"),
        (502, "HTTP_502"),
        (418, "HTTP_418"),
    ] {
        let bare = ErrorResponse {
            status,
            ..Default::default()
        };
        assert_eq!(upstream_reason(&bare), reason, "{status}");
    }
}

#[test]
fn the_gateway_reason_of_every_error_is_its_error_info_reason() {
    let io = || -> BoxError { "x".into() };
    let errors = vec![
        CallError::Invalid(vec![]),
        CallError::RequestIdReused,
        CallError::DeadlineExceeded { attempts: 1 },
        CallError::UpstreamBusy { attempts: 0 },
        CallError::RateLimited {
            retry_after: Duration::from_millis(250),
        },
        CallError::Overloaded,
        CallError::ShuttingDown,
        CallError::Upstream {
            error: UpstreamError::Response(ErrorResponse {
                status: 409,
                ..Default::default()
            }),
            attempts: 1,
            reconciliation: None,
            budget_exhausted: false,
        },
    ]
    .into_iter()
    .chain(
        [
            UpstreamError::Unparseable {
                status: 201,
                request_id: None,
                source: io(),
            },
            UpstreamError::NotSent(io()),
            UpstreamError::ConnectionLost(io()),
            UpstreamError::AttemptTimeout,
            UpstreamError::NoCredentials(io()),
            UpstreamError::Construction(io()),
        ]
        .into_iter()
        .map(|error| CallError::Upstream {
            error,
            attempts: 1,
            reconciliation: None,
            budget_exhausted: false,
        }),
    );
    let mut seen = Vec::new();
    for error in errors {
        let status = error.to_status();
        let info = status.get_error_details().error_info().cloned().unwrap();
        match error.gateway_reason() {
            Some(reason) => {
                assert_eq!(
                    (reason, info.domain.as_str()),
                    (info.reason.as_str(), GATEWAY_DOMAIN)
                );
                seen.push(reason);
            }
            None => assert_eq!(info.domain, UPSTREAM_DOMAIN, "{error:?}"),
        }
    }
    seen.sort_unstable();
    let mut all = GATEWAY_REASONS.to_vec();
    all.sort_unstable();
    assert_eq!(
        seen, all,
        "GATEWAY_REASONS lists exactly the reasons the gateway gives"
    );
}

// Found by the upstream_error fuzzer: an upstream code or type that does not make a reason of
// ErrorInfo's form (`[A-Z][A-Z0-9_]+[A-Z0-9]`) gave that text as the reason.
#[test]
fn a_code_or_type_that_is_no_reason_is_passed_over() {
    let response = |status, code: Option<&str>, error_type: Option<&str>| ErrorResponse {
        status,
        error_type: error_type.map(str::to_owned),
        code: code.map(str::to_owned),
        message: None,
        request_id: None,
        retry_after: None,
    };
    assert_eq!(upstream_reason(&response(409, Some("A"), None)), "CONFLICT");
    assert_eq!(
        upstream_reason(&response(409, Some("no such thing"), Some("ConflictException"))),
        "CONFLICT"
    );
    assert_eq!(upstream_reason(&response(100, None, Some("!"))), "HTTP_100");
    assert_eq!(upstream_reason(&response(418, Some("Ünïcode"), None)), "HTTP_418");
    assert_eq!(
        upstream_reason(&response(400, Some(&"Long".repeat(20)), None)),
        "BAD_REQUEST"
    );
    assert!(is_reason("THROTTLED") && is_reason("HTTP_503") && is_reason("A_1"));
    assert!(!is_reason("AB") && !is_reason("A_") && !is_reason("_AB") && !is_reason("aBC"));
}

// Kills a mutant (the upstream metric's `http_status` label of a 2xx with an unreadable body was
// "none"): every answer the upstream gave has its status; no answer has none.
#[test]
fn the_http_status_is_known_exactly_when_the_upstream_answered() {
    let unparseable = UpstreamError::Unparseable {
        status: 201,
        request_id: None,
        source: io_error(),
    };
    assert_eq!(unparseable.http_status(), Some(201));
    let response = UpstreamError::Response(crate::chime::error_response(409, &Default::default(), b""));
    assert_eq!(response.http_status(), Some(409));
    assert_eq!(UpstreamError::AttemptTimeout.http_status(), None);
    assert_eq!(UpstreamError::NotSent(io_error()).http_status(), None);
}
