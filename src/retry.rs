//! What a gateway process may add to the upstream's load (docs/design.md §8): the answer to "may
//! another request go upstream now, and when".
//!
//! - [`Backoff`]: the wait between a call's attempts.
//! - [`RetryBudget`]: the AWS SDKs' retry quota. Every request beyond a call's first attempt
//!   (retries, and lookups after unknown outcomes) withdraws tokens; successful creates put them
//!   back. Transient faults leave it full; a sustained outage drains it, and then each call makes
//!   one attempt.
//! - [`SendLimiter`]: the AWS SDKs' adaptive client-side rate limiter. No limit until the upstream
//!   first throttles; then a token bucket whose rate follows CUBIC (x0.7 on a throttle, cubic
//!   growth after), so a fleet of gateways settles at what the account accepts. Calls take their
//!   send slots in order and give them back when they stop waiting.
//!
//! Pure arithmetic over a clock reading passed in (`tokio::time::Instant`, so tests pause it);
//! knows nothing of HTTP, gRPC or the SDK.

use std::{
    collections::BTreeSet,
    str::FromStr,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use tokio::{sync::Notify, time::Instant};

/// Exponential backoff with full jitter; an upstream `Retry-After` takes precedence.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub base: Duration,
    /// The ceiling of any delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The wait before attempt `failed + 1`.
    pub fn delay(&self, failed: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d;
        }
        let ceiling = self
            .base
            .saturating_mul(1 << failed.saturating_sub(1).min(16))
            .min(self.max);
        rand::rng().random_range(Duration::ZERO..=ceiling)
    }
}

/// The retry budget's knobs; the defaults hold docs/design.md §8's goals (BENCHMARKS.md, "Under
/// faults").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Tokens in a full budget, and its starting balance.
    pub tokens: u32,
    /// Tokens a retry of a create takes.
    pub retry_cost: u32,
    /// Tokens a lookup after an unknown outcome takes (the AWS SDKs' timeout cost).
    pub lookup_cost: u32,
    /// Tokens a create that succeeds at its first attempt puts back.
    pub refill: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            tokens: 100,
            retry_cost: 5,
            lookup_cost: 10,
            refill: 1,
        }
    }
}

/// What a request beyond a call's first attempt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// Another CreateUser attempt.
    Retry,
    /// A ListUsers lookup of a create whose outcome is unknown.
    Lookup,
}

impl Extra {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Extra::Retry => "retry",
            Extra::Lookup => "lookup",
        }
    }
}

/// Tokens withdrawn for one request; [`RetryBudget::refund`] returns them if it is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Withdrawal(u32);

impl Withdrawal {
    /// The tokens withdrawn.
    pub fn tokens(self) -> u32 {
        self.0
    }
}

/// The retry quota of one gateway process; `None` knobs: unlimited (protection off).
#[derive(Debug)]
pub struct RetryBudget {
    config: Option<BudgetConfig>,
    balance: AtomicU32,
}

impl RetryBudget {
    /// A full budget with `config`'s knobs, or an unlimited one.
    pub fn new(config: Option<BudgetConfig>) -> Self {
        let start = config.map_or(u32::MAX, |c| c.tokens);
        Self {
            config,
            balance: AtomicU32::new(start),
        }
    }

    /// Takes the tokens for one more request, or `None` when too few are left.
    pub fn withdraw(&self, extra: Extra) -> Option<Withdrawal> {
        let Some(config) = self.config else {
            return Some(Withdrawal(0));
        };
        let cost = match extra {
            Extra::Retry => config.retry_cost,
            Extra::Lookup => config.lookup_cost,
        };
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(cost))
            .ok()
            .map(|_| Withdrawal(cost))
    }

    /// Returns a withdrawal whose request was not sent.
    pub fn refund(&self, withdrawal: Withdrawal) {
        self.deposit(withdrawal.0);
    }

    /// A create succeeded: a first attempt refills, a retry gets its own cost back (`retry`).
    pub fn succeeded(&self, retry: Option<Withdrawal>) {
        let Some(config) = self.config else {
            return;
        };
        self.deposit(retry.map_or(config.refill, |w| w.0));
    }

    fn deposit(&self, tokens: u32) {
        let Some(config) = self.config else {
            return;
        };
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_add(tokens).min(config.tokens))
            });
    }

    /// The tokens left (`None`: unlimited).
    pub fn balance(&self) -> Option<u32> {
        self.config.map(|_| self.balance.load(Ordering::Relaxed))
    }
}

/// `--upstream-rate`: how upstream sends are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SendRate {
    /// No limit until the upstream throttles, then CUBIC (the AWS SDKs' adaptive mode).
    Adaptive,
    /// Sends go as calls come.
    Off,
    /// At most this many requests per second, with a burst of one second's worth.
    Fixed(f64),
}

impl FromStr for SendRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "adaptive" => Ok(SendRate::Adaptive),
            "off" => Ok(SendRate::Off),
            n => match n.parse::<f64>() {
                Ok(rate) if rate.is_finite() && rate >= MIN_FILL_RATE => Ok(SendRate::Fixed(rate)),
                _ => Err(format!(
                    "{s:?} is not `adaptive`, `off` or a number of requests per second (at least {MIN_FILL_RATE})"
                )),
            },
        }
    }
}

/// The AWS SDKs' adaptive retry constants (aws-smithy-runtime `client_rate_limiter.rs`).
const MIN_FILL_RATE: f64 = 0.5;
const MIN_CAPACITY: f64 = 1.0;
const SMOOTH: f64 = 0.8;
/// How much the rate falls on a throttle.
const BETA: f64 = 0.7;
/// How fast the rate grows back after a throttle.
const SCALE_CONSTANT: f64 = 0.4;
/// How often a waiting send slot reads the rate again.
const RECHECK: Duration = Duration::from_millis(100);
/// The shortest time a rate is measured over before the first half-second bucket closes.
const MIN_WINDOW: f64 = 0.1;

/// The limiter's state, in seconds since the limiter was made: the SDKs' token bucket, and the
/// requests waiting for a token, in the order they asked (a ticket each). The first in line takes
/// the next token; one that stops waiting leaves the line, and those behind move up.
#[derive(Debug, Default)]
struct Bucket {
    fill_rate: f64,
    max_capacity: f64,
    tokens: f64,
    waiting: BTreeSet<u64>,
    next_ticket: u64,
    last_refill: Option<f64>,
    enabled: bool,
    measured_tx_rate: f64,
    last_tx_rate_bucket: f64,
    request_count: u64,
    last_max_rate: f64,
    time_of_last_throttle: f64,
    /// When the first answer came, and how many came before the first bucket closed.
    first_answer: Option<f64>,
    answers_before_measure: u64,
}

impl Bucket {
    fn refill(&mut self, t: f64) {
        if let Some(last) = self.last_refill {
            let made = (t - last).max(0.0) * self.fill_rate;
            self.tokens = (self.tokens + made).min(self.max_capacity);
        }
        self.last_refill = Some(t);
    }

    /// Seconds until the request with `ahead` requests before it in line may go, at the current
    /// rate.
    fn due_in(&self, ahead: usize) -> f64 {
        ((ahead as f64 + 1.0 - self.tokens) / self.fill_rate).max(0.0)
    }

    /// The AWS SDKs' `update_rate_limiter`, for an answer at `t` to a request sent at `sent`,
    /// with two departures, both for a gateway that meets a throttle under load:
    /// - a throttle of a request sent before the last cut does not cut again: it answers the
    ///   rate already cut (one cut per throttling event, as TCP's CUBIC; the SDK cuts on every
    ///   429, so a burst of them takes a busy sender to the floor);
    /// - before the first half-second bucket closes, the measured rate is the answers seen so far
    ///   over the time since the first (the SDK reads 0 there, and a fleet that starts under load
    ///   would restart from the floor).
    fn update(&mut self, t: f64, throttled: bool, sent: f64) {
        self.update_measured_rate(t);
        let throttled = throttled && !(self.enabled && sent < self.time_of_last_throttle);
        let measured = self.measured(t);
        let calculated = if throttled {
            let rate = if self.enabled {
                measured.min(self.fill_rate)
            } else {
                measured
            };
            self.last_max_rate = rate;
            self.time_of_last_throttle = t;
            self.enabled = true;
            rate * BETA
        } else {
            self.cubic_success(t)
        };
        let rate = calculated.min(2.0 * measured);
        self.refill(t);
        self.fill_rate = rate.max(MIN_FILL_RATE);
        self.max_capacity = rate.max(MIN_CAPACITY);
        self.tokens = self.tokens.min(self.max_capacity);
    }

    fn measured(&self, t: f64) -> f64 {
        if self.measured_tx_rate > 0.0 {
            return self.measured_tx_rate;
        }
        let first = self.first_answer.unwrap_or(t);
        self.answers_before_measure as f64 / (t - first).max(MIN_WINDOW)
    }

    fn update_measured_rate(&mut self, t: f64) {
        if self.first_answer.is_none() {
            self.first_answer = Some(t);
            self.last_tx_rate_bucket = (t * 2.0).floor() / 2.0;
        }
        if self.measured_tx_rate == 0.0 {
            self.answers_before_measure += 1;
        }
        let bucket = (t * 2.0).floor() / 2.0;
        self.request_count += 1;
        if bucket > self.last_tx_rate_bucket {
            let current = self.request_count as f64 / (bucket - self.last_tx_rate_bucket);
            self.measured_tx_rate = current * SMOOTH + self.measured_tx_rate * (1.0 - SMOOTH);
            self.request_count = 0;
            self.last_tx_rate_bucket = bucket;
        }
    }

    fn time_window(&self) -> f64 {
        (self.last_max_rate * (1.0 - BETA) / SCALE_CONSTANT).cbrt()
    }

    fn cubic_success(&self, t: f64) -> f64 {
        let dt = t - self.time_of_last_throttle - self.time_window();
        SCALE_CONSTANT * dt.powi(3) + self.last_max_rate
    }
}

/// A send slot that is not due yet: wait for it with [`SendLimiter::wait`]. Dropped before it is
/// due, it passes its turn to the next.
#[derive(Debug)]
#[must_use]
pub struct Slot<'a> {
    limiter: &'a SendLimiter,
    ticket: u64,
    due: Instant,
    granted: bool,
}

impl Slot<'_> {
    /// When the slot is expected to be due at the current rate.
    pub fn due(&self) -> Instant {
        self.due
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.granted {
            self.limiter.give_back(self.ticket);
        }
    }
}

/// No slot within the deadline: the wait it would take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSlot {
    /// When a slot would be due, from now.
    pub retry_after: Duration,
}

/// The send rate of one gateway process.
#[derive(Debug)]
pub struct SendLimiter {
    mode: SendRate,
    origin: Instant,
    bucket: Mutex<Bucket>,
    given_back: Notify,
}

impl SendLimiter {
    /// A limiter in `mode`.
    pub fn new(mode: SendRate) -> Self {
        let mut bucket = Bucket::default();
        if let SendRate::Fixed(rate) = mode {
            bucket.enabled = true;
            bucket.fill_rate = rate;
            bucket.max_capacity = rate.max(MIN_CAPACITY);
            bucket.tokens = bucket.max_capacity;
        }
        Self {
            mode,
            origin: Instant::now(),
            bucket: Mutex::new(bucket),
            given_back: Notify::new(),
        }
    }

    fn seconds(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.origin).as_secs_f64()
    }

    /// Takes the next send slot, if it is due before `deadline`: `Ok(None)` means send now.
    pub fn acquire(&self, deadline: Instant) -> Result<Option<Slot<'_>>, NoSlot> {
        if self.mode == SendRate::Off {
            return Ok(None);
        }
        let now = Instant::now();
        let mut b = self.bucket.lock().expect("never poisoned");
        if !b.enabled {
            return Ok(None);
        }
        b.refill(self.seconds(now));
        if b.waiting.is_empty() && b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(None);
        }
        let wait = Duration::from_secs_f64(b.due_in(b.waiting.len()));
        let due = now.checked_add(wait).filter(|due| *due < deadline);
        let Some(due) = due else {
            return Err(NoSlot { retry_after: wait });
        };
        let ticket = b.next_ticket;
        b.next_ticket += 1;
        b.waiting.insert(ticket);
        Ok(Some(Slot {
            limiter: self,
            ticket,
            due,
            granted: false,
        }))
    }

    /// Waits until `slot` is first in line and a token is there; `Err` (the slot given back) when
    /// the rate fell so far that this would come after `deadline`.
    pub async fn wait(&self, mut slot: Slot<'_>, deadline: Instant) -> Result<(), NoSlot> {
        loop {
            // Registered before the reading, so a slot given back meanwhile still wakes us.
            let given_back = self.given_back.notified();
            tokio::pin!(given_back);
            given_back.as_mut().enable();
            let now = Instant::now();
            let wait = {
                let mut b = self.bucket.lock().expect("never poisoned");
                b.refill(self.seconds(now));
                let ahead = b.waiting.range(..slot.ticket).count();
                if ahead == 0 && b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    b.waiting.remove(&slot.ticket);
                    slot.granted = true;
                    return Ok(());
                }
                Duration::from_secs_f64(b.due_in(ahead))
            };
            match now.checked_add(wait).filter(|due| *due < deadline) {
                Some(due) => slot.due = due,
                None => return Err(NoSlot { retry_after: wait }),
            }
            // A waiter reads the rate again at least every `RECHECK`: the rate grows between
            // throttles, and a slot reckoned at a lower rate comes sooner than it said.
            let wake = slot.due.min(now + RECHECK).max(now + Duration::from_micros(1));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = given_back => {}
            }
        }
    }

    fn give_back(&self, ticket: u64) {
        self.bucket
            .lock()
            .expect("never poisoned")
            .waiting
            .remove(&ticket);
        // The slots behind this one are due sooner now.
        self.given_back.notify_waiters();
    }

    /// Learns from an upstream answer to a request sent at `sent` (`throttled` when it was a
    /// 429); the limit now.
    pub fn record(&self, throttled: bool, sent: Instant) -> Option<f64> {
        match self.mode {
            SendRate::Off => None,
            SendRate::Fixed(rate) => Some(rate),
            SendRate::Adaptive => {
                let t = self.seconds(Instant::now());
                let sent = self.seconds(sent);
                let mut b = self.bucket.lock().expect("never poisoned");
                b.update(t, throttled, sent);
                b.enabled.then_some(b.fill_rate)
            }
        }
    }

    /// The current limit in requests per second; `None` while sends are not limited.
    pub fn rate(&self) -> Option<f64> {
        let b = self.bucket.lock().expect("never poisoned");
        b.enabled.then_some(b.fill_rate)
    }
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
