//! The processes under test and what `/proc` says of them: CPU time, RSS, peak RSS, and the time
//! from spawn to health SERVING.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_chime-gateway");
pub const EMULATOR: &str = env!("CARGO_BIN_EXE_chime-emulator");
pub const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
pub const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// A running process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: String,
    /// The metrics port's address, for a gateway.
    pub metrics: Option<SocketAddr>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }
}

fn clean(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") || key.starts_with("CHIME_") || key.starts_with("OTEL_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The standalone emulator, in its own process.
pub async fn emulator() -> Proc {
    emulator_with(&[]).await
}

/// The standalone emulator with more `CHIME_EMULATOR_*` settings.
pub async fn emulator_with(settings: &[(&str, &str)]) -> Proc {
    let mut child = clean(EMULATOR)
        .env("CHIME_EMULATOR_LISTEN", "127.0.0.1:0")
        .envs(settings.iter().copied())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr = line.split_once("listening on ").unwrap().1.trim().to_owned();
    Proc {
        child,
        addr,
        metrics: None,
    }
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The gateway in front of `emulator_url`, and the time from spawn to health SERVING.
pub async fn gateway(emulator_url: &str, extra: &[&str]) -> (Proc, Duration) {
    gateway_at(emulator_url, &free_port().to_string(), extra).await
}

/// The gateway listening on `listen` (`HOST:PORT` or `unix:/path`).
pub async fn gateway_at(emulator_url: &str, listen: &str, extra: &[&str]) -> (Proc, Duration) {
    let metrics = free_port();
    let started = Instant::now();
    let child = clean(GATEWAY)
        .args(["--listen", listen, "--metrics-listen", &metrics.to_string()])
        .args(extra)
        .env("AWS_ENDPOINT_URL_CHIME", emulator_url)
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let ready = wait_serving(listen).await;
    (
        Proc {
            child,
            addr: listen.to_owned(),
            metrics: Some(metrics),
        },
        ready.duration_since(started),
    )
}

/// This bench binary again, serving a fixed CreateUserResponse (the gRPC-only floor).
pub async fn bare_server() -> Proc {
    bare_server_at(&free_port().to_string()).await
}

/// The bare server listening on `listen` (`HOST:PORT` or `unix:/path`).
pub async fn bare_server_at(listen: &str) -> Proc {
    let exe = std::env::current_exe().unwrap();
    let child = clean(exe.to_str().unwrap())
        .args(["--serve-bare", listen])
        .spawn()
        .unwrap();
    wait_serving(listen).await;
    Proc {
        child,
        addr: listen.to_owned(),
        metrics: None,
    }
}

/// A path for a Unix socket that nothing uses yet.
pub fn socket_path(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("chime-bench-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    format!("unix:{}", path.display())
}

/// A channel to `addr`: `HOST:PORT`, or `unix:/path` (dialled with the `localhost` authority, as
/// grpc-go does).
pub async fn channel(addr: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let Some(path) = addr.strip_prefix("unix:") else {
        return tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await;
    };
    let path = path.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

async fn wait_serving(addr: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "{addr} never became SERVING");
        if let Ok(channel) = channel(addr).await {
            let mut health = HealthClient::new(channel);
            if let Ok(r) = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                && r.into_inner().status() == ServingStatus::Serving
            {
                return Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// User plus system CPU time a process has used, to the nanosecond (its CPU-time clock, not the
/// 10 ms ticks of `/proc/<pid>/stat`).
pub fn cpu_time(pid: Option<u32>) -> Duration {
    let mut clock = libc::CLOCK_PROCESS_CPUTIME_ID;
    if let Some(pid) = pid {
        // SAFETY: `clock` is a valid place for the clock id.
        let err = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
        assert_eq!(err, 0, "no CPU-time clock for process {pid}");
    }
    read_clock(clock)
}

/// `CLOCK_MONOTONIC` now: the clock `perf record -k CLOCK_MONOTONIC` stamps its samples with.
pub fn monotonic() -> Duration {
    read_clock(libc::CLOCK_MONOTONIC)
}

fn read_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid place for the time.
    let err = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(err, 0, "{}", std::io::Error::last_os_error());
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Scripts the emulator over its admin API.
pub async fn inject(emulator_url: &str, fault_json: &str) {
    let (status, _) = admin(emulator_url, http::Method::POST, "faults", fault_json).await;
    assert_eq!(status, 204);
}

/// One call of the emulator's admin API (`/_emulator/PATH`): the status and the body.
pub async fn admin(emulator_url: &str, method: http::Method, path: &str, body: &str) -> (u16, bytes::Bytes) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let request = http::Request::builder()
        .method(method)
        .uri(format!("{emulator_url}/_emulator/{path}"))
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

/// How many CreateUser calls the gateway at `metrics` has handled in all, and how many of them
/// took longer than each of [`crate::generator::SLOW_MS`] by its own histogram
/// (`grpc_server_handling_seconds`: from the call reaching the handler to its answer).
pub async fn handled_slower_than(metrics: SocketAddr) -> (u64, std::collections::BTreeMap<u64, u64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(metrics).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let bucket = |le: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("grpc_server_handling_seconds_bucket{")
                    && l.contains("grpc_method=\"CreateUser\"")
                    && l.contains(&format!("le=\"{le}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let total = bucket("+Inf");
    let slower = crate::generator::SLOW_MS
        .iter()
        .map(|&ms| (ms, total - bucket(&format!("{}", ms as f64 / 1000.0))))
        .collect();
    (total, slower)
}
