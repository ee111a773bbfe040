//! The two binaries as an operator runs them: exit codes, the one-line config error, `--emulate`
//! as the one-command start, and SIGTERM with a call in flight.

use std::{process::Stdio, time::Duration};

use chime_gateway::{
    emulator::DEMO_ACCOUNT_ID,
    pb::chime::v1::{CreateUserRequest, UserType, chime_service_client::ChimeServiceClient},
};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_chime-gateway");
const EMULATOR: &str = env!("CARGO_BIN_EXE_chime-emulator");

/// A command with no AWS or gateway settings inherited from the environment.
fn command(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") || key.starts_with("CHIME_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Reads stdout until a line contains `marker`; returns the word after it.
async fn word_after(child: &mut Child, marker: &str) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, rest)) = line.split_once(marker) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("no line with {marker:?}");
    })
    .await
    .expect("the process printed its address in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

fn sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

async fn post_json(url: &str, body: &str) -> u16 {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test]
async fn invalid_configuration_exits_64_with_one_line() {
    for (args, env) in [
        (&["--upstream-timeout", "soon"][..], None),
        (&["--listen", "not-an-address"], None),
        (&[], Some(("CHIME_GATEWAY_LOG_FORMAT", "xml"))),
        (&[], Some(("CHIME_GATEWAY_DEFAULT_DEADLINE", "0s"))),
    ] {
        let mut cmd = command(GATEWAY);
        cmd.args(args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("chime-gateway: "), "{stderr}");
    }
}

#[tokio::test]
async fn help_exits_0_and_names_every_setting() {
    let out = command(GATEWAY).arg("--help").output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for name in [
        "CHIME_GATEWAY_LISTEN",
        "CHIME_GATEWAY_UPSTREAM_TIMEOUT",
        "CHIME_GATEWAY_DEFAULT_DEADLINE",
        "CHIME_GATEWAY_MAX_CONCURRENCY",
        "CHIME_GATEWAY_SHUTDOWN_GRACE",
        "CHIME_GATEWAY_EMULATE",
        "CHIME_GATEWAY_LOG_FORMAT",
    ] {
        assert!(help.contains(name), "{name}");
    }
}

#[tokio::test]
async fn emulate_serves_and_sigterm_finishes_the_call_in_flight_then_exits_0() {
    let mut child = command(GATEWAY)
        .args(["--emulate", "--listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut emulator_url, mut listen) = (String::new(), String::new());
    while listen.is_empty() {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the gateway printed its addresses");
        if let Some((_, rest)) = line.split_once("emulator listening on ") {
            emulator_url = rest.trim().to_owned();
        }
        if let Some((_, rest)) = line.split_once("serving chime.v1.ChimeService on ") {
            listen = rest.trim().to_owned();
        }
    }
    let mut client = ChimeServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let request = |email: &str| CreateUserRequest {
        account_id: DEMO_ACCOUNT_ID.into(),
        email: Some(email.into()),
        username: None,
        user_type: UserType::PrivateUser as i32,
    };
    client.create_user(request("first@example.com")).await.unwrap();

    let fault = r#"{"fault": {"kind": "latency", "millis": 800}, "times": 1}"#;
    assert_eq!(
        post_json(&format!("{emulator_url}/_emulator/faults"), fault).await,
        204
    );
    let mut slow = client.clone();
    let in_flight = tokio::spawn(async move { slow.create_user(request("slow@example.com")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&child);
    let user = in_flight.await.unwrap().expect("the in-flight call completes OK");
    assert_eq!(
        user.into_inner().user.unwrap().primary_email.as_deref(),
        Some("slow@example.com")
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn the_emulator_binary_serves_its_admin_api_and_exits_0_on_sigterm() {
    let mut child = command(EMULATOR)
        .env("CHIME_EMULATOR_LISTEN", "127.0.0.1:0")
        .spawn()
        .unwrap();
    let url = word_after(&mut child, "listening on ").await;
    assert_eq!(
        post_json(
            &format!("{url}/_emulator/accounts"),
            r#"{"account_id": "team-a"}"#
        )
        .await,
        204
    );
    assert_eq!(
        post_json(
            &format!("{url}/_emulator/faults"),
            r#"{"fault": {"kind": "nope"}}"#
        )
        .await,
        400
    );
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn the_emulator_binary_refuses_a_bad_setting_with_64() {
    let out = command(EMULATOR)
        .env("CHIME_EMULATOR_THROTTLE_RPS", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(String::from_utf8(out.stderr).unwrap().lines().count(), 1);
}
