//! Soak: the gateway process at a fixed rate for a set time, against an emulator process meeting a
//! random mix of faults (throttling with Retry-After, 503s, resets before and after the user is
//! stored, answers later than the attempt timeout), with duplicate emails, callers that cancel and
//! callers with tiny deadlines. Every second it samples the gateway's RSS, descriptors, threads and
//! upstream connections.
//!
//! It fails on a leak (RSS of the last tenth more than 2 MiB above the first tenth after warm-up,
//! descriptors or threads growing), on a call ending with a code the error table does not give for
//! its case, and on a call never answered. Writes `target/soak/samples.csv` and
//! `target/soak/rss.svg`.
//!
//! `SOAK_SECONDS` (default 20, what CI runs; `scripts/soak` runs 600), `SOAK_RATE` (calls per
//! second, default 50), `SOAK_SEED`.

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chime_gateway::{
    emulator::{Fault, TypeLocation},
    pb::chime::v1::{CreateUserRequest, UserType, chime_service_client::ChimeServiceClient},
};
use common::{
    process::{EMULATOR, command, post_json, start, stderr_after_sigterm},
    request,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::{Code, transport::Channel};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One second's view of the gateway process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    rss_kib: u64,
    fds: usize,
    threads: u64,
    upstream: usize,
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The process's socket inodes, and how many of them are established TCP connections to `port`.
fn descriptors(pid: u32, port: u16) -> (usize, usize) {
    let links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let port = format!(":{port:04X}");
    let upstream = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let inode = cols.get(9)?;
            (cols.get(2)?.ends_with(&port) && cols.get(3)? == &"01").then(|| format!("socket:[{inode}]"))
        })
        .filter(|inode| links.contains(inode))
        .count();
    (links.len(), upstream)
}

fn sample(pid: u32, port: u16, started: Instant) -> Sample {
    let (fds, upstream) = descriptors(pid, port);
    Sample {
        at: started.elapsed().as_secs_f64(),
        rss_kib: status_field(pid, "VmRSS"),
        fds,
        threads: status_field(pid, "Threads"),
        upstream,
    }
}

/// What kind of caller a call is, and the codes the error table gives for it under these faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    /// A new user with a request id.
    Create,
    /// An email that exists already.
    Duplicate,
    /// The caller gives up after 50 ms.
    Cancel,
    /// A deadline of 2 ms: less than the margin the gateway keeps, so nothing may be sent.
    TinyDeadline,
}

impl Case {
    fn of(i: u64) -> Self {
        match i % 20 {
            0..=13 => Case::Create,
            14 | 15 => Case::Duplicate,
            16 | 17 => Case::Cancel,
            _ => Case::TinyDeadline,
        }
    }

    fn allows(self, code: Code) -> bool {
        use Code::*;
        // Faults before serving: 429 (RESOURCE_EXHAUSTED once retries are spent), 503 and
        // resets (UNAVAILABLE); after serving: the outcome is unknown (reconciled to OK, or
        // UNAVAILABLE / DEADLINE_EXCEEDED when the lookup finds nothing in time); a conflict whose
        // lookup failed stays ALREADY_EXISTS.
        let faults = [ResourceExhausted, Unavailable, DeadlineExceeded];
        match self {
            Case::Create => code == Ok || code == AlreadyExists || faults.contains(&code),
            // OK too: an attempt whose outcome is unknown is settled by a lookup, which finds the
            // user that already had the email (docs/design.md §7: found means OK, reconciled).
            Case::Duplicate => code == AlreadyExists || code == Ok || faults.contains(&code),
            Case::Cancel => {
                code == Cancelled || code == Ok || code == AlreadyExists || faults.contains(&code)
            }
            // RESOURCE_EXHAUSTED too: Chime's 429, when the attempt goes out before the deadline.
            Case::TinyDeadline => [DeadlineExceeded, Cancelled, ResourceExhausted].contains(&code),
        }
    }
}

type Tally = Arc<Mutex<BTreeMap<(Case, String), u64>>>;

async fn call(
    mut client: ChimeServiceClient<Channel>,
    case: Case,
    i: u64,
    seed: u64,
) -> Result<Code, String> {
    let mut req = match case {
        Case::Duplicate => request(
            Some(&format!("soak-{seed}-seed-{}@example.com", i % 20)),
            UserType::PrivateUser,
        ),
        _ => CreateUserRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            ..request(
                Some(&format!("soak-{seed}-{i}@example.com")),
                UserType::PrivateUser,
            )
        },
    };
    req.username = Some(format!("user {i}"));
    let mut request = tonic::Request::new(req);
    match case {
        Case::TinyDeadline => request.set_timeout(Duration::from_millis(2)),
        // The deadline as the grpc-timeout header alone: what is checked is the gateway's answer,
        // not a race between this client's own timer and an answer due 5 ms before it on a
        // loaded machine (the give-up below still catches a call never answered).
        _ => {
            let timeout = tonic::metadata::MetadataValue::from_static("3S");
            request.metadata_mut().insert("grpc-timeout", timeout);
        }
    }
    let give_up = if case == Case::Cancel {
        Duration::from_millis(50)
    } else {
        // Far past the deadline: a call still unanswered then was never answered.
        Duration::from_secs(10)
    };
    match tokio::time::timeout(give_up, client.create_user(request)).await {
        Ok(Ok(_)) => Ok(Code::Ok),
        // The protections at their defaults never refuse a call Chime would have served: these
        // 429s come at random, not by rate, so the adaptive throttle must not answer for Chime.
        Ok(Err(status)) if gateway_refused(&status) => Err(format!(
            "call {i} ({case:?}) refused by the gateway itself: {}",
            status.message()
        )),
        Ok(Err(status)) => Ok(status.code()),
        Err(_) if case == Case::Cancel => Ok(Code::Cancelled),
        Err(_) => Err(format!("call {i} ({case:?}) was never answered")),
    }
}

/// Whether the gateway refused the call itself for Chime's sake (RESOURCE_EXHAUSTED in the
/// gateway's own domain), rather than Chime refusing it.
fn gateway_refused(status: &tonic::Status) -> bool {
    use tonic_types::StatusExt;
    status.code() == Code::ResourceExhausted
        && status
            .get_error_details()
            .error_info()
            .is_some_and(|info| info.domain == chime_gateway::error::GATEWAY_DOMAIN)
}

/// A line chart of RSS over time, as SVG.
fn svg(samples: &[Sample], path: &Path) {
    let (w, h, pad) = (800.0, 300.0, 40.0);
    let t_max = samples.last().map_or(1.0, |s| s.at).max(1.0);
    let r_max = samples.iter().map(|s| s.rss_kib).max().unwrap_or(1) as f64 / 1024.0 * 1.1;
    let points: Vec<String> = samples
        .iter()
        .map(|s| {
            let x = pad + s.at / t_max * (w - 2.0 * pad);
            let y = h - pad - s.rss_kib as f64 / 1024.0 / r_max * (h - 2.0 * pad);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let doc = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{pad}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{y0}" stroke="black"/>
<text x="{pad}" y="20">chime-gateway RSS (MiB) over {t_max:.0} s; top of the axis {r_max:.1} MiB</text>
<text x="{x1}" y="{yl}" text-anchor="end">{t_max:.0} s</text><text x="4" y="{pad}">{r_max:.0}</text><text x="4" y="{y0}">0</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{points}"/>
</svg>
"##,
        y0 = h - pad,
        x1 = w - pad,
        yl = h - pad + 16.0,
        points = points.join(" ")
    );
    std::fs::write(path, doc).unwrap();
}

fn mean(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    samples.iter().map(&f).sum::<f64>() / samples.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_neither_leaks_nor_misanswers_under_a_long_mixed_load() {
    let seconds = setting("SOAK_SECONDS", 20);
    let rate = setting("SOAK_RATE", 50);
    let seed = setting("SOAK_SEED", rand::random::<u32>() as u64);
    eprintln!("soak: {seconds} s at {rate}/s, seed {seed}");

    let mut emulator = command(EMULATOR)
        .env("CHIME_EMULATOR_LISTEN", "127.0.0.1:0")
        .spawn()
        .unwrap();
    let line = BufReader::new(emulator.stdout.take().unwrap())
        .lines()
        .next_line()
        .await
        .unwrap()
        .unwrap();
    let emulator_url = line.split_once("listening on ").unwrap().1.trim().to_owned();
    let emulator_port: u16 = emulator_url.rsplit(':').next().unwrap().parse().unwrap();
    let env = [
        ("AWS_ENDPOINT_URL_CHIME", emulator_url.as_str()),
        ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("RUST_LOG", "warn"),
    ];
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--upstream-timeout",
        "500ms",
        "--idempotency-capacity",
        "200",
    ];
    let gateway = start(&args, &env).await;
    let pid = gateway.running.child.id().unwrap();
    let client = ChimeServiceClient::new(
        Channel::from_shared(format!("http://{}", gateway.api))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    // The emails the duplicates reuse, created before the faults start.
    for n in 0..20 {
        let req = request(
            Some(&format!("soak-{seed}-seed-{n}@example.com")),
            UserType::PrivateUser,
        );
        client.clone().create_user(req).await.unwrap();
    }
    let error = |status: u16, error_type: &str, retry_after| Fault::Error {
        status,
        error_type: Some(error_type.to_owned()),
        type_in: TypeLocation::Header,
        retry_after,
    };
    let chaos = serde_json::json!({
        "seed": seed, "share": 0.3, "operation": "create_user",
        "faults": [
            error(429, "ThrottledClientException", Some(1)),
            error(503, "ServiceUnavailableException", None),
            Fault::Reset,
            Fault::Latency { millis: 800 },
            Fault::CommitThenReset,
            Fault::CommitThenDelay { millis: 800 },
        ],
    });
    assert_eq!(
        post_json(&format!("{emulator_url}/_emulator/chaos"), &chaos.to_string()).await,
        204
    );

    let started = Instant::now();
    let samples = Arc::new(Mutex::new(vec![sample(pid, emulator_port, started)]));
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                samples.lock().unwrap().push(sample(pid, emulator_port, started));
            }
        })
    };
    let tally: Tally = Arc::default();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut calls = Vec::new();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        let (client, tally, failures, case) = (client.clone(), tally.clone(), failures.clone(), Case::of(i));
        calls.push(tokio::spawn(async move {
            match call(client, case, i, seed).await {
                Ok(code) => {
                    if !case.allows(code) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("call {i} ({case:?}) ended {code:?}"));
                    }
                    *tally
                        .lock()
                        .unwrap()
                        .entry((case, format!("{code:?}")))
                        .or_default() += 1;
                }
                Err(never) => failures.lock().unwrap().push(never),
            }
        }));
        i += 1;
    }
    for c in calls {
        c.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    samples.lock().unwrap().push(sample(pid, emulator_port, started));
    sampler.abort();
    stderr_after_sigterm(gateway.running).await;
    let _ = emulator.kill().await;

    let samples = samples.lock().unwrap().clone();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak");
    std::fs::create_dir_all(&dir).unwrap();
    let csv: String = std::iter::once("seconds,rss_kib,fds,threads,upstream_connections\n".to_owned())
        .chain(samples.iter().map(|s| {
            format!(
                "{:.1},{},{},{},{}\n",
                s.at, s.rss_kib, s.fds, s.threads, s.upstream
            )
        }))
        .collect();
    std::fs::write(dir.join("samples.csv"), csv).unwrap();
    svg(&samples, &dir.join("rss.svg"));

    let n = samples.len();
    let warm = n / 5;
    let tenth = (n / 10).max(1);
    let (first, last) = (&samples[warm..warm + tenth], &samples[n - tenth..]);
    let rss = |s: &[Sample]| mean(s, |x| x.rss_kib as f64);
    let max = |s: &[Sample], f: fn(&Sample) -> u64| s.iter().map(f).max().unwrap_or(0);
    let tally = tally.lock().unwrap().clone();
    eprintln!(
        "soak: {} calls; RSS {:.1} MiB at start, {:.1} MiB after warm-up, {:.1} MiB at the end; \
         descriptors {} -> {}; threads {} -> {}; upstream connections at most {}; codes {tally:?}",
        i,
        samples[0].rss_kib as f64 / 1024.0,
        rss(first) / 1024.0,
        rss(last) / 1024.0,
        samples[warm].fds,
        samples[n - 1].fds,
        samples[warm].threads,
        samples[n - 1].threads,
        samples.iter().map(|s| s.upstream).max().unwrap_or(0),
    );
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "seed {seed}: {} bad answers: {:?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    assert!(
        rss(last) <= rss(first) + 2048.0,
        "seed {seed}: RSS grew from {:.0} to {:.0} KiB",
        rss(first),
        rss(last)
    );
    assert!(
        max(last, |s| s.fds as u64) <= max(first, |s| s.fds as u64) + 8,
        "seed {seed}: descriptors grew: {first:?} -> {last:?}"
    );
    assert!(
        max(last, |s| s.threads) <= max(first, |s| s.threads) + 2,
        "seed {seed}: threads grew: {first:?} -> {last:?}"
    );
    assert!(
        tally.keys().any(|(c, code)| *c == Case::Create && code == "Ok"),
        "{tally:?}"
    );
}
