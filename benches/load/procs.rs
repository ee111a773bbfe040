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
    start_gateway(emulator_url, listen, extra, None).await
}

/// The gateway in front of `emulator_url`, allowed only the processors `cpus` from its start, so
/// that it sizes its runtime (and its request-id memory's shards) to them.
pub async fn gateway_on(emulator_url: &str, extra: &[&str], cpus: &[usize]) -> (Proc, Duration) {
    start_gateway(emulator_url, &free_port().to_string(), extra, Some(cpus)).await
}

async fn start_gateway(
    emulator_url: &str,
    listen: &str,
    extra: &[&str],
    cpus: Option<&[usize]>,
) -> (Proc, Duration) {
    let metrics = free_port();
    let started = Instant::now();
    let mut command = clean(GATEWAY);
    if let Some(cpus) = cpus {
        let set = cpu_set(cpus);
        // SAFETY: between fork and exec the closure makes one system call and touches only the
        // set it owns, which was made before the fork.
        unsafe {
            command.pre_exec(move || {
                let size = std::mem::size_of::<libc::cpu_set_t>();
                match libc::sched_setaffinity(0, size, &set) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }
    let child = command
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

/// How the request-id pairs share out the processors this bench may use: the gateway gets the
/// first half of them, and this process (the client) and the emulator the others, so that
/// neither's work evicts the gateway's code and data from the caches of the cores it runs on.
/// With one processor there is nothing to split, and all three share it.
pub struct Cores {
    pub all: Vec<usize>,
    pub gateway: Vec<usize>,
    pub rest: Vec<usize>,
}

impl Cores {
    pub fn split() -> Self {
        let all = allowed_cpus();
        let (gateway, rest) = if all.len() < 2 {
            (all.clone(), all.clone())
        } else {
            let (gateway, rest) = all.split_at(all.len() / 2);
            (gateway.to_vec(), rest.to_vec())
        };
        Self { all, gateway, rest }
    }

    /// Whether the gateway has processors of its own.
    pub fn split_apart(&self) -> bool {
        self.all.len() >= 2
    }

    /// How the processors are shared out, for a scenario's label.
    pub fn describe(&self) -> String {
        if !self.split_apart() {
            return format!(
                "gateway, client and emulator all on CPU {:?} (one CPU: not split)",
                self.all
            );
        }
        format!(
            "gateway on CPU {:?}, client and emulator on CPU {:?}",
            self.gateway, self.rest
        )
    }
}

/// The processors this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero `cpu_set_t` is an empty set, a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid place for a set of the size given.
    let err = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(err, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: `set` is initialised, and every index is below `CPU_SETSIZE`.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: an all-zero `cpu_set_t` is an empty set, a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `set` is a valid set; `cpu` came from `allowed_cpus`, below `CPU_SETSIZE`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Lets every thread of process `pid` run only on `cpus`; threads it starts later inherit the
/// set from the thread that starts them.
pub fn pin(pid: u32, cpus: &[usize]) {
    let set = cpu_set(cpus);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: libc::pid_t = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        // SAFETY: `set` is a valid set of the size given.
        if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
            let error = std::io::Error::last_os_error();
            // A thread that ended since the directory was read is no longer there to pin.
            assert_eq!(
                error.raw_os_error(),
                Some(libc::ESRCH),
                "pinning thread {tid} of {pid}: {error}"
            );
        }
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
