//! What the retry budget and the send rate change in a call (docs/design.md §8): counts of what
//! reaches the upstream, not times.

use super::*;

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

#[tokio::test]
async fn an_outage_gets_the_calls_plus_what_the_budget_allows_and_no_more() {
    let up = scripted(outage(1000, 503), vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4).with_send_rate(SendRate::Off);
    let mut exhausted = 0;
    for _ in 0..200 {
        let s = gw.create_user(valid()).await.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable);
        if meta(&s).get("retry_budget").is_some_and(|v| v == "exhausted") {
            exhausted += 1;
            assert!(s.get_error_details().retry_info().is_some());
        }
    }
    // 100 tokens at 5 a retry: 20 retries in all.
    assert_eq!(counts(&up).0, 200 + 20);
    assert!(exhausted >= 190, "{exhausted}");
    let text = gw.metrics().encode();
    assert!(text.contains("chime_gateway_retry_budget_tokens 0"), "{text}");
    assert!(
        text.contains("chime_gateway_retry_budget_refusals_total{kind=\"retry\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn without_a_budget_every_call_retries_to_max_attempts() {
    let up = scripted(outage(1000, 503), vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4)
        .with_send_rate(SendRate::Off)
        .with_retry_budget(None);
    for _ in 0..100 {
        let s = gw.create_user(valid()).await.unwrap_err();
        assert!(!meta(&s).contains_key("retry_budget"));
    }
    assert_eq!(counts(&up).0, 300);
}

#[tokio::test]
async fn successes_keep_the_budget_full_through_transient_faults() {
    // Every tenth first attempt fails once.
    let mut script = Vec::new();
    let up = scripted(vec![], vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4).with_send_rate(SendRate::Off);
    let mut ok = 0;
    for call in 0..500 {
        if call % 10 == 0 {
            script.push(status(503, None));
            *up.script.lock().unwrap() = std::mem::take(&mut script).into();
        }
        ok += usize::from(gw.create_user(valid()).await.is_ok());
    }
    assert_eq!(ok, 500);
    assert!(
        gw.metrics()
            .encode()
            .contains("chime_gateway_retry_budget_tokens 100")
    );
}

#[tokio::test]
async fn an_unknown_outcome_outage_looks_up_within_the_budget_then_defers() {
    let up = scripted(outage(1000, 500), vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4).with_send_rate(SendRate::Off);
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
    let (attempts, lookups) = counts(&up);
    // Each lookup takes 10 tokens and each retry 5, from 100.
    let retries = attempts - 100;
    assert!(
        10 * lookups + 5 * retries <= 100,
        "{retries} retries, {lookups} lookups"
    );
    assert!(
        10 * lookups + 5 * retries > 90,
        "{retries} retries, {lookups} lookups"
    );
    assert!(lookups >= 1);
    assert!(deferred >= 90, "{deferred}");
    let text = gw.metrics().encode();
    assert!(
        text.contains("chime_gateway_reconciliations_total{outcome=\"deferred\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn a_lookup_refused_without_a_request_id_is_skipped() {
    let up = scripted(outage(10, 500), vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(1), 4)
        .with_send_rate(SendRate::Off)
        .with_retry_budget(Some(BudgetConfig {
            tokens: 0,
            ..BudgetConfig::default()
        }));
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
    // Room for one lookup; a create that succeeds at once refills it.
    let gw = ChimeGateway::new(up.clone(), policy(1), 4)
        .with_send_rate(SendRate::Off)
        .with_retry_budget(Some(BudgetConfig {
            tokens: 10,
            lookup_cost: 10,
            refill: 10,
            ..BudgetConfig::default()
        }));
    let first = gw.create_user(with_email(OTHER)).await.unwrap();
    assert!(flag(first.metadata(), RECONCILED_KEY), "the budget's one lookup");
    let s = gw.create_user(with_email(ID)).await.unwrap_err();
    assert_eq!(reconciliation(&s).1.as_deref(), Some("deferred"));
    assert_eq!(counts(&up), (2, 1));
    // Another call succeeds and refills the budget.
    let mut plain = with_email("").into_inner();
    plain.email = Some("someone@example.com".into());
    gw.create_user(Request::new(plain)).await.unwrap();
    // The retry meets the user its first call stored (409) and looks it up this time.
    up.script.lock().unwrap().push_back(status(409, None));
    let retry = gw.create_user(with_email(ID)).await.unwrap();
    assert_eq!(user_id(&retry), "mine");
    assert!(flag(retry.metadata(), RECONCILED_KEY));
    assert_eq!(counts(&up), (4, 2));
}

#[tokio::test]
async fn the_lookup_a_deferred_call_owes_its_retry_is_made_with_the_budget_empty() {
    let up = scripted(vec![status(500, None), status(409, None)], vec![found("mine")]);
    let gw = ChimeGateway::new(up.clone(), policy(1), 4)
        .with_send_rate(SendRate::Off)
        .with_retry_budget(Some(BudgetConfig {
            tokens: 0,
            ..BudgetConfig::default()
        }));
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

fn send_rate(gw: &ChimeGateway<Arc<Scripted>>) -> f64 {
    let text = gw.metrics().encode();
    let line = text
        .lines()
        .find(|l| l.starts_with("chime_gateway_upstream_send_rate "))
        .unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn after_a_throttle_sends_wait_for_a_slot_and_a_call_that_cannot_wait_is_refused_at_once() {
    let up = scripted(vec![status(429, None)], vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(1), 4);
    assert_eq!(send_rate(&gw), 0.0, "no limit before a throttle");
    let s = gw.create_user(valid()).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    // One answer seen: the rate is cut to 0.7 of the 10/s it reads, and the bucket is empty.
    let rate = send_rate(&gw);
    assert!((6.0..8.0).contains(&rate), "{rate}");
    let started = Instant::now();
    let s = gw.create_user(with_deadline(valid(), "50m")).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
    assert_eq!(s.code(), Code::ResourceExhausted);
    let info = s.get_error_details().error_info().cloned().unwrap();
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        (error::GATEWAY_DOMAIN, "UPSTREAM_RATE_LIMITED")
    );
    let delay = s.get_error_details().retry_info().unwrap().retry_delay.unwrap();
    let slot = Duration::from_secs_f64(1.0 / rate);
    assert!(delay > Duration::from_millis(50) && delay <= slot, "{delay:?}");
    assert_eq!(counts(&up).0, 1, "nothing sent");
    // A call with time to wait is sent when its slot comes.
    gw.create_user(with_deadline(valid(), "5S")).await.unwrap();
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!(counts(&up).0, 2);
    let text = gw.metrics().encode();
    assert!(
        text.contains("chime_gateway_send_slot_refusals_total 1"),
        "{text}"
    );
    assert!(
        text.contains("chime_gateway_errors_total{reason=\"UPSTREAM_RATE_LIMITED\"} 1"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fixed_rate_spaces_sends_from_the_start() {
    let up = scripted(vec![], vec![]);
    let gw = Arc::new(ChimeGateway::new(up.clone(), policy(1), 64).with_send_rate(SendRate::Fixed(5.0)));
    let started = Instant::now();
    let calls: Vec<_> = (0..15)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.create_user(with_deadline(valid(), "10S")).await.is_ok() })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap());
    }
    // A burst of 5, then 5 a second: the last of 15 goes two seconds in.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
        "{took:?}"
    );
    assert_eq!(counts(&up).0, 15);
}

#[tokio::test(start_paused = true)]
async fn retries_wait_for_send_slots_too() {
    // Throttled twice, then served: the retries are paced, not sent back to back (the backoff
    // alone is at most 2 ms).
    let up = scripted(vec![status(429, None), status(429, None)], vec![]);
    let gw = ChimeGateway::new(up.clone(), policy(3), 4);
    let started = Instant::now();
    gw.create_user(with_deadline(valid(), "30S")).await.unwrap();
    assert_eq!(counts(&up).0, 3);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let off = scripted(vec![status(429, None), status(429, None)], vec![]);
    let gw = ChimeGateway::new(off.clone(), policy(3), 4).with_send_rate(SendRate::Off);
    let started = Instant::now();
    gw.create_user(with_deadline(valid(), "30S")).await.unwrap();
    assert!(
        started.elapsed() <= Duration::from_millis(10),
        "{:?}",
        started.elapsed()
    );
}
