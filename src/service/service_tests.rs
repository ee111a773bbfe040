//! The call policy with a scripted in-memory upstream: no sockets. Retries, reconciliation of
//! unknown outcomes and request ids, rule by rule (docs/design.md §3 and §7).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use aws_sdk_chime::{
    operation::create_user::{CreateUserInput, CreateUserOutput},
    types::User,
};
use tonic::Code;
use tonic_types::StatusExt;

use super::*;
use crate::{chime::Created, error::ErrorResponse, idempotency::Keep};
use prost::Message as _;
use tonic::metadata::MetadataMap;

type LookupAnswer = Result<Option<Found>, UpstreamError>;

/// Answers from scripts; counts attempts and lookups; an empty script answers success (a
/// created user `created-N`) and no user found.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<UpstreamError>>,
    lookups_script: Mutex<VecDeque<LookupAnswer>>,
    attempts: AtomicU32,
    lookups: AtomicU32,
    delay: Duration,
    lookup_delay: Duration,
}

impl Upstream for Arc<Scripted> {
    async fn create_user(&self, _input: CreateUserInput) -> Result<Created, UpstreamError> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.delay).await;
        match self.script.lock().unwrap().pop_front() {
            Some(error) => Err(error),
            None => Ok(Created {
                output: CreateUserOutput::builder()
                    .user(user(&format!("created-{n}")))
                    .build(),
                request_id: Some(format!("create-request-{n}")),
            }),
        }
    }

    async fn find_user_by_email(&self, _account_id: &str, _email: &str) -> LookupAnswer {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.lookup_delay).await;
        self.lookups_script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(None))
    }
}

fn user(id: &str) -> User {
    User::builder()
        .user_id(id)
        .primary_email("jane@example.com")
        .build()
        .unwrap()
}

fn found(id: &str) -> LookupAnswer {
    Ok(Some(Found {
        user: user(id),
        request_id: Some("list-request".into()),
    }))
}

fn status(http: u16, retry_after: Option<Duration>) -> UpstreamError {
    UpstreamError::Response(ErrorResponse {
        status: http,
        retry_after,
        ..Default::default()
    })
}

fn policy(max_attempts: u32) -> CallPolicy {
    CallPolicy {
        upstream_timeout: Duration::from_secs(1),
        default_deadline: Duration::from_secs(2),
        max_attempts,
        backoff: Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        },
        reconcile: true,
    }
}

fn gateway(script: Vec<UpstreamError>, max_attempts: u32) -> (ChimeGateway<Arc<Scripted>>, Arc<Scripted>) {
    let upstream = Arc::new(Scripted {
        script: Mutex::new(script.into()),
        ..Default::default()
    });
    // Every protection at its default: the retry budget's reserve and the adaptive throttle
    // never stand in the way of the few faults a test scripts.
    let gateway = ChimeGateway::new(upstream.clone(), policy(max_attempts), 4);
    (gateway, upstream)
}

fn valid() -> Request<CreateUserRequest> {
    Request::new(CreateUserRequest {
        account_id: "a".into(),
        ..Default::default()
    })
}

const ID: &str = "3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b90";

/// A request with an email (so unknown outcomes can be looked up) and the request id `id`.
fn with_email(id: &str) -> Request<CreateUserRequest> {
    Request::new(CreateUserRequest {
        account_id: "a".into(),
        email: Some("jane@example.com".into()),
        request_id: id.into(),
        ..Default::default()
    })
}

fn scripted(script: Vec<UpstreamError>, lookups: Vec<LookupAnswer>) -> Arc<Scripted> {
    Arc::new(Scripted {
        script: Mutex::new(script.into()),
        lookups_script: Mutex::new(lookups.into()),
        ..Default::default()
    })
}

fn counts(up: &Scripted) -> (u32, u32) {
    (
        up.attempts.load(Ordering::SeqCst),
        up.lookups.load(Ordering::SeqCst),
    )
}

fn flag(metadata: &MetadataMap, key: &str) -> bool {
    metadata.get(key).is_some_and(|v| v == "true")
}

fn user_id(response: &Response<CreateUserResponse>) -> String {
    response.get_ref().user.as_ref().unwrap().user_id.clone()
}

/// The ErrorInfo reason and its `reconciliation` metadata.
fn reconciliation(status: &Status) -> (String, Option<String>) {
    let info = status.get_error_details().error_info().cloned().unwrap();
    (info.reason, info.metadata.get("reconciliation").cloned())
}

fn lost() -> UpstreamError {
    UpstreamError::ConnectionLost("reset".into())
}

#[tokio::test]
async fn retryable_failures_are_retried_until_success() {
    let (gw, up) = gateway(vec![status(503, None), status(429, None)], 3);
    gw.create_user(valid()).await.unwrap();
    assert_eq!(up.attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retries_stop_at_max_attempts() {
    let (gw, up) = gateway((0..5).map(|_| status(503, None)).collect(), 2);
    let s = gw.create_user(valid()).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(up.attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failures_with_unknown_outcome_are_never_retried_without_an_email_to_look_up() {
    for error in [
        status(500, None),
        UpstreamError::AttemptTimeout,
        UpstreamError::ConnectionLost("reset".into()),
    ] {
        let (gw, up) = gateway(vec![error], 5);
        gw.create_user(valid()).await.unwrap_err();
        assert_eq!(counts(&up), (1, 0));
    }
}

#[tokio::test]
async fn an_unknown_outcome_whose_user_is_found_answers_ok_reconciled() {
    for error in [
        status(500, None),
        status(502, None),
        status(504, None),
        UpstreamError::AttemptTimeout,
        lost(),
    ] {
        let up = scripted(vec![error], vec![found("stored")]);
        let gw = ChimeGateway::new(up.clone(), policy(3), 4);
        let response = gw.create_user(with_email("")).await.unwrap();
        assert_eq!(user_id(&response), "stored");
        assert!(flag(response.metadata(), RECONCILED_KEY));
        assert!(!flag(response.metadata(), REPLAYED_KEY));
        assert_eq!(response.metadata().get(REQUEST_ID_KEY).unwrap(), "list-request");
        assert_eq!(counts(&up), (1, 1));
    }
}

#[tokio::test]
async fn a_user_not_found_after_an_unknown_outcome_is_created_by_another_attempt() {
    let up = scripted(vec![lost()], vec![Ok(None)]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let response = gw.create_user(with_email("")).await.unwrap();
    assert_eq!(user_id(&response), "created-2");
    assert!(!flag(response.metadata(), RECONCILED_KEY));
    assert_eq!(counts(&up), (2, 1));
}

#[tokio::test]
async fn not_found_with_no_attempt_left_is_the_original_status_marked_not_found() {
    let up = scripted(vec![status(500, None)], vec![Ok(None)]);
    let gw = ChimeGateway::new(up.clone(), policy(1), 4);
    let s = gw.create_user(with_email("")).await.unwrap_err();
    assert_eq!(s.code(), Code::Internal);
    assert_eq!(
        reconciliation(&s),
        ("SERVICE_FAILURE".into(), Some("not_found".into()))
    );
    assert_eq!(counts(&up), (1, 1));
}

#[tokio::test]
async fn a_failed_lookup_leaves_the_original_status_marked_failed() {
    let denied = UpstreamError::Response(ErrorResponse {
        status: 403,
        error_type: Some("ForbiddenException".into()),
        ..Default::default()
    });
    let up = scripted(vec![UpstreamError::AttemptTimeout], vec![Err(denied)]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let s = gw.create_user(with_email("")).await.unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded, "never the lookup's 403");
    assert_eq!(
        reconciliation(&s),
        ("UPSTREAM_TIMEOUT".into(), Some("failed".into()))
    );
    assert_eq!(counts(&up), (1, 1));
}

#[tokio::test]
async fn a_lookup_cut_by_the_deadline_leaves_the_original_status_marked_failed() {
    let up = Arc::new(Scripted {
        script: Mutex::new(vec![lost()].into()),
        lookup_delay: Duration::from_secs(10),
        ..Default::default()
    });
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let mut request = with_email("");
    request
        .metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let started = Instant::now();
    let s = gw.create_user(request).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(
        reconciliation(&s),
        ("UPSTREAM_CONNECTION_LOST".into(), Some("failed".into()))
    );
}

#[tokio::test]
async fn without_an_email_or_with_reconcile_off_nothing_is_looked_up() {
    let up = scripted(vec![lost()], vec![found("stored")]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let s = gw.create_user(valid()).await.unwrap_err();
    assert_eq!(reconciliation(&s), ("UPSTREAM_CONNECTION_LOST".into(), None));
    let up = scripted(vec![lost()], vec![found("stored")]);
    let off = CallPolicy {
        reconcile: false,
        ..policy(3)
    };
    let gw = ChimeGateway::new(up.clone(), off, 4);
    let s = gw.create_user(with_email("")).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(counts(&up), (1, 0));
}

#[tokio::test]
async fn a_conflict_after_an_unknown_outcome_in_the_same_call_is_looked_up() {
    // The first attempt's create landed; the lookup ran before it was visible; the retry conflicts.
    let up = scripted(vec![lost(), status(409, None)], vec![Ok(None), found("first")]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let response = gw.create_user(with_email("")).await.unwrap();
    assert_eq!(user_id(&response), "first");
    assert!(flag(response.metadata(), RECONCILED_KEY));
    assert_eq!(counts(&up), (2, 2));
}

#[tokio::test]
async fn a_conflict_with_nothing_in_doubt_is_already_exists_without_a_lookup() {
    let up = scripted(vec![status(409, None)], vec![found("someone-else")]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let s = gw.create_user(with_email(ID)).await.unwrap_err();
    assert_eq!(s.code(), Code::AlreadyExists);
    assert_eq!(counts(&up), (1, 0));
}

#[tokio::test]
async fn a_conflict_on_the_repeat_of_a_call_left_in_doubt_is_looked_up() {
    // Call 1 lost its answer and could not look the user up; call 2 conflicts with call 1's user.
    let up = scripted(
        vec![lost(), status(409, None)],
        vec![Err(UpstreamError::AttemptTimeout), found("first")],
    );
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let s = gw.create_user(with_email(ID)).await.unwrap_err();
    assert_eq!(reconciliation(&s).1.as_deref(), Some("failed"));
    let response = gw.create_user(with_email(ID)).await.unwrap();
    assert_eq!(user_id(&response), "first");
    assert!(flag(response.metadata(), RECONCILED_KEY));
    assert!(
        !flag(response.metadata(), REPLAYED_KEY),
        "call 2 made its own attempt"
    );
    let third = gw.create_user(with_email(ID)).await.unwrap();
    assert_eq!(user_id(&third), "first");
    assert!(
        flag(third.metadata(), REPLAYED_KEY),
        "the reconciled user is kept"
    );
    assert_eq!(counts(&up), (2, 2));
}

#[tokio::test]
async fn a_conflict_on_the_repeat_of_a_call_that_provably_sent_nothing_is_not_looked_up() {
    let up = scripted(vec![status(429, None), status(409, None)], vec![found("x")]);
    let gw = ChimeGateway::new(up.clone(), policy(1), 4);
    assert_eq!(
        gw.create_user(with_email(ID)).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    let s = gw.create_user(with_email(ID)).await.unwrap_err();
    assert_eq!(s.code(), Code::AlreadyExists);
    assert_eq!(counts(&up), (2, 0));
}

#[tokio::test]
async fn a_repeat_gets_the_first_answer_without_an_upstream_call() {
    let up = scripted(vec![], vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let first = gw.create_user(with_email(ID)).await.unwrap();
    assert!(!flag(first.metadata(), REPLAYED_KEY));
    let again = gw.create_user(with_email(ID)).await.unwrap();
    assert_eq!(again.get_ref(), first.get_ref());
    assert!(flag(again.metadata(), REPLAYED_KEY));
    assert_eq!(
        again.metadata().get(REQUEST_ID_KEY),
        first.metadata().get(REQUEST_ID_KEY)
    );
    assert_eq!(counts(&up), (1, 0));
    let other_id = gw
        .create_user(with_email("3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b91"))
        .await
        .unwrap();
    assert_eq!(user_id(&other_id), "created-2");
}

#[tokio::test]
async fn final_refusals_are_kept_and_transient_ones_are_not() {
    for (http, kept) in [
        (400, true),
        (401, true),
        (403, true),
        (404, true),
        (409, true),
        (412, true),
        (422, true),
        (429, false),
        (503, false),
        (500, false),
        (502, false),
        (504, false),
        (408, false),
        (501, false),
    ] {
        let up = scripted(vec![status(http, None)], vec![]);
        let gw = ChimeGateway::new(up.clone(), policy(1), 4);
        let mut request = with_email(ID).into_inner();
        // No email: nothing is looked up, so only the keeping is under test.
        request.email = None;
        let first = gw.create_user(Request::new(request.clone())).await.unwrap_err();
        let again = gw.create_user(Request::new(request)).await;
        if kept {
            let again = again.unwrap_err();
            assert_eq!(again.code(), first.code(), "{http}");
            assert_eq!(again.message(), first.message(), "{http}");
            assert!(flag(again.metadata(), REPLAYED_KEY), "{http}");
            assert_eq!(counts(&up).0, 1, "{http}");
        } else {
            assert!(again.is_ok(), "{http}: the repeat runs again");
            assert_eq!(counts(&up).0, 2, "{http}");
        }
    }
}

#[tokio::test]
async fn a_request_id_reused_for_another_request_is_refused_without_an_upstream_call() {
    let up = scripted(vec![], vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    gw.create_user(with_email(ID)).await.unwrap();
    let mut other = with_email(ID);
    other.get_mut().username = Some("jane".into());
    let s = gw.create_user(other).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    let details = s.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("REQUEST_ID_REUSED", "chime-gateway")
    );
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].field,
        "request_id"
    );
    assert_eq!(counts(&up), (1, 0));
}

#[tokio::test]
async fn a_repeat_during_the_first_call_waits_for_it_and_gets_its_answer() {
    let up = Arc::new(Scripted {
        delay: Duration::from_millis(200),
        ..Default::default()
    });
    let gw = Arc::new(ChimeGateway::new(up.clone(), policy(3), 8));
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.create_user(with_email(ID)).await.unwrap() })
        })
        .collect();
    let mut replayed = 0;
    for call in calls {
        let response = call.await.unwrap();
        assert_eq!(user_id(&response), "created-1");
        replayed += usize::from(flag(response.metadata(), REPLAYED_KEY));
    }
    assert_eq!(replayed, 3);
    assert_eq!(counts(&up), (1, 0));
}

#[tokio::test]
async fn a_repeat_waits_for_the_first_call_only_within_its_own_deadline() {
    let up = Arc::new(Scripted {
        delay: Duration::from_millis(500),
        ..Default::default()
    });
    let gw = Arc::new(ChimeGateway::new(up.clone(), policy(3), 8));
    let first = tokio::spawn({
        let gw = gw.clone();
        async move { gw.create_user(with_email(ID)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut hurried = with_email(ID);
    hurried
        .metadata_mut()
        .insert("grpc-timeout", "100m".parse().unwrap());
    let started = Instant::now();
    let s = gw.create_user(hurried).await.unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert!(first.await.unwrap().is_ok());
    assert_eq!(counts(&up), (1, 0));
}

#[tokio::test]
async fn a_retry_that_would_pass_the_deadline_is_not_made() {
    let (gw, up) = gateway(vec![status(429, Some(Duration::from_secs(60)))], 5);
    let started = Instant::now();
    let s = gw.create_user(valid()).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(up.attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_refused_at_once() {
    let upstream = Arc::new(Scripted {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let gw = Arc::new(ChimeGateway::new(upstream, policy(1), 2));
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.create_user(valid()).await.map(|_| ()).map_err(|s| s.code()) })
        })
        .collect();
    let mut codes = Vec::new();
    for call in calls {
        codes.push(call.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| c.is_ok()).count(), 2, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|c| **c == Err(Code::Unavailable)).count(),
        3,
        "{codes:?}"
    );
}

#[tokio::test]
async fn invalid_requests_never_reach_the_upstream() {
    let (gw, up) = gateway(vec![], 3);
    let s = gw
        .create_user(Request::new(CreateUserRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(up.attempts.load(Ordering::SeqCst), 0);
}

#[test]
fn grpc_timeout_units_are_parsed() {
    let parse = |v: &str| {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        caller_timeout(&m)
    };
    assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
    assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
    assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
    assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
    assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
    assert_eq!(parse("123456789S"), None, "at most 8 digits");
    assert_eq!(
        parse("99999999S"),
        Some(Duration::from_secs(99_999_999)),
        "8 digits"
    );
    assert_eq!(parse("S"), None);
    assert_eq!(parse("10x"), None);
    assert_eq!(caller_timeout(&MetadataMap::new()), None);
}

#[tokio::test]
async fn a_call_whose_deadline_leaves_no_time_sends_nothing() {
    let (gw, up) = gateway(vec![], 3);
    for id in ["", ID] {
        let mut request = with_email(id);
        // 2 ms, less than the margin the gateway keeps to answer in time.
        request
            .metadata_mut()
            .insert("grpc-timeout", "2m".parse().unwrap());
        let s = gw.create_user(request).await.unwrap_err();
        assert_eq!(s.code(), Code::DeadlineExceeded, "{id:?}");
    }
    assert_eq!(counts(&up), (0, 0));
}

// Kills a mutant (`15 * 60` -> `15 + 60`): a service built without settings keeps request ids as
// long, and as many, as the command line's defaults say.
#[test]
fn the_ledger_defaults_are_the_command_lines() {
    use clap::Parser;
    let c = crate::config::Config::try_parse_from(["chime-gateway"]).unwrap();
    assert_eq!(DEFAULT_IDEMPOTENCY_TTL, c.idempotency_ttl);
    assert_eq!(DEFAULT_IDEMPOTENCY_CAPACITY, c.idempotency_capacity);
}

// Kills a mutant (`<<` -> `>>`): the ceiling doubles with each failed attempt.
#[test]
fn the_backoff_ceiling_doubles_with_each_failure() {
    let b = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_secs(1),
    };
    let longest = (0..200).map(|_| b.delay(4, None)).max().unwrap();
    assert!(longest > Duration::from_millis(40), "{longest:?}");
    assert!(longest <= Duration::from_millis(80), "{longest:?}");
}

// Kills the mutants of what a kept answer is stored as: a kept user is its encoded response and
// its request id, written in one allocation of its exact size; a kept refusal, its texts. What is
// stored replays as the answer it was made from, with and without an upstream request id,
// reconciled or not, with and without `Retry-After`.
#[test]
fn a_kept_answer_is_stored_as_what_it_holds_and_replays_as_itself() {
    let user = |name: &str, id: Option<&str>, reconciled: bool| -> usize {
        let message = CreateUserResponse {
            user: Some(crate::pb::chime::v1::User {
                display_name: Some(name.into()),
                ..Default::default()
            }),
        };
        let original = Success {
            response: message.clone().into(),
            request_id: id.map(Into::into),
            reconciled,
        };
        let mut stored = Vec::new();
        Ok(original.clone()).store(&mut stored);
        assert_eq!(stored.capacity(), stored.len(), "written in one allocation");
        // Kept already encoded (as a call with a request id keeps it), the same bytes.
        let mut encoded = Vec::new();
        Ok(original.clone().encoded()).store(&mut encoded);
        assert_eq!(encoded, stored);
        let again = Kept::replay(&stored).unwrap();
        // A repeat is answered with the bytes kept, not a message encoded again.
        assert_eq!(again.response, Reply::Encoded(message.encode_to_vec()));
        assert_eq!(again.response.into_message(), message);
        assert_eq!(
            (again.request_id, again.reconciled),
            (original.request_id, reconciled)
        );
        stored.len()
    };
    // A kind byte and the response's length (5 bytes), the response, 4 bytes: User (tag, length)
    // holding display_name (tag, length, ""), then the request id's length (4 bytes).
    assert_eq!(user("", None, false), 5 + 4 + 4);
    assert_eq!(user("", Some(""), true), 5 + 4 + 4);
    assert_eq!(
        user(&"x".repeat(100), Some("req-1"), true) - user("", None, false),
        100 + 5
    );
    assert_eq!(user("é", Some("rëq"), false) - user("", None, true), 2 + 4);
    let refusal = |message: Option<&str>, retry_after: Option<Duration>| -> usize {
        let response = ErrorResponse {
            status: 409,
            error_type: Some("ConflictException".into()),
            code: None,
            message: message.map(Into::into),
            request_id: Some("req".into()),
            retry_after,
        };
        let kept: Kept = Err(Refused {
            response: response.clone(),
            attempts: 2,
        });
        let mut stored = Vec::new();
        kept.store(&mut stored);
        let again = Kept::replay(&stored).unwrap_err();
        assert_eq!(again.response, response);
        assert_eq!(again.attempts, 2);
        stored.len()
    };
    // Kind, status, attempts (7 bytes); four texts (4 bytes each, and 17 + 3 of text);
    // `Retry-After` (13 bytes).
    assert_eq!(refusal(None, None), 7 + 16 + 17 + 3 + 13);
    assert_eq!(refusal(Some(""), None) - refusal(None, None), 0);
    assert_eq!(refusal(Some(&"m".repeat(50)), None) - refusal(None, None), 50);
    refusal(Some("é"), Some(Duration::new(3, 5)));
    refusal(None, Some(Duration::ZERO));
}

// Kills the mutants of `n > 1` in `attempt`: only the attempts after the first count as retries.
#[tokio::test]
async fn only_attempts_after_the_first_count_as_retries() {
    let (gw, _) = gateway(vec![status(503, None), status(503, None)], 3);
    gw.create_user(valid()).await.unwrap();
    let text = gw.metrics().encode();
    assert!(
        text.contains("chime_upstream_requests_total{http_status=\"503\"} 2"),
        "{text}"
    );
    assert!(text.contains("chime_upstream_retries_total 2"), "{text}");
}

/// The JSON log lines `log_call` writes for `answered`, taking `latency`.
fn log_line(answered: Answered, latency: Duration) -> serde_json::Value {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || log_call(&answered, latency));
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

// Kills the log_call mutants: the line has the latency in milliseconds, the status and request id
// of an unreadable answer, and the reconciliation of an upstream failure that was not an answer.
#[test]
fn the_call_line_says_what_the_upstream_did() {
    let failed = |error: UpstreamError, reconciliation| Answered {
        result: Err(Arc::new(CallError::Upstream {
            error,
            attempts: 2,
            reconciliation,
            budget_exhausted: false,
        })),
        attempts: 2,
        replayed: false,
    };
    let unreadable = UpstreamError::Unparseable {
        status: 201,
        request_id: Some("req-9".into()),
        source: "not a User".into(),
    };
    let line = log_line(failed(unreadable, None), Duration::from_micros(1500));
    assert_eq!(line["upstream_status"], 201, "{line}");
    assert_eq!(line["aws_request_id"], "req-9", "{line}");
    assert_eq!(line["latency_ms"], 1.5, "{line}");
    assert_eq!(line["grpc_code"], "UNKNOWN", "{line}");
    let lost = UpstreamError::ConnectionLost("reset".into());
    let line = log_line(
        failed(lost, Some(Reconciliation::Failed)),
        Duration::from_millis(3),
    );
    assert_eq!(line["upstream_status"], 0, "{line}");
    assert_eq!(line["reconciliation"], "failed", "{line}");
    assert_eq!(line["attempts"], 2, "{line}");
}

/// A temporary `--state-dir`, removed on drop.
struct StateDir(std::path::PathBuf);

impl StateDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("chime-state-{}", uuid::Uuid::new_v4())))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[path = "protection_tests.rs"]
mod protection;

#[path = "restart_tests.rs"]
mod restart;

#[path = "cancel_tests.rs"]
mod cancel;

#[tokio::test]
async fn a_conflict_while_the_id_is_in_doubt_is_never_kept_for_it() {
    // No email: the conflict cannot be looked up, so the caller hears it, but it may be the
    // caller's own user, created by the first call's lost attempt. Its repeats must not replay it.
    let mut request = valid().into_inner();
    request.request_id = ID.into();
    let up = scripted(vec![lost(), status(409, None), status(409, None)], vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    for (n, expected) in [
        (1, Code::Unavailable),
        (2, Code::AlreadyExists),
        (3, Code::AlreadyExists),
    ] {
        let s = gw.create_user(Request::new(request.clone())).await.unwrap_err();
        assert_eq!(s.code(), expected, "call {n}");
        assert!(!flag(s.metadata(), REPLAYED_KEY), "call {n} was replayed");
    }
    assert_eq!(counts(&up), (3, 0), "every call asked Chime again");
}
