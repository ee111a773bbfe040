//! Turns every failure of a call into a `tonic::Status` (docs/design.md §3): one table, one place.
//!
//! [`UpstreamError`] says what was observed on the wire; [`CallError`] is the outcome of a whole
//! call. [`rule`] is the contract's table as one exhaustive match, and [`CallError::to_status`]
//! attaches the `google.rpc` details. Classifies by HTTP status and type, never by message text;
//! never logs.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status, metadata::MetadataValue};
use tonic_types::{ErrorDetails, StatusExt};

use crate::validate::FieldViolation;

/// `ErrorInfo.domain` of errors the upstream answered.
pub const UPSTREAM_DOMAIN: &str = "chime.amazonaws.com";
/// `ErrorInfo.domain` of errors the gateway itself originates.
pub const GATEWAY_DOMAIN: &str = "chime-gateway";
/// The metadata key carrying the upstream's `x-amzn-RequestId`.
pub const REQUEST_ID_KEY: &str = "x-amzn-requestid";
/// `RetryInfo.retry_delay` when the upstream sent no `Retry-After`.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest upstream `Retry-After` taken as given; a longer one is read as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP error response from the upstream, as read off the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The AWS error type (`ConflictException`), from `x-amzn-ErrorType` or the body's `__type`.
    pub error_type: Option<String>,
    /// The Chime error code (`Conflict`), from the body's `Code`.
    pub code: Option<String>,
    /// The upstream's message, returned to the caller as it came.
    pub message: Option<String>,
    /// The upstream's `x-amzn-RequestId`.
    pub request_id: Option<String>,
    /// The upstream's `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
}

/// What went wrong in one upstream attempt.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with an error status.
    #[error("upstream answered HTTP {}", .0.status)]
    Response(ErrorResponse),
    /// A success status whose body is not a CreateUser response.
    #[error("upstream answered HTTP {status} with a body that is not a CreateUser response")]
    Unparseable {
        /// The HTTP status code.
        status: u16,
        /// The upstream's `x-amzn-RequestId`.
        request_id: Option<String>,
        /// Why the body could not be read.
        #[source]
        source: BoxError,
    },
    /// The request never left: connection refused, DNS failure.
    #[error("could not connect to the upstream")]
    NotSent(#[source] BoxError),
    /// The connection failed after the request was sent, so the user may have been created.
    #[error("the upstream connection failed after the request was sent")]
    ConnectionLost(#[source] BoxError),
    /// The attempt took longer than `--upstream-timeout`; the user may have been created.
    #[error("the upstream did not answer in time")]
    AttemptTimeout,
    /// The credential chain produced no credentials.
    #[error("no AWS credentials could be resolved")]
    NoCredentials(#[source] BoxError),
    /// The SDK could not build the request.
    #[error("the upstream request could not be built")]
    Construction(#[source] BoxError),
}

impl UpstreamError {
    /// The HTTP status the upstream answered, when it answered at all.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            UpstreamError::Response(r) => Some(r.status),
            UpstreamError::Unparseable { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// True when an attempt that failed so may still have created the user (docs/design.md §7): the
/// failures that reconciliation settles by looking the user up.
pub fn outcome_unknown(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Response(r) => matches!(r.status, 500 | 502 | 504),
        UpstreamError::ConnectionLost(_) | UpstreamError::AttemptTimeout => true,
        UpstreamError::Unparseable { .. }
        | UpstreamError::NotSent(_)
        | UpstreamError::NoCredentials(_)
        | UpstreamError::Construction(_) => false,
    }
}

/// True for the upstream answers that no retry can change, which a request id keeps (docs/design.md
/// §7): 400, 401, 403, 404, 409, 412, 422.
pub fn is_final(status: u16) -> bool {
    matches!(status, 400 | 401 | 403 | 404 | 409 | 412 | 422)
}

/// What became of the lookup of a create whose outcome was unknown, when it did not find the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciliation {
    /// No such user: the create did not happen, so the caller may safely retry.
    NotFound,
    /// The lookup itself failed (denied, throttled, unreachable, out of time).
    Failed,
    /// Not made now (the retry budget is empty, or the adaptive throttle refused it): the request id
    /// stays in doubt, so the caller's retry with the same id makes it.
    Deferred,
    /// Not made (as for `Deferred`), and the call has no request id to make it later.
    Skipped,
}

impl Reconciliation {
    /// The value of the `reconciliation` ErrorInfo metadata key (and of the metric's label).
    pub fn as_str(self) -> &'static str {
        match self {
            Reconciliation::NotFound => "not_found",
            Reconciliation::Failed => "failed",
            Reconciliation::Deferred => "deferred",
            Reconciliation::Skipped => "skipped",
        }
    }
}

/// `RetryInfo.retry_delay` of a call the retry budget stopped: the default delay, spread over
/// up to twice as long so that callers refused together do not come back together.
pub fn spread_retry_delay() -> Duration {
    use rand::Rng;
    DEFAULT_RETRY_DELAY.mul_f64(1.0 + rand::rng().random::<f64>())
}

/// How one kind of failure is answered: a row of the contract's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The gRPC code returned.
    pub code: Code,
    /// Whether `RetryInfo` is attached (the caller may retry).
    pub retry_info: bool,
    /// Whether the gateway retries it itself: only when the upstream provably did not act.
    pub retryable: bool,
}

const fn row(code: Code, retry_info: bool, retryable: bool) -> Rule {
    Rule {
        code,
        retry_info,
        retryable,
    }
}

/// The contract's table (docs/design.md §3) for an upstream failure.
pub fn rule(error: &UpstreamError) -> Rule {
    match error {
        UpstreamError::Response(r) => match r.status {
            400 => row(Code::InvalidArgument, false, false),
            401 => row(Code::Unauthenticated, false, false),
            403 => row(Code::PermissionDenied, false, false),
            404 => row(Code::NotFound, false, false),
            408 => row(Code::DeadlineExceeded, false, false),
            409 => row(Code::AlreadyExists, false, false),
            412 => row(Code::FailedPrecondition, false, false),
            422 => row(Code::InvalidArgument, false, false),
            429 => row(Code::ResourceExhausted, true, true),
            499 => row(Code::Cancelled, false, false),
            500 => row(Code::Internal, false, false),
            501 => row(Code::Unimplemented, false, false),
            502 => row(Code::Unavailable, false, false),
            503 => row(Code::Unavailable, true, true),
            504 => row(Code::DeadlineExceeded, false, false),
            _ => row(Code::Unknown, false, false),
        },
        UpstreamError::Unparseable { .. } => row(Code::Unknown, false, false),
        UpstreamError::NotSent(_) => row(Code::Unavailable, true, true),
        UpstreamError::ConnectionLost(_) => row(Code::Unavailable, false, false),
        UpstreamError::AttemptTimeout => row(Code::DeadlineExceeded, false, false),
        UpstreamError::NoCredentials(_) => row(Code::Unavailable, false, false),
        UpstreamError::Construction(_) => row(Code::Internal, false, false),
    }
}

/// The outcome of a call that did not produce a user.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request broke the model's rules; nothing was sent.
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    /// The last upstream attempt failed.
    #[error("{error}")]
    Upstream {
        /// The last attempt's failure.
        #[source]
        error: UpstreamError,
        /// How many attempts were made.
        attempts: u32,
        /// What the lookup of an unknown outcome found, when one was made and found no user.
        reconciliation: Option<Reconciliation>,
        /// The retry budget refused the retry or lookup that would have come next.
        budget_exhausted: bool,
    },
    #[error(
        "the gateway's adaptive throttle refused this create: Chime has been throttling this \
         account's creates (retry in {retry_after:?})"
    )]
    /// The adaptive throttle (`--adaptive-throttle`) refused the create, a share of them while
    /// Chime answers 429 to this process; nothing was sent.
    RateLimited {
        /// When to come back.
        retry_after: Duration,
    },
    /// The request id was first used for a different request; nothing was sent.
    #[error("the request_id was already used for a different request")]
    RequestIdReused,
    /// The caller's deadline (or `--default-deadline`) passed first.
    #[error("the call's deadline passed after {attempts} upstream attempt(s)")]
    DeadlineExceeded {
        /// How many attempts were started.
        attempts: u32,
    },
    /// The deadline passed while the call waited for one of the `--upstream-max-connections`
    /// upstream connections, all busy with other calls.
    #[error(
        "the call's deadline passed while every upstream connection was busy ({attempts} attempt(s) made)"
    )]
    UpstreamBusy {
        /// How many attempts were started before this wait.
        attempts: u32,
    },
    /// `--max-concurrency` calls are already in flight.
    #[error("the gateway is at its concurrency limit")]
    Overloaded,
    /// The gateway is shutting down and its grace period is over.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl CallError {
    /// The gRPC code, for logs and metrics.
    pub fn code(&self) -> Code {
        match self {
            CallError::Invalid(_) | CallError::RequestIdReused => Code::InvalidArgument,
            CallError::Upstream {
                error,
                reconciliation,
                ..
            } => upstream_code(error, *reconciliation),
            CallError::RateLimited { .. } => Code::ResourceExhausted,
            CallError::DeadlineExceeded { .. } | CallError::UpstreamBusy { .. } => Code::DeadlineExceeded,
            CallError::Overloaded | CallError::ShuttingDown => Code::Unavailable,
        }
    }

    /// `ErrorInfo.reason` when the gateway originated the error (domain [`GATEWAY_DOMAIN`]), for
    /// the metric of such errors; `None` for an error the upstream answered.
    pub fn gateway_reason(&self) -> Option<&'static str> {
        Some(match self {
            CallError::Invalid(_) => "INVALID_REQUEST",
            CallError::RequestIdReused => "REQUEST_ID_REUSED",
            CallError::DeadlineExceeded { .. } => "DEADLINE_EXCEEDED",
            CallError::UpstreamBusy { .. } => "UPSTREAM_BUSY",
            CallError::RateLimited { .. } => "ADAPTIVE_THROTTLE",
            CallError::Overloaded => "OVERLOADED",
            CallError::ShuttingDown => "SHUTTING_DOWN",
            CallError::Upstream {
                error: UpstreamError::Response(_),
                ..
            } => return None,
            CallError::Upstream { error, .. } => gateway_reason(error),
        })
    }

    /// The status returned to the caller, with its `google.rpc` details and metadata.
    pub fn to_status(&self) -> Status {
        let mut details = ErrorDetails::new();
        let message = match self {
            CallError::Invalid(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description.clone());
                }
                details.set_error_info("INVALID_REQUEST", GATEWAY_DOMAIN, HashMap::new());
                let fields: Vec<&str> = violations.iter().map(|v| v.field).collect();
                format!("invalid CreateUserRequest: {}", fields.join(", "))
            }
            CallError::Upstream {
                error,
                attempts,
                reconciliation,
                budget_exhausted,
            } => {
                return upstream_status(error, *attempts, *reconciliation, *budget_exhausted);
            }
            CallError::RateLimited { retry_after } => {
                let meta = HashMap::from([("operation".to_owned(), "create_user".to_owned())]);
                details.set_error_info("ADAPTIVE_THROTTLE", GATEWAY_DOMAIN, meta);
                details.set_retry_info(Some(*retry_after));
                self.to_string()
            }
            CallError::RequestIdReused => {
                details.add_bad_request_violation(
                    "request_id",
                    "a request_id names one request: use a new one for a different request",
                );
                details.set_error_info("REQUEST_ID_REUSED", GATEWAY_DOMAIN, HashMap::new());
                self.to_string()
            }
            CallError::DeadlineExceeded { attempts } => {
                let meta = HashMap::from([("attempts".to_owned(), attempts.to_string())]);
                details.set_error_info("DEADLINE_EXCEEDED", GATEWAY_DOMAIN, meta);
                self.to_string()
            }
            CallError::UpstreamBusy { attempts } => {
                let meta = HashMap::from([("attempts".to_owned(), attempts.to_string())]);
                details.set_error_info("UPSTREAM_BUSY", GATEWAY_DOMAIN, meta);
                self.to_string()
            }
            CallError::Overloaded => {
                details.set_error_info("OVERLOADED", GATEWAY_DOMAIN, HashMap::new());
                details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
                self.to_string()
            }
            CallError::ShuttingDown => {
                details.set_error_info("SHUTTING_DOWN", GATEWAY_DOMAIN, HashMap::new());
                details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
                self.to_string()
            }
        };
        Status::with_error_details(self.code(), message, details)
    }
}

/// The answer to a request or response over `--max-message-size` (tonic enforces the limit;
/// `message_size` puts this status in place of tonic's OUT_OF_RANGE).
pub fn message_too_large(limit: usize) -> Status {
    let mut details = ErrorDetails::new();
    let meta = HashMap::from([("max_message_size".to_owned(), limit.to_string())]);
    details.set_error_info("MESSAGE_TOO_LARGE", GATEWAY_DOMAIN, meta);
    let message = format!("the message is larger than the gateway's limit of {limit} bytes");
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// Whether `error` is a conflict that a lookup was owed but did not settle (it failed, or was
/// put off): the user that holds the email may be the caller's own, created by an earlier attempt
/// whose answer was lost, so the caller must not hear ALREADY_EXISTS (docs/design.md §7).
fn unsettled_conflict(error: &UpstreamError, reconciliation: Option<Reconciliation>) -> bool {
    error.http_status() == Some(409)
        && matches!(
            reconciliation,
            Some(Reconciliation::Failed | Reconciliation::Deferred | Reconciliation::Skipped)
        )
}

/// The code of an upstream failure: the table's, except for an unsettled conflict, which is
/// ABORTED (retry the call with the same request id) rather than ALREADY_EXISTS.
fn upstream_code(error: &UpstreamError, reconciliation: Option<Reconciliation>) -> Code {
    if unsettled_conflict(error, reconciliation) {
        Code::Aborted
    } else {
        rule(error).code
    }
}

fn upstream_status(
    error: &UpstreamError,
    attempts: u32,
    reconciliation: Option<Reconciliation>,
    budget_exhausted: bool,
) -> Status {
    let rule = rule(error);
    let mut details = ErrorDetails::new();
    let mut meta = HashMap::from([("attempts".to_owned(), attempts.to_string())]);
    if let Some(r) = reconciliation {
        meta.insert("reconciliation".to_owned(), r.as_str().to_owned());
    }
    if budget_exhausted {
        meta.insert("retry_budget".to_owned(), "exhausted".to_owned());
    }
    let (message, request_id, retry_after) = match error {
        UpstreamError::Response(r) => {
            meta.insert("http_status".to_owned(), r.status.to_string());
            if let Some(t) = &r.error_type {
                meta.insert("aws_error_type".to_owned(), t.clone());
            }
            details.set_error_info(upstream_reason(r), UPSTREAM_DOMAIN, meta);
            let kind = r.error_type.as_deref().unwrap_or("error");
            let text = r.message.as_deref().unwrap_or("no message");
            let message = format!("Chime answered HTTP {} {kind}: {text}", r.status);
            (message, r.request_id.as_deref(), r.retry_after)
        }
        UpstreamError::Unparseable {
            status, request_id, ..
        } => {
            meta.insert("http_status".to_owned(), status.to_string());
            details.set_error_info("UPSTREAM_BAD_RESPONSE", GATEWAY_DOMAIN, meta);
            (error.to_string(), request_id.as_deref(), None)
        }
        other => {
            details.set_error_info(gateway_reason(other), GATEWAY_DOMAIN, meta);
            (other.to_string(), None, None)
        }
    };
    // A stopped call, a deferred lookup or an unsettled conflict is for the caller to retry:
    // later, and spread out.
    let stopped = budget_exhausted
        || reconciliation == Some(Reconciliation::Deferred)
        || unsettled_conflict(error, reconciliation);
    if rule.retry_info || stopped {
        let delay = retry_after.unwrap_or_else(|| {
            if stopped {
                spread_retry_delay()
            } else {
                DEFAULT_RETRY_DELAY
            }
        });
        details.set_retry_info(Some(delay));
    }
    if let Some(id) = request_id {
        details.set_request_info(id, "");
    }
    let code = upstream_code(error, reconciliation);
    let mut status = Status::with_error_details(code, message, details);
    if let Some(value) = request_id.and_then(|id| MetadataValue::try_from(id).ok()) {
        status.metadata_mut().insert(REQUEST_ID_KEY, value);
    }
    status
}

/// Every reason [`CallError::gateway_reason`] can give, so the metric exports each from the start.
pub const GATEWAY_REASONS: [&str; 13] = [
    "INVALID_REQUEST",
    "REQUEST_ID_REUSED",
    "DEADLINE_EXCEEDED",
    "UPSTREAM_BUSY",
    "ADAPTIVE_THROTTLE",
    "OVERLOADED",
    "SHUTTING_DOWN",
    "UPSTREAM_BAD_RESPONSE",
    "UPSTREAM_UNREACHABLE",
    "UPSTREAM_CONNECTION_LOST",
    "UPSTREAM_TIMEOUT",
    "NO_CREDENTIALS",
    "REQUEST_NOT_BUILT",
];

fn gateway_reason(error: &UpstreamError) -> &'static str {
    match error {
        UpstreamError::Response(_) => "UPSTREAM_ERROR",
        UpstreamError::Unparseable { .. } => "UPSTREAM_BAD_RESPONSE",
        UpstreamError::NotSent(_) => "UPSTREAM_UNREACHABLE",
        UpstreamError::ConnectionLost(_) => "UPSTREAM_CONNECTION_LOST",
        UpstreamError::AttemptTimeout => "UPSTREAM_TIMEOUT",
        UpstreamError::NoCredentials(_) => "NO_CREDENTIALS",
        UpstreamError::Construction(_) => "REQUEST_NOT_BUILT",
    }
}

/// `ErrorInfo.reason` of an upstream error: the Chime error code in UPPER_SNAKE_CASE.
///
/// The code comes from the body's `Code`, else from the error type, else from the HTTP status;
/// one that does not give a reason of the form `google.rpc.ErrorInfo` requires
/// (`[A-Z][A-Z0-9_]+[A-Z0-9]`, at most 63 characters) is passed over for the next.
pub fn upstream_reason(r: &ErrorResponse) -> String {
    let from_type = r.error_type.as_deref().map(code_of_type);
    [r.code.as_deref(), from_type, code_of_status(r.status)]
        .into_iter()
        .flatten()
        .map(upper_snake)
        .find(|reason| is_reason(reason))
        .unwrap_or_else(|| format!("HTTP_{}", r.status))
}

/// Whether `reason` has the form `google.rpc.ErrorInfo.reason` requires.
pub fn is_reason(reason: &str) -> bool {
    let bytes = reason.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes[0].is_ascii_uppercase()
        && bytes
            .last()
            .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
}

fn code_of_type(error_type: &str) -> &str {
    match error_type {
        "ThrottledClientException" => "Throttled",
        "UnauthorizedClientException" => "Unauthorized",
        other => other.strip_suffix("Exception").unwrap_or(other),
    }
}

fn code_of_status(status: u16) -> Option<&'static str> {
    match status {
        400 => Some("BadRequest"),
        401 => Some("Unauthorized"),
        403 => Some("Forbidden"),
        404 => Some("NotFound"),
        409 => Some("Conflict"),
        412 => Some("PreconditionFailed"),
        422 => Some("Unprocessable"),
        429 => Some("Throttled"),
        500 => Some("ServiceFailure"),
        503 => Some("ServiceUnavailable"),
        _ => None,
    }
}

/// `ServiceUnavailable` -> `SERVICE_UNAVAILABLE`.
pub fn upper_snake(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1);
        let boundary = c.is_uppercase()
            && prev.is_some_and(|p| {
                p.is_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_uppercase() && next.is_some_and(|n| n.is_lowercase()))
            });
        if boundary {
            out.push('_');
        }
        out.extend(c.to_uppercase());
    }
    out
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
