//! What the retry budget and the adaptive throttle change in a call (docs/design.md §8): counts
//! of what reaches the upstream, at the defaults unless a test says why not.

use super::*;
use crate::retry::BudgetConfig;

/// The ErrorInfo metadata of a status.
fn meta(status: &Status) -> std::collections::HashMap<String, String> {
    status.get_error_details().error_info().unwrap().metadata.clone()
}

fn outage(calls: usize, http: u16) -> Vec<UpstreamError> {
    (0..calls).map(|_| status(http, None)).collect()
}

fn with_deadline(
    mut request: Request<CreateUserRequest>,
    timeout: &'static str,
) -> Request<CreateUserRequest> {
    request
        .metadata_mut()
        .insert("grpc-timeout", MetadataValue::from_static(timeout));
    request
}

/// A metric's value, from the exposition.
fn metric(gw: &ChimeGateway<Arc<Scripted>>, series: &str) -> f64 {
    let text = gw.metrics().encode();
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{series}: {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

const BALANCE: &str = "chime_gateway_retry_budget_balance";

#[tokio::test]
async fn an_outage_gets_the_calls_plus_what_the_budget_held_and_no_more() {
    let up = scripted(outage(1000, 503), vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let mut exhausted = 0;
    for _ in 0..200 {
        let s = gw.create_user(valid()).await.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable);
        if meta(&s).get("retry_budget").is_some_and(|v| v == "exhausted") {
            exhausted += 1;
            assert!(s.get_error_details().retry_info().is_some());
        }
    }
    // A new process holds a reserve of three requests, and an outage earns nothing back.
    assert_eq!(counts(&up).0, 200 + 3);
    assert!(exhausted >= 197, "{exhausted}");
    assert_eq!(metric(&gw, BALANCE), 0.0);
    assert_eq!(
        metric(&gw, "chime_gateway_retry_budget_refusals_total{kind=\"retry\"}"),
        f64::from(exhausted)
    );
}

#[tokio::test]
async fn without_a_budget_every_call_retries_to_max_attempts() {
    // The twin of the test above, with the budget off.
    let up = scripted(outage(1000, 503), vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4).with_retry_budget(None);
    for _ in 0..100 {
        let s = gw.create_user(valid()).await.unwrap_err();
        assert!(!meta(&s).contains_key("retry_budget"));
    }
    assert_eq!(counts(&up).0, 300);
}

#[tokio::test]
async fn successes_keep_the_budget_through_transient_faults() {
    // Every tenth first attempt fails once.
    let up = scripted(vec![], vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let mut ok = 0;
    for call in 0..500 {
        if call % 10 == 0 {
            up.script.lock().unwrap().push_back(status(503, None));
        }
        ok += usize::from(gw.create_user(valid()).await.is_ok());
    }
    assert_eq!(ok, 500);
    assert!(metric(&gw, BALANCE) >= 3.0);
}

#[tokio::test]
async fn an_unknown_outcome_outage_looks_up_within_the_budget_then_defers() {
    let up = scripted(outage(1000, 500), vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let mut deferred = 0;
    for n in 0..100 {
        let id = uuid::Uuid::from_u128(n + 1).to_string();
        let s = gw.create_user(with_email(&id)).await.unwrap_err();
        assert_eq!(s.code(), Code::Internal);
        if reconciliation(&s).1.as_deref() == Some("deferred") {
            deferred += 1;
            assert_eq!(meta(&s)["retry_budget"], "exhausted");
            assert!(s.get_error_details().retry_info().is_some());
        }
    }
    // The reserve's three requests: a lookup that finds nothing, the retry it allows, and a
    // lookup of that retry's unknown outcome.
    assert_eq!(counts(&up), (101, 2));
    assert_eq!(deferred, 99);
    assert_eq!(
        metric(&gw, "chime_gateway_reconciliations_total{outcome=\"deferred\"}"),
        99.0
    );
}

/// A budget whose reserve holds `requests`.
fn reserve(requests: f64) -> Option<BudgetConfig> {
    Some(BudgetConfig {
        reserve: requests,
        ..BudgetConfig::default()
    })
}

#[tokio::test]
async fn a_lookup_refused_without_a_request_id_is_skipped() {
    let up = scripted(outage(10, 500), vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(1), 4).with_retry_budget(reserve(0.2));
    let s = gw.create_user(with_email("")).await.unwrap_err();
    assert_eq!(s.code(), Code::Internal);
    assert_eq!(reconciliation(&s).1.as_deref(), Some("skipped"));
    assert_eq!(meta(&s)["retry_budget"], "exhausted");
    assert_eq!(counts(&up), (1, 0));
}

#[tokio::test]
async fn a_deferred_lookup_is_made_by_the_retry_with_the_same_request_id() {
    const OTHER: &str = "0d2f1c3e-5b6a-4e7d-8c9b-a1b2c3d4e5f6";
    let up = scripted(
        vec![status(500, None), status(500, None)],
        vec![found("other"), found("mine")],
    );
    // Room for one lookup.
    let gw = ChimeGateway::new(up.clone(), policy(1), 4).with_retry_budget(reserve(1.0));
    let first = gw.create_user(with_email(OTHER)).await.unwrap();
    assert!(flag(first.metadata(), RECONCILED_KEY), "the budget's one lookup");
    let s = gw.create_user(with_email(ID)).await.unwrap_err();
    assert_eq!(reconciliation(&s).1.as_deref(), Some("deferred"));
    assert_eq!(counts(&up), (2, 1));
    // The retry meets the user its first call stored (409) and looks it up: owed, not drawn.
    up.script.lock().unwrap().push_back(status(409, None));
    let retry = gw.create_user(with_email(ID)).await.unwrap();
    assert_eq!(user_id(&retry), "mine");
    assert!(flag(retry.metadata(), RECONCILED_KEY));
    assert_eq!(counts(&up), (3, 2));
}

#[tokio::test]
async fn the_lookup_a_deferred_call_owes_its_retry_is_made_with_the_budget_empty() {
    let up = scripted(vec![status(500, None), status(409, None)], vec![found("mine")]);
    let gw = ChimeGateway::new(up.clone(), policy(1), 4).with_retry_budget(reserve(0.2));
    let s = gw.create_user(with_email(ID)).await.unwrap_err();
    assert_eq!(reconciliation(&s).1.as_deref(), Some("deferred"));
    assert_eq!(counts(&up), (1, 0));
    let retry = gw.create_user(with_email(ID)).await.unwrap();
    assert_eq!(user_id(&retry), "mine");
    assert!(flag(retry.metadata(), RECONCILED_KEY));
    assert_eq!(counts(&up), (2, 1));
    // A fresh id for a taken email owes nothing: ALREADY_EXISTS, no lookup.
    up.script.lock().unwrap().push_back(status(409, None));
    let fresh = gw.create_user(with_email(OTHER_ID)).await.unwrap_err();
    assert_eq!(fresh.code(), Code::AlreadyExists);
    assert_eq!(counts(&up), (3, 1));
}

const OTHER_ID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_it_waits_to_retry_gives_its_withdrawal_back() {
    // A 503 asking for 5 s: the call withdraws its retry, then waits; its caller gives up first.
    let up = scripted(vec![status(503, Some(Duration::from_secs(5)))], vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let call = gw.create_user(with_deadline(valid(), "30S"));
    assert!(tokio::time::timeout(Duration::from_secs(1), call).await.is_err());
    assert_eq!(counts(&up).0, 1);
    let text = gw.metrics().encode();
    assert!(text.contains("chime_gateway_retry_budget_balance 2.0"), "{text}");
    // Later calls in an outage then find the whole reserve for their retries: three of them.
    up.script.lock().unwrap().extend(outage(10, 503));
    for _ in 0..3 {
        gw.create_user(valid()).await.unwrap_err();
    }
    assert_eq!(
        counts(&up).0,
        1 + 3 + 3,
        "three retries: the dropped call's request came back"
    );
}

/// The code and ErrorInfo reason of a call's answer (`OK` for a success).
fn answer(result: &Result<Response<CreateUserResponse>, Status>) -> (Code, String) {
    match result {
        Ok(_) => (Code::Ok, "OK".into()),
        Err(s) => (
            s.code(),
            s.get_error_details().error_info().unwrap().reason.clone(),
        ),
    }
}

#[tokio::test(start_paused = true)]
async fn after_chimes_429s_the_throttle_refuses_a_share_at_once_and_says_so() {
    let up = scripted((0..100).map(|_| status(429, None)).collect(), vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(1), 4);
    let mut refused = 0;
    for _ in 0..100 {
        let started = Instant::now();
        let s = gw.create_user(valid()).await.unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted);
        let info = s.get_error_details().error_info().cloned().unwrap();
        if info.domain == error::GATEWAY_DOMAIN {
            refused += 1;
            assert_eq!(info.reason, "ADAPTIVE_THROTTLE");
            assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
            let delay = s.get_error_details().retry_info().unwrap().retry_delay.unwrap();
            assert!(
                delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2),
                "{delay:?}"
            );
        } else {
            assert_eq!(info.reason, "THROTTLED");
        }
    }
    // Every answer throttled: the first few go, each 429 and each refusal takes away one of the
    // accepts a new window assumes, and then all but the throttle's probes are refused.
    let sent = counts(&up).0;
    assert_eq!(sent + refused, 100);
    assert!((10..=25).contains(&sent), "{sent}");
    let reason = "chime_gateway_errors_total{reason=\"ADAPTIVE_THROTTLE\"}";
    assert_eq!(metric(&gw, reason), f64::from(refused));
    let series = "chime_gateway_throttle_refusals_total{operation=\"create_user\"}";
    assert_eq!(metric(&gw, series), f64::from(refused));
    let p = metric(
        &gw,
        "chime_gateway_throttle_refusal_probability{operation=\"create_user\"}",
    );
    assert!(p > 0.7, "{p}");
}

#[tokio::test(start_paused = true)]
async fn a_burst_after_a_throttle_is_served_without_a_refusal() {
    // Six calls meet 429 (and their retries too), then a batch job sends 200 creates, 32 at a
    // time, ten seconds later.
    let up = scripted((0..18).map(|_| status(429, None)).collect(), vec![]);
    let gw = Arc::new(ChimeGateway::new(up.clone(), policy(3), 64));
    for _ in 0..6 {
        let s = gw.create_user(with_deadline(valid(), "30S")).await.unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted);
    }
    assert!(
        up.script.lock().unwrap().len() < 18,
        "the throttle held some back"
    );
    up.script.lock().unwrap().clear();
    tokio::time::advance(Duration::from_secs(10)).await;
    let batch = Arc::new(tokio::sync::Semaphore::new(32));
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let (gw, batch) = (gw.clone(), batch.clone());
            tokio::spawn(async move {
                let _slot = batch.acquire().await.unwrap();
                answer(&gw.create_user(with_deadline(valid(), "30S")).await)
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), (Code::Ok, "OK".into()));
    }
}

#[tokio::test(start_paused = true)]
async fn throttled_lookups_never_refuse_creates() {
    // 500 creates served earn the budget 100 lookups; then every lookup meets 429: ListUsers'
    // window fills with throttles, CreateUser's stays clear.
    let lookups = (0..50).map(|_| Err(status(429, None))).collect();
    let up = scripted(vec![], lookups);
    let gw = ChimeGateway::new(up.clone(), policy(1), 4);
    for _ in 0..500 {
        gw.create_user(valid()).await.unwrap();
    }
    assert!(metric(&gw, BALANCE) >= 49.9);
    up.script.lock().unwrap().extend(outage(50, 500));
    for n in 0..50 {
        let id = uuid::Uuid::from_u128(n + 1).to_string();
        let _ = gw.create_user(with_email(&id)).await;
    }
    let p = metric(
        &gw,
        "chime_gateway_throttle_refusal_probability{operation=\"list_users\"}",
    );
    assert!(p > 0.5, "{p}");
    assert!(counts(&up).1 < 40, "lookups refused: {:?}", counts(&up));
    for _ in 0..100 {
        gw.create_user(valid()).await.unwrap();
    }
    assert_eq!(counts(&up).0, 650);
}
