use std::time::Duration;

use tokio::time::Instant;

use super::*;

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

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[tokio::test(start_paused = true)]
async fn a_new_budget_holds_its_reserve_of_three_requests() {
    let b = budget();
    let first = b.withdraw(Extra::Retry).unwrap().sent();
    let second = b.withdraw(Extra::Lookup).unwrap().sent();
    let third = b.withdraw(Extra::Lookup).unwrap().sent();
    assert!(b.withdraw(Extra::Retry).is_none());
    assert!(close(b.balance(), 0.0));
    drop((first, second, third));
    assert!(close(b.balance(), 0.0), "sent and failed: spent");
}

#[tokio::test(start_paused = true)]
async fn a_withdrawal_dropped_before_it_is_sent_goes_back() {
    let b = budget();
    let w = b.withdraw(Extra::Retry).unwrap();
    assert!(close(b.balance(), 2.0));
    drop(w);
    assert!(close(b.balance(), 3.0));
    b.refund(b.withdraw(Extra::Lookup).unwrap());
    assert!(close(b.balance(), 3.0));
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_succeeds_gets_its_request_back_and_first_attempts_earn_the_ratio() {
    let b = budget();
    let spent = b.withdraw(Extra::Retry).unwrap().sent();
    let _lookup = b.withdraw(Extra::Lookup).unwrap().sent();
    b.succeeded(Some(spent));
    assert!(close(b.balance(), 2.0));
    b.succeeded(None);
    assert!(close(b.balance(), 2.2));
}

#[tokio::test(start_paused = true)]
async fn the_ceiling_is_a_share_of_the_last_seconds_successes_and_never_below_the_reserve() {
    let b = budget();
    // 200 successes a second: the ceiling is a fifth of the 1,000 of the last five seconds.
    for _ in 0..2000 {
        b.succeeded(None);
        tokio::time::advance(Duration::from_millis(5)).await;
    }
    let busy = b.balance().unwrap();
    assert!((199.0..=201.0).contains(&busy), "{busy}");
    // Quiet for a minute: the next success finds the ceiling at the reserve.
    tokio::time::advance(Duration::from_secs(60)).await;
    b.succeeded(None);
    assert!(close(b.balance(), RESERVE));
}

#[tokio::test(start_paused = true)]
async fn transient_faults_keep_the_budget_and_an_outage_spends_only_what_it_held() {
    // One quiet process, 10% of first attempts failing and 10% of retries: never refused.
    let b = budget();
    for call in 0..10_000u32 {
        tokio::time::advance(Duration::from_secs(10)).await;
        if call % 10 != 0 {
            b.succeeded(None);
            continue;
        }
        let retry = b.withdraw(Extra::Retry).expect("never refused").sent();
        if call % 100 != 0 {
            b.succeeded(Some(retry));
        }
    }
    // An outage: 2,000 calls get the three retries the budget held.
    let retries = (0..2_000)
        .filter_map(|_| b.withdraw(Extra::Retry).map(Withdrawal::sent))
        .count();
    assert_eq!(retries, 3);
}

#[test]
fn an_unlimited_budget_never_refuses() {
    let b = RetryBudget::new(None);
    assert!((0..10_000).all(|_| b.withdraw(Extra::Lookup).map(Withdrawal::sent).is_some()));
    assert_eq!(b.balance(), None);
}

#[test]
fn the_throttle_reads_on_or_off() {
    assert_eq!("on".parse(), Ok(SendRate::Adaptive));
    assert_eq!("adaptive".parse(), Ok(SendRate::Adaptive));
    assert_eq!("off".parse(), Ok(SendRate::Off));
    for bad in ["", "fast", "20", "0"] {
        assert!(bad.parse::<SendRate>().is_err(), "{bad}");
    }
}

/// Asks `limiter` for `n` creates, each answered as `throttled` says when sent; how many went.
fn ask(limiter: &SendLimiter, n: usize, throttled: impl Fn(usize) -> bool) -> usize {
    (0..n)
        .filter(|&i| {
            let sent = limiter.acquire(Operation::CreateUser).is_ok();
            if sent {
                limiter.record(Operation::CreateUser, throttled(i));
            }
            sent
        })
        .count()
}

#[tokio::test(start_paused = true)]
async fn without_throttles_or_switched_off_nothing_is_refused() {
    let on = SendLimiter::new(SendRate::Adaptive);
    assert_eq!(ask(&on, 1000, |_| false), 1000);
    assert_eq!(on.refusal_probability(Operation::CreateUser), Some(0.0));
    let off = SendLimiter::new(SendRate::Off);
    assert_eq!(ask(&off, 1000, |_| true), 1000);
    assert_eq!(off.refusal_probability(Operation::CreateUser), None);
}

#[tokio::test(start_paused = true)]
async fn random_throttles_below_the_headroom_are_never_refused() {
    // A process whose window holds its accepts meets one 429 in 14, then two in a row in 28.
    let limiter = SendLimiter::new(SendRate::Adaptive);
    assert_eq!(ask(&limiter, WINDOW, |_| false), WINDOW);
    assert_eq!(ask(&limiter, 10_000, |i| i % 14 == 0), 10_000);
    assert_eq!(ask(&limiter, 10_000, |i| i % 28 < 2 && i > 50), 10_000);
}

#[tokio::test(start_paused = true)]
async fn a_new_process_takes_its_first_429s_in_its_stride_then_sends_its_probe_share() {
    let limiter = SendLimiter::new(SendRate::Adaptive);
    assert_eq!(ask(&limiter, 2, |_| true), 2);
    assert_eq!(limiter.refusal_probability(Operation::CreateUser), Some(0.0));
    // Every request throttled: the window fills with 429s and refusals, and the process sends
    // exactly its share, PROBE plus one request a window: 1 - 0.97 x 400 / 401 of 1,000.
    let _ = ask(&limiter, 1000, |_| true);
    let p = limiter.refusal_probability(Operation::CreateUser).unwrap();
    assert!((0.96..0.97).contains(&p), "{p}");
    assert_eq!(ask(&limiter, 1000, |_| true), 33);
    let refused = limiter.acquire(Operation::CreateUser).unwrap_err();
    assert!(refused.retry_after >= Duration::from_secs(1));
    assert!(refused.retry_after <= Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_process_long_at_ease_learns_a_throttle_from_the_sends_that_meet_it() {
    // A window full of accepts, as a quiet sidecar's after minutes of a healthy account.
    let limiter = SendLimiter::new(SendRate::Adaptive);
    assert_eq!(ask(&limiter, WINDOW, |_| false), WINDOW);
    // Chime begins to throttle: 13 of the next 18 sends meet 429, and the window's accepts still
    // outweigh them; the 14th 429 is the onset of a process at ease, and the window keeps only
    // its last 20 sends.
    assert_eq!(ask(&limiter, 18, |i| i % 4 != 0), 18);
    assert_eq!(limiter.refusal_probability(Operation::CreateUser), Some(0.0));
    assert_eq!(ask(&limiter, 1, |_| true), 1);
    let p = limiter.refusal_probability(Operation::CreateUser).unwrap();
    // (0.97 x 20 - 1.1 x 6) / 21: the throttle's own answers, not the 400 accepts before them.
    assert!((0.60..0.61).contains(&p), "{p}");
}

#[tokio::test(start_paused = true)]
async fn a_throttled_process_learns_at_once_that_its_throttle_deepened() {
    // A quiet process settled in a throttle that answers one send in five with 429: its window
    // refuses, so only the onset of most sends answered 429 can cut it.
    let limiter = SendLimiter::new(SendRate::Adaptive);
    let _ = pace(&limiter, 2000, 0.2, 1).await;
    let before = limiter.refusal_probability(Operation::CreateUser).unwrap();
    // Then every send meets 429. The 15th is the onset: the window keeps what came from the
    // first of its last 20 sends on, at most 5 of them accepted, not 400 requests' accepts
    // (0.58 -> 0.84; 0.62 without the onset).
    let mut sends = 0;
    while sends < throttle::ONSET.0 {
        sends += 1 - pace(&limiter, 1, 1.0, 2).await.0;
    }
    let after = limiter.refusal_probability(Operation::CreateUser).unwrap();
    assert!(after > 0.8, "{before} -> {after}");
}

#[tokio::test(start_paused = true)]
async fn a_process_at_ease_learns_a_throttle_that_answers_a_few_of_its_sends_with_429() {
    // Two sends in five meet 429, as a quiet sidecar's do once the rest of its fleet has come
    // down to what Chime accepts: never 15 of 20, and 400 accepts outweigh them for minutes.
    let limiter = SendLimiter::new(SendRate::Adaptive);
    assert_eq!(ask(&limiter, WINDOW, |_| false), WINDOW);
    assert_eq!(ask(&limiter, 31, |i| i % 5 < 2), 31);
    assert_eq!(limiter.refusal_probability(Operation::CreateUser), Some(0.0));
    // The 14th 429 in 32 sends: the window keeps the last 20, 12 of them accepted.
    assert_eq!(ask(&limiter, 1, |_| true), 1);
    let p = limiter.refusal_probability(Operation::CreateUser).unwrap();
    // (0.97 x 20 - 1.1 x 12) / 21.
    assert!((0.29..0.30).contains(&p), "{p}");
}

#[tokio::test(start_paused = true)]
async fn one_operations_throttle_never_refuses_the_other() {
    let limiter = SendLimiter::new(SendRate::Adaptive);
    for _ in 0..WINDOW {
        let _ = limiter.acquire(Operation::ListUsers);
        limiter.record(Operation::ListUsers, true);
    }
    assert!(limiter.refusal_probability(Operation::ListUsers).unwrap() > 0.9);
    assert_eq!(ask(&limiter, 100, |_| false), 100);
}

#[tokio::test(start_paused = true)]
async fn a_burst_after_a_throttle_goes_once_the_process_was_silent_twice_its_windows_span() {
    let limiter = SendLimiter::new(SendRate::Adaptive);
    // Six calls meet 429 within half a second, each retried twice.
    for _ in 0..18 {
        if limiter.acquire(Operation::CreateUser).is_ok() {
            limiter.record(Operation::CreateUser, true);
        }
        tokio::time::advance(Duration::from_millis(25)).await;
    }
    // Less than a window's worth: the prior's accepts still hold the window's oldest places.
    let p = limiter.refusal_probability(Operation::CreateUser).unwrap();
    assert!(p > 0.3, "still throttled: {p}");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(ask(&limiter, 200, |_| false), 200);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_process_keeps_its_window_through_its_ordinary_silences() {
    let limiter = SendLimiter::new(SendRate::Adaptive);
    // One call every ten seconds, all throttled: the window is judged, not forgotten.
    for _ in 0..WINDOW {
        if limiter.acquire(Operation::CreateUser).is_ok() {
            limiter.record(Operation::CreateUser, true);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    let p = limiter.refusal_probability(Operation::CreateUser).unwrap();
    assert!(p > 0.9, "{p}");
}

/// Sends `n` creates one every half second, each throttled with probability `throttled` (a
/// seeded draw); the refusals, and the least refusal probability met after each answer.
async fn pace(limiter: &SendLimiter, n: usize, throttled: f64, seed: u64) -> (usize, f64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut refused, mut least) = (0, 1.0_f64);
    for _ in 0..n {
        if limiter.acquire(Operation::CreateUser).is_ok() {
            limiter.record(Operation::CreateUser, rng.random::<f64>() < throttled);
            least = least.min(limiter.refusal_probability(Operation::CreateUser).unwrap());
        } else {
            refused += 1;
        }
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    (refused, least)
}

#[tokio::test(start_paused = true)]
async fn a_throttle_that_persists_is_never_taken_for_its_end() {
    // A quiet process settled in a throttle that answers one send in five with 429: 50,000
    // calls (seven hours at 2 calls/s) and never a run of accepts long enough to end it.
    let limiter = SendLimiter::new(SendRate::Adaptive);
    let _ = pace(&limiter, 2000, 0.2, 1).await;
    let (refused, least) = pace(&limiter, 50_000, 0.2, 2).await;
    assert!(least > 0.3, "{least}");
    assert!(refused > 30_000, "{refused}");
}

#[tokio::test(start_paused = true)]
async fn a_process_sends_everything_soon_after_a_throttle_ends() {
    let limiter = SendLimiter::new(SendRate::Adaptive);
    let _ = pace(&limiter, 2000, 0.2, 1).await;
    let p = limiter.refusal_probability(Operation::CreateUser).unwrap();
    assert!(p > 0.5, "{p}");
    // The throttle ends. A run of accepted sends that a throttle accepting 1 / K of them would
    // make once in 10^4 (97) ends it after 198 requests, 107 refused: the window keeps only the
    // run, and nothing more is refused. At K's pace alone it took 1,300 requests and refused
    // 443; once its last 429 leaves the window it ends too, after 382.
    let (mut requests, mut refused) = (0, 0);
    while limiter.refusal_probability(Operation::CreateUser) != Some(0.0) && requests < 2000 {
        refused += pace(&limiter, 1, 0.0, 3).await.0;
        requests += 1;
    }
    assert!(requests < 300, "{requests}");
    assert!(refused < 150, "{refused}");
    assert_eq!(pace(&limiter, 1000, 0.0, 4).await.0, 0);
}

#[path = "retry_fleet_tests.rs"]
mod fleet;
