//! The retry budget: what a process may send beyond its calls' first attempts (retries, and
//! lookups after unknown outcomes), earned by its own successes (docs/design.md §8).
//!
//! A balance counted in requests. A create that succeeds at its first attempt adds `ratio` (0.2);
//! a retry that succeeds gets its own request back; a retry or lookup that is sent and fails
//! keeps it. The balance never exceeds `ratio` times the creates that succeeded over the last
//! [`WINDOW`], nor less than [`RESERVE`]: a busy process holds a fifth of what it served in the
//! last five seconds, a quiet one the three requests it needs to retry its own transient faults.
//! So transient faults never empty it (90% of creates succeeding earn 0.18 a call, and only
//! the failed retries, 1% of calls, spend), while an outage spends what a process held when it
//! began and earns nothing after: three requests for a quiet process, and a fifth of five
//! seconds' calls for a busy one, once.

use std::{collections::VecDeque, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// The span of time whose successes set a busy process's ceiling.
pub const WINDOW: Duration = Duration::from_secs(5);
/// The requests a process holds when it starts, and the least its ceiling ever is: enough for one
/// call to retry, look up an unknown outcome, and look up the conflict that follows it.
pub const RESERVE: f64 = 3.0;

/// The retry budget's knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Requests earned by each create that succeeds at its first attempt; the ceiling is this
    /// share of the successes of the last [`WINDOW`].
    pub ratio: f64,
    /// The least ceiling, and the starting balance: [`RESERVE`] (other values for tests).
    pub reserve: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            reserve: RESERVE,
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

#[derive(Debug)]
struct Balance {
    requests: f64,
    /// When recent first-attempt successes came, the oldest first, none older than [`WINDOW`].
    successes: VecDeque<Instant>,
}

/// The retry budget of one gateway process; without a config, unlimited (protection off).
#[derive(Debug)]
pub struct RetryBudget {
    config: Option<BudgetConfig>,
    balance: Mutex<Balance>,
}

/// One request's withdrawal, not yet sent: dropped (the call ended or was cancelled first), it
/// goes back to the budget. [`Withdrawal::sent`] when its request goes.
#[derive(Debug)]
#[must_use]
pub struct Withdrawal<'a> {
    budget: &'a RetryBudget,
    requests: f64,
}

/// A withdrawal whose request was sent: spent, unless [`RetryBudget::succeeded`] gives it back.
#[derive(Debug)]
#[must_use]
pub struct Sent {
    requests: f64,
}

impl Withdrawal<'_> {
    /// The request is on its way: the withdrawal is no longer given back when dropped.
    pub fn sent(mut self) -> Sent {
        Sent {
            requests: std::mem::take(&mut self.requests),
        }
    }
}

impl Drop for Withdrawal<'_> {
    fn drop(&mut self) {
        if self.requests > 0.0 {
            self.budget.deposit(self.requests, None);
        }
    }
}

impl RetryBudget {
    /// A budget with `config`'s ratio, starting at its reserve, or an unlimited one.
    pub fn new(config: Option<BudgetConfig>) -> Self {
        let start = config.map_or(0.0, |c| c.reserve);
        Self {
            config,
            balance: Mutex::new(Balance {
                requests: start,
                successes: VecDeque::new(),
            }),
        }
    }

    /// Takes one request from the balance, or `None` when less than one is left.
    pub fn withdraw(&self, _extra: Extra) -> Option<Withdrawal<'_>> {
        if self.config.is_none() {
            return Some(Withdrawal {
                budget: self,
                requests: 0.0,
            });
        }
        let mut b = self.balance.lock().expect("never poisoned");
        if b.requests < 1.0 {
            return None;
        }
        b.requests -= 1.0;
        Some(Withdrawal {
            budget: self,
            requests: 1.0,
        })
    }

    /// Gives back a withdrawal whose request was not sent (dropping it does the same).
    pub fn refund(&self, withdrawal: Withdrawal<'_>) {
        drop(withdrawal);
    }

    /// A create succeeded: at its first attempt (`retry` is `None`) it earns `ratio`; a retry
    /// gets its own cost back.
    pub fn succeeded(&self, retry: Option<Sent>) {
        let Some(config) = self.config else {
            return;
        };
        match retry {
            Some(sent) => self.deposit(sent.requests, None),
            None => self.deposit(config.ratio, Some(Instant::now())),
        }
    }

    fn deposit(&self, requests: f64, success_at: Option<Instant>) {
        let Some(config) = self.config else {
            return;
        };
        let mut b = self.balance.lock().expect("never poisoned");
        if let Some(at) = success_at {
            b.successes.push_back(at);
        }
        let now = Instant::now();
        while b
            .successes
            .front()
            .is_some_and(|&t| now.duration_since(t) > WINDOW)
        {
            b.successes.pop_front();
        }
        let ceiling = (config.ratio * b.successes.len() as f64).max(config.reserve);
        b.requests = (b.requests + requests).min(ceiling);
    }

    /// The requests left (`None`: unlimited).
    pub fn balance(&self) -> Option<f64> {
        self.config
            .map(|_| self.balance.lock().expect("never poisoned").requests)
    }
}
