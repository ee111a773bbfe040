//! `chime.v1.ChimeService`: receives a call, bounds it in time and concurrency, validates it,
//! makes the upstream attempts the contract allows, settles unknown outcomes, and answers.
//!
//! Owns the call's flow (deadline, attempt timeout, retries, the concurrency limit, request ids and
//! reconciliation) and the one log line per call. Whether and when another request may go
//! upstream (backoff, the retry budget, the send rate) is `retry`'s arithmetic; what a request id
//! keeps lives in `idempotency`, conversions in `translate`, status mapping in `error`.
//!
//! Here the call's flow (`handle`, `attempt_all`); beside it `upstream` (each upstream request:
//! the adaptive throttle, the budget, metering), `answer` (what a call answers and what a request id keeps),
//! `metadata` (deadline and declared retries read from the call) and `call_log`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Semaphore, watch},
    time::{Instant, sleep, timeout_at},
};
use tonic::{Request, Response, Status, metadata::MetadataValue};

pub use crate::retry::Backoff;
use crate::{
    chime::{Found, Upstream},
    codec::Reply,
    error::{self, CallError, REQUEST_ID_KEY, Reconciliation, UpstreamError},
    idempotency::{Entry, Journal, Ledger, Outcome, Progress, Recovered},
    metrics::{Metrics, WaitingGuard},
    pb::{
        chime::v1::{CreateUserRequest, CreateUserResponse, chime_service_server::ChimeService},
        wire,
    },
    retry::{BudgetConfig, Extra, RetryBudget, SendLimiter, SendRate, Withdrawal},
    telemetry, translate, validate,
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The gateway answers this long before the caller's deadline, so its DEADLINE_EXCEEDED (with
/// details) reaches the caller, and tonic's transport timeout (which answers CANCELLED) never
/// fires first, even when a busy process polls the call a few milliseconds late.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(20);
/// Response metadata set when the answer is an earlier call's, for the same request id.
pub const REPLAYED_KEY: &str = "x-chime-gateway-replayed";
/// Response metadata set when the user was found by a lookup after an unknown outcome.
pub const RECONCILED_KEY: &str = "x-chime-gateway-reconciled";
/// How long a request id's outcome is kept by default.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(15 * 60);
/// How many outcomes are kept by default: what a full memory holds is in docs/configuration.md,
/// "Memory".
pub const DEFAULT_IDEMPOTENCY_CAPACITY: u64 = 10_000;

/// How each call is bounded, retried and settled.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    /// The limit of each upstream attempt (and of each reconciliation lookup).
    pub upstream_timeout: Duration,
    /// The call's deadline when the caller set none.
    pub default_deadline: Duration,
    /// Upper bound of attempts for failures the contract lets the gateway retry.
    pub max_attempts: u32,
    /// Backoff between those attempts.
    pub backoff: Backoff,
    /// Look the user up by email when an attempt's outcome is unknown.
    pub reconcile: bool,
}

/// What a lookup after an unknown outcome found.
enum Lookup {
    Found(Box<Found>),
    Missing(Reconciliation),
    /// Not made: the retry budget is empty, or the adaptive throttle refused it.
    Refused {
        budget_exhausted: bool,
    },
}

/// How a gateway keeps request ids (docs/design.md §7): the memory's bounds, and the journal of
/// `--state-dir`, which comes with them or not at all.
#[derive(Debug)]
pub struct RequestIds {
    ttl: Duration,
    capacity: u64,
    journal: Option<(Journal, Recovered)>,
}

impl RequestIds {
    /// Each request id's outcome kept for `ttl`, and at most `capacity` of them, in memory.
    pub fn in_memory(ttl: Duration, capacity: u64) -> Self {
        Self {
            ttl,
            capacity,
            journal: None,
        }
    }

    /// The same, with the ids in doubt written to `journal` too, starting from those it
    /// recovered.
    pub fn journaled(ttl: Duration, capacity: u64, journal: Journal, recovered: Recovered) -> Self {
        Self {
            ttl,
            capacity,
            journal: Some((journal, recovered)),
        }
    }
}

/// The `ChimeService` implementation, generic over the upstream so tests can swap it.
pub struct ChimeGateway<U> {
    upstream: Arc<U>,
    policy: CallPolicy,
    permits: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    cancel: Arc<watch::Sender<bool>>,
    metrics: Arc<Metrics>,
    ledger: Ledger<Kept, CallError>,
    budget: RetryBudget,
    limiter: SendLimiter,
}

/// Ends every call still in flight with UNAVAILABLE: the last step of a shutdown whose grace ran out.
#[derive(Debug, Clone)]
pub struct Canceller(Arc<watch::Sender<bool>>);

impl Canceller {
    /// Cancels the calls in flight and any that start later.
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }
}

impl<U: Upstream> ChimeGateway<U> {
    /// A gateway serving at most `max_concurrency` calls at once.
    pub fn new(upstream: U, policy: CallPolicy, max_concurrency: usize) -> Self {
        Self {
            upstream: Arc::new(upstream),
            policy,
            permits: Arc::new(Semaphore::new(max_concurrency)),
            connections: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            cancel: Arc::new(watch::Sender::new(false)),
            metrics: Arc::new(Metrics::default()),
            ledger: Ledger::new(DEFAULT_IDEMPOTENCY_TTL, DEFAULT_IDEMPOTENCY_CAPACITY),
            budget: RetryBudget::new(Some(BudgetConfig::default())),
            limiter: SendLimiter::new(SendRate::Adaptive),
        }
        .with_metered_budget()
    }

    /// Bounds retries and lookups by a retry budget with these knobs (`None`: unbounded).
    pub fn with_retry_budget(mut self, config: Option<BudgetConfig>) -> Self {
        self.budget = RetryBudget::new(config);
        self.with_metered_budget()
    }

    fn with_metered_budget(self) -> Self {
        self.metrics.budget_balance(self.budget.balance());
        self
    }

    /// Throttles upstream sends after Chime's 429s (`--adaptive-throttle`).
    pub fn with_send_rate(mut self, rate: SendRate) -> Self {
        self.limiter = SendLimiter::new(rate);
        self
    }

    /// Lets at most `max` upstream attempts run at once (one per upstream connection); calls
    /// beyond wait for one, within their deadline.
    pub fn with_upstream_connections(mut self, max: usize) -> Self {
        self.connections = Arc::new(Semaphore::new(max));
        self
    }

    /// Keeps request ids as `ids` says: for how long, how many, and (with `--state-dir`) the
    /// journal that makes the ids in doubt outlive the process.
    pub fn with_request_ids(mut self, ids: RequestIds) -> Self {
        let mut ledger = Ledger::new(ids.ttl, ids.capacity);
        if let Some((journal, recovered)) = ids.journal {
            ledger.attach_journal(journal, &recovered.in_doubt);
        }
        self.ledger = ledger;
        self
    }

    /// The metrics this gateway records into, for the server's layer and the metrics port.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The handle that cancels this gateway's calls.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    async fn handle(&self, request: CreateUserRequest, deadline: Instant, retry: bool) -> Answered {
        let answer = |result: Result<Success, CallError>, attempts| Answered {
            result: result.map_err(Arc::new),
            attempts,
            replayed: false,
        };
        let Ok(_permit) = self.permits.try_acquire() else {
            return answer(Err(CallError::Overloaded), 0);
        };
        let id = match validate::validate(&request) {
            Ok(id) => id,
            Err(violations) => return answer(Err(CallError::Invalid(violations)), 0),
        };
        let attempts = AtomicU32::new(0);
        let Some(id) = id else {
            let result = self
                .attempt_all(request, deadline, Progress::none(), &attempts)
                .await;
            return answer(result, attempts.into_inner());
        };
        let (key, fingerprint) = self.ledger.identify(&request, id);
        // The call's future is awaited here, beside its ticket, not moved into the ledger's.
        // However it ends, dropped included, the ticket's end reads what the call's progress says.
        let outcome = match self.ledger.enter(key, fingerprint, retry, deadline).await {
            Entry::Done(outcome) => outcome,
            Entry::Run(ticket) => {
                let progress = ticket.progress();
                let result = self.attempt_all(request, deadline, progress, &attempts).await;
                ticket.end(ending(result, progress))
            }
        };
        let attempts = attempts.into_inner();
        match outcome {
            Outcome::Waited => answer(Err(CallError::DeadlineExceeded { attempts }), attempts),
            Outcome::Reused => answer(Err(CallError::RequestIdReused), 0),
            Outcome::Answer { result, replayed } => Answered {
                result: result.and_then(|kept| kept.map_err(|r| Arc::new(r.into_error()))),
                attempts,
                replayed,
            },
        }
    }

    /// Makes the attempts the contract allows, settling unknown outcomes by a lookup.
    async fn attempt_all(
        &self,
        request: CreateUserRequest,
        deadline: Instant,
        progress: Progress<'_>,
        attempts: &AtomicU32,
    ) -> Result<Success, CallError> {
        let email = request.email.clone().filter(|_| self.policy.reconcile);
        let account_id = request.account_id.clone();
        let input = translate::to_input(request);
        // `in_doubt`: an attempt of this call may have created the user (what its progress says
        // too, for a call with a request id).
        let (mut waiting, mut in_doubt) = (false, false);
        // The failure a lookup is settling: still the answer if the deadline cuts the lookup.
        let mut unsettled = None;
        let attempt_loop = async {
            // The failure a retry follows, and what the retry took from the budget.
            let mut retrying: Option<(Failed, Withdrawal)> = None;
            loop {
                if let Err(no_slot) = self.admit_create() {
                    return Err(match retrying.take() {
                        None => CallError::RateLimited {
                            retry_after: no_slot.retry_after,
                        },
                        Some((failed, withdrawal)) => {
                            self.refund(withdrawal);
                            failed.into_error(false)
                        }
                    });
                }
                waiting = true;
                let queued = WaitingGuard::for_connection(&self.metrics);
                let connection = self.connections.acquire().await.expect("never closed");
                drop(queued);
                waiting = false;
                if Instant::now() >= deadline {
                    // No time left to hear the answer: sending now could only create a user the
                    // caller never learns of.
                    if let Some((_, withdrawal)) = retrying.take() {
                        self.refund(withdrawal);
                    }
                    return Err(CallError::DeadlineExceeded {
                        attempts: attempts.load(Ordering::Relaxed),
                    });
                }
                let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
                // Sent from here: a call dropped during the attempt has spent its withdrawal.
                let retry = retrying.take().map(|(_, withdrawal)| withdrawal.sent());
                progress.sent();
                let attempt = self.attempt(input.clone(), n).await;
                let error = match attempt {
                    Ok(created) => {
                        progress.answered(false);
                        self.succeeded(retry);
                        return Ok(Success::created(created));
                    }
                    Err(error) => error,
                };
                let unknown = error::outcome_unknown(&error);
                // A 2xx whose body could not be read created the user, unseen.
                let created_unseen = unknown || matches!(error, UpstreamError::Unparseable { .. });
                progress.answered(created_unseen);
                in_doubt |= created_unseen;
                let conflict = error.http_status() == Some(409);
                let (failed, again) = if let Some(email) = email.as_deref()
                    && (unknown || (conflict && (in_doubt || progress.before())))
                {
                    unsettled = Some(error);
                    // A 409 for an id an earlier call left in doubt (its lookup deferred, say):
                    // the lookup is this call's only way to its own user, so it is owed, not
                    // drawn on the budget. A 409 ends the attempts: at most one per call.
                    let owed = conflict && progress.before();
                    let lookup = self.look_up(&account_id, email, deadline, owed).await;
                    let error = unsettled.take().expect("set above");
                    let reconciliation = match lookup {
                        Lookup::Found(found) => return Ok(Success::reconciled(*found)),
                        Lookup::Missing(missing) => missing,
                        Lookup::Refused { budget_exhausted } => {
                            // Deferred: the in-doubt marker stays for the caller's retry.
                            let later = if progress.has_request_id() {
                                Reconciliation::Deferred
                            } else {
                                Reconciliation::Skipped
                            };
                            self.metrics.reconciled(later.as_str());
                            let failed = Failed::new(error, n, Some(later));
                            return Err(failed.into_error(budget_exhausted));
                        }
                    };
                    // Not found: the create did not happen, so another attempt is safe.
                    let again = (reconciliation == Reconciliation::NotFound && !conflict)
                        .then(|| self.another_attempt(n, None, deadline))
                        .flatten();
                    (Failed::new(error, n, Some(reconciliation)), again)
                } else {
                    let wait = self.retry_wait(&error, n, deadline);
                    (Failed::new(error, n, None), wait)
                };
                let Some(wait) = again else {
                    return Err(failed.into_error(false));
                };
                let Some(withdrawal) = self.withdraw(Extra::Retry) else {
                    return Err(failed.into_error(true));
                };
                drop(connection);
                sleep(wait).await;
                retrying = Some((failed, withdrawal));
            }
        };
        // Cut by the deadline with an attempt in flight, the call's progress still says so.
        let result = timeout_at(deadline, attempt_loop).await;
        let attempts = attempts.load(Ordering::Relaxed);
        result.unwrap_or_else(|_| {
            Err(if waiting {
                CallError::UpstreamBusy { attempts }
            } else if let Some(error) = unsettled {
                self.metrics.reconciled(Reconciliation::Failed.as_str());
                Failed::new(error, attempts, Some(Reconciliation::Failed)).into_error(false)
            } else {
                CallError::DeadlineExceeded { attempts }
            })
        })
    }

    async fn create_user_in(
        &self,
        request: Request<CreateUserRequest>,
        started: Instant,
    ) -> Result<Response<Reply>, Status> {
        let budget = caller_timeout(request.metadata()).unwrap_or(self.policy.default_deadline);
        let deadline = started + budget.saturating_sub(DEADLINE_MARGIN);
        let retry = declared_retry(request.metadata());
        let mut cancelled = self.cancel.subscribe();
        let answered = tokio::select! {
            answered = self.handle(request.into_inner(), deadline, retry) => answered,
            _ = cancelled.wait_for(|c| *c) => Answered {
                result: Err(Arc::new(CallError::ShuttingDown)),
                attempts: 0,
                replayed: false,
            },
        };
        let code = answered
            .result
            .as_ref()
            .map_or_else(|e| e.code(), |_| tonic::Code::Ok);
        tracing::Span::current().record("rpc.grpc.status_code", code as i32);
        log_call(&answered, started.elapsed());
        if answered.replayed {
            self.metrics.replayed();
        }
        let flag = MetadataValue::from_static("true");
        let success = match answered.result {
            Ok(success) => success,
            Err(error) => {
                if let Some(reason) = error.gateway_reason() {
                    self.metrics.gateway_error(reason);
                }
                let mut status = error.to_status();
                if answered.replayed {
                    status.metadata_mut().insert(REPLAYED_KEY, flag);
                }
                return Err(status);
            }
        };
        let mut response = Response::new(success.response);
        let metadata = response.metadata_mut();
        if let Some(id) = success
            .request_id
            .as_deref()
            .and_then(|id| MetadataValue::try_from(id).ok())
        {
            metadata.insert(REQUEST_ID_KEY, id);
        }
        if success.reconciled {
            metadata.insert(RECONCILED_KEY, flag.clone());
        }
        if answered.replayed {
            metadata.insert(REPLAYED_KEY, flag);
        }
        Ok(response)
    }

    /// One call, as either service trait receives it: in a span of its own that continues the
    /// caller's trace.
    async fn serve(&self, request: Request<CreateUserRequest>) -> Result<Response<Reply>, Status> {
        let started = Instant::now();
        let span = tracing::info_span!(
            "chime.v1.ChimeService/CreateUser",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(telemetry::caller_context(request.metadata()));
        self.create_user_in(request, started).instrument(span).await
    }
}

/// What the gateway's server calls: a kept answer is sent as the bytes it was kept as.
#[tonic::async_trait]
impl<U: Upstream> wire::chime_service_server::ChimeService for ChimeGateway<U> {
    async fn create_user(&self, request: Request<CreateUserRequest>) -> Result<Response<Reply>, Status> {
        self.serve(request).await
    }
}

/// The API's own service trait, for callers in process: the same call, answered with the message.
#[tonic::async_trait]
impl<U: Upstream> ChimeService for ChimeGateway<U> {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let response = self.serve(request).await?;
        Ok(response.map(Reply::into_message))
    }
}

mod answer;
mod call_log;
mod metadata;
mod upstream;

use answer::{Answered, Failed, ending};
pub use answer::{Kept, Refused, Success};
use call_log::log_call;
pub use metadata::{GRPC_PREVIOUS_ATTEMPTS_KEY, PREVIOUS_ATTEMPTS_KEY, caller_timeout, declared_retry};

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
