//! What a gateway process may add to the upstream's load (docs/design.md §8): the answer to "may
//! another request go upstream now".
//!
//! - [`Backoff`]: the wait between a call's attempts.
//! - [`RetryBudget`] (`budget`): requests beyond a call's first attempt (retries, and lookups
//!   after unknown outcomes), earned by the process's own successes.
//! - [`SendLimiter`] (`throttle`): the SRE book's client-side adaptive throttling, a window for
//!   each operation, refusing a share of requests while Chime throttles them.
//!
//! Every allowance is a share of the process's own recent traffic, so what a fleet adds sums to a
//! share of the fleet's traffic whatever its size. The one fixed amount is the retry budget's
//! reserve of three requests, which lets a quiet process retry its own transient faults: an
//! outage spends it once per process, and only successes earn it back. Pure arithmetic over
//! `tokio::time::Instant` (tests pause it); knows nothing of HTTP, gRPC or the SDK.

mod budget;
mod throttle;

pub use budget::{BudgetConfig, Extra, RESERVE, RetryBudget, Sent, WINDOW as BUDGET_WINDOW, Withdrawal};
pub use throttle::{
    K, NO_RETRY_REFUSING, NoSlot, Operation, PRIOR, PROBE, SendLimiter, SendRate, Tuning, WINDOW,
};

use std::time::Duration;

use rand::Rng;

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
        rand::rng().random_range(Duration::ZERO..=self.ceiling(failed))
    }

    /// The longest wait before attempt `failed + 1`, the jitter's range.
    pub fn ceiling(&self, failed: u32) -> Duration {
        self.base
            .saturating_mul(1 << failed.saturating_sub(1).min(16))
            .min(self.max)
    }
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
