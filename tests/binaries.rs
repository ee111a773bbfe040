//! The two binaries as an operator runs them: exit codes, the one-line config error, `--emulate`
//! as the one-command start, and SIGTERM with a call in flight.

mod common;

use std::time::Duration;

use chime_gateway::{
    emulator::DEMO_ACCOUNT_ID,
    pb::chime::v1::{CreateUserRequest, UserType, chime_service_client::ChimeServiceClient},
};
use common::process::{
    EMULATOR, GATEWAY, command, post_json, sigterm, start, start_emulated, start_emulated_with_emulator,
    stderr_after_sigterm,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
};

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

#[tokio::test]
async fn invalid_configuration_exits_64_with_one_line() {
    for (args, env) in [
        (&["--upstream-timeout", "soon"][..], None),
        (&["--listen", "not-an-address"], None),
        (&[], Some(("CHIME_GATEWAY_LOG_FORMAT", "xml"))),
        (&[], Some(("CHIME_GATEWAY_DEFAULT_DEADLINE", "0s"))),
        (&["--worker-threads", "0"], None),
        (&[], Some(("CHIME_GATEWAY_WORKER_THREADS", "two"))),
        (&["--listen", "unix:"], None),
        (&["--listen-mode", "999"], None),
        (&["--health-listen", "nowhere"], None),
        (&[], Some(("CHIME_GATEWAY_IDEMPOTENCY_CAPACITY", "0"))),
        (&[], Some(("CHIME_GATEWAY_RECONCILE", "maybe"))),
        (&["--retry-budget", "lots"], None),
        (&[], Some(("CHIME_GATEWAY_ADAPTIVE_THROTTLE", "fast"))),
        // Retired settings, whatever their value: exit 64 naming what replaced them.
        (&["--retry-budget-tokens", "100"], None),
        (&[], Some(("CHIME_GATEWAY_RETRY_BUDGET_RETRY_COST", "5"))),
        (&[], Some(("CHIME_GATEWAY_UPSTREAM_RATE", "adaptive"))),
        (&["--idempotency-capacity", "18446744073709551615"], None),
        (&[], Some(("CHIME_GATEWAY_IDEMPOTENCY_TTL", "1000000000y"))),
        (&["--shutdown-grace", "8days"], None),
        (&["--max-concurrency", "99999999999"], None),
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
        "CHIME_GATEWAY_METRICS_LISTEN",
        "CHIME_GATEWAY_HTTP2_KEEPALIVE_INTERVAL",
        "CHIME_GATEWAY_HTTP2_KEEPALIVE_TIMEOUT",
        "CHIME_GATEWAY_MAX_CONNECTION_AGE",
        "CHIME_GATEWAY_MAX_MESSAGE_SIZE",
        "CHIME_GATEWAY_HTTP2_MAX_CONCURRENT_STREAMS",
        "CHIME_GATEWAY_HTTP2_MAX_HEADER_LIST_SIZE",
        "CHIME_GATEWAY_HANDSHAKE_TIMEOUT",
        "CHIME_GATEWAY_UPSTREAM_POOL_IDLE_TIMEOUT",
        "CHIME_GATEWAY_UPSTREAM_MAX_CONNECTIONS",
        "CHIME_GATEWAY_TLS_CERT",
        "CHIME_GATEWAY_TLS_KEY",
        "CHIME_GATEWAY_TLS_CLIENT_CA",
        "CHIME_GATEWAY_IDEMPOTENCY_TTL",
        "CHIME_GATEWAY_IDEMPOTENCY_CAPACITY",
        "CHIME_GATEWAY_RECONCILE",
        "CHIME_GATEWAY_STATE_DIR",
        "CHIME_GATEWAY_RETRY_BUDGET",
        "CHIME_GATEWAY_ADAPTIVE_THROTTLE",
    ] {
        assert!(help.contains(name), "{name}");
    }
}

#[tokio::test]
async fn emulate_serves_and_sigterm_finishes_the_call_in_flight_then_exits_0() {
    let (running, listen, emulator_url) = start_emulated_with_emulator(&[], &[]).await;
    let mut client = ChimeServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let request = |email: &str| CreateUserRequest {
        account_id: DEMO_ACCOUNT_ID.into(),
        email: Some(email.into()),
        username: None,
        user_type: UserType::PrivateUser as i32,
        request_id: String::new(),
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
    let exited = tokio::spawn(stderr_after_sigterm(running));
    let user = in_flight.await.unwrap().expect("the in-flight call completes OK");
    assert_eq!(
        user.into_inner().user.unwrap().primary_email.as_deref(),
        Some("slow@example.com")
    );
    exited.await.expect("the process exits 0 after the drain");
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

#[tokio::test]
async fn logs_at_debug_never_contain_emails_or_display_names() {
    let (child, listen, emulator_url) = start_emulated_with_emulator(&[], &[("RUST_LOG", "debug")]).await;
    let mut client = ChimeServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let email = "leaky.marker.4417@example.com";
    let request = CreateUserRequest {
        account_id: DEMO_ACCOUNT_ID.into(),
        email: Some(email.into()),
        username: Some("Zebulon Marker-Name".into()),
        user_type: UserType::PrivateUser as i32,
        request_id: String::new(),
    };
    client.create_user(request.clone()).await.unwrap();
    client.create_user(request.clone()).await.unwrap_err();
    // A lost answer: the lookup sends the email upstream in the query string (user-email).
    let fault = r#"{"fault": {"kind": "commit_then_reset"}}"#;
    assert_eq!(
        post_json(&format!("{emulator_url}/_emulator/faults"), fault).await,
        204
    );
    let lost = CreateUserRequest {
        email: Some("lost.marker.4417@example.com".into()),
        request_id: "3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b90".into(),
        ..request.clone()
    };
    let found = client.create_user(lost.clone()).await.unwrap();
    assert_eq!(
        found.metadata().get("x-chime-gateway-reconciled").unwrap(),
        "true"
    );
    client.create_user(lost).await.unwrap();
    let invalid = CreateUserRequest {
        email: Some("bad.marker.4417".into()),
        ..request
    };
    client.create_user(invalid).await.unwrap_err();
    let logs = stderr_after_sigterm(child).await;
    assert!(logs.lines().count() > 20, "debug logging was on:\n{logs}");
    assert!(logs.contains("call finished"), "{logs}");
    for secret in ["marker.4417", "Zebulon", "Marker-Name", "wJalrXUtnFEMI"] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}

#[tokio::test]
async fn json_logs_have_one_object_per_call_with_its_outcome() {
    let (child, listen) = start_emulated(&["--log-format", "json"], &[]).await;
    let mut client = ChimeServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let request = CreateUserRequest {
        account_id: "no-such-account".into(),
        request_id: "3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b90".into(),
        ..Default::default()
    };
    client.create_user(request.clone()).await.unwrap_err();
    client.create_user(request).await.unwrap_err();
    let logs = stderr_after_sigterm(child).await;
    let calls: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
        .filter(|v| v["message"] == "call finished")
        .collect();
    assert_eq!(calls.len(), 2, "{logs}");
    let call = &calls[0];
    assert_eq!(call["method"], "CreateUser");
    assert_eq!(call["grpc_code"], "NOT_FOUND");
    assert_eq!(call["upstream_status"], 404);
    assert_eq!(call["attempts"], 1);
    assert_eq!(call["aws_request_id"].as_str().unwrap().len(), 36);
    assert!(call["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        (&call["replayed"], &call["reconciled"]),
        (&false.into(), &false.into())
    );
    let repeat = &calls[1];
    assert_eq!(repeat["grpc_code"], "NOT_FOUND");
    assert_eq!(repeat["replayed"], true);
    assert_eq!(repeat["attempts"], 0, "the repeat called nothing");
    assert_eq!(repeat["aws_request_id"], call["aws_request_id"]);
}

#[tokio::test]
async fn an_unusable_state_dir_exits_64_naming_it_before_binding() {
    let file = std::env::temp_dir().join(format!("chime-not-a-dir-{}", uuid::Uuid::new_v4()));
    std::fs::write(&file, b"a file, not a directory").unwrap();
    let out = command(GATEWAY)
        .args(["--state-dir", file.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("chime-gateway: --state-dir "), "{stderr}");
}

#[tokio::test]
async fn a_damaged_journal_record_is_skipped_logged_and_counted() {
    use chime_gateway::idempotency::{
        Fingerprint, Journal, Key,
        journal::{FILE_NAME, RECORD_LEN},
    };
    use http_body_util::BodyExt;
    let dir = std::env::temp_dir().join(format!("chime-state-{}", uuid::Uuid::new_v4()));
    let (journal, _) = Journal::open(&dir, Duration::from_secs(900), 100).unwrap();
    for n in 1..=3u128 {
        let key = Key::digest(DEMO_ACCOUNT_ID, uuid::Uuid::from_u128(n));
        journal
            .opened(key, Fingerprint::digest(&CreateUserRequest::default()))
            .unwrap();
    }
    drop(journal);
    let path = dir.join(FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[RECORD_LEN + 20] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let started = start(
        &[
            "--emulate",
            "--log-format",
            "json",
            "--state-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await;
    let url = format!("http://{}/metrics", started.metrics);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let body = http.get(url.parse().unwrap()).await.unwrap().into_body();
    let exposition = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let logs = stderr_after_sigterm(started.running).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        exposition.contains("chime_gateway_journal_damaged_records_total 1"),
        "{exposition}"
    );
    let warning = logs
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
        .find(|v| v["damaged"] == 1)
        .unwrap_or_else(|| panic!("no line counts the damaged record: {logs}"));
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["in_doubt"], 2, "the records after the damage were read");
}

#[tokio::test]
async fn a_second_gateway_on_a_state_dir_in_use_exits_64_naming_it() {
    let dir = std::env::temp_dir().join(format!("chime-state-{}", uuid::Uuid::new_v4()));
    let state_dir = dir.to_str().unwrap();
    let (first, _) = start_emulated(&["--state-dir", state_dir], &[]).await;
    let out = command(GATEWAY)
        .args(["--emulate", "--state-dir", state_dir, "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "chime-gateway: --state-dir {state_dir}: another gateway"
        )),
        "{stderr}"
    );
    // The first one serves on, and once it is gone the directory is free again.
    stderr_after_sigterm(first).await;
    let (again, _) = start_emulated(&["--state-dir", state_dir], &[]).await;
    stderr_after_sigterm(again).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_state_dir_whose_secret_is_damaged_starts_and_says_what_was_lost() {
    use chime_gateway::idempotency::{Fingerprint, Journal, Key, journal::KEY_FILE_NAME};
    let dir = std::env::temp_dir().join(format!("chime-state-{}", uuid::Uuid::new_v4()));
    let ttl = Duration::from_secs(900);
    let (journal, _) = Journal::open(&dir, ttl, 100).unwrap();
    let request = CreateUserRequest {
        account_id: DEMO_ACCOUNT_ID.into(),
        ..Default::default()
    };
    let key = Key::digest(DEMO_ACCOUNT_ID, uuid::Uuid::from_u128(1));
    journal.opened(key, Fingerprint::digest(&request)).unwrap();
    drop(journal);
    std::fs::write(dir.join(KEY_FILE_NAME), b"cut short").unwrap();
    let (child, _) = start_emulated(
        &["--log-format", "json", "--state-dir", dir.to_str().unwrap()],
        &[],
    )
    .await;
    let logs = stderr_after_sigterm(child).await;
    let secret = std::fs::read(dir.join(KEY_FILE_NAME)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let warning = logs
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
        .find(|v| v["unkeyed"] == 1)
        .unwrap_or_else(|| panic!("no line counts the lost key: {logs}"));
    assert_eq!(warning["level"], "WARN");
    assert!(
        warning["message"].as_str().unwrap().contains("hash.key"),
        "{warning}"
    );
    assert_eq!(secret.len(), 16, "a new secret in its place");
}

#[tokio::test]
async fn unreadable_tls_files_exit_64_before_binding() {
    let out = command(GATEWAY)
        .args([
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_fast_with_bounded_memory_and_the_gateway_recovers() {
    let (child, listen, emulator) = start_emulated_with_emulator(&["--max-concurrency", "4"], &[]).await;
    let pid = child.child.id().unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = ChimeServiceClient::new(channel);
    let request = |i: usize| CreateUserRequest {
        account_id: DEMO_ACCOUNT_ID.into(),
        email: Some(format!("load{i}@example.com")),
        username: None,
        user_type: UserType::PrivateUser as i32,
        request_id: String::new(),
    };
    client.clone().create_user(request(0)).await.unwrap();
    // A slow upstream: each call that gets through holds its permit for 300 ms.
    let slow = r#"{"fault": {"kind": "latency", "millis": 300}, "times": 20}"#;
    assert_eq!(
        post_json(&format!("{emulator}/_emulator/faults"), slow).await,
        204
    );
    let before = rss_kib(pid);
    let mut shed_latencies = Vec::new();
    let mut ok = 0;
    for round in 0..5 {
        let calls: Vec<_> = (0..400)
            .map(|i| {
                let mut c = client.clone();
                let r = request(1 + round * 400 + i);
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    (
                        c.create_user(r).await.map(|_| ()).map_err(|s| s.code()),
                        started.elapsed(),
                    )
                })
            })
            .collect();
        for call in calls {
            match call.await.unwrap() {
                (Ok(()), _) => ok += 1,
                (Err(tonic::Code::Unavailable), took) => shed_latencies.push(took),
                (Err(code), _) => panic!("only OK or the shedding UNAVAILABLE, got {code:?}"),
            }
        }
    }
    let after = rss_kib(pid);
    assert!(
        !shed_latencies.is_empty(),
        "2000 concurrent calls over a limit of 4 were shed"
    );
    assert!((4..=40).contains(&ok), "the limit of 4 held: {ok} OK");
    assert!(shed_latencies.len() >= 1900, "{} shed", shed_latencies.len());
    shed_latencies.sort();
    let median = shed_latencies[shed_latencies.len() / 2];
    assert!(
        median < Duration::from_secs(1),
        "shed calls come back fast: median {median:?}"
    );
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    client
        .clone()
        .create_user(request(99_999))
        .await
        .expect("recovers when load drops");
    stderr_after_sigterm(child).await;
}

/// Three calls against an emulator that holds each 300 ms: how long they take together.
async fn three_slow_calls(args: &[&str]) -> Duration {
    let (_child, listen, emulator) = start_emulated_with_emulator(args, &[]).await;
    let client = ChimeServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let slow = r#"{"fault": {"kind": "latency", "millis": 300}, "times": 3}"#;
    assert_eq!(
        post_json(&format!("{emulator}/_emulator/faults"), slow).await,
        204
    );
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let mut c = client.clone();
            let request = CreateUserRequest {
                account_id: DEMO_ACCOUNT_ID.into(),
                email: Some(format!("turn{i}@example.com")),
                username: None,
                user_type: UserType::PrivateUser as i32,
                request_id: String::new(),
            };
            tokio::spawn(async move { c.create_user(request).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("every call is served");
    }
    started.elapsed()
}

#[tokio::test]
async fn upstream_max_connections_makes_calls_take_turns_upstream() {
    let one = three_slow_calls(&["--upstream-max-connections", "1"]).await;
    assert!(
        one >= Duration::from_millis(900),
        "one connection: one call upstream at a time, {one:?}"
    );
    let default = three_slow_calls(&[]).await;
    assert!(
        default < Duration::from_millis(850),
        "by default the three go upstream together, {default:?}"
    );
}
