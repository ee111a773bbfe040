//! Prometheus metrics with the go-grpc-prometheus names, so existing dashboards work, plus the
//! upstream's: counted by a tower layer around every gRPC method and by the service around every
//! upstream attempt, and served as text on the metrics port.
//!
//! Owns the registry and its encoding; never a label from request content (no emails, no ids).

use std::{
    borrow::Cow,
    pin::Pin,
    sync::{Arc, atomic::AtomicU64},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tonic::Code;

/// go-grpc-prometheus's default latency buckets (Prometheus `DefBuckets`), in seconds.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

type Name = Cow<'static, str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: Name,
    grpc_method: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: Name,
    grpc_method: Name,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    http_status: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconciliationLabels {
    outcome: &'static str,
}

/// The outcomes of a reconciliation lookup, as the metric's `outcome` label spells them.
pub const RECONCILIATION_OUTCOMES: [&str; 5] = ["found", "not_found", "failed", "deferred", "skipped"];

/// What the retry budget refuses, as the metric's `kind` label spells them.
pub const BUDGET_KINDS: [&str; 2] = ["retry", "lookup"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The operations the adaptive throttle keeps apart, as the metrics' `operation` label spells them.
pub const THROTTLE_OPERATIONS: [&str; 2] = ["create_user", "list_users"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: Family<MethodLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_seconds: Histogram,
    upstream_retries: Counter,
    upstream_in_flight: Gauge,
    upstream_waiting: Gauge,
    reconciliations: Family<ReconciliationLabels, Counter>,
    replays: Counter,
    journal_damaged: Counter,
    gateway_errors: Family<ReasonLabels, Counter>,
    budget_refusals: Family<KindLabels, Counter>,
    budget_balance: Gauge<f64, AtomicU64>,
    throttle_refusals: Family<OperationLabels, Counter>,
    throttle_refusing: Family<OperationLabels, Gauge<f64, AtomicU64>>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let started = Family::default();
        let handled = Family::default();
        let handling = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let in_flight = Gauge::default();
        let upstream_requests = Family::default();
        let upstream_seconds = latency_histogram();
        let upstream_retries = Counter::default();
        let upstream_in_flight = Gauge::default();
        let upstream_waiting = Gauge::default();
        let reconciliations = Family::<ReconciliationLabels, Counter>::default();
        let replays = Counter::default();
        let journal_damaged = Counter::default();
        let gateway_errors = Family::<ReasonLabels, Counter>::default();
        for reason in crate::error::GATEWAY_REASONS {
            let _ = gateway_errors.get_or_create(&ReasonLabels { reason });
        }
        let budget_refusals = Family::<KindLabels, Counter>::default();
        for kind in BUDGET_KINDS {
            let _ = budget_refusals.get_or_create(&KindLabels { kind });
        }
        let budget_balance = Gauge::<f64, AtomicU64>::default();
        let throttle_refusals = Family::<OperationLabels, Counter>::default();
        let throttle_refusing = Family::<OperationLabels, Gauge<f64, AtomicU64>>::default();
        for operation in THROTTLE_OPERATIONS {
            let _ = throttle_refusals.get_or_create(&OperationLabels { operation });
            let _ = throttle_refusing.get_or_create(&OperationLabels { operation });
        }
        for outcome in RECONCILIATION_OUTCOMES {
            // Exported from the start at 0, so rates and alerts see every series.
            let _ = reconciliations.get_or_create(&ReconciliationLabels { outcome });
        }
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            handling.clone(),
        );
        registry.register(
            "grpc_server_in_flight",
            "RPCs being handled now.",
            in_flight.clone(),
        );
        registry.register(
            "chime_upstream_requests",
            "Upstream CreateUser attempts, by HTTP status (\"none\" when no response came).",
            upstream_requests.clone(),
        );
        registry.register(
            "chime_upstream_request_seconds",
            "Latency of upstream CreateUser attempts, in seconds.",
            upstream_seconds.clone(),
        );
        registry.register(
            "chime_upstream_retries",
            "Upstream attempts that were retries.",
            upstream_retries.clone(),
        );
        registry.register(
            "chime_upstream_in_flight",
            "Upstream attempts in flight now.",
            upstream_in_flight.clone(),
        );
        registry.register(
            "chime_upstream_waiting",
            "Calls waiting now for one of the --upstream-max-connections upstream connections.",
            upstream_waiting.clone(),
        );
        registry.register(
            "chime_gateway_reconciliations",
            "Lookups (ListUsers by email) of creates whose outcome was unknown, by outcome.",
            reconciliations.clone(),
        );
        registry.register(
            "chime_gateway_replays",
            "Calls answered with the kept or in-flight answer of an earlier call with the same request_id.",
            replays.clone(),
        );
        registry.register(
            "chime_gateway_journal_damaged_records",
            "Records of the --state-dir journal skipped at start because they were torn or damaged.",
            journal_damaged.clone(),
        );
        registry.register(
            "chime_gateway_errors",
            "Calls answered with an error the gateway originated (domain chime-gateway), by ErrorInfo reason.",
            gateway_errors.clone(),
        );
        registry.register(
            "chime_gateway_retry_budget_refusals",
            "Retries and lookups the retry budget refused, by kind (retry, lookup).",
            budget_refusals.clone(),
        );
        registry.register(
            "chime_gateway_retry_budget_balance",
            "Requests the retry budget holds for retries and lookups (0 also when the budget is off).",
            budget_balance.clone(),
        );
        registry.register(
            "chime_gateway_throttle_refusals",
            "Upstream requests the adaptive throttle refused after Chime's 429s, by operation.",
            throttle_refusals.clone(),
        );
        registry.register(
            "chime_gateway_throttle_refusal_probability",
            "The share of requests the adaptive throttle refuses now, by operation (0: none).",
            throttle_refusing.clone(),
        );
        Self {
            registry,
            started,
            handled,
            handling,
            in_flight,
            upstream_requests,
            upstream_seconds,
            upstream_retries,
            upstream_in_flight,
            upstream_waiting,
            reconciliations,
            replays,
            journal_damaged,
            gateway_errors,
            budget_refusals,
            budget_balance,
            throttle_refusals,
            throttle_refusing,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts a call's start; the returned guard counts its end.
    pub fn call_started(self: &Arc<Self>, path: &str) -> CallGuard {
        let (grpc_service, grpc_method) = split_path(path);
        let labels = MethodLabels {
            grpc_type: "unary",
            grpc_service,
            grpc_method,
        };
        self.started.get_or_create(&labels).inc();
        self.in_flight.inc();
        CallGuard {
            metrics: self.clone(),
            labels: Some(labels),
            started: Instant::now(),
        }
    }

    /// Counts a reconciliation lookup by its outcome (one of [`RECONCILIATION_OUTCOMES`]).
    pub fn reconciled(&self, outcome: &'static str) {
        self.reconciliations
            .get_or_create(&ReconciliationLabels { outcome })
            .inc();
    }

    /// Counts a call answered with an error the gateway originated, by its ErrorInfo reason.
    pub fn gateway_error(&self, reason: &'static str) {
        self.gateway_errors.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a retry or lookup the retry budget refused (one of [`BUDGET_KINDS`]).
    pub fn budget_refused(&self, kind: &'static str) {
        self.budget_refusals.get_or_create(&KindLabels { kind }).inc();
    }

    /// Sets the retry budget's balance in requests (`None`: unlimited, exported as 0).
    pub fn budget_balance(&self, requests: Option<f64>) {
        self.budget_balance.set(requests.unwrap_or(0.0));
    }

    /// Counts a request the adaptive throttle refused (`operation`: one of
    /// [`THROTTLE_OPERATIONS`]).
    pub fn throttle_refused(&self, operation: &'static str) {
        self.throttle_refusals
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// Sets the share of `operation`'s requests the throttle refuses now (`None`: off, as 0).
    pub fn throttle_refusing(&self, operation: &'static str, probability: Option<f64>) {
        self.throttle_refusing
            .get_or_create(&OperationLabels { operation })
            .set(probability.unwrap_or(0.0));
    }

    /// Counts the journal records skipped at start as damaged.
    pub fn journal_damaged(&self, records: u64) {
        self.journal_damaged.inc_by(records);
    }

    /// Counts a call answered with an earlier call's answer.
    pub fn replayed(&self) {
        self.replays.inc();
    }

    /// Counts an upstream attempt about to be sent; the guard records its outcome.
    pub fn upstream_started(self: &Arc<Self>, retry: bool) -> UpstreamGuard {
        if retry {
            self.upstream_retries.inc();
        }
        self.upstream_in_flight.inc();
        UpstreamGuard {
            metrics: self.clone(),
            started: Instant::now(),
            done: false,
        }
    }
}

/// Counts a call waiting for an upstream connection for as long as it lives.
#[derive(Debug)]
pub struct WaitingGuard {
    metrics: Arc<Metrics>,
    gauge: fn(&Metrics) -> &Gauge,
}

impl WaitingGuard {
    /// Counts one more call waiting for an upstream connection (`chime_upstream_waiting`).
    pub fn for_connection(metrics: &Arc<Metrics>) -> Self {
        Self::new(metrics, |m| &m.upstream_waiting)
    }

    fn new(metrics: &Arc<Metrics>, gauge: fn(&Metrics) -> &Gauge) -> Self {
        gauge(metrics).inc();
        Self {
            metrics: metrics.clone(),
            gauge,
        }
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        (self.gauge)(&self.metrics).dec();
    }
}

/// The end of one upstream attempt.
#[derive(Debug)]
pub struct UpstreamGuard {
    metrics: Arc<Metrics>,
    started: Instant,
    done: bool,
}

impl UpstreamGuard {
    /// Records the attempt's HTTP status (`None` when no response came).
    pub fn finish(mut self, http_status: Option<u16>) {
        self.record(http_status);
    }

    fn record(&mut self, http_status: Option<u16>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let http_status = http_status.map_or(Cow::Borrowed("none"), status_label);
        self.metrics
            .upstream_requests
            .get_or_create(&UpstreamLabels { http_status })
            .inc();
        self.metrics
            .upstream_seconds
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics.upstream_in_flight.dec();
    }
}

impl Drop for UpstreamGuard {
    fn drop(&mut self) {
        self.record(None);
    }
}

fn status_label(status: u16) -> Name {
    match status {
        201 => Cow::Borrowed("201"),
        400 => Cow::Borrowed("400"),
        403 => Cow::Borrowed("403"),
        404 => Cow::Borrowed("404"),
        409 => Cow::Borrowed("409"),
        429 => Cow::Borrowed("429"),
        500 => Cow::Borrowed("500"),
        503 => Cow::Borrowed("503"),
        other => Cow::Owned(other.to_string()),
    }
}

/// `/chime.v1.ChimeService/CreateUser` -> (`chime.v1.ChimeService`, `CreateUser`), without
/// allocating for the API's own method.
fn split_path(path: &str) -> (Name, Name) {
    match path {
        "/chime.v1.ChimeService/CreateUser" => (
            Cow::Borrowed("chime.v1.ChimeService"),
            Cow::Borrowed("CreateUser"),
        ),
        "/grpc.health.v1.Health/Check" => (Cow::Borrowed("grpc.health.v1.Health"), Cow::Borrowed("Check")),
        other => {
            let trimmed = other.trim_start_matches('/');
            let (service, method) = trimmed.split_once('/').unwrap_or((trimmed, "unknown"));
            (Cow::Owned(service.to_owned()), Cow::Owned(method.to_owned()))
        }
    }
}

/// The end of one call: recorded once, with its gRPC code; a call dropped unfinished is `Canceled`.
#[derive(Debug)]
pub struct CallGuard {
    metrics: Arc<Metrics>,
    labels: Option<MethodLabels>,
    started: Instant,
}

impl CallGuard {
    /// Records the call's end with its code.
    pub fn finish(&mut self, code: Code) {
        let Some(labels) = self.labels.take() else {
            return;
        };
        let elapsed: Duration = self.started.elapsed();
        self.metrics
            .handling
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        let MethodLabels {
            grpc_type,
            grpc_service,
            grpc_method,
        } = labels;
        let handled = HandledLabels {
            grpc_type,
            grpc_service,
            grpc_method,
            grpc_code: go_code_name(code),
        };
        self.metrics.handled.get_or_create(&handled).inc();
        self.metrics.in_flight.dec();
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The code's name as grpc-go spells it, which go-grpc-prometheus puts in `grpc_code`.
pub fn go_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The code's canonical name (`google.rpc.Code`, as every gRPC runtime's docs spell it), for logs.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The gRPC code in a `grpc-status` header or trailer.
fn code_of(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(value))
}

/// Tower layer counting every gRPC call the server handles.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut guard = self.metrics.call_started(request.uri().path());
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            // Errors come trailers-only: the code is in the headers. Otherwise it is in the trailers.
            let guard = match code_of(response.headers()) {
                Some(code) => {
                    guard.finish(code);
                    None
                }
                None => Some(guard),
            };
            Ok(response.map(|inner| MeteredBody { inner, guard }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call's code when its trailers pass.
    #[derive(Debug)]
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        guard: Option<CallGuard>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Some(mut guard) = this.guard.take()
        {
            guard.finish(code_of(trailers).unwrap_or(Code::Unknown));
        }
        if let Poll::Ready(None) = &polled
            && let Some(mut guard) = this.guard.take()
        {
            guard.finish(Code::Unknown);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_names_match_grpc_go() {
        assert_eq!(go_code_name(Code::Cancelled), "Canceled");
        assert_eq!(go_code_name(Code::AlreadyExists), "AlreadyExists");
    }

    #[test]
    fn canonical_names_are_google_rpc_codes() {
        for n in 0..=16 {
            let code = Code::from_i32(n);
            let upper_snake = crate::error::upper_snake(go_code_name(code)).replace("CANCELED", "CANCELLED");
            assert_eq!(code_name(code), upper_snake, "{n}");
        }
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[test]
    fn a_finished_call_is_counted_once_with_its_code() {
        let m = Arc::new(Metrics::default());
        let mut g = m.call_started("/chime.v1.ChimeService/CreateUser");
        g.finish(Code::AlreadyExists);
        drop(g);
        let text = m.encode();
        assert!(text.contains(
            "grpc_server_started_total{grpc_type=\"unary\",grpc_service=\"chime.v1.ChimeService\",grpc_method=\"CreateUser\"} 1"
        ), "{text}");
        assert!(text.contains("grpc_code=\"AlreadyExists\"} 1"), "{text}");
        assert!(!text.contains("Canceled"), "{text}");
        assert!(text.contains("grpc_server_handling_seconds_count{"), "{text}");
        assert!(text.contains("grpc_server_in_flight 0"), "{text}");
    }

    #[test]
    fn a_dropped_call_counts_as_canceled() {
        let m = Arc::new(Metrics::default());
        drop(m.call_started("/x.Y/Z"));
        assert!(
            m.encode()
                .contains("grpc_service=\"x.Y\",grpc_method=\"Z\",grpc_code=\"Canceled\"} 1")
        );
    }

    #[test]
    fn gateway_errors_reconciliations_and_replays_are_exported_from_the_start_and_counted() {
        let m = Metrics::default();
        let text = m.encode();
        for outcome in RECONCILIATION_OUTCOMES {
            let line = format!("chime_gateway_reconciliations_total{{outcome=\"{outcome}\"}} 0");
            assert!(text.contains(&line), "{text}");
        }
        assert!(text.contains("chime_gateway_replays_total 0"), "{text}");
        for reason in crate::error::GATEWAY_REASONS {
            let line = format!("chime_gateway_errors_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{text}");
        }
        m.gateway_error("OVERLOADED");
        assert!(
            m.encode()
                .contains("chime_gateway_errors_total{reason=\"OVERLOADED\"} 1")
        );
        m.reconciled("found");
        m.reconciled("found");
        m.reconciled("failed");
        m.replayed();
        let text = m.encode();
        assert!(
            text.contains("chime_gateway_reconciliations_total{outcome=\"found\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("chime_gateway_reconciliations_total{outcome=\"failed\"} 1"),
            "{text}"
        );
        assert!(text.contains("chime_gateway_replays_total 1"), "{text}");
    }

    #[test]
    fn upstream_attempts_are_counted_by_status() {
        let m = Arc::new(Metrics::default());
        m.upstream_started(false).finish(Some(201));
        m.upstream_started(true).finish(Some(429));
        drop(m.upstream_started(true));
        let text = m.encode();
        assert!(
            text.contains("chime_upstream_requests_total{http_status=\"201\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chime_upstream_requests_total{http_status=\"429\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chime_upstream_requests_total{http_status=\"none\"} 1"),
            "{text}"
        );
        assert!(text.contains("chime_upstream_retries_total 2"), "{text}");
        assert!(text.contains("chime_upstream_request_seconds_count 3"), "{text}");
    }

    #[test]
    fn the_retry_budget_and_the_throttle_are_exported_from_the_start_and_counted() {
        let m = Arc::new(Metrics::default());
        let text = m.encode();
        for kind in BUDGET_KINDS {
            let line = format!("chime_gateway_retry_budget_refusals_total{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&line), "{text}");
        }
        assert!(text.contains("chime_gateway_retry_budget_balance 0.0"), "{text}");
        for operation in THROTTLE_OPERATIONS {
            for line in [
                format!("chime_gateway_throttle_refusals_total{{operation=\"{operation}\"}} 0"),
                format!("chime_gateway_throttle_refusal_probability{{operation=\"{operation}\"}} 0.0"),
            ] {
                assert!(text.contains(&line), "{line}: {text}");
            }
        }
        m.budget_refused("lookup");
        m.budget_balance(Some(1.5));
        m.throttle_refused("create_user");
        m.throttle_refusing("list_users", Some(0.25));
        let text = m.encode();
        for line in [
            "chime_gateway_retry_budget_refusals_total{kind=\"lookup\"} 1",
            "chime_gateway_retry_budget_refusals_total{kind=\"retry\"} 0",
            "chime_gateway_retry_budget_balance 1.5",
            "chime_gateway_throttle_refusals_total{operation=\"create_user\"} 1",
            "chime_gateway_throttle_refusals_total{operation=\"list_users\"} 0",
            "chime_gateway_throttle_refusal_probability{operation=\"list_users\"} 0.25",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        m.throttle_refusing("list_users", None);
        let text = m.encode();
        let line = "chime_gateway_throttle_refusal_probability{operation=\"list_users\"} 0.0";
        assert!(text.contains(line), "{text}");
    }
}
