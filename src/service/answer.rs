//! What a call answers with, and what a request id keeps of it.

use crate::{
    chime::{Created, Found},
    error::{self, CallError, ErrorResponse, UpstreamError},
    idempotency::{Ending, Footprint},
    pb::chime::v1::CreateUserResponse,
    translate,
};

use super::{Attempted, Failed};

/// A user to answer with.
#[derive(Debug, Clone)]
pub struct Success {
    /// The response message.
    pub response: CreateUserResponse,
    /// The upstream's `x-amzn-RequestId` of the answer that carried the user.
    pub request_id: Option<String>,
    /// The user was found by a lookup after an unknown outcome, not in a create's answer.
    pub reconciled: bool,
}

impl Success {
    pub(super) fn created(created: Created) -> Self {
        Self {
            response: translate::from_output(created.output),
            request_id: created.request_id,
            reconciled: false,
        }
    }

    pub(super) fn reconciled(found: Found) -> Self {
        Self {
            response: CreateUserResponse {
                user: Some(translate::user(found.user)),
            },
            request_id: found.request_id,
            reconciled: true,
        }
    }
}

/// An upstream refusal no retry can change, kept for a request id's repeats.
#[derive(Debug, Clone)]
pub struct Refused {
    pub(super) response: ErrorResponse,
    pub(super) attempts: u32,
}

/// What a request id keeps: the user, or the final refusal.
pub type Kept = Result<Success, Refused>;

impl Footprint for Kept {
    fn footprint(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let size = std::mem::size_of::<Self>();
        match self {
            Ok(s) => size + prost::Message::encoded_len(&s.response) * 2 + text(&s.request_id),
            Err(r) => {
                let e = &r.response;
                size + text(&e.error_type) + text(&e.code) + text(&e.message) + text(&e.request_id)
            }
        }
    }
}

impl Refused {
    pub(super) fn into_error(self) -> CallError {
        Failed::new(UpstreamError::Response(self.response), self.attempts, None).into_error(false)
    }
}

/// What a request id keeps of a call: its user, or a refusal no retry can change.
pub(super) fn ending(attempted: Attempted) -> Ending<Kept, CallError> {
    match attempted.result {
        Ok(success) => Ending::Final(Ok(success)),
        Err(CallError::Upstream {
            error: UpstreamError::Response(response),
            attempts,
            reconciliation: None,
            budget_exhausted: false,
        }) if error::is_final(response.status) => Ending::Final(Err(Refused { response, attempts })),
        Err(error) => Ending::Passing {
            error,
            in_doubt: attempted.in_doubt,
        },
    }
}
