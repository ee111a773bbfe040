//! The protobuf codec of `chime.v1`: prost, with buffers sized for this API's messages.
//!
//! tonic's default codec starts every call with 8 KiB encode and decode buffers; CreateUser
//! messages are a few hundred bytes, and a sidecar holding many calls in flight pays for those
//! buffers per call (BENCHMARKS.md). The buffers still grow for a larger message.
//!
//! The gateway's server answers with a [`Reply`]: the message, or the bytes a request id kept it
//! as, sent without encoding it again.

use std::marker::PhantomData;

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut},
    encoding::{DecodeContext, WireType},
};
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

use crate::pb::chime::v1::CreateUserResponse;

/// Initial buffer size per call, in bytes.
const BUFFER_SIZE: usize = 1024;
/// tonic's default: yield to the runtime after this many bytes of a stream.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers; named by `build.rs` as the services' codec.
#[derive(Debug)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}

/// A `CreateUserResponse` as the gateway's server sends it: the message, or the bytes it was
/// already encoded to. An answer a request id keeps is encoded once, kept as those bytes, and
/// sent as them, to the call that made it and to every repeat, instead of being encoded again
/// for the wire (or decoded and encoded again for a repeat).
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "the message is every answer without a request id: boxing it would allocate for each"
)]
pub enum Reply {
    /// The message, encoded as it is sent.
    Message(CreateUserResponse),
    /// A `CreateUserResponse`'s encoding.
    Encoded(Vec<u8>),
}

impl Reply {
    /// `response`, encoded now.
    pub fn encoded(response: &CreateUserResponse) -> Self {
        Self::Encoded(response.encode_to_vec())
    }

    /// The message a reply carries.
    ///
    /// # Panics
    /// If its bytes are not a `CreateUserResponse`: [`Reply::Encoded`] holds only bytes the
    /// gateway encoded from one.
    pub fn into_message(self) -> CreateUserResponse {
        match self {
            Self::Message(message) => message,
            Self::Encoded(bytes) => {
                CreateUserResponse::decode(&bytes[..]).expect("encoded from a CreateUserResponse")
            }
        }
    }
}

impl Default for Reply {
    fn default() -> Self {
        Self::Message(CreateUserResponse::default())
    }
}

impl From<CreateUserResponse> for Reply {
    fn from(message: CreateUserResponse) -> Self {
        Self::Message(message)
    }
}

impl Message for Reply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Message(message) => message.encode_raw(buf),
            Self::Encoded(bytes) => buf.put_slice(bytes),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut message = std::mem::take(self).into_message();
        let merged = message.merge_field(tag, wire_type, buf, ctx);
        *self = Self::Message(message);
        merged
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Message(message) => message.encoded_len(),
            Self::Encoded(bytes) => bytes.len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::chime::v1::User;

    fn response(name: &str) -> CreateUserResponse {
        CreateUserResponse {
            user: Some(User {
                user_id: "u-1".into(),
                display_name: Some(name.into()),
                invited_on: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_reply_is_sent_as_its_message_would_be_in_either_form() {
        let message = response("Ana");
        let wire = message.encode_to_vec();
        for reply in [Reply::from(message.clone()), Reply::encoded(&message)] {
            assert_eq!(reply.encoded_len(), wire.len());
            assert_eq!(reply.encode_to_vec(), wire);
            assert_eq!(reply.clone().into_message(), message);
        }
        assert_eq!(Reply::encoded(&message), Reply::Encoded(wire));
    }

    #[test]
    fn a_reply_decodes_and_merges_as_its_message_does() {
        let (first, second) = (response("Ana"), response("Bo"));
        let decoded = Reply::decode(&first.encode_to_vec()[..]).unwrap();
        assert_eq!(decoded, Reply::Message(first.clone()));
        // Merging into bytes already encoded: what merging into the message gives.
        let mut merged = Reply::encoded(&first);
        merged.merge(&second.encode_to_vec()[..]).unwrap();
        let mut expected = first.clone();
        expected.merge(&second.encode_to_vec()[..]).unwrap();
        assert_eq!(merged.into_message(), expected);
        assert!(Reply::decode(&[0xff, 0xff][..]).is_err());
        let mut cleared = Reply::encoded(&first);
        cleared.clear();
        assert_eq!(cleared, Reply::default());
        assert_eq!(cleared.encoded_len(), 0);
    }
}
