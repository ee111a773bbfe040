//! Untrusted protobuf from callers: decode, validate, translate.

fn main() {
    afl::fuzz!(|data: &[u8]| chime_gateway::fuzzing::request_path(data));
}
