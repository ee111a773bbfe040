//! chime-gateway: one gRPC method, `chime.v1.ChimeService/CreateUser`, in front of the Amazon Chime
//! `CreateUser` REST operation, run beside each caller as a sidecar. The design, section by
//! section, is `docs/design.md`; a module doc that cites `docs/design.md §N` is the code that
//! keeps it.
//!
//! # One call, from the socket to Chime and back
//!
//! ```text
//! caller -- TCP port or Unix socket --+
//!   listeners     bound before anything is served; a clash exits 64               (§4, §10)
//!   authority     a socket path sent as :authority, mended under h2                (§1)
//!   server        tonic: API, health, reflection; the metrics and message-size
//!                 layers; the shutdown sequence                                    (§1, §6)
//!   service/      the call's flow: permit, deadline, attempts, lookups, the answer,
//!     |           its one log line; calls the modules below, in this order         (§9)
//!     +- validate      the model's patterns; the request id parsed once            (§2)
//!     +- idempotency/  request ids: answers kept, repeats waiting, ids in doubt,
//!     |                the --state-dir journal                                     (§7)
//!     +- retry         may another request go upstream, and when: backoff, the
//!     |                retry budget, the send rate                                 (§8)
//!     +- translate     proto -> SDK input, SDK output -> proto                     (§1)
//!     +- chime         aws-sdk-chime: CreateUser, the ListUsers lookup; failures
//!     |                read from the wire                                          (§3, §7)
//!     +- error         every failure -> one tonic::Status, from one table          (§3)
//!   Chime, or `emulator`: --emulate, the chime-emulator binary, the tests         (§5)
//! ```
//!
//! Data flows down: the modules under `service/` know nothing of it or of the transport above it,
//! and `emulator` shares only the model's patterns (`validate`) with the gateway. Around the call:
//! `config` (every flag and variable, §4), `metrics` and `telemetry` (§6), `codec` (buffers sized
//! for these messages; a kept answer sent as its bytes), `message_size` (RESOURCE_EXHAUSTED for an
//! oversized message), `pb` (generated from `proto/` by `build.rs`).

pub mod authority;
pub mod chime;
pub mod codec;
pub mod config;
pub mod emulator;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod idempotency;
pub mod listeners;
pub mod message_size;
pub mod metrics;
pub mod pb;
pub mod retry;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod translate;
pub mod validate;
