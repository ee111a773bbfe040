//! Untrusted HTTP error responses from the upstream: status, headers and body to a gRPC status.

fn main() {
    afl::fuzz!(|data: &[u8]| chime_gateway::fuzzing::upstream_error(data));
}
