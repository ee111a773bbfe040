//! What a call answers with, and what a request id keeps of it.

use std::{sync::Arc, time::Duration};

use crate::{
    chime::{Created, Found},
    codec::Reply,
    error::{self, CallError, ErrorResponse, Reconciliation, UpstreamError},
    idempotency::{Ending, Keep, Progress},
    pb::chime::v1::CreateUserResponse,
    translate,
};

/// One call's answer, as the log line, the metrics and the response need it.
pub(super) struct Answered {
    pub(super) result: Result<Success, Arc<CallError>>,
    /// Upstream attempts this call made.
    pub(super) attempts: u32,
    /// The answer is an earlier (or concurrent) call's, for the same request id.
    pub(super) replayed: bool,
}

/// A failed attempt, as the call's error if nothing follows it.
pub(super) struct Failed {
    error: UpstreamError,
    attempts: u32,
    reconciliation: Option<Reconciliation>,
}

impl Failed {
    pub(super) fn new(error: UpstreamError, attempts: u32, reconciliation: Option<Reconciliation>) -> Self {
        Self {
            error,
            attempts,
            reconciliation,
        }
    }

    pub(super) fn into_error(self, budget_exhausted: bool) -> CallError {
        CallError::Upstream {
            error: self.error,
            attempts: self.attempts,
            reconciliation: self.reconciliation,
            budget_exhausted,
        }
    }
}

/// A user to answer with.
#[derive(Debug, Clone)]
pub struct Success {
    /// The response message, or its encoding once it is kept for a request id.
    pub response: Reply,
    /// The upstream's `x-amzn-RequestId` of the answer that carried the user.
    pub request_id: Option<String>,
    /// The user was found by a lookup after an unknown outcome, not in a create's answer.
    pub reconciled: bool,
}

impl Success {
    pub(super) fn created(created: Created) -> Self {
        Self {
            response: translate::from_output(created.output).into(),
            request_id: created.request_id,
            reconciled: false,
        }
    }

    /// The same answer with its response encoded, as a request id keeps it (and sends it).
    pub fn encoded(self) -> Self {
        let response = match self.response {
            Reply::Message(message) => Reply::encoded(&message),
            encoded @ Reply::Encoded(_) => encoded,
        };
        Self { response, ..self }
    }

    pub(super) fn reconciled(found: Found) -> Self {
        Self {
            response: CreateUserResponse {
                user: Some(translate::user(found.user)),
            }
            .into(),
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

/// The first byte of a kept answer: which answer follows.
const USER: u8 = 0;
const RECONCILED_USER: u8 = 1;
const REFUSAL: u8 = 2;

/// Appends `text`: its length plus one (0 for none), 4 bytes little endian, then the text.
fn put_text(into: &mut Vec<u8>, text: Option<&str>) {
    let length = text.map_or(0, |t| u32::try_from(t.len()).expect("a text under 4 GiB") + 1);
    into.extend_from_slice(&length.to_le_bytes());
    into.extend_from_slice(text.unwrap_or_default().as_bytes());
}

/// Takes the next `N` bytes off `rest`.
fn take<const N: usize>(rest: &mut &[u8]) -> [u8; N] {
    let (taken, after) = rest.split_first_chunk::<N>().expect("written by `store`");
    *rest = after;
    *taken
}

/// Takes a text that [`put_text`] wrote off `rest`.
fn take_text(rest: &mut &[u8]) -> Option<String> {
    let length = u32::from_le_bytes(take(rest)).checked_sub(1)?;
    let (text, after) = rest.split_at(length as usize);
    *rest = after;
    Some(String::from_utf8(text.to_vec()).expect("written from a `String`"))
}

/// A user is kept as a kind byte, the encoded response's length (4 bytes, little endian), the
/// response's bytes (those it is sent as: see [`Success::encoded`]), and the upstream request
/// id. A refusal as a kind byte, the status, the attempts, its four texts and the `Retry-After`
/// (a presence byte, then seconds and nanoseconds).
impl Keep for Kept {
    fn store(&self, into: &mut Vec<u8>) {
        match self {
            Ok(success) => {
                let response = prost::Message::encoded_len(&success.response);
                let request_id = success.request_id.as_deref();
                into.reserve(9 + response + request_id.map_or(0, str::len));
                into.push(if success.reconciled { RECONCILED_USER } else { USER });
                into.extend_from_slice(
                    &u32::try_from(response)
                        .expect("a response under 4 GiB")
                        .to_le_bytes(),
                );
                prost::Message::encode_raw(&success.response, into);
                put_text(into, request_id);
            }
            Err(Refused { response, attempts }) => {
                into.push(REFUSAL);
                into.extend_from_slice(&response.status.to_le_bytes());
                into.extend_from_slice(&attempts.to_le_bytes());
                for text in [
                    &response.error_type,
                    &response.code,
                    &response.message,
                    &response.request_id,
                ] {
                    put_text(into, text.as_deref());
                }
                into.push(u8::from(response.retry_after.is_some()));
                let retry_after = response.retry_after.unwrap_or_default();
                into.extend_from_slice(&retry_after.as_secs().to_le_bytes());
                into.extend_from_slice(&retry_after.subsec_nanos().to_le_bytes());
            }
        }
    }

    fn replay(stored: &[u8]) -> Self {
        let (&kind, mut rest) = stored.split_first().expect("written by `store`");
        if kind != REFUSAL {
            let length = u32::from_le_bytes(take(&mut rest));
            let (response, mut rest) = rest.split_at(length as usize);
            return Ok(Success {
                response: Reply::Encoded(response.to_vec()),
                request_id: take_text(&mut rest),
                reconciled: kind == RECONCILED_USER,
            });
        }
        let status = u16::from_le_bytes(take(&mut rest));
        let attempts = u32::from_le_bytes(take(&mut rest));
        let [error_type, code, message, request_id] = [(); 4].map(|()| take_text(&mut rest));
        let [has_retry_after] = take(&mut rest);
        let retry_after = Duration::new(
            u64::from_le_bytes(take(&mut rest)),
            u32::from_le_bytes(take(&mut rest)),
        );
        Err(Refused {
            response: ErrorResponse {
                status,
                error_type,
                code,
                message,
                request_id,
                retry_after: (has_retry_after != 0).then_some(retry_after),
            },
            attempts,
        })
    }
}

impl Refused {
    pub(super) fn into_error(self) -> CallError {
        Failed::new(UpstreamError::Response(self.response), self.attempts, None).into_error(false)
    }
}

/// What a request id keeps of a call: its user, or a refusal no retry can change and that is the
/// caller's own outcome. Nothing is kept while an attempt's outcome is unsettled, nor a conflict
/// while the id was in doubt before the call: it may be the caller's own user.
pub(super) fn ending(result: Result<Success, CallError>, progress: Progress<'_>) -> Ending<Kept, CallError> {
    match result {
        // Encoded once: kept as these bytes, and sent as them.
        Ok(success) => Ending::Final(Ok(success.encoded())),
        Err(CallError::Upstream {
            error: UpstreamError::Response(response),
            attempts,
            reconciliation: None,
            budget_exhausted: false,
        }) if error::is_final(response.status)
            && !progress.unsettled()
            && !(response.status == 409 && progress.before()) =>
        {
            Ending::Final(Err(Refused { response, attempts }))
        }
        Err(error) => Ending::Transient(error),
    }
}
