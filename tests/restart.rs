//! A gateway killed mid-call (SIGKILL, as an OOM kill or a crashed sidecar) after Chime stored the
//! user, and the caller's retry with the same request id reaching a new process (docs/design.md §7):
//! with `--state-dir` a plain retry ends OK with the user (looked up), without it a declared
//! retry does, and an undeclared one meets ALREADY_EXISTS for its own user (the failure
//! `--state-dir` and declared retries exist to prevent).

mod common;

use std::time::Duration;

use chime_gateway::{
    emulator::{DEMO_ACCOUNT_ID, Emulator, Fault},
    pb::chime::v1::{CreateUserRequest, UserType, chime_service_client::ChimeServiceClient},
    service::{GRPC_PREVIOUS_ATTEMPTS_KEY, PREVIOUS_ATTEMPTS_KEY, RECONCILED_KEY},
};
use common::{
    emulator,
    process::{Started, start},
    request,
};
use tonic::{Code, metadata::MetadataValue, transport::Channel};

async fn gateway(emu: &Emulator, state_dir: Option<&str>) -> Started {
    let mut args = vec!["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    if let Some(dir) = state_dir {
        args.extend(["--state-dir", dir]);
    }
    let (key, secret) = emu.credentials();
    let url = emu.endpoint_url();
    let env = [
        ("AWS_ENDPOINT_URL_CHIME", url.as_str()),
        ("AWS_ACCESS_KEY_ID", key),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    start(&args, &env).await
}

async fn client(gw: &Started) -> ChimeServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", gw.api))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ChimeServiceClient::new(channel)
}

fn create(email: &str) -> CreateUserRequest {
    CreateUserRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        ..request(Some(email), UserType::PrivateUser)
    }
}

/// Sends `request` to a first gateway whose answer Chime holds back after storing the user, and
/// kills that gateway with SIGKILL once the user is stored.
async fn killed_mid_call(emu: &Emulator, state_dir: Option<&str>, request: &CreateUserRequest) {
    emu.inject(Fault::CommitThenDelay { millis: 30_000 }, 1);
    let mut first = gateway(emu, state_dir).await;
    let mut c = client(&first).await;
    let sent = request.clone();
    let call = tokio::spawn(async move { c.create_user(sent).await });
    for _ in 0..200 {
        if emu.user_count(DEMO_ACCOUNT_ID) == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(emu.user_count(DEMO_ACCOUNT_ID), Some(1), "Chime stored the user");
    first.running.child.start_kill().unwrap();
    first.running.child.wait().await.unwrap();
    let lost = call.await.unwrap().unwrap_err();
    assert_ne!(lost.code(), Code::Ok, "{lost:?}");
}

fn reconciled(response: &tonic::Response<chime_gateway::pb::chime::v1::CreateUserResponse>) -> bool {
    response
        .metadata()
        .get(RECONCILED_KEY)
        .is_some_and(|v| v == "true")
}

#[tokio::test]
async fn with_a_state_dir_a_plain_retry_after_a_kill_gets_its_own_user() {
    let emu = emulator().await;
    let dir = std::env::temp_dir().join(format!("chime-restart-{}", uuid::Uuid::new_v4()));
    let dir_str = dir.to_str().unwrap().to_owned();
    let request = create("kill@example.com");
    killed_mid_call(&emu, Some(&dir_str), &request).await;
    let second = gateway(&emu, Some(&dir_str)).await;
    let response = client(&second).await.create_user(request).await.unwrap();
    assert!(reconciled(&response));
    let stored = emu.users(DEMO_ACCOUNT_ID).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        response.get_ref().user.as_ref().unwrap().user_id,
        stored[0].user_id
    );
    // A fresh request id for the taken email is still a conflict.
    let other = client(&second)
        .await
        .create_user(create("kill@example.com"))
        .await;
    assert_eq!(other.unwrap_err().code(), Code::AlreadyExists);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn without_a_state_dir_a_declared_retry_after_a_kill_gets_its_own_user() {
    for key in [PREVIOUS_ATTEMPTS_KEY, GRPC_PREVIOUS_ATTEMPTS_KEY] {
        let emu = emulator().await;
        let request = create("declared@example.com");
        killed_mid_call(&emu, None, &request).await;
        let second = gateway(&emu, None).await;
        let mut retry = tonic::Request::new(request);
        retry.metadata_mut().insert(key, MetadataValue::from_static("1"));
        let response = client(&second).await.create_user(retry).await;
        let response = response.unwrap_or_else(|s| panic!("{key}: {s:?}"));
        assert!(reconciled(&response), "{key}");
    }
}

#[tokio::test]
async fn without_either_the_retry_meets_its_own_user_as_a_conflict() {
    let emu = emulator().await;
    let request = create("forgotten@example.com");
    killed_mid_call(&emu, None, &request).await;
    let second = gateway(&emu, None).await;
    let retry = client(&second).await.create_user(request).await;
    assert_eq!(retry.unwrap_err().code(), Code::AlreadyExists);
}
