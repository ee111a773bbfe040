//! Chaos: many callers, each creating one user with its own request id and retrying on any
//! retryable or unknown outcome, while the emulator meets a seeded random mix of every fault,
//! before and after storing the user, on half of its CreateUser requests.
//!
//! Lookups (ListUsers) are served faithfully: a lookup that fails leaves the original status by
//! contract, and after a 409 that is ALREADY_EXISTS (with `reconciliation: failed`), which this
//! test's callers must never see. tests/reconciliation.rs covers failed lookups.
//!
//! Every protection is at its default (the retry budget, the send rate). The same chaos runs
//! three ways: on a fresh gateway; after a throttle on another account of the same credentials;
//! and with `--state-dir`, the gateway drained and restarted on the same directory and address in
//! the middle of the run, its calls in flight cut by the drain.
//!
//! With reconciliation on, every caller must end with OK and its own user, the emulator must hold
//! exactly one user per email, and no caller may ever see ALREADY_EXISTS. The same run with
//! reconciliation off counts the callers it would have failed (printed, not asserted as a number).
//!
//! Bounded: `CHAOS_CALLERS` callers (default 300), 30 at a time, 40 tries each at most. The seed
//! is printed; `CHAOS_SEED` repeats a run.

mod common;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chime_gateway::{
    emulator::{ChaosConfig, DEMO_ACCOUNT_ID, Emulator, Fault, Operation, TypeLocation},
    idempotency::Journal,
    pb::chime::v1::{CreateUserRequest, UserType, chime_service_client::ChimeServiceClient},
    server::ServeOptions,
    service::{
        Backoff, CallPolicy, ChimeGateway, DEFAULT_IDEMPOTENCY_CAPACITY, DEFAULT_IDEMPOTENCY_TTL, RequestIds,
    },
};
use common::{Gateway, emulator, request, upstream_for};
use tokio::sync::Semaphore;
use tonic::{Code, transport::Channel};

const CONCURRENCY: usize = 30;
const TRIES: usize = 40;

fn setting(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn error(status: u16, error_type: Option<&str>) -> Fault {
    Fault::Error {
        status,
        error_type: error_type.map(str::to_owned),
        type_in: TypeLocation::Header,
        retry_after: None,
    }
}

fn after_commit(status: u16) -> Fault {
    Fault::CommitThenError {
        status,
        error_type: None,
        type_in: TypeLocation::Nowhere,
        retry_after: None,
    }
}

/// Every fault kind; the errors are those a real Chime may answer without storing the user
/// (before) or after storing it (500, 502, 504: outcomes the contract calls unknown).
fn faults() -> Vec<Fault> {
    vec![
        error(429, Some("ThrottledClientException")),
        error(503, Some("ServiceUnavailableException")),
        error(500, Some("ServiceFailureException")),
        error(502, None),
        Fault::Reset,
        Fault::Latency { millis: 800 },
        Fault::MalformedBody,
        Fault::CommitThenReset,
        Fault::CommitThenDelay { millis: 800 },
        after_commit(500),
        after_commit(502),
        after_commit(504),
    ]
}

/// How one caller's create ended.
#[derive(Debug, Default)]
struct Caller {
    email: String,
    user_id: Option<String>,
    returned_email: Option<String>,
    saw_already_exists: bool,
    tries: usize,
    codes: Vec<Code>,
}

async fn one_caller(mut client: ChimeServiceClient<Channel>, i: usize, seed: u64) -> Caller {
    let email = format!("chaos-{seed}-{i}@example.com");
    let request = CreateUserRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        ..request(Some(&email), UserType::PrivateUser)
    };
    let mut caller = Caller {
        email,
        ..Default::default()
    };
    while caller.tries < TRIES {
        caller.tries += 1;
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(Duration::from_secs(3));
        match client.create_user(call).await {
            Ok(response) => {
                let user = response.into_inner().user.unwrap_or_default();
                caller.user_id = Some(user.user_id);
                caller.returned_email = user.primary_email;
                return caller;
            }
            Err(status) => {
                caller.codes.push(status.code());
                if status.code() == Code::AlreadyExists {
                    // Final: the gateway keeps it for this request id, so retrying is useless.
                    caller.saw_already_exists = true;
                    return caller;
                }
                tokio::time::sleep(Duration::from_millis(10 + (i % 4) as u64 * 10)).await;
            }
        }
    }
    caller
}

/// What happens to the gateway around the callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// A fresh gateway.
    Fresh,
    /// Another account of the same credentials was throttled just before.
    AfterThrottle,
    /// `--state-dir`; drained and restarted on the same directory and address mid-run.
    Restart,
}

/// Another account of the emulator, throttled before the callers come.
const OTHER_ACCOUNT: &str = "0f0e0d0c-0b0a-0908-0706-050403020100";

fn policy(reconcile: bool) -> CallPolicy {
    CallPolicy {
        upstream_timeout: Duration::from_millis(400),
        default_deadline: Duration::from_secs(3),
        max_attempts: 3,
        backoff: Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
        reconcile,
    }
}

/// A gateway at its defaults in front of `emu`, with the journal in `state_dir` if given.
async fn gateway(
    emu: &Emulator,
    reconcile: bool,
    state_dir: Option<&std::path::Path>,
) -> ChimeGateway<chime_gateway::chime::SdkUpstream> {
    let gateway = ChimeGateway::new(upstream_for(emu).await, policy(reconcile), 64);
    match state_dir {
        Some(dir) => {
            let (journal, recovered) = Journal::open(dir, DEFAULT_IDEMPOTENCY_TTL, 10_000).unwrap();
            let ids = RequestIds::journaled(
                DEFAULT_IDEMPOTENCY_TTL,
                DEFAULT_IDEMPOTENCY_CAPACITY,
                journal,
                recovered,
            );
            gateway.with_request_ids(ids)
        }
        None => gateway,
    }
}

/// Calls to another account of the same credentials, as other callers of the sidecar make them:
/// served, then throttled by Chime (the throttle is the credentials', not the account's).
async fn throttle_another_account(emu: &Emulator, client: &mut ChimeServiceClient<Channel>) {
    emu.add_account(OTHER_ACCOUNT);
    for n in 0..20 {
        let request = CreateUserRequest {
            account_id: OTHER_ACCOUNT.into(),
            ..request(Some(&format!("served-{n}@example.com")), UserType::PrivateUser)
        };
        client.create_user(request).await.unwrap();
    }
    emu.inject(error(429, Some("ThrottledClientException")), 6);
    for n in 0..6 {
        let request = CreateUserRequest {
            account_id: OTHER_ACCOUNT.into(),
            ..request(Some(&format!("elsewhere-{n}@example.com")), UserType::PrivateUser)
        };
        let _ = client.create_user(request).await;
    }
}

/// Runs every caller against a gateway with `reconcile` and a chaotic emulator.
async fn run(seed: u64, reconcile: bool, scenario: Scenario) -> (Emulator, Vec<Caller>) {
    let emu = emulator().await;
    let state_dir = std::env::temp_dir().join(format!("chime-chaos-{}", uuid::Uuid::new_v4()));
    let journaled = (scenario == Scenario::Restart).then_some(state_dir.as_path());
    let options = || ServeOptions::with_grace(Duration::from_millis(200));
    let gw = Gateway::serve(gateway(&emu, reconcile, journaled).await, options()).await;
    let mut client = gw.client().await;
    if scenario == Scenario::AfterThrottle {
        throttle_another_account(&emu, &mut client).await;
    }
    emu.set_chaos(Some(ChaosConfig {
        seed,
        share: 0.5,
        faults: faults(),
        operation: Some(Operation::CreateUser),
    }));
    let callers = setting("CHAOS_CALLERS").unwrap_or(300) as usize;
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let (client, permits) = (client.clone(), permits.clone());
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                one_caller(client, i, seed).await
            })
        })
        .collect();
    let gw = if scenario == Scenario::Restart {
        // Mid-run: a rolling restart. The drain's grace is short, so calls in flight are cut.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let addr = gw.addr;
        gw.stop().await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Gateway::serve_on(listener, gateway(&emu, reconcile, journaled).await, options())
    } else {
        gw
    };
    let mut ended = Vec::new();
    for task in tasks {
        ended.push(task.await.unwrap());
    }
    emu.set_chaos(None);
    gw.stop().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    (emu, ended)
}

fn seed() -> u64 {
    let seed = setting("CHAOS_SEED").unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (CHAOS_SEED={seed} repeats this run)");
    seed
}

/// Every caller ends with OK and its own user, Chime holds one user per email, and no caller
/// ever sees ALREADY_EXISTS.
async fn every_caller_ends_with_its_own_user(scenario: Scenario) {
    let seed = seed();
    let started = Instant::now();
    let (emu, callers) = run(seed, true, scenario).await;
    let stored: HashMap<String, String> = emu
        .users(DEMO_ACCOUNT_ID)
        .unwrap()
        .into_iter()
        .map(|u| (u.email.unwrap(), u.user_id))
        .collect();
    for c in &callers {
        let context = format!(
            "seed {seed}, {scenario:?}, {}: {:?} after {} tries",
            c.email, c.codes, c.tries
        );
        assert!(!c.saw_already_exists, "ALREADY_EXISTS: {context}");
        let user_id = c
            .user_id
            .as_deref()
            .unwrap_or_else(|| panic!("never OK: {context}"));
        assert_eq!(c.returned_email.as_deref(), Some(c.email.as_str()), "{context}");
        assert_eq!(
            stored.get(&c.email).map(String::as_str),
            Some(user_id),
            "{context}"
        );
    }
    assert_eq!(
        emu.user_count(DEMO_ACCOUNT_ID),
        Some(callers.len()),
        "seed {seed}, {scenario:?}: one user per email"
    );
    let retried = callers.iter().filter(|c| c.tries > 1).count();
    let refused = callers
        .iter()
        .flat_map(|c| &c.codes)
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    eprintln!(
        "chaos seed {seed}, {scenario:?}, reconcile on: {} callers all OK with their own user, {retried} of them after a retry, {refused} RESOURCE_EXHAUSTED on the way, {:.1} s",
        callers.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_ends_with_exactly_its_own_user_under_chaos() {
    every_caller_ends_with_its_own_user(Scenario::Fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_ends_with_its_own_user_after_a_throttle_on_another_account() {
    every_caller_ends_with_its_own_user(Scenario::AfterThrottle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_ends_with_its_own_user_across_a_rolling_restart_with_a_state_dir() {
    every_caller_ends_with_its_own_user(Scenario::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconciliation_the_same_chaos_fails_callers() {
    let seed = seed();
    let (emu, callers) = run(seed, false, Scenario::Fresh).await;
    let already_exists = callers.iter().filter(|c| c.saw_already_exists).count();
    let never_ok = callers.iter().filter(|c| c.user_id.is_none()).count();
    eprintln!(
        "chaos seed {seed}, reconcile off: {never_ok} of {} callers failed ({already_exists} got ALREADY_EXISTS for their own user)",
        callers.len()
    );
    assert_eq!(
        emu.user_count(DEMO_ACCOUNT_ID),
        Some(callers.len()),
        "seed {seed}"
    );
    assert!(
        already_exists > 0,
        "seed {seed}: the chaos must lose answers, or the test above proves nothing"
    );
}
