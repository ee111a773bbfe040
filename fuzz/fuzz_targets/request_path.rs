//! Untrusted protobuf from callers: decode, validate, translate.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime_gateway::fuzzing::request_path(data));
