//! The emulator's SigV4 verification of untrusted requests: the Authorization header, the canonical request.

fn main() {
    afl::fuzz!(|data: &[u8]| chime_gateway::fuzzing::emulator_sigv4(data));
}
