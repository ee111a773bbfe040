//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and keeps the descriptor set for
//! server reflection. The service is generated twice: with the API's messages (for clients and
//! anyone implementing it), and for the gateway's own server, whose `CreateUserResponse` is a
//! `Reply`, so that an answer a request id keeps is sent as the bytes it was kept as, not encoded
//! a second time.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/chime/v1/chime.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("chime_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors.clone())?;
    let wire = out.join("wire");
    std::fs::create_dir_all(&wire)?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        .build_client(false)
        .build_server(true)
        .extern_path(".chime.v1.CreateUserResponse", "crate::codec::Reply")
        .extern_path(".chime.v1", "crate::pb::chime::v1")
        .out_dir(wire)
        .compile_fds(descriptors)?;
    Ok(())
}
