//! What a call answers with, and what a request id keeps of it.

use crate::{
    chime::{Created, Found},
    error::{self, CallError, ErrorResponse, UpstreamError},
    idempotency::{Ending, Keep},
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

/// A kept answer as the ledger holds it: the user's response encoded (one allocation instead of
/// a dozen strings), or the refusal.
#[derive(Debug)]
pub enum Stored {
    /// [`Success`], its response encoded.
    User {
        response: Box<[u8]>,
        request_id: Option<Box<str>>,
        reconciled: bool,
    },
    /// The refusal, as it was.
    Refused(Refused),
}

impl Keep for Kept {
    type Stored = Stored;

    fn store(&self) -> Stored {
        match self {
            Ok(s) => Stored::User {
                response: prost::Message::encode_to_vec(&s.response).into_boxed_slice(),
                request_id: s.request_id.as_deref().map(Box::from),
                reconciled: s.reconciled,
            },
            Err(refused) => Stored::Refused(refused.clone()),
        }
    }

    fn replay(stored: &Stored) -> Self {
        match stored {
            Stored::User {
                response,
                request_id,
                reconciled,
            } => Ok(Success {
                response: prost::Message::decode(&response[..]).expect("encoded by `store`"),
                request_id: request_id.as_deref().map(String::from),
                reconciled: *reconciled,
            }),
            Stored::Refused(refused) => Err(refused.clone()),
        }
    }

    fn footprint(stored: &Stored) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let size = std::mem::size_of::<Stored>();
        match stored {
            Stored::User {
                response, request_id, ..
            } => size + response.len() + request_id.as_deref().map_or(0, str::len),
            Stored::Refused(r) => {
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
