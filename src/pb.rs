//! Generated protobuf messages and gRPC stubs for `chime.v1`, compiled by `build.rs`.
//!
//! Owns nothing hand-written: edit `proto/chime/v1/chime.proto` instead.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `chime.v1`: the gateway's public API.
pub mod chime {
    /// Version 1 of the API.
    pub mod v1 {
        tonic::include_proto!("chime.v1");
    }
}

/// The encoded `FileDescriptorSet` of `chime.v1` and its imports, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/chime_descriptor.bin"));

/// The gateway's own server of `chime.v1.ChimeService`: the API's messages, except that it answers
/// with a [`crate::codec::Reply`], so that a kept answer goes out as the bytes it was kept as.
pub(crate) mod wire {
    include!(concat!(env!("OUT_DIR"), "/wire/chime.v1.rs"));
}
