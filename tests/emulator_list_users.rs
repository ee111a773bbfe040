//! The emulator's ListUsers and its faults after serving, on the wire: raw signed HTTP for the
//! exact shapes, the SDK for what the gateway relies on.

mod common;

use std::time::{Duration, Instant};

use chime_gateway::{
    chime::Upstream,
    emulator::{ChaosConfig, DEMO_ACCOUNT_ID, Emulator, Fault, Operation, TypeLocation},
};
use common::{Answer, emulator, header, send_raw, upstream_for};
use http::Method;

async fn create(emu: &Emulator, body: &str) -> Answer {
    let path = format!("/accounts/{DEMO_ACCOUNT_ID}/users?operation=create");
    send_raw(&emu.endpoint_url(), Method::POST, &path, body, true).await
}

async fn list(emu: &Emulator, account: &str, query: &str) -> Answer {
    let path = format!("/accounts/{account}/users{query}");
    send_raw(&emu.endpoint_url(), Method::GET, &path, "", true).await
}

fn emails(answer: &Answer) -> Vec<&str> {
    answer.body["Users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["PrimaryEmail"].as_str().unwrap())
        .collect()
}

async fn with_users(n: usize) -> Emulator {
    let emu = emulator().await;
    for i in 0..n {
        let kind = if i % 2 == 0 { "PrivateUser" } else { "SharedDevice" };
        let body = format!(r#"{{"Email":"u{i}@example.com","UserType":"{kind}"}}"#);
        assert_eq!(create(&emu, &body).await.status, 201);
    }
    emu
}

#[tokio::test]
async fn list_users_pages_through_every_user_with_next_tokens() {
    let emu = with_users(5).await;
    let first = list(&emu, DEMO_ACCOUNT_ID, "?max-results=2").await;
    assert_eq!(first.status, 200);
    assert_eq!(header(&first, "content-type"), "application/json");
    assert_eq!(header(&first, "x-amzn-requestid").len(), 36);
    assert_eq!(emails(&first), ["u0@example.com", "u1@example.com"]);
    let mut seen = emails(&first).len();
    let mut token = first.body["NextToken"].as_str().unwrap().to_owned();
    loop {
        let page = list(
            &emu,
            DEMO_ACCOUNT_ID,
            &format!("?max-results=2&next-token={token}"),
        )
        .await;
        seen += emails(&page).len();
        match page.body.get("NextToken").and_then(|t| t.as_str()) {
            Some(t) => token = t.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, 5);
    let all = list(&emu, DEMO_ACCOUNT_ID, "").await;
    assert_eq!(emails(&all).len(), 5);
    assert!(all.body.get("NextToken").is_none(), "{}", all.body);
}

#[tokio::test]
async fn list_users_describes_each_user_as_create_user_did() {
    let emu = emulator().await;
    let created = create(&emu, r#"{"Email":"Jane@Example.com","Username":"jane"}"#).await;
    let listed = list(&emu, DEMO_ACCOUNT_ID, "?user-email=jane%40example.com").await;
    assert_eq!(listed.body["Users"][0], created.body["User"]);
}

#[tokio::test]
async fn list_users_filters_by_email_ignoring_case_and_by_type() {
    let emu = with_users(4).await;
    let one = list(&emu, DEMO_ACCOUNT_ID, "?user-email=U2%40EXAMPLE.com").await;
    assert_eq!(emails(&one), ["u2@example.com"]);
    let none = list(&emu, DEMO_ACCOUNT_ID, "?user-email=nobody%40example.com").await;
    assert_eq!((none.status, emails(&none).len()), (200, 0));
    let devices = list(&emu, DEMO_ACCOUNT_ID, "?user-type=SharedDevice").await;
    assert_eq!(emails(&devices), ["u1@example.com", "u3@example.com"]);
    let typed = list(
        &emu,
        DEMO_ACCOUNT_ID,
        "?user-email=u2%40example.com&user-type=SharedDevice",
    )
    .await;
    assert!(emails(&typed).is_empty());
}

#[tokio::test]
async fn list_users_refuses_bad_queries_with_400() {
    let emu = with_users(1).await;
    for query in [
        "?max-results=0",
        "?max-results=201",
        "?max-results=ten",
        "?user-type=Robot",
        "?user-email=not-an-email",
        "?next-token=garbage",
    ] {
        let a = list(&emu, DEMO_ACCOUNT_ID, query).await;
        assert_eq!(a.status, 400, "{query}");
        assert!(
            header(&a, "x-amzn-errortype").starts_with("BadRequestException:"),
            "{query}"
        );
        assert_eq!(a.body["Code"], "BadRequest", "{query}");
    }
    assert_eq!(list(&emu, DEMO_ACCOUNT_ID, "?max-results=200").await.status, 200);
    assert_eq!(list(&emu, DEMO_ACCOUNT_ID, "?max-results=1").await.status, 200);
}

#[tokio::test]
async fn list_users_answers_404_for_an_unknown_account_and_403_unsigned() {
    let emu = emulator().await;
    let a = list(&emu, "no-such-account", "").await;
    assert_eq!(a.status, 404);
    assert!(header(&a, "x-amzn-errortype").starts_with("NotFoundException:"));
    let path = format!("/accounts/{DEMO_ACCOUNT_ID}/users");
    let unsigned = send_raw(&emu.endpoint_url(), Method::GET, &path, "", false).await;
    assert_eq!(unsigned.status, 403);
    assert!(header(&unsigned, "x-amzn-errortype").starts_with("MissingAuthenticationTokenException:"));
}

#[tokio::test]
async fn the_sdk_finds_a_user_by_email_across_pages() {
    let emu = with_users(3).await;
    let upstream = upstream_for(&emu).await;
    let found = upstream
        .find_user_by_email(DEMO_ACCOUNT_ID, "U1@example.COM")
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.user.primary_email.as_deref(), Some("u1@example.com"));
    assert_eq!(found.request_id.as_deref().map(str::len), Some(36));
    let missing = upstream
        .find_user_by_email(DEMO_ACCOUNT_ID, "x@example.com")
        .await
        .unwrap();
    assert!(missing.is_none());
    let requests = emu.requests();
    let last = requests.last().unwrap();
    assert_eq!(last.method, "GET");
    assert_eq!(
        last.uri,
        format!("/accounts/{DEMO_ACCOUNT_ID}/users?user-email=x%40example.com")
    );
}

#[tokio::test]
async fn commit_then_reset_stores_the_user_then_resets_the_connection() {
    let emu = emulator().await;
    emu.inject(Fault::CommitThenReset, 1);
    let path = format!("/accounts/{DEMO_ACCOUNT_ID}/users?operation=create");
    let url = emu.endpoint_url();
    let sent = tokio::spawn(async move {
        send_raw(&url, Method::POST, &path, r#"{"Email":"a@example.com"}"#, true).await
    });
    assert!(sent.await.is_err(), "the connection is reset: no answer");
    assert_eq!(emu.user_count(DEMO_ACCOUNT_ID), Some(1));
}

#[tokio::test]
async fn commit_then_delay_stores_the_user_at_once_and_answers_late() {
    let emu = emulator().await;
    emu.inject(Fault::CommitThenDelay { millis: 400 }, 1);
    let url = emu.endpoint_url();
    let started = Instant::now();
    let sent = tokio::spawn(async move {
        let path = format!("/accounts/{DEMO_ACCOUNT_ID}/users?operation=create");
        send_raw(&url, Method::POST, &path, r#"{"Email":"a@example.com"}"#, true).await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        emu.user_count(DEMO_ACCOUNT_ID),
        Some(1),
        "stored before the answer"
    );
    let answer = sent.await.unwrap();
    assert_eq!(answer.status, 201);
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn commit_then_error_stores_the_user_and_answers_the_error() {
    let emu = emulator().await;
    emu.inject(
        Fault::CommitThenError {
            status: 500,
            error_type: Some("ServiceFailureException".into()),
            type_in: TypeLocation::Header,
            retry_after: None,
        },
        1,
    );
    let a = create(&emu, r#"{"Email":"a@example.com"}"#).await;
    assert_eq!(a.status, 500);
    assert!(header(&a, "x-amzn-errortype").starts_with("ServiceFailureException:"));
    assert_eq!(emu.user_count(DEMO_ACCOUNT_ID), Some(1));
    let again = create(&emu, r#"{"Email":"a@example.com"}"#).await;
    assert_eq!(again.status, 409, "the user was stored");
}

#[tokio::test]
async fn faults_before_serving_store_nothing() {
    let emu = emulator().await;
    emu.inject(Fault::error(500, "ServiceFailureException"), 1);
    emu.inject(Fault::MalformedBody, 1);
    assert_eq!(create(&emu, r#"{"Email":"a@example.com"}"#).await.status, 500);
    assert_eq!(emu.user_count(DEMO_ACCOUNT_ID), Some(0));
    assert_eq!(create(&emu, r#"{"Email":"b@example.com"}"#).await.status, 201);
    assert_eq!(
        emu.user_count(DEMO_ACCOUNT_ID),
        Some(0),
        "a malformed 201 stores nothing"
    );
}

#[tokio::test]
async fn faults_target_one_operation_and_leave_the_other_alone() {
    let emu = with_users(1).await;
    emu.inject_for(Operation::ListUsers, Fault::error(403, "ForbiddenException"), 1);
    assert_eq!(create(&emu, r#"{"Email":"b@example.com"}"#).await.status, 201);
    assert_eq!(list(&emu, DEMO_ACCOUNT_ID, "").await.status, 403);
    assert_eq!(list(&emu, DEMO_ACCOUNT_ID, "").await.status, 200);
}

#[tokio::test]
async fn the_admin_api_scripts_commit_faults_for_an_operation_and_chaos() {
    let emu = emulator().await;
    let url = emu.endpoint_url();
    let admin = |method, path: &'static str, body: String| {
        let url = url.clone();
        async move { send_raw(&url, method, path, &body, false).await.status }
    };
    let fault =
        r#"{"fault": {"kind": "commit_then_error", "status": 502}, "times": 1, "operation": "create_user"}"#;
    assert_eq!(admin(Method::POST, "/_emulator/faults", fault.into()).await, 204);
    assert_eq!(create(&emu, r#"{"Email":"a@example.com"}"#).await.status, 502);
    assert_eq!(emu.user_count(DEMO_ACCOUNT_ID), Some(1));
    let list_fault = r#"{"fault": {"kind": "error", "status": 429}, "operation": "list_users"}"#;
    assert_eq!(
        admin(Method::POST, "/_emulator/faults", list_fault.into()).await,
        204
    );
    assert_eq!(list(&emu, DEMO_ACCOUNT_ID, "").await.status, 429);
    let chaos = ChaosConfig {
        seed: 1,
        share: 1.0,
        faults: vec![Fault::error(503, "ServiceUnavailableException")],
        operation: Some(Operation::CreateUser),
    };
    let body = serde_json::to_string(&chaos).unwrap();
    assert_eq!(admin(Method::POST, "/_emulator/chaos", body).await, 204);
    assert_eq!(create(&emu, r#"{"Email":"b@example.com"}"#).await.status, 503);
    assert_eq!(list(&emu, DEMO_ACCOUNT_ID, "").await.status, 200);
    assert_eq!(
        admin(Method::DELETE, "/_emulator/chaos", String::new()).await,
        204
    );
    assert_eq!(create(&emu, r#"{"Email":"b@example.com"}"#).await.status, 201);
    let bad = r#"{"seed": 1}"#;
    assert_eq!(admin(Method::POST, "/_emulator/chaos", bad.into()).await, 400);
}
