//! The upstream requests of a call: each asks the adaptive throttle of its operation, takes what
//! the retry budget asks of requests beyond the first, and lets the throttle learn from its answer.

use std::time::Duration;

use tokio::time::{Instant, timeout, timeout_at};
use tracing::Instrument;

use super::{ChimeGateway, Lookup};
use crate::{
    chime::{Created, Upstream},
    error::{self, Reconciliation, UpstreamError},
    retry::{Extra, NO_RETRY_REFUSING, NoSlot, Operation, Sent, Withdrawal},
};

impl<U: Upstream> ChimeGateway<U> {
    /// Whether the adaptive throttle lets a create go now: it decides at once, never by waiting.
    pub(super) fn admit_create(&self) -> Result<(), NoSlot> {
        self.throttle(Operation::CreateUser)
    }

    fn throttle(&self, op: Operation) -> Result<(), NoSlot> {
        let decided = self.limiter.acquire(op);
        if decided.is_err() {
            self.metrics.throttle_refused(op.as_str());
        }
        decided
    }

    /// Takes the retry budget's request for one more, counting a refusal.
    pub(super) fn withdraw(&self, extra: Extra) -> Option<Withdrawal<'_>> {
        let withdrawal = self.budget.withdraw(extra);
        if withdrawal.is_none() {
            self.metrics.budget_refused(extra.as_str());
        }
        self.metrics.budget_balance(self.budget.balance());
        withdrawal
    }

    pub(super) fn refund(&self, withdrawal: Withdrawal<'_>) {
        self.budget.refund(withdrawal);
        self.metrics.budget_balance(self.budget.balance());
    }

    pub(super) fn succeeded(&self, retry: Option<Sent>) {
        self.budget.succeeded(retry);
        self.metrics.budget_balance(self.budget.balance());
    }

    /// Lets the throttle of `op` learn from the HTTP status of an answer.
    fn answered(&self, op: Operation, http_status: Option<u16>) {
        if let Some(status) = http_status {
            self.limiter.record(op, status == 429);
            self.metrics
                .throttle_refusing(op.as_str(), self.limiter.refusal_probability(op));
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
        let sent = Box::pin(self.upstream.create_user(input).instrument(span));
        let result = timeout(self.policy.upstream_timeout, sent)
            .await
            .unwrap_or(Err(UpstreamError::AttemptTimeout));
        let http_status = match &result {
            Ok(_) => Some(201),
            Err(error) => error.http_status(),
        };
        self.answered(Operation::CreateUser, http_status);
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
        if self.throttle(Operation::ListUsers).is_err() {
            if let Some(withdrawal) = withdrawal {
                self.refund(withdrawal);
            }
            return Lookup::Refused {
                budget_exhausted: false,
            };
        }
        // Sent from here: a call dropped during the lookup has spent its withdrawal.
        let _spent = withdrawal.map(Withdrawal::sent);
        let limit = deadline.min(Instant::now() + self.policy.upstream_timeout);
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
                self.answered(Operation::ListUsers, error.http_status());
                (Lookup::Missing(Reconciliation::Failed), "failed")
            }
            Err(_) => (Lookup::Missing(Reconciliation::Failed), "failed"),
        };
        if matches!(
            lookup,
            Lookup::Found(_) | Lookup::Missing(Reconciliation::NotFound)
        ) {
            self.answered(Operation::ListUsers, Some(200));
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
        // Chime throttles creates and the throttle already refuses a good share of them: another
        // attempt could only add to what the account is refusing.
        let refusing = self.limiter.refusal_probability(Operation::CreateUser);
        if error.http_status() == Some(429) && refusing.is_some_and(|p| p >= NO_RETRY_REFUSING) {
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
