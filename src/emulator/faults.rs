//! Scripted faults: what the next CreateUser requests meet instead of (or before) normal service.
//!
//! Plain data, serializable so the standalone emulator can take them over its admin API.

use serde::{Deserialize, Serialize};

/// One scripted fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with an error status, shaped like AWS's.
    Error {
        /// The HTTP status.
        status: u16,
        /// The AWS error type, e.g. `ThrottledClientException`.
        #[serde(default)]
        error_type: Option<String>,
        /// Where the error type is sent.
        #[serde(default)]
        type_in: TypeLocation,
        /// A `Retry-After` header, in seconds.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Wait this many milliseconds, then serve the request as usual.
    Latency {
        /// The delay in milliseconds.
        millis: u64,
    },
    /// Reset the TCP connection (RST) after the request has been read, without answering.
    Reset,
    /// Answer 201 with a body that is not a CreateUser response.
    MalformedBody,
}

/// Where a scripted error's type travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeLocation {
    /// `x-amzn-ErrorType`, as AWS sends it.
    #[default]
    Header,
    /// The body's `__type` only.
    Body,
    /// Nowhere: only the status tells.
    Nowhere,
}

impl Fault {
    /// An AWS-shaped error with its type in the header.
    pub fn error(status: u16, error_type: &str) -> Self {
        Fault::Error {
            status,
            error_type: Some(error_type.to_owned()),
            type_in: TypeLocation::Header,
            retry_after: None,
        }
    }
}
