use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn backoff_grows_within_its_ceiling_and_honours_retry_after() {
    let b = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(35),
    };
    for _ in 0..100 {
        assert!(b.delay(1, None) <= Duration::from_millis(10));
        assert!(b.delay(2, None) <= Duration::from_millis(20));
        assert!(b.delay(9, None) <= Duration::from_millis(35));
    }
    assert_eq!(b.delay(1, Some(Duration::from_secs(3))), Duration::from_secs(3));
}

fn budget() -> RetryBudget {
    RetryBudget::new(Some(BudgetConfig::default()))
}

#[test]
fn a_budget_allows_its_tokens_worth_of_retries_then_refuses() {
    let b = budget();
    let retries = std::iter::from_fn(|| b.withdraw(Extra::Retry)).count();
    assert_eq!(retries, 100 / 5);
    assert_eq!(b.balance(), Some(0));
    assert_eq!(b.withdraw(Extra::Lookup), None);
}

#[test]
fn a_lookup_costs_twice_a_retry() {
    let b = budget();
    assert_eq!(b.withdraw(Extra::Lookup), Some(Withdrawal(10)));
    assert_eq!(b.balance(), Some(90));
    assert_eq!(b.withdraw(Extra::Retry).map(Withdrawal::tokens), Some(5));
    assert_eq!(b.balance(), Some(85));
}

#[test]
fn successes_refill_and_a_successful_retry_gets_its_cost_back() {
    let b = budget();
    let w = b.withdraw(Extra::Retry).unwrap();
    let _ = b.withdraw(Extra::Lookup).unwrap();
    assert_eq!(b.balance(), Some(85));
    b.succeeded(Some(w));
    assert_eq!(b.balance(), Some(90));
    b.succeeded(None);
    assert_eq!(b.balance(), Some(91));
    for _ in 0..50 {
        b.succeeded(None);
    }
    assert_eq!(b.balance(), Some(100), "never above a full budget");
}

#[test]
fn a_refund_returns_what_was_not_sent() {
    let b = budget();
    let w = b.withdraw(Extra::Lookup).unwrap();
    b.refund(w);
    assert_eq!(b.balance(), Some(100));
}

#[test]
fn an_unlimited_budget_never_refuses() {
    let b = RetryBudget::new(None);
    assert!((0..10_000).all(|_| b.withdraw(Extra::Lookup).is_some()));
    assert_eq!(b.balance(), None);
}

#[test]
fn transient_faults_keep_the_budget_full_and_an_outage_drains_it() {
    // 10% of first attempts fail, and 10% of retries: the budget never runs dry.
    let b = budget();
    let mut refused = 0;
    for call in 0..10_000u32 {
        if call % 10 != 0 {
            b.succeeded(None);
            continue;
        }
        match b.withdraw(Extra::Retry) {
            Some(w) if call % 100 != 0 => b.succeeded(Some(w)),
            Some(_) => {}
            None => refused += 1,
        }
    }
    assert_eq!(refused, 0);
    // Every create fails: 2,000 calls get 20 retries in all.
    let b = budget();
    let retries = (0..2_000).filter(|_| b.withdraw(Extra::Retry).is_some()).count();
    assert_eq!(retries, 20);
}

#[test]
fn send_rate_reads_adaptive_off_or_a_rate() {
    assert_eq!("adaptive".parse(), Ok(SendRate::Adaptive));
    assert_eq!("off".parse(), Ok(SendRate::Off));
    assert_eq!("20".parse(), Ok(SendRate::Fixed(20.0)));
    assert_eq!("2.5".parse(), Ok(SendRate::Fixed(2.5)));
    for bad in ["", "fast", "0", "-3", "0.1", "inf", "NaN"] {
        assert!(bad.parse::<SendRate>().is_err(), "{bad}");
    }
}

// The AWS SDKs' published values (aws-smithy-runtime's client_rate_limiter tests, ported from
// aws-sdk-go-v2's adaptive_ratelimit_test.go).

#[test]
fn a_throttle_multiplies_the_rate_by_beta() {
    let b = Bucket {
        last_max_rate: 10.0,
        time_of_last_throttle: 1.0,
        ..Bucket::default()
    };
    assert!(close(b.cubic_success(1.0), 7.0));
}

#[test]
fn the_rate_grows_back_as_the_sdks_cubic() {
    let b = Bucket {
        last_max_rate: 10.0,
        time_of_last_throttle: 5.0,
        ..Bucket::default()
    };
    let expected = [
        (5.0, 7.0),
        (6.0, 9.64893600966),
        (7.0, 10.000030849917364),
        (8.0, 10.453284520772092),
        (9.0, 13.408697022224185),
        (10.0, 21.26626835427364),
        (11.0, 36.425998516920465),
    ];
    for (t, rate) in expected {
        assert!(close(b.cubic_success(t), rate), "{t}: {}", b.cubic_success(t));
    }
}

#[test]
fn throttles_and_successes_follow_the_sdks_cubic() {
    let mut b = Bucket {
        last_max_rate: 10.0,
        time_of_last_throttle: 5.0,
        ..Bucket::default()
    };
    let expected = [
        (false, 5.0, 7.0),
        (false, 6.0, 9.64893600966),
        (true, 7.0, 6.754255206761999),
        (true, 8.0, 4.727978644733399),
        (false, 9.0, 4.670125557970046),
        (false, 10.0, 4.770870456867401),
        (false, 11.0, 6.011819748005445),
        (false, 12.0, 10.792973431384178),
    ];
    let mut rate = 0.0;
    for (throttled, t, want) in expected {
        if throttled {
            rate *= BETA;
            b.time_of_last_throttle = t;
            b.last_max_rate = rate;
        } else {
            rate = b.cubic_success(t);
        }
        assert!(close(rate, want), "{t}: {rate}");
    }
}

#[test]
fn measured_and_fill_rates_follow_the_sdks_values() {
    let mut b = Bucket::default();
    let expected = [
        (false, 0.2, 0.0, 0.5),
        (false, 0.4, 0.0, 0.5),
        (false, 0.6, 4.800000000000001, 0.5),
        (false, 0.8, 4.800000000000001, 0.5),
        (false, 1.0, 4.16, 0.5),
        (false, 1.2, 4.16, 0.6912),
        (false, 1.4, 4.16, 1.0975999999999997),
        (false, 1.6, 5.632000000000001, 1.6384000000000005),
        (false, 1.8, 5.632000000000001, 2.3328),
        (true, 2.0, 4.3264, 3.0284799999999996),
        (false, 2.2, 4.3264, 3.48663917347026),
        (false, 2.4, 4.3264, 3.821874416040255),
        (false, 2.6, 5.66528, 4.053385727709987),
        (false, 2.8, 5.66528, 4.200373108479454),
        (false, 3.0, 4.333056, 4.282036558348658),
        (true, 3.2, 4.333056, 2.99742559084406),
        (false, 3.4, 4.333056, 3.4522263943863463),
    ];
    for (throttled, t, measured, fill) in expected {
        b.update(t, throttled, t);
        assert!(close(b.measured_tx_rate, measured), "{t}: {}", b.measured_tx_rate);
        assert!(close(b.fill_rate, fill), "{t}: {}", b.fill_rate);
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

#[tokio::test(start_paused = true)]
async fn off_and_adaptive_before_a_throttle_never_wait() {
    for mode in [SendRate::Off, SendRate::Adaptive] {
        let limiter = SendLimiter::new(mode);
        for _ in 0..1000 {
            assert!(matches!(limiter.acquire(Instant::now()), Ok(None)));
        }
        assert_eq!(limiter.record(false, Instant::now()), None);
        assert_eq!(limiter.rate(), None);
    }
}

#[tokio::test(start_paused = true)]
async fn a_fixed_rate_allows_a_seconds_burst_then_spaces_sends() {
    let limiter = SendLimiter::new(SendRate::Fixed(10.0));
    assert_eq!(limiter.rate(), Some(10.0));
    for _ in 0..10 {
        assert!(matches!(limiter.acquire(far()), Ok(None)));
    }
    let start = Instant::now();
    let first = limiter.acquire(far()).unwrap().unwrap();
    let second = limiter.acquire(far()).unwrap().unwrap();
    assert_eq!(first.due() - start, Duration::from_millis(100));
    assert_eq!(second.due() - start, Duration::from_millis(200));
    limiter.wait(first, far()).await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_millis(100));
    limiter.wait(second, far()).await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_millis(200));
    assert_eq!(
        limiter.record(true, Instant::now()),
        Some(10.0),
        "a fixed rate does not learn"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slot_past_the_deadline_is_refused_at_once_with_its_wait() {
    let limiter = SendLimiter::new(SendRate::Fixed(2.0));
    let _ = limiter.acquire(far()).unwrap();
    let _ = limiter.acquire(far()).unwrap();
    let soon = Instant::now() + Duration::from_millis(400);
    let refused = limiter.acquire(soon).unwrap_err();
    assert_eq!(refused.retry_after, Duration::from_millis(500));
    // The refusal took no slot: the next caller is still first in line.
    let slot = limiter.acquire(far()).unwrap().unwrap();
    assert_eq!(slot.due() - Instant::now(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn a_slot_given_up_passes_its_turn_on() {
    let limiter = SendLimiter::new(SendRate::Fixed(1.0));
    let _ = limiter.acquire(far()).unwrap();
    let start = Instant::now();
    let first = limiter.acquire(far()).unwrap().unwrap();
    let second = limiter.acquire(far()).unwrap().unwrap();
    assert_eq!(second.due() - start, Duration::from_secs(2));
    drop(first);
    limiter.wait(second, far()).await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_throttle_starts_limiting_and_lowers_the_rate() {
    let limiter = SendLimiter::new(SendRate::Adaptive);
    // 100 answers a second for two seconds, then a throttle.
    for _ in 0..200 {
        let _ = limiter.record(false, Instant::now());
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    let _ = limiter.record(true, Instant::now());
    let first = limiter.rate().expect("limiting after a throttle");
    assert!((60.0..80.0).contains(&first), "{first}");
    // Throttled again at once: the rate falls by BETA again.
    let _ = limiter.record(true, Instant::now());
    let second = limiter.rate().unwrap();
    assert!(close(second, first * BETA), "{first} {second}");
    // Without throttles it grows back, past where it was.
    for _ in 0..500 {
        tokio::time::advance(Duration::from_millis(10)).await;
        let _ = limiter.record(false, Instant::now());
    }
    assert!(limiter.rate().unwrap() > first);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_slot_whose_rate_falls_past_the_deadline_gives_up() {
    let limiter = SendLimiter::new(SendRate::Adaptive);
    for _ in 0..20 {
        let _ = limiter.record(false, Instant::now());
        tokio::time::advance(Duration::from_millis(50)).await;
    }
    let _ = limiter.record(true, Instant::now());
    let rate = limiter.rate().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut slots = Vec::new();
    loop {
        match limiter.acquire(deadline) {
            Ok(Some(slot)) => slots.push(slot),
            Ok(None) => {}
            Err(_) => break,
        }
    }
    assert!(!slots.is_empty(), "rate {rate}");
    // The rate falls to its floor before the last slot is due.
    for _ in 0..10 {
        let _ = limiter.record(true, Instant::now());
    }
    let last = slots.pop().unwrap();
    assert!(limiter.wait(last, deadline).await.is_err());
}

#[test]
fn throttles_of_requests_sent_before_the_cut_cut_only_once() {
    let mut b = Bucket::default();
    // 40 answers a second for two seconds, then a burst of 429s to requests already in flight.
    for i in 0..80 {
        let t = f64::from(i) * 0.025;
        b.update(t, false, t);
    }
    b.update(2.0, true, 1.99);
    let cut = b.fill_rate;
    for i in 1..10 {
        let t = 2.0 + f64::from(i) * 0.001;
        b.update(t, true, 1.995);
    }
    assert!(b.fill_rate >= cut, "{cut} -> {}", b.fill_rate);
    // A request sent after the cut and throttled is a new event: cut again.
    b.update(2.5, true, 2.2);
    assert!(b.fill_rate < cut * 0.75, "{cut} -> {}", b.fill_rate);
}

#[test]
fn the_first_throttle_under_load_cuts_from_the_rate_seen_not_the_floor() {
    let mut b = Bucket::default();
    // 100 answers a second from t = 10.0, throttled 200 ms in: before any bucket closed.
    for i in 0..20 {
        let t = 10.0 + f64::from(i) * 0.01;
        b.update(t, false, t);
    }
    b.update(10.2, true, 10.19);
    assert!(b.enabled);
    assert!((60.0..80.0).contains(&b.fill_rate), "{}", b.fill_rate);
}

/// An account that accepts `rate` requests a second with a burst of as many, as Chime (and the
/// emulator) throttle.
struct Account {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Account {
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }
}

/// What a fleet of adaptive limiters sent to one throttled account, and what it accepted.
#[derive(Debug, Default)]
struct Sent {
    requests: u64,
    accepted: u64,
    by_sender: Vec<u64>,
}

/// `senders` limiters sharing one account throttled at 20/s, offered 100 calls/s in all for
/// 20 s, each call with a 5 s deadline, each answer 3 ms after its request.
async fn fleet(senders: usize) -> Sent {
    use std::sync::{Arc, Mutex as StdMutex};
    let account = Arc::new(StdMutex::new(Account {
        rate: 20.0,
        tokens: 20.0,
        at: Instant::now(),
    }));
    let limiters: Vec<_> = (0..senders)
        .map(|_| Arc::new(SendLimiter::new(SendRate::Adaptive)))
        .collect();
    let sent = Arc::new(StdMutex::new(Sent {
        by_sender: vec![0; senders],
        ..Sent::default()
    }));
    let mut calls = Vec::new();
    for n in 0..2000usize {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let i = n % senders;
        let (limiter, account, sent) = (limiters[i].clone(), account.clone(), sent.clone());
        calls.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            let Ok(slot) = limiter.acquire(deadline) else {
                return;
            };
            if let Some(slot) = slot
                && limiter.wait(slot, deadline).await.is_err()
            {
                return;
            }
            let at = Instant::now();
            let ok = account.lock().unwrap().admit();
            tokio::time::sleep(Duration::from_millis(3)).await;
            let _ = limiter.record(!ok, at);
            let mut sent = sent.lock().unwrap();
            sent.requests += 1;
            if ok {
                sent.accepted += 1;
                sent.by_sender[i] += 1;
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    std::mem::take(&mut *sent.lock().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_fleet_settles_at_what_a_throttled_account_accepts() {
    // The account accepts 20/s over the 20 s of calls and the 5 s they may wait: 500 and its
    // burst of 20.
    let capacity = 520.0;
    for senders in [1, 4] {
        let sent = fleet(senders).await;
        let context = format!("{senders} senders: {sent:?}");
        assert!(sent.requests as f64 <= 1.3 * capacity, "{context}");
        assert!(sent.accepted as f64 >= 0.9 * capacity, "{context}");
        let even = sent.accepted as f64 / senders as f64;
        assert!(
            sent.by_sender.iter().all(|&n| n as f64 >= 0.5 * even),
            "{context}"
        );
    }
}
