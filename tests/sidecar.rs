//! The sidecar shape: the runtime sized to the CPUs, a health-only port for probes, the API on a
//! Unix socket, logs a pipe can read, and RESOURCE_EXHAUSTED for oversized messages.

mod common;

use std::{os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use chime_gateway::{
    emulator::Fault,
    pb::chime::v1::{UserType, chime_service_client::ChimeServiceClient},
    server::{SERVICE_NAME, ServeOptions},
    service::ChimeGateway,
};
use common::{
    Gateway, emulator, policy,
    process::{GATEWAY, command, start, start_emulated, stderr_after_sigterm},
    request, upstream_for,
};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A channel over a Unix socket, as grpc-go or grpcio dial `unix:/path`.
async fn unix_channel(path: PathBuf) -> Channel {
    common::unix_channel(tonic::transport::Endpoint::from_static("http://localhost"), &path).await
}

async fn health_of(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let response = HealthClient::new(channel).check(request).await?;
    Ok(response.into_inner().status())
}

fn temp_socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chime-sidecar-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("grpc.sock")
}

fn start_log(logs: &str) -> &str {
    logs.lines().find(|l| l.contains("runtime started")).unwrap_or("")
}

#[tokio::test]
async fn the_runtime_size_and_its_reason_are_in_the_start_up_log() {
    let (running, api) = start_emulated(&["--worker-threads", "1"], &[]).await;
    let mut client = ChimeServiceClient::new(channel(&api).await);
    client
        .create_user(request(Some("one@example.com"), UserType::PrivateUser))
        .await
        .expect("a single-threaded runtime serves");
    let logs = stderr_after_sigterm(running).await;
    let line = start_log(&logs);
    assert!(line.contains("worker_threads=1"), "{logs}");
    assert!(line.contains("set by --worker-threads"), "{line}");

    let (running, _) = start_emulated(&[], &[]).await;
    let logs = stderr_after_sigterm(running).await;
    let cpus = std::thread::available_parallelism().unwrap().get();
    let line = start_log(&logs);
    assert!(
        line.contains(&format!("worker_threads={}", cpus.min(2))),
        "{line}"
    );
    assert!(line.contains(&format!("{cpus} CPUs available")), "{line}");
}

#[tokio::test]
async fn the_default_runtime_follows_the_cpus_this_process_may_use() {
    // Affinity to one CPU, as a cgroup quota of one core would do: a single worker.
    let mut cmd = std::process::Command::new("taskset");
    cmd.args(["-c", "0", GATEWAY, "--emulate", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"]);
    let mut child = tokio::process::Command::from(cmd);
    let mut child = child
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !line.contains("runtime started") {
            line.clear();
            tokio::io::AsyncBufReadExt::read_line(&mut stderr, &mut line)
                .await
                .unwrap();
        }
    })
    .await
    .expect("the start-up log line");
    assert!(line.contains("worker_threads=1"), "{line}");
    assert!(line.contains("1 CPUs available"), "{line}");
}

#[tokio::test]
async fn the_health_port_serves_health_alone_and_reports_the_drain() {
    let emu = emulator().await;
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_addr = health.local_addr().unwrap().to_string();
    let options = ServeOptions {
        health_listener: Some(health),
        ..ServeOptions::with_grace(Duration::from_secs(5))
    };
    let gateway = ChimeGateway::new(upstream_for(&emu).await, policy(), 8);
    let mut gw = Gateway::serve(gateway, options).await;
    for service in ["", SERVICE_NAME] {
        let status = health_of(channel(&health_addr).await, service).await.unwrap();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let on_health_port = ChimeServiceClient::new(channel(&health_addr).await)
        .create_user(request(None, UserType::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(on_health_port.code(), Code::Unimplemented);
    assert!(emu.requests().is_empty());

    let mut api_watch = HealthClient::new(gw.channel().await)
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        api_watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    emu.inject(Fault::Latency { millis: 600 }, 1);
    let client = gw.client().await;
    let in_flight = tokio::spawn(async move {
        let mut c = client;
        c.create_user(request(Some("late@example.com"), UserType::PrivateUser))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.shutdown();
    assert_eq!(
        api_watch.next().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    drop(api_watch);
    // A probe during the drain, on a connection of its own as the kubelet makes.
    let probe = health_of(channel(&health_addr).await, SERVICE_NAME)
        .await
        .unwrap();
    assert_eq!(probe, ServingStatus::NotServing);
    in_flight.await.unwrap().expect("the in-flight call completes");
    let finished = tokio::time::timeout(Duration::from_secs(3), &mut gw.task).await;
    assert!(matches!(finished, Ok(Ok(Ok(())))), "{finished:?}");
    assert!(
        tokio::net::TcpStream::connect(&health_addr).await.is_err(),
        "the health port closes with the API"
    );
}

#[tokio::test]
async fn ports_that_clash_or_are_taken_exit_64_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (args, setting) in [
        (
            vec![
                "--metrics-listen",
                "127.0.0.1:19464",
                "--health-listen",
                "127.0.0.1:19464",
            ],
            "--health-listen",
        ),
        (vec!["--health-listen", taken.as_str()], "--health-listen"),
        (vec!["--listen", taken.as_str()], "--listen"),
        (
            vec!["--listen", "127.0.0.1:0", "--metrics-listen", taken.as_str()],
            "--metrics-listen",
        ),
    ] {
        let out = command(GATEWAY).args(&args).output().await.unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("chime-gateway: {setting} ")),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn the_api_serves_on_a_unix_socket_and_removes_it_on_a_clean_exit() {
    let path = temp_socket("serve");
    let listen = format!("unix:{}", path.display());
    let args = [
        "--emulate",
        "--listen",
        &listen,
        "--metrics-listen",
        "127.0.0.1:0",
        "--health-listen",
        "127.0.0.1:0",
    ];
    let started = start(&args, &[]).await;
    assert_eq!(started.api, listen);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut client = ChimeServiceClient::new(unix_channel(path.clone()).await);
    let user = client
        .create_user(request(Some("uds@example.com"), UserType::PrivateUser))
        .await
        .unwrap();
    assert!(user.into_inner().user.is_some());
    let over_socket = health_of(unix_channel(path.clone()).await, SERVICE_NAME).await;
    assert_eq!(over_socket.unwrap(), ServingStatus::Serving);
    let health = started.health.clone().expect("the health port's address");
    assert_eq!(
        health_of(channel(&health).await, "").await.unwrap(),
        ServingStatus::Serving
    );
    let metrics = reqwest_text(&format!("http://{}/metrics", started.metrics)).await;
    assert!(
        metrics.contains("grpc_code=\"OK\""),
        "the call over the socket is counted: {metrics}"
    );
    let logs = stderr_after_sigterm(started.running).await;
    assert!(
        !path.exists(),
        "the socket file is removed on a clean exit:\n{logs}"
    );
    let later = started.later_stdout.await.unwrap().join("\n");
    assert!(
        later.contains("grpcurl -plaintext -d '") && later.contains(&format!("-unix {}", path.display())),
        "{later}"
    );
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_is_never_taken_over() {
    let path = temp_socket("stale");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let listen = format!("unix:{}", path.display());
    let args = [
        "--emulate",
        "--listen",
        &listen,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let first = start(&args, &[]).await;
    let mut client = ChimeServiceClient::new(unix_channel(path.clone()).await);
    client
        .create_user(request(None, UserType::Unspecified))
        .await
        .expect("serves on the replaced socket");
    let second = command(GATEWAY).args(args).output().await.unwrap();
    assert_eq!(second.status.code(), Some(64));
    let stderr = String::from_utf8(second.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("another process is serving"), "{stderr}");
    client
        .create_user(request(None, UserType::Unspecified))
        .await
        .expect("the first gateway still serves");
    stderr_after_sigterm(first.running).await;
}

#[tokio::test]
async fn piped_logs_are_plain_text_with_canonical_code_names() {
    let (running, api) = start_emulated(&[], &[]).await;
    let mut client = ChimeServiceClient::new(channel(&api).await);
    let req = request(Some("twice@example.com"), UserType::PrivateUser);
    client.create_user(req.clone()).await.unwrap();
    client.create_user(req).await.unwrap_err();
    let logs = stderr_after_sigterm(running).await;
    assert!(!logs.contains('\u{1b}'), "no ANSI escapes in a pipe:\n{logs}");
    let calls: Vec<&str> = logs.lines().filter(|l| l.contains("call finished")).collect();
    assert_eq!(calls.len(), 2, "{logs}");
    assert!(calls[0].contains("grpc_code=\"OK\""), "{}", calls[0]);
    assert!(calls[1].contains("grpc_code=\"ALREADY_EXISTS\""), "{}", calls[1]);
}

/// A GET's body as text.
async fn reqwest_text(url: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}
