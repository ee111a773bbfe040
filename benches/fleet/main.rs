//! `cargo bench --bench fleet`: what a fleet of gateways adds to one Chime account's load under
//! faults (docs/design.md §8), measured where Chime would count it: at the emulator, one process,
//! with each gateway in its own process and calls offered at a fixed rate across the fleet.
//!
//! Scenarios (`RATE` calls/s in all, each call with a new request id and email, a 5 s deadline):
//! - `outage-503`: every create answers 503;
//! - `outage-500`: every create answers 500 without storing (an unknown outcome: looked up);
//! - `transient-503`: 10% of creates answer 503;
//! - `throttled`: the account accepts `LIMIT` requests/s (429 beyond), offered 5x that.
//!
//! Senders: 1 and 4 gateways with the protections at their defaults (`on`) and without them
//! (`--retry-budget-tokens off --upstream-rate off`), and, as anchors, 4 AWS SDK clients alone
//! (standard and adaptive retry mode, 3 attempts, each its own retry partition).
//!
//! Settings: `FLEET_SECONDS` (per run, default 20), `FLEET_ONLY` (run the scenarios whose name
//! contains it). Writes `target/bench/fleet.md` and the "Under faults" table of `BENCHMARKS.md`.

#[allow(dead_code)]
#[path = "../load/generator.rs"]
mod generator;
#[allow(dead_code)]
#[path = "../load/procs.rs"]
mod procs;

use std::{fmt::Write as _, sync::Arc, time::Duration};

use aws_config::retry::RetryConfig;
use aws_sdk_chime::{config::retry::RetryPartition, types::UserType as SdkUserType};
use chime_gateway::{
    chime,
    emulator::{DEMO_ACCOUNT_ID, Stats},
    pb::chime::v1::{CreateUserRequest, UserType, chime_service_client::ChimeServiceClient},
};
use generator::{Run, open_loop};

/// Calls offered per second, across the fleet.
const RATE: f64 = 100.0;
/// The throttled account's limit, in requests per second.
const LIMIT: u32 = 20;
/// Each call's deadline.
const DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Outage503,
    Outage500,
    Transient503,
    Throttled,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Outage503 => "outage-503",
            Scenario::Outage500 => "outage-500",
            Scenario::Transient503 => "transient-503",
            Scenario::Throttled => "throttled",
        }
    }

    /// The emulator's chaos (admin API) for the scenario's fault.
    fn chaos(self) -> Option<String> {
        let (share, status, error_type) = match self {
            Scenario::Outage503 => (1.0, 503, "ServiceUnavailableException"),
            Scenario::Outage500 => (1.0, 500, "ServiceFailureException"),
            Scenario::Transient503 => (0.1, 503, "ServiceUnavailableException"),
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

    fn seconds(&self) -> f64 {
        self.runs.iter().map(|r| r.seconds).fold(0.0, f64::max)
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

    fn sent_per_limit(&self) -> f64 {
        let sent = self.stats.create_user.received + self.stats.list_users.received;
        sent as f64 / self.seconds() / f64::from(LIMIT)
    }

    fn ok_per_limit(&self) -> f64 {
        self.ok() as f64 / self.seconds() / f64::from(LIMIT)
    }

    /// The smallest sender's OK calls against an even share of them.
    fn min_share(&self) -> f64 {
        let even = self.ok() as f64 / self.runs.len() as f64;
        if even == 0.0 {
            return 0.0;
        }
        self.runs
            .iter()
            .map(|r| Self::ok_of(r) as f64 / even)
            .fold(f64::MAX, f64::min)
    }

    fn line(&self) -> String {
        let (goal, met) = self.scenario.goal(self);
        let protected = self.sender.contains("(on)");
        format!(
            "| {} | {} | {} | {:.2}% | {:.3} | {:.3} | {:.2}x | {:.2}x | {:.2} | {} |",
            self.scenario.name(),
            self.sender,
            self.calls(),
            self.ok_share() * 100.0,
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

async fn gateway_call(addr: &str) -> impl Fn(u64) -> Call + Clone + Send + 'static {
    let client = ChimeServiceClient::new(procs::channel(addr).await.unwrap());
    move |id| {
        let mut client = client.clone();
        Box::pin(async move {
            let mut call = tonic::Request::new(request(id));
            call.set_timeout(DEADLINE);
            match client.create_user(call).await {
                Ok(_) => "OK".to_owned(),
                Err(s) => format!("{:?}", s.code()),
            }
        })
    }
}

async fn sdk_call(emulator: &str, i: usize, adaptive: bool) -> impl Fn(u64) -> Call + Clone + Send + 'static {
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
            match tokio::time::timeout(DEADLINE, sent).await {
                Ok(Ok(_)) => "OK".to_owned(),
                Ok(Err(_)) => "Error".to_owned(),
                Err(_) => "DeadlineExceeded".to_owned(),
            }
        })
    }
}

async fn run(scenario: Scenario, sender: Sender, seconds: Duration) -> Row {
    let limit = LIMIT.to_string();
    let settings: Vec<(&str, &str)> = match scenario {
        Scenario::Throttled => vec![("CHIME_EMULATOR_THROTTLE_RPS", limit.as_str())],
        _ => vec![],
    };
    let emulator = procs::emulator_with(&settings).await;
    let url = emulator.addr.clone();
    if let Some(chaos) = scenario.chaos() {
        let (status, _) = procs::admin(&url, http::Method::POST, "chaos", &chaos).await;
        assert_eq!(status, 204);
    }
    let n = sender.count();
    let rate = RATE / n as f64;
    let mut gateways = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let call: Box<dyn Fn(u64) -> Call + Send + Sync> = match sender {
            Sender::Gateways { protected, .. } => {
                let off = ["--retry-budget-tokens", "off", "--upstream-rate", "off"];
                let args: &[&str] = if protected { &[] } else { &off };
                let (gateway, _) = procs::gateway(&url, args).await;
                let call = gateway_call(&gateway.addr).await;
                gateways.push(gateway);
                Box::new(call)
            }
            Sender::Sdk { adaptive, .. } => Box::new(sdk_call(&url, i, adaptive).await),
        };
        let call = Arc::new(call);
        tasks.push(tokio::spawn(open_loop(rate, seconds, move |id| call(id))));
    }
    let mut runs = Vec::new();
    for task in tasks {
        runs.push(task.await.unwrap());
    }
    let (_, body) = procs::admin(&url, http::Method::GET, "stats", "").await;
    let stats: Stats = serde_json::from_slice(&body).unwrap();
    drop(gateways);
    Row {
        scenario,
        sender: sender.label(),
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
        "{RATE} calls/s offered for {} s across the senders, each call with a request id and a \
         5 s deadline; R = {LIMIT} requests/s, the throttled account's limit. Requests are counted \
         at the emulator (creates, and ListUsers lookups).\n",
        seconds.as_secs()
    );
    let _ = writeln!(
        out,
        "| scenario | senders | calls | OK | creates/call | requests/call | sent/s vs R | OK/s vs R | min share | goal |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
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
    let senders = [
        Sender::Gateways {
            n: 1,
            protected: true,
        },
        Sender::Gateways {
            n: 1,
            protected: false,
        },
        Sender::Gateways {
            n: 4,
            protected: true,
        },
        Sender::Gateways {
            n: 4,
            protected: false,
        },
        Sender::Sdk {
            n: 4,
            adaptive: false,
        },
        Sender::Sdk { n: 4, adaptive: true },
    ];
    let mut rows = Vec::new();
    for scenario in [
        Scenario::Outage503,
        Scenario::Outage500,
        Scenario::Transient503,
        Scenario::Throttled,
    ] {
        if !scenario.name().contains(&only) {
            continue;
        }
        for sender in senders {
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
    if only.is_empty() {
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
