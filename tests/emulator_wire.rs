//! The emulator on the wire, as other teams' SDKs will meet it: raw HTTP for the exact shapes,
//! and many parallel creates through the gateway for its state.

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use chime_gateway::{emulator::DEMO_ACCOUNT_ID, pb::chime::v1::UserType};
use common::{Answer, create, emulator, header, request, send_raw, stack};
use tonic::Code;

async fn send(url: &str, account: &str, body: &str, signed: bool) -> Answer {
    let path = format!("/accounts/{account}/users?operation=create");
    send_raw(url, http::Method::POST, &path, body, signed).await
}

#[tokio::test]
async fn a_create_answers_201_with_a_request_id_and_millisecond_timestamps() {
    let emu = emulator().await;
    let a = send(
        &emu.endpoint_url(),
        DEMO_ACCOUNT_ID,
        r#"{"Email":"jane@example.com","UserType":"PrivateUser"}"#,
        true,
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!(header(&a, "content-type"), "application/json");
    assert_eq!(header(&a, "x-amzn-requestid").len(), 36);
    let invited = a.body["User"]["InvitedOn"].as_str().unwrap();
    assert_eq!(invited.len(), "2020-01-15T22:38:09.806Z".len(), "{invited}");
    assert!(invited.ends_with('Z') && invited.as_bytes()[19] == b'.');
    assert_eq!(a.body["User"]["UserInvitationStatus"], "Pending");
}

#[tokio::test]
async fn errors_carry_the_type_header_and_a_code_message_body() {
    let emu = emulator().await;
    let url = emu.endpoint_url();
    send(&url, DEMO_ACCOUNT_ID, r#"{"Email":"a@b.co"}"#, true).await;
    let a = send(&url, DEMO_ACCOUNT_ID, r#"{"Email":"a@b.co"}"#, true).await;
    assert_eq!(a.status, 409);
    assert_eq!(
        header(&a, "x-amzn-errortype"),
        "ConflictException:http://internal.amazon.com/coral/com.amazonaws.chime/"
    );
    assert_eq!(a.body["Code"], "Conflict");
    assert!(a.body["Message"].is_string());
    assert_eq!(header(&a, "x-amzn-requestid").len(), 36);
}

#[tokio::test]
async fn bad_patterns_answer_400_bad_request() {
    let emu = emulator().await;
    let url = emu.endpoint_url();
    for (account, body) in [
        (DEMO_ACCOUNT_ID, r#"{"Email":"not-an-email"}"#),
        (DEMO_ACCOUNT_ID, r#"{"UserType":"Robot"}"#),
        ("%20", "{}"),
        (DEMO_ACCOUNT_ID, "{not json"),
    ] {
        let a = send(&url, account, body, true).await;
        assert_eq!(a.status, 400, "{account} {body}");
        assert!(header(&a, "x-amzn-errortype").starts_with("BadRequestException:"));
        assert_eq!(a.body["Code"], "BadRequest");
    }
    assert_eq!(emu.user_count(DEMO_ACCOUNT_ID), Some(0));
}

#[tokio::test]
async fn an_unsigned_request_answers_403_missing_authentication_token() {
    let emu = emulator().await;
    let a = send(&emu.endpoint_url(), DEMO_ACCOUNT_ID, "{}", false).await;
    assert_eq!(a.status, 403);
    assert!(header(&a, "x-amzn-errortype").starts_with("MissingAuthenticationTokenException"));
    assert_eq!(a.body["message"], "Missing Authentication Token");
    assert_eq!(header(&a, "x-amzn-requestid").len(), 36);
}

#[tokio::test]
async fn an_unknown_account_answers_404_not_found() {
    let emu = emulator().await;
    let a = send(&emu.endpoint_url(), "nobody", "{}", true).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body["Code"], "NotFound");
}

#[tokio::test]
async fn admin_routes_answer_and_unknown_ones_404() {
    let emu = emulator().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let get = |path: &str| {
        http::Request::get(format!("{}{path}", emu.endpoint_url()))
            .body(Full::default())
            .unwrap()
    };
    let health = client.request(get("/_emulator/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let requests = client.request(get("/_emulator/requests")).await.unwrap();
    assert_eq!(requests.status(), 200);
    let body = requests.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"[]", "admin calls are not recorded");
    assert_eq!(
        client.request(get("/_emulator/nope")).await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn the_stats_route_counts_what_each_operation_received_and_answered() {
    let emu = emulator().await;
    let url = emu.endpoint_url();
    emu.inject(
        chime_gateway::emulator::Fault::error(503, "ServiceUnavailableException"),
        1,
    );
    let body = r#"{"Email":"stats@example.com","UserType":"PrivateUser"}"#;
    assert_eq!(send(&url, DEMO_ACCOUNT_ID, body, true).await.status, 503);
    assert_eq!(send(&url, DEMO_ACCOUNT_ID, body, true).await.status, 201);
    assert_eq!(send(&url, DEMO_ACCOUNT_ID, body, true).await.status, 409);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let admin = |method: http::Method| {
        http::Request::builder()
            .method(method)
            .uri(format!("{url}/_emulator/stats"))
            .body(Full::default())
            .unwrap()
    };
    let answer = client.request(admin(http::Method::GET)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let stats: chime_gateway::emulator::Stats = serde_json::from_slice(&body).unwrap();
    assert_eq!(stats, emu.stats());
    assert_eq!(stats.create_user.received, 3);
    let answered: Vec<_> = stats.create_user.answered.into_iter().collect();
    assert_eq!(answered, [(201, 1), (409, 1), (503, 1)]);
    assert_eq!(stats.list_users.received, 0);
    let reset = client.request(admin(http::Method::DELETE)).await.unwrap();
    assert_eq!(reset.status(), 204);
    assert_eq!(emu.stats(), chime_gateway::emulator::Stats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_get_unique_ids_and_one_winner_per_email() {
    let (emu, gw) = stack().await;
    let client = gw.client().await;
    let calls: Vec<_> = (0..60)
        .map(|i| {
            let mut c = client.clone();
            let email = format!("user{}@example.com", i % 12);
            tokio::spawn(async move { c.create_user(request(Some(&email), UserType::PrivateUser)).await })
        })
        .collect();
    let (mut ids, mut conflicts) = (HashSet::new(), 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => assert!(ids.insert(r.into_inner().user.unwrap().user_id)),
            Err(s) if s.code() == Code::AlreadyExists => conflicts += 1,
            Err(s) => panic!("{s:?}"),
        }
    }
    assert_eq!(ids.len(), 12, "exactly one winner per email");
    assert_eq!(conflicts, 48);
    assert_eq!(emu.user_count(DEMO_ACCOUNT_ID), Some(12));
    let no_email: Vec<_> = (0..20)
        .map(|_| create(&gw, request(None, UserType::SharedDevice)))
        .collect();
    for call in no_email {
        assert!(ids.insert(call.await.unwrap().into_inner().user.unwrap().user_id));
    }
}
