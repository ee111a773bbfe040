//! `cargo bench --bench load`: the gateway's cost against the floor it cannot avoid, measured side
//! by side in one run so ratios hold on a noisy machine. Writes `target/bench/results.json`, the
//! results section of `BENCHMARKS.md`, and the windows of the request-id pairs
//! (`target/bench/request-id*-windows.tsv`, for `scripts/profile-request-id`).
//!
//! Scenarios, all on loopback, the emulator in its own process:
//! 1. `sdk-alone`: the AWS SDK calling the emulator from this process (no gRPC hop);
//! 2. `gateway`: a tonic client -> the gateway process -> the emulator; 1 and 2 alternate every
//!    40 ms in one closed loop, so that the ratio of their CPU per call holds on a noisy machine;
//! 3. `bare-tonic`: a tonic server answering a fixed response (the gRPC-only floor);
//! 4. `*-half`: 1, 2 and 3 at a fixed rate of half the gateway's saturated rate, with the calls
//!    over 5, 10, 25 and 50 ms as the bench client saw them and as the gateway handled them;
//! 5. `overload`: 10x the gateway's concurrency limit against a slow emulator;
//! 6. `in-flight-1000`: 1,000 calls held in flight by a slow emulator, with the default
//!    `--upstream-max-connections` and then with others (the memory/throughput trade-off);
//! 7. `gateway-request-id`: 2 with a new request id on every call against `gateway-without-id`,
//!    in a gateway of their own on processors of its own (the client and the emulator on the
//!    others), the same closed loop switching between the two every 40 ms (what a request id
//!    costs per call, as a mean over paired windows with its 95% confidence interval), the same
//!    pair with `--state-dir` (`*-state-dir`), and the memory-only pair again with every
//!    processor shared (`*-shared`); `gateway-unprotected`: 2 with the retry budget and send
//!    rate off (what they cost);
//! 8. `ledger-path*`: the request-id path alone in this process, hot, with `--state-dir`, and
//!    cold (the caches walked over before each call); `ledger-empty`, `ledger-full`: RSS after as
//!    many calls as fill the request-id memory at its default capacity, with request ids and
//!    without (the memory a full ledger adds);
//! 9. `*-workers-N`, `*-threads-N`: at the low rate, the gateway with `--worker-threads N` and the
//!    SDK alone on N threads, for 1, 2 and one per core;
//! 10. `*-unix`: the bare round trip and the gateway at the low rate over a Unix socket, and
//!     `mender`: what the `:authority` mender costs per call when a client sends a socket path;
//! 11. `hostile-worst-*`: the gateway's peak RSS under the worst input of the hostile-client tests,
//!     on TCP and on the Unix socket, with an honest caller beside it.
//!
//! Settings: `BENCH_SECONDS` (per scenario, default 5), `BENCH_CONCURRENCY` (default 32),
//! `BENCH_ID_SECONDS` (each request-id pair, default 120);
//! `BENCH_ONLY=request-id` runs only the request-id pairs and prints their cost, writing only their
//! windows; `BENCH_ONLY=hostile` runs only the `hostile-worst-*` rows and prints them.

mod generator;
mod procs;
mod report;
// The raw HTTP/2 client of the hostile-client tests, for the `hostile-worst-*` rows.
#[allow(dead_code)]
#[path = "../../tests/hostile_clients/wire.rs"]
mod wire;

use std::time::{Duration, Instant};

use chime_gateway::service::DEFAULT_IDEMPOTENCY_CAPACITY;
use chime_gateway::{
    chime::{self, SdkUpstream, Upstream},
    error,
    pb::chime::v1::{
        CreateUserRequest, CreateUserResponse, User, UserType,
        chime_service_client::ChimeServiceClient,
        chime_service_server::{ChimeService, ChimeServiceServer},
    },
    translate,
};
use generator::{Run, closed_loop, counted_loop, open_loop};
use report::{Report, Scenario};
use tonic::transport::Channel;

/// The rate of the low-load pair: the gateway's own added latency, without CPU contention.
const LOW_RATE: u32 = 200;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(id: u64) -> CreateUserRequest {
    CreateUserRequest {
        account_id: chime_gateway::emulator::DEMO_ACCOUNT_ID.into(),
        email: Some(format!("bench-{}-{id}@example.com", std::process::id())),
        username: None,
        user_type: UserType::PrivateUser as i32,
        request_id: String::new(),
    }
}

/// Whether each gRPC call carries a new request id.
#[derive(Clone, Copy)]
enum Ids {
    Without,
    With,
    /// None, though one is drawn and dropped: the client works as hard as with one, so that a
    /// pair against `With` tells only the gateway's cost apart.
    Drawn,
}

async fn grpc_client(addr: &str) -> ChimeServiceClient<Channel> {
    ChimeServiceClient::new(procs::channel(addr).await.unwrap())
}

fn grpc_call(
    client: ChimeServiceClient<Channel>,
    ids: Ids,
) -> impl Fn(u64) -> futures_call::Call + Clone + Send + 'static {
    move |id| {
        let mut c = client.clone();
        let mut request = request(id);
        match ids {
            Ids::Without => {}
            Ids::With => request.request_id = uuid::Uuid::new_v4().to_string(),
            Ids::Drawn => drop(std::hint::black_box(uuid::Uuid::new_v4().to_string())),
        }
        Box::pin(async move {
            match c.create_user(request).await {
                Ok(_) => "OK".to_owned(),
                Err(s) => format!("{:?}", s.code()),
            }
        })
    }
}

fn sdk_call(
    upstream: std::sync::Arc<SdkUpstream>,
) -> impl Fn(u64) -> futures_call::Call + Clone + Send + 'static {
    move |id| {
        let up = upstream.clone();
        Box::pin(async move {
            match up.create_user(translate::to_input(request(id))).await {
                Ok(_) => "OK".to_owned(),
                Err(e) => format!("{:?}", error::rule(&e).code),
            }
        })
    }
}

mod futures_call {
    pub type Call = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;
}

/// Runs `f` while measuring the CPU time of `pid` (or of this process).
async fn with_cpu<F: std::future::Future<Output = Run>>(pid: Option<u32>, f: F) -> (Run, f64) {
    let before = procs::cpu_time(pid);
    let run = f.await;
    let used = procs::cpu_time(pid) - before;
    let per_call = used.as_secs_f64() * 1e6 / run.requests.max(1) as f64;
    (run, per_call)
}

async fn suite() {
    let seconds = Duration::from_secs(setting("BENCH_SECONDS", 5));
    let concurrency = setting("BENCH_CONCURRENCY", 32) as usize;
    let emulator = procs::emulator().await;
    let mut report = Report::new(seconds, concurrency);
    if std::env::var("BENCH_ONLY").as_deref() == Ok("hostile") {
        hostile(&emulator.addr, &mut report).await;
        return;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("request-id") {
        ledger_path(200_000, &mut report).await;
        request_ids(&emulator, concurrency, &mut report).await;
        report.print_request_id_cost();
        return;
    }

    let (gateway, startup) = procs::gateway(&emulator.addr, &[]).await;
    report.startup_ms = startup.as_secs_f64() * 1e3;
    tokio::time::sleep(Duration::from_millis(200)).await;
    report.idle_rss_kib = procs::status_kib(gateway.pid(), "VmRSS");

    let sdk = chime::load_static_sdk_config(&emulator.addr, procs::KEY_ID, procs::SECRET).await;
    let builder = aws_sdk_chime::config::Builder::from(&sdk)
        .http_client(chime::http_client(Duration::from_secs(90), Some(256)));
    let upstream = std::sync::Arc::new(SdkUpstream::from_builder(builder));
    let sdk_fn = sdk_call(upstream);
    let gw_fn = grpc_call(grpc_client(&gateway.addr).await, Ids::Without);

    // Warm both paths' connection pools.
    closed_loop(concurrency, Duration::from_millis(500), sdk_fn.clone()).await;
    closed_loop(concurrency, Duration::from_millis(500), gw_fn.clone()).await;

    // The SDK alone (this process's CPU) and the gateway (its process's CPU) alternate like the
    // request-id pair, so that the ratio of their costs is measured under the same drift.
    let label = |other: &str| {
        format!(
            "closed loop, {concurrency} concurrent, alternating with {other} every {} ms",
            WINDOWS.0.as_millis()
        )
    };
    let erased: [std::sync::Arc<dyn Fn(u64) -> futures_call::Call + Send + Sync>; 2] = [
        std::sync::Arc::new(sdk_fn.clone()),
        std::sync::Arc::new(gw_fn.clone()),
    ];
    let gateway_pid = gateway.pid();
    let ([sdk_run, gw_run], windows) = generator::alternating(
        concurrency,
        seconds * 2,
        WINDOWS,
        erased.map(|call| move |id| call(id)),
        |arm| procs::cpu_time((arm == 1).then_some(gateway_pid)),
    )
    .await;
    let [sdk_cpu, gw_cpu] = report::Added::of(&windows).arms;
    report.push(Scenario::new("sdk-alone", &label("gateway"), sdk_run).cpu(sdk_cpu));
    let saturated = gw_run.rps;
    report.push(
        Scenario::new("gateway", &label("sdk-alone"), gw_run)
            .cpu(gw_cpu)
            .rss(procs::status_kib(gateway.pid(), "VmHWM")),
    );
    let label = format!("closed loop, {concurrency} concurrent");
    unprotected(&emulator.addr, concurrency, seconds, &label, &mut report).await;

    let bare = procs::bare_server().await;
    let bare_fn = grpc_call(grpc_client(&bare.addr).await, Ids::Without);
    closed_loop(concurrency, Duration::from_millis(500), bare_fn.clone()).await;
    let (run, cpu) = with_cpu(
        Some(bare.pid()),
        closed_loop(concurrency, seconds, bare_fn.clone()),
    )
    .await;
    report.push(Scenario::new("bare-tonic", &label, run).cpu(cpu));
    let low = format!("open loop, {LOW_RATE}/s (machine mostly idle)");
    let (run, cpu) = with_cpu(
        Some(bare.pid()),
        open_loop(LOW_RATE as f64, seconds, bare_fn.clone()),
    )
    .await;
    report.push(Scenario::new("bare-tonic-low", &low, run).cpu(cpu));
    let rate = (saturated / 2.0).max(1.0);
    let label = format!("open loop, {rate:.0}/s (half of saturation)");
    let (run, cpu) = with_cpu(Some(bare.pid()), open_loop(rate, seconds, bare_fn)).await;
    report.push(Scenario::new("bare-tonic-half", &label, run).cpu(cpu));
    drop(bare);

    let (run, cpu) = with_cpu(None, open_loop(rate, seconds, sdk_fn.clone())).await;
    report.push(Scenario::new("sdk-alone-half", &label, run).cpu(cpu));
    let metrics = gateway.metrics.unwrap();
    let (handled_before, slower_before) = procs::handled_slower_than(metrics).await;
    let (run, cpu) = with_cpu(Some(gateway.pid()), open_loop(rate, seconds, gw_fn.clone())).await;
    let (handled, slower) = procs::handled_slower_than(metrics).await;
    let slower = slower
        .into_iter()
        .map(|(ms, n)| (ms, n - slower_before[&ms]))
        .collect();
    report.push(
        Scenario::new("gateway-half", &label, run)
            .cpu(cpu)
            .handled(handled - handled_before, slower),
    );

    let label = format!("open loop, {LOW_RATE}/s (machine mostly idle)");
    let (run, cpu) = with_cpu(None, open_loop(LOW_RATE as f64, seconds, sdk_fn)).await;
    report.push(Scenario::new("sdk-alone-low", &label, run).cpu(cpu));
    let (run, cpu) = with_cpu(Some(gateway.pid()), open_loop(LOW_RATE as f64, seconds, gw_fn)).await;
    report.push(Scenario::new("gateway-low", &label, run).cpu(cpu));
    drop(gateway);

    ledger_path(200_000, &mut report).await;
    request_ids(&emulator, concurrency, &mut report).await;
    for ids in [Ids::Without, Ids::With] {
        ledger(&emulator.addr, concurrency, ids, &mut report).await;
    }
    workers(&emulator.addr, seconds, &mut report).await;
    unix_socket(&emulator.addr, seconds, &mut report).await;
    hostile(&emulator.addr, &mut report).await;
    // From here on the emulator holds every call 20 ms.
    overload(&emulator.addr, seconds, &mut report).await;
    in_flight(&emulator.addr, seconds, None, &mut report).await;
    for connections in [64, 128, 512, 2048] {
        in_flight(&emulator.addr, seconds, Some(connections), &mut report).await;
    }
    report.write();
}

/// The worker counts to compare: 1, 2, and one per core of this machine.
fn worker_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1, 2, cores];
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// Per worker count, at the low rate: the gateway with `--worker-threads N`, and the SDK alone on
/// a runtime of N threads in this process (a single-threaded one for 1).
async fn workers(emulator: &str, seconds: Duration, report: &mut Report) {
    let label = format!("open loop, {LOW_RATE}/s (machine mostly idle)");
    for n in worker_counts() {
        let (gateway, _) = procs::gateway(emulator, &["--worker-threads", &n.to_string()]).await;
        let call = grpc_call(grpc_client(&gateway.addr).await, Ids::Without);
        closed_loop(4, Duration::from_millis(300), call.clone()).await;
        let (run, cpu) = with_cpu(Some(gateway.pid()), open_loop(LOW_RATE as f64, seconds, call)).await;
        let rss = procs::status_kib(gateway.pid(), "VmRSS");
        report.push(
            Scenario::new(&format!("gateway-low-workers-{n}"), &label, run)
                .cpu(cpu)
                .rss(rss),
        );
        drop(gateway);
        let emulator = emulator.to_owned();
        let (run, cpu) = tokio::task::spawn_blocking(move || sdk_alone_on(n, &emulator, seconds))
            .await
            .unwrap();
        report.push(Scenario::new(&format!("sdk-alone-low-threads-{n}"), &label, run).cpu(cpu));
    }
}

/// The SDK alone at the low rate on a runtime of `threads` threads of its own.
fn sdk_alone_on(threads: usize, emulator: &str, seconds: Duration) -> (Run, f64) {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = builder.enable_all().build().unwrap();
    runtime.block_on(async {
        let sdk = chime::load_static_sdk_config(emulator, procs::KEY_ID, procs::SECRET).await;
        let builder = aws_sdk_chime::config::Builder::from(&sdk)
            .http_client(chime::http_client(Duration::from_secs(90), Some(256)));
        let call = sdk_call(std::sync::Arc::new(SdkUpstream::from_builder(builder)));
        closed_loop(4, Duration::from_millis(300), call.clone()).await;
        with_cpu(None, open_loop(LOW_RATE as f64, seconds, call)).await
    })
}

/// TCP against a Unix socket at the low rate: the bare gRPC round trip, and the gateway.
async fn unix_socket(emulator: &str, seconds: Duration, report: &mut Report) {
    let label = format!("open loop, {LOW_RATE}/s, over a Unix socket");
    let bare = procs::bare_server_at(&procs::socket_path("bare")).await;
    let call = grpc_call(grpc_client(&bare.addr).await, Ids::Without);
    closed_loop(4, Duration::from_millis(300), call.clone()).await;
    let (run, cpu) = with_cpu(Some(bare.pid()), open_loop(LOW_RATE as f64, seconds, call)).await;
    report.push(Scenario::new("bare-tonic-low-unix", &label, run).cpu(cpu));
    drop(bare);
    let (gateway, _) = procs::gateway_at(emulator, &procs::socket_path("gateway"), &[]).await;
    let call = grpc_call(grpc_client(&gateway.addr).await, Ids::Without);
    closed_loop(4, Duration::from_millis(300), call.clone()).await;
    let (run, cpu) = with_cpu(Some(gateway.pid()), open_loop(LOW_RATE as f64, seconds, call)).await;
    report.push(Scenario::new("gateway-low-unix", &label, run).cpu(cpu));
    mender(200_000, report);
}

/// `hostile-worst-tcp`, `hostile-worst-unix`: the worst input of `tests/hostile_clients/` (600
/// requests on one connection, each with a header list one byte under the 16 KiB cap and no
/// body; on the socket with the socket's path as `:authority`, so through the mender), with one
/// honest caller on another connection throughout: its latency, and the gateway's peak RSS over
/// the attack (its idle RSS in the label). The tests hold it to idle + 16 MiB, on TLS too.
async fn hostile(emulator: &str, report: &mut Report) {
    for listener in ["tcp", "unix"] {
        let (gateway, _) = match listener {
            "tcp" => procs::gateway(emulator, &[]).await,
            _ => procs::gateway_at(emulator, &procs::socket_path("hostile"), &[]).await,
        };
        let call = grpc_call(grpc_client(&gateway.addr).await, Ids::Without);
        closed_loop(4, Duration::from_millis(300), call.clone()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pid = gateway.pid();
        let idle = procs::status_kib(pid, "VmRSS");
        // VmHWM starts over from the memory resident now.
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
        let (target, authority) = match gateway.addr.strip_prefix("unix:") {
            Some(path) => (wire::Target::Unix(path.into()), path.as_bytes().to_vec()),
            None => (wire::Target::Tcp(gateway.addr.clone()), b"localhost".to_vec()),
        };
        let attack = tokio::spawn(worst_input(target, authority));
        let run = counted_loop(1, 300, call).await;
        attack.await.unwrap();
        let label = format!(
            "1 caller beside 600 header lists 1 byte under the cap on one connection; idle {:.1} MiB",
            idle as f64 / 1024.0
        );
        let name = format!("hostile-worst-{listener}");
        let peak = procs::status_kib(pid, "VmHWM");
        report.push(Scenario::new(&name, &label, run).rss(peak));
        println!(
            "  RSS:          idle {:.1} MiB, peak {:.1} MiB (+{:.1} MiB)",
            idle as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(idle) as f64 / 1024.0
        );
    }
}

/// Sends the worst input of the hostile-client tests on a connection of its own, and reads what
/// the gateway answers for two seconds.
async fn worst_input(target: wire::Target, authority: Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    const CAP: usize = 16 * 1024;
    let mut fields = wire::request_fields(&authority);
    fields.push(wire::pad_field(CAP - 1 - wire::list_size(&fields)));
    let block = wire::plain_block(&fields);
    let mut bytes = wire::opening();
    for stream in (1..1200).step_by(2) {
        bytes.extend(wire::frame(wire::HEADERS, wire::END_HEADERS, stream, &block));
    }
    let (read, mut write) = tokio::io::split(wire::connect(&target).await);
    let answer = tokio::spawn(wire::answer(read, Duration::from_secs(2)));
    write.write_all(&bytes).await.unwrap();
    answer.await.unwrap();
}

/// `mender`: the `:authority` mender alone (what a connection that sends the socket's path as
/// `:authority` costs the gateway per call, beyond `gateway-low-unix`): a client's header block
/// and message per call, fed through it, the CPU of this process per call.
fn mender(calls: u64, report: &mut Report) {
    use chime_gateway::authority::Mender;
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/chime.v1.ChimeService/CreateUser"),
        (b":authority", b"/var/run/chime-gateway/grpc.sock"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"user-agent", b"grpc-python/1.85.1 grpc-c/50.0.0 (linux; chttp2)"),
        (b"grpc-timeout", b"4999m"),
    ];
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    };
    let mut encoder = loona_hpack::Encoder::new();
    let mut mender = Mender::new(chime_gateway::server::ConnectionLimits::default().header_limits());
    let mut out = bytes::BytesMut::new();
    mender.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut out);
    let message = [0u8, 0, 0, 0, 70]
        .iter()
        .copied()
        .chain([b'x'; 70])
        .collect::<Vec<_>>();
    let calls_bytes: Vec<Vec<u8>> = (0..calls)
        .map(|i| {
            let stream = (2 * i + 1) as u32;
            let block = encoder.encode(headers.iter().copied());
            let mut bytes = frame(0x1, 0x4, stream, &block);
            bytes.extend(frame(0x0, 0x1, stream, &message));
            bytes
        })
        .collect();
    let before = procs::cpu_time(None);
    let started = Instant::now();
    for bytes in &calls_bytes {
        mender.feed(bytes, &mut out);
        out.clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = (procs::cpu_time(None) - before).as_secs_f64() * 1e6 / calls as f64;
    let run = generator::Run {
        requests: calls,
        seconds,
        rps: calls as f64 / seconds,
        codes: [("OK".to_owned(), calls)].into(),
        ..Default::default()
    };
    let label = format!("{calls} header blocks with a socket path as :authority, in process");
    report.push(Scenario::new("mender", &label, run).cpu(cpu));
}

/// `ledger-path`, `ledger-path-state-dir`: what the gateway does for a request id, in process and
/// alone: parse the id, digest the key and the fingerprint, and run the call through a full
/// request-id memory (its answer stored, the oldest evicted), without and with the journal of
/// `--state-dir`. CPU per call of this process, less a loop that makes and drops the same answer.
/// `ledger-path-cold`: the first, with the caches walked over before each call.
async fn ledger_path(calls: usize, report: &mut Report) {
    use chime_gateway::{
        error::CallError,
        idempotency::{Ending, Journal, Ledger},
        service::{DEFAULT_IDEMPOTENCY_TTL, Kept, Success},
        validate,
    };
    let capacity = DEFAULT_IDEMPOTENCY_CAPACITY;
    let fill = capacity as usize * 6 / 5;
    let now = prost_types::Timestamp {
        seconds: 1_764_000_000,
        nanos: 0,
    };
    let success = Success {
        response: CreateUserResponse {
            user: Some(User {
                user_id: uuid::Uuid::new_v4().to_string(),
                account_id: Some(chime_gateway::emulator::DEMO_ACCOUNT_ID.into()),
                primary_email: Some("bench-1234-56789@example.com".into()),
                license_type: 1,
                user_type: UserType::PrivateUser as i32,
                user_registration_status: 1,
                user_invitation_status: 1,
                invited_on: Some(now),
                alexa_for_business_metadata: Some(Default::default()),
                ..Default::default()
            }),
        }
        .into(),
        request_id: Some(uuid::Uuid::new_v4().to_string()),
        reconciled: false,
    };
    let requests: Vec<CreateUserRequest> = (0..fill + calls)
        .map(|i| CreateUserRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            ..request(i as u64)
        })
        .collect();
    #[allow(clippy::result_large_err, reason = "the gateway's own type, as it is")]
    let make = || -> Kept { Ok(std::hint::black_box(&success).clone()) };
    let before = procs::cpu_time(None);
    for _ in &requests[fill..] {
        drop(std::hint::black_box(make()));
    }
    let floor = procs::cpu_time(None) - before;
    let dir = std::env::temp_dir().join(format!("chime-bench-ledger-{}", std::process::id()));
    // Cold: before each call, a walk over more memory than the caches near the core hold, as a
    // gateway's other work (the SDK, hyper, h2) leaves them between one call's request-id work
    // and the next. Timed per call, less the same walk before making an answer.
    let cold_calls = calls / 10;
    let mut walk = vec![0u8; THRASH_BYTES];
    let mut thrash = move || {
        for line in walk.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&walk);
    };
    let mut cold_floor = Duration::ZERO;
    for _ in 0..cold_calls {
        thrash();
        let t = Instant::now();
        drop(std::hint::black_box(make()));
        cold_floor += t.elapsed();
    }
    for (journal, cold) in [(false, false), (true, false), (false, true)] {
        let calls = if cold { cold_calls } else { calls };
        let mut ledger: Ledger<Kept, CallError> = Ledger::new(DEFAULT_IDEMPOTENCY_TTL, capacity);
        if journal {
            let (journal, recovered) = Journal::open(&dir, DEFAULT_IDEMPOTENCY_TTL, fill).unwrap();
            ledger.attach_journal(journal, &recovered.in_doubt);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        let mut cpu = Duration::ZERO;
        let started = Instant::now();
        let mut took = Vec::with_capacity(calls);
        for (i, r) in requests.iter().take(fill + calls).enumerate() {
            if i == fill {
                cpu = procs::cpu_time(None);
            }
            if cold && i >= fill {
                thrash();
            }
            let t = Instant::now();
            let id = validate::request_id(&r.request_id).unwrap();
            let (key, fingerprint) = ledger.identify(r, id);
            let outcome = ledger
                .run(key, fingerprint, false, deadline, |progress| {
                    progress.sent();
                    progress.answered(false);
                    // Encoded once, as the gateway keeps (and sends) an answer.
                    std::future::ready(Ending::Final(make().map(Success::encoded)))
                })
                .await;
            drop(std::hint::black_box(outcome));
            if i >= fill {
                took.push(t.elapsed());
            }
        }
        let per_call = if cold {
            let timed: Duration = took.iter().sum();
            timed.saturating_sub(cold_floor).as_secs_f64() * 1e6 / calls as f64
        } else {
            let used = procs::cpu_time(None) - cpu;
            used.saturating_sub(floor).as_secs_f64() * 1e6 / calls as f64
        };
        let seconds = started.elapsed().as_secs_f64();
        took.sort_unstable();
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_micros() as u64;
        let run = generator::Run {
            requests: calls as u64,
            seconds,
            rps: (fill + calls) as f64 / seconds,
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
            codes: [("OK".to_owned(), calls as u64)].into(),
            ..Default::default()
        };
        let (name, label) = match (journal, cold) {
            (true, _) => ("ledger-path-state-dir", "with --state-dir".to_owned()),
            (false, false) => ("ledger-path", "memory only".to_owned()),
            (false, true) => (
                "ledger-path-cold",
                format!("memory only, {} MiB walked before each", THRASH_BYTES >> 20),
            ),
        };
        let label = format!("{calls} calls with new request ids through a full memory, {label}, in process");
        report.push(Scenario::new(name, &label, run).cpu(per_call));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `ledger-path-cold` walks before each call: more than the core's own caches (L1, L2) and
/// a good share of the shared L3.
const THRASH_BYTES: usize = 16 << 20;

/// How long the request-id pairs run in each gateway, in seconds, unless `BENCH_ID_SECONDS` says.
/// A window's CPU per call varies by 30 to 45 us (the gateway takes about the same CPU in every
/// window while the calls finished in it vary), so the 95% interval of what a request id adds is
/// about +-2.2 us after 120 s, +-4 to +-6 after 20 to 40.
const ID_RUN: u64 = 120;
/// How the windows of every alternating pair (`sdk-alone`/`gateway`, the request-id pairs) go:
/// a switch, time for the other kind's calls in flight to finish, then the measured window.
const WINDOWS: (Duration, Duration) = (Duration::from_millis(40), Duration::from_millis(15));

/// What a request id costs per call, in gateway processes of their own: one keeping request ids
/// in memory only, one with `--state-dir`, both on processors of their own (see
/// [`procs::Cores`]), and for reference the memory-only one again sharing every processor with
/// this process (the client) and the emulator, as the other scenarios do. The client draws a
/// request id for every call in both arms (and sends it in one). In each gateway the request-id
/// memory is first filled (the steady state of a busy gateway); then the same closed loop
/// switches between calls without and with a new request id every [`WINDOWS`] (ABBA), reading
/// the gateway's CPU time at each window's ends. A noisy machine's drift (one 3 s run of the same
/// code varies by 10-40 us per call here) falls on both arms alike, and each adjacent pair of
/// windows is one paired difference.
async fn request_ids(emulator: &procs::Proc, concurrency: usize, report: &mut Report) {
    let run = Duration::from_secs(setting("BENCH_ID_SECONDS", ID_RUN));
    let dir = std::env::temp_dir().join(format!("chime-bench-state-{}", std::process::id()));
    let state_dir = dir.to_str().unwrap().to_owned();
    let cores = procs::Cores::split();
    let pairs = [
        ("", vec![], true),
        ("-state-dir", vec!["--state-dir", &state_dir], true),
        ("-shared", vec![], false),
    ];
    for (i, (suffix, extra, apart)) in pairs.into_iter().enumerate() {
        let (gateway, _) = if apart {
            procs::gateway_on(&emulator.addr, &extra, &cores.gateway).await
        } else {
            procs::gateway(&emulator.addr, &extra).await
        };
        let others = if apart { &cores.rest } else { &cores.all };
        procs::pin(std::process::id(), others);
        procs::pin(emulator.pid(), others);
        let client = grpc_client(&gateway.addr).await;
        let calls = [
            grpc_call(client.clone(), Ids::Drawn),
            grpc_call(client, Ids::With),
        ];
        closed_loop(concurrency, Duration::from_millis(500), calls[0].clone()).await;
        let fill = DEFAULT_IDEMPOTENCY_CAPACITY * 6 / 5;
        counted_loop(concurrency, fill, calls[1].clone()).await;
        let pid = gateway.pid();
        let probed_at = std::cell::RefCell::new(Vec::new());
        let (runs, windows) = generator::alternating(concurrency, run, WINDOWS, calls, |_| {
            probed_at.borrow_mut().push(procs::monotonic());
            procs::cpu_time(Some(pid))
        })
        .await;
        procs::pin(std::process::id(), &cores.all);
        procs::pin(emulator.pid(), &cores.all);
        write_windows(
            &format!("request-id{suffix}"),
            pid,
            &windows,
            &probed_at.into_inner(),
        );
        let added = report::Added::of(&windows);
        let label = format!(
            "closed loop, {concurrency} concurrent, {} s alternating every {} ms; {}",
            run.as_secs(),
            WINDOWS.0.as_millis(),
            if apart {
                cores.describe()
            } else {
                "every CPU shared".to_owned()
            }
        );
        let names = [
            format!("gateway-without-id{suffix}"),
            format!("gateway-request-id{suffix}"),
        ];
        for ((name, run), cpu) in names.iter().zip(runs).zip(added.arms) {
            report.push(Scenario::new(name, &label, run).cpu(cpu));
        }
        report.request_ids[i] = Some(added);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `target/bench/NAME-windows.tsv`: the gateway's pid, then each measured window of a pair
/// (its arm, its start and end on `CLOCK_MONOTONIC` in ns, the calls that finished in it, the
/// gateway's CPU time over it in ns), so that `scripts/profile-request-id` can tell which arm each
/// of `perf`'s samples fell in, and each window's cost can be looked at.
fn write_windows(name: &str, pid: u32, windows: &[generator::Window], probed_at: &[Duration]) {
    let mut text = format!("# pid {pid}\n# arm\tfrom_ns\tto_ns\tcalls\tcpu_ns\n");
    for (window, span) in windows.iter().zip(probed_at.chunks_exact(2)) {
        text += &format!(
            "{}\t{}\t{}\t{}\t{}\n",
            window.arm,
            span[0].as_nanos(),
            span[1].as_nanos(),
            window.calls,
            window.probed.as_nanos()
        );
    }
    std::fs::create_dir_all("target/bench").unwrap();
    std::fs::write(format!("target/bench/{name}-windows.tsv"), text).unwrap();
}

/// Calls one fresh gateway as many times as fill the request-id memory at its default capacity
/// (and 20% more), then reads its RSS: with request ids the memory is full, without it is empty,
/// and the difference is what a full memory adds.
async fn ledger(emulator: &str, concurrency: usize, ids: Ids, report: &mut Report) {
    let calls = DEFAULT_IDEMPOTENCY_CAPACITY * 6 / 5;
    let (gateway, _) = procs::gateway(emulator, &[]).await;
    let call = grpc_call(grpc_client(&gateway.addr).await, ids);
    let (run, cpu) = with_cpu(Some(gateway.pid()), counted_loop(concurrency, calls, call)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let name = match ids {
        Ids::Without | Ids::Drawn => "ledger-empty",
        Ids::With => "ledger-full",
    };
    let label = format!("{calls} calls, {concurrency} concurrent, then RSS");
    report.push(
        Scenario::new(name, &label, run)
            .cpu(cpu)
            .rss(procs::status_kib(gateway.pid(), "VmRSS")),
    );
}

/// 10x the concurrency limit against an emulator slowed to 20 ms a call.
async fn overload(emulator: &str, seconds: Duration, report: &mut Report) {
    let limit = 16;
    let (gateway, _) = procs::gateway(emulator, &["--max-concurrency", &limit.to_string()]).await;
    procs::inject(
        emulator,
        r#"{"fault": {"kind": "latency", "millis": 20}, "times": 100000000}"#,
    )
    .await;
    let call = grpc_call(grpc_client(&gateway.addr).await, Ids::Without);
    let label = format!("closed loop, {} concurrent, limit {limit}", limit * 10);
    let (run, cpu) = with_cpu(Some(gateway.pid()), closed_loop(limit * 10, seconds, call)).await;
    report.push(
        Scenario::new("overload", &label, run)
            .cpu(cpu)
            .rss(procs::status_kib(gateway.pid(), "VmHWM")),
    );
}

/// 1,000 calls in flight at once (the emulator holds each 20 ms), sampling RSS throughout; with
/// the default `--upstream-max-connections`, or with `connections`.
async fn in_flight(emulator: &str, seconds: Duration, connections: Option<usize>, report: &mut Report) {
    let limit = connections.map(|n| n.to_string());
    // One connection carries the 1,000 calls: past the default stream limit of 256, the client
    // would queue them instead.
    let mut args = vec![
        "--max-concurrency",
        "2048",
        "--http2-max-concurrent-streams",
        "1024",
    ];
    let (mut name, mut label) = (
        "in-flight-1000".to_owned(),
        "closed loop, 1000 concurrent".to_owned(),
    );
    if let Some(n) = &limit {
        args.extend(["--upstream-max-connections", n]);
        name += &format!("-conns-{n}");
        label += &format!(", --upstream-max-connections {n}");
    }
    let (gateway, _) = procs::gateway(emulator, &args).await;
    let call = grpc_call(grpc_client(&gateway.addr).await, Ids::Without);
    let pid = gateway.pid();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        let end = Instant::now() + seconds;
        while Instant::now() < end {
            peak = peak.max(procs::status_kib(pid, "VmRSS"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    });
    let (run, cpu) = with_cpu(Some(pid), closed_loop(1000, seconds, call)).await;
    let peak = sampler.await.unwrap();
    report.push(Scenario::new(&name, &label, run).cpu(cpu).rss(peak));
}

/// `gateway-unprotected`: `gateway` with the retry budget and the send rate off, in a process
/// of its own: what the protections cost per call when nothing fails.
async fn unprotected(
    emulator: &str,
    concurrency: usize,
    seconds: Duration,
    label: &str,
    report: &mut Report,
) {
    let off = ["--retry-budget", "off", "--adaptive-throttle", "off"];
    let (gateway, _) = procs::gateway(emulator, &off).await;
    let call = grpc_call(grpc_client(&gateway.addr).await, Ids::Without);
    closed_loop(concurrency, Duration::from_millis(500), call.clone()).await;
    let (run, cpu) = with_cpu(Some(gateway.pid()), closed_loop(concurrency, seconds, call)).await;
    report.push(Scenario::new("gateway-unprotected", label, run).cpu(cpu));
}

/// `--serve-bare ADDR`: a tonic server that answers every CreateUser with the same user.
struct Bare(CreateUserResponse);

#[tonic::async_trait]
impl ChimeService for Bare {
    async fn create_user(
        &self,
        _request: tonic::Request<CreateUserRequest>,
    ) -> Result<tonic::Response<CreateUserResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.clone()))
    }
}

async fn serve_bare(addr: &str) {
    let user = User {
        user_id: "1ab2345c-67de-8901-f23g-45h678901j2k".into(),
        account_id: Some(chime_gateway::emulator::DEMO_ACCOUNT_ID.into()),
        primary_email: Some("bench@example.com".into()),
        user_type: UserType::PrivateUser as i32,
        ..Default::default()
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(ChimeServiceServer::new(Bare(CreateUserResponse {
            user: Some(user),
        })));
    match addr.strip_prefix("unix:") {
        Some(path) => {
            let listener = tokio::net::UnixListener::bind(path).unwrap();
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            router.serve_with_incoming(incoming).await.unwrap();
        }
        None => router.serve(addr.parse().unwrap()).await.unwrap(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if let Some(i) = args.iter().position(|a| a == "--serve-bare") {
        runtime.block_on(serve_bare(&args[i + 1]));
    } else if args.iter().any(|a| a == "--bench") {
        runtime.block_on(suite());
    } else {
        // `cargo test --all-targets` builds and runs this binary too: measuring a debug build
        // would only overwrite BENCHMARKS.md with meaningless numbers.
        println!("load: measures only under `cargo bench --bench load`");
    }
}
