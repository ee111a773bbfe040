//! `cargo bench --bench fleet`: what a fleet of gateways adds to one Chime account's load under
//! faults (docs/design.md §8), measured where Chime would count it: at the emulator, one process,
//! with each gateway in its own process and calls offered at a fixed rate across the fleet.
//!
//! Scenarios (`RATE` calls/s in all, each call with a new request id and email, a 5 s deadline):
//! - `outage-503`: every create answers 503;
//! - `outage-500`: every create answers 500 without storing (an unknown outcome: looked up);
//! - `transient-503`: 10% of creates answer 503;
//! - `throttled`: the account accepts `LIMIT` requests/s (429 beyond), offered 5x that;
//! - `random-429`: 7% of creates answer 429 at random, whatever the rate;
//! - `burst`: one sender's 6 calls meet 429; 10 s later a batch of 200 creates, 32 at a time,
//!   each with a 30 s deadline, on a healthy account.
//!
//! Senders: 1, 4 and 50 gateways with the protections at their defaults (`on`) and 1 and 50
//! without them (`--retry-budget off --adaptive-throttle off`), and, as anchors, AWS SDK clients
//! alone (standard and adaptive retry mode, 3 attempts, each its own retry partition). Every
//! sender is up before any load starts; then every sender starts at once, its calls a Poisson
//! process of its share of `RATE` (evenly spaced calls would lock in phase with Chime's token
//! bucket, and the sender whose calls come just after each refill would take every token).
//!
//! Settings: `FLEET_SECONDS` (per run, default 20), `FLEET_ONLY` (run the scenarios whose name
//! contains it), `FLEET_SENDERS` (run the rows whose senders contain it, as `50 gateways (on)`). Writes `target/bench/fleet.md` and the "Under faults" table of `BENCHMARKS.md`.

#[allow(dead_code)]
#[path = "../load/generator.rs"]
mod generator;
#[allow(dead_code)]
#[path = "../load/procs.rs"]
mod procs;

use std::{fmt::Write as _, sync::Arc, time::Duration};

use aws_config::retry::RetryConfig;
use aws_sdk_chime::{config::retry::RetryPartition, types::UserType as SdkUserType};
use chime_gateway::error::GATEWAY_DOMAIN;
use chime_gateway::{
    chime,
    emulator::{DEMO_ACCOUNT_ID, Stats},
    pb::chime::v1::{CreateUserRequest, UserType, chime_service_client::ChimeServiceClient},
};
use generator::{Run, counted_loop, poisson_loop};

/// Calls offered per second, across the fleet.
const RATE: f64 = 100.0;
/// The throttled account's limit, in requests per second.
const LIMIT: u32 = 20;
/// Each call's deadline.
const DEADLINE: Duration = Duration::from_secs(5);

/// The burst's calls, how many at a time, and each one's deadline.
const BURST: (u64, usize, Duration) = (200, 32, Duration::from_secs(30));

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Outage503,
    Outage500,
    Transient503,
    Throttled,
    Random429,
    Burst,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Outage503 => "outage-503",
            Scenario::Outage500 => "outage-500",
            Scenario::Transient503 => "transient-503",
            Scenario::Throttled => "throttled",
            Scenario::Random429 => "random-429",
            Scenario::Burst => "burst",
        }
    }

    /// The emulator's chaos (admin API) for the scenario's fault.
    fn chaos(self) -> Option<String> {
        let (share, status, error_type) = match self {
            Scenario::Outage503 => (1.0, 503, "ServiceUnavailableException"),
            Scenario::Outage500 => (1.0, 500, "ServiceFailureException"),
            Scenario::Transient503 => (0.1, 503, "ServiceUnavailableException"),
            Scenario::Random429 => (0.07, 429, "ThrottledClientException"),
            Scenario::Burst => (1.0, 429, "ThrottledClientException"),
            Scenario::Throttled => return None,
        };
        Some(format!(
            r#"{{"seed": 7, "share": {share}, "operation": "create_user",
                "faults": [{{"kind": "error", "status": {status}, "error_type": "{error_type}"}}]}}"#
        ))
    }

    /// The goal docs/design.md §8 sets, and whether the row meets it.
    fn goal(self, row: &Row) -> (&'static str, bool) {
        match self {
            Scenario::Outage503 => ("<= 1.1 creates/call", row.creates_per_call() <= 1.1),
            Scenario::Outage500 => ("<= 1.2 requests/call", row.requests_per_call() <= 1.2),
            Scenario::Transient503 => (">= 99.5% OK", row.ok_share() >= 0.995),
            Scenario::Throttled => (
                "sent <= 1.3R, OK >= 0.9R, share >= 0.5",
                row.sent_per_limit() <= 1.3 && row.ok_per_limit() >= 0.9 && row.min_share() >= 0.5,
            ),
            Scenario::Random429 => (">= 99% OK", row.ok_share() >= 0.99),
            Scenario::Burst => ("200 of 200 OK", row.ok() == BURST.0),
        }
    }

    /// How long the fault runs before it is measured: a throttled fleet settles first, each
    /// sidecar learning from its own calls (`FLEET_SETTLE`, default 20 s); other faults are
    /// measured from their first moment.
    fn settle(self) -> Duration {
        if self != Scenario::Throttled {
            return Duration::ZERO;
        }
        let seconds = std::env::var("FLEET_SETTLE").ok().and_then(|v| v.parse().ok());
        Duration::from_secs(seconds.unwrap_or(20))
    }

    /// How long the scenario is measured, given the runs' `seconds`: twice that when throttled,
    /// where one call in five is OK and each sender's share of them needs the calls.
    fn measured(self, seconds: Duration) -> Duration {
        if self == Scenario::Throttled {
            seconds * 2
        } else {
            seconds
        }
    }

    /// The senders of the scenario's rows.
    fn senders(self) -> Vec<Sender> {
        let gateways = |n, protected| Sender::Gateways { n, protected };
        let sdk = |n, adaptive| Sender::Sdk { n, adaptive };
        match self {
            Scenario::Burst => vec![gateways(1, true), gateways(1, false), sdk(1, true)],
            Scenario::Outage503 | Scenario::Outage500 | Scenario::Transient503 => vec![
                gateways(1, true),
                gateways(4, true),
                gateways(50, true),
                gateways(50, false),
                sdk(4, false),
            ],
            Scenario::Throttled | Scenario::Random429 => vec![
                gateways(1, true),
                gateways(4, true),
                gateways(50, true),
                gateways(50, false),
                sdk(4, false),
                sdk(4, true),
            ],
        }
    }
}

#[derive(Clone, Copy)]
enum Sender {
    Gateways { n: usize, protected: bool },
    Sdk { n: usize, adaptive: bool },
}

impl Sender {
    fn label(self) -> String {
        match self {
            Sender::Gateways { n, protected } => {
                format!(
                    "{n} gateway{} ({})",
                    plural(n),
                    if protected { "on" } else { "off" }
                )
            }
            Sender::Sdk { n, adaptive } => {
                let mode = if adaptive { "adaptive" } else { "standard" };
                format!("{n} SDK client{} alone ({mode})", plural(n))
            }
        }
    }

    fn count(self) -> usize {
        match self {
            Sender::Gateways { n, .. } | Sender::Sdk { n, .. } => n,
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One run's figures.
struct Row {
    scenario: Scenario,
    sender: String,
    /// How long calls were made for, when offered at `RATE` (not the burst).
    measured: Option<Duration>,
    runs: Vec<Run>,
    stats: Stats,
}

impl Row {
    fn calls(&self) -> u64 {
        self.runs.iter().map(|r| r.requests).sum()
    }

    fn ok_of(run: &Run) -> u64 {
        run.codes.get("OK").copied().unwrap_or(0)
    }

    fn ok(&self) -> u64 {
        self.runs.iter().map(Self::ok_of).sum()
    }

    /// Calls the adaptive throttle refused (the gateway's own RESOURCE_EXHAUSTED).
    fn refused_by_gateway(&self) -> u64 {
        let refused = |r: &Run| r.codes.get("ResourceExhausted/ADAPTIVE_THROTTLE").copied();
        self.runs.iter().filter_map(refused).sum()
    }

    fn creates_per_call(&self) -> f64 {
        self.stats.create_user.received as f64 / self.calls().max(1) as f64
    }

    fn requests_per_call(&self) -> f64 {
        (self.stats.create_user.received + self.stats.list_users.received) as f64 / self.calls().max(1) as f64
    }

    fn ok_share(&self) -> f64 {
        self.ok() as f64 / self.calls().max(1) as f64
    }

    /// Requests sent per second against `LIMIT`: those of the calls made while the scenario
    /// was measured, over that time (the burst's: over its own length).
    fn sent_per_limit(&self) -> f64 {
        let sent = self.stats.create_user.received + self.stats.list_users.received;
        sent as f64 / self.seconds() / f64::from(LIMIT)
    }

    /// OK calls per second against `LIMIT`, likewise.
    fn ok_per_limit(&self) -> f64 {
        self.ok() as f64 / self.seconds() / f64::from(LIMIT)
    }

    fn seconds(&self) -> f64 {
        match self.measured {
            Some(measured) => measured.as_secs_f64(),
            None => self.runs.iter().map(|r| r.seconds).fold(0.0, f64::max),
        }
    }

    /// The smallest sender's OK calls against an even share of them for the calls it made.
    fn min_share(&self) -> f64 {
        let (ok, calls) = (self.ok() as f64, self.calls() as f64);
        if ok == 0.0 {
            return 0.0;
        }
        self.runs
            .iter()
            .filter(|r| r.requests > 0)
            .map(|r| Self::ok_of(r) as f64 / (ok * r.requests as f64 / calls))
            .fold(f64::MAX, f64::min)
    }

    fn line(&self) -> String {
        let (goal, met) = self.scenario.goal(self);
        let protected = self.sender.contains("(on)");
        format!(
            "| {} | {} | {} | {:.2}% | {} | {:.3} | {:.3} | {:.2}x | {:.2}x | {:.2} | {} |",
            self.scenario.name(),
            self.sender,
            self.calls(),
            self.ok_share() * 100.0,
            self.refused_by_gateway(),
            self.creates_per_call(),
            self.requests_per_call(),
            self.sent_per_limit(),
            self.ok_per_limit(),
            self.min_share(),
            if protected {
                format!("{goal}: {}", if met { "met" } else { "**missed**" })
            } else {
                String::new()
            },
        )
    }
}

fn request(id: u64) -> CreateUserRequest {
    CreateUserRequest {
        account_id: DEMO_ACCOUNT_ID.into(),
        email: Some(format!("fleet-{}-{id}@example.com", std::process::id())),
        username: None,
        user_type: UserType::PrivateUser as i32,
        request_id: uuid::Uuid::new_v4().to_string(),
    }
}

type Call = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// A call's outcome as the table counts it: the gRPC code, and the reason of a refusal the
/// gateway made itself (`ResourceExhausted/ADAPTIVE_THROTTLE`).
fn outcome(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    match status.get_error_details().error_info() {
        Some(info) if info.domain == GATEWAY_DOMAIN => format!("{:?}/{}", status.code(), info.reason),
        _ => format!("{:?}", status.code()),
    }
}

async fn gateway_call(addr: &str, deadline: Duration) -> impl Fn(u64) -> Call + Clone + Send + 'static {
    let client = ChimeServiceClient::new(procs::channel(addr).await.unwrap());
    move |id| {
        let mut client = client.clone();
        Box::pin(async move {
            let mut call = tonic::Request::new(request(id));
            call.set_timeout(deadline);
            match client.create_user(call).await {
                Ok(_) => "OK".to_owned(),
                Err(s) => outcome(&s),
            }
        })
    }
}

async fn sdk_call(
    emulator: &str,
    i: usize,
    adaptive: bool,
    deadline: Duration,
) -> impl Fn(u64) -> Call + Clone + Send + 'static {
    let sdk_config = chime::load_static_sdk_config(emulator, procs::KEY_ID, procs::SECRET).await;
    let retry = if adaptive {
        RetryConfig::adaptive()
    } else {
        RetryConfig::standard()
    };
    let config = aws_sdk_chime::config::Builder::from(&sdk_config)
        .retry_config(retry.with_max_attempts(3))
        .retry_partition(RetryPartition::new(format!("fleet-{i}-{adaptive}")))
        .build();
    let client = Arc::new(aws_sdk_chime::Client::from_conf(config));
    move |id| {
        let client = client.clone();
        Box::pin(async move {
            let r = request(id);
            let sent = client
                .create_user()
                .account_id(r.account_id)
                .set_email(r.email)
                .user_type(SdkUserType::PrivateUser)
                .send();
            match tokio::time::timeout(deadline, sent).await {
                Ok(Ok(_)) => "OK".to_owned(),
                Ok(Err(_)) => "Error".to_owned(),
                Err(_) => "DeadlineExceeded".to_owned(),
            }
        })
    }
}

type Caller = Arc<Box<dyn Fn(u64) -> Call + Send + Sync>>;

/// Every sender, each ready to call: the gateways' processes are up and connected.
async fn callers(url: &str, sender: Sender, deadline: Duration) -> (Vec<Caller>, Vec<procs::Proc>) {
    let mut gateways = Vec::new();
    let mut callers = Vec::new();
    for i in 0..sender.count() {
        let call: Box<dyn Fn(u64) -> Call + Send + Sync> = match sender {
            Sender::Gateways { protected, .. } => {
                let off = ["--retry-budget", "off", "--adaptive-throttle", "off"];
                let args: &[&str] = if protected { &[] } else { &off };
                let (gateway, _) = procs::gateway(url, args).await;
                let call = gateway_call(&gateway.addr, deadline).await;
                gateways.push(gateway);
                Box::new(call)
            }
            Sender::Sdk { adaptive, .. } => Box::new(sdk_call(url, i, adaptive, deadline).await),
        };
        callers.push(Arc::new(call));
    }
    (callers, gateways)
}

/// `RATE` calls/s across `callers`, for `settle` (not counted: the emulator's counts are reset
/// after it) and then `seconds`: all start together, and each sender's calls come as a Poisson
/// process of its share of `RATE`, as independent callers' do.
async fn offered(url: &str, callers: Vec<Caller>, settle: Duration, seconds: Duration) -> Vec<Run> {
    let n = callers.len();
    let rate = RATE / n as f64;
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let tasks: Vec<_> = callers
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            let seed = 34 + i as u64;
            tokio::spawn(async move {
                tokio::time::sleep_until(start).await;
                if !settle.is_zero() {
                    let call = call.clone();
                    poisson_loop(rate, settle, seed << 1, move |id| call(id)).await;
                }
                poisson_loop(rate, seconds, seed << 1 | 1, move |id| call(id)).await
            })
        })
        .collect();
    if !settle.is_zero() {
        tokio::time::sleep_until(start + settle).await;
        let (status, _) = procs::admin(url, http::Method::DELETE, "stats", "").await;
        assert_eq!(status, 204);
    }
    let mut runs = Vec::new();
    for task in tasks {
        runs.push(task.await.unwrap());
    }
    runs
}

/// Six calls meet 429 one after another; ten seconds later a batch job sends its burst.
async fn burst(url: &str, call: Caller) -> Vec<Run> {
    for id in 0..6 {
        let _ = call(id).await;
    }
    let (status, _) = procs::admin(url, http::Method::DELETE, "chaos", "").await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (status, _) = procs::admin(url, http::Method::DELETE, "stats", "").await;
    assert_eq!(status, 204);
    let (calls, at_once, _) = BURST;
    vec![counted_loop(at_once, calls, move |id| call(id)).await]
}

async fn run(scenario: Scenario, sender: Sender, seconds: Duration) -> Row {
    let limit = LIMIT.to_string();
    let settings: Vec<(&str, &str)> = match scenario {
        Scenario::Throttled => vec![("CHIME_EMULATOR_THROTTLE_RPS", limit.as_str())],
        _ => vec![],
    };
    let emulator = procs::emulator_with(&settings).await;
    let url = emulator.addr.clone();
    let deadline = if scenario == Scenario::Burst {
        BURST.2
    } else {
        DEADLINE
    };
    let (mut callers, gateways) = callers(&url, sender, deadline).await;
    if let Some(chaos) = scenario.chaos() {
        let (status, _) = procs::admin(&url, http::Method::POST, "chaos", &chaos).await;
        assert_eq!(status, 204);
    }
    let runs = if scenario == Scenario::Burst {
        burst(&url, callers.remove(0)).await
    } else {
        offered(&url, callers, scenario.settle(), scenario.measured(seconds)).await
    };
    let (_, body) = procs::admin(&url, http::Method::GET, "stats", "").await;
    let stats: Stats = serde_json::from_slice(&body).unwrap();
    drop(gateways);
    Row {
        scenario,
        sender: sender.label(),
        measured: (scenario != Scenario::Burst).then(|| scenario.measured(seconds)),
        runs,
        stats,
    }
}

const START: &str = "<!-- fleet:start -->";
const END: &str = "<!-- fleet:end -->";

fn table(rows: &[Row], seconds: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{RATE} calls/s offered for {} s across the senders ({} s when throttled), each sender's \
         calls a Poisson process, each call with a request id and a 5 s deadline; R = {LIMIT} \
         requests/s, the throttled account's limit, counted after the fleet met the throttle for \
         {} s. `burst`: 200 creates, \
         32 at a time, each with a 30 s deadline, 10 s after the sender's 6 calls met 429 \
         (counted from the burst). Requests are counted at the emulator (creates, and ListUsers \
         lookups); min share: the least OK share of a sender against an even share for its \
         calls.\n",
        seconds.as_secs(),
        Scenario::Throttled.measured(seconds).as_secs(),
        Scenario::Throttled.settle().as_secs()
    );
    let _ = writeln!(
        out,
        "| scenario | senders | calls | OK | refused by the throttle | creates/call | requests/call | sent/s vs R | OK/s vs R | min share | goal |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let _ = writeln!(out, "{}", row.line());
    }
    out
}

async fn suite() {
    let seconds = Duration::from_secs(
        std::env::var("FLEET_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let only = std::env::var("FLEET_ONLY").unwrap_or_default();
    let senders = std::env::var("FLEET_SENDERS").unwrap_or_default();
    let mut rows = Vec::new();
    for scenario in [
        Scenario::Outage503,
        Scenario::Outage500,
        Scenario::Transient503,
        Scenario::Throttled,
        Scenario::Random429,
        Scenario::Burst,
    ] {
        if !scenario.name().contains(&only) {
            continue;
        }
        for sender in scenario.senders() {
            if !sender.label().contains(&senders) {
                continue;
            }
            let row = run(scenario, sender, seconds).await;
            println!("{}", row.line());
            if std::env::var_os("FLEET_VERBOSE").is_some() {
                let codes: Vec<_> = row.runs.iter().map(|r| &r.codes).collect();
                println!(
                    "  answered {:?} / {:?}; codes {codes:?}",
                    row.stats.create_user, row.stats.list_users
                );
            }
            rows.push(row);
        }
    }
    let table = table(&rows, seconds);
    std::fs::create_dir_all("target/bench").unwrap();
    std::fs::write("target/bench/fleet.md", &table).unwrap();
    if only.is_empty() && senders.is_empty() {
        let doc = std::fs::read_to_string("BENCHMARKS.md").unwrap();
        let (head, rest) = doc
            .split_once(START)
            .expect("BENCHMARKS.md has the fleet start marker");
        let (_, tail) = rest
            .split_once(END)
            .expect("BENCHMARKS.md has the fleet end marker");
        std::fs::write("BENCHMARKS.md", format!("{head}{START}\n{table}{END}{tail}")).unwrap();
    }
    println!("\n{table}");
}

fn main() {
    if std::env::args().any(|a| a == "--bench") {
        tokio::runtime::Runtime::new().unwrap().block_on(suite());
    } else {
        // `cargo test --all-targets` builds and runs this binary too.
        println!("fleet: measures only under `cargo bench --bench fleet`");
    }
}
