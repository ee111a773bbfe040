//! The upstream requests of a call: each waits for a send slot, takes what the retry budget asks
//! of requests beyond the first, and lets the send rate learn from its answer.

use std::time::Duration;

use tokio::time::{Instant, timeout, timeout_at};
use tracing::Instrument;

use super::{ChimeGateway, Lookup, SEND_MARGIN};
use crate::{
    chime::{Created, Upstream},
    error::{self, Reconciliation, UpstreamError},
    metrics::WaitingGuard,
    retry::{Extra, NoSlot, Withdrawal},
};

impl<U: Upstream> ChimeGateway<U> {
    /// Waits for a send slot (`--upstream-rate`), if it comes before `deadline`.
    pub(super) async fn send_slot(&self, deadline: Instant) -> Result<(), NoSlot> {
        // A request sent in the call's last moments could not be answered in time.
        let deadline = deadline.checked_sub(SEND_MARGIN).unwrap_or(deadline);
        let slot = match self.limiter.acquire(deadline) {
            Ok(None) => return Ok(()),
            Ok(Some(slot)) => slot,
            Err(no_slot) => {
                self.metrics.slot_refused();
                return Err(no_slot);
            }
        };
        let _waiting = WaitingGuard::for_send_slot(&self.metrics);
        let waited = self.limiter.wait(slot, deadline).await;
        if waited.is_err() {
            self.metrics.slot_refused();
        }
        waited
    }

    /// Takes the retry budget's tokens for one more request, counting a refusal.
    pub(super) fn withdraw(&self, extra: Extra) -> Option<Withdrawal> {
        let withdrawal = self.budget.withdraw(extra);
        if withdrawal.is_none() {
            self.metrics.budget_refused(extra.as_str());
        }
        self.metrics.budget_balance(self.budget.balance());
        withdrawal
    }

    pub(super) fn refund(&self, withdrawal: Withdrawal) {
        self.budget.refund(withdrawal);
        self.metrics.budget_balance(self.budget.balance());
    }

    pub(super) fn succeeded(&self, retry: Option<Withdrawal>) {
        self.budget.succeeded(retry);
        self.metrics.budget_balance(self.budget.balance());
    }

    /// Lets the send rate learn from the HTTP status of an answer to a request sent at `sent`.
    pub(super) fn answered(&self, http_status: Option<u16>, sent: Instant) {
        if let Some(status) = http_status {
            self.metrics.send_rate(self.limiter.record(status == 429, sent));
        }
    }

    /// One upstream CreateUser attempt, bounded by `--upstream-timeout`, metered and traced.
    pub(super) async fn attempt(
        &self,
        input: aws_sdk_chime::operation::create_user::CreateUserInput,
        n: u32,
    ) -> Result<Created, UpstreamError> {
        let meter = self.metrics.upstream_started(n > 1);
        let span = tracing::info_span!(
            "chime.upstream_attempt",
            otel.kind = "client",
            rpc.system = "aws-api",
            attempt = n,
        );
        // Boxed, so a call that waits for a connection holds a small future, not the SDK's.
        let sent_at = Instant::now();
        let sent = Box::pin(self.upstream.create_user(input).instrument(span));
        let result = timeout(self.policy.upstream_timeout, sent)
            .await
            .unwrap_or(Err(UpstreamError::AttemptTimeout));
        let http_status = match &result {
            Ok(_) => Some(201),
            Err(error) => error.http_status(),
        };
        self.answered(http_status, sent_at);
        meter.finish(http_status);
        result
    }

    /// Asks the upstream whether the user exists, within the attempt timeout and the deadline,
    /// when the retry budget (unless the lookup is `owed`) and the send rate allow one more
    /// request.
    pub(super) async fn look_up(
        &self,
        account_id: &str,
        email: &str,
        deadline: Instant,
        owed: bool,
    ) -> Lookup {
        let withdrawal = if owed {
            None
        } else {
            let Some(withdrawal) = self.withdraw(Extra::Lookup) else {
                return Lookup::Refused {
                    budget_exhausted: true,
                };
            };
            Some(withdrawal)
        };
        if self.send_slot(deadline).await.is_err() {
            if let Some(withdrawal) = withdrawal {
                self.refund(withdrawal);
            }
            return Lookup::Refused {
                budget_exhausted: false,
            };
        }
        let sent_at = Instant::now();
        let limit = deadline.min(sent_at + self.policy.upstream_timeout);
        let span = tracing::info_span!("chime.reconcile", otel.kind = "client", rpc.system = "aws-api",);
        let found = Box::pin(
            self.upstream
                .find_user_by_email(account_id, email)
                .instrument(span),
        );
        let (lookup, outcome) = match timeout_at(limit, found).await {
            Ok(Ok(Some(found))) => (Lookup::Found(Box::new(found)), "found"),
            Ok(Ok(None)) => (Lookup::Missing(Reconciliation::NotFound), "not_found"),
            Ok(Err(error)) => {
                self.answered(error.http_status(), sent_at);
                (Lookup::Missing(Reconciliation::Failed), "failed")
            }
            Err(_) => (Lookup::Missing(Reconciliation::Failed), "failed"),
        };
        if matches!(
            lookup,
            Lookup::Found(_) | Lookup::Missing(Reconciliation::NotFound)
        ) {
            self.answered(Some(200), sent_at);
        }
        self.metrics.reconciled(outcome);
        lookup
    }

    /// The wait before another attempt, when the contract allows one and it fits the deadline.
    pub(super) fn retry_wait(
        &self,
        error: &UpstreamError,
        attempts: u32,
        deadline: Instant,
    ) -> Option<Duration> {
        if !error::rule(error).retryable {
            return None;
        }
        let retry_after = match error {
            UpstreamError::Response(r) => r.retry_after,
            _ => None,
        };
        self.another_attempt(attempts, retry_after, deadline)
    }

    /// The wait before attempt `attempts + 1`, when `AWS_MAX_ATTEMPTS` and the deadline allow it.
    pub(super) fn another_attempt(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        deadline: Instant,
    ) -> Option<Duration> {
        if attempts >= self.policy.max_attempts {
            return None;
        }
        let wait = self.policy.backoff.delay(attempts, retry_after);
        Instant::now()
            .checked_add(wait)
            .is_some_and(|at| at < deadline)
            .then_some(wait)
    }
}
