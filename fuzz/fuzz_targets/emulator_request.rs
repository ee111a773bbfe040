//! The emulator's reading of untrusted requests: path, method, query, JSON body, and its answers.

fn main() {
    afl::fuzz!(|data: &[u8]| chime_gateway::fuzzing::emulator_request(data));
}
