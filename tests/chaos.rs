//! Chaos: many callers, each creating one user with its own request id and retrying on any
//! retryable or unknown outcome, while the emulator meets a seeded random mix of every fault,
//! before and after storing the user, on half of its CreateUser requests.
//!
//! Lookups (ListUsers) are served faithfully: a lookup that fails leaves the original status by
//! contract, and after a 409 that is ALREADY_EXISTS (with `reconciliation: failed`), which this
//! test's callers must never see. tests/reconciliation.rs covers failed lookups.
//!
//! The gateway keeps its retry budget at the defaults; its send rate is off (see `run`).
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
    pb::chime::v1::{CreateUserRequest, UserType, chime_service_client::ChimeServiceClient},
    server::ServeOptions,
    service::{Backoff, CallPolicy, ChimeGateway},
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

/// Runs every caller against a gateway with `reconcile` and a chaotic emulator.
async fn run(seed: u64, reconcile: bool) -> (Emulator, Vec<Caller>) {
    let emu = emulator().await;
    emu.set_chaos(Some(ChaosConfig {
        seed,
        share: 0.5,
        faults: faults(),
        operation: Some(Operation::CreateUser),
    }));
    let policy = CallPolicy {
        upstream_timeout: Duration::from_millis(400),
        default_deadline: Duration::from_secs(3),
        max_attempts: 3,
        backoff: Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
        reconcile,
    };
    // Every protection at its default: the 429s come at random, below the adaptive throttle's
    // headroom, and the retry budget earns what the calls that succeed give it.
    let gateway = ChimeGateway::new(upstream_for(&emu).await, policy, 64);
    let gw = Gateway::serve(gateway, ServeOptions::with_grace(Duration::from_secs(5))).await;
    let client = gw.client().await;
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
    let mut ended = Vec::new();
    for task in tasks {
        ended.push(task.await.unwrap());
    }
    emu.set_chaos(None);
    (emu, ended)
}

fn seed() -> u64 {
    let seed = setting("CHAOS_SEED").unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (CHAOS_SEED={seed} repeats this run)");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_ends_with_exactly_its_own_user_under_chaos() {
    let seed = seed();
    let started = Instant::now();
    let (emu, callers) = run(seed, true).await;
    let stored: HashMap<String, String> = emu
        .users(DEMO_ACCOUNT_ID)
        .unwrap()
        .into_iter()
        .map(|u| (u.email.unwrap(), u.user_id))
        .collect();
    for c in &callers {
        let context = format!("seed {seed}, {}: {:?} after {} tries", c.email, c.codes, c.tries);
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
        "seed {seed}: one user per email"
    );
    let retried = callers.iter().filter(|c| c.tries > 1).count();
    eprintln!(
        "chaos seed {seed}, reconcile on: {} callers all OK with their own user, {retried} of them after a retry, {:.1} s",
        callers.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconciliation_the_same_chaos_fails_callers() {
    let seed = seed();
    let (emu, callers) = run(seed, false).await;
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
