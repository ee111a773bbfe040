//! What the call's metadata says: its deadline, and whether it retries an earlier call.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// Request metadata a caller sets (to 1 or more) on a retry of a call with the same request id,
/// so that a gateway that never saw the first call still settles a conflict by a lookup.
pub const PREVIOUS_ATTEMPTS_KEY: &str = "x-chime-gateway-previous-attempts";
/// gRPC's own header for the same, set by the client library's retry policy.
pub const GRPC_PREVIOUS_ATTEMPTS_KEY: &str = "grpc-previous-rpc-attempts";

/// Whether the caller says this call retries an earlier one: gRPC's own
/// `grpc-previous-rpc-attempts` (set by the retry policies of grpc-go and grpc-java), or
/// [`PREVIOUS_ATTEMPTS_KEY`] for libraries that do not let a caller set `grpc-` headers.
pub fn declared_retry(metadata: &MetadataMap) -> bool {
    [GRPC_PREVIOUS_ATTEMPTS_KEY, PREVIOUS_ATTEMPTS_KEY]
        .iter()
        .any(|key| {
            metadata
                .get(*key)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok())
                .is_some_and(|n| n >= 1)
        })
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
