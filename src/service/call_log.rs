//! The one log line of a call: never the request's fields, which may be sensitive.

use std::time::Duration;

use super::answer::Answered;
use crate::{
    error::{CallError, Reconciliation, UpstreamError},
    metrics::code_name,
};

/// One line per call; never the request's fields, which may be sensitive.
pub(super) fn log_call(answered: &Answered, latency: Duration) {
    let latency_ms = latency.as_secs_f64() * 1000.0;
    let (attempts, replayed) = (answered.attempts, answered.replayed);
    match &answered.result {
        Ok(success) => tracing::info!(
            method = "CreateUser",
            grpc_code = "OK",
            upstream_status = if success.reconciled { 200 } else { 201 },
            attempts,
            reconciled = success.reconciled,
            replayed,
            latency_ms,
            aws_request_id = success.request_id.as_deref().unwrap_or(""),
            "call finished"
        ),
        Err(error) => {
            let (upstream_status, aws_request_id, reconciliation) = match &**error {
                CallError::Upstream {
                    error: UpstreamError::Response(r),
                    reconciliation,
                    ..
                } => (r.status, r.request_id.as_deref().unwrap_or(""), *reconciliation),
                CallError::Upstream {
                    error:
                        UpstreamError::Unparseable {
                            status, request_id, ..
                        },
                    reconciliation,
                    ..
                } => (*status, request_id.as_deref().unwrap_or(""), *reconciliation),
                CallError::Upstream { reconciliation, .. } => (0, "", *reconciliation),
                _ => (0, "", None),
            };
            tracing::info!(
                method = "CreateUser",
                grpc_code = code_name(error.code()),
                upstream_status,
                attempts,
                reconciled = false,
                reconciliation = reconciliation.map_or("", Reconciliation::as_str),
                replayed,
                latency_ms,
                aws_request_id,
                error = %error,
                "call finished"
            );
        }
    }
}
