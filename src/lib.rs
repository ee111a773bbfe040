//! chime-gateway: one gRPC method, `chime.v1.ChimeService/CreateUser`, in front of the Amazon Chime
//! `CreateUser` REST operation.
//!
//! A call flows one way through the modules:
//!
//! ```text
//! service (receive, deadline, attempts; retry: may another request go upstream, and when)
//!   -> validate (SPEC section 2, no I/O)
//!   -> translate (proto -> SDK input)
//!   -> chime (the SDK call, failures classified from the wire)
//!   -> translate (SDK output -> proto) | error (every failure -> tonic::Status)
//! ```
//!
//! `authority` mends, under h2, the `:authority` that clients send over a Unix socket;
//! `server` assembles the tonic server (API, health, reflection) and owns the shutdown sequence;
//! `emulator` is a Chime-compatible HTTP endpoint used by `--emulate`, by the `chime-emulator`
//! binary and by the tests.

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
