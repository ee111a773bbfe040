//! The binaries as processes: start them as an operator does, read what they print, stop them
//! with SIGTERM.

use std::{process::Stdio, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    task::JoinHandle,
};

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_chime-gateway");
pub const EMULATOR: &str = env!("CARGO_BIN_EXE_chime-emulator");

/// A command with no AWS or gateway settings inherited from the environment.
pub fn command(bin: &str) -> Command {
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

pub fn sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

pub async fn post_json(url: &str, body: &str) -> u16 {
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

/// A gateway process and everything it wrote to stderr, read as it comes so it never blocks.
pub struct Running {
    pub child: Child,
    pub stderr: JoinHandle<String>,
}

/// A started gateway: the process and the addresses it printed.
pub struct Started {
    pub running: Running,
    /// `HOST:PORT`, or `unix:/path`.
    pub api: String,
    /// `HOST:PORT` of `/metrics`.
    pub metrics: String,
    /// `HOST:PORT` of the health-only port, when there is one.
    pub health: Option<String>,
    /// The in-process emulator's URL, with `--emulate`.
    pub emulator: Option<String>,
    /// What it printed after the API's address, up to its exit.
    pub later_stdout: JoinHandle<Vec<String>>,
}

/// Starts `chime-gateway` with exactly `args` and `env`; returns once it printed the API's address.
pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Started {
    let mut cmd = command(GATEWAY);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut emulator, mut api) = (None, None);
    let after = |line: &str, marker: &str| line.split_once(marker).map(|(_, rest)| rest.trim().to_owned());
    while api.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the gateway printed its addresses in time")
            .unwrap()
            .expect("the gateway printed its addresses");
        emulator = emulator.or_else(|| after(&line, "emulator listening on "));
        api = after(&line, "serving chime.v1.ChimeService on ");
    }
    let mut later = Vec::new();
    // The metrics (and health) lines follow the API's at once.
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
        let done = line.contains("metrics on ") && !args.contains(&"--health-listen");
        later.push(line);
        if done
            || later
                .iter()
                .any(|l| l.contains("health (grpc.health.v1 only) on "))
        {
            break;
        }
    }
    let metrics = later
        .iter()
        .find_map(|l| after(l, "metrics on http://"))
        .map(|m| m.trim_end_matches("/metrics").to_owned())
        .expect("the metrics address");
    let health = later
        .iter()
        .find_map(|l| after(l, "health (grpc.health.v1 only) on "));
    let later_stdout = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            later.push(line);
        }
        later
    });
    Started {
        running: Running { child, stderr },
        api: api.unwrap(),
        metrics,
        health,
        emulator,
        later_stdout,
    }
}

/// Starts `chime-gateway --emulate` on ephemeral ports with extra args/env, returns the process and
/// its API address.
pub async fn start_emulated(args: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let (running, listen, _) = start_emulated_with_emulator(args, env).await;
    (running, listen)
}

/// As [`start_emulated`], also returning the in-process emulator's URL.
pub async fn start_emulated_with_emulator(args: &[&str], env: &[(&str, &str)]) -> (Running, String, String) {
    let mut all = vec![
        "--emulate",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    let started = start(&all, env).await;
    (started.running, started.api, started.emulator.unwrap())
}

/// Sends SIGTERM, checks the exit status is 0, and returns what the process wrote to stderr.
pub async fn stderr_after_sigterm(mut running: Running) -> String {
    sigterm(&running.child);
    let status = tokio::time::timeout(Duration::from_secs(10), running.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    running.stderr.await.unwrap()
}
