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

/// A kept answer as the ledger holds it: the user in one allocation (instead of a dozen
/// strings), or the refusal.
#[derive(Debug)]
pub enum Stored {
    /// [`Success`], packed by [`pack`].
    User(Box<[u8]>),
    /// The refusal, as it was.
    Refused(Box<Refused>),
}

/// [`Stored::User`]'s flag byte: the user was reconciled.
const RECONCILED: u8 = 1;
/// [`Stored::User`]'s flag byte: an upstream request id follows the response.
const HAS_REQUEST_ID: u8 = 2;

/// Packs `success` into one buffer: a flag byte, the encoded response's length (4 bytes, little
/// endian), the response, then the upstream request id.
fn pack(success: &Success) -> Box<[u8]> {
    let response = prost::Message::encoded_len(&success.response);
    let request_id = success.request_id.as_deref();
    let mut flags = 0;
    if success.reconciled {
        flags |= RECONCILED;
    }
    if request_id.is_some() {
        flags |= HAS_REQUEST_ID;
    }
    let mut packed = Vec::with_capacity(5 + response + request_id.map_or(0, str::len));
    packed.push(flags);
    packed.extend_from_slice(
        &u32::try_from(response)
            .expect("a response under 4 GiB")
            .to_le_bytes(),
    );
    prost::Message::encode_raw(&success.response, &mut packed);
    packed.extend_from_slice(request_id.unwrap_or_default().as_bytes());
    packed.into_boxed_slice()
}

/// The [`Success`] that [`pack`] packed.
fn unpack(packed: &[u8]) -> Success {
    let (&flags, rest) = packed.split_first().expect("packed by `pack`");
    let (length, rest) = rest.split_first_chunk::<4>().expect("packed by `pack`");
    let (response, request_id) = rest.split_at(u32::from_le_bytes(*length) as usize);
    Success {
        response: prost::Message::decode(response).expect("packed by `pack`"),
        request_id: (flags & HAS_REQUEST_ID != 0)
            .then(|| String::from_utf8(request_id.to_vec()).expect("packed from a `String`")),
        reconciled: flags & RECONCILED != 0,
    }
}

impl Keep for Kept {
    type Stored = Stored;

    fn store(&self) -> Stored {
        match self {
            Ok(success) => Stored::User(pack(success)),
            Err(refused) => Stored::Refused(Box::new(refused.clone())),
        }
    }

    fn replay(stored: &Stored) -> Self {
        match stored {
            Stored::User(packed) => Ok(unpack(packed)),
            Stored::Refused(refused) => Err((**refused).clone()),
        }
    }

    fn footprint(stored: &Stored) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let size = std::mem::size_of::<Stored>();
        match stored {
            Stored::User(packed) => size + packed.len(),
            Stored::Refused(r) => {
                let e = &r.response;
                size + std::mem::size_of::<Refused>()
                    + text(&e.error_type)
                    + text(&e.code)
                    + text(&e.message)
                    + text(&e.request_id)
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
