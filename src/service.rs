//! `chime.v1.ChimeService`: receives a call, bounds it in time and concurrency, validates it,
//! makes the upstream attempts the contract allows, and answers.
//!
//! Owns the call's policy (deadline, attempt timeout, retries with backoff, the concurrency limit)
//! and the one log line per call. Conversions live in `translate`, status mapping in `error`.

use std::{sync::Arc, time::Duration};

use rand::Rng;
use tokio::{
    sync::{Semaphore, watch},
    time::{Instant, sleep, timeout, timeout_at},
};
use tonic::{Request, Response, Status, metadata::MetadataMap, metadata::MetadataValue};

use crate::{
    chime::{Created, Upstream},
    error::{self, CallError, REQUEST_ID_KEY, UpstreamError},
    metrics::{Metrics, WaitingGuard},
    pb::chime::v1::{CreateUserRequest, CreateUserResponse, chime_service_server::ChimeService},
    telemetry, translate, validate,
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The gateway answers this long before the caller's deadline, so its DEADLINE_EXCEEDED (with
/// details) reaches the caller, and tonic's transport timeout (which answers CANCELLED) never
/// fires first.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// How each call is bounded and retried.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    /// The limit of each upstream attempt.
    pub upstream_timeout: Duration,
    /// The call's deadline when the caller set none.
    pub default_deadline: Duration,
    /// Upper bound of attempts for failures the contract lets the gateway retry.
    pub max_attempts: u32,
    /// Backoff between those attempts.
    pub backoff: Backoff,
}

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

/// The `ChimeService` implementation, generic over the upstream so tests can swap it.
pub struct ChimeGateway<U> {
    upstream: Arc<U>,
    policy: CallPolicy,
    permits: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    cancel: Arc<watch::Sender<bool>>,
    metrics: Arc<Metrics>,
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
        }
    }

    /// Lets at most `max` upstream attempts run at once (one per upstream connection); calls
    /// beyond wait for one, within their deadline.
    pub fn with_upstream_connections(mut self, max: usize) -> Self {
        self.connections = Arc::new(Semaphore::new(max));
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

    async fn handle(
        &self,
        request: CreateUserRequest,
        deadline: Instant,
    ) -> (Result<Created, CallError>, u32) {
        let Ok(_permit) = self.permits.try_acquire() else {
            return (Err(CallError::Overloaded), 0);
        };
        if let Err(violations) = validate::validate(&request) {
            return (Err(CallError::Invalid(violations)), 0);
        }
        let input = translate::to_input(request);
        let mut attempts = 0;
        let mut waiting = false;
        let attempt_loop = async {
            loop {
                waiting = true;
                let queued = WaitingGuard::new(&self.metrics);
                let connection = self.connections.acquire().await.expect("never closed");
                drop(queued);
                waiting = false;
                attempts += 1;
                let meter = self.metrics.upstream_started(attempts > 1);
                let attempt_span = tracing::info_span!(
                    "chime.upstream_attempt",
                    otel.kind = "client",
                    rpc.system = "aws-api",
                    attempt = attempts,
                );
                // Boxed, so a call that waits above holds a small future, not the SDK's.
                let sent = Box::pin(self.upstream.create_user(input.clone()).instrument(attempt_span));
                let error = match timeout(self.policy.upstream_timeout, sent).await {
                    Ok(Ok(created)) => {
                        meter.finish(Some(201));
                        return Ok(created);
                    }
                    Ok(Err(error)) => error,
                    Err(_) => UpstreamError::AttemptTimeout,
                };
                meter.finish(error.http_status());
                if let Some(wait) = self.retry_wait(&error, attempts, deadline) {
                    drop(connection);
                    sleep(wait).await;
                    continue;
                }
                return Err(CallError::Upstream { error, attempts });
            }
        };
        let result = timeout_at(deadline, attempt_loop).await;
        let late = if waiting {
            CallError::UpstreamBusy { attempts }
        } else {
            CallError::DeadlineExceeded { attempts }
        };
        (result.unwrap_or(Err(late)), attempts)
    }

    /// The wait before another attempt, when the contract allows one and it fits the deadline.
    fn retry_wait(&self, error: &UpstreamError, attempts: u32, deadline: Instant) -> Option<Duration> {
        if !error::rule(error).retryable || attempts >= self.policy.max_attempts {
            return None;
        }
        let retry_after = match error {
            UpstreamError::Response(r) => r.retry_after,
            _ => None,
        };
        let wait = self.policy.backoff.delay(attempts, retry_after);
        (Instant::now() + wait < deadline).then_some(wait)
    }

    async fn create_user_in(
        &self,
        request: Request<CreateUserRequest>,
        started: Instant,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let budget = caller_timeout(request.metadata()).unwrap_or(self.policy.default_deadline);
        let deadline = started + budget.saturating_sub(DEADLINE_MARGIN);
        let mut cancelled = self.cancel.subscribe();
        let (result, attempts) = tokio::select! {
            outcome = self.handle(request.into_inner(), deadline) => outcome,
            _ = cancelled.wait_for(|c| *c) => (Err(CallError::ShuttingDown), 0),
        };
        let code = result.as_ref().map_or_else(CallError::code, |_| tonic::Code::Ok);
        tracing::Span::current().record("rpc.grpc.status_code", code as i32);
        log_call(&result, attempts, started.elapsed());
        let created = result.map_err(|e| e.to_status())?;
        let request_id = created
            .request_id
            .as_deref()
            .and_then(|id| MetadataValue::try_from(id).ok());
        let mut response = Response::new(translate::from_output(created.output));
        if let Some(id) = request_id {
            response.metadata_mut().insert(REQUEST_ID_KEY, id);
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl<U: Upstream> ChimeService for ChimeGateway<U> {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
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

/// One line per call; never the request's fields, which may be sensitive.
fn log_call(result: &Result<Created, CallError>, attempts: u32, latency: Duration) {
    let latency_ms = latency.as_secs_f64() * 1000.0;
    match result {
        Ok(created) => tracing::info!(
            method = "CreateUser",
            grpc_code = "OK",
            upstream_status = 201,
            attempts,
            latency_ms,
            aws_request_id = created.request_id.as_deref().unwrap_or(""),
            "call finished"
        ),
        Err(error) => {
            let (upstream_status, aws_request_id) = match error {
                CallError::Upstream {
                    error: UpstreamError::Response(r),
                    ..
                } => (r.status, r.request_id.as_deref().unwrap_or("")),
                CallError::Upstream {
                    error:
                        UpstreamError::Unparseable {
                            status, request_id, ..
                        },
                    ..
                } => (*status, request_id.as_deref().unwrap_or("")),
                _ => (0, ""),
            };
            tracing::info!(
                method = "CreateUser",
                grpc_code = ?error.code(),
                upstream_status,
                attempts,
                latency_ms,
                aws_request_id,
                error = %error,
                "call finished"
            );
        }
    }
}

/// The caller's `grpc-timeout`, per the gRPC HTTP/2 protocol (`<up to 8 digits><H|M|S|m|u|n>`).
pub fn caller_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
