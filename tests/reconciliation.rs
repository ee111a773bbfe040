//! End to end over loopback, docs/design.md §7: request ids and the reconciliation of unknown
//! outcomes, against the emulator's faults that lose an answer after storing the user.

mod common;

use std::{sync::Arc, time::Duration};

use chime_gateway::{
    emulator::{DEMO_ACCOUNT_ID, Emulator, Fault, Operation, TypeLocation},
    error::GATEWAY_DOMAIN,
    metrics::Metrics,
    pb::chime::v1::{CreateUserRequest, CreateUserResponse, UserType},
    server::ServeOptions,
    service::{CallPolicy, ChimeGateway, RECONCILED_KEY, REPLAYED_KEY},
};
use common::{Gateway, create, emulator, policy, request, request_id, upstream_for};
use tonic::{Code, metadata::MetadataMap};
use tonic_types::StatusExt;

const EMAIL: &str = "jane@example.com";

struct Stack {
    emu: Emulator,
    gw: Gateway,
    metrics: Arc<Metrics>,
}

async fn stack_with(policy: CallPolicy) -> Stack {
    let emu = emulator().await;
    let gateway = ChimeGateway::new(upstream_for(&emu).await, policy, 64);
    let metrics = gateway.metrics();
    let gw = Gateway::serve(gateway, ServeOptions::with_grace(Duration::from_secs(5))).await;
    Stack { emu, gw, metrics }
}

async fn stack() -> Stack {
    stack_with(policy()).await
}

fn with_id(id: &str) -> CreateUserRequest {
    CreateUserRequest {
        request_id: id.into(),
        ..request(Some(EMAIL), UserType::PrivateUser)
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn flag(metadata: &MetadataMap, key: &str) -> bool {
    metadata.get(key).is_some_and(|v| v == "true")
}

/// The HTTP methods the emulator received, in order: POST is a create, GET a lookup.
fn methods(emu: &Emulator) -> Vec<String> {
    emu.requests().into_iter().map(|r| r.method).collect()
}

fn user_id(response: &tonic::Response<CreateUserResponse>) -> &str {
    &response.get_ref().user.as_ref().unwrap().user_id
}

fn stored_ids(emu: &Emulator) -> Vec<String> {
    emu.users(DEMO_ACCOUNT_ID)
        .unwrap()
        .into_iter()
        .map(|u| u.user_id)
        .collect()
}

fn reconciliation_metric(metrics: &Metrics, outcome: &str) -> String {
    let prefix = format!("chime_gateway_reconciliations_total{{outcome=\"{outcome}\"}} ");
    let text = metrics.encode();
    let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or("");
    line.trim_start_matches(&prefix).to_owned()
}

/// The ErrorInfo reason and `reconciliation` metadata of a status.
fn reason(status: &tonic::Status) -> (String, Option<String>) {
    let info = status.get_error_details().error_info().cloned().unwrap();
    (info.reason, info.metadata.get("reconciliation").cloned())
}

fn after_commit_error(status: u16) -> Fault {
    Fault::CommitThenError {
        status,
        error_type: None,
        type_in: TypeLocation::Nowhere,
        retry_after: None,
    }
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_found_and_answered_ok() {
    let s = stack().await;
    s.emu.inject(Fault::CommitThenReset, 1);
    let id = new_id();
    let response = create(&s.gw, with_id(&id)).await.unwrap();
    assert!(flag(response.metadata(), RECONCILED_KEY));
    assert!(!flag(response.metadata(), REPLAYED_KEY));
    assert_eq!(stored_ids(&s.emu), [user_id(&response)]);
    let user = response.get_ref().user.as_ref().unwrap();
    assert_eq!(user.primary_email.as_deref(), Some(EMAIL));
    assert_eq!(methods(&s.emu), ["POST", "GET"]);
    assert_eq!(reconciliation_metric(&s.metrics, "found"), "1");
    let again = create(&s.gw, with_id(&id)).await.unwrap();
    assert_eq!(again.get_ref(), response.get_ref());
    assert!(flag(again.metadata(), REPLAYED_KEY));
    assert!(flag(again.metadata(), RECONCILED_KEY));
    assert_eq!(request_id(again.metadata()), request_id(response.metadata()));
    assert_eq!(methods(&s.emu).len(), 2, "the repeat called nothing");
}

#[tokio::test]
async fn a_create_answered_past_the_attempt_timeout_is_found() {
    let s = stack_with(CallPolicy {
        upstream_timeout: Duration::from_millis(300),
        ..policy()
    })
    .await;
    s.emu.inject(Fault::CommitThenDelay { millis: 1500 }, 1);
    let response = create(&s.gw, with_id(&new_id())).await.unwrap();
    assert!(flag(response.metadata(), RECONCILED_KEY));
    assert_eq!(stored_ids(&s.emu), [user_id(&response)]);
}

#[tokio::test]
async fn a_stored_create_answered_500_502_or_504_is_found() {
    for status in [500, 502, 504] {
        let s = stack().await;
        s.emu.inject(after_commit_error(status), 1);
        let response = create(&s.gw, with_id(&new_id())).await.unwrap();
        assert!(flag(response.metadata(), RECONCILED_KEY), "{status}");
        assert_eq!(stored_ids(&s.emu), [user_id(&response)], "{status}");
        assert_eq!(methods(&s.emu), ["POST", "GET"], "{status}");
    }
}

#[tokio::test]
async fn a_create_lost_before_it_was_stored_is_made_again() {
    let s = stack().await;
    s.emu.inject(Fault::Reset, 1);
    let response = create(&s.gw, with_id(&new_id())).await.unwrap();
    assert!(!flag(response.metadata(), RECONCILED_KEY));
    assert_eq!(methods(&s.emu), ["POST", "GET", "POST"]);
    assert_eq!(stored_ids(&s.emu), [user_id(&response)]);
    assert_eq!(reconciliation_metric(&s.metrics, "not_found"), "1");
}

#[tokio::test]
async fn not_found_with_no_attempt_left_keeps_the_original_status() {
    let s = stack_with(CallPolicy {
        max_attempts: 1,
        ..policy()
    })
    .await;
    s.emu.inject(Fault::Reset, 1);
    let status = create(&s.gw, with_id(&new_id())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        reason(&status),
        ("UPSTREAM_CONNECTION_LOST".into(), Some("not_found".into()))
    );
    assert_eq!(s.emu.user_count(DEMO_ACCOUNT_ID), Some(0));
}

#[tokio::test]
async fn a_failed_lookup_keeps_the_original_status_and_the_retry_settles_it() {
    let s = stack().await;
    s.emu.inject(Fault::CommitThenReset, 1);
    s.emu
        .inject_for(Operation::ListUsers, Fault::error(403, "ForbiddenException"), 1);
    let id = new_id();
    let status = create(&s.gw, with_id(&id)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "never the lookup's 403");
    assert_eq!(
        reason(&status),
        ("UPSTREAM_CONNECTION_LOST".into(), Some("failed".into()))
    );
    assert_eq!(reconciliation_metric(&s.metrics, "failed"), "1");
    // The caller retries with the same request id: Chime answers 409 for its own user.
    let response = create(&s.gw, with_id(&id)).await.unwrap();
    assert!(flag(response.metadata(), RECONCILED_KEY));
    assert_eq!(stored_ids(&s.emu), [user_id(&response)]);
    assert_eq!(methods(&s.emu), ["POST", "GET", "POST", "GET"]);
}

#[tokio::test]
async fn without_a_request_id_that_retry_would_have_answered_already_exists() {
    let s = stack().await;
    s.emu.inject(Fault::CommitThenReset, 1);
    s.emu
        .inject_for(Operation::ListUsers, Fault::error(403, "ForbiddenException"), 1);
    let plain = request(Some(EMAIL), UserType::PrivateUser);
    assert_eq!(
        create(&s.gw, plain.clone()).await.unwrap_err().code(),
        Code::Unavailable
    );
    let retry = create(&s.gw, plain).await.unwrap_err();
    assert_eq!(retry.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn a_kept_user_is_sent_whole_to_the_first_call_and_to_its_repeat() {
    let s = stack().await;
    let req = with_id(&new_id());
    let first = create(&s.gw, req.clone()).await.unwrap();
    let again = create(&s.gw, req).await.unwrap();
    assert!(!flag(first.metadata(), REPLAYED_KEY));
    assert!(flag(again.metadata(), REPLAYED_KEY));
    assert_eq!(request_id(again.metadata()), request_id(first.metadata()));
    assert_eq!(again.get_ref(), first.get_ref());
    let user = first.get_ref().user.as_ref().unwrap();
    assert_eq!(stored_ids(&s.emu), std::slice::from_ref(&user.user_id));
    assert_eq!(user.primary_email.as_deref(), Some(EMAIL));
    assert!(user.invited_on.is_some());
    assert_eq!(methods(&s.emu), ["POST"]);
}

#[tokio::test]
async fn a_final_refusal_is_replayed_to_the_repeat() {
    let s = stack().await;
    let mut req = with_id(&new_id());
    req.account_id = "no-such-account".into();
    let first = create(&s.gw, req.clone()).await.unwrap_err();
    assert_eq!(first.code(), Code::NotFound);
    let again = create(&s.gw, req).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    assert!(flag(again.metadata(), REPLAYED_KEY));
    assert_eq!(request_id(again.metadata()), request_id(first.metadata()));
    assert_eq!(methods(&s.emu), ["POST"]);
    assert!(s.metrics.encode().contains("chime_gateway_replays_total 1"));
}

#[tokio::test]
async fn repeats_during_the_first_call_wait_for_it() {
    let s = stack().await;
    s.emu.inject(Fault::Latency { millis: 300 }, 1);
    let id = new_id();
    let mut calls = Vec::new();
    for _ in 0..5 {
        let (mut client, req) = (s.gw.client().await, with_id(&id));
        calls.push(tokio::spawn(
            async move { client.create_user(req).await.unwrap() },
        ));
    }
    let mut ids = Vec::new();
    let mut replayed = 0;
    for call in calls {
        let response = call.await.unwrap();
        replayed += usize::from(flag(response.metadata(), REPLAYED_KEY));
        ids.push(user_id(&response).to_owned());
    }
    ids.dedup();
    assert_eq!(ids, stored_ids(&s.emu));
    assert_eq!(replayed, 4);
    assert_eq!(methods(&s.emu), ["POST"]);
}

#[tokio::test]
async fn a_request_id_reused_for_another_request_is_refused() {
    let s = stack().await;
    let id = new_id();
    create(&s.gw, with_id(&id)).await.unwrap();
    let mut other = with_id(&id);
    other.email = Some("john@example.com".into());
    let status = create(&s.gw, other).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("REQUEST_ID_REUSED", GATEWAY_DOMAIN)
    );
    assert_eq!(methods(&s.emu), ["POST"]);
}

#[tokio::test]
async fn a_request_id_that_is_not_a_uuid_is_refused_before_anything_is_sent() {
    let s = stack().await;
    let status = create(&s.gw, with_id("retry-1")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status.get_error_details().bad_request().cloned().unwrap();
    assert_eq!(violations.field_violations[0].field, "request_id");
    assert!(s.emu.requests().is_empty());
}

#[tokio::test]
async fn with_reconcile_off_nothing_is_looked_up() {
    let s = stack_with(CallPolicy {
        reconcile: false,
        ..policy()
    })
    .await;
    s.emu.inject(Fault::CommitThenReset, 1);
    let status = create(&s.gw, with_id(&new_id())).await.unwrap_err();
    assert_eq!(reason(&status), ("UPSTREAM_CONNECTION_LOST".into(), None));
    assert_eq!(methods(&s.emu), ["POST"]);
}
