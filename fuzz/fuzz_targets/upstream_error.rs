//! Untrusted HTTP error responses from the upstream: status, headers and body to a gRPC status.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime_gateway::fuzzing::upstream_error(data));
